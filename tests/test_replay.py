"""michigrad.Graph: a recorded graph replayed equals a fresh build of the same expression, bit for
bit (values, gradients, int/float types), on both engines; feeding, fused training steps, errors,
lifetime and the demo's ``--replay``.

(No torch here: this module also runs under valgrind, see scripts/memcheck.sh.)
"""

from __future__ import annotations

import gc
import importlib
import io
import math
import random
import weakref
from contextlib import redirect_stdout
from typing import Any, Callable, Union

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

import michigrad
from conftest import ENGINE_NAMES, build_program, same_number
from michigrad import Graph, optim
from michigrad._engine import _arena_stats
from michigrad.__main__ import main as demo_main
from michigrad.__main__ import train
from michigrad.losses import hinge_loss
from michigrad.nn import MLP

Number = Union[int, float]
MODULES = {"compiled": "michigrad._engine", "reference": "michigrad._reference"}
ERRORS = (ValueError, OverflowError, ZeroDivisionError)


def engine_module(engine: str) -> Any:
    return importlib.import_module(MODULES[engine])


# --- random programs (the style of test_property_dags.py), with every op incl. linear ---------
# An op is a function of the engine's `linear` returning a function of one or two Values, so
# one program can be built on either engine.

UNARY: dict[str, Callable[[Any], Callable[[Any], Any]]] = {
    "-a": lambda lin: lambda a: -a,
    "exp": lambda lin: lambda a: a.exp(),
    "log": lambda lin: lambda a: a.log(),
    "log(|a|+0.5)": lambda lin: lambda a: (a.abs() + 0.5).log(),
    "tanh": lambda lin: lambda a: a.tanh(),
    "sigmoid": lambda lin: lambda a: a.sigmoid(),
    "relu": lambda lin: lambda a: a.relu(),
    "abs": lambda lin: lambda a: abs(a),
    "a**0": lambda lin: lambda a: a**0,
    "a**2": lambda lin: lambda a: a**2,
    "a**3": lambda lin: lambda a: a**3,
    "a**-1": lambda lin: lambda a: a**-1,
    "a**0.5": lambda lin: lambda a: a**0.5,
    "(|a|+0.5)**-1.5": lambda lin: lambda a: (a.abs() + 0.5) ** -1.5,
    "2**a": lambda lin: lambda a: 2**a,
    "1+a": lambda lin: lambda a: 1 + a,
    "2-a": lambda lin: lambda a: 2 - a,
    "3*a": lambda lin: lambda a: 3 * a,
    "a/4": lambda lin: lambda a: a / 4,
    "2/a": lambda lin: lambda a: 2 / a,
    "lin(a)": lambda lin: lambda a: lin([a], [2]),  # no bias: starts from the int 0
}
BINARY: dict[str, Callable[[Any], Callable[[Any, Any], Any]]] = {
    "a+b": lambda lin: lambda a, b: a + b,
    "a-b": lambda lin: lambda a, b: a - b,
    "a*b": lambda lin: lambda a, b: a * b,
    "a/b": lambda lin: lambda a, b: a / b,
    "a**b": lambda lin: lambda a, b: a**b,
    "(|a|+0.5)**b": lambda lin: lambda a, b: (a.abs() + 0.5) ** b,
    "lin(a,b)": lambda lin: lambda a, b: lin([a, b], [b, 1.5], a),
    "relu(a)*b": lambda lin: lambda a, b: a.relu() * b,
}

leaf_numbers = st.one_of(
    st.floats(min_value=-3.0, max_value=3.0, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-3, max_value=3),
)
Program = tuple[int, list[tuple[str, int, int]]]


@st.composite
def programs(draw: st.DrawFn, max_ops: int = 12) -> Program:
    """The number of leaves, and instructions (op, i, j): apply op to earlier nodes i (and j)."""
    n_leaves = draw(st.integers(min_value=1, max_value=4))
    names = sorted(UNARY) + sorted(BINARY)
    instructions = []
    for k in range(draw(st.integers(min_value=1, max_value=max_ops))):
        n = n_leaves + k
        instructions.append((draw(st.sampled_from(names)), draw(st.integers(0, n - 1)),
                             draw(st.integers(0, n - 1))))
    return n_leaves, instructions


