"""Sharing sparse checkpoints on the Hugging Face Hub, with a generated model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pts_hf.checkpoint.sidecar import SIDECAR_NAME

__all__ = ["model_card", "push_to_hub"]


def model_card(side: dict[str, Any], repo_id: str, max_rows: int = 40) -> str:
    """A README.md for a sparse checkpoint from its ``sparsity_config.json``."""
    method = side.get("method") or "unknown"
    fmt = side.get("format", "dense")
    lines = [
        "---", "library_name: transformers" if fmt == "dense" else "library_name: pts_hf",
        "tags:", "- pts_hf", "- sparse", f"- {method}", "---", "",
        f"# {repo_id.split('/')[-1]}", "",
        f"Unstructured sparse model made with [pts_hf](https://github.com/) post-training sparsity, method "
        f"**{method}**.", "",
        f"- target sparsity: {side.get('target_sparsity')}",
        f"- achieved global sparsity: {side.get('global_sparsity', 0):.6f} (zeros ÷ elements over the targeted "
        "weights)",
        f"- storage format: `{fmt}`",
    ]
    calib = side.get("calibration") or {}
    if calib.get("samples"):
        lines.append(f"- calibration: {calib['samples']} unlabeled samples, seed {calib.get('seed')}")
    for k, v in (side.get("metrics") or {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## How to load", ""]
    if fmt == "dense":
        lines += ["The weights are ordinary dense tensors with zeros in place: no extra library is needed.", "",
                  "```python", "from transformers import AutoModel", f'model = AutoModel.from_pretrained("{repo_id}")',
                  "```"]
    else:
        lines += [f"The weights are stored compressed (pts_hf format `{fmt}`); load them with pts_hf:", "",
                  "```python", "import pts_hf", f'model = pts_hf.load_sparse("{repo_id}")',
                  "# or: pts_hf.register_transformers_plugin(), then transformers' own from_pretrained", "```"]
    layers = side.get("layers") or {}
    if layers:
        lines += ["", "## Per-layer sparsity", "", "| layer | elements | sparsity |", "| --- | --- | --- |"]
        for name, info in list(layers.items())[:max_rows]:
            lines.append(f"| `{name}` | {info.get('numel')} | {info.get('sparsity', 0):.4f} |")
        if len(layers) > max_rows:
            lines.append(f"| … {len(layers) - max_rows} more | | |")
    return "\n".join(lines) + "\n"


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload sparse model (pts_hf)", api: Any = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it, writing a model card if it has none.

    Returns the commit URL reported by ``huggingface_hub``.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    side_path = folder / SIDECAR_NAME
    if not side_path.is_file():
        raise FileNotFoundError(f"{folder} has no {SIDECAR_NAME}: save it with pts_hf.save_sparse first")
    readme = folder / "README.md"
    if not readme.exists():
        readme.write_text(model_card(json.loads(side_path.read_text()), repo_id))
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
