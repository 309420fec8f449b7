"""michigrad: micrograd's scalar autograd, with a compiled core.

``from michigrad.engine import Value`` gives the compiled engine when it is built, else the
pure-Python one (``MICHIGRAD_PURE=1`` forces the latter); ``michigrad.ENGINE`` says which.
``michigrad.nn`` (micrograd's MLP and the course's layers), ``optim``, ``losses`` and
``datasets`` build on it; ``michigrad.visualize`` draws graphs (imported on demand: it needs the
optional ``viz`` extra).
"""

from __future__ import annotations

from . import datasets, losses, nn, optim
from .engine import ENGINE, Value, linear
from .replay import Graph

__version__ = "0.1.0"

__all__ = ["ENGINE", "Graph", "Value", "__version__", "datasets", "linear", "losses", "nn", "optim"]
