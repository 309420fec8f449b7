"""The pure-Python engine: michigrad's executable specification.

This is micrograd's ``Value`` (plus ``name``, ``exp``, ``log``, ``tanh``, ``sigmoid``, ``abs`` and
``Value ** Value``), written so that every rule the compiled core (``_engine.pyx``) follows can be
read here. The two engines must agree: same graph shape and op labels, bit-identical forward
values, the same gradients accumulated in the same order. The test suite runs every engine test
against both. ``MICHIGRAD_PURE=1`` makes this the active engine.

Where this engine goes beyond micrograd, it is to make errors clear and results deterministic:

* Children are kept in the order they were given (``_prev`` is still a set), and ``backward()``
  walks them in that order with an explicit stack, so gradients are the same bits on every run and
  no recursion limit applies.
* Numbers are ints or floats, as in micrograd (``Value(2) * 3`` has ``data == 6``, an int), but an
  int that no longer fits a double exactly (``|x| >= 2**53``) becomes a float: that is the
  precision the compiled core stores.
* Forward errors are Python's own (``ZeroDivisionError``, ``OverflowError``, ``ValueError`` where
  Python would return a complex number, ``TypeError``) and are raised before any node is made.
  Local derivatives use IEEE arithmetic at the edges (``0.0 ** -1`` is ``inf``, ``log(-1)`` is
  ``nan``), as PyTorch does, so ``backward()`` never raises for numeric reasons. If a custom
  ``_backward`` raises, every gradient is put back as it was.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any, Union

Number = Union[int, float]

# Ints are exact in a double below this magnitude; beyond it they are stored as floats.
_EXACT_INT_LIMIT = 2**53


def _fit(x: Number) -> Number:
    """An int that a double cannot hold exactly becomes a float (OverflowError if too large)."""
    if type(x) is int and not -_EXACT_INT_LIMIT < x < _EXACT_INT_LIMIT:
        return float(x)
    return x


def _as_number(x: Any, what: str = "Value data") -> Number:
    """Coerce a real number (int, float, numpy scalar, ...) to int or float, else TypeError."""
    if type(x) is float:
        return x
    if type(x) is int:
        return _fit(x)
    if isinstance(x, (str, bytes, bytearray, complex)) or x is None:
        raise TypeError(f"{what} must be a real number, not {type(x).__name__}")
    try:
        return _fit(operator.index(x))  # int, bool, numpy integers
    except TypeError:
        pass
    if hasattr(type(x), "__float__"):
        try:
            return float(x)  # float subclasses, numpy floats, Fraction, Decimal
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{what} must be a real number, not {type(x).__name__}")


def _number_or_none(x: Any) -> Number | None:
    """Like _as_number, but None for a non-number (the caller returns NotImplemented)."""
    try:
        return _as_number(x)
    except TypeError:
        return None


def _pow(x: Number, y: Number) -> Number:
    """``x ** y`` as Python computes it, with a ValueError where Python would return a complex
    number, and int results of 2**53 or more computed in floating point."""
    if x < 0 and math.isfinite(x) and math.isfinite(y) and not float(y).is_integer():
        # checked first: Python's complex power can overflow before returning its complex result
        raise ValueError(f"{x!r} ** {y!r} is a complex number; Value supports real numbers only")
    try:
        if type(x) is int and type(y) is int and y >= 0:
            approx = float(x) ** float(y)  # OverflowError if it cannot be a float at all
            return x**y if abs(approx) < _EXACT_INT_LIMIT else approx
        return x**y
    except OverflowError:  # Python's message is errno's "(34, 'Numerical result out of range')"
        raise OverflowError(f"{x!r} ** {y!r} is too large for a float") from None


def _ieee_pow(x: float, y: float) -> float:
    """``x ** y`` in IEEE arithmetic (C99 pow): infinities where Python would raise."""
    try:
        return _pow(float(x), float(y))
    except ValueError:  # negative ** fractional
        return math.nan
    except ZeroDivisionError:  # 0.0 ** negative
        odd = float(y).is_integer() and y % 2 == 1
        return math.copysign(math.inf, x) if odd else math.inf
    except OverflowError:
        odd = float(y).is_integer() and y % 2 == 1
        return -math.inf if (x < 0 and odd) else math.inf


def _ieee_log(x: float) -> float:
    """``math.log`` in IEEE arithmetic: -inf at 0, nan below."""
    if x > 0:
        return math.log(x)
    return -math.inf if x == 0 else math.nan


def _reciprocal(x: Number) -> float:
    """1 / x in IEEE arithmetic: ±inf at ±0 where Python would raise."""
    return 1 / x if x != 0 else math.copysign(math.inf, x)


def _pow_grad(x: Number, c: Number) -> Number:
    """d(x**c)/dx = c * x**(c-1), micrograd's formula; 0 when c == 0, as in PyTorch."""
    if c == 0:
        return 0.0
    if type(x) is int and type(c) is int and c >= 1:
        return _fit(c * _pow(x, c - 1))
    return c * _ieee_pow(x, c - 1)


