"""Heavy third-party libraries, imported on first use.

    torch = lazy("torch")        # in a module header: the dependency is visible there,
    torch.tensor([1, 2])         # and paid for only when a function first touches it

`deltaprompts status`, a config error or `--help` must not wait seconds for torch, vLLM,
Ray, transformers, datasets or matplotlib. Every other import is a plain module-level one,
so a file's header lists what it depends on.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> types.ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_target"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first attribute access."""
    return _LazyModule(name)