def build(engine: str, program: Program, leaves: list[Any]) -> tuple[list[Any], Any]:
    """Every node (leaves first) and the root: the sum of the nodes nothing else uses."""
    lin = engine_module(engine).linear
    return build_program((leaves, program[1]), lambda leaf: leaf,
                         {name: op(lin) for name, op in UNARY.items()},
                         {name: op(lin) for name, op in BINARY.items()})


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@settings(max_examples=80, deadline=None)
@given(program=programs(), first=st.lists(leaf_numbers, min_size=4, max_size=4),
       rounds=st.lists(st.lists(leaf_numbers, min_size=4, max_size=4), min_size=1, max_size=3))
def test_replay_equals_a_fresh_build_bit_for_bit(engine: str, program: Program, first: list,
                                                 rounds: list) -> None:
    """Feed new leaf values, forward + backward: every node's data and grad (bits and type) equal
    those of the expression built again from those values, relu/abs/pow branches included;
    a forward error is raised where the fresh build raises, and leaves the graph stale."""
    Value = engine_module(engine).Value  # noqa: N806
    n = program[0]
    leaves = [Value(x) for x in first[:n]]
    try:
        nodes, root = build(engine, program, leaves)
    except ERRORS:
        assume(False)
    g = Graph(root, inputs=leaves)
    # the reference engine's replay of the same program: its error is the specification (a
    # fresh build may meet another failing node first: it runs in the program's order)
    RefValue = engine_module("reference").Value  # noqa: N806
    ref_leaves = [RefValue(x) for x in first[:n]]
    ref_nodes, ref_root = build("reference", program, ref_leaves)
    ref = Graph(ref_root, inputs=ref_leaves)
    for values in rounds:
        values = values[:n]
        try:
            fresh_nodes, fresh_root = build(engine, program, [Value(x) for x in values])
            fresh_root.backward()
            fresh_error = None
        except ERRORS as exc:
            fresh_error = exc
        g.feed(values)
        ref.feed(values)
        assert [v.data for v in leaves] == values
        for leaf in leaves:
            leaf.grad = 0
        if fresh_error is not None:
            event("a replay's forward raised")
            with pytest.raises(ERRORS) as replayed:
                g.forward()
            with pytest.raises(ERRORS) as specified:
                ref.forward()
            assert type(replayed.value) is type(specified.value)
            assert str(replayed.value) == str(specified.value)
            assert all(same_number(ours.data, theirs.data) for ours, theirs in zip(nodes, ref_nodes))
            with pytest.raises(RuntimeError, match="stale"):
                g.backward()
            continue
        ref.forward()
        assert same_number(g.forward(), fresh_root.data)
        event("a replay compared")
        g.backward()
        for k, (ours, theirs) in enumerate(zip(nodes + [root], fresh_nodes + [fresh_root])):
            assert same_number(ours.data, theirs.data), (k, ours.data, theirs.data)
            assert same_number(ours.grad, theirs.grad), (k, ours.grad, theirs.grad)
    g.close()


def test_both_engines_replay_to_the_same_bits() -> None:
    program: Program = (3, [("lin(a,b)", 0, 1), ("relu", 3, 3), ("a*b", 4, 2), ("tanh", 5, 5),
                            ("a**b", 0, 6), ("abs", 1, 1), ("a-b", 7, 8)])
    out = {}
    for engine in ENGINE_NAMES:
        Value = engine_module(engine).Value  # noqa: N806
        leaves = [Value(x) for x in (0.5, -1.25, 2)]
        nodes, root = build(engine, program, leaves)
        g = Graph(root, inputs=leaves)
        g.feed([1.5, 0.75, -3])
        g.forward()
        g.backward()
        out[engine] = [(v.data, v.grad) for v in nodes]
    for (a, b), (c, d) in zip(out["compiled"], out["reference"]):
        assert same_number(a, c) and same_number(b, d)


# --- forward / backward semantics -----------------------------------------------------------


def test_backward_zeroes_op_nodes_and_accumulates_into_leaves(Value: Any) -> None:
    a, b = Value(2.0), Value(-3)
    c = a * b
    out = c.relu() + c * c
    g = Graph(out)
    g.backward()
    g.backward()
    # the same as building the expression twice on the same leaves: new op nodes each time
    # (gradient 0), leaf gradients accumulating
    a2, b2 = Value(2.0), Value(-3)
    for _ in range(2):
        c2 = a2 * b2
        out2 = c2.relu() + c2 * c2
        out2.backward()
    assert same_number(a.grad, a2.grad) and same_number(b.grad, b2.grad)
    assert same_number(c.grad, c2.grad) and same_number(out.grad, out2.grad)


