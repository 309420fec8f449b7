"""michigrad behaves as micrograd 0.1.0 (``micrograd.engine.Value``) and as the course uses it.

micrograd itself is the oracle where it has the op: the same graphs (labels, structure, data bits),
the same numbers and types (ints stay ints), gradients accumulated the same way, custom ops
written the course's way, and manual backpropagation through ``_backward`` and ``_prev``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import reachable
from micrograd.engine import Value as MGValue

GRAD_REL_TOL = 1e-12


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def readme_expression(V: type) -> dict[str, Any]:  # noqa: N803 - a Value class
    """micrograd's README example, verbatim, with the Value class V."""
    a = V(-4.0)
    b = V(2.0)
    c = a + b
    d = a * b + b**3
    c += c + 1
    c += 1 + c + (-a)
    d += d * 2 + (b + a).relu()
    d += 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    g += 10.0 / f
    g.backward()
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f, "g": g}


# --- micrograd's README ---------------------------------------------------------------------


def test_readme_example_prints_micrograd_numbers(Value: type) -> None:
    r = readme_expression(Value)
    assert f"{r['g'].data:.4f}" == "24.7041"  # the outcome of the forward pass
    assert f"{r['a'].grad:.4f}" == "138.8338"  # dg/da
    assert f"{r['b'].grad:.4f}" == "645.5773"  # dg/db


def test_readme_example_matches_micrograd_forward_bits_and_gradients(Value: type) -> None:
    ours = readme_expression(Value)
    theirs = readme_expression(MGValue)
    for name in "abcdefg":
        assert type(ours[name].data) is type(theirs[name].data), name
        assert _bits(ours[name].data) == _bits(theirs[name].data), name
        assert math.isclose(ours[name].grad, theirs[name].grad, rel_tol=GRAD_REL_TOL), name


def _graph(root: Any) -> list[tuple[str, int]]:
    """Every node reachable through ``_prev``: (op label, data bits), sorted."""
    return sorted((node._op, _bits(node.data)) for node in reachable(root))


def test_readme_graph_has_micrograds_nodes_labels_and_data(Value: type) -> None:
    assert _graph(readme_expression(Value)["g"]) == _graph(readme_expression(MGValue)["g"])


# --- numpy scalars ----------------------------------------------------------------------------

NUMPY_CASES: list[tuple[str, Callable[[Any], Any], float, float]] = [
    # (expression, f(v) at v = 3.0, expected data, expected dv)
    ("np.float64(2) * v", lambda v: np.float64(2) * v, 6.0, 2.0),
    ("v * np.float64(2)", lambda v: v * np.float64(2), 6.0, 2.0),
    ("np.int64(-1) * v", lambda v: np.int64(-1) * v, -3.0, -1.0),
    ("v + np.float32(0.5)", lambda v: v + np.float32(0.5), 3.5, 1.0),
    ("np.float64(2) + v", lambda v: np.float64(2) + v, 5.0, 1.0),
    ("np.float64(2) - v", lambda v: np.float64(2) - v, -1.0, -1.0),
    ("v - np.int32(1)", lambda v: v - np.int32(1), 2.0, 1.0),
    ("np.float64(6) / v", lambda v: np.float64(6) / v, 2.0, -6.0 / 9.0),
    ("v / np.float64(2)", lambda v: v / np.float64(2), 1.5, 0.5),
    ("v ** np.int64(2)", lambda v: v ** np.int64(2), 9.0, 6.0),
    ("np.float64(2) ** v", lambda v: np.float64(2) ** v, 8.0, 8.0 * math.log(2.0)),
]


@pytest.mark.parametrize(
    ("expr", "f", "data", "grad"), NUMPY_CASES, ids=[c[0] for c in NUMPY_CASES]
)
def test_numpy_scalars_on_either_side_give_a_value_of_this_engine(
    Value: type, expr: str, f: Callable[[Any], Any], data: float, grad: float
) -> None:
    v = Value(3.0)
    out = f(v)
    assert type(out) is Value, f"{expr} gave {type(out).__name__}"
    assert type(out.data) is float  # a Python float, not a numpy scalar
    assert math.isclose(out.data, data, rel_tol=1e-15)
    out.backward()
    assert type(v.grad) in (int, float)
    assert math.isclose(v.grad, grad, rel_tol=1e-15)


