"""Property tests on random expression DAGs with shared subexpressions.

A program is a list of leaf numbers and a list of instructions; each instruction applies an op to
one or two earlier nodes (leaves or results), chosen at random, so nodes are naturally reused. The
root is the sum of every node nothing else uses, so every node, every leaf, gets a gradient.

The same program is built with the compiled engine, the reference engine and torch.float64:

* the two engines must agree bit for bit: every node's data and grad (same bits, same type, int or
  float), every op label, and the whole graph reachable through ``_prev``; a program that raises in
  one engine must raise the same exception in the other;
* on well-conditioned programs, gradients must match PyTorch to 1e-12 relative.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, Union

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from conftest import ENGINE_NAMES, build_program, engine_value_class, reachable, same_number

Number = Union[int, float]

GRAD_REL_TOL = 1e-12
GRAD_ABS_TOL = 1e-14

# --- the op vocabulary ----------------------------------------------------------------------
# Each op is written once and works on michigrad Values and on torch tensors alike.

SAFE_UNARY: dict[str, Callable[[Any], Any]] = {
    "-a": lambda a: -a,
    "exp": lambda a: a.exp(),
    "log(|a|+0.5)": lambda a: (a.abs() + 0.5).log(),
    "tanh": lambda a: a.tanh(),
    "sigmoid": lambda a: a.sigmoid(),
    "relu": lambda a: a.relu(),
    "a.abs()": lambda a: a.abs(),
    "abs(a)": lambda a: abs(a),
    "a**0": lambda a: a**0,
    "a**1": lambda a: a**1,
    "a**2": lambda a: a**2,
    "a**3": lambda a: a**3,
    "(|a|+0.5)**-1": lambda a: (a.abs() + 0.5) ** -1,
    "(|a|+0.1)**0.5": lambda a: (a.abs() + 0.1) ** 0.5,
    "(|a|+0.5)**-1.5": lambda a: (a.abs() + 0.5) ** -1.5,
    "2**a": lambda a: 2**a,
    "1+a": lambda a: 1 + a,
    "2-a": lambda a: 2 - a,
    "3*a": lambda a: 3 * a,
    "0.5*a": lambda a: 0.5 * a,
    "2/(|a|+1)": lambda a: 2 / (a.abs() + 1),
    "a+1": lambda a: a + 1,
    "a-2.5": lambda a: a - 2.5,
    "a*-3": lambda a: a * -3,
    "a/4": lambda a: a / 4,
}
SAFE_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "a+b": lambda a, b: a + b,
    "a-b": lambda a, b: a - b,
    "a*b": lambda a, b: a * b,
    "a/(|b|+0.5)": lambda a, b: a / (b.abs() + 0.5),
    "(|a|+0.5)**b": lambda a, b: (a.abs() + 0.5) ** b,
    "a*b.tanh()": lambda a, b: a * b.tanh(),
}
# Ops that can raise (ZeroDivisionError, ValueError, OverflowError) on ordinary inputs.
WILD_UNARY: dict[str, Callable[[Any], Any]] = {
    **SAFE_UNARY,
    "a**-1": lambda a: a**-1,
    "a**-2": lambda a: a**-2,
    "a**0.5": lambda a: a**0.5,
    "a**-0.5": lambda a: a**-0.5,
    "log": lambda a: a.log(),
    "2/a": lambda a: 2 / a,
    "a/0.0": lambda a: a / 0.0,
}
WILD_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    **SAFE_BINARY,
    "a/b": lambda a, b: a / b,
    "a**b": lambda a, b: a**b,
}

Program = tuple[list[Number], list[tuple[str, int, int]]]

leaf_numbers = st.one_of(
    st.floats(min_value=-3.0, max_value=3.0, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-3, max_value=3),
)


# Leaves at the edges: infinities, NaN, -0.0, subnormals, the largest floats, and ints around
# 2**53, where an int result stops being exact in a double and must become a float.
edge_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from(
        [2**53 - 1, 2**53, 2**53 + 1, -(2**53) + 1, -(2**53), 3**33, 0, 1, -1,
         0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e-300]
    ),
)


@st.composite
def programs(
    draw: st.DrawFn,
    unary: dict[str, Callable[[Any], Any]],
    binary: dict[str, Callable[[Any, Any], Any]],
    leaves: st.SearchStrategy[Number] = leaf_numbers,
    max_ops: int = 14,
) -> Program:
    """Leaves, then instructions (op, i, j): apply op to earlier nodes i (and j)."""
    n_leaves = draw(st.integers(min_value=1, max_value=4))
    leaf_values = draw(st.lists(leaves, min_size=n_leaves, max_size=n_leaves))
    n_ops = draw(st.integers(min_value=1, max_value=max_ops))
    op_names = sorted(unary) + sorted(binary)
    instructions = []
    for k in range(n_ops):
        n_nodes = n_leaves + k
        op = draw(st.sampled_from(op_names))
        i = draw(st.integers(min_value=0, max_value=n_nodes - 1))
        j = draw(st.integers(min_value=0, max_value=n_nodes - 1))
        instructions.append((op, i, j))
    return leaf_values, instructions


def run_engine(Value: type, program: Program, unary: Any, binary: Any) -> tuple[list[Any], Any]:
    nodes, root = build_program(program, Value, unary, binary)
    root.backward()
    return nodes, root


# --- comparisons ----------------------------------------------------------------------------


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _signature(node: Any) -> tuple[Any, ...]:
    """What identifies a node up to identity: op, data, grad (exact, typed) and its children's."""
    def num(x: Number) -> tuple[str, bool, int]:
        if type(x) is float:
            return ("float", math.isnan(x), 0 if math.isnan(x) else _bits(x))
        return (type(x).__name__, False, x)

    children = sorted((c._op, num(c.data), num(c.grad)) for c in node._prev)
    return (node._op, num(node.data), num(node.grad), tuple(children))


