"""Neural-network modules: micrograd's ``Neuron``/``Layer``/``MLP``, and what the course adds.

The micrograd layer is exact: the same classes, reprs, weight draws (``random.uniform(-1, 1)`` from
the global ``random`` module, in micrograd's order; biases ``Value(0)``) and the same sum, so
``random.seed(1337)`` reproduces micrograd's demo to the last bit. On top of it, as the course's
exercises ask: ``bias=False``, ``Linear`` and activation layers (``ReLU``, ``Tanh``, ``Sigmoid``),
``Sequential`` (alias ``Model``), and PyTorch-shaped conveniences: ``named_parameters()``,
``state_dict()``/``load_state_dict()``, ``save()``/``load()``.

Parameters are scalar ``Value`` objects. For naming and saving they are grouped the way PyTorch
groups them into tensors: a neuron's weights are the tensor ``w`` (a list), its bias ``b`` (a
scalar), so a state dict key is ``layers.0.neurons.3.w`` and its value a list of floats;
``named_parameters()`` names each scalar by its tensor and index (``layers.0.neurons.3.w.1``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from operator import mul
from typing import Any, Union, cast

from .engine import Value, linear

__all__ = [
    "Module", "Neuron", "Layer", "MLP", "Linear", "ReLU", "Tanh", "Sigmoid", "Sequential", "Model",
    "Dense", "neuron_sum",
]

# A "tensor" of parameters: a Value, or a (nested) list of them.
Tensor = Union[Value, list[Any]]
_STATE_FORMAT = "michigrad.state_dict"

# Neurons use the fused kernel (one 'linear' node per neuron); False builds micrograd's graph.
FUSED = True
_STATE_VERSION = 1


def neuron_sum(w: Sequence[Value], x: Sequence[Any], b: Value | None) -> Value:
    """``b + w[0]*x[0] + w[1]*x[1] + ...``: a neuron's pre-activation.

    The value is exactly micrograd's ``sum((wi*xi for wi, xi in zip(w, x)), b)`` -- the same IEEE
    operations in the same order -- so it is bit-identical to micrograd's; without a bias the sum
    starts from the int 0, as Python's ``sum`` does. With ``FUSED`` (the default) it is one node
    of the engine's fused kernel (``engine.linear``, label ``'linear'``), which is what makes a
    training step two orders of magnitude faster than micrograd's; gradients agree with the
    unfused graph to rounding. With ``FUSED = False`` it builds micrograd's graph of ``'*'`` and
    ``'+'`` nodes, e.g. to draw a neuron as the course does.
    """
    if FUSED:
        return linear(w, x, b)
    # map(mul, ...) is micrograd's generator without a Python frame per term: ~25% faster
    if b is None:
        return cast(Value, sum(map(mul, w, x)))
    return cast(Value, sum(map(mul, w, x), b))


def _inputs(x: Any, nin: int, who: object) -> Sequence[Any]:
    """x as a sequence of nin inputs. A bare Value or number is a 1-vector (what a one-output
    layer returns, so ``MLP(2, [1, 3])`` works); a wrong length is an error, where micrograd's
    ``zip`` would silently drop inputs."""
    if isinstance(x, Value) or not hasattr(x, "__len__") and not hasattr(x, "__iter__"):
        x = (x,)
    elif not hasattr(x, "__len__"):
        x = list(x)  # a generator: every neuron of a layer reads it
    if len(x) != nin:
        raise ValueError(f"{who!r} expects {nin} inputs, got {len(x)}")
    return cast(Sequence[Any], x)


def _flatten(tensor: Tensor) -> Iterator[tuple[str, Value]]:
    """(index path, Value) for each scalar of a (nested) list of Values."""
    if isinstance(tensor, Value):
        yield "", tensor
        return
    for i, item in enumerate(tensor):
        for path, v in _flatten(item):
            yield f".{i}{path}", v


def _is_tensor(obj: Any) -> bool:
    """A Value, or a non-empty (nested) list of Values."""
    if isinstance(obj, Value):
        return True
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(_is_tensor(o) for o in obj)


def _snapshot(tensor: Tensor) -> Any:
    """The numbers of a tensor of Values (a float, or nested lists of floats)."""
    if isinstance(tensor, Value):
        return tensor.data
    return [_snapshot(item) for item in tensor]


def _shape(obj: Any) -> tuple[int, ...] | None:
    """The shape of a number (``()``) or of nested equal-length lists; None if ragged or not
    numbers."""
    if isinstance(obj, Value):
        return ()
    if isinstance(obj, (list, tuple)):
        shapes = {_shape(item) for item in obj}
        if len(shapes) > 1:
            return None
        inner = shapes.pop() if shapes else ()
        return None if inner is None else (len(obj),) + inner
    if isinstance(obj, (bool, str, bytes)):
        return None
    if isinstance(obj, (int, float)):
        return ()
    if hasattr(type(obj), "__float__") and not hasattr(obj, "__len__"):  # numpy scalars
        return ()
    return None


def _stored(numbers: Any, scratch: Value) -> Any:
    """The numbers (a number or nested lists) as a Value stores them (ints beyond 2**53 become
    floats, numpy scalars Python numbers): converted by the engine itself, through one scratch
    Value, so that a number it cannot store raises here, before any parameter is changed."""
    if isinstance(numbers, (list, tuple)):
        return [_stored(n, scratch) for n in numbers]
    scratch.data = numbers
    return scratch.data


def _assign(tensor: Tensor, numbers: Any) -> None:
    if isinstance(tensor, Value):
        tensor.data = numbers
        return
    for item, n in zip(tensor, numbers):
        _assign(item, n)


class Module:
    """Base class of every layer and model: ``parameters()``, ``zero_grad()``, naming, saving.

    A subclass keeps its parameters as attributes: a ``Value``, a list of Values, another
    ``Module`` or a list of Modules. That is enough for ``named_parameters()``, ``state_dict()``
    and ``save()`` to find them, in attribute order (a subclass may override ``parameters()`` for
    speed; it must return them in the same order).
    """

    def zero_grad(self) -> None:
        """Set every parameter's gradient to 0 (micrograd's int 0), ready for a new backward()."""
        for p in self.parameters():
            p.grad = 0

    def parameters(self) -> list[Value]:
        """Every parameter (a scalar Value), in a fixed order."""
        return [p for _, p in self.named_parameters()]

    def __call__(self, x: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define __call__ (its forward pass)")

    # --- naming -------------------------------------------------------------------------------

    def _named_children(self) -> Iterator[tuple[str, Module]]:
        """Sub-modules, named as PyTorch names them (``layers.0``)."""
        for name, attr in vars(self).items():
            if isinstance(attr, Module):
                yield name, attr
            elif isinstance(attr, (list, tuple)) and attr and all(isinstance(m, Module) for m in attr):
                for i, m in enumerate(attr):
                    yield f"{name}.{i}", m

    def _named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """This module's own parameter tensors (not its children's), in attribute order."""
        for name, attr in vars(self).items():
            if _is_tensor(attr):
                yield name, attr

    def named_tensors(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(name, tensor) for every parameter tensor of this module and its sub-modules: a bias
        is a Value, a neuron's weights a list of Values. These are the state dict's keys."""
        seen: set[int] = set()
        for name, tensor in self._walk_tensors(prefix):
            if id(tensor) not in seen:  # a module used twice is saved once, as in PyTorch
                seen.add(id(tensor))
                yield name, tensor

    def _walk_tensors(self, prefix: str) -> Iterator[tuple[str, Tensor]]:
        for name, tensor in self._named_tensors():
            yield prefix + name, tensor
        for name, child in self._named_children():
            yield from child._walk_tensors(f"{prefix}{name}.")

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Value]]:
        """(name, Value) for every parameter, in ``parameters()`` order: the tensor's name and the
        scalar's index in it (``layers.0.neurons.3.w.1``, ``layers.0.neurons.3.b``)."""
        for name, tensor in self.named_tensors(prefix):
            for path, v in _flatten(tensor):
                yield name + path, v

    # --- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the parameters: ``{tensor name: number or nested list of numbers}``.

        Plain numbers (copies), never Values, so it can be stored, sent or compared freely."""
        return {name: _snapshot(tensor) for name, tensor in self.named_tensors()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Set the parameters from a ``state_dict()``. Keys and shapes must match exactly; on any
        mismatch a ``KeyError``/``ValueError`` says what, and no parameter is changed."""
        tensors = dict(self.named_tensors())
        missing = [k for k in tensors if k not in state_dict]
        unexpected = [k for k in state_dict if k not in tensors]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(parts))
        for name, tensor in tensors.items():
            want, got = _shape(tensor) or (), _shape(state_dict[name])
            if got is None:
                raise ValueError(f"load_state_dict: {name!r} must be a number or nested lists of "
                                 f"numbers, got {type(state_dict[name]).__name__}")
            if want != got:
                raise ValueError(f"load_state_dict: {name!r} has shape {list(want)} in the model "
                                 f"but {list(got)} in the state dict")
        scratch = Value(0)
        stored = {}
        for name in tensors:
            try:
                stored[name] = _stored(state_dict[name], scratch)
            except (TypeError, ValueError, OverflowError) as exc:  # e.g. an int beyond a float
                raise ValueError(f"load_state_dict: {name!r} holds a number a Value cannot "
                                 f"store: {exc}") from exc
        for name, tensor in tensors.items():  # every number is valid: nothing can fail now
            _assign(tensor, stored[name])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the parameters to a JSON file (every float round-trips exactly)."""
        payload = {"format": _STATE_FORMAT, "version": _STATE_VERSION, "model": repr(self),
                   "state_dict": self.state_dict()}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f)

    def load(self, path: str | os.PathLike[str]) -> Module:
        """Read parameters written by ``save()`` into this module (same architecture); returns
        the module."""
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        if not isinstance(payload, dict) or payload.get("format") != _STATE_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a michigrad model file")
        if payload.get("version") != _STATE_VERSION:
            raise ValueError(f"{os.fspath(path)!r} has format version {payload.get('version')}, "
                             f"this michigrad reads version {_STATE_VERSION}")
        self.load_state_dict(payload["state_dict"])
        return self


# ============================================================ micrograd's layer (exact)

class Neuron(Module):
    """``act(b + Σ wᵢxᵢ)`` with ReLU (``nonlin=True``) or no activation. Weights are drawn from
    ``random.uniform(-1, 1)``, one per input, in order; the bias is ``Value(0)``."""

    def __init__(self, nin: int, nonlin: bool = True, bias: bool = True) -> None:
        if not bias and nin < 1:
            raise ValueError("a Neuron without bias needs at least one input")
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0) if bias else None
        self.nonlin = nonlin

    def __call__(self, x: Any) -> Value:
        return self._forward(_inputs(x, len(self.w), self))

    def _forward(self, x: Sequence[Any]) -> Value:
        act = neuron_sum(self.w, x, self.b)
        return act.relu() if self.nonlin else act

    def parameters(self) -> list[Value]:
        return self.w + [self.b] if self.b is not None else list(self.w)

    def __repr__(self) -> str:
        kind = "ReLU" if self.nonlin else "Linear"
        return f"{kind}Neuron({len(self.w)}{'' if self.b is not None else ', bias=False'})"


class Layer(Module):
    """``nout`` neurons over the same inputs. One output comes back as a bare Value (as in
    micrograd), more as a list."""

    def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]
        self.nin = nin

    def __call__(self, x: Any) -> Any:  # a Value, or a list of them
        x = _inputs(x, self.nin, self)
        out = [n._forward(x) for n in self.neurons]
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """A multi-layer perceptron: ReLU layers, and a linear last layer."""

    def __init__(self, nin: int, nouts: Sequence[int], **kwargs: Any) -> None:
        sz = [nin] + list(nouts)
        self.layers = [Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1, **kwargs)
                       for i in range(len(nouts))]

    def __call__(self, x: Any) -> Any:  # a Value for one output (micrograd's demo), else a list
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"


# ==================================================== what the course asks students to add

class Linear(Layer):
    """A layer of neurons without activation, ``nn.Linear``'s counterpart; the activation is a
    layer of its own. Weights are drawn like micrograd's (neuron by neuron), so
    ``Sequential([Linear(2, 16), ReLU(), Linear(16, 1)])`` is ``MLP(2, [16, 1])`` to the last bit;
    like ``Layer``, one output comes back as a bare Value (so it drops into micrograd's loops)."""

    def __init__(self, nin: int, nout: int, bias: bool = True) -> None:
        super().__init__(nin, nout, nonlin=False, bias=bias)
        self._bias = bias

    def __repr__(self) -> str:
        return f"Linear({self.nin}, {len(self.neurons)}{'' if self._bias else ', bias=False'})"


class _Activation(Module):
    """An activation applied to each output of the previous layer (a Value, a list of them or
    an MLArray). The optional size (``Tanh(3)``) is checked against the input (an MLArray's
    last dimension)."""

    _array_method = ""  # the MLArray method of this activation

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def _apply(self, v: Value) -> Value:
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:  # the shape of x: a Value, a list or an MLArray
        if getattr(type(x), "_michigrad_array", False):  # an MLArray: one kernel call
            if self.size is not None and (x.ndim == 0 or x.shape[-1] != self.size):
                raise ValueError(f"{self!r} expects {self.size} inputs, got shape {x.shape}")
            return getattr(x, self._array_method)()
        if isinstance(x, Value) or not hasattr(x, "__iter__"):
            if self.size not in (None, 1):
                raise ValueError(f"{self!r} expects {self.size} inputs, got 1")
            return self._apply(x if isinstance(x, Value) else Value(x))
        out = [self._apply(v if isinstance(v, Value) else Value(v)) for v in x]
        if self.size is not None and len(out) != self.size:
            raise ValueError(f"{self!r} expects {self.size} inputs, got {len(out)}")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'' if self.size is None else self.size})"