def test_numpy_integer_scalar_keeps_int_arithmetic(Value: type) -> None:
    v = Value(3)
    out = np.int64(-1) * v
    assert type(out) is Value
    assert out.data == -3 and type(out.data) is int
    out.backward()
    assert v.grad == -1 and type(v.grad) is int


def test_numpy_scalar_as_data_is_stored_as_python_number(Value: type) -> None:
    assert type(Value(np.float64(1.5)).data) is float
    assert type(Value(np.int64(7)).data) is int
    assert Value(np.float32(0.25)).data == 0.25


# --- ints stay ints, as in micrograd ----------------------------------------------------------


def test_int_times_int_is_int(Value: type) -> None:
    out = Value(2) * 3
    assert out.data == 6 and type(out.data) is int


def test_int_squared_is_int(Value: type) -> None:
    out = Value(2) ** 2
    assert out.data == 4 and type(out.data) is int


def test_int_to_negative_power_is_float(Value: type) -> None:
    out = Value(2) ** -1
    assert out.data == 0.5 and type(out.data) is float


def test_new_value_grad_is_int_zero(Value: type) -> None:
    v = Value(3)
    assert v.grad == 0 and type(v.grad) is int
    assert type(Value(3.5).grad) is int


def test_backward_sets_root_grad_to_int_one(Value: type) -> None:
    root = Value(2.0) * Value(3.0)
    root.backward()
    assert root.grad == 1 and type(root.grad) is int


def test_int_graph_gives_int_gradients(Value: type) -> None:
    a = Value(2)
    b = Value(-3)
    c = a * b
    c.backward()
    assert a.grad == -3 and type(a.grad) is int
    assert b.grad == 2 and type(b.grad) is int
    assert c.data == -6 and type(c.data) is int


def test_int_results_and_grads_have_the_same_types_as_micrograd(Value: type) -> None:
    def build(V: type) -> list[Any]:  # noqa: N803
        a, b = V(2), V(-3)
        c = a * b + b**2 - a
        d = (c * 3).relu() + 4 - c / 2
        d.backward()
        return [a, b, c, d]

    for ours, theirs in zip(build(Value), build(MGValue)):
        assert type(ours.data) is type(theirs.data) and ours.data == theirs.data
        assert type(ours.grad) is type(theirs.grad) and ours.grad == theirs.grad


# --- a second backward() accumulates exactly as in micrograd -----------------------------------


def _small_graph(V: type, a0: Any, b0: Any) -> list[Any]:  # noqa: N803
    a, b = V(a0), V(b0)
    c = a * b
    d = c + a
    e = d * d + b**2
    f = (e - c).relu() * 2
    return [a, b, c, d, e, f]


@pytest.mark.parametrize(("a0", "b0"), [(2, -3), (2.0, -3.0), (0.5, 1.25)])
def test_second_backward_accumulates_like_micrograd(Value: type, a0: Any, b0: Any) -> None:
    ours = _small_graph(Value, a0, b0)
    theirs = _small_graph(MGValue, a0, b0)
    for _ in range(2):
        ours[-1].backward()
        theirs[-1].backward()
    for k, (o, t) in enumerate(zip(ours, theirs)):
        assert type(o.grad) is type(t.grad), k
        assert o.grad == t.grad, f"node {k}: {o.grad!r} vs micrograd {t.grad!r}"


def test_second_backward_is_not_a_reset(Value: type) -> None:
    ours = _small_graph(Value, 2, -3)
    ours[-1].backward()
    once = [v.grad for v in ours]
    ours[-1].backward()
    twice = [v.grad for v in ours]
    assert twice[-1] == 1  # the root is set, not accumulated
    assert twice[0] != once[0]  # leaves accumulate (through accumulated intermediates too)


