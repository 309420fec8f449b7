"""The pure-Python engine's recorded graph (``michigrad.Graph`` over ``_reference`` Values).

The executable specification of ``_replay.pxi``'s ``Tape``: the same order (the nodes of
``_topological_order``, which ``Value.backward()`` walks), each op recomputed by the node's own
``_forward`` and back-propagated by its own ``_backward``, so a replay is a fresh build and
``backward()`` to the last bit. The tape holds every node of the graph, so none can be freed
while it is open.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ._reference import Number, Value, _as_number, _no_backward, _topological_order


def _describe(v: Value) -> str:
    return f"'{v._op or 'leaf'}' node" + (f" {v.name!r}" if v.name else "")


class Tape:
    """Tape(output, inputs, input_shape, params): see michigrad.Graph (inputs and params are
    flat lists of reference Values)."""

    def __init__(self, output: Value, inputs: list[Value], input_shape: tuple[int, ...],
                 params: list[Value]) -> None:
        for what, values in (("inputs", inputs), ("params", params)):
            for v in values:
                if not isinstance(v, Value):
                    raise TypeError(f"Graph {what} must be Values of the same engine as the "
                                    f"output, not {type(v).__name__}")
        size = math.prod(input_shape)
        if size != len(inputs):  # feed reads exactly len(inputs) numbers of this shape
            raise ValueError(f"Tape: input_shape {input_shape} holds {size} numbers, but there "
                             f"are {len(inputs)} inputs")
        topo = _topological_order(output)
        members = {id(v) for v in topo}
        for what, values in (("input", inputs), ("parameter", params)):
            seen: set[int] = set()
            for k, v in enumerate(values):
                if v._children:
                    raise ValueError(f"Graph {what} {k} is not a leaf (it is a {_describe(v)}): "
                                     "only leaves can be fed or trained")
                if what == "input" and id(v) not in members:
                    raise ValueError(f"Graph input {k} is not part of the output's graph")
                if id(v) in seen:
                    raise ValueError(f"Graph {what} {k} appears more than once")
                seen.add(id(v))
        for v in topo:
            if (v._children and v._forward is None) or (not v._children and v._backward is not _no_backward):
                raise TypeError(
                    f"Graph cannot replay the Python-defined op of a {_describe(v)}: its forward "
                    "is unknown to the engine (only built-in ops replay); build this graph in "
                    "Python each step instead")
        self._output = output
        self._nodes = topo  # holds the whole graph
        self._ops: list[tuple[Value, Callable[[], Number], Callable[[], None]]] = [
            (v, v._forward, v._backward) for v in topo if v._children]  # type: ignore[misc]
        self._inputs = list(inputs)
        self._input_shape = input_shape
        self._params = list(params)
        self._update_groups: list[list[Value]] = []
        self._stale = False
        self._closed = False
        self._busy = 0  # > 0 while feed runs Python code (as the compiled tape, close() refuses)

    def close(self) -> None:
        if self._busy:
            raise RuntimeError("a Graph cannot be closed while one of its own methods is running "
                               "(close() was called from Python code that method called)")
        self._closed = True
        self._nodes, self._ops, self._inputs, self._params = [], [], [], []
        self._update_groups = []
        self._output = None  # type: ignore[assignment]

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._ops)

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("this Graph is closed")
        for v, _, backward in self._ops:
            if v._backward is not backward:
                raise RuntimeError(
                    f"a {_describe(v)} of this Graph was given a Python _backward after capture; "
                    "the recorded graph no longer describes it (capture it again)")
        for v in self._nodes:
            if not v._children and v._backward is not _no_backward:
                raise RuntimeError(
                    f"a {_describe(v)} of this Graph was given a Python _backward after capture; "
                    "the recorded graph no longer describes it (capture it again)")

    def _run_forward(self) -> None:
        self._check()
        try:
            for v, forward, _ in self._ops:
                v._data = forward()
        except BaseException:
            self._stale = True
            raise
        self._stale = False

    def _run_backward(self) -> None:
        self._check()
        if self._stale:
            raise RuntimeError("this Graph's last forward() failed: its values are stale, so "
                               "backward() would be wrong; run forward() successfully first")
        for v, _, _ in self._ops:
            v._grad = 0
        self._output.grad = 1
        for _, _, backward in reversed(self._ops):
            backward()

    def forward(self) -> Number:
        self._run_forward()
        return self._output.data

    def backward(self) -> None:
        self._run_backward()

    def train_step(self, lr: float) -> Number:
        lr = _rate(lr)
        self._run_forward()
        for p in self._params:
            p.grad = 0
        self._run_backward()
        for p in self._params:
            p.data -= lr * p.grad
        return self._output.data

    def set_update_groups(self, groups: list[list[Value]]) -> None:
        if self._closed:
            raise RuntimeError("this Graph is closed")
        groups = [list(g) for g in groups]
        for g in groups:
            for v in g:
                if not isinstance(v, Value):
                    raise TypeError(f"parameters must be Values of the graph's engine, not "
                                    f"{type(v).__name__}")
        self._update_groups = groups

    def sgd_step(self, lrs: list[float]) -> Number:
        if self._closed:
            raise RuntimeError("this Graph is closed")
        if len(lrs) != len(self._update_groups):
            raise ValueError(f"sgd_step: {len(lrs)} learning rates for "
                             f"{len(self._update_groups)} parameter groups")
        rates = [_rate(lr) for lr in lrs]
        self._run_forward()
        for g in self._update_groups:
            for p in g:
                p.grad = 0
        self._run_backward()
        for lr, g in zip(rates, self._update_groups):
            for p in g:
                p.data -= lr * p.grad
        return self._output.data

    def feed(self, batch: Any) -> None:
        if self._closed:
            raise RuntimeError("this Graph is closed")
        if not self._inputs:
            raise ValueError("this Graph has no bound inputs: capture it with Graph(output, "
                             "inputs=...) to feed it")
        shape = self._input_shape
        values: list[Number] = []
        self._busy += 1
        try:
            if not isinstance(batch, (list, tuple)) and shape:
                if not hasattr(batch, "tolist"):
                    raise TypeError(f"feed: a batch must be a list, a tuple or an array of "
                                    f"numbers, not {type(batch).__name__}")
                got = getattr(batch, "shape", None)
                if got is not None and tuple(got) != shape:
                    raise ValueError(f"feed: expected a batch of shape {shape}, got {tuple(got)}")
                batch = batch.tolist()
            _read_nested(batch, shape, 0, values)
        finally:
            self._busy -= 1
        for v, x in zip(self._inputs, values):
            v._data = x

    def export(self, params: list[Value]) -> dict[str, Any]:
        raise TypeError("export_tape needs the compiled engine (the reference engine's ops are "
                        "closures, not op codes)")


def _rate(lr: Any) -> float:
    """A learning rate as the compiled tape's C double argument takes it: float(lr), but a
    string is refused (float("0.1") would parse it) with that argument's TypeError."""
    if isinstance(lr, (str, bytes, bytearray)):
        raise TypeError(f"must be real number, not {type(lr).__name__}")
    return float(lr)


def _read_nested(obj: Any, shape: Sequence[int], depth: int, out: list[Number]) -> None:
    if depth == len(shape):
        if isinstance(obj, (list, tuple)):
            raise ValueError(f"feed: the batch is nested deeper than the inputs' shape {tuple(shape)}")
        try:
            out.append(_as_number(obj))
        except TypeError:
            raise TypeError(f"feed: batch items must be real numbers, not {type(obj).__name__}") from None
        return
    if not isinstance(obj, (list, tuple)):
        raise ValueError(f"feed: expected a batch of shape {tuple(shape)}, found "
                         f"{type(obj).__name__} where a sequence of {shape[depth]} belongs")
    if len(obj) != shape[depth]:
        raise ValueError(f"feed: expected a batch of shape {tuple(shape)}, found a sequence of "
                         f"{len(obj)} where one of {shape[depth]} belongs")
    for item in obj:
        _read_nested(item, shape, depth + 1, out)
