"""The training side: the pure core (``algo``), the tensor view of a batch (``batch``), the
DeepSpeed engine (``engine``, the only deepspeed import), a rank (``rank``) and its Ray actor."""