def test_user_held_values_show_the_new_data(Value: Any) -> None:
    x = Value(1.0)
    h = x * 3
    y = h.tanh()
    g = Graph(y, inputs=x)
    g.feed(2.0)
    assert same_number(g.forward(), math.tanh(6.0))
    assert h.data == 6.0 and y.data == math.tanh(6.0)


def test_int_inputs_keep_python_types(Value: Any) -> None:
    a, b = Value(1), Value(2)
    out = (a * b + 1).relu()
    g = Graph(out, inputs=[a, b])
    g.feed([3, -4])
    assert g.forward() == 0 and type(out.data) is int  # micrograd's relu: the int 0
    g.feed([3.0, 4])
    assert same_number(g.forward(), 13.0)
    g.feed(np.array([5, 6]))  # an integer array keeps ints, as Value(np.int64(5)) does
    assert same_number(g.forward(), 31)


# --- feeding --------------------------------------------------------------------------------


def test_feed_accepts_nested_lists_and_numpy_arrays_in_c_order(Value: Any) -> None:
    xs = [[Value(0.0) for _ in range(3)] for _ in range(2)]
    out = sum((x * (k + 1) for k, x in enumerate(v for row in xs for v in row)), Value(0.0))
    g = Graph(out, inputs=xs)
    batch = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    g.feed(batch)
    assert [v.data for row in xs for v in row] == batch.ravel().tolist()
    g.feed(batch.T.copy().T)  # Fortran order: read through tolist() in C order
    assert [v.data for row in xs for v in row] == batch.ravel().tolist()
    readonly = batch[::-1].copy()
    readonly.flags.writeable = False
    g.feed(readonly)
    assert [v.data for row in xs for v in row] == readonly.ravel().tolist()
    g.feed(batch[::-1][::-1])  # a negative-stride view
    assert [v.data for row in xs for v in row] == batch.ravel().tolist()
    g.feed(batch.astype(batch.dtype.newbyteorder()))  # the other byte order: converted, not misread
    assert [v.data for row in xs for v in row] == batch.ravel().tolist()
    g.feed(batch.astype(np.float32))
    assert [v.data for row in xs for v in row] == [float(x) for x in batch.astype(np.float32).ravel()]
    g.feed(((1, 2, 3), [4.5, 5, 6]))
    assert g.forward() == 1 + 4 + 9 + 4 * 4.5 + 25 + 36


@pytest.mark.parametrize("batch,error,match", [
    ([[1, 2, 3]], ValueError, r"shape \(2, 3\)"),
    ([[1, 2, 3], [4, 5]], ValueError, r"sequence of 2 where one of 3"),
    ([1, 2, 3, 4, 5, 6], ValueError, r"found a sequence of 6 where one of 2"),
    ([1, 2], ValueError, r"found int where a sequence of 3"),
    ([[1, 2, 3], [4, 5, [6]]], ValueError, "nested deeper"),
    ([[1, 2, 3], [4, 5, "6"]], TypeError, "real numbers, not str"),
    (np.zeros((3, 2)), ValueError, r"expected a batch of shape \(2, 3\), got \(3, 2\)"),
    (np.zeros(6), ValueError, r"got \(6,\)"),
    (np.array([["a"] * 3] * 2), TypeError, "real numbers, not str"),
    ({1: 2}, TypeError, "not dict"),
    (None, TypeError, "not NoneType"),
])
def test_a_bad_batch_raises_and_changes_nothing(Value: Any, batch: Any, error: type, match: str) -> None:
    xs = [[Value(float(3 * i + j)) for j in range(3)] for i in range(2)]
    g = Graph(sum((v for row in xs for v in row), Value(0.0)), inputs=xs)
    with pytest.raises(error, match=match):
        g.feed(batch)
    assert [v.data for row in xs for v in row] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_feed_needs_bound_inputs(Value: Any) -> None:
    g = Graph(Value(1.0) * 2)
    with pytest.raises(ValueError, match="no bound inputs"):
        g.feed([1.0])


