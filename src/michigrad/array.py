"""N-dimensional arrays of engine nodes: SmolML's ``MLArray``, on michigrad's core.

An ``MLArray`` is a NumPy-shaped array whose every element is a real node of the engine, so
``backward()``, ``grad``, ``show_graph`` and scalar ``Value`` code all work on it, while each array
operation is one loop in the compiled core over arena slots, with no Python object per element::

    from michigrad import MLArray
    x = MLArray([[1.0, 2.0], [3.0, 4.0]])
    w = MLArray([[0.5], [-0.5]])
    L = (x @ w).tanh().sum()
    L.backward()
    print(x.grad())

How it is built. An array is a *store* (one reference per slot to an engine node, held by the
kernel module) and an *index*: a numpy int64 array of the array's shape whose entries are slot
numbers. numpy does all the index arithmetic -- views (basic indexing, transpose, reshape) share
the store, broadcasting is ``np.broadcast_to`` on the index -- and each operation hands the kernel
module flat arrays of slot numbers ("positions"); it returns a new store with one node per
position. The kernels are ``michigrad._engine`` (compiled) or ``michigrad._reference_arrays``
(pure Python, the executable specification); ``array_class(engine)`` gives the MLArray class of
either, ``MLArray`` is the active engine's (``michigrad.ENGINE``). Arrays of different engines
do not mix (TypeError).

Semantics are NumPy's for shapes and Value's for numbers: ``a - b`` is ``a + b * -1``, ``a / b`` is
``a * b ** -1`` (so an element of ``a / b`` is ``a[i] / b[i]`` computed with scalar Values, to the
last bit), a number operand is ONE constant leaf shared by every element, a ``Value`` operand
broadcasts as a scalar, ints stay ints as in micrograd. Reductions (``sum max min mean std var``)
take ``axis=None|int|tuple`` and ``keepdims``; ``sum``, ``max`` and ``min`` are one n-ary node per
output element, ``mean`` is ``sum / count``.

Random constructors (``randn``, ``xavier_uniform``, ``xavier_normal``, ``he_normal``) draw from
Python's ``random`` module -- the global one by default, as SmolML and micrograd do, so
``random.seed(...)`` reproduces a run -- or from ``rng=`` (a ``random.Random`` or an int seed).
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import operator
import random
from collections.abc import Iterator
from typing import Any, Callable, ClassVar, Optional, Union

import numpy as np

try:
    from numpy.exceptions import AxisError
except ImportError:  # numpy < 1.25
    from numpy import AxisError  # type: ignore[attr-defined,no-redef]

from . import _reference
from .engine import ENGINE

__all__ = [
    "MLArray", "MLArrayBase", "array_class", "zeros", "ones", "randn", "xavier_uniform",
    "xavier_normal", "he_normal", "relu", "leaky_relu", "elu", "sigmoid", "tanh", "softmax",
    "log_softmax", "dense",
]

Number = Union[int, float]
Shape = tuple[int, ...]

_KERNELS = {"compiled": "michigrad._engine", "reference": "michigrad._reference_arrays"}
_VALUES = {"compiled": "michigrad._engine", "reference": "michigrad._reference"}
_EXACT_INT_LIMIT = 2**53

_as_number = _reference._as_number  # Value's coercion of numbers (ints stay ints)


def _number_or_none(x: Any) -> Optional[Number]:
    if isinstance(x, (list, tuple, np.ndarray, MLArrayBase)):
        return None
    return _reference._number_or_none(x)


def _positions(index: np.ndarray) -> np.ndarray:
    """The slot numbers of an index (any shape or strides) as the kernels take them."""
    return np.ascontiguousarray(index.reshape(-1), dtype=np.int64)


def _broadcast_index(index: np.ndarray, shape: Shape) -> np.ndarray:
    """index broadcast to shape: itself when it already has that shape, and a 0-d index (a
    number's or a Value's one slot) filled in (numpy's broadcast_to, and the copy _positions
    then makes of it, cost microseconds: most of a small array op's time)."""
    if index.shape == shape:
        return index
    if index.ndim == 0:
        return np.full(shape, index, dtype=np.int64)
    return np.broadcast_to(index, shape)


def _drop_leading_ones(arr: np.ndarray, ndim: int) -> np.ndarray:
    """arr without the leading length-1 axes that make it longer than ndim dimensions: NumPy's
    assignment drops them (``x[0] = np.ones((1, 3))`` sets a row of 3)."""
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr.reshape(arr.shape[1:])  # (not arr[0]: an object array's [0] is its item)
    return arr


def _ndarray_numbers(arr: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A numeric numpy array's numbers as float64 (1-D) and where they are ints (None for a
    float array): integers and bools are ints, as ``Value(np.int64(3))`` makes, except where a
    double cannot hold them exactly."""
    data = arr.astype(np.float64).reshape(-1)
    if arr.dtype.kind == "f":
        return data, None
    return data, np.abs(data) < _EXACT_INT_LIMIT


def _numpy_only_defaults(method: str, dtype: Any, out: Any) -> None:
    """NumPy's functions (np.sum, np.mean, ...) call an object's method of the same name with
    dtype= and out=: accept their defaults, refuse the rest (an array of nodes has no dtype to
    choose, and every operation makes new nodes rather than writing into an output)."""
    if dtype is not None:
        raise TypeError(f"MLArray.{method}: dtype={dtype!r} is not supported (elements are "
                        "engine nodes holding Python numbers)")
    if out is not None:
        raise TypeError(f"MLArray.{method}: out= is not supported (the result is new nodes)")


def _shape_arg(shape: tuple[Any, ...], what: str) -> Shape:
    """A shape given as varargs (``zeros(2, 3)``) or as one tuple/list (``zeros((2, 3))``)."""
    first = shape[0] if len(shape) == 1 else None
    if isinstance(first, (tuple, list)) or (isinstance(first, np.ndarray) and first.ndim == 1):
        shape = tuple(first)  # (a 1-D numpy array is a shape too, as np.zeros takes it)
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"{what}: a shape is ints, not {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"{what}: negative dimensions are not allowed: {dims}")
    return dims


def _rng(rng: Any) -> Any:
    """The random source: the global ``random`` module, a ``random.Random``, or a seed."""
    if rng is None:
        return random
    if isinstance(rng, int) and not isinstance(rng, bool):
        return random.Random(rng)
    if hasattr(rng, "gauss") and hasattr(rng, "uniform"):
        return rng
    raise TypeError(f"rng must be None, an int seed or a random.Random, not {type(rng).__name__}")


@functools.lru_cache(maxsize=None)
def _value_classes() -> tuple[type, ...]:
    """The Value classes of every importable engine (to name a mixed-engine operand)."""
    classes: list[type] = [_reference.Value]
    try:
        from ._engine import Value as CompiledValue
        classes.append(CompiledValue)
    except ImportError:  # pragma: no cover - CI always builds the extension
        pass
    return tuple(classes)


class MLArrayBase:
    """An N-dimensional array of engine nodes (see the module docstring). Use ``MLArray`` (the
    active engine's class) or ``array_class(engine)``; this base holds the logic and is never
    instantiated itself."""

    __slots__ = ("_store", "_index", "__weakref__")
    __array_ufunc__ = None  # numpy operands on the left defer to our reflected operators
    _michigrad_array: ClassVar[bool] = True  # duck-typed marker (nn, losses: no numpy import)

    _kernels: ClassVar[Any] = None
    _Value: ClassVar[type]
    engine: ClassVar[str] = ""

    _store: Any
    _index: np.ndarray

    # ======================================================================== construction

    def __init__(self, data: Any) -> None:
        if self._kernels is None:
            raise TypeError("MLArrayBase is abstract: use MLArray or array_class(engine)")
        self._store, self._index = self._convert(data)

    @classmethod
    def _wrap(cls, store: Any, index: np.ndarray) -> MLArrayBase:
        out = object.__new__(cls)
        out._store = store
        out._index = index
        return out

    @classmethod
    def _new(cls, store: Any, shape: Shape) -> MLArrayBase:
        """An array over a new store, its slots in row-major order."""
        return cls._wrap(store, np.arange(len(store), dtype=np.int64).reshape(shape))

    @classmethod
    def _from_numbers(cls, numbers: list[Any], shape: Shape) -> MLArrayBase:
        """New leaves holding these numbers (coerced as Value coerces: ints stay ints)."""
        if all(type(x) is float for x in numbers):  # the common case: no coercion to do
            return cls._from_floats(np.array(numbers, dtype=np.float64), shape)
        data, is_int = cls._coerced(numbers)
        return cls._new(cls._kernels.array_from_numbers(data, is_int), shape)

    @classmethod
    def _coerced(cls, numbers: list[Any]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The numbers as Value coerces them, as float64 (1-D) and where they are ints (None:
        all floats)."""
        nums = [cls._number(x) for x in numbers]
        is_int = np.array([type(x) is int for x in nums], dtype=np.bool_)
        return np.array(nums, dtype=np.float64).reshape(-1), (is_int if is_int.any() else None)

    @classmethod
    def _from_floats(cls, data: np.ndarray, shape: Shape) -> MLArrayBase:
        data = np.ascontiguousarray(data, dtype=np.float64).reshape(-1)
        return cls._new(cls._kernels.array_from_numbers(data, None), shape)

    @classmethod
    def _constant(cls, x: Number) -> MLArrayBase:
        """ONE leaf holding the number x, as a 0-d array (it broadcasts to any shape)."""
        x = _as_number(x, "MLArray operand")
        store = cls._kernels.array_from_numbers(np.array([float(x)]),
                                                np.array([type(x) is int]))
        return cls._wrap(store, np.zeros((), dtype=np.int64))

    def _check_engine(self, other: Any) -> None:
        if isinstance(other, MLArrayBase) and other._kernels is not self._kernels:
            raise TypeError(f"cannot mix arrays of the {self.engine} and {other.engine} engines")
        if isinstance(other, _value_classes()) and not isinstance(other, self._Value):
            raise TypeError(f"cannot mix an array of the {self.engine} engine with a Value of "
                            f"another engine ({type(other).__module__})")

    def _convert(self, data: Any) -> tuple[Any, np.ndarray]:
        """(store, index) for MLArray(data)."""
        cls = type(self)
        K = self._kernels
        self._check_engine(data)
        if isinstance(data, np.ndarray):  # a subclass (masked array, matrix) as NumPy reads it
            data = np.asarray(data)
        if isinstance(data, MLArrayBase):  # the same nodes, in slots of its own
            return data.copy()._parts()
        if isinstance(data, self._Value):
            return K.array_from_values([data]), np.zeros((), dtype=np.int64)
        if isinstance(data, np.ndarray) and data.dtype.kind in "biuf":
            return cls._from_ndarray(data)._parts()
        if isinstance(data, (list, tuple, np.ndarray)):
            flat: list[Any] = []
            shape = self._nested(data, flat)
            return cls._from_flat(flat, shape)._parts()
        if _number_or_none(data) is None:
            raise TypeError(f"cannot make an MLArray from {type(data).__name__} (give numbers, "
                            f"(nested) lists, Values, an MLArray or a numpy array)")
        return cls._from_numbers([data], ())._parts()

    def _parts(self) -> tuple[Any, np.ndarray]:
        return self._store, self._index

    @classmethod
    def _from_ndarray(cls, arr: np.ndarray) -> MLArrayBase:
        """A numeric numpy array: floats stay floats, integers and bools become ints (as
        ``Value(np.int64(3))`` does), except where a double cannot hold them exactly."""
        return cls._new(cls._kernels.array_from_numbers(*_ndarray_numbers(arr)), arr.shape)

    def _nested(self, data: Any, flat: list[Any]) -> Shape:
        """The shape of (nested) lists, appending their scalar items to flat (ValueError if
        ragged). Items may be numbers, Values, MLArrays or numpy arrays."""
        if isinstance(data, np.ndarray):  # items (objects too) are checked by _from_flat
            data = np.asarray(data)
            if data.dtype.kind not in "biufO":
                raise TypeError(f"cannot make an MLArray from a numpy array of dtype {data.dtype}")
            flat.extend(data.reshape(-1).tolist())
            return tuple(data.shape)
        if isinstance(data, MLArrayBase):
            self._check_engine(data)
            flat.extend(self._kernels.array_values(data._store, _positions(data._index)))
            return data.shape
        if not isinstance(data, (list, tuple)):
            flat.append(data)
            return ()
        if all(type(x) is float or type(x) is int for x in data):  # the common case, fast
            flat.extend(data)
            return (len(data),)
        inner: Optional[Shape] = None
        for item in data:
            shape = self._nested(item, flat)
            if inner is None:
                inner = shape
            elif shape != inner:
                raise ValueError(f"MLArray: nested lists must be rectangular; found items of "
                                 f"shapes {inner} and {shape} side by side")
        return (len(data),) + (inner or ())

    @classmethod
    def _number(cls, x: Any) -> Number:
        """x as Value coerces data; a TypeError that names a Value of another engine."""
        try:
            return _as_number(x, "MLArray data")
        except TypeError:
            if isinstance(x, _value_classes()):
                raise TypeError(f"cannot put a Value of another engine ({type(x).__module__}) "
                                f"in an array of the {cls.engine} engine") from None
            raise

    @classmethod
    def _from_flat(cls, flat: list[Any], shape: Shape) -> MLArrayBase:
        """New array of the items of flat: Values of this engine are referenced, numbers become
        leaves."""
        V = cls._Value
        if not any(isinstance(x, V) for x in flat):
            return cls._from_numbers(flat, shape)
        values = [x if isinstance(x, V) else V(cls._number(x)) for x in flat]
        return cls._new(cls._kernels.array_from_values(values), shape)

    @classmethod
    def _gather(cls, store: Any, index: np.ndarray) -> MLArrayBase:
        """A new store whose slots reference the nodes at index (a copy of the slots, not of
        the nodes): placeholder leaves, re-pointed in one kernel call."""
        pos = _positions(index)
        new = cls._kernels.array_from_numbers(np.zeros(len(pos)), None)
        cls._kernels.array_assign(new, np.arange(len(pos), dtype=np.int64), store, pos)
        return cls._new(new, index.shape)

    def _operand(self, other: Any) -> Optional[MLArrayBase]:
        """other as an array of this engine: itself, a Value or a number as a 0-d array, lists
        and numpy arrays as arrays of constants; None if it is none of these."""
        self._check_engine(other)
        if isinstance(other, MLArrayBase):
            return other
        if isinstance(other, self._Value):
            return self._wrap(self._kernels.array_from_values([other]),
                              np.zeros((), dtype=np.int64))
        if isinstance(other, (list, tuple, np.ndarray)):
            return type(self)(other)
        if _number_or_none(other) is None:
            return None
        return self._constant(other)

    # ============================================================================ properties

    @property
    def shape(self) -> Shape:
        """The dimensions, as a tuple of ints."""
        return tuple(self._index.shape)

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self._index.ndim

    def size(self) -> int:
        """The number of elements (a method, as in SmolML)."""
        return int(self._index.size)

    def __len__(self) -> int:
        if self._index.ndim == 0:
            raise TypeError("len() of unsized object (a 0-d MLArray)")
        return int(self._index.shape[0])

    def __iter__(self) -> Iterator[Any]:
        """The sub-arrays along the first axis (Values for a 1-D array)."""
        if self._index.ndim == 0:
            raise TypeError("iteration over a 0-d MLArray")
        for i in range(self._index.shape[0]):
            yield self[i]

    def __bool__(self) -> bool:
        if self._index.size == 0:
            raise ValueError("the truth value of an empty MLArray is ambiguous (use arr.size() > 0 "
                             "to check that it is not empty)")
        if self._index.size != 1:
            raise ValueError("the truth value of an MLArray with more than one element is "
                             "ambiguous")
        return bool(self.item())

    # =============================================================================== reading

    def _flat(self) -> np.ndarray:
        return _positions(self._index)

    def to_list(self) -> Any:
        """The data as (nested) lists of Python numbers (ints stay ints); a number when 0-d."""
        return self._nest(self._kernels.array_numbers(self._store, self._flat()))

    def _nest(self, items: list[Any]) -> Any:
        if self._index.ndim == 0:
            return items[0]
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(self._index.shape).tolist()

    def to_numpy(self) -> np.ndarray:
        """The data as a float64 numpy array."""
        data: np.ndarray = self._kernels.array_data(self._store, self._flat())
        return data.reshape(self._index.shape)

    def item(self) -> Number:
        """The data of the one element of a size-1 array, as a Python number."""
        if self._index.size != 1:
            raise ValueError("can only convert an MLArray of size 1 to a Python scalar")
        number: Number = self._kernels.array_numbers(self._store, self._flat())[0]
        return number

    @property
    def data(self) -> Any:
        """The elements as (nested) lists of Values (SmolML's ``data``); the Value when 0-d.
        A new list on each access: assign through ``arr[i] = ...``."""
        return self._nest(self._kernels.array_values(self._store, self._flat()))

    def values(self) -> list[Any]:
        """The elements as a flat list of Values, in row-major order."""
        values: list[Any] = self._kernels.array_values(self._store, self._flat())
        return values

    # ============================================================================= gradients

    def backward(self) -> None:
        """Backpropagate from this array: from its element when it has one, else from the sum
        of its elements (as SmolML does)."""
        n = self._index.size
        if n == 0:
            raise ValueError("backward() of an empty MLArray")
        if n == 1:
            self._kernels.array_backward(self._store, int(self._index.reshape(-1)[0]))
        else:
            self.sum().backward()

    def grad(self) -> MLArrayBase:
        """A new array of leaves holding the elements' gradients (SmolML's ``grad()``)."""
        grads = [v.grad for v in self._kernels.array_values(self._store, self._flat())]
        return type(self)._from_numbers(grads, self.shape)

    def grad_numpy(self) -> np.ndarray:
        """The elements' gradients as a float64 numpy array (no node is made)."""
        grads: np.ndarray = self._kernels.array_grad(self._store, self._flat())
        return grads.reshape(self._index.shape)

    def zero_grad(self) -> None:
        """Set every element's gradient to 0 (micrograd's int 0)."""
        self._kernels.array_zero_grad(self._store, self._flat())

    def detach(self) -> MLArrayBase:
        """New leaves holding the same data: the array without its graph."""
        return type(self)._from_numbers(
            self._kernels.array_numbers(self._store, self._flat()), self.shape)

    def copy(self) -> MLArrayBase:
        """A new array over the same nodes, in slots of its own (``MLArray(self)``): assigning
        into one does not change the other; gradients reach the same nodes."""
        return type(self)._gather(self._store, self._index)

    __copy__ = copy

    def update_values(self, new_data: Any) -> MLArrayBase:
        """Set the elements' data in place from numbers of this shape (or broadcastable to
        it), keeping the nodes; SmolML's ``update_values``. Returns self. Numbers are read as
        ``MLArray(new_data)`` reads them: ints stay ints, as ``value.data = 5`` keeps one."""
        data, is_int = self._numbers_of(new_data)
        data = _drop_leading_ones(data, self.ndim)
        is_int = _drop_leading_ones(is_int, self.ndim) if is_int is not None else None
        try:
            data = np.broadcast_to(data, self.shape)
            is_int = np.broadcast_to(is_int, self.shape) if is_int is not None else None
        except ValueError:
            raise ValueError(f"update_values: data of shape {data.shape} does not fit an MLArray "
                             f"of shape {self.shape}") from None
        self._kernels.array_set_data(
            self._store, self._flat(), np.ascontiguousarray(data.reshape(-1)),
            None if is_int is None else np.ascontiguousarray(is_int.reshape(-1)))
        return self

    def _numbers_of(self, new_data: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """new_data's numbers as float64 and, if any is an int, where (None: all floats), in
        new_data's shape."""
        if isinstance(new_data, MLArrayBase):
            new_data = new_data.to_list()  # (keeps ints, which to_numpy would not)
        if isinstance(new_data, np.ndarray) and new_data.dtype.kind in "biuf":
            data, is_int = _ndarray_numbers(new_data)
            shape: Shape = new_data.shape
        else:
            flat: list[Any] = []
            shape = self._nested(new_data, flat)
            data, is_int = self._coerced(flat)
        return data.reshape(shape), (is_int.reshape(shape) if is_int is not None else None)

    # ========================================================================== element-wise

    def _unary(self, op: str, c: Number = 0.0) -> MLArrayBase:
        return type(self)._new(self._kernels.array_unary(op, self._store, self._flat(), c),
                               self.shape)

    @staticmethod
    def _broadcast(a: MLArrayBase, b: MLArrayBase) -> Shape:
        if a._index.shape == b._index.shape:  # the common cases, without numpy's general machinery
            return a._index.shape
        if b._index.ndim == 0:  # a number or a Value
            return a._index.shape
        if a._index.ndim == 0:
            return b._index.shape
        try:
            return tuple(np.broadcast_shapes(a.shape, b.shape))
        except ValueError:
            raise ValueError(f"operands could not be broadcast together with shapes {a.shape} "
                             f"{b.shape}") from None

    def _binary(self, op: str, a: MLArrayBase, b: MLArrayBase,
                shape: Optional[Shape] = None) -> MLArrayBase:
        """One node `op` per element of a and b broadcast (to `shape`, when known already)."""
        if shape is None:
            shape = self._broadcast(a, b)
        ap = _positions(_broadcast_index(a._index, shape))
        bp = _positions(_broadcast_index(b._index, shape))
        return type(self)._new(self._kernels.array_binary(op, a._store, ap, b._store, bp), shape)

    def __add__(self, other: Any) -> MLArrayBase:
        b = self._operand(other)
        if b is None:
            return NotImplemented
        return self._binary("add", self, b)

    def __radd__(self, other: Any) -> MLArrayBase:  # other + self is Value's self + other
        return self._reflected("add", other)

    def _reflected(self, op: str, other: Any) -> MLArrayBase:
        """other OP self computed as Value's self OP other ('+', '*'): the node's operands in
        that order, the shapes checked in the user's (an error names the left one first)."""
        b = self._operand(other)
        if b is None:
            return NotImplemented  # type: ignore[no-any-return]  # (for the dunder to return)
        return self._binary(op, self, b, self._broadcast(b, self))

    def __mul__(self, other: Any) -> MLArrayBase:
        b = self._operand(other)
        if b is None:
            return NotImplemented
        return self._binary("mul", self, b)

    def __rmul__(self, other: Any) -> MLArrayBase:  # other * self is Value's self * other
        return self._reflected("mul", other)

    def __neg__(self) -> MLArrayBase:
        return self * -1

    def __sub__(self, other: Any) -> MLArrayBase:
        x = _number_or_none(other)
        if x is not None:  # Value's `self + (-other)`: the number negated
            return self + (-x)
        b = self._operand(other)
        if b is None:
            return NotImplemented
        self._broadcast(self, b)  # shapes first: no node is made for a doomed operation
        return self + b * -1

    def __rsub__(self, other: Any) -> MLArrayBase:  # Value's (-self) + other
        b = self._operand(other)
        if b is None:
            return NotImplemented
        self._broadcast(b, self)
        return (-self) + b

    def __truediv__(self, other: Any) -> MLArrayBase:
        x = _number_or_none(other)
        if x is not None:  # Value's `self * other ** -1`, the power taken in Python
            if self._index.size == 0:  # no element is divided (nor is x inverted)
                return self * x
            return self * _reference._pow(x, -1)
        b = self._operand(other)
        if b is None:
            return NotImplemented
        if math.prod(self._broadcast(self, b)) == 0:  # b's elements would be inverted for nothing
            return self * b
        return self * b**-1

    def __rtruediv__(self, other: Any) -> MLArrayBase:  # Value's self ** -1 * other
        b = self._operand(other)
        if b is None:
            return NotImplemented
        if math.prod(self._broadcast(b, self)) == 0:
            return self * b
        return self**-1 * b

    def __pow__(self, other: Any, modulo: None = None) -> MLArrayBase:
        if modulo is not None:
            return NotImplemented
        c = _number_or_none(other)
        if c is not None:
            return self._unary("powc", c)
        b = self._operand(other)
        if b is None:
            return NotImplemented
        return self._binary("pow", self, b)

    def __rpow__(self, other: Any) -> MLArrayBase:  # other ** self: Value ** Value
        b = self._operand(other)
        if b is None:
            return NotImplemented
        return self._binary("pow", b, self)

    def exp(self) -> MLArrayBase:
        """e ** x for each element."""
        return self._unary("exp")

    def log(self) -> MLArrayBase:
        """Natural logarithm of each element (ValueError unless all are > 0)."""
        return self._unary("log")

    def tanh(self) -> MLArrayBase:
        """tanh of each element."""
        return self._unary("tanh")

    def relu(self) -> MLArrayBase:
        """max(0, x) for each element (micrograd's ReLU: the int 0 below zero)."""
        return self._unary("relu")

    def sigmoid(self) -> MLArrayBase:
        """1 / (1 + e ** -x) for each element, without overflow."""
        return self._unary("sigmoid")

    def abs(self) -> MLArrayBase:
        """|x| for each element."""
        return self._unary("abs")

    __abs__ = abs

    def sqrt(self) -> MLArrayBase:
        """x ** 0.5 for each element."""
        return self._unary("powc", 0.5)

    def leaky_relu(self, slope: Number = 0.01) -> MLArrayBase:
        """x if x > 0 else slope * x, for each element."""
        return self._unary("leaky_relu", _as_number(slope, "slope"))

    def elu(self, alpha: Number = 1.0) -> MLArrayBase:
        """x if x > 0 else alpha * (e ** x - 1), for each element."""
        return self._unary("elu", _as_number(alpha, "alpha"))

    def softmax(self, axis: int = -1) -> MLArrayBase:
        """softmax along axis (see ``michigrad.array.softmax``)."""
        return softmax(self, axis)

    def log_softmax(self, axis: int = -1) -> MLArrayBase:
        """log softmax along axis (see ``michigrad.array.log_softmax``)."""
        return log_softmax(self, axis)

    # ================================================================================ matmul

    def matmul(self, other: Any) -> MLArrayBase:
        """Matrix product with NumPy's rules: 1-D operands are vectors, N-d ones stacks of
        matrices whose batch dimensions broadcast. Each output element is one 'linear' node
        (``0 + a0*b0 + a1*b1 + ...``, left to right)."""
        b = self._operand(other)
        if b is None:
            raise TypeError(f"matmul: unsupported operand type {type(other).__name__}")
        return _matmul(self, b)

    def __matmul__(self, other: Any) -> MLArrayBase:
        b = self._operand(other)
        if b is None:
            return NotImplemented
        return _matmul(self, b)

    def __rmatmul__(self, other: Any) -> MLArrayBase:
        a = self._operand(other)
        if a is None:
            return NotImplemented
        return _matmul(a, self)

    # ============================================================================ reductions

    def _axes(self, axis: Any) -> tuple[int, ...]:
        nd = self._index.ndim
        if axis is None:
            return tuple(range(nd))
        items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
        axes: list[int] = []
        for a in items:
            if isinstance(a, (bool, np.bool_)):
                raise TypeError("an integer is required for an axis, not a bool")
            a = operator.index(a)
            if not -nd <= a < nd:
                raise AxisError(a, nd)
            a %= nd
            if a in axes:
                raise ValueError("duplicate value in 'axis'")
            axes.append(a)
        return tuple(axes)

    def _grouped(self, axes: tuple[int, ...], keepdims: bool) -> tuple[np.ndarray, Shape]:
        """(positions (n, k): the k slots reduced into each of the n outputs, output shape)."""
        nd = self._index.ndim
        kept = [d for d in range(nd) if d not in axes]
        moved = np.transpose(self._index, kept + sorted(axes))
        n = math.prod(self._index.shape[d] for d in kept)
        k = math.prod(self._index.shape[d] for d in axes)
        pos = np.ascontiguousarray(moved.reshape((n, k)), dtype=np.int64)
        if keepdims:
            shape = tuple(1 if d in axes else s for d, s in enumerate(self._index.shape))
        else:
            shape = tuple(self._index.shape[d] for d in kept)
        return pos, shape

    def _reduce(self, op: str, axis: Any, keepdims: bool) -> MLArrayBase:
        pos, shape = self._grouped(self._axes(axis), keepdims)
        n, k = pos.shape
        if k == 0:
            if op != "sum":
                raise ValueError(f"zero-size array to reduction operation {op} which has no "
                                 "identity")
            # Python's sum([]) is the int 0: a leaf of its own per element, as every result has
            return type(self)._from_numbers([0] * math.prod(shape), shape)
        if n == 0:
            return type(self)._from_floats(np.zeros(0), shape)
        return type(self)._new(self._kernels.array_reduce(op, self._store, pos), shape)

    def sum(self, axis: Any = None, keepdims: bool = False, *, dtype: Any = None,
            out: Any = None) -> MLArrayBase:
        """The sum over axis (None: every axis; an int or a tuple of them): one 'sum' node per
        output element, adding left to right with Value's '+'. (dtype and out exist so that
        NumPy's functions -- ``np.sum(a)`` -- can call the method; only None is accepted.)"""
        _numpy_only_defaults("sum", dtype, out)
        return self._reduce("sum", axis, keepdims)

    def max(self, axis: Any = None, keepdims: bool = False, *, out: Any = None) -> MLArrayBase:
        """The maximum over axis; its gradient goes to the first maximal element (NaN wins)."""
        _numpy_only_defaults("max", None, out)
        return self._reduce("max", axis, keepdims)

    def min(self, axis: Any = None, keepdims: bool = False, *, out: Any = None) -> MLArrayBase:
        """The minimum over axis; its gradient goes to the first minimal element (NaN wins)."""
        _numpy_only_defaults("min", None, out)
        return self._reduce("min", axis, keepdims)

    def _count(self, axis: Any) -> int:
        return math.prod(self._index.shape[d] for d in self._axes(axis))

    def mean(self, axis: Any = None, keepdims: bool = False, *, dtype: Any = None,
             out: Any = None) -> MLArrayBase:
        """sum / count over axis (Value's '/': the sum times count ** -1)."""
        _numpy_only_defaults("mean", dtype, out)
        count = self._count(axis)
        if count == 0:
            raise ValueError("mean of an empty selection")
        return self.sum(axis, keepdims) / count

    def var(self, axis: Any = None, keepdims: bool = False, ddof: int = 0, *, dtype: Any = None,
            out: Any = None) -> MLArrayBase:
        """Variance: the squared deviations from the mean, summed over axis, / (count - ddof)
        (ddof=0, NumPy's default, is the population variance)."""
        _numpy_only_defaults("var", dtype, out)
        count = self._count(axis) - ddof
        if count <= 0:
            raise ValueError(f"var: ddof={ddof} leaves no degrees of freedom over "
                             f"{self._count(axis)} elements")
        deviations = self - self.mean(axis, keepdims=True)
        return (deviations**2).sum(axis, keepdims) / count

    def std(self, axis: Any = None, keepdims: bool = False, ddof: int = 0, *, dtype: Any = None,
            out: Any = None) -> MLArrayBase:
        """Standard deviation: ``var(axis, keepdims, ddof) ** 0.5`` (NumPy's population
        default), one 'std' node per output element. Its gradient is PyTorch's: 0 where the
        spread is 0 (a constant slice), where ``** 0.5`` would give NaN (its derivative at 0
        is infinite)."""
        _numpy_only_defaults("std", dtype, out)
        return self.var(axis, keepdims, ddof)._unary("std")

    # ========================================================================= shape changes

    def reshape(self, *shape: Any, order: str = "C") -> MLArrayBase:
        """The same elements in a new shape (varargs or a tuple; one dimension may be -1).
        As in NumPy, a view sharing this array's slots when the layout allows (assigning
        through it changes this array), else a new array of the same nodes (a transposed
        array reshaped, say); gradients flow either way. Only the row-major order "C" (order
        is there for ``np.reshape(a, shape)``, which passes it)."""
        if order != "C":
            raise ValueError(f"reshape: only order='C' is supported, not {order!r}")
        # numpy reads the shape: varargs, a tuple, a list or a numpy array (and none: TypeError)
        index = self._index.reshape(*shape)
        if index.size == 0 or np.may_share_memory(index, self._index):
            return type(self)._wrap(self._store, index)
        return type(self)._gather(self._store, index)

    def transpose(self, *axes: Any) -> MLArrayBase:
        """The axes permuted (reversed by default); a view."""
        perm: Any = axes if axes else None  # no argument: reversed
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list, np.ndarray))):
            perm = None if axes[0] is None else tuple(axes[0])  # (an explicit () must fail)
        return type(self)._wrap(self._store, np.transpose(self._index, perm))

    @property
    def T(self) -> MLArrayBase:  # noqa: N802 - NumPy's name
        """The transpose (axes reversed)."""
        return self.transpose()

    def __getitem__(self, key: Any) -> Any:
        """NumPy indexing. A single element is the engine's Value for that node; otherwise an
        array over the same nodes (basic indexing gives a view sharing the slots; advanced
        indexing, as in NumPy, a new array -- of the same nodes, so gradients flow either way)."""
        if isinstance(key, MLArrayBase):
            raise TypeError("an MLArray cannot index an MLArray; use ints, slices or numpy arrays")
        sub = self._index[key]
        if not isinstance(sub, np.ndarray):
            return self._kernels.array_value(self._store, int(sub))
        if sub.size == 0 or np.may_share_memory(sub, self._index):
            return type(self)._wrap(self._store, sub)
        return type(self)._gather(self._store, sub)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Re-point the selected elements at value's nodes; every view of this array sees it.
        A Value, or an MLArray's elements, broadcast as NumPy broadcasts (the elements then are
        those nodes). Numbers -- a number, (nested) lists, a numpy array -- become new leaves,
        one per selected element, so that each trains on its own (lists may hold Values too:
        those are referenced)."""
        if isinstance(key, MLArrayBase):
            raise TypeError("an MLArray cannot index an MLArray; use ints, slices or numpy arrays")
        target = np.asarray(self._index[key])
        self._check_engine(value)
        if isinstance(value, (MLArrayBase, self._Value)):
            src = self._operand(value)
            assert src is not None
            source = self._assigned(src._index, target.shape)
        else:
            src = self._fresh_leaves(value, target.shape)
            source = src._index
        self._kernels.array_assign(self._store, _positions(target), src._store,
                                   _positions(source))

    @staticmethod
    def _assigned(source: np.ndarray, target: Shape) -> np.ndarray:
        """source (an index, or numbers) broadcast to the target of an assignment."""
        try:
            return np.broadcast_to(_drop_leading_ones(source, len(target)), target)
        except ValueError:
            raise ValueError(f"could not broadcast input array from shape {source.shape} into "
                             f"shape {target}") from None

    def _fresh_leaves(self, value: Any, target: Shape) -> MLArrayBase:
        """The numbers of value (a number, (nested) lists, a numpy array) broadcast to target,
        as new leaves: one per element (Values in a list are referenced)."""
        if isinstance(value, np.ndarray):
            value = np.asarray(value)  # (a subclass as NumPy reads it)
            if value.dtype.kind in "biuf":
                return type(self)._from_ndarray(np.ascontiguousarray(self._assigned(value, target)))
        if isinstance(value, (list, tuple, np.ndarray)):
            flat: list[Any] = []
            shape = self._nested(value, flat)
        elif _number_or_none(value) is not None:
            flat, shape = [value], ()
        else:
            raise TypeError(f"cannot assign {type(value).__name__} to MLArray elements")
        items = np.empty(len(flat), dtype=object)
        items[:] = flat
        spread = self._assigned(items.reshape(shape), target)
        return type(self)._from_flat(spread.reshape(-1).tolist(), target)

    # ================================================================================= repr

    def __repr__(self) -> str:
        items = self._kernels.array_numbers(self._store, self._flat())
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        body = np.array2string(arr.reshape(self._index.shape), separator=", ", prefix="data=",
                               formatter={"all": repr})
        return f"MLArray(shape={self.shape},\ndata={body})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        """A one-element array formats as its number (``f"{loss:.4f}"``), as NumPy's do."""
        if self._index.size == 1:
            return format(self.item(), spec)
        if spec:
            raise TypeError(f"unsupported format string passed to MLArray.__format__: {spec!r} "
                            f"(an array of shape {self.shape})")
        return str(self)

    def __reduce__(self) -> Any:
        raise TypeError("an MLArray cannot be pickled (its nodes live in the engine); pickle "
                        "arr.to_list() instead")

    def __deepcopy__(self, memo: dict[int, Any]) -> MLArrayBase:
        """New leaves with the same data and gradients, as ``copy.deepcopy`` copies a leaf
        Value (the same node twice stays one node; an op node's closure cannot be copied:
        TypeError). So ``copy.deepcopy(model)`` keeps a copy of an array layer's weights."""
        values = copy.deepcopy(self.values(), memo)
        return type(self)._new(self._kernels.array_from_values(values), self.shape)

    # ========================================================================== constructors

    @classmethod
    def zeros(cls, *shape: Any) -> MLArrayBase:
        """A new array of float 0.0 leaves (varargs or a tuple), one leaf per element."""
        dims = _shape_arg(shape, "zeros")
        return cls._from_floats(np.zeros(dims), dims)

    @classmethod
    def ones(cls, *shape: Any) -> MLArrayBase:
        """A new array of float 1.0 leaves (varargs or a tuple), one leaf per element."""
        dims = _shape_arg(shape, "ones")
        return cls._from_floats(np.ones(dims), dims)

    @classmethod
    def randn(cls, *shape: Any, rng: Any = None) -> MLArrayBase:
        """Standard normal leaves, drawn row-major with ``random.gauss(0, 1)`` (SmolML's draws:
        ``random.seed`` reproduces them); ``rng`` a ``random.Random`` or an int seed."""
        dims = _shape_arg(shape, "randn")
        r = _rng(rng)
        n = math.prod(dims)
        return cls._from_floats(np.array([r.gauss(0, 1) for _ in range(n)]), dims)

    @classmethod
    def _drawn(cls, in_features: int, out_features: int, rng: Any, what: str,
               scale: Callable[[int, int], float],
               draw: Callable[[Any, float], float]) -> MLArrayBase:
        """A (in_features, out_features) array of draw(r, scale(in, out)), row-major as SmolML
        draws it; the shape and rng checked first, and nothing drawn (nor scaled: a zero fan
        has no scale) for an empty array."""
        dims = _shape_arg((in_features, out_features), what)
        r = _rng(rng)
        if dims[0] * dims[1] == 0:
            return cls.zeros(dims)
        s = scale(*dims)
        return cls._from_floats(np.array([draw(r, s) for _ in range(dims[0] * dims[1])]), dims)

    @classmethod
    def xavier_uniform(cls, in_features: int, out_features: int, rng: Any = None) -> MLArrayBase:
        """A (in_features, out_features) array drawn from U(-l, l), l = sqrt(6 / (in + out))
        (Glorot), row-major as SmolML draws it."""
        return cls._drawn(in_features, out_features, rng, "xavier_uniform",
                          lambda i, o: math.sqrt(6.0 / (i + o)),
                          lambda r, lim: r.uniform(-lim, lim))

    @classmethod
    def xavier_normal(cls, in_features: int, out_features: int, rng: Any = None) -> MLArrayBase:
        """A (in_features, out_features) array drawn from N(0, sqrt(2 / (in + out))) (Glorot)."""
        return cls._drawn(in_features, out_features, rng, "xavier_normal",
                          lambda i, o: math.sqrt(2.0 / (i + o)), lambda r, std: r.gauss(0, std))

    @classmethod
    def he_normal(cls, in_features: int, out_features: int, rng: Any = None) -> MLArrayBase:
        """A (in_features, out_features) array drawn from N(0, sqrt(2 / in)) (He, for ReLU)."""
        return cls._drawn(in_features, out_features, rng, "he_normal",
                          lambda i, o: math.sqrt(2.0 / i), lambda r, std: r.gauss(0, std))


