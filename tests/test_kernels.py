"""Sparse kernels: converted layers/models match the dense-with-zeros model, the choice never picks a kernel that
measured slower than dense (timings injected), restore_dense_ undoes everything, and bad input raises first."""

import copy

import pytest
import torch
from torch import nn

from pts_hf.kernels import (
    CSRLayer,
    choose_kernel,
    is_2to4,
    restore_dense_,
    time_candidates,
    use_sparse_kernels_,
)
from pts_hf.kernels.semi_structured import semi_structured_unsupported_reason

from .tiny_models import hf_bert, hf_gpt2, text_batch

ATOL = RTOL = 1e-4


def _zero_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.ndim >= 2:
                w[torch.rand(w.shape, generator=g) < sparsity] = 0
    return module


def _always(choice: str):
    """A timer under which ``choice`` (and the converted model end to end) measures 10× faster than dense and every
    other kernel 2× slower."""
    def timer(fns):
        return {k: (0.1 if k in (choice, "converted") else 1.0 if k == "dense" else 2.0) for k in fns}
    return timer


# --- the pure choice -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("timings, expected", [
    ({"dense": 1.0, "csr": 0.5}, "csr"),
    ({"dense": 1.0, "csr": 1.5}, "dense"),
    ({"dense": 1.0, "csr": 0.97}, "dense"),                    # within the 5% margin: keep dense
    ({"dense": 1.0, "csr": 0.6, "csr-chunk128": 0.4}, "csr-chunk128"),
    ({"dense": 1.0, "csr": float("inf")}, "dense"),            # failed to run
    ({"dense": 1.0, "csr": float("nan")}, "dense"),
    ({"dense": 1.0}, "dense"),
])
def test_choose_kernel(timings, expected):
    assert choose_kernel(timings) == expected


def test_choose_kernel_never_slower_than_dense_random():
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        t = {k: float(v) for k, v in zip(["dense", "csr", "csr-chunk128", "semi_structured"],
                                         torch.rand(4, generator=g) + 0.01)}
        pick = choose_kernel(t)
        assert t[pick] <= t["dense"]
        assert pick == "dense" or t[pick] == min(t.values())


def test_choose_kernel_rejects_missing_dense():
    with pytest.raises(ValueError, match="must include 'dense'"):
        choose_kernel({"csr": 1.0})


def test_time_candidates_failing_candidate_is_inf():
    def boom():
        raise RuntimeError("no kernel")
    t = time_candidates({"dense": lambda: torch.ones(3).sum(), "csr": boom}, repeats=3, warmup=1)
    assert t["csr"] == float("inf") and 0 < t["dense"] < 1
    assert choose_kernel(t) == "dense"


# --- layers ----------------------------------------------------------------------------------------------------

def _conv1d_hf():
    from transformers.pytorch_utils import Conv1D
    return Conv1D(24, 16)


@pytest.mark.parametrize("make, x", [
    (lambda: nn.Linear(16, 24), torch.randn(3, 5, 16)),
    (lambda: nn.Linear(16, 24, bias=False), torch.randn(7, 16)),
    (_conv1d_hf, torch.randn(2, 5, 16)),
    (lambda: nn.Conv2d(16, 24, 1), torch.randn(2, 16, 5, 6)),
    (lambda: nn.Conv2d(16, 24, 1, stride=2, bias=False), torch.randn(2, 16, 7, 6)),
])
@pytest.mark.parametrize("chunk", [None, 4])
def test_csr_layer_matches_dense(make, x, chunk):
    torch.manual_seed(0)
    dense = _zero_(make(), 0.8)
    want = dense(x)
    sd = {k: v.clone() for k, v in dense.state_dict().items()}
    layer = CSRLayer(copy.deepcopy(dense), chunk=chunk)
    torch.testing.assert_close(layer(x), want, atol=ATOL, rtol=RTOL)
    got_sd = layer.state_dict()  # dense-shaped, same keys and order
    assert list(got_sd) == list(sd)
    for k in sd:
        torch.testing.assert_close(got_sd[k], sd[k], atol=0, rtol=0)


def test_csr_layer_loads_dense_state_dict():
    a, b = _zero_(nn.Linear(8, 4), 0.5, seed=1), _zero_(nn.Linear(8, 4), 0.5, seed=2)
    layer = CSRLayer(copy.deepcopy(a))
    layer.load_state_dict(b.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), b(x), atol=ATOL, rtol=RTOL)