def _pow_exponent_grad(x: Number, out: Number) -> float:
    """d(x**y)/dy = x**y * log(x); 0 where x == 0, as in PyTorch."""
    return 0.0 if x == 0 else out * _ieee_log(x)


def _sigmoid(x: Number) -> float:
    """1 / (1 + e**-x), computed so that neither branch can overflow."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _exp(x: Number) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        raise OverflowError(f"exp({x!r}) is too large for a float") from None


def _log(x: Number) -> float:
    if x <= 0:
        raise ValueError(f"log({x!r}): math domain error (log needs a positive number)")
    return math.log(x)


class Value:
    """stores a single scalar value and its gradient"""

    # numpy scalars on the left (`np.float64(2) * v`) defer to our reflected operators
    __array_ufunc__ = None

    def __init__(
        self,
        data: Any,
        _children: Iterable[Value] = (),
        _op: str = "",
        name: str = "",
        *,
        label: str | None = None,
    ) -> None:
        children = tuple(dict.fromkeys(_children))  # unique, in the order given
        for child in children:
            if not isinstance(child, Value):
                raise TypeError(f"Value children must be Values, not {type(child).__name__}")
        if not isinstance(_op, str):
            raise TypeError(f"Value _op must be a str, not {type(_op).__name__}")
        self.data = data
        self.grad = 0
        self.name = _name_or_label(name, label)
        # internal variables used for autograd graph construction
        self._backward: Callable[[], None] = _no_backward
        # An op's forward: recomputes data from the children's current data (graph replay).
        # None for leaves and for Python-defined ops, whose forward is not known (and for an
        # op node whose _backward was replaced: see the setter).
        self._forward: Callable[[], Number] | None = None
        self._children = children
        self._op = _op  # the op that produced this node, for graphviz / debugging / etc

    # --- data, grad, name -------------------------------------------------------------------

    @property
    def data(self) -> Number:
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = _as_number(value, "Value data")

    @property
    def grad(self) -> Number:
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        self._grad = _as_number(value, "Value grad")

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Value name must be a str, not {type(value).__name__}")
        self._name = value

    label = name  # Karpathy's lecture calls it `label`

    @property
    def _backward(self) -> Callable[[], None]:
        return self._backward_fn

    @_backward.setter
    def _backward(self, fn: Callable[[], None]) -> None:
        if not callable(fn):
            raise TypeError(f"_backward must be callable, not {type(fn).__name__}")
        self._backward_fn = fn
        # A replaced local backward makes the node a Python-defined op: its forward no longer
        # describes it, so a Graph refuses to replay it, as the compiled engine's does. (The
        # built-in ops install theirs through _backward_fn.)
        self._forward = None

    @property
    def _prev(self) -> set[Value]:
        return set(self._children)

    # --- operations -------------------------------------------------------------------------

    def __add__(self, other: Any) -> Value:
        other = _as_value(other)
        if other is None:
            return NotImplemented
        def _forward() -> Number:
            return _fit(self.data + other.data)

        out = Value(_forward(), (self, other), "+")
        out._forward = _forward

        def _backward() -> None:
            self.grad += out.grad
            other.grad += out.grad

        out._backward_fn = _backward
        return out

    def __mul__(self, other: Any) -> Value:
        other = _as_value(other)
        if other is None:
            return NotImplemented
        def _forward() -> Number:
            return _fit(self.data * other.data)

        out = Value(_forward(), (self, other), "*")
        out._forward = _forward

        def _backward() -> None:
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward_fn = _backward
        return out

    def __pow__(self, other: Any, modulo: None = None) -> Value:
        if modulo is not None:
            return NotImplemented
        if isinstance(other, Value):
            return self._pow_value(other)
        c = _number_or_none(other)
        if c is None:
            return NotImplemented
        def _forward() -> Number:
            return _pow(self.data, c)

        out = Value(_forward(), (self,), f"**{c}")
        out._forward = _forward

        def _backward() -> None:
            self.grad += _pow_grad(self.data, c) * out.grad

        out._backward_fn = _backward
        return out

    def _pow_value(self, other: Value) -> Value:
        """self ** other with a gradient for the exponent too."""
        def _forward() -> Number:
            return _pow(self.data, other.data)

        out = Value(_forward(), (self, other), "**")
        out._forward = _forward

        def _backward() -> None:
            self.grad += _pow_grad(self.data, other.data) * out.grad
            other.grad += _pow_exponent_grad(self.data, out.data) * out.grad

        out._backward_fn = _backward
        return out

    def __rpow__(self, other: Any) -> Value:  # other ** self
        base = _as_value(other)
        if base is None:
            return NotImplemented
        return base._pow_value(self)

    def exp(self) -> Value:
        """e ** self (OverflowError when too large for a float)."""
        def _forward() -> Number:
            return _exp(self.data)

        out = Value(_forward(), (self,), "exp")
        out._forward = _forward

        def _backward() -> None:
            self.grad += out.data * out.grad

        out._backward_fn = _backward
        return out

    def log(self) -> Value:
        """Natural logarithm (ValueError unless self.data > 0)."""
        def _forward() -> Number:
            return _log(self.data)

        out = Value(_forward(), (self,), "log")
        out._forward = _forward

        def _backward() -> None:
            self.grad += _reciprocal(self.data) * out.grad

        out._backward_fn = _backward
        return out

    def tanh(self) -> Value:
        """Hyperbolic tangent (math.tanh: stable for any input)."""
        def _forward() -> Number:
            return math.tanh(self.data)

        out = Value(_forward(), (self,), "tanh")
        out._forward = _forward

        def _backward() -> None:
            t = out.data
            self.grad += (1 - t * t) * out.grad

        out._backward_fn = _backward
        return out

    def relu(self) -> Value:
        """max(0, self), micrograd's: the int 0 below zero."""
        def _forward() -> Number:
            return 0 if self.data < 0 else self.data

        out = Value(_forward(), (self,), "ReLU")
        out._forward = _forward

        def _backward() -> None:
            self.grad += (out.data > 0) * out.grad

        out._backward_fn = _backward
        return out

    def sigmoid(self) -> Value:
        """1 / (1 + e ** -self), computed without overflow."""
        def _forward() -> Number:
            return _sigmoid(self.data)

        out = Value(_forward(), (self,), "sigmoid")
        out._forward = _forward

        def _backward() -> None:
            s = out.data
            self.grad += (s * (1 - s)) * out.grad

        out._backward_fn = _backward
        return out

    def abs(self) -> Value:
        """|self|; its gradient is sign(self), 0 at 0."""
        def _forward() -> Number:
            return abs(self.data)

        out = Value(_forward(), (self,), "abs")
        out._forward = _forward

        def _backward() -> None:
            x = self.data
            self.grad += ((x > 0) - (x < 0)) * out.grad

        out._backward_fn = _backward
        return out

    __abs__ = abs

    def backward(self) -> None:
        """micrograd's backward(): set this node's grad to 1, then add every node's local
        derivative into its children's grads, in reverse topological order. Nothing is zeroed."""
        # topological order all of the children in the graph
        topo = _topological_order(self)
        saved = [(v, v._grad) for v in topo]

        # go one variable at a time and apply the chain rule to get its gradient
        self.grad = 1
        try:
            for v in reversed(topo):
                v._backward()
        except BaseException:
            for v, grad in saved:  # a custom _backward failed: leave every gradient as it was
                v._grad = grad
            raise

    def __neg__(self) -> Value:  # -self
        return self * -1

    def __radd__(self, other: Any) -> Value:  # other + self
        return self.__add__(other)  # (not `self + other`: NotImplemented must reach Python)

    def __sub__(self, other: Any) -> Value:  # self - other
        if not isinstance(other, Value):
            other = _number_or_none(other)
            if other is None:
                return NotImplemented
        return self + (-other)

    def __rsub__(self, other: Any) -> Value:  # other - self
        other = _number_or_none(other)
        if other is None:
            return NotImplemented
        return other + (-self)

    def __rmul__(self, other: Any) -> Value:  # other * self
        return self.__mul__(other)

    def __truediv__(self, other: Any) -> Value:  # self / other
        if not isinstance(other, Value):
            other = _number_or_none(other)
            if other is None:
                return NotImplemented
            return self * _pow(other, -1)
        return self * other**-1

    def __rtruediv__(self, other: Any) -> Value:  # other / self
        other = _number_or_none(other)
        if other is None:
            return NotImplemented
        return other * self**-1

    def __repr__(self) -> str:
        return f"Value(data={self.data}, grad={self.grad}, name={self.name})"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._children:
            raise TypeError("only leaf Values can be pickled (an operation's closure cannot be); "
                            "save the leaves' data instead")
        attrs = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return (_restore_leaf, (self.data, self.grad, self.name, self._op, attrs or None))

    def __setattr__(self, name: str, value: Any) -> None:
        # Extra attributes are welcome (optimiser state such as p.m), but not over a method:
        # the compiled engine cannot let an instance attribute hide one, so neither do we.
        if name in _METHOD_NAMES:
            raise AttributeError(f"'Value' object attribute '{name}' is read-only")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        # Only extra attributes can go: the Value's own (its properties, methods and the
        # instance fields behind them) stay, as the compiled engine's do.
        if name in _FIELDS or (name in vars(Value) and not name.startswith("__")):
            raise AttributeError(f"'Value' object attribute '{name}' cannot be deleted")
        object.__delattr__(self, name)