def _matmul(a: MLArrayBase, b: MLArrayBase) -> MLArrayBase:
    """a @ b with NumPy's rules, as one 'linear' node per output element (array_matmul)."""
    if a.ndim == 0 or b.ndim == 0:
        which = 0 if a.ndim == 0 else 1
        raise ValueError(f"matmul: input operand {which} does not have enough dimensions "
                         f"(shapes {a.shape} and {b.shape}; use * to multiply by a scalar)")
    ai = a._index[None, :] if a.ndim == 1 else a._index
    bi = b._index[:, None] if b.ndim == 1 else b._index
    n, k = ai.shape[-2:]
    k2, m = bi.shape[-2:]
    if k != k2:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned: "
                         f"{k} (dim {a.ndim - 1}) != {k2} (dim {max(b.ndim - 2, 0)})")
    try:
        batch = np.broadcast_shapes(ai.shape[:-2], bi.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: the batch dimensions of shapes {a.shape} and {b.shape} "
                         "cannot be broadcast together") from None
    batches = math.prod(batch)
    # each operand row once: a's rows and b's columns, broadcast over the batch dimensions
    w_rows = _broadcast_index(ai, batch + (n, k)).reshape((batches * n, k))
    x_rows = _broadcast_index(np.swapaxes(bi, -1, -2), batch + (m, k)).reshape((batches * m, k))
    store = a._kernels.array_matmul(a._store, np.ascontiguousarray(w_rows, dtype=np.int64),
                                    b._store, np.ascontiguousarray(x_rows, dtype=np.int64),
                                    batches)
    shape = batch + ((n,) if a.ndim > 1 else ()) + ((m,) if b.ndim > 1 else ())
    return type(a)._new(store, shape)


