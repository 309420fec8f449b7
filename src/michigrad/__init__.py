"""michigrad: micrograd's scalar autograd, with a compiled core.

``from michigrad.engine import Value`` gives the compiled engine when it is built, else the
pure-Python one (``MICHIGRAD_PURE=1`` forces the latter); ``michigrad.ENGINE`` says which.
"""

from __future__ import annotations

from .engine import ENGINE, Value

__version__ = "0.1.0"

__all__ = ["ENGINE", "Value", "__version__"]
