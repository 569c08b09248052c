"""Where files go: up-front checks of an output folder, and writes that never lose what was there before.

* :func:`check_output_location` runs before any work: it refuses the working directory, its parents, the home
  directory (and its parents) and the filesystem root, a file in place of a folder, a non-empty folder without
  ``overwrite``, a location where a file cannot be created (read-only, no permission) and one without room for
  ``need_bytes``. It creates nothing.
* :func:`staged_output` yields a temporary folder beside the destination; on success each file is moved into
  place (files of the same name are replaced, every other file in the folder is kept); on any failure the
  destination is left exactly as it was, and no folder that pts_hf created stays behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputLocationError", "check_output_location", "check_writable", "folder_bytes", "staged_output"]


class OutputLocationError(ValueError):
    """The output location cannot (or must not) be written; the message says why and what to do."""


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def _protected(path: Path) -> str | None:
    """Why ``path`` (resolved) must not be an output folder, or None."""
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if path == cwd:
        return "is the current directory"
    if path in cwd.parents:
        return "is a parent of the current directory"
    if path == home:
        return "is the home directory"
    if path in home.parents:
        return "is a parent of the home directory"
    if path.parent == path:
        return "is the filesystem root"
    return None


def _probe_writable(folder: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".pts_hf-probe-", dir=folder)
    except OSError as e:
        raise OutputLocationError(f"cannot create files in {str(folder)!r} ({e.strerror or e}); choose another "
                                  "folder") from e
    os.close(fd)
    os.unlink(name)


def check_output_location(path: str | Path, *, overwrite: bool = False, need_bytes: int = 0,
                          what: str = "output") -> None:
    """Raise :class:`OutputLocationError` if ``path`` cannot take the output (see the module docstring)."""
    path = Path(path)
    resolved = path.expanduser().resolve()
    why = _protected(resolved)
    if why:
        raise OutputLocationError(f"{what} {str(path)!r} {why}; pts-hf writes several files there: give a new "
                                  "or dedicated folder, e.g. runs/my-run")
    if path.exists() and not path.is_dir():
        raise OutputLocationError(f"{what} {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputLocationError(f"{what} {str(path)!r} exists and is not empty; pass --overwrite to replace the "
                                  "files pts-hf writes there (other files are kept), or give another folder")
    base = _existing_ancestor(resolved)
    if not base.is_dir():
        raise OutputLocationError(f"{what} {str(path)!r}: {str(base)!r} is a file, so the folder cannot be created")
    _probe_writable(base)
    if need_bytes > 0:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise OutputLocationError(f"{what} {str(path)!r}: about {need_bytes / 2**20:.1f} MiB needed but only "
                                      f"{free / 2**20:.1f} MiB free on that filesystem; free space or choose "
                                      "another folder")


def check_writable(path: str | Path, what: str = "folder") -> None:
    """Files can be created at ``path`` (or, if it does not exist yet, in its nearest existing parent)."""
    resolved = Path(path).expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise OutputLocationError(f"{what} {str(path)!r} exists and is not a folder")
    base = _existing_ancestor(resolved)
    if not base.is_dir():
        raise OutputLocationError(f"{what} {str(path)!r}: {str(base)!r} is a file, so the folder cannot be created")
    _probe_writable(base)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p`` that returns the folders it created (deepest last)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    created = []
    for d in reversed(missing):
        d.mkdir()
        created.append(d)
    return created


def _remove_created(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty


@contextlib.contextmanager
def staged_output(path: str | Path, replace_names: set[str] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success move its files into ``path`` (see the module docstring).

    ``replace_names``: further files in ``path`` written by an earlier pts_hf run that are removed on success
    (e.g. the weights of another format); nothing else in ``path`` is touched.
    """
    out = Path(path)
    created = _make_dirs(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".pts_hf-save-", dir=out))
    except BaseException:
        _remove_created(created)
        raise
    backup = tmp / ".previous"
    moved: list[str] = []
    saved: list[str] = []
    try:
        yield tmp
        new = sorted(f.name for f in tmp.iterdir() if f.name != ".previous")
        backup.mkdir()
        for name in sorted(set(new) | (replace_names or set())):
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, backup / name)
                saved.append(name)
        for name in new:
            os.replace(tmp / name, out / name)
            moved.append(name)
    except BaseException:
        for name in moved:  # undo: the destination goes back to exactly what it held
            with contextlib.suppress(OSError):
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
                else:
                    (out / name).unlink()
        for name in saved:
            with contextlib.suppress(OSError):
                os.replace(backup / name, out / name)
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
