"""Everything above the actors and the learner, in layers (an import only ever points down):

- ``contract`` — config, the group record, the weight manifest, atomic writes: shared by
  every process, importing no other duet package;
- ``metrics`` — the Prometheus catalogue;
- ``queue`` — the replay queue service;
- ``policy`` — starting-policy builders;
- ``loop`` — the orchestration loop (driver, checkpoints, compare);
- ``tools`` — offline tools (report, audit, plan, submit);
- ``cli`` — the ``duet`` command line, which only parses and dispatches.
"""
