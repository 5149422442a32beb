"""The GPU (NCCL) weight-transfer requests, checked against vLLM's own request classes.

NCCL needs GPUs, which these machines lack, so this path cannot run here: the test checks
that what duet sends is accepted by vLLM's request dataclasses and that one sync calls the
engine API in the documented order. The CPU path is tested for real in test_rollout.py.
"""

import pytest

from actors.weight_receiver import NcclWeightTransfer


def test_requests_match_vllm_classes():
    from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

    sync = NcclWeightTransfer("127.0.0.1", 29555, rank_offset=1, world_size=3)
    NCCLWeightTransferInitInfo(**sync.init_request()["init_info"])
    update = sync.update_request(["a", "b"], ["bfloat16", "float32"], [[2, 3], [4]])
    NCCLWeightTransferUpdateInfo(**update["update_info"])
    with pytest.raises(ValueError):
        sync.update_request(["a"], [], [[1]])


def test_sync_calls_the_engine_api_in_order():
    calls = []

    class RecordingLLM:  # stands in for vllm.LLM on a GPU, which cannot run here
        def start_weight_update(self):
            calls.append("start")

        def update_weights(self, request):
            calls.append(("update", request["update_info"]["names"]))

        def finish_weight_update(self, weight_version=None):
            calls.append(("finish", weight_version))

    NcclWeightTransfer("127.0.0.1", 1, 1, 2).sync(RecordingLLM(), 7, ["w"], ["float32"], [[1]])
    assert calls == ["start", ("update", ["w"]), ("finish", "7")]
