"""Learner ranks with a fault built in, for driver tests (importable by Ray's workers)."""

from __future__ import annotations

import numpy as np

from learner.rank import LearnerRank


class CorruptingRank(LearnerRank):
    """From policy version 1 on, every bucket this rank puts in the object store has one
    byte flipped after its digest was taken: what a torn transfer looks like to an engine."""

    def send_weights(self, version, actors, *args):
        import learner.publish as publish

        real = publish.as_payload

        def flipped(data):
            bad = bytearray(data)
            bad[len(bad) // 2] ^= 0xFF
            return np.frombuffer(bytes(bad), dtype=np.uint8)

        if version >= 1:
            publish.as_payload = flipped
        try:
            return super().send_weights(version, actors, *args)
        finally:
            publish.as_payload = real


class LyingRank(LearnerRank):
    """From policy version 1 on, every manifest this rank sends claims probe log-probs 1.0
    lower than its weights give: what an engine that loaded the wrong weights would see."""

    def send_weights(self, version, actors, *args):
        import dataclasses

        import learner.rank as rank

        real = rank.start_manifest

        def lying(*a, **k):
            manifest = real(*a, **k)
            return dataclasses.replace(manifest, probe_logprobs=tuple(
                x - 1.0 for x in manifest.probe_logprobs))

        if version >= 1:
            rank.start_manifest = lying
        try:
            return super().send_weights(version, actors, *args)
        finally:
            rank.start_manifest = real