def dense(x: Any, weight: MLArrayBase, bias: Optional[MLArrayBase] = None) -> MLArrayBase:
    """A fully connected layer: ``out[..., j] = bias[j] + weight[j, 0]*x[..., 0] + ...``, with
    x of shape (..., nin), weight (nout, nin), bias (nout,) or None; the result has shape
    (..., nout). Each output element is one 'linear' node with children ``[bias[j],] weight[j],
    x[i]`` -- exactly the node ``michigrad.linear(weight[j], x[i], bias[j])`` (a micrograd
    Neuron's) makes, so the values are micrograd's to the last bit."""
    if not isinstance(weight, MLArrayBase):
        raise TypeError(f"dense: weight must be an MLArray, not {type(weight).__name__}")
    x = _array(x, type(weight))
    weight._check_engine(x)
    weight._check_engine(bias)
    if weight.ndim != 2:
        raise ValueError(f"dense: weight must be 2-D (nout, nin), not of shape {weight.shape}")
    nout, nin = weight.shape
    if x.ndim == 0 or x.shape[-1] != nin:
        raise ValueError(f"dense: input of shape {x.shape} does not end in the {nin} features "
                         f"of a weight of shape {weight.shape}")
    if bias is not None and (not isinstance(bias, MLArrayBase) or bias.shape != (nout,)):
        what = bias.shape if isinstance(bias, MLArrayBase) else type(bias).__name__
        raise ValueError(f"dense: bias must be an MLArray of shape ({nout},), not {what}")
    batch = x.shape[:-1]
    n = math.prod(batch)
    b_store, b_pos = None, None
    if bias is not None:
        b_store, b_pos = bias._store, _positions(bias._index)
    # one output row per input row (x_major): out[i, j] pairs x[i] with weight[j] and bias[j]
    store = weight._kernels.array_matmul(
        weight._store, np.ascontiguousarray(weight._index, dtype=np.int64),
        x._store, np.ascontiguousarray(x._index.reshape((n, nin)), dtype=np.int64), 1,
        b_store, b_pos, True)
    return type(weight)._new(store, batch + (nout,))