# --- a custom op written the course's way ------------------------------------------------------


def course_sigmoid_for(Value: type) -> Callable[[Any], Any]:  # noqa: N803
    def sigmoid(self: Any) -> Any:
        import math

        out = Value(1 / (1 + math.exp(-self.data)), (self,), "sigmoid")

        def _backward() -> None:
            self.grad += out.data * (1 - out.data) * out.grad

        out._backward = _backward
        return out

    return sigmoid


@pytest.mark.parametrize(
    ("x0", "w0", "b0"), [(1.5, -0.5, 0.25), (2.0, 3.0, -1.0), (-1.0, 0.7, 0.1)]
)
def test_custom_op_written_the_courses_way_matches_builtin_sigmoid(
    Value: type, x0: float, w0: float, b0: float
) -> None:
    sigmoid = course_sigmoid_for(Value)

    def build(use_custom: bool) -> list[Any]:
        x, w, b = Value(x0), Value(w0), Value(b0)
        n = x * w + b
        s = sigmoid(n) if use_custom else n.sigmoid()
        out = s * x + s
        out.backward()
        return [x, w, b, n, s, out]

    custom, builtin = build(True), build(False)
    assert custom[4]._op == builtin[4]._op == "sigmoid"
    assert custom[3] in custom[4]._prev
    for k, (c, b) in enumerate(zip(custom, builtin)):
        assert math.isclose(c.data, b.data, rel_tol=1e-15), k
        assert math.isclose(c.grad, b.grad, rel_tol=GRAD_REL_TOL), k


# --- manual backpropagation, as in the notebook (section 4.2) ----------------------------------


def _neuron(Value: type) -> dict[str, Any]:  # noqa: N803
    x0 = Value(2.0, name="x0")
    x1 = Value(0.0, name="x1")
    w0 = Value(-3.0, name="w0")
    w1 = Value(1.0, name="w1")
    y = Value(0.5, name="y")
    x0w0 = x0 * w0
    x0w0.name = "x0w0"
    x1w1 = x1 * w1
    x1w1.name = "x1w1"
    n = x0w0 + x1w1
    n.name = "n"
    o = n.tanh()
    o.name = "o"
    L = y - o  # noqa: N806
    L.name = "L"
    return {v.name: v for v in (x0, x1, w0, w1, y, x0w0, x1w1, n, o, L)}


def _reverse_topological(root: Any) -> list[Any]:
    topo: list[Any] = []
    visited: set[int] = set()

    def visit(v: Any) -> None:
        if id(v) not in visited:
            visited.add(id(v))
            for child in v._prev:
                visit(child)
            topo.append(v)

    visit(root)
    return list(reversed(topo))


def test_manual_backprop_through_backward_closures_equals_backward(Value: type) -> None:
    manual = _neuron(Value)
    manual["L"].grad = 1.0
    for node in _reverse_topological(manual["L"]):
        node._backward()

    auto = _neuron(Value)
    auto["L"].backward()

    assert set(manual) == {"x0", "x1", "w0", "w1", "y", "x0w0", "x1w1", "n", "o", "L"}
    for name in manual:
        assert manual[name].grad == auto[name].grad, name
    assert math.isclose(auto["x0"].grad, -3.0 * (1 - math.tanh(-6.0) ** 2) * -1, rel_tol=1e-15)
    assert auto["y"].grad == 1


def test_label_is_an_alias_of_name(Value: type) -> None:
    v = Value(1.0, label="x1")
    assert v.name == "x1" and v.label == "x1"
    v.label = "z"
    assert v.name == "z"


# --- graph structure: _prev and _op ------------------------------------------------------------


def test_prev_is_a_set_of_the_child_objects(Value: type) -> None:
    a, b = Value(1.0), Value(2.0)
    c = a + b
    assert isinstance(c._prev, set)
    assert a in c._prev and b in c._prev and len(c._prev) == 2
    assert any(child is a for child in c._prev) and any(child is b for child in c._prev)
    assert a._prev == set()
    assert (a * a)._prev == {a}


