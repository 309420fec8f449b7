"""Every engine test runs against both engines: the compiled core and the pure-Python reference.

Use the ``Value`` fixture (the class under test) instead of importing one. A missing compiled
engine is a test failure, never a skip: CI builds it.
"""

from __future__ import annotations

import importlib

import pytest

ENGINE_NAMES = ("compiled", "reference")
_MODULES = {"compiled": "michigrad._engine", "reference": "michigrad._reference"}


def engine_value_class(name: str) -> type:
    try:
        return importlib.import_module(_MODULES[name]).Value
    except ImportError as exc:  # pragma: no cover - CI always builds the extension
        pytest.fail(f"the {name} engine cannot be imported: {exc}")


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
