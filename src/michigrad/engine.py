"""``michigrad.engine.Value``: the compiled core when it is built, else the pure-Python engine.

``MICHIGRAD_PURE=1`` in the environment selects the pure-Python engine (``_reference``) even when
the compiled one is available; ``michigrad.ENGINE`` says which one is active.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

ENGINE: str

if TYPE_CHECKING:  # type checkers see the compiled engine's stub (_engine.pyi): the public type
    from ._engine import Value, linear, max_of
elif os.environ.get("MICHIGRAD_PURE", "") not in ("", "0"):
    from ._reference import Value, linear, max_of

    ENGINE = "reference"
else:
    try:
        from ._engine import Value, linear, max_of
    except ImportError as exc:  # no compiled extension for this platform: say so once, go on
        warnings.warn(
            f"michigrad: compiled engine unavailable ({exc}); using the pure-Python engine, "
            "which is much slower. Set MICHIGRAD_PURE=1 to silence this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
        from ._reference import Value, linear, max_of

        ENGINE = "reference"
    else:
        ENGINE = "compiled"

__all__ = ["ENGINE", "Value", "linear", "max_of"]
