"""Learner ranks with a fault built in, for driver tests (importable by Ray's workers)."""

from __future__ import annotations

import numpy as np

from learner.rank import LearnerRank


class FaultyRank(LearnerRank):
    """A rank that, from policy version 1 on, sends its weights with ``module.name``
    replaced by ``fault(real)`` (subclasses say which)."""

    def fault(self):
        raise NotImplementedError

    def send_weights(self, version, actors, *args):
        module, name, replacement = self.fault()
        real = getattr(module, name)
        if version >= 1:
            setattr(module, name, replacement(real))
        try:
            return super().send_weights(version, actors, *args)
        finally:
            setattr(module, name, real)


class CorruptingRank(FaultyRank):
    """From policy version 1 on, every bucket this rank puts in the object store has one
    byte flipped after its digest was taken: what a torn transfer looks like to an engine."""

    def fault(self):
        import learner.publish as publish

        def flipped(real):
            def payload(data):
                bad = bytearray(data)
                bad[len(bad) // 2] ^= 0xFF
                return np.frombuffer(bytes(bad), dtype=np.uint8)
            return payload

        return publish, "as_payload", flipped


class LyingRank(FaultyRank):
    """From policy version 1 on, every manifest this rank sends claims probe log-probs 1.0
    lower than its weights give: what an engine that loaded the wrong weights would see."""

    def fault(self):
        import dataclasses

        import learner.rank as rank

        def lying(real):
            def manifest(*a, **k):
                m = real(*a, **k)
                return dataclasses.replace(m, probe_logprobs=tuple(
                    x - 1.0 for x in m.probe_logprobs))
            return manifest

        return rank, "start_manifest", lying


class EngineKillingRank(LearnerRank):
    """Kills rollout engine 0 once, while policy version 2 is loading into it: after the
    update's start has run there, before its bucket is sent. Ray restarts the engine, and
    the bucket's call, retried there, finds no update in progress."""

    def send_weights(self, version, actors, *args):
        import os
        import signal

        import ray

        import learner.publish as publish

        real = publish.EngineClient.submit
        if version != 2 or getattr(self, "engine_killed", False):
            return super().send_weights(version, actors, *args)

        def submit(client, method, *a, **k):
            if method == "load_bucket" and not self.engine_killed:
                # Calls from one caller run in order: once this answers, the start has run.
                pid = ray.get(client.actors[0].state.remote())["pid"]
                os.kill(pid, signal.SIGKILL)
                self.engine_killed = True
            return real(client, method, *a, **k)

        self.engine_killed = False
        publish.EngineClient.submit = submit
        try:
            return super().send_weights(version, actors, *args)
        finally:
            publish.EngineClient.submit = real
