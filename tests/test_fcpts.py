import copy
import math
import warnings

import pytest
import torch
from torch import nn

import pts_hf
from pts_hf import FCPTSSparsifier
from pts_hf.calibration import recalibrate_batchnorm
from pts_hf.distillation import cosine_with_warmup, set_student_mode
from pts_hf.ops.kde import gaussian_kde, silverman_bandwidth, threshold_to_sparsity
from tests.tiny_models import TINY_MODELS, small_cnn

X = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
FAST = {"steps": 20, "batch_size": 16, "progress": False}


def _normal_pdf(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.0])
def test_bridge_gradient_matches_true_density_gaussian(t):
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    samples = z[:4096]
    tt = torch.tensor(t, requires_grad=True)
    r = threshold_to_sparsity(tt, z, samples, "silverman")
    assert float(r.detach()) == pytest.approx(math.erf(t / math.sqrt(2)), abs=5e-3)  # exact forward
    r.backward()
    true = 2 * _normal_pdf(t)  # d/dt P(|z| <= t)
    assert float(tt.grad) == pytest.approx(true, rel=0.06)


def test_bridge_gradient_on_laplace_and_paper_setting():
    g = torch.Generator().manual_seed(1)
    u = torch.rand(100_000, generator=g) - 0.5
    lap = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1): p(x) = exp(-|x|)/2
    t = torch.tensor(1.0, requires_grad=True)
    threshold_to_sparsity(t, lap, lap[:4096], "silverman").backward()
    assert float(t.grad) == pytest.approx(math.exp(-1.0), rel=0.08)
    t2 = torch.tensor(1.0, requires_grad=True)  # the paper's n=100, h=0.5: runs, biased but the right size
    threshold_to_sparsity(t2, lap, lap[:100], 0.5).backward()
    assert 0.5 * math.exp(-1.0) < float(t2.grad) < 1.5 * math.exp(-1.0)


def test_kde_helpers():
    s = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    h = silverman_bandwidth(s)
    assert 0.1 < h < 0.3
    dens = gaussian_kde(s, torch.tensor([0.0]), h)
    assert float(dens) == pytest.approx(_normal_pdf(0.0), rel=0.05)


def test_thresholds_move_and_exact_target_hit():
    model = small_cnn()
    r = pts_hf.sparsify(model, X, method="fcpts", sparsity=0.8, threshold_lr=0.05, **FAST)
    init = r.record.layer_values("initial_sparsity")
    learned = r.record.layer_values("learned_sparsity")
    assert set(init) == set(learned) == set(r.layer_sparsity)
    assert max(abs(init[k] - learned[k]) for k in init) > 0.005
    assert len(r.record.history) == 20
    assert {"loss", "rec", "control", "sparsity"} <= set(r.record.history[-1])
    assert set(r.record.layers["6.weight"].extras["threshold"]) == {"normalised", "raw"}


@pytest.mark.parametrize("projection", ["margin", "proportional"])
@pytest.mark.parametrize("target", [0.5, 0.9, 0.97])
def test_exact_target(target, projection):
    r = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=target, projection=projection, **FAST)
    n = sum(r.layer_numel.values())
    zeros = sum(int((m.weight == 0).sum()) for m in r.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert zeros == round(target * n)
    assert abs(r.global_sparsity - target) <= 1e-3  # 5504 weights: one weight is 1.8e-4
    assert all(s < 1.0 for s in r.layer_sparsity.values())  # no layer cut off


def test_control_only_mode_and_paper_kde_settings():
    # threshold_grad="control": the reconstruction loss gives the thresholds no gradient; "ste" gives them one
    for mode, moves in (("control", False), ("ste", True)):
        model = small_cnn()
        teacher = copy.deepcopy(model).eval()
        sp = FCPTSSparsifier(sparsity=0.7, threshold_grad=mode, bandwidth=0.5, kde_samples=100)
        sp.prepare(model)
        sp.reconstruction_loss(model(X[:32]), teacher(X[:32])).backward()
        grads = [sp.parametrization_of(g).theta.grad for g in sp.groups]
        assert any(g is not None and float(g.abs()) > 0 for g in grads) == moves, mode
        for g in sp.groups:  # the paper's KDE: n = 100 samples per layer, h = 0.5
            p = sp.parametrization_of(g)
            assert p.kde_index.numel() == min(100, g["numel"]) and p.bandwidth == 0.5
    r = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.7, threshold_grad="control", bandwidth=0.5,
                        kde_samples=100, **FAST)
    assert r.global_sparsity == pytest.approx(0.7, abs=1e-3)