# ==================================================================== one class per engine

_CLASSES: dict[str, type[MLArrayBase]] = {}


def array_class(engine: Optional[str] = None) -> type[MLArrayBase]:
    """The MLArray class over an engine's nodes: ``"compiled"`` or ``"reference"`` (default:
    the active engine, ``michigrad.ENGINE``). Both can be used in one process; their arrays do
    not mix."""
    if engine is None:
        engine = ENGINE
    if engine not in _KERNELS:
        raise ValueError(f"engine must be 'compiled' or 'reference', not {engine!r}")
    cls = _CLASSES.get(engine)
    if cls is None:
        kernels = importlib.import_module(_KERNELS[engine])
        if not hasattr(kernels, "array_linear"):
            raise ImportError(f"the {engine} engine ({kernels.__name__}) has no array kernels: "
                              "rebuild it (python setup.py build_ext --inplace)")
        value_class = importlib.import_module(_VALUES[engine]).Value
        cls = type("MLArray", (MLArrayBase,), {
            "__slots__": (), "__module__": __name__, "__qualname__": "MLArray",
            "__doc__": f"An N-dimensional array of {engine}-engine nodes (see michigrad.array).",
            "_kernels": kernels, "_Value": value_class, "engine": engine,
        })
        _CLASSES[engine] = cls
    return cls


