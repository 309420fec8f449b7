"""The array kernels in plain Python: the executable specification of the compiled ones.

``michigrad.array.MLArray`` keeps its elements as engine nodes in a *store* (one reference per
slot) and does all index arithmetic (views, broadcasting, transposes) in numpy; each array
operation then asks a kernel module to make one node per position. The compiled core
(``_engine``, ``_arrays.pxi``) does that in one C loop over arena slots; this module does it with
the reference engine's ``Value`` objects, one at a time, in the same order, through the same
operators. The two must agree bit for bit (values, int/float kinds, gradients, graph shape and
labels): the test suite checks the compiled kernels against these.

Kernels never see shapes. They take C-contiguous int64 numpy arrays of slot numbers
("positions"), 1-D ``(n,)`` or 2-D ``(n, k)``, and validate them (TypeError for wrong types,
ValueError for wrong lengths, IndexError for slots out of range) before making any node.

Besides the scalar ops of ``_reference.Value``, the arrays need five ops of their own, built
below the micrograd way (value, children, local derivative side by side) with a ``_forward`` for
graph replay:

* ``sum``: the left fold ``c0 + c1 + ...`` with ``'+'`` semantics; every child gets ``out.grad``.
* ``max`` / ``min``: the data of the first maximal (minimal) child, or of the first NaN (NumPy
  propagates NaN); the gradient goes to that one child.
* ``leaky_relu`` (``x if x > 0 else slope * x``) and ``elu`` (``x if x > 0 else
  alpha * expm1(x)``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from ._reference import (Number, Value, _as_number, _extreme, _fit, _pow, _pow_grad, _reduction,
                         linear)

__all__ = [
    "NodeStore", "array_from_numbers", "array_from_values", "array_value", "array_values",
    "array_numbers", "array_data", "array_grad", "array_set_data", "array_zero_grad",
    "array_assign", "array_unary", "array_binary", "array_linear", "array_matmul", "array_reduce",
    "array_backward",
]

_EXACT_INT_LIMIT = 2**53


class NodeStore:
    """The slots of an array: one reference to a reference-engine Value per slot."""

    __slots__ = ("values",)

    def __init__(self, values: list[Value]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"<reference NodeStore of {len(self.values)} slots>"


# ================================================================================ validation

def _store(store: Any, what: str = "store") -> NodeStore:
    if not isinstance(store, NodeStore):
        raise TypeError(f"{what} must be a reference NodeStore, not {type(store).__name__}")
    return store


def _array(arr: Any, dtype: type, ndim: int, what: str) -> np.ndarray:
    """arr checked to be a C-contiguous numpy array of this dtype and rank."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, not {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{what} must have dtype {np.dtype(dtype).name}, not {arr.dtype.name}")
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, not {arr.ndim}-D")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")
    return arr


def _positions(store: NodeStore, pos: Any, ndim: int = 1, what: str = "pos") -> np.ndarray:
    """pos checked: int64, the given rank, every slot number in range for store."""
    checked = _array(pos, np.int64, ndim, what)
    if checked.size:
        lo, hi = int(checked.min()), int(checked.max())
        if lo < 0 or hi >= len(store.values):
            bad = lo if lo < 0 else hi
            raise IndexError(f"{what}: slot {bad} is out of range for a store of "
                             f"{len(store.values)} slots")
    return checked


def _slot(store: NodeStore, slot: Any) -> int:
    k = operator.index(slot)
    if not 0 <= k < len(store.values):
        raise IndexError(f"slot {k} is out of range for a store of {len(store.values)} slots")
    return k


def _same_length(n: int, m: int, what: str) -> None:
    if n != m:
        raise ValueError(f"{what}: lengths differ ({n} and {m})")


# ============================================================================ making arrays

def _leaf_number(x: float, is_int: bool) -> Number:
    """The number a leaf holds: an int where is_int marks an integral value a double holds
    exactly (Value's rule for ints), else the float."""
    if is_int and x.is_integer() and -_EXACT_INT_LIMIT < x < _EXACT_INT_LIMIT:
        return int(x)
    return x