class ReLU(_Activation):
    """max(0, x) on each input."""

    _array_method = "relu"

    def _apply(self, v: Value) -> Value:
        return v.relu()


class Tanh(_Activation):
    """tanh(x) on each input."""

    _array_method = "tanh"

    def _apply(self, v: Value) -> Value:
        return v.tanh()


class Sigmoid(_Activation):
    """1 / (1 + e⁻ˣ) on each input."""

    _array_method = "sigmoid"

    def _apply(self, v: Value) -> Value:
        return v.sigmoid()


class Sequential(Module):
    """Modules applied one after another: ``Sequential([Linear(2, 4), Tanh(), Linear(4, 1)])``
    (the course's ``Model``) or ``Sequential(Linear(2, 4), Tanh(), ...)`` (PyTorch's way).
    Sub-modules are named by position (``0.neurons.1.w``), as in PyTorch."""

    def __init__(self, *modules: Module | Iterable[Module]) -> None:
        items: list[Any] = list(modules)
        if len(items) == 1 and not isinstance(items[0], Module):
            items = list(items[0])  # the course's Model([...])
        for m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, not {type(m).__name__}")
        self.layers: list[Module] = items

    def __call__(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def _named_children(self) -> Iterator[tuple[str, Module]]:
        for i, m in enumerate(self.layers):
            yield str(i), m

    def parameters(self) -> list[Value]:
        params, seen = [], set()
        for layer in self.layers:
            for p in layer.parameters():
                if id(p) not in seen:  # a module used twice is one set of parameters
                    seen.add(id(p))
                    params.append(p)
        return params

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(repr(m) for m in self.layers)}])"


