"""Fashion-MNIST loading, calibration subsets and top-1 evaluation.

The data is read from local IDX files (the Debian package ``dataset-fashion-mnist`` installs them under
``/usr/share/datasets/fashion-mnist``; the environment variable ``PTS_HF_FASHION_MNIST`` can point elsewhere).
If no local copy exists, the Hugging Face Hub dataset ``fashion_mnist`` is used as a fallback, which needs
internet access. ``datasets`` is imported lazily, only for that fallback.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pts_hf.calibration import floating_dtype
from pts_hf.losses import extract_output
from pts_hf.progress import progress_bar

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "ENV_VAR",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "calibration_subset",
    "evaluate_top1",
    "find_fashion_mnist_dir",
    "load_fashion_mnist",
    "read_idx",
]

FMNIST_MEAN: float = 0.2860
FMNIST_STD: float = 0.3530
ENV_VAR = "PTS_HF_FASHION_MNIST"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_KINDS = ("images-idx3", "labels-idx1")
# IDX type codes -> numpy dtype (big-endian where it matters). Fashion-MNIST only uses 0x08 (uint8).
_IDX_DTYPES = {0x08: np.dtype(np.uint8)}


def _file_for(directory: Path, prefix: str, kind: str) -> Path | None:
    """Return the gzipped or raw IDX file ``<prefix>-<kind>-ubyte[.gz]`` in ``directory``, if present."""
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _missing_files(directory: Path) -> list[str]:
    """Names (without the optional ``.gz``) of the required IDX files missing from ``directory``."""
    return [
        f"{prefix}-{kind}-ubyte[.gz]"
        for prefix in _SPLIT_PREFIX.values()
        for kind in _KINDS
        if _file_for(directory, prefix, kind) is None
    ]


def find_fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path | None:
    """Locate a directory holding the four Fashion-MNIST IDX files.

    Args:
        root: Directory to use. If given, it must exist and hold all four files
            (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, optionally gzipped).

    Returns:
        The directory, or ``None`` when ``root`` is not given and neither ``$PTS_HF_FASHION_MNIST`` nor the
        Debian location holds the files.

    Raises:
        FileNotFoundError: ``root`` (or ``$PTS_HF_FASHION_MNIST``, when set) is missing or incomplete.
    """
    explicit: list[tuple[Path, str]] = []
    if root is not None:
        explicit.append((Path(root).expanduser(), "root"))
    elif os.environ.get(ENV_VAR):
        explicit.append((Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"))
    for directory, origin in explicit:
        if not directory.is_dir():
            raise FileNotFoundError(
                f"Fashion-MNIST {origin} {str(directory)!r} does not exist or is not a directory"
            )
        missing = _missing_files(directory)
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST {origin} {str(directory)!r} lacks {', '.join(missing)}"
            )
        return directory
    if DEBIAN_FASHION_MNIST_DIR.is_dir() and not _missing_files(DEBIAN_FASHION_MNIST_DIR):
        return DEBIAN_FASHION_MNIST_DIR
    return None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 numpy array.

    Format: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one big-endian
    uint32 per dimension, then the data.

    Raises:
        ValueError: the header is malformed or the data size does not match the declared shape.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {str(path)!r}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic {raw[:4].hex() or 'empty'!s})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{str(path)!r}: unsupported IDX type code 0x{type_code:02x} (only uint8 is supported)"
        )
    if ndim == 0:
        raise ValueError(f"{str(path)!r}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{str(path)!r}: truncated IDX header ({len(raw)} bytes, need {header_len})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(raw) - header_len
    if actual != expected:
        raise ValueError(
            f"{str(path)!r}: IDX shape {shape} needs {expected} data bytes but the file has {actual}"
        )
    return np.frombuffer(raw, dtype=_IDX_DTYPES[type_code], offset=header_len).reshape(shape)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise uint8 images [N,28,28] and labels [N] into float [N,1,28,28] and int64 [N] tensors."""
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"unexpected Fashion-MNIST shapes: images {images.shape}, labels {labels.shape}")
    x = torch.from_numpy(np.array(images, dtype=np.float32, copy=True)).div_(255.0)
    x = x.sub_(FMNIST_MEAN).div_(FMNIST_STD).unsqueeze_(1)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
    return x, y


@functools.lru_cache(maxsize=4)
def _load_cached(split: str, directory: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split, from ``directory`` or (``None``) from the Hugging Face Hub; cached per process."""
    if directory is not None:
        prefix = _SPLIT_PREFIX[split]
        d = Path(directory)
        images = read_idx(_file_for(d, prefix, "images-idx3"))  # type: ignore[arg-type]
        labels = read_idx(_file_for(d, prefix, "labels-idx1"))  # type: ignore[arg-type]
        return _to_tensors(images, labels)
    try:
        import datasets  # lazy: heavy, and only needed without local files

        hub = datasets.load_dataset("fashion_mnist", split=split)
        images = np.stack([np.asarray(img, dtype=np.uint8) for img in hub["image"]])
        labels = np.asarray(hub["label"], dtype=np.int64)
    except Exception as exc:
        raise FileNotFoundError(
            "Fashion-MNIST not found locally and the Hugging Face Hub fallback failed "
            f"({type(exc).__name__}: {exc}). Install it with `apt-get install dataset-fashion-mnist` "
            f"or set ${ENV_VAR} to a directory holding {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]."
        ) from exc
    return _to_tensors(images, labels)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> TensorDataset:
    """Load a Fashion-MNIST split as normalised tensors.

    Args:
        split: ``"train"`` (60k images) or ``"test"`` (10k images).
        root: Optional directory with the IDX files; see :func:`find_fashion_mnist_dir`.

    Returns:
        ``TensorDataset`` of float images ``[N, 1, 28, 28]`` normalised with ``FMNIST_MEAN``/``FMNIST_STD``
        and int64 labels ``[N]``. The tensors are shared with an in-process cache: do not modify in place.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be one of {sorted(_SPLIT_PREFIX)}, got {split!r}")
    directory = find_fashion_mnist_dir(root)
    x, y = _load_cached(split, None if directory is None else str(directory.resolve()))
    return TensorDataset(x, y)


def calibration_subset(dataset: Dataset, n: int, seed: int = 0) -> TensorDataset:
    """Draw ``n`` samples without replacement from ``dataset`` using a seeded ``torch.Generator``.

    Raises:
        ValueError: ``n < 1`` or ``n > len(dataset)``.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if n < 1 or n > size:
        raise ValueError(f"calibration size n must be in [1, {size}], got {n}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(size, generator=gen)[:n]
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    samples = [dataset[int(i)] for i in idx]
    columns = zip(*samples)
    return TensorDataset(*(torch.stack([torch.as_tensor(v) for v in col]) for col in columns))


@torch.no_grad()
def evaluate_top1(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in percent (``progress``: a bar / periodic lines).

    The model is put in eval mode for the evaluation and its previous training mode is restored afterwards.
    ``device`` defaults to the device of the model's first parameter (CPU for a parameterless model).
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    dtype = floating_dtype(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for x, y in progress_bar(loader, desc="evaluating", enabled=progress, unit="batch"):
            x = x.to(device=device, dtype=dtype) if dtype is not None and x.is_floating_point() else x.to(device)
            logits, _ = extract_output(model(x))  # tensor, HF ModelOutput (.logits), dict or tuple
            correct += int((logits.argmax(dim=-1).cpu() == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_top1 got an empty dataset")
    return 100.0 * correct / total
