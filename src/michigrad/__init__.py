"""michigrad: micrograd's scalar autograd, with a compiled core.

``from michigrad.engine import Value`` gives the compiled engine when it is built, else the
pure-Python one (``MICHIGRAD_PURE=1`` forces the latter); ``michigrad.ENGINE`` says which.
``michigrad.nn`` (micrograd's MLP and the course's layers), ``optim``, ``losses`` and
``datasets`` build on it; ``michigrad.visualize`` draws graphs (imported on demand: it needs the
optional ``viz`` extra). ``michigrad.MLArray`` (N-dimensional arrays of Values, ``michigrad.array``)
is imported on first use: it needs numpy (the optional ``array`` extra).
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING

from . import datasets, losses, nn, optim
from .engine import ENGINE, Value, linear
from .replay import Graph

__version__ = "0.1.0"

__all__ = ["ENGINE", "Graph", "Value", "__version__", "datasets", "linear", "losses", "nn", "optim"]

if TYPE_CHECKING:  # type checkers see the lazily served names (below) as the real ones
    from . import array as array
    from .array import MLArray as MLArray
    from .array import MLArrayBase as MLArrayBase
    from .array import array_class as array_class

# Names served lazily from michigrad.array (and the module itself), so that `import michigrad`
# does not import numpy.
_ARRAY_NAMES = frozenset({"MLArray", "MLArrayBase", "array_class", "array"})


def __getattr__(name: str) -> object:
    if name in _ARRAY_NAMES:
        try:
            array = _importlib.import_module(".array", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != "numpy":
                raise
            raise ImportError(f"michigrad.{name} needs numpy: pip install michigrad[array]") from exc
        return array if name == "array" else getattr(array, name)
    raise AttributeError(f"module 'michigrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ARRAY_NAMES)