def array_from_numbers(data: Any, is_int: Any = None) -> NodeStore:
    """One new leaf per number of ``data`` (float64, 1-D); ``is_int[k]`` (bool, 1-D) makes leaf k
    hold a Python int, as ``Value(1)`` does."""
    data = _array(data, np.float64, 1, "data")
    if is_int is None:
        return NodeStore([Value(x) for x in data.tolist()])
    is_int = _array(is_int, np.bool_, 1, "is_int")
    if len(is_int) != len(data):
        raise ValueError(f"is_int has {len(is_int)} entries but data has {len(data)}")
    return NodeStore([Value(_leaf_number(x, i)) for x, i in zip(data.tolist(), is_int.tolist())])


def array_from_values(values: Any) -> NodeStore:
    """A store referencing the given Values' nodes (no new node)."""
    values = list(values)
    for v in values:
        if not isinstance(v, Value):
            raise TypeError(f"array_from_values takes reference-engine Values, not "
                            f"{type(v).__module__}.{type(v).__name__}")
    return NodeStore(values)


# ================================================================================= reading

def array_value(store: Any, slot: Any) -> Value:
    """The Value in that slot."""
    s = _store(store)
    return s.values[_slot(s, slot)]


def array_values(store: Any, pos: Any) -> list[Value]:
    """The Values at these positions."""
    store = _store(store)
    values = store.values
    return [values[k] for k in _positions(store, pos).tolist()]


def array_numbers(store: Any, pos: Any) -> list[Number]:
    """The data at these positions, as Python numbers (ints stay ints)."""
    return [v.data for v in array_values(store, pos)]


def array_data(store: Any, pos: Any) -> np.ndarray:
    """The data at these positions, as float64."""
    return np.array([float(v.data) for v in array_values(store, pos)], dtype=np.float64)


def array_grad(store: Any, pos: Any) -> np.ndarray:
    """The gradients at these positions, as float64."""
    return np.array([float(v.grad) for v in array_values(store, pos)], dtype=np.float64)


# ================================================================================= writing

def array_set_data(store: Any, pos: Any, values: Any, is_int: Any = None) -> None:
    """Node data = these values: an int where ``is_int[k]`` marks an integral value a double
    holds exactly (array_from_numbers' rule), else the float."""
    targets = array_values(store, pos)
    values = _array(values, np.float64, 1, "values")
    _same_length(len(targets), len(values), "array_set_data")
    ints = [False] * len(values)
    if is_int is not None:
        ints = _array(is_int, np.bool_, 1, "is_int").tolist()
        _same_length(len(targets), len(ints), "array_set_data: pos and is_int")
    for v, x, i in zip(targets, values.tolist(), ints):
        v.data = _leaf_number(x, i)


def array_zero_grad(store: Any, pos: Any) -> None:
    """Gradients become the int 0 (micrograd's zero_grad)."""
    for v in array_values(store, pos):
        v.grad = 0


def array_assign(store: Any, pos: Any, src: Any, src_pos: Any) -> None:
    """Slot pos[k] of store now references the node in slot src_pos[k] of src. Every source is
    read before anything is written, so src may be store itself."""
    store = _store(store)
    targets = _positions(store, pos).tolist()
    sources = array_values(_store(src, "src"), src_pos)
    _same_length(len(targets), len(sources), "array_assign")
    for k, v in zip(targets, sources):
        store.values[k] = v


# ================================================================================ the new ops

def _sum(children: list[Value]) -> Value:
    """c0 + c1 + ... left to right, each '+' Value's (int while every term is an int and the sum
    fits); backward: every child (duplicates counted each time) gets out.grad."""
    def _forward() -> Number:
        acc = children[0].data
        for c in children[1:]:
            acc = _fit(acc + c.data)
        return acc

    def _backward(out: Value) -> None:
        for c in children:
            c.grad += out.grad

    return _reduction(children, "sum", _forward, _backward)


