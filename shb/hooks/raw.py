"""The one place where shb attaches anything to a torch module: forward hooks, forward pre-hooks, swapped
submodules and switched settings, each recorded in an ``Attached`` and undone by its ``remove()`` (last
first, also on exceptions and KeyboardInterrupt when used as a context manager).

Nothing else in shb calls ``register_forward_hook`` / ``register_forward_pre_hook`` or replaces a
submodule (tests/unit/test_hooks_only_here.py checks): code that reaches into a model goes through the
named points of ``shb.hooks``. This module imports nothing from shb, so ``shb.models.layout_norms`` (whose
probe runs before any point can be named) can use it without an import cycle.
"""

from __future__ import annotations

import copy
from collections.abc import Callable


class Attached:
    """What was attached to a model, to be undone by ``remove()``."""

    __slots__ = ("_undo",)

    def __init__(self):
        self._undo: list[Callable[[], None]] = []

    def pre(self, module, fn, *, with_kwargs: bool = False) -> None:
        """``fn(module, args[, kwargs])`` before every call of ``module`` (torch's forward pre-hook contract)."""
        self._undo.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs).remove)

    def post(self, module, fn, *, with_kwargs: bool = False) -> None:
        """``fn(module, args[, kwargs], output)`` after every call of ``module`` (torch's forward hook contract)."""
        self._undo.append(module.register_forward_hook(fn, with_kwargs=with_kwargs).remove)

    def swap(self, parent, name: str | int, stand_in) -> None:
        """``parent.<name>`` (or ``parent[name]`` of a ModuleList) replaced by ``stand_in`` until removal."""
        if isinstance(name, int):
            original = parent[name]
            parent[name] = stand_in
            self._undo.append(lambda: parent.__setitem__(name, original))
        else:
            original = getattr(parent, name)
            setattr(parent, name, stand_in)
            self._undo.append(lambda: setattr(parent, name, original))

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` at removal (a setting switched for the duration, e.g. the attention kernel)."""
        self._undo.append(undo)

    def __len__(self) -> int:
        return len(self._undo)

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> Attached:
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False


def unhooked_copy(module):
    """A deep copy of ``module`` without the hooks it carries now (copies made while a hook is attached)."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    return clone
