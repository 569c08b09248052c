"""``use_sparse_kernels_`` (per-layer kernel choice, in place) and ``restore_dense_`` (undo)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from pts_hf.kernels.csr import CSRLayer, _SparseMatmulLayer, layer_kind, to_matrix
from pts_hf.kernels.select import DENSE, choose_kernel, time_candidates
from pts_hf.kernels.semi_structured import SemiStructuredLayer, semi_structured_unsupported_reason

__all__ = ["BACKENDS", "TOLERANCE", "KernelReport", "LayerKernel", "restore_dense_", "run_model",
           "use_sparse_kernels_"]

BACKENDS = ("auto", "dense", "csr", "semi_structured")
#: the outputs of a converted model match the dense-with-zeros model to ``atol + rtol·|dense|`` (fp32: only the
#: float summation order differs); checked on ``example_inputs`` and stored in the report.
TOLERANCE = {"float32": (1e-4, 1e-4), "float64": (1e-10, 1e-8), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}
CSR_CHUNK = 128  # tokens per block for the chunked CSR candidate (measured fastest of 128 / 512 / 1024)


@dataclass
class LayerKernel:
    """The choice made for one layer."""

    name: str
    kind: str | None  # linear | conv1d_hf | conv1x1 | None (unsupported)
    shape: tuple[int, ...]
    sparsity: float
    choice: str  # dense | csr | csr-chunk128 | semi_structured
    reason: str
    times_ms: dict[str, float] = field(default_factory=dict)
    dense_bytes: int = 0
    bytes: int = 0


@dataclass
class KernelReport:
    """What :func:`use_sparse_kernels_` did: per-layer choices, measured times and weight bytes."""

    backend: str
    layers: list[LayerKernel]
    max_abs_diff: float | None = None  # model outputs, converted vs dense-with-zeros, on example_inputs
    tolerance: tuple[float, float] | None = None
    end_to_end_ms: dict[str, float] | None = None  # auto + verify: whole model, dense vs converted

    @property
    def converted(self) -> list[LayerKernel]:
        return [la for la in self.layers if la.choice != DENSE]

    @property
    def dense_bytes(self) -> int:
        return sum(la.dense_bytes for la in self.layers)

    @property
    def bytes(self) -> int:
        return sum(la.bytes for la in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "converted": len(self.converted), "layers": [asdict(la) for la in self.layers],
                "dense_bytes": self.dense_bytes, "bytes": self.bytes, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "end_to_end_ms": self.end_to_end_ms}

    def summary(self) -> str:
        width = max([5, *(len(la.name) for la in self.layers)])
        lines = [f"{'layer':<{width}}  {'sparsity':>8}  {'choice':<14} {'dense ms':>9} {'chosen ms':>9}  reason"]
        for la in self.layers:
            d = la.times_ms.get(DENSE)
            c = la.times_ms.get(la.choice)
            lines.append(f"{la.name:<{width}}  {la.sparsity:8.4f}  {la.choice:<14} "
                         f"{'' if d is None else f'{d:9.3f}':>9} {'' if c is None else f'{c:9.3f}':>9}  {la.reason}")
        if not self.converted:
            lines.append("nothing was converted: every layer stays dense (see reasons)")
        else:
            lines.append(f"{len(self.converted)} of {len(self.layers)} layers converted; targeted weights "
                         f"{self.bytes / 2**20:.2f} MiB vs {self.dense_bytes / 2**20:.2f} MiB dense "
                         f"({self.bytes / max(self.dense_bytes, 1):.3f}x)")
        return "\n".join(lines)


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on ``inputs``: a dict is passed as keyword arguments, a tuple/list as positional ones."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _capture_inputs(model: nn.Module, layers: dict[str, nn.Module], inputs: Any) -> tuple[dict[str, torch.Tensor], Any]:
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in layers.items():
        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach()
        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            out = run_model(model, inputs)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"example_inputs cannot run the model ({type(e).__name__}: {first}); "
                         "pass what model(...) accepts: a tensor, a tuple of arguments or a dict of keyword "
                         "arguments. Nothing was converted.") from e
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def _candidates(module: nn.Module, kind: str, matrix: torch.Tensor, x: torch.Tensor, backend: str
                ) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Sparse layer candidates for ``backend`` (name -> module) and the reasons others were skipped."""
    built: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    if backend in ("auto", "csr"):
        if matrix.device.type != "cpu":
            skipped["csr"] = f"CSR kernels are used on CPU only (weight on {matrix.device.type})"
        elif matrix.dtype not in (torch.float32, torch.float64):
            skipped["csr"] = f"CPU CSR kernels need float32/float64, weight is {matrix.dtype}"
        else:
            built["csr"] = CSRLayer(module, kind)
            tokens = x.numel() // x.shape[1 if kind == "conv1x1" else -1]
            if backend == "auto" and tokens > CSR_CHUNK:
                built[f"csr-chunk{CSR_CHUNK}"] = CSRLayer(module, kind, chunk=CSR_CHUNK)
    if backend in ("auto", "semi_structured"):
        reason = semi_structured_unsupported_reason(matrix)
        if reason is None:
            built["semi_structured"] = SemiStructuredLayer(module, kind)
        else:
            skipped["semi_structured"] = reason
    return built, skipped