def _restore_leaf(data: Number, grad: Number, name: str, op: str, attrs: dict | None) -> Value:
    v = Value(data, (), op, name)
    v.grad = grad
    for key, value in (attrs or {}).items():
        setattr(v, key, value)
    return v


_METHOD_NAMES = frozenset(
    name for name, attr in vars(Value).items() if callable(attr) and name != "_backward"
)
# The instance fields behind a Value's properties (tests check they are all of vars(Value(x))).
_FIELDS = frozenset(("_data", "_grad", "_name", "_backward_fn", "_forward", "_children", "_op"))


def linear(weights: Iterable[Value], inputs: Iterable[Any], bias: Value | None = None) -> Value:
    """bias + w[0]*x[0] + w[1]*x[1] + ... as one node (label 'linear'), summed left to right as
    micrograd's Neuron does (`sum((wi*xi for wi, xi in zip(w, x)), b)`), so the value is the
    same to the last bit; without a bias the sum starts from the int 0, like Python's sum().
    Weights and bias are Values; inputs are Values or numbers."""
    ws, xs = list(weights), list(inputs)
    if len(xs) != len(ws):
        raise ValueError(f"linear: {len(ws)} weights but {len(xs)} inputs")
    if bias is not None and not isinstance(bias, Value):
        raise TypeError(f"linear: bias must be a Value or None, not {type(bias).__name__}")
    for w in ws:
        if not isinstance(w, Value):
            raise TypeError(f"linear: weights must be Values, not {type(w).__name__}")
    for x in xs:
        if not isinstance(x, Value) and _number_or_none(x) is None:
            raise TypeError(f"linear: inputs must be Values or numbers, not {type(x).__name__}")
    xs = [_as_value(x) for x in xs]

    def _forward() -> Number:
        acc: Number = 0 if bias is None else bias.data
        for w, x in zip(ws, xs):
            acc = _fit(acc + _fit(w.data * x.data))
        return acc

    out = Value(_forward(), ([] if bias is None else [bias]) + ws + xs, "linear")
    out._forward = _forward

    def _backward() -> None:
        if bias is not None:
            bias.grad += out.grad
        for w, x in zip(ws, xs):
            w.grad += x.data * out.grad
            x.grad += w.data * out.grad

    out._backward_fn = _backward
    return out


