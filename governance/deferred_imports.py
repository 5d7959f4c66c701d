"""Import a library without loading the optional modules it imports but only uses inside functions.

Some libraries import heavy dependencies at the top of modules whose functions are the only users
of them (Great Expectations imports scipy.stats and altair for one expectation Atelier never uses,
over a third of its import time). `deferring(names)` lets such a library be imported while
those modules stay unloaded:

- inside the `with` block, each named module that is installed and not yet imported is a
  placeholder in `sys.modules` (and, for `pkg.mod`, the attribute `mod` of `pkg`), so whatever
  binds it then (`import altair as alt`, `from scipy import stats`) keeps the placeholder;
- the first time an attribute is read from a placeholder (`stats.entropy`), the real module is
  imported through the ordinary import system and the placeholder forwards to it from then on:
  same module, same classes, whatever imported it first;
- on leaving the block the placeholders still unused are taken out of `sys.modules` again, so
  every later import anywhere in the process is an ordinary one.

Nothing else changes: no import hook stays installed, no environment variable is set.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["deferring"]

_LOCK = threading.Lock()  # guards taking placeholders out of sys.modules
_TARGET = "_deferred_imports_target"  # the real module, in a placeholder's namespace once loaded


class _Placeholder(types.ModuleType):
    """Stands in for a module not imported yet; imports it on first use of any other attribute."""

    # Called only for names missing from the placeholder's own namespace: everything but the
    # module metadata set in `_place` (__name__, __spec__, __path__, ...), which the import
    # system reads while binding the name and which must not trigger the import.
    def __getattr__(self, attr: str) -> Any:
        return getattr(_load(self), attr)

    def __dir__(self) -> list[str]:
        return dir(_load(self))

    def __repr__(self) -> str:
        target = self.__dict__.get(_TARGET)
        return repr(target) if target is not None else f"<module {self.__name__!r} (deferred import)>"


def _load(placeholder: _Placeholder) -> types.ModuleType:
    target = placeholder.__dict__.get(_TARGET)
    if target is None:
        _withdraw(placeholder)  # still registered (used inside the block): let the real import run
        target = importlib.import_module(placeholder.__name__)
        placeholder.__dict__[_TARGET] = target
    return target


def _withdraw(placeholder: _Placeholder) -> None:
    name = placeholder.__name__
    parent_name, _, child = name.rpartition(".")
    with _LOCK:
        if sys.modules.get(name) is placeholder:
            del sys.modules[name]
        parent = sys.modules.get(parent_name) if parent_name else None
        if parent is not None and parent.__dict__.get(child) is placeholder:
            delattr(parent, child)  # the package's own attribute lookup (or a later import) sets the real one


def _place(name: str) -> _Placeholder | None:
    if name in sys.modules:
        return None  # already imported: nothing to save
    try:
        spec = importlib.util.find_spec(name)  # imports the parent package of a dotted name
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None  # not installed: the importing library's own ImportError handling applies
    placeholder = _Placeholder(name)
    placeholder.__spec__ = spec
    placeholder.__loader__ = spec.loader
    placeholder.__package__ = spec.parent
    if spec.has_location:  # read by tools that walk sys.modules (inspect.getmodule)
        placeholder.__file__ = spec.origin
        placeholder.__dict__["__cached__"] = spec.cached
    if spec.submodule_search_locations is not None:
        # A package keeps its __path__, so `import pkg.sub` inside the block imports `sub` alone
        # (pkg's body runs on first use). Read through __getattr__ instead, it would import pkg
        # for real in mid-import, and the import system would then run `sub` again if pkg did.
        placeholder.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = placeholder
    parent_name, _, child = name.rpartition(".")
    if parent_name:
        setattr(sys.modules[parent_name], child, placeholder)  # what `from pkg import mod` binds
    return placeholder


@contextlib.contextmanager
def deferring(names: Iterable[str]) -> Iterator[list[str]]:
    """Within the block, importing any of `names` binds a placeholder that imports it on first use.

    Yields the names actually deferred (those installed and not imported yet). Meant to wrap the
    import of a library that imports these modules at its top level but only uses them inside
    functions; see the module docstring.
    """
    placed: list[_Placeholder] = []
    try:
        for name in names:
            placeholder = _place(name)
            if placeholder is not None:
                placed.append(placeholder)
        yield [p.__name__ for p in placed]
    finally:
        for placeholder in placed:
            _withdraw(placeholder)
