"""What every duet process shares: the bottom layer.

``config`` (and ``config_io``, its reading), ``schema`` (the group record and its Arrow
schema), ``weights`` (the weight manifest, bucket format, digests and the log-prob probe)
and ``files`` (atomic writes). Nothing here imports ``actors``, ``learner``, Ray, DeepSpeed
or vLLM (``tests/test_purity.py`` checks it), so rollout workers, learner ranks, the queue
and the offline tools can all depend on it without depending on each other.
"""
