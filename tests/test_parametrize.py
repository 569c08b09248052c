"""pts_hf/parametrize.py: the mask parametrizations and the masks recovered from saved tensors."""

import pytest
import torch

from pts_hf.parametrize import DynamicMask, FixedMask, ThresholdMask, mask_from_saved

W = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))


def test_threshold_is_theta_times_gain_and_set_gain_keeps_it():
    p = ThresholdMask(W, 0.7)
    assert float(p.value()) == pytest.approx(0.7)
    p.set_gain(10.0)
    assert float(p.value()) == pytest.approx(0.7) and float(p.theta.detach()) == pytest.approx(0.07)
    assert torch.equal(p.current_mask(W), (W / p.scale).abs() > 0.7)


def test_saved_masks_equal_the_live_ones():
    p = ThresholdMask(W, 0.5)
    p.set_gain(3.0)
    state = {k: v for k, v in p.state_dict().items()}
    assert torch.equal(mask_from_saved(state, W), p.current_mask(W))
    frozen = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    p.freeze(frozen)
    assert torch.equal(mask_from_saved({**state, "frozen_mask": frozen}, W), frozen)
    fixed = FixedMask(frozen)
    assert torch.equal(mask_from_saved(fixed.state_dict(), W), frozen)
    with pytest.raises(ValueError, match="no pts_hf mask"):
        mask_from_saved({"something": W}, W)


def test_dynamic_mask_passes_gradient_to_pruned_weights_with_decay():
    mask = torch.zeros_like(W, dtype=torch.bool)
    w = W.clone().requires_grad_(True)
    DynamicMask(mask, decay=0.5)(w).sum().backward()
    assert torch.allclose(w.grad, torch.ones_like(W) + 0.5 * W)


def test_extra_state_round_trip():
    p = ThresholdMask(W, 0.3)
    q = ThresholdMask(W, 0.9)
    q.load_extra_state(p.extra_state())
    assert float(q.value()) == pytest.approx(0.3)
