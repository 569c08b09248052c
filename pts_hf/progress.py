"""One progress-bar helper for every loop in pts_hf.

On a terminal it is a ``tqdm`` bar. When stderr is not a terminal (CI, a log file, ``2> run.log``) a tqdm bar
would write hundreds of ``\\r`` updates into the log; instead a plain line is written at most every
``LOG_INTERVAL_S`` seconds (and once at the end), e.g. ``fcpts 90%: 120/500 (24%) loss=0.0123 sparsity=0.9000``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["LOG_INTERVAL_S", "LineProgress", "progress_bar"]

LOG_INTERVAL_S = 30.0


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A tqdm-like object (iteration, ``update``, ``set_postfix``, ``close``, context manager) that writes plain
    periodic lines instead of redrawing a bar. Disabled, it only counts."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 enabled: bool = True, unit: str = "it", interval: float = LOG_INTERVAL_S, file: Any = None):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.interval = interval
        self.file = file
        self.n = 0
        self.postfix = ""
        self._start = time.monotonic()
        self._last = self._start
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress_bar(total=...) is not iterable; call update() instead")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        count = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        text = f"{self.desc}: {count} {self.unit}, {elapsed:.0f} s"
        return f"{text} {self.postfix}".rstrip()

    def _write(self) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(self._line(), file=stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.n:
            self._write()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 enabled: bool = True, unit: str = "it") -> Any:
    """A progress indicator over ``iterable`` (or a manual one of ``total`` steps driven by ``update()``).

    ``enabled=False`` shows nothing. On a terminal: a ``tqdm`` bar (removed when done). Otherwise: a
    :class:`LineProgress` writing a plain line to stderr every ``LOG_INTERVAL_S`` seconds and one at the end.
    Both support iteration, ``update``, ``set_postfix``, ``close`` and ``with``.
    """
    if enabled and _is_tty(sys.stderr):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, enabled=enabled, unit=unit)
