"""duet's deployment files: the presets (``configs/``), the ``ray job submit`` runtime env,
Prometheus, Grafana and KubeRay manifests.

A package only so that they ship inside duet's wheel; ``cluster.presets`` finds them, in a
checkout and in an installed duet alike. No code lives here.
"""