Model = Sequential  # the course's name for it


# ============================================================ a layer over N-d arrays (issue #5)

_DENSE_ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "elu")


class Dense(Module):
    """A fully connected layer over ``MLArray`` batches: ``(N, nin) -> (N, nout)`` (any leading
    batch dimensions; a single ``(nin,)`` sample gives ``(nout,)``), with an optional activation
    (``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"leaky_relu"``, ``"elu"`` or a function of an
    MLArray).

    ``weight`` is an ``(nout, nin)`` MLArray (row j: output j's weights, as in ``torch.nn.Linear``)
    drawn as micrograd draws a layer (``random.uniform(-1, 1)``, output by output), ``bias`` an
    ``(nout,)`` MLArray of micrograd's ``Value(0)``. So with the same seed ``Dense(nin, nout)``
    computes exactly what ``Linear(nin, nout)`` computes, but a whole batch is one kernel call:
    each output element is one 'linear' node (``michigrad.array.dense``). Its parameters are the
    element Values, so ``michigrad.optim`` optimisers, ``state_dict()`` and ``save()`` work
    unchanged; it composes in ``Sequential`` with other Dense layers and the activation layers.
    Needs numpy (the ``array`` extra).
    """

    def __init__(self, nin: int, nout: int, activation: Any = None, bias: bool = True) -> None:
        from .array import MLArray  # numpy, imported on first use

        if activation is not None and not callable(activation) and \
                activation not in _DENSE_ACTIVATIONS:
            raise ValueError(f"Dense: activation must be None, a function or one of "
                             f"{_DENSE_ACTIVATIONS}, not {activation!r}")
        if nin < 0 or nout < 0:
            raise ValueError(f"Dense: sizes must be non-negative, not ({nin}, {nout})")
        self.nin, self.nout = nin, nout
        self.activation = activation
        rows = [[random.uniform(-1, 1) for _ in range(nin)] for _ in range(nout)]
        self.weight = MLArray(rows) if nout else MLArray.zeros(0, nin)
        self.bias = MLArray([0] * nout) if bias else None
        self._tensors: dict[str, tuple[Any, list[Value], Any]] = {}

    def __call__(self, x: Any) -> Any:  # an MLArray
        from .array import dense

        if not getattr(type(x), "_michigrad_array", False):
            x = type(self.weight)(x)
        if x.ndim == 0 or x.shape[-1] != self.nin:
            raise ValueError(f"{self!r} expects inputs of shape (..., {self.nin}), got {x.shape}")
        out = dense(x, self.weight, self.bias)
        if self.activation is None:
            return out
        if callable(self.activation):
            return self.activation(out)
        return getattr(out, self.activation)()

    def parameters(self) -> list[Value]:
        params = self.weight.values()
        return params + self.bias.values() if self.bias is not None else params

    def _named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        # the element Values as nested lists: state_dict(), load_state_dict() and save() work
        # on them as on any other module's tensors
        yield "weight", self._tensor("weight")
        if self.bias is not None:
            yield "bias", self._tensor("bias")

    def _tensor(self, name: str) -> Tensor:
        """The array's Values as nested lists: one list object while the array holds the same
        nodes, because named_tensors() tells tensors apart (a module used twice) by identity."""
        arr = getattr(self, name)
        values = arr.values()
        cached = self._tensors.get(name)
        if cached is None or cached[0] is not arr or len(cached[1]) != len(values) or \
                any(a is not b for a, b in zip(cached[1], values)):
            cached = (arr, values, arr.data)
            self._tensors[name] = cached
        return cast(Tensor, cached[2])

    def __repr__(self) -> str:
        act = self.activation
        act_repr = "" if act is None else f", activation={getattr(act, '__name__', act)!r}"
        return f"Dense({self.nin}, {self.nout}{act_repr}{'' if self.bias is not None else ', bias=False'})"
