"""bioflow.data.loader.device_batches: batches reach the device in order, whole."""

import torch

from bioflow.data.loader import device_batches


def test_device_batches_moves_tensors_in_order():
    batches = [{"image": torch.full((2, 3), float(i)), "label": torch.tensor([i, i]), "path": [f"a{i}", f"b{i}"]}
               for i in range(4)]
    out = list(device_batches(batches, torch.device("cpu")))
    assert [int(b["image"][0, 0]) for b in out] == [0, 1, 2, 3]
    assert all(b["image"].device.type == "cpu" and b["path"] == [f"a{i}", f"b{i}"] for i, b in enumerate(out))
    assert torch.equal(out[2]["label"], torch.tensor([2, 2]))
    assert list(device_batches([], "cpu")) == []
