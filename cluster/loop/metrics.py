"""The RL loop's Prometheus metrics, fed by the driver from what each step already measures.

Rollout actors, the reward pool, the learner ranks and the weight sync all report their
timings and counts back to the driver with every step; ``LoopMetrics`` turns those rows into
the catalogue's ``duet_*`` series, labelled by run, so one endpoint per driver process
covers every actor (the queue actor serves its own ``duet_queue_*`` endpoint).
"""

from __future__ import annotations

from typing import Dict, Optional

from cluster.metrics.catalogue import MetricSet, process_metrics

SYNC_PHASES = ("send", "transfer", "load", "verify")


class LoopMetrics:
    """Updates the loop's metrics for one run (label ``run``)."""

    def __init__(self, run: str, metrics: Optional[MetricSet] = None) -> None:
        self.run = run
        self.m = metrics or process_metrics()

    def _c(self, name: str, **labels):
        return self.m[name].labels(run=self.run, **labels)

    def step(self, row: Dict[str, object]) -> None:
        """One driver step row (see ``Driver._one_step``)."""
        get = lambda key: float(row.get(key) or 0.0)  # noqa: E731
        self._c("duet_steps").inc()
        self._c("duet_policy_version").set(get("policy_version"))
        self._c("duet_rollouts").inc(get("rollouts"))
        self._c("duet_rollout_tokens").inc(get("completion_tokens"))
        groups, informative = get("groups"), get("informative_groups")
        self._c("duet_groups", kind="informative").inc(informative)
        self._c("duet_groups", kind="tied").inc(max(0.0, groups - informative))
        if groups:
            self._c("duet_informative_group_rate").set(informative / groups)
            self._c("duet_reward_mean").set(get("reward_mean"))
        self._c("duet_reward_flagged").inc(get("reward_flags"))
        self._c("duet_generation_seconds").observe(get("generate_s"))
        self._c("duet_reward_seconds").observe(get("reward_s"))
        self._c("duet_step_seconds").observe(get("step_s"))
        if "learner_seconds" in row:
            self._c("duet_learner_step_seconds").observe(get("learner_seconds"))
            self._c("duet_learner_tokens").inc(get("tokens"))
            for kind in ("received", "computed"):
                self._c("duet_learner_rows", kind=kind).inc(get(f"rows_{kind}"))
                self._c("duet_learner_row_tokens", kind=kind).inc(get(f"tokens_{kind}"))
            self._c("duet_loss").set(get("loss"))
            self._c("duet_kl").set(get("kl"))
            self._c("duet_clip_fraction").set(get("clip_frac"))
            self._c("duet_is_ratio", stat="mean").set(get("ratio_mean"))
            self._c("duet_is_ratio", stat="max").set(get("ratio_max"))
            self._c("duet_is_weight", stat="mean").set(get("is_weight_mean"))
            self._c("duet_is_weight", stat="max").set(get("is_weight_max"))
            self._c("duet_skipped_updates").inc(get("skipped_updates"))
        for phase in SYNC_PHASES:
            if f"sync_{phase}_s" in row:
                self._c("duet_sync_seconds", phase=phase).observe(get(f"sync_{phase}_s"))
        self._c("duet_sync_bytes").inc(get("sync_bytes"))
        if "sync_staged_bytes" in row:
            self._c("duet_sync_staged_bytes").set(get("sync_staged_bytes"))
        if "probe_max_abs_diff" in row:
            self._c("duet_sync_probe_diff").set(get("probe_max_abs_diff"))
        self._c("duet_staleness_max").set(get("staleness_max"))
        busy_rollout = get("generate_s") + get("reward_s") + get("queue_put_s")
        self._c("duet_idle_seconds", role="rollout").inc(max(0.0, get("step_s") - busy_rollout))
        self._c("duet_idle_seconds", role="learner").inc(
            max(0.0, get("step_s") - get("learner_seconds")))

    def eval(self, row: Dict[str, object]) -> None:
        figures = (("greedy", "accuracy"), ("mean_at_k", "mean_at_k"), ("pass_at_k", "pass_at_k"))
        for metric, key in figures:
            value = row.get(key)
            if value is not None:
                self._c("duet_eval_accuracy", metric=metric).set(float(value))
        for name, summary in (row.get("sets") or {}).items():
            for metric, key in figures + (("maj_at_k", "maj_at_k"),):
                value = summary.get(key)
                if value is not None:
                    self._c("duet_eval_set_accuracy", set=name, metric=metric).set(float(value))

    def dropped(self, reason: str, count: int) -> None:
        if count:
            self._c("duet_dropped_groups", reason=reason).inc(count)

    def restarted(self, role: str, count: int = 1) -> None:
        self._c("duet_actor_restarts", role=role).inc(count)