@pytest.mark.parametrize("case", ["not a leaf", "not in graph", "twice", "ragged", "not a Value"])
def test_bad_inputs_are_refused_at_capture(Value: Any, case: str) -> None:
    a, b = Value(1.0), Value(2.0)
    h = a * b
    out = h + 1
    inputs: Any = {"not a leaf": [a, h], "not in graph": [a, Value(3.0)], "twice": [a, b, a],
                   "ragged": [[a], [b, a]], "not a Value": [a, 2.0]}[case]
    error = TypeError if case == "not a Value" else ValueError
    match = {"not a leaf": r"input 1 is not a leaf \(it is a '\*' node\)",
             "not in graph": "input 1 is not part of the output's graph",
             "twice": "input 2 appears more than once", "ragged": "rectangular",
             "not a Value": "Values of the output's engine"}[case]
    with pytest.raises(error, match=match):
        Graph(out, inputs=inputs)


def test_values_of_the_other_engine_are_refused() -> None:
    compiled, reference = (engine_module(e).Value for e in ENGINE_NAMES)
    with pytest.raises(TypeError, match="Values of the output's engine"):
        Graph(compiled(1.0) * 2, inputs=[reference(1.0)])
    with pytest.raises(TypeError, match="Values of the same engine"):
        Graph(reference(1.0) * 2, params=[compiled(1.0)])
    with pytest.raises(TypeError, match="needs a michigrad Value"):
        Graph(3.0)


# --- errors and safety ----------------------------------------------------------------------


@pytest.mark.parametrize("bad,error", [(-1.0, ValueError), (0, ValueError),
                                       (2000.0, OverflowError)])
def test_a_forward_error_is_the_operators_and_leaves_the_graph_stale(Value: Any, bad: float,
                                                                     error: type) -> None:
    def expression(x: Any, w: Any) -> Any:
        return x.log() * w + (x * w).exp()

    x, w = Value(2.0), Value(0.5)
    g = Graph(expression(x, w), inputs=[x], params=[w])
    with pytest.raises(error) as fresh:
        expression(Value(bad), w)
    g.feed([bad])
    grads = (x.grad, w.grad)
    with pytest.raises(error) as replayed:
        g.forward()
    assert str(replayed.value) == str(fresh.value)
    with pytest.raises(RuntimeError, match="stale"):
        g.backward()
    with pytest.raises(error):  # a step's forward fails the same way; no update
        g.train_step(0.1)
    assert (x.grad, w.grad) == grads and x.data == bad and w.data == 0.5
    g.feed([3.0])
    assert same_number(g.forward(), expression(Value(3.0), w).data)
    g.backward()
    assert w.grad != 0


def test_a_replayed_power_overflow_reads_the_same_in_both_engines() -> None:
    messages = []
    for engine in ENGINE_NAMES:
        Value = engine_module(engine).Value  # noqa: N806
        x, y = Value(2.0), Value(3)
        g = Graph(x**3 + 10.0**y, inputs=[x, y])
        for values in ([1e200, 3], [2.0, 400]):
            g.feed(values)
            with pytest.raises(OverflowError) as replayed:
                g.forward()
            messages.append(str(replayed.value))
    assert messages[:2] == ["1e+200 ** 3 is too large for a float", "10.0 ** 400 is too large for a float"]
    assert messages[2:] == messages[:2]


def _custom_double(Value: Any, a: Any) -> Any:
    out = Value(2 * a.data, (a,), "double")

    def _backward() -> None:
        a.grad += 2 * out.grad

    out._backward = _backward
    return out


def test_python_defined_ops_are_refused_at_capture(Value: Any) -> None:
    a = Value(1.5)
    out = _custom_double(Value, a * 3) + 1
    with pytest.raises(TypeError, match="Python-defined op of a 'double' node"):
        Graph(out)
    leaf = Value(2.0, label="w")
    leaf._backward = lambda: None
    with pytest.raises(TypeError, match="'leaf' node 'w'"):
        Graph(leaf * 2)


def test_a_built_in_op_with_a_replaced_backward_is_refused_at_capture(Value: Any,
                                                                      MLArray: Any) -> None:
    """Its forward no longer describes it (the reference engine's tape captured it, and
    replayed the op's forward with the replaced backward; found by test_property_lifetime)."""
    x = Value(1.5)
    y = x * 2
    y._backward = lambda: None
    with pytest.raises(TypeError, match=r"Python-defined op of a '\*' node"):
        Graph(y.tanh() + 1)
    total = MLArray([1.0, 2.0]).sum()
    Graph(total).close()
    total.values()[0]._backward = lambda: None
    with pytest.raises(TypeError, match="Python-defined op of a 'sum' node"):
        Graph(total)
    assert y.data == 3.0 and (y + 1).data == 4.0  # the node itself still computes


