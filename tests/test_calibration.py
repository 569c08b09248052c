"""pts_hf/calibration.py: calibration batches and BatchNorm re-estimation."""

import pytest
import torch
from torch import nn

from pts_hf.calibration import CalibrationData, batch_size_of, split_batch

X = torch.randn(10, 4)


def test_forms_and_lengths():
    assert len(CalibrationData(X, 4)) == 3 and CalibrationData(X, 4).num_samples() == 10
    gen = CalibrationData(X[i:i + 5] for i in range(0, 10, 5))  # a one-shot generator is kept to be re-read
    assert len(gen) == 2 and len(list(gen)) == len(list(gen)) == 2
    with pytest.raises(ValueError, match="empty"):
        CalibrationData([])
    with pytest.raises(ValueError, match="needs calibration data"):
        CalibrationData(None)


def test_split_batch_drops_labels_and_names_inputs():
    class Net(nn.Module):
        def forward(self, x, mask=None):
            return x

    args, kwargs = split_batch({"x": X, "labels": torch.zeros(10)}, Net())
    assert args == () and set(kwargs) == {"x"}
    args, kwargs = split_batch((X, torch.zeros(10)), Net())
    assert args[0] is X and kwargs == {}
    assert batch_size_of(({"x": X},)) == 10