MLArray = array_class()


# ============================================================================== functions

def _array(x: Any, cls: Optional[type[MLArrayBase]] = None) -> MLArrayBase:
    """x as an MLArray: itself if it is one, else an array of the active engine."""
    if isinstance(x, MLArrayBase):
        return x
    return (cls or MLArray)(x)


def zeros(*shape: Any) -> MLArrayBase:
    """``MLArray.zeros``: float 0.0 leaves of this shape (varargs or a tuple)."""
    return MLArray.zeros(*shape)


def ones(*shape: Any) -> MLArrayBase:
    """``MLArray.ones``: float 1.0 leaves of this shape (varargs or a tuple)."""
    return MLArray.ones(*shape)


def randn(*shape: Any, rng: Any = None) -> MLArrayBase:
    """``MLArray.randn``: standard normal leaves from ``random.gauss`` (or ``rng``)."""
    return MLArray.randn(*shape, rng=rng)


def xavier_uniform(in_features: int, out_features: int, rng: Any = None) -> MLArrayBase:
    """``MLArray.xavier_uniform``."""
    return MLArray.xavier_uniform(in_features, out_features, rng)


def xavier_normal(in_features: int, out_features: int, rng: Any = None) -> MLArrayBase:
    """``MLArray.xavier_normal``."""
    return MLArray.xavier_normal(in_features, out_features, rng)