def _leaky_relu(x: Value, slope: Number) -> Value:
    """x if x > 0 else slope * x ('*' semantics: an int only when x and slope are ints);
    backward: (1 if x > 0 else slope) * out.grad."""
    def _forward() -> Number:
        return x.data if x.data > 0 else _fit(slope * x.data)

    out = Value(_forward(), (x,), "leaky_relu")
    out._forward = _forward

    def _backward() -> None:
        x.grad += (1 if x.data > 0 else slope) * out.grad

    out._backward_fn = _backward
    return out


def _elu(x: Value, alpha: Number) -> Value:
    """x if x > 0 else alpha * expm1(x) (a float); backward: out.grad where x > 0, else
    (alpha * exp(x)) * out.grad."""
    def _forward() -> Number:
        return x.data if x.data > 0 else alpha * math.expm1(x.data)

    out = Value(_forward(), (x,), "elu")
    out._forward = _forward

    def _backward() -> None:
        if x.data > 0:
            x.grad += out.grad
        else:
            x.grad += (alpha * math.exp(x.data)) * out.grad

    out._backward_fn = _backward
    return out


def _std(x: Value, c: Number) -> Value:
    """x ** 0.5 (a variance's root: the standard deviation); backward: '**0.5''s, except that
    nothing flows where the root is 0 (PyTorch's std, whose gradient there is 0, not NaN)."""
    def _forward() -> Number:
        return _pow(x.data, 0.5)

    out = Value(_forward(), (x,), "std")
    out._forward = _forward

    def _backward() -> None:
        x.grad += 0.0 if out.data == 0 else _pow_grad(x.data, 0.5) * out.grad

    out._backward_fn = _backward
    return out


# ====================================================================== one node per position

_UNARY: dict[str, Callable[[Value, Number], Value]] = {
    "exp": lambda v, c: v.exp(),
    "log": lambda v, c: v.log(),
    "tanh": lambda v, c: v.tanh(),
    "relu": lambda v, c: v.relu(),
    "sigmoid": lambda v, c: v.sigmoid(),
    "abs": lambda v, c: v.abs(),
    "powc": lambda v, c: v**c,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "std": _std,
}

_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "add": operator.add,
    "mul": operator.mul,
    "pow": operator.pow,  # Value ** Value: label '**'
}

_REDUCE: dict[str, Callable[[list[Value]], Value]] = {
    "sum": _sum,
    "max": lambda cs: _extreme(cs, "max", operator.gt),
    "min": lambda cs: _extreme(cs, "min", operator.lt),
}


def _op(table: dict[str, Any], op: Any, kind: str) -> Any:
    if not isinstance(op, str):
        raise TypeError(f"{kind} op must be a str, not {type(op).__name__}")
    try:
        return table[op]
    except KeyError:
        raise ValueError(f"unknown {kind} op {op!r} (expected one of {sorted(table)})") from None


def array_unary(op: str, store: Any, pos: Any, c: Any = 0.0) -> NodeStore:
    """One new node per position, in order: exp, log, tanh, relu, sigmoid, abs, powc (x ** c),
    leaky_relu (slope c), elu (alpha c). A forward error is Value's own."""
    fn = _op(_UNARY, op, "unary")
    c = _as_number(c, "the op constant")
    return NodeStore([fn(v, c) for v in array_values(store, pos)])


def array_binary(op: str, a: Any, a_pos: Any, b: Any, b_pos: Any) -> NodeStore:
    """One new node per position pair: add ('+'), mul ('*') or pow (Value ** Value, '**')."""
    fn = _op(_BINARY, op, "binary")
    xs = array_values(_store(a, "a"), a_pos)
    ys = array_values(_store(b, "b"), b_pos)
    _same_length(len(xs), len(ys), "array_binary")
    return NodeStore([fn(x, y) for x, y in zip(xs, ys)])


def _bias_positions(bias: Any, b_pos: Any, rows: int, kernel: str) -> Optional[np.ndarray]:
    """The checked b_pos of a kernel's optional bias (one position per row), or None."""
    if (bias is None) != (b_pos is None):
        raise ValueError(f"{kernel}: give both bias and b_pos, or neither")
    if bias is None:
        return None
    bp = _positions(_store(bias, "bias"), b_pos, 1, "b_pos")
    _same_length(rows, len(bp), f"{kernel}: rows and b_pos")
    return bp


