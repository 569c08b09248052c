"""One owner for every hook the pipeline registers: all are removed on exit, also after an exception."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookOwner", "StopForward"]


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (its work is done)."""


class HookOwner:
    """``with HookOwner() as hooks: hooks.pre(module, fn); hooks.post(module, fn)`` — removed on exit."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def pre(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def post(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> HookOwner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
