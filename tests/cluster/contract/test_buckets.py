"""Weight buckets: duet's own safetensors writer, read back by safetensors and by the engine."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load

from cluster.contract.weights import marked_buckets, pack_buckets, safetensors_buffer, tensor_views

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64,
          torch.int32, torch.int8, torch.uint8, torch.bool]


def mixed():
    embed = torch.randn(11, 6)
    return {
        "model.embed_tokens.weight": embed,
        "norm.weight": torch.randn(6).to(torch.bfloat16),
        "ids": torch.arange(5, dtype=torch.int64),
        "scale": torch.tensor(0.5, dtype=torch.float16),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "lm_head.weight": embed,  # tied: the same storage under a second name
        "strided": torch.randn(6, 4).t(),  # not contiguous
    }


def test_buckets_read_back_with_safetensors_and_as_views():
    tensors = mixed()
    (data, names), = pack_buckets(tensors.items(), bucket_bytes=1 << 20)
    assert names == list(tensors) and data.dtype == np.uint8
    for got in (load(bytes(data)), dict(tensor_views(data))):
        assert got.keys() == tensors.keys()
        for name, want in tensors.items():
            assert got[name].dtype == want.dtype and torch.equal(got[name], want), name


def test_buckets_split_at_the_size_and_open_from_a_file(tmp_path):
    tensors = {f"layer.{i}.weight": torch.full((64,), float(i)) for i in range(10)}
    buckets = list(pack_buckets(tensors.items(), bucket_bytes=3 * 64 * 4))
    assert [len(names) for _, names in buckets] == [3, 3, 3, 1]
    marked = list(marked_buckets(tensors.items(), bucket_bytes=3 * 64 * 4))
    assert [last for *_, last in marked] == [False, False, False, True]  # known as made
    assert all(np.array_equal(a, b) and n == m for (a, n), (b, m, _) in zip(buckets, marked))
    seen = {}
    for i, (data, _) in enumerate(buckets):
        path = tmp_path / f"b{i}.safetensors"
        path.write_bytes(data)
        with safe_open(str(path), framework="pt") as fh:  # the separate-engine-process path
            seen.update({k: fh.get_tensor(k) for k in fh.keys()})
    assert all(torch.equal(seen[k], v) for k, v in tensors.items()) and seen.keys() == tensors.keys()


def test_every_tensor_starts_aligned_to_its_element_size():
    (data, _), = pack_buckets(mixed().items())
    for name, view in tensor_views(data):
        if view.numel():
            offset = view.data_ptr() - data.ctypes.data
            assert offset % view.element_size() == 0, name


def test_a_dtype_the_sync_does_not_carry_is_named():
    with pytest.raises(ValueError, match="'z' is torch.complex64"):
        safetensors_buffer({"z": torch.zeros(2, dtype=torch.complex64)})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DTYPES),
                          st.lists(st.integers(0, 4), min_size=0, max_size=3)),
                min_size=1, max_size=6))
def test_any_mix_of_dtypes_and_shapes_round_trips(specs):
    tensors = {f"t{i}": (torch.rand(shape) * 100).to(dtype) for i, (dtype, shape) in enumerate(specs)}
    want = load(bytes(safetensors_buffer(tensors)))
    assert want.keys() == tensors.keys()
    for name, t in tensors.items():
        assert want[name].dtype == t.dtype and want[name].shape == t.shape
        assert torch.equal(want[name], t)