def test_tiny_vit_and_bert_end_to_end():
    vit, make_vit, _ = TINY_MODELS["hf_vit"]
    batches = [make_vit() for _ in range(2)]
    r = pts_hf.sparsify(vit(), batches, method="fcpts", sparsity=0.6, steps=4, progress=False, optimizer="adamw",
                        lr=1e-4)
    assert r.global_sparsity == pytest.approx(0.6, abs=1e-4)
    bert, make_bert, _ = TINY_MODELS["hf_bert"]
    r = pts_hf.sparsify(bert(), [make_bert()], method="fcpts", sparsity=0.5, steps=4, progress=False,
                        optimizer="adamw", lr=1e-4)
    assert r.global_sparsity == pytest.approx(0.5, abs=1e-4)
    rec = r.record.history[0]["rec"]  # BERT's last_hidden_state: feature MSE, positive once half is pruned
    assert math.isfinite(rec) and rec > 0 and "kl" not in r.record.history[0]


def test_user_loss_fn():
    calls = []

    def loss_fn(s, t):
        calls.append(1)
        return (s - t).abs().mean()

    pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.5, loss_fn=loss_fn, **FAST)
    assert len(calls) == 20


def test_output_without_tensor_raises_naming_type():
    class NoTensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return {"text": "nothing to compare"}

    with pytest.raises(TypeError, match="dict"):
        pts_hf.sparsify(NoTensor(), torch.randn(8, 4), method="fcpts", sparsity=0.5, **FAST)


def test_short_data_cycles_with_warning():
    with pytest.warns(UserWarning, match="seen"):
        r = pts_hf.sparsify(small_cnn(), X[:16], method="fcpts", sparsity=0.5, steps=20, batch_size=16,
                            progress=False)
    assert len(r.record.history) == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.5, steps=8, batch_size=16, progress=False)


def test_unreachable_target_raises():
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="cannot be reached"):
        pts_hf.sparsify(model, torch.randn(8, 3), method="fcpts", sparsity=0.95, ignore=["2"], **FAST)


def test_bad_options():
    for bad in ({"threshold_grad": "both"}, {"steps": 0}, {"bandwidth": "wide"}, {"kde_samples": 1},
                {"optimizer": "lion"}, {"temperature": 0}):
        with pytest.raises(ValueError):
            pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.5, **{**FAST, **bad})


def test_deterministic_for_a_seed():
    a = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.8, **FAST)
    b = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.8, **FAST)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_user_loop_matches_one_call_api():
    steps, bs = 6, 16
    opts = {"steps": steps, "batch_size": bs, "seed": 0}
    ref = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.8, **opts)

    torch.manual_seed(0)
    model = small_cnn()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the user's loop owns its teacher
    sp = FCPTSSparsifier(sparsity=0.8, **opts)
    sp.prepare(model)
    torch.manual_seed(0)
    weights = [p for p in model.parameters() if all(p is not q for g in sp.extra_param_groups() for q in g["params"])]
    opt = torch.optim.SGD(weights, lr=sp.method_config.lr, momentum=0.9)
    topt = torch.optim.Adam(sp.extra_param_groups())
    fn = cosine_with_warmup(steps, 0)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, fn) for o in (opt, topt)]
    set_student_mode(model, "train")
    batches = list(torch.split(X, bs))
    for i in range(steps):
        x = batches[i % len(batches)]
        with torch.no_grad():
            t = teacher(x)
        loss, _ = sp.compute_loss(model(x), t)
        loss.backward()
        for o in (opt, topt):
            o.step()
            o.zero_grad()
        for s in scheds:
            s.step()
        sp.step()
    sp.project()
    recalibrate_batchnorm(model, batches)
    sp.squash_mask()
    model.eval()
    for (k, a), b in zip(ref.model.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_augmented_calibration_is_deterministic_and_keeps_shapes():
    from pts_hf.calibration import augment_batch

    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = augment_batch((X[:8], torch.zeros(8)), "flip_crop", g1)
    b = augment_batch((X[:8], torch.zeros(8)), "flip_crop", g2)
    assert a[0].shape == X[:8].shape and torch.equal(a[0], b[0]) and not torch.equal(a[0], X[:8])
    assert augment_batch({"input_ids": torch.ones(2, 3)}, "flip", g1)["input_ids"].shape == (2, 3)
    r1 = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.7, augment="flip_crop", **FAST)
    r2 = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.7, augment="flip_crop", **FAST)
    assert all(torch.equal(p, q) for p, q in zip(r1.model.parameters(), r2.model.parameters()))
    with pytest.raises(ValueError, match="augment"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.7, augment="rotate", **FAST)


