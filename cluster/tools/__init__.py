"""Offline tools over finished runs and presets: ``report`` (the comparison report), ``audit``
(exactly-once check of a ledger), ``plan`` (cost projection and resource plan), ``submit``
(``ray job submit``) and ``paper`` (the published figures they compare against)."""