def array_linear(w: Any, w_pos: Any, x: Any, x_pos: Any, bias: Any = None,
                 b_pos: Any = None) -> NodeStore:
    """n nodes, node i being ``linear(w[w_pos[i]], x[x_pos[i]], bias[b_pos[i]])``: the fused
    neuron (label 'linear'), bit-identical to micrograd's left-to-right sum."""
    w, x = _store(w, "w"), _store(x, "x")
    wp = _positions(w, w_pos, 2, "w_pos")
    xp = _positions(x, x_pos, 2, "x_pos")
    if wp.shape != xp.shape:
        raise ValueError(f"array_linear: w_pos has shape {wp.shape} but x_pos {xp.shape}")
    n = wp.shape[0]
    bp = _bias_positions(bias, b_pos, n, "array_linear")
    biases: list[Optional[Value]] = [None] * n
    if bp is not None:
        biases = [bias.values[k] for k in bp.tolist()]
    wv, xv = w.values, x.values
    return NodeStore([linear([wv[k] for k in wrow], [xv[k] for k in xrow], b)
                      for wrow, xrow, b in zip(wp.tolist(), xp.tolist(), biases)])


def array_matmul(w: Any, w_rows: Any, x: Any, x_rows: Any, batches: int, bias: Any = None,
                 b_pos: Any = None, x_major: bool = False) -> NodeStore:
    """Every pairing of a w row with an x row, batch by batch: with P = len(w_rows) / batches
    and Q = len(x_rows) / batches, the node for (b, p, q) is array_linear's row for
    w_rows[b*P + p], x_rows[b*Q + q] (and b_pos[b*P + p]), laid out (b, p, q) -- a matmul -- or
    (b, q, p) when x_major (a dense layer)."""
    batches = operator.index(batches)
    if not -2**63 <= batches < 2**63:  # the compiled kernel takes a C ssize_t
        raise OverflowError("Python int too large to convert to C ssize_t")
    w, x = _store(w, "w"), _store(x, "x")
    wp = _positions(w, w_rows, 2, "w_rows")
    xp = _positions(x, x_rows, 2, "x_rows")
    if wp.shape[1] != xp.shape[1]:
        raise ValueError(f"array_matmul: w_rows has rows of {wp.shape[1]} positions but x_rows "
                         f"of {xp.shape[1]}")
    nw, nx = len(wp), len(xp)
    if batches < 0 or (batches == 0 and (nw or nx)) or (batches > 0 and (nw % batches or nx % batches)):
        raise ValueError(f"array_matmul: {nw} w rows and {nx} x rows do not split into "
                         f"{batches} batches")
    bp = _bias_positions(bias, b_pos, nw, "array_matmul")
    p_count, q_count = (nw // batches, nx // batches) if batches else (0, 0)
    if p_count == 0 or q_count == 0:
        return NodeStore([])
    first = np.arange(batches, dtype=np.int64)[:, None, None]
    p_rows, q_rows = np.broadcast_arrays(first * p_count + np.arange(p_count)[None, :, None],
                                         first * q_count + np.arange(q_count)[None, None, :])
    if x_major:
        p_rows, q_rows = p_rows.swapaxes(1, 2), q_rows.swapaxes(1, 2)
    p_rows, q_rows = p_rows.reshape(-1), q_rows.reshape(-1)
    return array_linear(w, np.ascontiguousarray(wp[p_rows]), x, np.ascontiguousarray(xp[q_rows]),
                        bias, None if bp is None else np.ascontiguousarray(bp[p_rows]))


def array_reduce(op: str, store: Any, pos: Any) -> NodeStore:
    """n nodes, node i reducing the k >= 1 positions pos[i]: sum, max or min."""
    fn = _op(_REDUCE, op, "reduce")
    store = _store(store)
    p = _positions(store, pos, 2)
    if p.shape[1] == 0:
        raise ValueError(f"array_reduce: {op} over no elements")
    values = store.values
    return NodeStore([fn([values[k] for k in row]) for row in p.tolist()])


def array_backward(store: Any, slot: Any) -> None:
    """Value.backward() from the node in that slot."""
    array_value(store, slot).backward()
