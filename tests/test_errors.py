"""Errors: Python's own exceptions, raised before anything changes.

Forward errors are ``ZeroDivisionError``, ``ValueError`` (where Python would return a complex
number or log is out of its domain), ``OverflowError`` and ``TypeError``. After any of them the
operands, and every gradient already in the graph, are exactly as they were. A custom
``_backward`` that raises makes ``backward()`` re-raise with every gradient put back.
``backward()`` itself never raises for numeric reasons: local derivatives use IEEE infinities and
NaNs, as PyTorch does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ENGINE_NAMES, engine_value_class


def _num(x: Any) -> tuple[str, Any]:
    if type(x) is float:
        return ("float", struct.pack("<d", x))
    return (type(x).__name__, x)


def _reachable(*roots: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node._prev)
    return list(seen.values())


class _Snapshot:
    """Everything observable about a graph: per node, its data, grad, op, name and children, exact
    (bits and types). It holds the nodes, so their handles, and ids, stay the same while it lives
    (the compiled engine makes the handles of unreferenced nodes on demand)."""

    def __init__(self, *roots: Any) -> None:
        self.nodes = sorted(_reachable(*roots), key=id)
        self.state = [
            (id(n), _num(n.data), _num(n.grad), n._op, n.name, frozenset(map(id, n._prev)))
            for n in self.nodes
        ]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Snapshot) and self.state == other.state

    def __repr__(self) -> str:
        return repr(self.state)


def _snapshot(*roots: Any) -> _Snapshot:
    return _Snapshot(*roots)


# --- forward errors ---------------------------------------------------------------------------

# (description, operand data, the failing operation on that operand, the exception)
FORWARD_ERRORS: list[tuple[str, Any, Callable[[Any], Any], type[BaseException]]] = [
    ("Value(1) / 0", 1, lambda v: v / 0, ZeroDivisionError),
    ("Value(1.0) / 0.0", 1.0, lambda v: v / 0.0, ZeroDivisionError),
    ("Value(1) / Value(0)", 0, lambda v: 1 / v, ZeroDivisionError),
    ("2 / Value(0.0)", 0.0, lambda v: 2 / v, ZeroDivisionError),
    ("Value(0) ** -1", 0, lambda v: v**-1, ZeroDivisionError),
    ("Value(0.0) ** -1", 0.0, lambda v: v**-1, ZeroDivisionError),
    ("Value(0.0) ** -0.5", 0.0, lambda v: v**-0.5, ZeroDivisionError),
    ("Value(0) ** Value(-1)", 0, lambda v: v ** v.__class__(-1), ZeroDivisionError),
    ("Value(0.0).log()", 0.0, lambda v: v.log(), ValueError),
    ("Value(0).log()", 0, lambda v: v.log(), ValueError),
    ("Value(-1).log()", -1, lambda v: v.log(), ValueError),
    ("Value(-8.0) ** 0.5", -8.0, lambda v: v**0.5, ValueError),
    ("Value(-8.0) ** Value(1/3)", -8.0, lambda v: v ** v.__class__(1 / 3), ValueError),
    ("Value(1000).exp()", 1000, lambda v: v.exp(), OverflowError),
    ("Value(710.0).exp()", 710.0, lambda v: v.exp(), OverflowError),
    ("Value(10.0) ** 400", 10.0, lambda v: v**400, OverflowError),
    ("Value(10) ** 400", 10, lambda v: v**400, OverflowError),
    ("2 ** Value(2000)", 2000, lambda v: 2**v, OverflowError),
    ("Value(1) + 'a'", 1, lambda v: v + "a", TypeError),
    ("'a' * Value(1)", 1, lambda v: "a" * v, TypeError),
    ("'a' + Value(1)", 1, lambda v: "a" + v, TypeError),
    ("Value(1) - None", 1, lambda v: v - None, TypeError),
    ("None - Value(1)", 1, lambda v: None - v, TypeError),
    ("Value(1) * 1j", 1, lambda v: v * 1j, TypeError),
    ("Value(1) / 'a'", 1, lambda v: v / "a", TypeError),
    ("'a' / Value(1)", 1, lambda v: "a" / v, TypeError),
    ("Value(2) ** 'a'", 2, lambda v: v ** "a", TypeError),
    ("'a' ** Value(2)", 2, lambda v: "a" ** v, TypeError),
    ("pow(Value(2), 2, 3)", 2, lambda v: pow(v, 2, 3), TypeError),
]


@pytest.mark.parametrize(
    ("expr", "x", "op", "exc"), FORWARD_ERRORS, ids=[case[0] for case in FORWARD_ERRORS]
)
def test_forward_error_is_raised_and_leaves_the_operand_untouched(
    Value: type, expr: str, x: Any, op: Callable[[Any], Any], exc: type[BaseException]
) -> None:
    v = Value(x)
    before = _snapshot(v)
    with pytest.raises(exc):
        op(v)
    assert _snapshot(v) == before


@pytest.mark.parametrize(
    ("expr", "x", "op", "exc"), FORWARD_ERRORS, ids=[case[0] for case in FORWARD_ERRORS]
)
def test_forward_error_leaves_existing_graph_and_gradients_untouched(
    Value: type, expr: str, x: Any, op: Callable[[Any], Any], exc: type[BaseException]
) -> None:
    def graph() -> tuple[Any, Any, Any]:
        v, w = Value(x), Value(2.5)
        return v, w, v * w + v + w.tanh()

    v, w, root = graph()
    root.backward()
    before = _snapshot(root)
    with pytest.raises(exc):
        op(v)
    assert _snapshot(root) == before
    # and the graph still works: a second backward accumulates as on a graph that saw no error
    root.backward()
    twin_v, twin_w, twin_root = graph()
    twin_root.backward()
    twin_root.backward()
    assert [_num(v.grad), _num(w.grad)] == [_num(twin_v.grad), _num(twin_w.grad)]


@pytest.mark.parametrize(
    ("expr", "x", "op", "exc"), FORWARD_ERRORS, ids=[case[0] for case in FORWARD_ERRORS]
)
def test_both_engines_raise_the_same_message(
    expr: str, x: Any, op: Callable[[Any], Any], exc: type[BaseException]
) -> None:
    """The fallback engine's errors read as the compiled engine's. (An overflowing power gave
    errno's "(34, 'Numerical result out of range')" in one engine only, and 'a' + Value(1) named
    the operands the wrong way round.) Python writes the TypeErrors, naming the compiled type
    as it knows it: 'michigrad._engine.Value'."""
    messages = []
    for name in ENGINE_NAMES:
        with pytest.raises(exc) as error:
            op(engine_value_class(name)(x))
        messages.append(str(error.value).replace("michigrad._engine.Value", "Value"))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("bad", ["a", None, 1j, b"1", [1.0], (1.0,), {}], ids=repr)
def test_constructing_from_a_non_real_number_is_a_type_error(Value: type, bad: Any) -> None:
    with pytest.raises(TypeError):
        Value(bad)


def test_constructing_from_an_int_too_large_for_a_float_is_an_overflow_error(Value: type) -> None:
    with pytest.raises(OverflowError):
        Value(10**400)


@pytest.mark.parametrize("bad", ["x", None, 1j], ids=repr)
def test_assigning_non_number_data_is_a_type_error_and_keeps_the_data(
    Value: type, bad: Any
) -> None:
    v = Value(2.0)
    v.grad = 0.5
    with pytest.raises(TypeError):
        v.data = bad
    assert v.data == 2.0 and type(v.data) is float
    assert v.grad == 0.5


@pytest.mark.parametrize("bad", ["x", None, 1j], ids=repr)
def test_assigning_non_number_grad_is_a_type_error_and_keeps_the_grad(
    Value: type, bad: Any
) -> None:
    v = Value(2.0)
    v.grad = 3
    with pytest.raises(TypeError):
        v.grad = bad
    assert v.grad == 3 and type(v.grad) is int


def test_assigning_data_inside_a_graph_after_backward_changes_nothing_else_on_error(
    Value: type,
) -> None:
    a, b = Value(1.5), Value(-2)
    root = (a * b).relu() + a.exp() * b
    root.backward()
    before = _snapshot(root)
    with pytest.raises(TypeError):
        a.data = "x"
    assert _snapshot(root) == before


def test_non_string_name_is_a_type_error(Value: type) -> None:
    v = Value(1.0, name="v")
    with pytest.raises(TypeError):
        v.name = 3
    assert v.name == "v"


# --- a custom _backward that raises --------------------------------------------------------------


class Boom(Exception):
    pass


class Interrupt(BaseException):
    pass


def _graph_with_failing_op(  # noqa: N803 - Value is a class
    Value: type, error: type[BaseException]
) -> tuple[dict[str, Any], list[bool]]:
    """f = custom(d) * b + c + a*a, with c = a*b, d = c + a; the custom op's _backward adds to
    d.grad, then raises when fail[0] is set: by then backward() has already changed the grads of
    the root, of both leaves and of intermediate nodes."""
    fail = [False]
    a, b = Value(1.5), Value(-2.0)
    c = a * b
    d = c + a
    e = Value(d.data * 2, (d,), "custom")

    def _backward() -> None:
        d.grad += 2 * e.grad
        if fail[0]:
            raise error("boom")

    e._backward = _backward
    f = e * b + c + a * a
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}, fail


@pytest.mark.parametrize("error", [Boom, Interrupt], ids=["Exception", "BaseException"])
def test_failing_custom_backward_reraises_and_restores_fresh_gradients(
    Value: type, error: type[BaseException]
) -> None:
    nodes, fail = _graph_with_failing_op(Value, error)
    fail[0] = True
    before = _snapshot(nodes["f"])
    with pytest.raises(error, match="boom"):
        nodes["f"].backward()
    assert _snapshot(nodes["f"]) == before
    assert all(n.grad == 0 and type(n.grad) is int for n in nodes.values())


@pytest.mark.parametrize("error", [Boom, Interrupt], ids=["Exception", "BaseException"])
def test_failing_custom_backward_restores_accumulated_gradients_exactly(
    Value: type, error: type[BaseException]
) -> None:
    nodes, fail = _graph_with_failing_op(Value, error)
    nodes["f"].backward()  # succeeds: every node has a gradient now
    nodes["f"].grad = 0.25  # the root's, too, must come back (backward() sets it to 1 first)
    before = _snapshot(nodes["f"])
    assert nodes["d"].grad != 0 and nodes["a"].grad != 0
    fail[0] = True
    with pytest.raises(error, match="boom"):
        nodes["f"].backward()
    assert _snapshot(nodes["f"]) == before
    # once it stops failing, backward() works again and accumulates on the restored gradients
    fail[0] = False
    a_grad = nodes["a"].grad
    nodes["f"].backward()
    assert nodes["a"].grad != a_grad


# --- backward() never raises for numeric reasons ----------------------------------------------


def test_sqrt_at_zero_has_infinite_gradient_without_raising(Value: type) -> None:
    v = Value(0.0)
    out = v**0.5
    assert out.data == 0.0
    out.backward()
    assert v.grad == math.inf


def test_value_power_of_negative_base_has_nan_exponent_gradient_without_raising(
    Value: type,
) -> None:
    a, b = Value(-2.0), Value(2.0)
    out = a**b
    assert out.data == 4.0
    out.backward()
    assert a.grad == -4.0
    assert math.isnan(b.grad)


def test_value_power_of_zero_base_has_zero_exponent_gradient(Value: type) -> None:
    a, b = Value(0.0), Value(0.5)
    out = a**b
    out.backward()
    assert a.grad == math.inf
    assert b.grad == 0


def test_log_backward_at_zero_data_is_infinite_not_an_error(Value: type) -> None:
    # forward refuses log(0), but data can be changed after the graph is built (as in a training
    # loop); the local derivative 1/x is then taken in IEEE arithmetic: +inf, as in PyTorch
    a = Value(2.0)
    out = a.log()
    a.data = 0.0
    out.backward()
    assert a.grad == math.inf


def test_pow_backward_at_zero_data_is_infinite_not_an_error(Value: type) -> None:
    b = Value(2.0)
    out = b**-1
    b.data = 0.0  # changed after the graph was built
    out.backward()
    assert b.grad == -math.inf


# --- repr -------------------------------------------------------------------------------------


def test_repr_shows_data_grad_and_name(Value: type) -> None:
    assert repr(Value(2.0, name="x")) == "Value(data=2.0, grad=0, name=x)"


def test_repr_of_unnamed_int_value_after_backward(Value: type) -> None:
    v = Value(3)
    v.backward()
    assert repr(v) == "Value(data=3, grad=1, name=)"
