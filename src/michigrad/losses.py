"""Loss functions over Values, named and reduced as in ``torch.nn.functional``.

Every function takes predictions and targets -- a Value or number, or equal-shaped (nested)
lists of them -- and returns a Value: the mean over the elements by default, their sum with
``reduction="sum"``, or the list of per-element losses with ``reduction="none"``. The mean is
micrograd's ``sum(losses) * (1.0 / len(losses))``, so ``hinge_loss`` reproduces micrograd's demo
loss to the last bit.

Every function also takes ``MLArray`` input (``michigrad.array``) with a target of the same shape
(an MLArray, or numbers: nested lists or a numpy array): the losses are then array operations (a
kernel call each, not a node at a time), ``reduction="none"`` gives an MLArray, and the mean or sum
is the Value of a 0-d array -- the same numbers as the scalar form computes element by element.

Each loss is built from the engine's own ops, so its gradient is exact and ``backward()`` runs in
the compiled core. No loss decides anything in Python from today's numbers: every data-dependent
choice (Huber's two branches, the stable softplus, the clamped log, the log-sum-exp shift) is
itself an op (``relu``, ``abs``, ``max``), so a graph recorded once by ``michigrad.Graph`` and
replayed with new data computes what a fresh build would -- and where the textbook formula
overflows (``exp`` of a large logit) the ops keep every intermediate finite, on replay too. The
class forms (``MSELoss()``, ...) are for code written the PyTorch way:
``criterion = MSELoss(); loss = criterion(y, t)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal, Union, overload

from . import _reference
from .engine import Value, max_of

try:
    from . import _engine
except ImportError:  # no compiled engine: only reference Values
    _engine = None  # type: ignore[assignment]

__all__ = [
    "mse_loss", "l1_loss", "mae_loss", "huber_loss", "hinge_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "cross_entropy",
    "MSELoss", "L1Loss", "HuberLoss", "HingeLoss", "BCELoss", "BCEWithLogitsLoss",
    "CrossEntropyLoss",
]

Operand = Union[Value, float, int]
Nested = Union[Operand, Sequence[Any]]
Reduced = Literal["mean", "sum"]  # these reductions give one Value; "none" gives a list

_REDUCTIONS = ("mean", "sum", "none")
# torch clamps log(p) at -100 in binary_cross_entropy, so p = 0 costs 100, not infinity
_LOG_FLOOR = -100.0
_LOG_FLOOR_INPUT = math.exp(_LOG_FLOOR)
# ... and below the clamp its gradient is 1/max(p, 1e-12): this slope, for every p < e**-100
_LOG_FLOOR_SLOPE = 1e12


def _is_scalar(x: Any) -> bool:
    return isinstance(x, Value) or not hasattr(x, "__len__")


def _pairs(input: Any, target: Any, name: str) -> list[tuple[Any, Any]]:
    """Matching scalar elements of input and target (flattened, row by row); ValueError when
    their shapes differ."""
    if _is_scalar(input) and _is_scalar(target):
        return [(input, target)]
    if _is_scalar(input) or _is_scalar(target):
        raise ValueError(f"{name}: input and target must have the same shape "
                         f"(one is a scalar, the other a sequence)")
    if len(input) != len(target):
        raise ValueError(f"{name}: input has {len(input)} elements, target {len(target)}")
    if len(input) == 0:
        raise ValueError(f"{name}: empty input")
    out: list[tuple[Any, Any]] = []
    for i, t in zip(input, target):
        out.extend(_pairs(i, t, name))
    return out


def _value(x: Any) -> Value:
    return x if isinstance(x, Value) else Value(x)


def _reduce(losses: list[Value], reduction: str) -> Any:
    """The mean, the sum or the list of the losses (typed Any: the overloads say which)."""
    if reduction == "mean":
        return sum(losses) * (1.0 / len(losses))  # micrograd's demo: bit-identical
    if reduction == "sum":
        return sum(losses)
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, not {reduction!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, not {reduction!r}")


# =============================================================================== regression


@overload
def mse_loss(input: Nested, target: Nested, reduction: Reduced = ...) -> Value: ...
@overload
def mse_loss(input: Nested, target: Nested, reduction: Literal["none"]) -> list[Value]: ...
@overload
def mse_loss(input: Nested, target: Nested, reduction: str = ...) -> Value | list[Value]: ...

def mse_loss(input: Nested, target: Nested, reduction: str = "mean") -> Any:
    """Mean squared error: ``(input - target)**2``."""
    _check_reduction(reduction)
    if _is_array(input) or _is_array(target):
        x, t = _array_pair(input, target, "mse_loss")
        return _array_reduce((x - t) ** 2, reduction)
    return _reduce([(_value(x) - y) ** 2 for x, y in _pairs(input, target, "mse_loss")], reduction)



@overload
def l1_loss(input: Nested, target: Nested, reduction: Reduced = ...) -> Value: ...
@overload
def l1_loss(input: Nested, target: Nested, reduction: Literal["none"]) -> list[Value]: ...
@overload
def l1_loss(input: Nested, target: Nested, reduction: str = ...) -> Value | list[Value]: ...

def l1_loss(input: Nested, target: Nested, reduction: str = "mean") -> Any:
    """Mean absolute error: ``|input - target|`` (gradient sign(input - target), 0 at 0)."""
    _check_reduction(reduction)
    if _is_array(input) or _is_array(target):
        x, t = _array_pair(input, target, "l1_loss")
        return _array_reduce((x - t).abs(), reduction)
    return _reduce([(_value(x) - y).abs() for x, y in _pairs(input, target, "l1_loss")], reduction)


mae_loss = l1_loss



@overload
def huber_loss(input: Nested, target: Nested, reduction: Reduced = ..., delta: float = ...) -> Value: ...
@overload
def huber_loss(input: Nested, target: Nested, reduction: Literal["none"], delta: float = ...) -> list[Value]: ...
@overload
def huber_loss(input: Nested, target: Nested, reduction: str = ..., delta: float = ...) -> Value | list[Value]: ...

def huber_loss(input: Nested, target: Nested, reduction: str = "mean",
               delta: float = 1.0) -> Any:
    """Huber loss: ``0.5*d**2`` where ``|d| < delta``, else ``delta*(|d| - 0.5*delta)``, with
    ``d = input - target`` -- quadratic near the target, linear (robust to outliers) far away."""
    _check_reduction(reduction)
    if not delta > 0:
        raise ValueError(f"huber_loss: delta must be positive, not {delta}")
    if _is_array(input) or _is_array(target):
        x, t = _array_pair(input, target, "huber_loss")
        return _array_reduce(_huber(x - t, delta), reduction)
    return _reduce([_huber(_value(x) - y, delta) for x, y in _pairs(input, target, "huber_loss")],
                   reduction)


def _huber(d: Any, delta: float) -> Any:
    """Huber of d (a Value or an MLArray) without a branch: with a = |d|, the excess
    r = relu(a - delta) and q = a - r = min(a, delta), ``0.5*q**2 + delta*r``. Where a < delta,
    r is 0 and this is ``0.5*d**2`` to the last bit; beyond, ``0.5*delta**2 + delta*(a - delta)``
    (the linear branch up to rounding), whose gradient is delta*sign(d) exactly (q's is 0).
    A replayed graph re-decides the side per element: relu does. An infinite delta is the
    quadratic everywhere (as in torch), built as such: ``delta*r`` would be ``inf*0``, NaN."""
    if delta == math.inf:
        return 0.5 * d.abs()**2  # the quadratic side's bits: q is |d| there
    a = d.abs()
    r = (a - delta).relu()
    q = a - r
    return 0.5 * q**2 + delta * r


# =========================================================================== classification


@overload
def hinge_loss(input: Nested, target: Nested, reduction: Reduced = ..., margin: float = ...) -> Value: ...
@overload
def hinge_loss(input: Nested, target: Nested, reduction: Literal["none"], margin: float = ...) -> list[Value]: ...
@overload
def hinge_loss(input: Nested, target: Nested, reduction: str = ..., margin: float = ...) -> Value | list[Value]: ...

def hinge_loss(input: Nested, target: Nested, reduction: str = "mean",
               margin: float = 1) -> Any:
    """SVM max-margin loss for labels ±1: ``relu(margin - target*input)``, written as
    micrograd's demo writes it (``(1 + -yi*scorei).relu()``, the int 1 included), so the
    numbers -- and their int/float types -- are identical."""
    _check_reduction(reduction)
    if _is_array(input) or _is_array(target):
        s, y = _array_pair(input, target, "hinge_loss")
        return _array_reduce((margin + -y * s).relu(), reduction)
    return _reduce([(margin + -y * _value(s)).relu()
                    for s, y in _pairs(input, target, "hinge_loss")], reduction)


def _log_clamped(p: Any) -> Any:
    """log(p) clamped below at -100 (torch's binary_cross_entropy): p = 0 gives a finite loss.
    Below the clamp the gradient is 1/max(p, 1e-12) = 1e12, as torch's, so training can recover.
    Between the clamp and 1e-12 it is the exact 1/p (up to 2.7e43), where torch's is capped at
    1e12 (its backward divides by max(p * (1 - p), 1e-12)); the losses themselves agree.

    Built from ops (p a Value or an MLArray), so a replayed graph clamps the new p:
    ``log(e**-100 + relu(p - e**-100)) - 1e12 * relu(e**-100 - p)``. Above the floor the first
    log's argument is p (exactly, unless p < ~1e-27, where it may differ by an ulp) and the second
    term is 0: log(p), gradient 1/p. Below it the argument is exactly e**-100, whose log is exactly
    -100.0, and relu's flat side gives it the gradient 0 (not 1 - 1: the two would not cancel in
    floating point next to 1/e**-100); the second term, at most 4e-32 in size, vanishes next to
    -100 but supplies the gradient 1e12. (At p = e**-100 exactly both relus are at their kink,
    where the gradient is 0.)"""
    lo = _LOG_FLOOR_INPUT
    return (lo + (p - lo).relu()).log() - _LOG_FLOOR_SLOPE * (lo - p).relu()



@overload
def binary_cross_entropy(input: Nested, target: Nested, reduction: Reduced = ...) -> Value: ...
@overload
def binary_cross_entropy(input: Nested, target: Nested, reduction: Literal["none"]) -> list[Value]: ...
@overload
def binary_cross_entropy(input: Nested, target: Nested, reduction: str = ...) -> Value | list[Value]: ...

def binary_cross_entropy(input: Nested, target: Nested,
                         reduction: str = "mean") -> Any:
    """Binary cross-entropy from probabilities in [0, 1] (e.g. a ``Sigmoid`` output):
    ``-(t*log(p) + (1-t)*log(1-p))``, each log clamped at -100 as in PyTorch. For raw scores
    prefer ``binary_cross_entropy_with_logits`` (stable for any logit)."""
    _check_reduction(reduction)
    if _is_array(input) or _is_array(target):
        return _array_reduce(_array_bce(input, target), reduction)
    losses = []
    for p, t in _pairs(input, target, "binary_cross_entropy"):
        p = _value(p)
        if not 0.0 <= p.data <= 1.0:
            raise ValueError(f"binary_cross_entropy: input must be in [0, 1], got {p.data}")
        t_data = t.data if isinstance(t, Value) else t
        if t_data == 1 and not isinstance(t, Value):  # skip a term that is 0 * log(...)
            losses.append(-_log_clamped(p))
        elif t_data == 0 and not isinstance(t, Value):
            losses.append(-_log_clamped(1 - p))
        else:
            losses.append(-(t * _log_clamped(p) + (1 - t) * _log_clamped(1 - p)))
    return _reduce(losses, reduction)


def _softplus(z: Any) -> Any:
    """log(1 + e**z) without overflow and without a branch (z a Value or an MLArray):
    ``relu(z) + log(1 + e**-|z|)``, exp only ever seeing a non-positive argument, on replay too.
    relu(z) is written 0.5*(z + |z|): the same number exactly (z + |z| is 2z or 0), but at z = 0
    its gradient is 0.5 (abs' is 0 there), so the gradient is sigmoid(z) everywhere, 0 included,
    where relu's kink would give 0 or 1. The values are those of the old sign-chosen graphs
    (z + log(1 + e**-z), log(1 + e**z)) to the last bit."""
    a = z.abs()
    return 0.5 * (z + a) + (1 + (-a).exp()).log()



@overload
def binary_cross_entropy_with_logits(input: Nested, target: Nested, reduction: Reduced = ...) -> Value: ...
@overload
def binary_cross_entropy_with_logits(input: Nested, target: Nested, reduction: Literal["none"]) -> list[Value]: ...
@overload
def binary_cross_entropy_with_logits(input: Nested, target: Nested, reduction: str = ...) -> Value | list[Value]: ...

def binary_cross_entropy_with_logits(input: Nested, target: Nested,
                                     reduction: str = "mean") -> Any:
    """Binary cross-entropy from logits (raw scores): ``softplus(z) - t*z``, which equals
    ``BCE(sigmoid(z), t)`` and is finite for any logit (``±1000`` included)."""
    _check_reduction(reduction)
    if _is_array(input) or _is_array(target):
        z, t = _array_pair(input, target, "binary_cross_entropy_with_logits")
        return _array_reduce(_softplus(z) - t * z, reduction)
    losses = []
    for z, t in _pairs(input, target, "binary_cross_entropy_with_logits"):
        z = _value(z)
        losses.append(_softplus(z) - t * z)
    return _reduce(losses, reduction)


def _max_node(zs: list[Value]) -> Value:
    """One 'max' node over zs, made by the engine they belong to (losses work on whichever
    engine's Value is losses.Value)."""
    if isinstance(zs[0], _reference.Value):
        return _reference.max_of(zs)
    if _engine is not None and isinstance(zs[0], _engine.Value):  # (under MICHIGRAD_PURE=1 too)
        return _engine.max_of(zs)
    return max_of(zs)


def _cross_entropy_one(logits: Sequence[Any], target: Any) -> Any:
    """-log softmax(logits)[target] = log Σ exp(zᵢ - m) - (z_target - m), m = max(z), one 'max'
    node (re-evaluated when the graph is replayed, so the shift follows the new data): the
    largest exponent is 0, so nothing overflows."""
    zs = [_value(z) for z in logits]
    if not zs:
        raise ValueError("cross_entropy: empty logits")
    m = _max_node(zs)
    shifted = [z - m for z in zs]
    log_sum: Value = sum(s.exp() for s in shifted).log()  # type: ignore[union-attr]
    if _is_scalar(target) and not isinstance(target, Value):
        if not _is_class_index(target, len(zs)):  # the rule of MLArray input (no bool, NaN, inf)
            raise ValueError(f"cross_entropy: target class {target!r} is not in 0..{len(zs) - 1}")
        return log_sum - shifted[int(target)]
    if _is_scalar(target) or len(target) != len(zs):
        raise ValueError("cross_entropy: a target is a class index or one probability per class")
    # class probabilities: -Σ pᵢ log softmaxᵢ
    return sum(p * (log_sum - s) for p, s in zip(target, shifted))



@overload
def cross_entropy(input: Sequence[Any], target: Any, reduction: Reduced = ...) -> Value: ...
@overload
def cross_entropy(input: Sequence[Any], target: Any, reduction: Literal["none"]) -> list[Value]: ...
@overload
def cross_entropy(input: Sequence[Any], target: Any, reduction: str = ...) -> Value | list[Value]: ...

def cross_entropy(input: Sequence[Any], target: Any, reduction: str = "mean") -> Any:
    """Softmax cross-entropy from logits, as ``torch.nn.functional.cross_entropy``.

    ``input`` is one sample's logits (a list of Values) with ``target`` a class index, or a batch
    (a list of such lists) with a list of class indices. A target may also be a list of class
    probabilities. Computed max-subtracted (log-sum-exp), so any logits are safe.

    An ``MLArray`` input is one sample's logits ``(C,)`` or a batch ``(N, C)``; the target is
    then a class index (a sequence of N of them) or class probabilities of the input's shape."""
    _check_reduction(reduction)
    if _is_array(input):
        return _array_reduce(_array_cross_entropy(input, target), reduction)
    if len(input) == 0:
        raise ValueError("cross_entropy: empty input")
    if _is_scalar(input[0]):  # one sample
        return _reduce([_cross_entropy_one(input, target)], reduction)
    if _is_scalar(target) or len(target) != len(input):
        raise ValueError(f"cross_entropy: {len(input)} samples need {len(input)} targets")
    return _reduce([_cross_entropy_one(z, t) for z, t in zip(input, target)], reduction)


# ============================================================================ MLArray inputs
# The same graphs as the scalar forms above, built an array operation at a time (_huber,
# _softplus and _log_clamped take either). Only constants -- numeric targets in binary
# cross-entropy -- choose a graph per element; the data never does.


def _is_array(x: Any) -> bool:
    return getattr(type(x), "_michigrad_array", False)


def _array_pair(input: Any, target: Any, name: str) -> tuple[Any, Any]:
    """input and target as MLArrays of one engine and one shape (numbers become constants)."""
    cls = type(input) if _is_array(input) else type(target)
    x = input if _is_array(input) else cls(input)
    t = target if _is_array(target) else cls(target)
    if x.shape != t.shape:
        raise ValueError(f"{name}: input has shape {x.shape} but target {t.shape}")
    if x.size() == 0:
        raise ValueError(f"{name}: empty input")
    return x, t


def _array_reduce(losses: Any, reduction: str) -> Any:
    """The mean or sum (a Value: micrograd's ``sum(losses) * (1.0 / n)``), or the MLArray."""
    _check_reduction(reduction)
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "mean":
        total = total * (1.0 / losses.size())
    return total[()]


def _array_bce(input: Any, target: Any) -> Any:
    import numpy as np  # only MLArray inputs get here, and they need numpy

    p, t = _array_pair(input, target, "binary_cross_entropy")
    data = p.to_numpy()
    bad = data[~((data >= 0.0) & (data <= 1.0))]
    if bad.size:
        raise ValueError(f"binary_cross_entropy: input must be in [0, 1], got {bad[0]}")
    if _is_array(target):  # Values: the full formula everywhere, as the scalar form
        ones = zeros = np.zeros(p.shape, dtype=bool)
    else:  # numbers: skip a term that is 0 * log(...)
        ones, zeros = t.to_numpy() == 1, t.to_numpy() == 0
    rest = ~(ones | zeros)
    out = type(p).zeros(p.shape)
    if ones.any():
        out[ones] = -_log_clamped(p[ones])
    if zeros.any():
        out[zeros] = -_log_clamped(1 - p[zeros])
    if rest.any():
        pr, tr = p[rest], t[rest]
        out[rest] = -(tr * _log_clamped(pr) + (1 - tr) * _log_clamped(1 - pr))
    return out


def _is_class_index(k: Any, c: int) -> bool:
    """A whole number in 0..c-1 (an int, a float such as 2.0, a numpy integer); not a bool."""
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        return False
    x: Any = k  # (numbers.Real declares no int() or comparisons)
    return math.isfinite(x) and int(x) == x and 0 <= x < c


def _array_cross_entropy(input: Any, target: Any) -> Any:
    """Per-sample losses (shape (N,), or () for one sample), as _cross_entropy_one makes them."""
    import numpy as np  # only MLArray inputs get here, and they need numpy

    cls = type(input)
    if input.ndim not in (1, 2):
        raise ValueError(f"cross_entropy: logits must be (C,) or (N, C), not {input.shape}")
    single = input.ndim == 1
    z = input.reshape(1, -1) if single else input
    n, c = z.shape
    if n == 0:
        raise ValueError("cross_entropy: empty input")
    if c == 0:
        raise ValueError("cross_entropy: empty logits")
    # z - max(z) as array.py's softmax shifts: the max is a node (exact, and re-taken from the
    # new data when a Graph replays), not a constant
    shifted = z - z.max(axis=1, keepdims=True)
    log_sum = shifted.exp().sum(axis=1).log()
    t: Any = target if _is_array(target) else np.asarray(target)
    if t.ndim == input.ndim:  # class probabilities: -Σ pᵢ log softmaxᵢ
        if t.shape != input.shape:
            raise ValueError(f"cross_entropy: class probabilities must have the input's shape "
                             f"{input.shape}, not {t.shape}")
        probs = (t if _is_array(t) else cls(t)).reshape(z.shape)
        losses = (probs * (log_sum.reshape(n, 1) - shifted)).sum(axis=1)
    elif t.ndim == input.ndim - 1 and (single or t.shape == (n,)):
        classes = (t.to_list() if _is_array(t) else t.tolist())
        ks = []
        for k in (classes if isinstance(classes, list) else [classes]):
            if not _is_class_index(k, c):
                raise ValueError(f"cross_entropy: target class {k!r} is not in 0..{c - 1}")
            ks.append(int(k))
        losses = log_sum - shifted[np.arange(n), np.array(ks, dtype=np.int64)]
    else:
        raise ValueError(f"cross_entropy: {n} samples need {n} targets")
    return losses.reshape(()) if single else losses


# =========================================================================== the class forms

class _Loss:
    _fn: Any = None

    def __init__(self, reduction: str = "mean", **kwargs: Any) -> None:
        _check_reduction(reduction)
        self.reduction = reduction
        self.kwargs = kwargs

    def __call__(self, input: Any, target: Any) -> Any:  # a Value, or a list with "none"
        return type(self)._fn(input, target, reduction=self.reduction, **self.kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MSELoss(_Loss):
    """``mse_loss`` as an object."""
    _fn = staticmethod(mse_loss)


class L1Loss(_Loss):
    """``l1_loss`` (mean absolute error) as an object."""
    _fn = staticmethod(l1_loss)


class HuberLoss(_Loss):
    """``huber_loss`` as an object: ``HuberLoss(delta=1.0)``."""
    _fn = staticmethod(huber_loss)

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction, delta=delta)


class HingeLoss(_Loss):
    """``hinge_loss`` (SVM max-margin, labels ±1) as an object."""
    _fn = staticmethod(hinge_loss)

    def __init__(self, reduction: str = "mean", margin: float = 1) -> None:
        super().__init__(reduction, margin=margin)


class BCELoss(_Loss):
    """``binary_cross_entropy`` (from probabilities) as an object."""
    _fn = staticmethod(binary_cross_entropy)


class BCEWithLogitsLoss(_Loss):
    """``binary_cross_entropy_with_logits`` as an object."""
    _fn = staticmethod(binary_cross_entropy_with_logits)


class CrossEntropyLoss(_Loss):
    """``cross_entropy`` (softmax, from logits) as an object."""
    _fn = staticmethod(cross_entropy)
