"""Prometheus metrics: ``catalogue`` holds every series duet exports (names, kinds, labels,
help) and the per-process registry and HTTP endpoint."""