def _free_dense(module: nn.Module) -> None:
    """Drop the replaced layer's dense weight (the wrapper holds the sparse one; restore_dense_ puts it back)."""
    del module.weight
    if "bias" in module._parameters:
        del module.bias


def _verify_end_to_end(model: nn.Module, example_inputs: Any, swapped: list[tuple[str, nn.Module, nn.Module]],
                       time_fn: Callable[[dict[str, Callable[[], object]]], dict[str, float]]) -> dict[str, float]:
    """Time the whole model with the dense layers and with the chosen kernels, swapping them in turn."""
    def run_with(sparse: bool) -> object:
        for name, module, new in swapped:
            _set_submodule(model, name, new if sparse else module)
        return run_model(model, example_inputs)

    times = time_fn({DENSE: lambda: run_with(False), "converted": lambda: run_with(True)})
    for name, _module, new in swapped:
        _set_submodule(model, name, new)
    return times


def use_sparse_kernels_(
    model: nn.Module,
    example_inputs: Any,
    backend: str = "auto",
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    min_sparsity: float = 0.5,
    repeats: int = 9,
    warmup: int = 2,
    margin: float = 0.05,
    check: bool = True,
    verify: bool = True,
    verify_repeats: int = 5,
    timer: Callable[[dict[str, Callable[[], object]]], dict[str, float]] | None = None,
) -> KernelReport:
    """Run each targeted layer with the fastest of dense, CSR (CPU) and 2:4 semi-structured (CUDA), in place.

    Each layer is timed on the input it receives when the model runs ``example_inputs`` (a tensor, a tuple of
    arguments or a dict of keyword arguments), ``repeats`` interleaved runs each, keeping the fastest run (see
    :func:`~pts_hf.kernels.time_candidates`); a sparse kernel replaces it only if it measured faster than dense
    by ``margin`` (``backend="auto"``). ``backend="csr"`` / ``"semi_structured"`` force that kernel on every
    layer it can run that holds zeros; ``"dense"`` converts nothing. Layers below ``min_sparsity`` stay dense
    under ``auto`` without being timed. With ``verify`` (``auto`` only) the whole model is then timed with the
    dense layers and with the chosen kernels (``verify_repeats`` interleaved runs each); if the converted model is
    not faster every layer is put back to dense, so the result is never slower end to end than measured dense.
    Converted layers keep dense-shaped ``state_dict()`` entries; undo with :func:`restore_dense_`. ``timer``
    replaces the timing loop, for layers and end to end (tests inject timings through it).

    Raises:
        ValueError: unknown backend; ``example_inputs`` the model cannot run; a targeted layer still
            parametrized (squash the masks first). Raised before anything is converted.
        RuntimeError: ``backend="semi_structured"`` without CUDA (the message names what is available).
    """
    from pts_hf.targets import discover_targets

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "semi_structured" and not torch.cuda.is_available():
        raise RuntimeError("backend='semi_structured' needs a CUDA GPU (2:4 kernels via cuSPARSELt/CUTLASS) and "
                           "none is available; available here: 'auto', 'csr', 'dense'")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    found = discover_targets(model, targets=targets, ignore=ignore)
    for t in found:
        if parametrize.is_parametrized(t.module):
            raise ValueError(f"layer {t.module_name!r} still has a parametrization (live mask); squash it first "
                             "(sparsifier.squash_mask(), or use the model of a pts_hf.sparsify result)")
    layers = {t.module_name: t.module for t in found if not isinstance(t.module, _SparseMatmulLayer)}
    seen, reference = _capture_inputs(model, layers, example_inputs)
    if check and model.training:
        warnings.warn("the model is in training mode: dropout makes the output check meaningless and timings "
                      "include it; call model.eval() first", stacklevel=2)

    report: list[LayerKernel] = []
    swapped: list[tuple[str, nn.Module, _SparseMatmulLayer]] = []
    for name, module in layers.items():
        w = module.weight.detach()
        kind = layer_kind(module)
        sparsity = float((w == 0).sum()) / max(w.numel(), 1)
        dense_bytes = w.numel() * w.element_size()
        entry = LayerKernel(name, kind, tuple(w.shape), sparsity, DENSE, "", dense_bytes=dense_bytes,
                            bytes=dense_bytes)
        report.append(entry)
        if kind is None:
            entry.reason = f"{type(module).__name__} with this shape has no sparse kernel (Linear, Conv1D, 1×1 conv)"
            continue
        if name not in seen:
            entry.reason = "not called by example_inputs"
            continue
        if backend == DENSE:
            entry.reason = "backend='dense'"
            continue
        if sparsity == 0.0:
            entry.reason = "no zeros"
            continue
        if backend == "auto" and sparsity < min_sparsity:
            entry.reason = f"sparsity below min_sparsity={min_sparsity}"
            continue
        x = seen[name]
        built, skipped = _candidates(module, kind, to_matrix(w, kind), x, backend)
        if not built:
            entry.reason = "; ".join(f"{k}: {v}" for k, v in skipped.items())
            continue
        if backend == "auto":
            fns: dict[str, Callable[[], object]] = {DENSE: (lambda m=module, x=x: m(x))}
            fns.update({k: (lambda m=m, x=x: m(x)) for k, m in built.items()})
            times = timer(fns) if timer else time_candidates(fns, repeats=repeats, warmup=warmup, device=w.device)
            entry.times_ms = {k: v * 1e3 for k, v in times.items() if math.isfinite(v)}  # failed: left out
            choice = choose_kernel(times, margin=margin)
            entry.reason = "fastest measured" if choice != DENSE else f"no kernel beat dense by {margin:.0%}"
        else:
            choice = next(iter(built))
            entry.reason = f"forced by backend={backend!r}"
        if choice == DENSE:
            continue
        new = built[choice]
        _set_submodule(model, name, new)
        swapped.append((name, module, new))
        entry.choice, entry.bytes = choice, new.weight_nbytes()

    out = KernelReport(backend, report)
    if backend == "auto" and verify and swapped:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        times = _verify_end_to_end(model, example_inputs, swapped, timer or (
            lambda fns: time_candidates(fns, repeats=verify_repeats, warmup=1, device=device)))
        out.end_to_end_ms = {k: v * 1e3 for k, v in times.items()}
        if choose_kernel(times, margin=0.0) == DENSE:
            for name, module, _new in swapped:
                _set_submodule(model, name, module)
            for entry in out.converted:
                entry.choice, entry.bytes = DENSE, entry.dense_bytes
                entry.reason = "reverted: the converted model was not faster end to end"
            swapped = []
    for _name, module, _new in swapped:
        _free_dense(module)
    if check and out.converted:
        with torch.inference_mode():
            got = _first_tensor(run_model(model, example_inputs))
        ref = _first_tensor(reference)
        if got is not None and ref is not None and got.shape == ref.shape:
            out.max_abs_diff = float((got.float() - ref.float()).abs().max())
            out.tolerance = TOLERANCE.get(str(ref.dtype).replace("torch.", ""), (1e-4, 1e-4))
            atol, rtol = out.tolerance
            if out.max_abs_diff > atol + rtol * float(ref.float().abs().max()):
                warnings.warn(f"converted model's outputs differ from the dense model's by {out.max_abs_diff:.3g}, "
                              f"more than atol={atol} + rtol={rtol}·max|output|; call restore_dense_(model) and "
                              "report the model", stacklevel=2)
    return out


def restore_dense_(model: nn.Module) -> int:
    """Put every layer converted by :func:`use_sparse_kernels_` back as its original module with a dense weight
    (the same values, device and dtype). Returns how many layers were restored."""
    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, _SparseMatmulLayer)]
    for name, wrapper in wrappers:
        original: nn.Module = wrapper.original
        original.register_parameter("weight", nn.Parameter(wrapper.dense_weight(),
                                                           requires_grad=wrapper.weight_requires_grad))
        original.register_parameter("bias", wrapper.bias)
        _set_submodule(model, name, original)
    return len(wrappers)
