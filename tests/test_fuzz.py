"""Fuzz (hypothesis): sparsity values, layer shapes and allocation names give either an exact result or a clean
error raised by pts_hf itself, never a traceback from deep inside torch; the input model is never modified."""

import copy
import math
import traceback
import warnings

import pytest
import torch
from torch import nn

import pts_hf
from pts_hf.ops.allocation import ALLOCATIONS

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SHAPES = [(3, 0), (1, 1), (1, 3), (3, 1), (2, 2), (7, 5), (64, 48), (300, 200)]  # 1 element ... 60k
SPARSITY = st.one_of(
    st.floats(min_value=0.0, max_value=0.999),
    st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0, -0.1, 1.5, math.nan, math.inf, -math.inf]),
    st.sampled_from([True, None, "0.5", [0.5]]),
)
ALLOCATION = st.one_of(st.sampled_from(sorted(ALLOCATIONS)), st.sampled_from(["ERK", "Uniform", "", "owl?", "x"]),
                       st.sampled_from([None, 3]))


class Net(nn.Module):
    """Linear layers of the drawn shapes, with a 0-d parameter and a 1-element buffer that are not targets."""

    def __init__(self, shapes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for o, i in shapes)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("one", torch.ones(1))

    def forward(self, x):
        return x


def _raised_by_pts_hf(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and "pts_hf" in frames[-1].filename and "/torch/" not in frames[-1].filename


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(shapes=[(3, 0)], sparsity=0.0, allocation="erk", seed=0)  # an empty weight (was a ZeroDivisionError)
@example(shapes=[(1, 1), (300, 200)], sparsity=0.5, allocation="erk", seed=0)  # a half-way tie (was 1 zero off)
@example(shapes=[(3, 0), (1, 1)], sparsity=0.5, allocation="lamp", seed=0)
@example(shapes=[(1, 1)], sparsity=0.99, allocation="global", seed=0)
@given(shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4), sparsity=SPARSITY,
       allocation=ALLOCATION, seed=st.integers(0, 3))
def test_magnitude_exact_or_clean_error(shapes, sparsity, allocation, seed):
    torch.manual_seed(seed)
    model = Net(shapes)
    before = copy.deepcopy(model.state_dict())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = pts_hf.sparsify(model, None, method="magnitude", sparsity=sparsity, allocation=allocation, seed=seed,
                                bn_recalibration=False, progress=False)
    except (ValueError, TypeError) as e:
        assert _raised_by_pts_hf(e), "".join(traceback.format_exception(e))
        assert str(e)
        valid = isinstance(sparsity, float) and 0.0 <= sparsity < 1.0 and isinstance(allocation, str) \
            and allocation.lower() in ALLOCATIONS
        assert not valid or "cannot be reached" in str(e) or "no targetable weights" in str(e) \
            or (allocation.lower() == "owl" and "calibration data" in str(e)), f"refused: {e}"
    else:
        n = sum(r.layer_numel.values())
        zeros = round(r.global_sparsity * n)
        target = 0.5 if sparsity is None else float(sparsity)  # None: the default, as if left out
        assert zeros == round(target * n), (zeros, sparsity, n)
        assert all(0.0 <= v <= 1.0 for v in r.layer_sparsity.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(), (1,), (0,), (0, 3), (1, 1), (5,), (4, 0, 2)]),
       sparsity=st.floats(min_value=0.0, max_value=0.99), allocation=st.sampled_from(sorted(ALLOCATIONS)))
def test_allocate_on_odd_tensors_exact_or_clean_error(shape, sparsity, allocation):
    from pts_hf.ops.allocation import allocate

    w = torch.randn(shape) if shape else torch.tensor(0.3)
    try:
        levels = allocate(allocation, [w, torch.randn(8, 8)], sparsity)
    except (ValueError, TypeError) as e:
        assert _raised_by_pts_hf(e), "".join(traceback.format_exception(e))
    else:
        assert len(levels) == 2 and all(0.0 <= lv <= 1.0 for lv in levels)


class Parallel(nn.Module):
    """Linear layers of the drawn shapes, each applied to its slice of the input (a ModuleList the parent calls)."""

    def __init__(self, shapes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for o, i in shapes)

    def forward(self, x):
        return [layer(x[:, : layer.in_features]) for layer in self.layers]


STRUCTURE = st.sampled_from(["unstructured", "2:4", "1:4", "4:8", "1:2", "3:2", "0:4", "2:0", "x", "2:4:8", None])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(shapes=[(7, 5), (64, 48)], structure="2:4", method="sparsegpt", seed=0)
@given(shapes=st.lists(st.sampled_from([s for s in SHAPES if s[1] > 0]), min_size=1, max_size=3),
       structure=STRUCTURE, method=st.sampled_from(["magnitude", "wanda", "sparsegpt", "pot"]),
       seed=st.integers(0, 3))
def test_mask_structures_exact_or_clean_error(shapes, structure, method, seed):
    from pts_hf.layers import gemm_layout
    from pts_hf.ops.nm import is_nm, parse_structure

    torch.manual_seed(seed)
    model = Parallel(shapes)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(16, 300, generator=torch.Generator().manual_seed(seed))
    options = {"recon_steps": 2} if method == "pot" else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = pts_hf.sparsify(model, x, method=method, mask_structure=structure, seed=seed, batch_size=8,
                                progress=False, **options)
    except (ValueError, TypeError) as e:
        assert _raised_by_pts_hf(e), "".join(traceback.format_exception(e))
        assert structure not in ("unstructured", "2:4", "1:4", "4:8", "1:2") or "cannot be reached" in str(e), e
    else:
        nm = parse_structure(structure)
        for layer in r.model.layers:
            w = gemm_layout(layer, layer.weight).to_gemm(layer.weight.detach())
            if nm is not None and w.shape[-1] % nm[1] == 0:
                assert is_nm(w != 0, *nm)
            elif nm is not None:
                assert bool((w != 0).all())  # ineligible: left dense
        if nm is None:
            n = sum(r.layer_numel.values())
            assert abs(round(r.global_sparsity * n) - 0.5 * n) <= 0.5  # round(s·N), either way on an exact tie
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