def test_a_backward_set_after_capture_is_caught_at_replay(Value: Any) -> None:
    a, b = Value(1.5), Value(-2.0)
    h = a * b
    out = h.tanh() + a
    g = Graph(out, params=[a])
    Value(3.0)._backward = lambda: None  # some other node: no effect on this graph
    g.forward()
    g.backward()
    h._backward = lambda: None
    for call in (g.forward, g.backward, lambda: g.train_step(0.1)):
        with pytest.raises(RuntimeError, match=r"'\*' node of this Graph was given a Python _backward"):
            call()
    b2 = Value(1.0)
    g2 = Graph(b2 * 2 + a)
    b2._backward = lambda: None
    with pytest.raises(RuntimeError, match="'leaf' node of this Graph"):
        g2.backward()


def test_a_closed_graph_raises(Value: Any) -> None:
    a = Value(1.0)
    with Graph(a * 2, inputs=[a], params=[a]) as g:
        assert len(g) == 1 and not g.closed
    assert g.closed and repr(g) == "Graph(closed)"
    calls = [g.forward, g.backward, lambda: g.feed([1.0]), lambda: g.train_step(0.1),
             lambda: g.step(optim.SGD([Value(1.0)] if Value is michigrad.Value else
                                      [michigrad.Value(1.0)], lr=0.1)),
             lambda: len(g), lambda: g.output, g.export_tape]
    for call in calls:
        with pytest.raises(RuntimeError, match="closed"):
            call()
    g.close()  # idempotent


# --- lifetime -------------------------------------------------------------------------------


def test_the_graph_keeps_its_nodes_alive_until_closed() -> None:
    from michigrad._engine import Value

    gc.collect()
    before = _arena_stats()["live"]
    xs = [Value(float(k)) for k in range(5)]
    loss = sum((x * x).relu() for x in xs)
    n_nodes = _arena_stats()["live"] - before
    g = Graph(loss, inputs=xs)
    del xs, loss  # Values hold no reference cycles: freed here, if nothing else held them
    assert _arena_stats()["live"] - before == n_nodes  # leaves kept by the graph alone
    g.feed([1.0, 2.0, 3.0, 4.0, 5.0])
    for _ in range(1000):  # replays allocate nothing
        g.forward()
        g.backward()
    assert g.forward() == 55.0
    assert _arena_stats()["live"] - before == n_nodes
    g.close()
    assert _arena_stats()["live"] == before
    xs = [Value(1.0)]
    g = Graph(xs[0] * 2, inputs=xs)
    del xs
    del g  # dropping the graph releases too
    assert _arena_stats()["live"] == before


def test_reference_graph_keeps_its_nodes_alive_until_closed() -> None:
    from michigrad._reference import Value

    x = Value(2.0)
    ref = weakref.ref(x)
    g = Graph((x * 3).exp(), inputs=[x])
    del x
    gc.collect()
    assert ref() is not None
    g.close()
    gc.collect()
    assert ref() is None


# --- training -------------------------------------------------------------------------------


def tiny_model(Value: Any, lin: Any, seed: int) -> list[list[Any]]:
    rng = random.Random(seed)
    return [[Value(rng.uniform(-1, 1)) for _ in range(2)] + [Value(0)] for _ in range(3)]


def tiny_loss(lin: Any, neurons: list[list[Any]], xs: list[list[Any]], y: list[int]) -> Any:
    """micrograd's demo loss on a 2-2-1 network (written out: losses.py uses the active engine)."""
    scores = []
    for x in xs:
        hidden = [lin(n[:2], x, n[2]).relu() for n in neurons[:2]]
        scores.append(lin(neurons[2][:2], hidden, neurons[2][2]))
    losses = [(1 + -yi * s).relu() for yi, s in zip(y, scores)]
    return sum(losses) * (1.0 / len(losses)) + 1e-4 * sum(p * p for n in neurons for p in n)


