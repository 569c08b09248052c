"""pts_hf/losses.py: what each loss equals, and how outputs are recognised."""

import pytest
import torch

from pts_hf.losses import control_loss, extract_output, feature_mse, kl_distillation, reconstruction_loss

G = torch.Generator().manual_seed(0)
S, T = torch.randn(4, 10, generator=G), torch.randn(4, 10, generator=G)


def test_kl_is_zero_on_itself_and_matches_its_definition():
    assert float(kl_distillation(S, S, 4.0)) == pytest.approx(0.0, abs=1e-6)
    p = torch.softmax(T / 2, -1)
    expected = 4 * (p * (p.log() - torch.log_softmax(S / 2, -1))).sum(-1).mean()
    assert float(kl_distillation(S, T, 2.0)) == pytest.approx(float(expected), rel=1e-5)


def test_feature_mse_is_scale_free():
    assert float(feature_mse(3 * S, 3 * T)) == pytest.approx(float(feature_mse(S, T)), rel=1e-5)


def test_reconstruction_kinds_and_shape_check():
    assert float(reconstruction_loss(S, T, "kl", 2.0)) == pytest.approx(float(kl_distillation(S, T, 2.0)))
    assert float(reconstruction_loss(S, T, "mse")) == pytest.approx(float(feature_mse(S, T)))
    assert float(reconstruction_loss(S, T, loss_fn=lambda s, t: (s - t).sum())) == pytest.approx(float((S - T).sum()))
    with pytest.raises(ValueError, match="teacher"):
        reconstruction_loss(S, T[:, :5], "kl")
    with pytest.raises(ValueError, match="unknown reconstruction"):
        reconstruction_loss(S, T, "l1")


def test_extract_output_finds_logits_and_features():
    assert extract_output({"logits": S})[1] == "logits"
    assert extract_output({"last_hidden_state": S})[1] == "features"
    assert torch.equal(extract_output((S, T))[0], S)


def test_control_loss_is_the_global_gap():
    rs = [torch.tensor(0.5), torch.tensor(0.9)]
    assert float(control_loss(rs, [100, 300], 0.7)) == pytest.approx(abs((0.5 * 100 + 0.9 * 300) / 400 - 0.7))
