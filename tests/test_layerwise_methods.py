"""Wanda, SparseGPT and POT against straightforward reference computations written here."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pts_hf
from pts_hf.layers import gemm_layout, layer_input_columns
from pts_hf.ops.obs import sparsegpt_prune
from pts_hf.ops.reconstruction import output_error

GEN = torch.Generator().manual_seed(0)


def _linear_and_data(n=256, d_in=24, d_out=12):
    torch.manual_seed(0)
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(n, d_in, generator=GEN) * torch.linspace(0.1, 3.0, d_in)  # uneven input scales
    return layer, x


def _conv_and_data(groups=1):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(16, 8, 6, 6, generator=GEN) * torch.linspace(0.2, 2.0, 8).view(1, 8, 1, 1)
    return conv, x


def _sparsify_layer(layer, x, method, **kw):
    model = nn.Sequential(layer)
    return pts_hf.sparsify(model, x, method=method, batch_size=64, **kw).model[0].weight.detach()


def _unfold_groups(conv, x):
    """Reference unfold: [groups, in/g·k·k, samples] via F.unfold."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [B, C·k·k, L]
    b, ck, length = cols.shape
    return cols.permute(1, 0, 2).reshape(conv.groups, ck // conv.groups, b * length)


def _wanda_reference(w2d, norms, sparsity):
    score = w2d.abs() * norms.view(1, -1)
    k = round(w2d.shape[1] * sparsity)
    idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
    return torch.ones_like(w2d, dtype=torch.bool).scatter_(1, idx, False)


def test_layer_input_columns_matches_f_unfold():
    for groups in (1, 2, 8):
        conv, x = _conv_and_data(groups)
        ours = layer_input_columns(conv, gemm_layout(conv, conv.weight), x)
        assert torch.allclose(ours, _unfold_groups(conv, x))


def test_wanda_linear_matches_reference():
    layer, x = _linear_and_data()
    ref = _wanda_reference(layer.weight.detach(), x.norm(dim=0), 0.5)
    w = _sparsify_layer(layer, x, "wanda", sparsity=0.5)
    assert torch.equal(w != 0, ref)
    assert torch.equal(w[ref], layer.weight.detach()[ref])  # Wanda never changes kept weights


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_wanda_conv_matches_reference(groups):
    conv, x = _conv_and_data(groups)
    cols = _unfold_groups(conv, x)
    w = conv.weight.detach()
    rows = w.shape[0] // groups
    s = 1 / 3  # a whole number of weights in every row (72, 36 or 9 columns)
    ref = torch.cat([_wanda_reference(w[g * rows:(g + 1) * rows].reshape(rows, -1), cols[g].norm(dim=1), s)
                     for g in range(groups)]).view_as(w)
    out = _sparsify_layer(conv, x, "wanda", sparsity=s)
    assert torch.equal(out != 0, ref)


def _sparsegpt_reference(w, xt, sparsity, damp=0.01, prune=None):
    """SparseGPT with one block = all columns, float64, written plainly (paper Algorithm 1); ``prune`` imposes a
    mask instead of choosing one."""
    w = w.double().clone()
    h = xt.double() @ xt.double().t() / xt.shape[1]
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    d = torch.diagonal(hinv)
    if prune is None:
        k = round(sparsity * w.numel())
        prune = torch.zeros(w.numel(), dtype=torch.bool)
        prune[torch.sort((w**2 / d**2).flatten()).indices[:k]] = True
        prune = prune.view_as(w)
    for i in range(w.shape[1]):
        q = w[:, i].clone()
        q[prune[:, i]] = 0
        err = (w[:, i] - q) / hinv[i, i]
        w[:, i:] -= err.unsqueeze(1) * hinv[i, i:].unsqueeze(0)
        w[:, i] = q
    return w.float(), ~prune


def test_sparsegpt_linear_matches_reference():
    layer, x = _linear_and_data()
    ref_w, ref_keep = _sparsegpt_reference(layer.weight.detach(), x.t(), 0.5)
    out = _sparsify_layer(layer, x, "sparsegpt", sparsity=0.5, blocksize=1024)
    assert torch.equal(out != 0, ref_keep)
    assert torch.allclose(out, ref_w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_sparsegpt_conv_matches_reference(groups):
    conv, x = _conv_and_data(groups)
    cols = _unfold_groups(conv, x)
    w = conv.weight.detach()
    rows = w.shape[0] // groups
    out = _sparsify_layer(conv, x, "sparsegpt", sparsity=0.5, blocksize=1024)
    assert int((out == 0).sum()) == w.numel() // 2
    for g in range(groups):
        wg = w[g * rows:(g + 1) * rows].reshape(rows, -1)
        got = out[g * rows:(g + 1) * rows].reshape(rows, -1)
        if groups == 1:  # one Hessian: the mask choice itself matches the reference
            assert torch.equal(got != 0, _sparsegpt_reference(wg, cols[g], 0.5)[1])
        # every group's weights are the reference OBS update of its own Hessian under the chosen mask
        ref_w, _ = _sparsegpt_reference(wg, cols[g], 0.5, prune=got == 0)
        assert torch.allclose(got, ref_w, atol=1e-4, rtol=1e-4)


def _layer_error(dense_w, sparse_w, x, bias_delta=None):
    y = x @ (sparse_w - dense_w).t()
    if bias_delta is not None:
        y = y + bias_delta
    return float(y.pow(2).sum(1).mean())


def test_sparsegpt_layer_error_at_most_magnitudes():
    layer, x = _linear_and_data()
    dense = layer.weight.detach().clone()
    for s in (0.5, 0.8):
        sgpt = _sparsify_layer(layer, x, "sparsegpt", sparsity=s)
        mag = _sparsify_layer(layer, x, "magnitude", sparsity=s, allocation="uniform", bn_recalibration=False)
        assert (sgpt == 0).sum() == (mag == 0).sum()
        assert _layer_error(dense, sgpt, x) < 0.8 * _layer_error(dense, mag, x)


def test_pot_lowers_output_error_vs_magnitude():
    layer, x = _linear_and_data()
    x = x + 1.0  # non-zero input mean: bias correction matters
    dense_w, dense_b = layer.weight.detach().clone(), layer.bias.detach().clone()
    for s in (0.5, 0.8):
        model = pts_hf.sparsify(nn.Sequential(layer), x, method="pot", sparsity=s, allocation="uniform").model
        pot_w, pot_b = model[0].weight.detach(), model[0].bias.detach()
        mag = _sparsify_layer(layer, x, "magnitude", sparsity=s, allocation="uniform", bn_recalibration=False)
        assert torch.equal(pot_w != 0, mag != 0)  # POT keeps magnitude's mask and fixes the values
        assert _layer_error(dense_w, pot_w, x, pot_b - dense_b) < 0.8 * _layer_error(dense_w, mag, x)


def test_pot_reconstruction_steps_reduce_the_error():
    layer, x = _linear_and_data()
    errs = []
    for steps in (0, 50, 300):
        m = pts_hf.sparsify(nn.Sequential(layer), x, method="pot", sparsity=0.7, allocation="uniform",
                            recon_steps=steps, bias_correction=False).model
        errs.append(_layer_error(layer.weight.detach(), m[0].weight.detach(), x))
    assert errs[0] > errs[1] > errs[2]


def test_sparsegpt_singular_hessian_is_dampened_not_nan():
    w = torch.randn(1, 6, 8, generator=GEN)
    x = torch.randn(8, 3, generator=GEN)
    h = (x @ x.t()).unsqueeze(0)  # rank 3 of 8
    h[:, 2, :] = 0
    h[:, :, 2] = 0  # a dead input too
    out, keep = sparsegpt_prune(w, h, n_zero=24, dampening=1e-12)
    assert torch.isfinite(out).all() and int((~keep).sum()) == 24


def test_output_error_matches_direct_computation():
    layer, x = _linear_and_data()
    cols = x.t().unsqueeze(0)
    h = cols @ cols.transpose(1, 2) / x.shape[0]
    mean = cols.mean(-1)
    d = layer.weight.detach().unsqueeze(0)
    s = d * (torch.rand(d.shape, generator=GEN) > 0.5)
    db = torch.randn(1, d.shape[1], generator=GEN)
    direct = float(((x @ (s[0] - d[0]).t()) + db).pow(2).sum(1).mean())
    assert float(output_error(d, s, h, mean, db)) == pytest.approx(direct, rel=1e-4)