def test_train_step_equals_dynamic_sgd_training(engine: str) -> None:
    module = engine_module(engine)
    Value, lin = module.Value, module.linear  # noqa: N806
    X = [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0], [0.0, -0.5]]
    y = [1, -1, 1, -1]
    dynamic, replayed = tiny_model(Value, lin, 7), tiny_model(Value, lin, 7)
    params_d = [p for n in dynamic for p in n]
    params_r = [p for n in replayed for p in n]
    xs = [[Value(0.0), Value(0.0)] for _ in X]
    g = Graph(tiny_loss(lin, replayed, xs, y), inputs=xs, params=params_r)
    for k in range(8):
        lr = 1.0 - 0.9 * k / 8
        loss = tiny_loss(lin, dynamic, [list(map(Value, row)) for row in X], y)
        for p in params_d:
            p.grad = 0
        loss.backward()
        for p in params_d:
            p.data -= lr * p.grad
        g.feed(X)
        assert same_number(g.train_step(lr), loss.data)
        for a, b in zip(params_d, params_r):
            assert same_number(a.data, b.data) and same_number(a.grad, b.grad)


def test_train_step_needs_params(Value: Any) -> None:
    with pytest.raises(ValueError, match="train_step needs parameters"):
        Graph(Value(1.0) * 2).train_step(0.1)


def test_train_step_takes_a_number_as_the_learning_rate_in_both_engines(Value: Any) -> None:
    # the compiled tape's lr is a C double; the reference engine's float(lr) parsed "0.1"
    w, x = Value(0.5), Value(2.0)
    g = Graph((w * x - 1) ** 2, params=[w])
    for bad in ("0.1", b"0.1", None):
        with pytest.raises(TypeError):
            g.train_step(bad)
    assert w.data == 0.5 and w.grad == 0
    assert g.train_step(np.float64(0.125)) == 0.0 and w.data == 0.5


OPTIMIZERS = [  # C fast paths: plain SGD with a float lr, Adam/AdamW with float settings, eps > 0
    (optim.SGD, dict(lr=0.5)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (optim.SGD, dict(lr=1)),  # an int learning rate: optim's Python update
    (optim.SGD, dict(lr=0.1, weight_decay=0.01, maximize=True)),
    (optim.Adam, dict(lr=0.05)),
    (optim.Adam, dict(lr=0.02, betas=(0.3, 0.9), weight_decay=0.01, maximize=True)),
    (optim.AdamW, dict(lr=0.05, amsgrad=True)),
    (optim.AdamW, dict(lr=0.05, weight_decay=0.1, betas=(0.5, 0.5))),
]


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS, ids=[f"{c.__name__}-{k}" for c, k in OPTIMIZERS])
def test_step_with_an_optimizer_equals_dynamic_training(cls: Any, kwargs: dict) -> None:
    """An nn.MLP trained through a Graph with feed + step(optimizer): the same losses and
    parameters, bit for bit, as rebuilding the graph every step."""
    rng = np.random.RandomState(3)
    batches = [rng.randn(6, 2) for _ in range(5)]
    y = [1, -1, 1, 1, -1, -1]
    random.seed(5)
    dynamic = MLP(2, [4, 4, 1])
    random.seed(5)
    replayed = MLP(2, [4, 4, 1])
    opt_d, opt_r = cls(dynamic.parameters(), **kwargs), cls(replayed.parameters(), **kwargs)
    xs = [[michigrad.Value(0.0), michigrad.Value(0.0)] for _ in range(6)]

    def loss_of(model: MLP, inputs: Any) -> Any:
        return hinge_loss([model(x) for x in inputs], y) + 1e-4 * sum(p * p for p in model.parameters())

    g = Graph(loss_of(replayed, xs), inputs=xs)
    for k, batch in enumerate(batches):
        opt_d.lr = opt_r.lr = opt_d.lr * 0.9
        loss = loss_of(dynamic, [list(map(michigrad.Value, row)) for row in batch.tolist()])
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        g.feed(batch)
        assert same_number(g.step(opt_r), loss.data)
        for a, b in zip(dynamic.parameters(), replayed.parameters()):
            assert same_number(a.data, b.data) and same_number(a.grad, b.grad)
    assert opt_d.state_dict() == opt_r.state_dict()


@pytest.mark.parametrize("cls,kwargs", [(optim.SGD, dict(lr=0.5)), (optim.Adam, dict(lr=0.1)),
                                        (optim.AdamW, dict(lr=0.1, amsgrad=True))])