def test_layer_kinds_rejected():
    with pytest.raises(ValueError, match="CSR kernels cannot run it"):
        CSRLayer(nn.Conv2d(4, 4, 3))


# --- whole models ----------------------------------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pw(torch.relu(self.conv(x))).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("forced", ["csr-chunk128", "csr"])
def test_auto_with_injected_timings_converts_and_matches(forced):
    model = _zero_(_Net(), 0.9).eval()
    x = torch.randn(200, 3, 4, 4)  # pw sees 3200 > 128 tokens: the chunked candidate exists there
    want = model(x)
    rep = use_sparse_kernels_(model, x, timer=_always(forced))
    choices = {la.name: la.choice for la in rep.layers}
    assert choices["conv"] == "dense"  # 3×3: no kernel
    assert choices["fc1"] == choices["fc2"] == forced  # 200 tokens > 128: both candidates offered
    assert choices["pw"] == forced
    assert isinstance(model.pw, CSRLayer) and isinstance(model.conv, nn.Conv2d)
    torch.testing.assert_close(model(x), want, atol=ATOL, rtol=RTOL)
    assert rep.max_abs_diff is not None and rep.max_abs_diff <= ATOL
    assert rep.bytes < rep.dense_bytes


def test_auto_keeps_dense_when_sparse_measured_slower():
    model = _zero_(_Net(), 0.95).eval()
    x = torch.randn(4, 3, 4, 4)
    rep = use_sparse_kernels_(model, x, timer=lambda fns: {k: (1.0 if k == "dense" else 1.2) for k in fns})
    assert not rep.converted
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.children())
    assert "nothing was converted" in rep.summary()


def test_auto_reverts_when_converted_model_is_slower_end_to_end():
    model = _zero_(_Net(), 0.95).eval()
    x = torch.randn(4, 3, 4, 4)
    want = model(x)
    names = [n for n, _ in model.named_parameters()]
    layer_fast = _always("csr")

    def timer(fns):  # every layer faster alone, the whole converted model slower
        return {"dense": 1.0, "converted": 1.5} if "converted" in fns else layer_fast(fns)

    rep = use_sparse_kernels_(model, x, timer=timer)
    assert not rep.converted and rep.end_to_end_ms == {"dense": 1000.0, "converted": 1500.0}
    assert {la.reason for la in rep.layers if la.name != "conv"} == {
        "reverted: the converted model was not faster end to end"}
    assert not any(isinstance(m, CSRLayer) for m in model.modules())
    assert [n for n, _ in model.named_parameters()] == names
    torch.testing.assert_close(model(x), want, atol=0, rtol=0)


def test_auto_real_timing_never_slower_in_report():
    model = _zero_(_Net(), 0.95).eval()
    rep = use_sparse_kernels_(model, torch.randn(64, 3, 4, 4), repeats=3, warmup=1)
    for la in rep.layers:
        if la.times_ms:
            assert la.times_ms[la.choice] <= la.times_ms["dense"]


@pytest.mark.parametrize("build", [hf_bert, hf_gpt2])
def test_tiny_hf_model_end_to_end_and_restore(build):
    torch.manual_seed(0)
    model = _zero_(build(), 0.9).eval()
    batch = text_batch(2, 16)
    with torch.no_grad():
        want = model(**batch)[0]
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    rep = use_sparse_kernels_(model, batch, backend="csr")
    assert len(rep.converted) == len(rep.layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch)[0], want, atol=ATOL, rtol=RTOL)
    got = model.state_dict()
    assert list(got) == list(sd)
    for k in sd:
        torch.testing.assert_close(got[k], sd[k], atol=0, rtol=0)
    assert restore_dense_(model) == len(rep.converted)
    assert not any(isinstance(m, CSRLayer) for m in model.modules())
    assert list(dict(model.named_parameters())) == [k for k in sd if k in dict(model.named_parameters())]
    with torch.no_grad():
        torch.testing.assert_close(model(**batch)[0], want, atol=1e-6, rtol=1e-6)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], atol=0, rtol=0)


def test_restore_keeps_parameter_order_and_grad_flags():
    model = _zero_(_Net(), 0.9)
    names = [n for n, _ in model.named_parameters()]
    with pytest.warns(UserWarning, match="training mode"):
        use_sparse_kernels_(model, torch.randn(2, 3, 4, 4), backend="csr")
    restore_dense_(model)
    assert [n for n, _ in model.named_parameters()] == names
    assert all(p.requires_grad for p in model.parameters())