def test_children_reached_through_prev_are_the_same_objects_and_keep_what_was_set_on_them(
    Value: type,
) -> None:
    c = Value(1.0) + Value(2.0)  # nothing outside the graph refers to the leaves
    first = list(c._prev)
    assert {id(x) for x in c._prev} == {id(x) for x in first}  # same objects while they live
    for child in first:
        child.grad = 5
        child.name = f"k{child.data}"
    del first, child
    c2 = c * 1  # more graph building in between
    assert sorted((x.name, x.grad) for x in c._prev) == [("k1.0", 5), ("k2.0", 5)]
    c2.backward()
    assert sorted((x.name, x.grad) for x in c._prev) == [("k1.0", 6), ("k2.0", 6)]


OP_LABELS: list[tuple[str, Callable[[Any, Any], Any], str]] = [
    ("a + b", lambda a, b: a + b, "+"),
    ("a * b", lambda a, b: a * b, "*"),
    ("a ** 2", lambda a, b: a**2, "**2"),
    ("a ** -1", lambda a, b: a**-1, "**-1"),
    ("a ** 0.5", lambda a, b: a**0.5, "**0.5"),
    ("a.relu()", lambda a, b: a.relu(), "ReLU"),
    ("a.exp()", lambda a, b: a.exp(), "exp"),
    ("a.log()", lambda a, b: a.log(), "log"),
    ("a.tanh()", lambda a, b: a.tanh(), "tanh"),
    ("a.sigmoid()", lambda a, b: a.sigmoid(), "sigmoid"),
    ("a.abs()", lambda a, b: a.abs(), "abs"),
    ("abs(a)", lambda a, b: abs(a), "abs"),
    ("a ** b", lambda a, b: a**b, "**"),
    ("2 ** a", lambda a, b: 2**a, "**"),
    ("-a", lambda a, b: -a, "*"),
]


@pytest.mark.parametrize(("expr", "f", "label"), OP_LABELS, ids=[c[0] for c in OP_LABELS])
def test_op_labels(Value: type, expr: str, f: Callable[[Any, Any], Any], label: str) -> None:
    assert f(Value(2.0), Value(3.0))._op == label
    assert Value(2.0)._op == ""


def test_value_pow_value_has_both_operands_as_children(Value: type) -> None:
    a, b = Value(2.0), Value(3.0)
    p = a**b
    assert p._prev == {a, b}
    r = 2**b
    assert b in r._prev and len(r._prev) == 2
    (base,) = r._prev - {b}
    assert base.data == 2 and base._op == ""


def test_subtraction_builds_a_plus_b_times_minus_one(Value: type) -> None:
    a, b = Value(5.0), Value(3.0)
    d = a - b
    assert d._op == "+"
    assert a in d._prev and len(d._prev) == 2
    (neg_b,) = d._prev - {a}
    assert neg_b._op == "*"
    assert b in neg_b._prev and len(neg_b._prev) == 2
    (minus_one,) = neg_b._prev - {b}
    assert minus_one.data == -1 and type(minus_one.data) is int and minus_one._op == ""
    assert d.data == 2.0


def test_division_builds_a_times_b_to_the_minus_one(Value: type) -> None:
    a, b = Value(6.0), Value(4.0)
    q = a / b
    assert q._op == "*"
    assert a in q._prev and len(q._prev) == 2
    (inv_b,) = q._prev - {a}
    assert inv_b._op == "**-1"
    assert inv_b._prev == {b}
    assert inv_b.data == 0.25 and q.data == 1.5


def test_subtraction_and_division_graphs_match_micrograd(Value: type) -> None:
    def build(V: type) -> Any:  # noqa: N803
        a, b = V(5.0), V(3.0)
        return (a - b) / (b - 1) + 2 / a - (3 - b)

    assert _graph(build(Value)) == _graph(build(MGValue))