def test_fast_paths_run_in_c_and_keep_the_optimizer_state(cls: Any, kwargs: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No Python step or zero_grad runs on the fast paths (the reference engine's tape has SGD's
    but not Adam's), and Adam's state is what optim.Adam writes."""
    a, b = michigrad.Value(0.5), michigrad.Value(-1.0)
    opt = cls([a, b], **kwargs)
    g = Graph((a * b - 1) ** 2 + a.relu())
    calls = []
    for name in ("step", "zero_grad"):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, f=original, n=name: (calls.append(n), f(self)))
    for _ in range(3):
        g.step(opt)
    in_c = michigrad.ENGINE == "compiled" or cls is optim.SGD
    assert calls == ([] if in_c else ["zero_grad", "step"] * 3)
    if cls is not optim.SGD:
        assert opt.state[0]["step"] == 3 and type(opt.state[1]["exp_avg"]) is float
        assert ("max_exp_avg_sq" in opt.state[0]) == kwargs.get("amsgrad", False)


def test_adam_state_that_adam_would_not_write_goes_through_python() -> None:
    """A state the C path cannot reproduce exactly (here an int average) takes the optimiser's
    own step: the same numbers as the dynamic run, nothing changed before the switch."""
    runs = []
    for replay in (False, True):
        a, b = michigrad.Value(0.5), michigrad.Value(-1.0)
        opt = optim.Adam([a, b], lr=0.1)
        g = Graph((a * b - 1) ** 2) if replay else None
        for k in range(4):
            if k == 2:
                opt.state[0]["exp_avg"] = 0  # an int: Python's int arithmetic from here
            if g is not None:
                g.step(opt)
            else:
                loss = (a * b - 1) ** 2
                opt.zero_grad()
                loss.backward()
                opt.step()
        runs.append((a.data, b.data, a.grad, b.grad, opt.state_dict()))
    assert runs[0] == runs[1]


def test_sgd_fast_path_follows_parameter_groups_and_their_changes() -> None:
    random.seed(1)
    model_d, model_r = MLP(2, [3, 1]), None
    random.seed(1)
    model_r = MLP(2, [3, 1])

    def groups(model: MLP) -> list[dict]:
        ps = model.parameters()
        return [{"params": ps[:5], "lr": 0.3}, {"params": ps[5:], "lr": 0.05}]

    opt_d, opt_r = optim.SGD(groups(model_d), lr=0.1), optim.SGD(groups(model_r), lr=0.1)
    x = [michigrad.Value(0.5), michigrad.Value(-1.5)]
    g = Graph((model_r(x) - 1) ** 2)
    for k in range(6):
        if k == 3:  # a group changes between steps: the fast path must notice
            for opt in (opt_d, opt_r):
                opt.param_groups[1]["params"].pop()
                opt.param_groups[0]["lr"] = 0.2
        loss = (model_d([michigrad.Value(0.5), michigrad.Value(-1.5)]) - 1) ** 2
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        assert same_number(g.step(opt_r), loss.data)
        for a, b in zip(model_d.parameters(), model_r.parameters()):
            assert same_number(a.data, b.data) and same_number(a.grad, b.grad)


# --- the demo -------------------------------------------------------------------------------


def test_demo_replay_prints_the_same_losses() -> None:
    outputs = []
    for extra in ([], ["--replay"]):
        out = io.StringIO()
        with redirect_stdout(out):
            assert demo_main(["demo", "--steps", "6", "--out", "", "--verbose", *extra]) == 0
        outputs.append([line for line in out.getvalue().splitlines() if line.startswith("step")])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 6
    _, _, losses, accuracy = train(steps=4, replay=True)
    _, _, losses_d, accuracy_d = train(steps=4)
    assert losses == losses_d and accuracy == accuracy_d
    assert losses[0] == 0.8958441028683222  # micrograd's step-0 loss


# --- export ---------------------------------------------------------------------------------


def test_export_tape_describes_the_graph() -> None:
    from michigrad._engine import Value, linear

    w, b, x = Value(0.5), Value(0), Value(2.0)
    out = (linear([w], [x], b).relu() * 3) ** 2
    g = Graph(out, inputs=[x], params=[w, b])
    t = g.export_tape()
    codes = t["op_codes"]
    assert [t["ops"][k] for k in range(len(t["ops"]))] == [codes["linear"], codes["ReLU"],
                                                           codes["*"], codes["**c"]]
    assert t["nleaves"] == 4 and len(t["data"]) == 8 and t["output"] == 7
    assert t["data"][t["output"]] == out.data and t["aux"][3] == 2.0
    assert [t["data"][i] for i in t["params"]] == [0.5, 0] and t["is_int"][t["params"][1]]
    assert t["data"][t["inputs"][0]] == 2.0
    lin_kids = t["kids"][t["kid_start"][0]:t["kid_start"][1]]
    assert [t["data"][i] for i in lin_kids] == [0, 0.5, 2.0]  # bias, weights, inputs
    with pytest.raises(TypeError, match="compiled engine"):
        from michigrad._reference import Value as RValue

        Graph(RValue(1.0) * 2).export_tape()


# --- Python code run by a replay method cannot pull the graph from under it ---------------------


def test_closing_a_graph_from_the_batch_it_is_reading_is_refused(Value: type) -> None:
    x, y = Value(1.0), Value(2.0)
    g = Graph(x * y, inputs=[x, y])

    class ClosesTheGraph:
        def __float__(self) -> float:
            g.close()
            return 3.0

    class ArrayThatClosesTheGraph:
        shape = (2,)

        def tolist(self) -> list[float]:
            g.close()
            return [3.0, 4.0]

    for batch in ([ClosesTheGraph(), 1.0], ArrayThatClosesTheGraph()):
        with pytest.raises(RuntimeError, match="cannot be closed while"):
            g.feed(batch)
        assert not g.closed and (x.data, y.data) == (1.0, 2.0)
    g.feed([5.0, 6.0])
    assert g.forward() == 30.0


def test_a_gc_callback_cannot_close_a_graph_during_its_adam_step() -> None:
    from michigrad._engine import Value

    params = [Value(0.5) for _ in range(3000)]  # enough new state dicts to run the GC
    g = Graph(sum((p * p for p in params), Value(0.0)), params=params)
    opt = optim.Adam(params, lr=0.01)
    refused: list[bool] = []

    def close_on_collection(phase: str, info: dict) -> None:
        # opt.state fills inside the tape's Adam update, while it holds its buffers
        if phase == "start" and opt.state and not refused:
            try:
                g.close()
            except RuntimeError:
                refused.append(True)

    gc.callbacks.append(close_on_collection)
    try:
        assert g.step(opt) == 750.0  # its 3000 new state dicts trigger a collection
    finally:
        gc.callbacks.remove(close_on_collection)
    assert refused == [True] and not g.closed
    assert all(p.data != 0.5 for p in params)


def test_a_gc_callback_cannot_regroup_a_graph_during_its_adam_step() -> None:
    """Another optimiser's step would give the tape new parameter groups while the Adam update
    still walks the old ones (it read past the new, smaller buffer): refused."""
    from michigrad._engine import Value

    params = [Value(0.5) for _ in range(3000)]
    g = Graph(sum((p * p for p in params), Value(0.0)), params=params)
    opt, other = optim.Adam(params, lr=0.01), optim.SGD(params[:1], lr=0.1)
    refused: list[str] = []

    def regroup_on_collection(phase: str, info: dict) -> None:
        if phase == "start" and opt.state and not refused:
            try:
                g.step(other)
            except RuntimeError as exc:
                refused.append(str(exc))

    gc.callbacks.append(regroup_on_collection)
    try:
        assert g.step(opt) == 750.0
    finally:
        gc.callbacks.remove(regroup_on_collection)
    assert len(refused) == 1 and "parameter groups cannot change" in refused[0]
    assert all(p.data != 0.5 for p in params)  # the Adam step ran through
    assert g.step(other) != 0  # afterwards the SGD's groups are taken as usual


def test_a_tape_shape_must_hold_exactly_its_inputs(engine: str) -> None:
    module = importlib.import_module({"compiled": "michigrad._engine",
                                      "reference": "michigrad._reference_replay"}[engine])
    value = engine_module(engine).Value
    x, z = value(1.0), value(2.0)
    for shape in ((1,), (), (3,)):
        with pytest.raises(ValueError, match="holds .* numbers, but there are 2 inputs"):
            module.Tape(x * z, [x, z], shape, [])
