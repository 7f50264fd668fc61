"""A package's names imported on first use (PEP 562): ``aiw submit`` and other short
paths import only the modules they touch.

In the package, after ``__all__`` and a map of each name to the module that defines it::

    __getattr__, __dir__ = lazy_exports(globals(), _WHERE)

(with the same names imported under ``TYPE_CHECKING`` for type checkers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of the package whose globals are
    ``namespace``: a name of ``where`` is imported from its module when first asked
    for, and kept in the package from then on."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(namespace["__all__"])

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
