"""Toy data sets for the demo and the course, without scikit-learn.

``make_moons`` is ``sklearn.datasets.make_moons`` bit for bit: the same points, labels, shuffle
and noise for the same seed, drawn from the same NumPy random state (the global one by default,
as scikit-learn does), so micrograd's demo (``np.random.seed(1337)`` then
``make_moons(n_samples=100, noise=0.1)``) gets exactly its data. Without NumPy it still works:
it replays NumPy's legacy ``RandomState`` (MT19937, polar Box-Muller) in pure Python and returns
lists instead of arrays, with the same numbers for an explicit integer ``random_state``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Union

__all__ = ["make_moons"]

_MASK32 = 0xFFFFFFFF


def make_moons(n_samples: Union[int, tuple[int, int]] = 100, *, shuffle: bool = True,
               noise: float | None = None, random_state: Any = None) -> tuple[Any, Any]:
    """Two interleaving half circles: ``X`` (n_samples × 2) and labels ``y`` (0 = outer moon,
    1 = inner moon), as ``sklearn.datasets.make_moons``.

    ``n_samples`` is the total, or ``(n_outer, n_inner)``; ``noise`` is the standard deviation of
    Gaussian noise added to every coordinate; ``random_state`` is None (NumPy's global random
    state), an int seed or a ``numpy.random.RandomState``. Returns NumPy arrays (float64, intp)
    when NumPy is installed, else a list of ``[x, y]`` lists and a list of ints.
    """
    if isinstance(n_samples, tuple) or isinstance(n_samples, list):
        if len(n_samples) != 2:
            raise ValueError("n_samples is an int or a two-element tuple")
        n_out, n_in = (int(n) for n in n_samples)
    else:
        n_out = int(n_samples) // 2
        n_in = int(n_samples) - n_out
    if n_out < 0 or n_in < 0:
        raise ValueError(f"n_samples must be non-negative, not {n_samples!r}")
    if noise is not None and noise < 0:
        raise ValueError(f"noise must be non-negative, not {noise}")
    try:
        import numpy as np
    except ImportError:
        return _make_moons_pure(n_out, n_in, shuffle, noise, random_state)
    return _make_moons_numpy(np, n_out, n_in, shuffle, noise, random_state)


def _make_moons_numpy(np: Any, n_out: int, n_in: int, shuffle: bool, noise: float | None,
                      random_state: Any) -> tuple[Any, Any]:
    """scikit-learn's code, step for step (check_random_state, util shuffle, noise)."""
    if random_state is None:
        generator = np.random.mtrand._rand  # the global RandomState behind np.random.seed
    elif isinstance(random_state, np.random.RandomState):
        generator = random_state
    elif isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        generator = np.random.RandomState(random_state)
    else:
        raise ValueError(f"random_state must be None, an int or a numpy RandomState, "
                         f"not {type(random_state).__name__}")
    outer_circ_x = np.cos(np.linspace(0, np.pi, n_out))
    outer_circ_y = np.sin(np.linspace(0, np.pi, n_out))
    inner_circ_x = 1 - np.cos(np.linspace(0, np.pi, n_in))
    inner_circ_y = 1 - np.sin(np.linspace(0, np.pi, n_in)) - 0.5
    X = np.vstack([np.append(outer_circ_x, inner_circ_x),
                   np.append(outer_circ_y, inner_circ_y)]).T
    y = np.hstack([np.zeros(n_out, dtype=np.intp), np.ones(n_in, dtype=np.intp)])
    if shuffle:
        indices = np.arange(n_out + n_in)
        generator.shuffle(indices)
        X, y = X[indices], y[indices]
    if noise is not None:
        X += generator.normal(scale=noise, size=X.shape)
    return X, y


# ============================================== NumPy's legacy RandomState, in pure Python

class _LegacyRandomState:
    """The parts of ``numpy.random.RandomState(seed)`` that make_moons uses, draw for draw:
    MT19937 seeded by ``init_genrand`` (Python's ``random`` runs the same generator, so it
    produces the 32-bit words), 53-bit doubles, legacy polar Gaussians with their cached second
    value, and the rejection-sampled Fisher-Yates shuffle."""

    def __init__(self, seed: int) -> None:
        if not 0 <= seed <= _MASK32:
            raise ValueError("Seed must be between 0 and 2**32 - 1")
        key = [seed]
        for pos in range(1, 624):
            prev = key[-1]
            key.append((1812433253 * (prev ^ (prev >> 30)) + pos) & _MASK32)
        self._mt = random.Random()
        self._mt.setstate((3, tuple(key) + (624,), None))
        self._gauss: float | None = None

    def _next32(self) -> int:
        return self._mt.getrandbits(32)

    def random_double(self) -> float:
        a, b = self._next32() >> 5, self._next32() >> 6
        return (a * 67108864.0 + b) / 9007199254740992.0

    def gauss(self) -> float:
        if self._gauss is not None:
            g, self._gauss = self._gauss, None
            return g
        while True:
            x1 = 2.0 * self.random_double() - 1.0
            x2 = 2.0 * self.random_double() - 1.0
            r2 = x1 * x1 + x2 * x2
            if r2 < 1.0 and r2 != 0.0:
                break
        f = math.sqrt(-2.0 * math.log(r2) / r2)
        self._gauss = f * x1
        return f * x2

    def interval(self, max_: int) -> int:
        """A uniform int in [0, max_] by masked rejection (numpy's random_interval)."""
        if max_ == 0:
            return 0
        mask = max_
        for shift in (1, 2, 4, 8, 16, 32):
            mask |= mask >> shift
        while True:
            value = self._next32() & mask
            if value <= max_:
                return value

    def shuffle(self, items: list[Any]) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.interval(i)
            items[i], items[j] = items[j], items[i]


def _linspace_0_pi(num: int) -> list[float]:
    """np.linspace(0, np.pi, num): i * step, the last point exactly pi."""
    if num <= 0:
        return []
    if num == 1:
        return [0.0]
    step = math.pi / (num - 1)
    points = [i * step + 0.0 for i in range(num)]
    points[-1] = math.pi
    return points


def _make_moons_pure(n_out: int, n_in: int, shuffle: bool, noise: float | None,
                     random_state: Any) -> tuple[list[list[float]], list[int]]:
    if random_state is None:
        # no NumPy, so no global NumPy state to follow: an unpredictable seed, as unseeded NumPy
        random_state = random.SystemRandom().getrandbits(32)
    if isinstance(random_state, bool) or not isinstance(random_state, int):
        raise ValueError(f"without NumPy, random_state must be None or an int, "
                         f"not {type(random_state).__name__}")
    rs = _LegacyRandomState(random_state)
    outer, inner = _linspace_0_pi(n_out), _linspace_0_pi(n_in)
    X = [[math.cos(t), math.sin(t)] for t in outer]
    X += [[1 - math.cos(t), 1 - math.sin(t) - 0.5] for t in inner]
    y = [0] * n_out + [1] * n_in
    if shuffle:
        indices = list(range(n_out + n_in))
        rs.shuffle(indices)
        X, y = [X[i] for i in indices], [y[i] for i in indices]
    if noise is not None:
        for row in X:  # C order, as numpy fills the noise array
            row[0] += 0.0 + noise * rs.gauss()
            row[1] += 0.0 + noise * rs.gauss()
    return X, y