# --- bad input -------------------------------------------------------------------------------------------------

def test_model_without_zeros_reports_nothing_converted():
    model = _Net().eval()
    for backend in ("auto", "csr"):
        rep = use_sparse_kernels_(model, torch.randn(2, 3, 4, 4), backend=backend, timer=_always("csr"))
        assert not rep.converted
        assert {la.reason for la in rep.layers if la.name != "conv"} == {"no zeros"}
        assert "nothing was converted" in rep.summary()


def test_bad_example_inputs_raise_before_converting():
    model = _zero_(_Net(), 0.9)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="example_inputs cannot run the model"):
        use_sparse_kernels_(model, torch.randn(2, 5, 4, 4), backend="csr")
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.children())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_semi_structured_on_cpu_raises_naming_available():
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*available here: 'auto', 'csr', 'dense'"):
        use_sparse_kernels_(_Net(), torch.randn(2, 3, 4, 4), backend="semi_structured")


def test_unknown_backend_and_parametrized_layers_raise():
    with pytest.raises(ValueError, match="unknown backend 'cusparse'"):
        use_sparse_kernels_(_Net(), torch.randn(2, 3, 4, 4), backend="cusparse")
    from pts_hf import MagnitudeSparsifier
    model = _Net()
    sp = MagnitudeSparsifier(sparsity=0.5)
    sp.prepare(model)
    with pytest.raises(ValueError, match="still has a parametrization"):
        use_sparse_kernels_(model, torch.randn(2, 3, 4, 4))


# --- 2:4 checks (the kernels themselves need CUDA) ----------------------------------------------------------------

def test_is_2to4():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 3, 4]])
    assert is_2to4(w)
    assert not is_2to4(torch.tensor([[1.0, 1, 1, 0]]))
    assert not is_2to4(torch.ones(2, 6))  # in-dim not a multiple of 4


def test_semi_structured_reasons_on_cpu():
    w = torch.zeros(64, 64)
    assert "CUDA" in semi_structured_unsupported_reason(w)


def test_auto_on_cpu_never_offers_semi_structured():
    model = _zero_(_Net(), 0.9).eval()
    seen = []
    use_sparse_kernels_(model, torch.randn(2, 3, 4, 4), timer=lambda fns: seen.extend(fns) or dict.fromkeys(fns, 1.0))
    assert seen and "semi_structured" not in seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 kernels need CUDA")
def test_semi_structured_matches_dense_on_gpu():  # pragma: no cover - runs only where a GPU is lent
    lin = nn.Linear(128, 128).half().cuda()
    with torch.no_grad():
        lin.weight.view(128, -1, 4)[..., :2] = 0
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    want = lin(x)
    model = nn.Sequential(lin)
    rep = use_sparse_kernels_(model, x, backend="semi_structured")
    assert rep.converted
    torch.testing.assert_close(model(x), want, atol=1e-2, rtol=1e-2)


def test_auto_offers_semi_structured_where_supported(monkeypatch):
    """Wiring of the 2:4 candidate without a GPU: pretend every layer qualifies, stand in a CSR layer for the
    kernel, and let the injected timings make it the fastest."""
    import pts_hf.kernels.convert as convert

    class FakeSemiStructured(CSRLayer):
        pass

    monkeypatch.setattr(convert, "semi_structured_unsupported_reason", lambda matrix: None)
    monkeypatch.setattr(convert, "SemiStructuredLayer", FakeSemiStructured)
    model = _zero_(_Net(), 0.7).eval()
    x = torch.randn(2, 3, 4, 4)
    want = model(x)
    offered = []
    fast_2to4 = _always("semi_structured")
    rep = use_sparse_kernels_(model, x, timer=lambda fns: offered.append(sorted(fns)) or fast_2to4(fns))
    *per_layer, whole = offered  # the last timing is the end-to-end check
    assert per_layer and all(names == ["csr", "dense", "semi_structured"] for names in per_layer)
    assert whole == ["converted", "dense"]
    assert {la.choice for la in rep.layers if la.name != "conv"} == {"semi_structured"}
    assert isinstance(model.fc1, FakeSemiStructured)
    torch.testing.assert_close(model(x), want, atol=ATOL, rtol=RTOL)