def test_divergence_is_reported_clearly():
    with pytest.raises(FloatingPointError, match=r"diverged.*lower lr"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.5,
                        loss_fn=lambda s, t: (s - t).abs().mean() * float("nan"), **FAST)


def test_fixed_mask_tail_projects_early_and_keeps_masks():
    model = small_cnn()
    sp = FCPTSSparsifier(sparsity=0.8, steps=10, fixed_mask_tail=0.5)
    sp.prepare(model)
    for i in range(10):
        sp.step()
        if i == 3:
            assert not sp.projected
        if i == 4:
            assert sp.projected
            frozen = sp.layer_sparsity()
            with torch.no_grad():
                for g in sp.groups:
                    sp.parametrization_of(g).set_value(0.0)  # thresholds no longer matter
            assert sp.layer_sparsity() == frozen
    r = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.8, fixed_mask_tail=0.3, **FAST)
    n = sum(r.layer_numel.values())
    assert round(r.global_sparsity * n) == round(0.8 * n)
    assert set(r.record.layer_values("learned_sparsity")) == set(r.layer_sparsity)


def test_calibration_smaller_than_batch_warns_once_with_repeats():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pts_hf.sparsify(small_cnn(), X[:10], method="fcpts", sparsity=0.5, steps=12, batch_size=16, progress=False)
    ours = [w for w in caught if "calibration data" in str(w.message)]
    assert len(ours) == 1
    assert "10 samples, fewer than batch_size=16" in str(ours[0].message)
    assert "repeated 12 times" in str(ours[0].message)


def test_cached_teacher_outputs_give_the_same_run():
    kw = dict(method="fcpts", sparsity=0.7, steps=10, batch_size=16, progress=False, seed=3)
    a = pts_hf.sparsify(small_cnn(), X, cache_teacher=False, **kw)
    b = pts_hf.sparsify(small_cnn(), X, cache_teacher=True, **kw)
    c = pts_hf.sparsify(small_cnn(), X, **kw)  # 'auto': tensor data, no augmentation → cached
    cached = [x.record.extras["teacher_cached"] for x in (a, b, c)]
    assert cached == [False, True, True]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    d = pts_hf.sparsify(small_cnn(), X, augment="flip", **kw)  # augmented views differ each pass: no cache
    assert not d.record.extras["teacher_cached"]
    with pytest.raises(ValueError, match="cache_teacher"):
        pts_hf.sparsify(small_cnn(), X, cache_teacher="yes", **kw)


def test_dense_grad_lets_pruned_weights_regrow():
    from pts_hf.parametrize import ThresholdMask

    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for decay, pruned_grad in ((None, False), (1e-3, True)):
        p = ThresholdMask(w, 1.0, srste_decay=decay)
        out = p(w)
        keep = p.current_mask(w)
        assert torch.equal(out.detach(), (w * keep).detach())  # same forward either way
        w.grad = None
        out.sum().backward()
        assert bool((w.grad[~keep] != 0).any()) is pruned_grad
        assert p.theta.grad is not None  # the STE path to the threshold is kept
    r = pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.8, dense_grad=True, **FAST)
    assert r.global_sparsity == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="srste_decay"):
        pts_hf.sparsify(small_cnn(), X, method="fcpts", sparsity=0.8, dense_grad=True, srste_decay=-1.0, **FAST)
