"""Every engine test runs against both engines: the compiled core and the pure-Python reference.

Use the ``Value`` fixture (the class under test) instead of importing one. A missing compiled
engine is a test failure, never a skip: CI builds it.
"""

from __future__ import annotations

import importlib
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import pytest

ENGINE_NAMES = ("compiled", "reference")
_MODULES = {"compiled": "michigrad._engine", "reference": "michigrad._reference"}


def engine_value_class(name: str) -> type:
    try:
        return importlib.import_module(_MODULES[name]).Value
    except ImportError as exc:  # pragma: no cover - CI always builds the extension
        pytest.fail(f"the {name} engine cannot be imported: {exc}")


def bits(x: float) -> tuple:
    """A number's type and exact bits, for bit-for-bit comparisons: 0.0 and -0.0, and 1 and 1.0,
    differ. Every NaN is one value: which operand's NaN an IEEE operation returns (its sign)
    depends on the order the C compiler gives a commutative operation's operands."""
    if isinstance(x, float) and math.isnan(x):
        return (type(x), "nan")
    return (type(x), struct.pack("<d", float(x)))


def same_number(x: float, y: float) -> bool:
    """Same type (int or float) and the same bits (see bits)."""
    return type(x) in (int, float) and bits(x) == bits(y)


def reachable(root: object) -> list:
    """Every Value reachable from root through ``_prev`` (root first), without recursion."""
    seen = {id(root): root}
    stack = [root]
    while stack:
        for child in stack.pop()._prev:
            if id(child) not in seen:
                seen[id(child)] = child
                stack.append(child)
    return list(seen.values())


@pytest.fixture(params=ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> str:
    """The name of the engine under test."""
    return request.param


@pytest.fixture
def Value(engine: str) -> type:  # noqa: N802 - it is a class, named as users name it
    """The Value class of the engine under test."""
    return engine_value_class(engine)


@pytest.fixture
def MLArray(engine: str) -> type:  # noqa: N802 - it is a class, named as users name it
    """The MLArray class of the engine under test (``michigrad.array.array_class``)."""
    from michigrad.array import array_class

    try:
        return array_class(engine)
    except ImportError as exc:  # pragma: no cover - CI always builds the extension
        pytest.fail(f"the {engine} engine has no array kernels: {exc}")


def build_program(
    program: tuple[Sequence[Any], list[tuple[str, int, int]]],
    make_leaf: Callable[[Any], Any],
    unary: dict[str, Callable[[Any], Any]],
    binary: dict[str, Callable[[Any, Any], Any]],
) -> tuple[list[Any], Any]:
    """Every node of a random program (leaf values, instructions (op, i, j): apply op to earlier
    nodes i (and j)), in order (leaves first), and the root (the sum of the sinks)."""
    leaf_values, instructions = program
    nodes = [make_leaf(x) for x in leaf_values]
    used: set[int] = set()
    for op, i, j in instructions:
        if op in unary:
            nodes.append(unary[op](nodes[i]))
            used.add(i)
        else:
            nodes.append(binary[op](nodes[i], nodes[j]))
            used.update((i, j))
    sinks = [node for k, node in enumerate(nodes) if k not in used]
    root = sinks[0]
    for node in sinks[1:]:
        root = root + node
    return nodes, root


def check_replays(g: Any, leaves: list[Any], fresh: Callable[[Any], tuple[Any, list[Any]]],
                  batches: list[Any]) -> None:
    """Feed each batch: the replayed value and leaf gradients are a fresh build's, bit for bit."""
    for batch in batches:
        for v in leaves:
            v.grad = 0
        g.feed(batch)
        replayed = g.forward()
        g.backward()
        replayed_grads = [bits(v.grad) for v in leaves]
        loss, fresh_leaves = fresh(batch)
        for v in fresh_leaves:  # a fresh build may reuse the recorded leaves (parameters)
            v.grad = 0
        loss.backward()
        assert bits(replayed) == bits(loss.data), batch
        assert replayed_grads == [bits(v.grad) for v in fresh_leaves], batch
        assert math.isfinite(replayed)