def _no_backward() -> None:
    pass


def _as_value(x: Any) -> Value | None:
    """x itself if it is a Value, a new leaf if it is a number, else None (NotImplemented)."""
    if isinstance(x, Value):
        return x
    number = _number_or_none(x)
    return None if number is None else Value(number)


def _name_or_label(name: str, label: str | None) -> str:
    if label is None:
        return name
    if name and name != label:
        raise TypeError("give name= or label= (its alias), not both")
    return label


def _topological_order(root: Value) -> list[Value]:
    """Children before parents, depth first in child order: micrograd's build_topo, without
    recursion."""
    topo: list[Value] = []
    visited = {id(root)}
    stack = [(root, iter(root._children))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if id(child) not in visited:
                visited.add(id(child))
                stack.append((child, iter(child._children)))
                break
        else:
            stack.pop()
            topo.append(node)
    return topo


# Building blocks of the n-ary reductions (the array kernels of _reference_arrays.py make their
# sum, max and min nodes with them), and max_of: the max node for scalar code.

def _reduction(children: list[Value], label: str, forward: Callable[[], Number],
               backward: Callable[[Value], None]) -> Value:
    out = Value(forward(), children, label)
    out._forward = forward
    out._backward_fn = lambda: backward(out)
    return out


def _chosen(children: list[Value], better: Callable[[Any, Any], bool]) -> int:
    """The index of the first best child, or of the first NaN (NaN wins, as in NumPy)."""
    best = 0
    for k, c in enumerate(children):
        d = c.data
        if d != d:
            return k
        if better(d, children[best].data):
            best = k
    return best


def _extreme(children: list[Value], label: str, better: Callable[[Any, Any], bool]) -> Value:
    """The data of the first maximal (minimal) child, keeping its int/float kind; backward: that
    child, found again from the current data (the first one equal to out.data, or the first NaN
    when out.data is NaN), gets out.grad."""
    def _forward() -> Number:
        return children[_chosen(children, better)].data

    def _backward(out: Value) -> None:
        d = out.data
        for c in children:
            if c.data == d or (d != d and c.data != c.data):
                c.grad += out.grad
                return

    return _reduction(children, label, _forward, _backward)


def max_of(values: Iterable[Value]) -> Value:
    """The first largest of the Values (the first NaN if any, as NumPy) as one node 'max',
    keeping its int/float kind; backward sends the gradient to that one child. The node of
    MLArray's max reduction, for scalar code."""
    children = list(values)
    if not children:
        raise ValueError("max_of: needs at least one Value")
    for c in children:
        if not isinstance(c, Value):
            raise TypeError(f"max_of: values must be Values of the reference engine, not "
                            f"{type(c).__module__}.{type(c).__qualname__}")
    return _extreme(children, "max", operator.gt)