def he_normal(in_features: int, out_features: int, rng: Any = None) -> MLArrayBase:
    """``MLArray.he_normal``."""
    return MLArray.he_normal(in_features, out_features, rng)


def relu(x: Any) -> MLArrayBase:
    """max(0, x) element-wise."""
    return _array(x).relu()


def leaky_relu(x: Any, slope: Number = 0.01) -> MLArrayBase:
    """x if x > 0 else slope * x, element-wise."""
    return _array(x).leaky_relu(slope)


def elu(x: Any, alpha: Number = 1.0) -> MLArrayBase:
    """x if x > 0 else alpha * (e ** x - 1), element-wise."""
    return _array(x).elu(alpha)


def sigmoid(x: Any) -> MLArrayBase:
    """1 / (1 + e ** -x) element-wise."""
    return _array(x).sigmoid()


def tanh(x: Any) -> MLArrayBase:
    """tanh element-wise."""
    return _array(x).tanh()


def _shifted(x: MLArrayBase, axes: tuple[int, ...]) -> MLArrayBase:
    """x - max(x) along axes, so the largest exponent is 0 and nothing overflows. The max is a
    node of the graph (its gradient cancels in softmax up to rounding), not a constant taken
    from today's data: a replayed graph (michigrad.Graph) shifts by the new max."""
    return x - x.max(axes, keepdims=True)


def softmax(x: Any, axis: int = -1) -> MLArrayBase:
    """e ** x / sum(e ** x) along axis, computed from x - max(x) (numerically stable)."""
    logits = _array(x)
    axes = logits._axes(axis)
    if logits._count(axes) == 0:  # no logits to normalise: an empty result, as torch's
        return logits.zeros(logits.shape)
    e = _shifted(logits, axes).exp()
    return e / e.sum(axes, keepdims=True)


def log_softmax(x: Any, axis: int = -1) -> MLArrayBase:
    """x - log(sum(e ** x)) along axis, computed from x - max(x) (numerically stable)."""
    logits = _array(x)
    axes = logits._axes(axis)
    if logits._count(axes) == 0:
        return logits.zeros(logits.shape)
    shifted = _shifted(logits, axes)
    return shifted - shifted.exp().sum(axes, keepdims=True).log()
