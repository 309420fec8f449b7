"""Replay: record a graph once, re-run it at C speed with new numbers (``michigrad.Graph``).

Most training loops build the same graph every step with new numbers. ``Graph(loss)`` records the
graph behind ``loss`` once; afterwards

* ``g.forward()`` recomputes every node from the leaves' current data (parameters changed by an
  optimiser, inputs set by ``g.feed(batch)`` or by hand) and returns the output's data;
* ``g.backward()`` zeroes the graph's non-leaf gradients, sets the output's to 1 and
  back-propagates; leaf gradients accumulate, as with ``loss.backward()`` (an optimiser's
  ``zero_grad()`` zeroes the parameters');
* ``g.step(optimizer)`` is forward, ``optimizer.zero_grad()``, backward, ``optimizer.step()`` in
  one call (all in C for a plain ``optim.SGD`` and for ``optim.Adam``/``AdamW``), and
  ``g.train_step(lr)`` the same with ``p.data -= lr * p.grad`` over ``Graph(..., params=...)``;
  both return this step's loss.

Every value and gradient is the same bits, and the same int/float type, as building the expression
again in Python and calling ``backward()``: the replay goes through the engine's own op table,
children before parents, and back-propagates in ``backward()``'s own order. ``relu``, ``abs`` and
``**`` re-evaluate their branch each time, so data-dependent *values* are fine; what must not
depend on the data is the graph's *structure* (which ops, on which operands): a Python ``if`` that
picks a different expression is not seen by a replay.

Training a ``michigrad.nn`` model::

    model = MLP(2, [16, 16, 1])
    xs = [[Value(0.0), Value(0.0)] for _ in range(100)]     # input leaves, bound below
    loss = hinge_loss([model(x) for x in xs], y) + 1e-4 * sum(p * p for p in model.parameters())
    g = Graph(loss, inputs=xs)
    opt = SGD(model.parameters(), lr=0.1)
    for k in range(100):
        g.feed(X)                  # a (100, 2) NumPy array or nested list
        print(g.step(opt))         # forward + zero_grad + backward + update

Rules, and what is refused (with the exception raised):

* Python-defined ops (``Value(x, children, 'op')`` with a ``_backward`` closure, or any node whose
  ``_backward`` was replaced) cannot be replayed: their forward is unknown. Capture raises
  ``TypeError`` naming the op; a ``_backward`` set on a captured node *after* capture makes the
  next replay raise ``RuntimeError`` (never wrong gradients).
* A forward error (``log`` of a non-positive fed input, ``exp`` overflow, ...) raises the error
  the Python operator raises. The nodes before the failing one then hold new values and the rest
  old ones: the graph is *stale*, ``backward()`` and the steps raise ``RuntimeError`` until a
  ``forward()`` succeeds. Leaves and gradients are untouched.
* The graph holds every node it recorded: leaves stay alive while it is open even if nothing
  else refers to them. ``g.close()`` (or ``with Graph(...) as g:``, or dropping ``g``) releases
  them; a closed graph raises ``RuntimeError``.
* Replays run with the GIL held and call no Python code in between (except the optimiser's own
  ``zero_grad``/``step`` on the general path), so another thread cannot change the graph while one
  runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Union

from . import _reference, _reference_replay

try:
    from . import _engine
except ImportError:  # no compiled engine: only reference graphs
    _engine = None  # type: ignore[assignment]

__all__ = ["Graph"]

Number = Union[int, float]


def _array_elements(x: Any) -> tuple[list[Any], tuple[int, ...]] | None:
    """The element Values (flat, C order) and shape of a ``michigrad.MLArray``, or None for
    anything else. Arrays are recognised without importing michigrad.array (it needs numpy):
    an MLArray exists only once that module has been imported."""
    array = sys.modules.get("michigrad.array")
    if array is None or not isinstance(x, array.MLArrayBase):
        return None
    return x.values(), tuple(x.shape)


def _one_value(x: Any, needs: str) -> Any:
    """x, or the element of x when x is a one-element MLArray (a loss from ``.sum()`` or
    ``.mean()``); a larger MLArray raises ValueError(f"{needs} ... an MLArray of shape ...")."""
    elements = _array_elements(x)
    if elements is None:
        return x
    values, shape = elements
    if len(values) != 1:
        raise ValueError(f"{needs} an MLArray of shape {shape} (reduce it first, e.g. with .sum())")
    return values[0]


def _flatten(values: Any, cls: type, what: str) -> tuple[list[Any], tuple[int, ...]]:
    """A Value, an MLArray, or (nested, rectangular) lists/tuples of Values: flat in C order,
    and the shape."""
    if isinstance(values, cls):
        return [values], ()
    elements = _array_elements(values)
    if elements is not None:
        return elements
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"Graph {what} must be Values of the output's engine (or nested lists "
                        f"of them), not {type(values).__name__}")
    parts = [_flatten(v, cls, what) for v in values]
    shapes = {shape for _, shape in parts}
    if len(shapes) > 1:
        raise ValueError(f"Graph {what} must be rectangular (nested lists of equal lengths)")
    inner = shapes.pop() if shapes else ()
    return [v for flat, _ in parts for v in flat], (len(values),) + inner


def _flatten_params(params: Iterable[Any]) -> list[Any]:
    """Parameters as a flat list of Values: MLArrays among them give their elements."""
    flat: list[Any] = []
    for p in params:
        elements = _array_elements(p)
        flat.extend([p] if elements is None else elements[0])
    return flat


class Graph:
    """Graph(output, inputs=None, params=None): the graph behind ``output``, recorded for replay.

    ``output``: a Value, or a one-element ``MLArray`` (a loss from ``.sum()``/``.mean()``).
    ``inputs``: leaves of the graph that ``feed(batch)`` sets -- a Value, (nested) lists of
    Values or an ``MLArray``; a batch must have the same shape. ``params``: the leaves
    ``train_step(lr)`` updates (e.g. ``model.parameters()``; MLArrays give their elements). Both
    engines are supported; the output's type picks the engine.
    """

    def __init__(self, output: Any, inputs: Any = None, params: Iterable[Any] | None = None) -> None:
        cls: type
        tape_cls: Any
        output = _one_value(output, "Graph needs a one-element output, not")
        if _engine is not None and isinstance(output, _engine.Value):
            cls, tape_cls = _engine.Value, _engine.Tape
        elif isinstance(output, _reference.Value):
            cls, tape_cls = _reference.Value, _reference_replay.Tape
        else:
            raise TypeError(f"Graph needs a michigrad Value as output, not {type(output).__name__}")
        flat_inputs, shape = ([], (0,)) if inputs is None else _flatten(inputs, cls, "inputs")
        flat_params = [] if params is None else _flatten_params(params)
        self._tape: Any = tape_cls(output, flat_inputs, shape, flat_params)
        self._output = output
        self._inputs, self._params = flat_inputs, flat_params
        self._optimizer: Any = None  # the optimiser whose groups the tape's sgd_step updates
        self._groups: list[list[Any]] = []

    # --- state ------------------------------------------------------------------------------

    @property
    def output(self) -> Any:
        """The recorded output Value."""
        self._check_open()
        return self._output

    @property
    def inputs(self) -> list[Any]:
        """The bound input leaves, flat in C order (what ``feed`` sets)."""
        return list(self._inputs)

    @property
    def params(self) -> list[Any]:
        """The parameters ``train_step`` updates."""
        return list(self._params)

    @property
    def closed(self) -> bool:
        return bool(self._tape.closed)

    def _check_open(self) -> None:
        if self._tape.closed:
            raise RuntimeError("this Graph is closed")

    def close(self) -> None:
        """Release the recorded nodes (idempotent); any later use raises RuntimeError."""
        self._tape.close()
        self._output = None
        self._inputs, self._params, self._groups, self._optimizer = [], [], [], None

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """The number of op nodes a replay recomputes."""
        self._check_open()
        return len(self._tape)

    def __repr__(self) -> str:
        if self._tape.closed:
            return "Graph(closed)"
        return f"Graph({len(self._tape)} ops, {len(self._inputs)} inputs, {len(self._params)} params)"

    # --- replay -----------------------------------------------------------------------------

    def forward(self) -> Number:
        """Recompute every node from the leaves' current data; returns the output's data."""
        return self._tape.forward()  # type: ignore[no-any-return]

    def backward(self) -> None:
        """Zero the non-leaf gradients, set the output's to 1 and back-propagate (leaf gradients
        accumulate). RuntimeError if the last forward failed."""
        self._tape.backward()

    def feed(self, batch: Any) -> None:
        """Set the bound inputs from ``batch`` (a NumPy array or nested lists of numbers, of the
        inputs' shape, read in C order). Nothing changes unless the whole batch is valid: a
        wrong shape raises ValueError, a non-number TypeError. Call ``forward()`` (or a step)
        afterwards."""
        self._tape.feed(batch)

    def train_step(self, lr: float) -> Number:
        """forward, zero the params' gradients, backward, ``p.data -= lr * p.grad`` (lr as a
        float), all in C. Returns this step's loss (the output's data before the update)."""
        self._check_open()
        if not self._params:
            raise ValueError("train_step needs parameters: capture with Graph(output, "
                             "params=model.parameters()), or use step(optimizer)")
        return self._tape.train_step(lr)  # type: ignore[no-any-return]

    def step(self, optimizer: Any) -> Number:
        """forward, ``optimizer.zero_grad()``, backward, ``optimizer.step()``; returns this step's
        loss. Exact for any ``michigrad.optim`` optimiser (and any object with those two
        methods). In C, with the same bits: a plain ``optim.SGD`` (no momentum, weight decay or
        maximize; float learning rates), and ``optim.Adam``/``AdamW`` with float hyperparameters
        and eps > 0 (``optimizer.state`` is kept up to date as ``Adam.step`` keeps it)."""
        self._check_open()
        lrs = self._plain_sgd_rates(optimizer)
        if lrs is not None:
            return self._tape.sgd_step(lrs)  # type: ignore[no-any-return]
        configs = self._adam_configs(optimizer)
        if configs is not None:
            loss = self._tape.adam_step(configs, optimizer.state)
            if loss is not None:
                return loss  # type: ignore[no-any-return]
        loss = self._tape.forward()
        optimizer.zero_grad()
        self._tape.backward()
        optimizer.step()
        return loss  # type: ignore[no-any-return]

    def _plain_sgd_rates(self, optimizer: Any) -> list[float] | None:
        """The groups' learning rates if `optimizer` is a plain SGD whose update the tape does
        in C (registering its parameters with the tape when they changed), else None."""
        from .optim import SGD

        if type(optimizer) is not SGD:
            return None
        lrs = []
        for group in optimizer.param_groups:
            lr = group["lr"]
            if (group["momentum"] != 0 or group["weight_decay"] != 0 or group["maximize"]
                    or not isinstance(lr, float)):
                return None
            lrs.append(lr)
        self._register(optimizer)
        return lrs

    def _adam_configs(self, optimizer: Any) -> list[tuple[Any, ...]] | None:
        """Each group's hyperparameters if `optimizer` is an Adam/AdamW the tape updates in C
        (float hyperparameters, eps > 0: then every operation of optim.Adam.step is one IEEE
        operation on doubles), else None."""
        from .optim import Adam, AdamW

        if type(optimizer) not in (Adam, AdamW) or not hasattr(self._tape, "adam_step"):
            return None  # (the reference engine's tape has no Adam of its own)
        configs = []
        for group in optimizer.param_groups:
            lr, betas, eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            if not (type(lr) is float and len(betas) == 2 and type(betas[0]) is float
                    and type(betas[1]) is float and type(eps) is float and eps > 0
                    and type(wd) is float and type(group["amsgrad"]) is bool
                    and type(group["maximize"]) is bool):
                return None
            configs.append((lr, betas[0], betas[1], eps, wd, group["amsgrad"], group["maximize"],
                            bool(optimizer._decoupled)))
        if type(optimizer.state) is not dict:
            return None
        self._register(optimizer)
        return configs

    def _register(self, optimizer: Any) -> None:
        """Give the tape the optimiser's parameter groups, unless it has them already."""
        groups = optimizer.param_groups
        if (optimizer is not self._optimizer or len(groups) != len(self._groups)
                or any(mine != g["params"] for mine, g in zip(self._groups, groups))):
            self._tape.set_update_groups([g["params"] for g in groups])
            self._optimizer, self._groups = optimizer, [list(g["params"]) for g in groups]

    # --- export -----------------------------------------------------------------------------

    def export_tape(self) -> dict[str, Any]:
        """The recorded graph as plain lists (compiled engine only), for programs outside Python
        such as the benchmark's C floor. Nodes are numbered graph-locally: the ``nleaves``
        leaves first, then the op nodes in forward order. Keys: ``data``/``is_int`` (every
        node's current value), ``ops``/``aux`` (each op node's op code and constant, e.g. the
        exponent of ``**c``), ``kids[kid_start[k]:kid_start[k+1]]`` (op node k's children),
        ``output``, ``params`` and ``inputs`` (local indices), ``op_codes`` (label -> code)."""
        self._check_open()
        return self._tape.export(self._params)  # type: ignore[no-any-return]