# --- engines against each other -------------------------------------------------------------


def _outcome(Value: type, program: Program, unary: Any, binary: Any) -> tuple[Any, Any]:
    try:
        return run_engine(Value, program, unary, binary), None
    except (ZeroDivisionError, OverflowError, ValueError) as exc:
        return None, exc


def _assert_engines_agree(program: Program, unary: Any, binary: Any) -> None:
    compiled_value = engine_value_class("compiled")
    reference_value = engine_value_class("reference")
    ref, ref_exc = _outcome(reference_value, program, unary, binary)
    com, com_exc = _outcome(compiled_value, program, unary, binary)
    if ref_exc is not None or com_exc is not None:
        assert type(com_exc) is type(ref_exc), (
            f"reference raised {ref_exc!r}, compiled raised {com_exc!r} on {program}"
        )
        return
    (ref_nodes, ref_root), (com_nodes, com_root) = ref, com
    for k, (r, c) in enumerate(zip(ref_nodes, com_nodes)):
        assert same_number(c.data, r.data), f"node {k} data: compiled {c.data!r}, ref {r.data!r}"
        assert same_number(c.grad, r.grad), f"node {k} grad: compiled {c.grad!r}, ref {r.grad!r}"
        assert c._op == r._op, f"node {k} op: compiled {c._op!r}, reference {r._op!r}"
    assert same_number(com_root.data, ref_root.data)
    assert same_number(com_root.grad, ref_root.grad)
    # the whole graph, including the nodes ops make internally (b * -1 in a - b, b**-1 in a / b,
    # number operands wrapped as leaves), has the same shape, labels, data and gradients
    ref_graph = sorted(map(_signature, reachable(ref_root)))
    com_graph = sorted(map(_signature, reachable(com_root)))
    assert com_graph == ref_graph


@settings(max_examples=200, deadline=None)
@given(program=programs(SAFE_UNARY, SAFE_BINARY))
def test_engines_agree_bit_for_bit_on_random_dags(program: Program) -> None:
    _assert_engines_agree(program, SAFE_UNARY, SAFE_BINARY)


@settings(max_examples=200, deadline=None)
@given(program=programs(WILD_UNARY, WILD_BINARY))
def test_engines_agree_bit_for_bit_or_raise_alike_with_poles_and_domain_errors(
    program: Program,
) -> None:
    _assert_engines_agree(program, WILD_UNARY, WILD_BINARY)


@settings(max_examples=200, deadline=None)
@given(program=programs(WILD_UNARY, WILD_BINARY, leaves=edge_numbers, max_ops=8))
# a negative base to a non-integer power whose magnitude overflows a double
@example(program=([-10.0, 400.5], [("a**b", 0, 1)]))
@example(program=([-6530.0, 0.0], [("(|a|+0.1)**0.5", 1, 1), ("a**b", 0, 2)]))
# int results on either side of 2**53
@example(program=([2**53 - 1, 1], [("a+b", 0, 1), ("a*b", 2, 2), ("a-b", 0, 1)]))
@example(program=([3**33, 3], [("a*b", 0, 1), ("a**2", 0, 0), ("a/b", 2, 1)]))
def test_engines_agree_bit_for_bit_at_infinities_nans_and_the_int_float_boundary(
    program: Program,
) -> None:
    _assert_engines_agree(program, WILD_UNARY, WILD_BINARY)


# --- against PyTorch ------------------------------------------------------------------------


def _well_conditioned(nodes: Sequence[Any], root: Any) -> bool:
    """Whether PyTorch's last-bit differences (its exp/tanh/sigmoid/pow round differently from the
    C library's) cannot be amplified past 1e-12 in the gradients.

    Values stay moderate, no tanh/sigmoid works where its derivative is tiny and computed by
    cancellation (1 - t*t, s*(1 - s)), and no addition cancels its operands almost entirely.
    """
    for node in reachable(root):
        for x in (node.data, node.grad):
            if not math.isfinite(x) or abs(x) > 1e8:
                return False
        children = list(node._prev)
        if node._op == "tanh" and 3.5 < abs(children[0].data) < 20:
            return False
        if node._op == "sigmoid" and 5 < children[0].data < 40:
            return False
        if node._op == "+" and node.data != 0:
            scale = sum(abs(c.data) for c in children)
            if abs(node.data) < 1e-6 * scale:
                return False
    return True


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(program=programs(SAFE_UNARY, SAFE_BINARY, max_ops=10))
def test_gradients_match_torch_float64_on_random_dags(engine: str, program: Program) -> None:
    Value = engine_value_class(engine)  # noqa: N806
    try:
        nodes, root = run_engine(Value, program, SAFE_UNARY, SAFE_BINARY)
    except OverflowError:
        assume(False)
    assume(_well_conditioned(nodes, root))

    def torch_leaf(x: Number) -> torch.Tensor:
        return torch.tensor(float(x), dtype=torch.float64, requires_grad=True)

    t_nodes, t_root = build_program(program, torch_leaf, SAFE_UNARY, SAFE_BINARY)
    t_root.backward()
    assert math.isclose(root.data, t_root.item(), rel_tol=GRAD_REL_TOL, abs_tol=GRAD_ABS_TOL), (
        f"root data {root.data!r}, torch {t_root.item()!r}"
    )
    for k in range(len(program[0])):
        ours = nodes[k].grad
        theirs = 0.0 if t_nodes[k].grad is None else t_nodes[k].grad.item()
        assert math.isclose(ours, theirs, rel_tol=GRAD_REL_TOL, abs_tol=GRAD_ABS_TOL), (
            f"leaf {k} grad {ours!r}, torch {theirs!r}"
        )
