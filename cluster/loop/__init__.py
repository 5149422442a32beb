"""The orchestration loop: ``driver`` (one run: generate, train, sync, checkpoint, recover),
``checkpoint`` (the checkpoint folder format), ``acks`` (trained-but-unacked bookkeeping),
``compare`` (the arms of ``duet compare``), ``launch`` / ``runs`` (starting Ray, engines and
runs), ``run_log`` (metrics and ledger files), ``metrics`` (the loop's Prometheus series)
and ``progress`` (the live progress line)."""
