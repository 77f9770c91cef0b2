"""Registry of compression methods: name -> Method instance, id -> Method instance.

Every module of this package that defines ``METHOD`` (a ``Method`` instance) is registered
at import; wire ids come from ``ids.METHOD_IDS``. To add a method: one module here, one
line in ``ids.py``.
"""

from __future__ import annotations

from .base import Method
from .ids import DEFAULT_METHOD, METHOD_IDS

__all__ = ["DEFAULT_METHOD", "METHOD_IDS", "Method", "by_id", "get", "names", "register"]

_BY_NAME: dict[str, Method] = {}
_BY_ID: dict[int, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (names and wire ids must be unique)."""
    if method.name in _BY_NAME or method.method_id in _BY_ID:
        raise ValueError(f"method {method.name!r} / id {method.method_id} already registered")
    _BY_NAME[method.name] = method
    _BY_ID[method.method_id] = method
    return method


def get(name: str) -> Method:
    """The method registered under ``name``; ValueError lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a str, got {type(name).__name__}")
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(_BY_NAME)}") from None


def by_id(method_id: int) -> Method | None:
    return _BY_ID.get(method_id)


def names() -> list[str]:
    """Registered method names, in wire-id order."""
    return [_BY_ID[i].name for i in sorted(_BY_ID)]


def _register_builtin() -> None:
    """Register every module of this package that defines ``METHOD``."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "METHOD", None), Method):
            register(module.METHOD)


_register_builtin()
