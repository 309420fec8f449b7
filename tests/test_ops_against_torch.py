"""Every operation and its gradient, checked against PyTorch (float64) and central differences.

Each case is one expression of one or two leaves, written once and evaluated three ways: with the
engine under test, with ``torch.float64`` tensors (the same operators and method names), and with
central finite differences of the engine's own forward pass.

Forward values must match PyTorch to 1e-15 relative. Operations that IEEE arithmetic rounds
exactly (``+ - *``, negation, ReLU, abs) must give the very same bits. The transcendental ones may
differ in the last bit or two: PyTorch's CPU kernels (SLEEF) and the C library's ``exp``/``tanh``/
``pow`` do not round identically (measured: ``tanh`` up to 2 ulps apart, ``sigmoid`` up to 3,
``x**3`` and ``x**-1`` 1 ulp; glibc's ``tanh`` is itself up to 2 ulps from the correctly rounded
value), and ``a / b`` is ``a * b**-1`` here, as in micrograd, where PyTorch divides (1 ulp).
Gradients must match PyTorch to 1e-12 relative. The input points are chosen so that those last-bit
forward differences are not amplified past that (``tanh`` is not evaluated in 4 < |x| < 19, where
``1 - t*t`` cancels).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import pytest
import torch

Number = Union[int, float]

FORWARD_REL_TOL = 1e-15
GRAD_REL_TOL = 1e-12
GRAD_ABS_TOL = 1e-15
FD_REL_TOL = 1e-6
FD_ABS_TOL = 1e-7
FD_STEP = 1e-6


@dataclass(frozen=True)
class Case:
    """An expression ``fn(*leaves)`` and where to evaluate it."""

    name: str
    fn: Callable[..., Any]
    points: Sequence[tuple[Number, ...]]  # smooth: checked against torch and central differences
    torch_only: Sequence[tuple[Number, ...]] = ()  # kinks, or too large for h=1e-6: torch only
    exact: bool = False  # IEEE rounds it exactly: forward bits must equal torch's


def _rounded_by_ieee(name: str, fn: Callable[..., Any], points: Sequence[tuple[Number, ...]],
                     torch_only: Sequence[tuple[Number, ...]] = ()) -> Case:
    return Case(name, fn, points, torch_only, exact=True)


CASES: list[Case] = [
    # --- + - * / between Values -------------------------------------------------------------
    _rounded_by_ieee(
        "a + b", lambda a, b: a + b, [(1.5, -2.25), (3, 4), (-0.1, 0.7)], torch_only=[(1e10, 3.0)]
    ),
    _rounded_by_ieee("a - b", lambda a, b: a - b, [(1.5, -2.25), (3, 4), (-0.1, 0.7), (2.5, 2.5)]),
    _rounded_by_ieee("a * b", lambda a, b: a * b, [(1.5, -2.25), (3, 4), (-0.1, 0.7), (0.0, 5.0)]),
    Case("a / b", lambda a, b: a / b, [(1.5, -2.25), (3, 4), (-0.1, 0.7), (7.0, 3.0), (0.0, 2.0)]),
    _rounded_by_ieee("a + a", lambda a: a + a, [(1.5,), (-3,)]),
    _rounded_by_ieee("a * a", lambda a: a * a, [(1.5,), (-3,), (0.1,)]),
    # --- a number on the right ----------------------------------------------------------------
    _rounded_by_ieee("a + 1", lambda a: a + 1, [(1.5,), (-3,), (0.1,)]),
    _rounded_by_ieee("a - 2", lambda a: a - 2, [(1.5,), (-3,), (0.1,)]),
    _rounded_by_ieee("a * 3", lambda a: a * 3, [(1.5,), (-3,), (0.1,)]),
    Case("a / 4", lambda a: a / 4, [(1.5,), (-3,), (0.1,)]),
    Case("a / 3.0", lambda a: a / 3.0, [(1.5,), (-3,), (0.1,)]),
    # --- reflected: a number on the left ------------------------------------------------------
    _rounded_by_ieee("1 + a", lambda a: 1 + a, [(1.5,), (-3,), (0.1,)]),
    _rounded_by_ieee("2 - a", lambda a: 2 - a, [(1.5,), (-3,), (0.1,)]),
    _rounded_by_ieee("3 * a", lambda a: 3 * a, [(1.5,), (-3,), (0.1,)]),
    _rounded_by_ieee("2.5 * a", lambda a: 2.5 * a, [(1.5,), (-3,), (0.1,)]),
    Case("2 / a", lambda a: 2 / a, [(1.5,), (-3,), (0.1,), (4,)]),
    # --- unary minus --------------------------------------------------------------------------
    _rounded_by_ieee("-a", lambda a: -a, [(1.5,), (-2.25,), (3,), (0.1,)]),
    # --- powers with a number exponent --------------------------------------------------------
    Case("a ** 0", lambda a: a**0, [(2.5,), (-1.5,), (3,)], torch_only=[(0.0,)]),
    Case("a ** 1", lambda a: a**1, [(2.5,), (-1.5,), (4,)]),
    Case("a ** 2", lambda a: a**2, [(-1.5,), (0.5,), (3,), (-3,)]),
    Case("a ** 2.0", lambda a: a**2.0, [(-1.5,), (0.5,), (3,)]),
    Case("a ** 3", lambda a: a**3, [(-1.5,), (0.7,), (2,), (-2,)]),
    Case("a ** -1", lambda a: a**-1, [(0.5,), (-2.0,), (4,), (3.0,)]),
    Case("a ** -2", lambda a: a**-2, [(0.5,), (-1.5,), (2,)]),
    Case("a ** 0.5", lambda a: a**0.5, [(0.25,), (2.0,), (9,)]),
    Case("a ** 1.5", lambda a: a**1.5, [(0.3,), (2.0,), (4,)]),
    Case("a ** -0.5", lambda a: a**-0.5, [(0.3,), (4.0,)]),
    # --- powers with a Value exponent, and a number base (__rpow__) --------------------------
    Case("a ** (b + 2)", lambda a, b: a ** (b + 2), [(3, 5), (1.5, 0.25), (2.0, -3.5), (0.5, 1.0)]),
    Case(
        "a ** b",
        lambda a, b: a**b,
        [(2.0, 0.5), (0.7, -1.3), (5, 2)],
        # negative base, integer exponent: d/db is x**y*log(x) = nan, as in torch; 0 ** y: d/db is 0
        torch_only=[(-2.0, 3.0), (-2, 2), (0.0, 2.0)],
    ),
    Case("2 ** a", lambda a: 2**a, [(-1.5,), (0.0,), (2.5,), (3,)]),
    Case("0.5 ** a", lambda a: 0.5**a, [(1.3,), (-2.0,)]),
    # --- exp, log, tanh, relu, sigmoid, abs ---------------------------------------------------
    Case("exp", lambda a: a.exp(), [(-3.0,), (0.0,), (0.5,), (1.5,), (10.0,), (2,)]),
    Case("log", lambda a: a.log(), [(0.1,), (1.0,), (2.5,), (1000.0,), (7,), (1e-3,)]),
    Case(
        "tanh",
        lambda a: a.tanh(),
        [(-2.5,), (-0.7,), (0.0,), (0.3,), (1.2,), (2.0,), (3,), (20.0,), (1000.0,), (-1000.0,),
         (1000,)],
    ),
    _rounded_by_ieee(
        "relu",
        lambda a: a.relu(),
        [(1.5,), (-2.0,), (3,), (-4,)],
        torch_only=[(0.0,), (0,), (-0.0,)],
    ),
    Case(
        "sigmoid",
        lambda a: a.sigmoid(),
        [(-3.0,), (-0.5,), (0.0,), (0.5,), (2.0,), (4,), (1000.0,), (-1000.0,), (-1000,)],
    ),
    _rounded_by_ieee(
        "abs", lambda a: a.abs(), [(1.5,), (-2.0,), (-3,), (7,)], torch_only=[(0.0,), (0,)]
    ),
    _rounded_by_ieee(
        "abs() builtin", lambda a: abs(a), [(1.5,), (-2.0,), (-3,)], torch_only=[(0.0,)]
    ),
]


def _params(kind: str) -> list[Any]:
    params = []
    for case in CASES:
        points = list(case.points) + (list(case.torch_only) if kind == "torch" else [])
        for point in points:
            params.append(pytest.param(case, point, id=f"{case.name} @ {point}"))
    return params


def _run_engine(Value: type, case: Case, point: tuple[Number, ...]) -> tuple[Any, list[Any]]:
    leaves = [Value(x) for x in point]
    out = case.fn(*leaves)
    out.backward()
    return out, leaves


def _run_torch(case: Case, point: tuple[Number, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [torch.tensor(float(x), dtype=torch.float64, requires_grad=True) for x in point]
    out = case.fn(*leaves)
    out.backward()
    return out, leaves


def _torch_grad(leaf: torch.Tensor) -> float:
    return 0.0 if leaf.grad is None else leaf.grad.item()


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _ulps_apart(x: float, y: float) -> int:
    return abs(_bits(x) - _bits(y))


def _close(ours: Number, theirs: float, rel_tol: float, abs_tol: float) -> bool:
    if math.isnan(theirs):
        return isinstance(ours, float) and math.isnan(ours)
    return math.isclose(ours, theirs, rel_tol=rel_tol, abs_tol=abs_tol)


@pytest.mark.parametrize(("case", "point"), _params("torch"))
def test_forward_matches_torch_float64(Value: type, case: Case, point: tuple[Number, ...]) -> None:
    out, _ = _run_engine(Value, case, point)
    t_out, _ = _run_torch(case, point)
    theirs = t_out.item()
    assert type(out.data) in (int, float)
    assert _close(out.data, theirs, FORWARD_REL_TOL, 0.0), (
        f"{case.name} at {point}: {out.data!r} vs torch {theirs!r} "
        f"({_ulps_apart(out.data, theirs)} ulps apart)"
    )


@pytest.mark.parametrize(
    ("case", "point"), [p for p in _params("torch") if p.values[0].exact]
)
def test_exactly_rounded_ops_give_torch_bits(
    Value: type, case: Case, point: tuple[Number, ...]
) -> None:
    out, _ = _run_engine(Value, case, point)
    t_out, _ = _run_torch(case, point)
    assert float(out.data) == t_out.item()
    assert math.copysign(1.0, out.data) == math.copysign(1.0, t_out.item())


@pytest.mark.parametrize(("case", "point"), _params("torch"))
def test_gradients_match_torch_float64(Value: type, case: Case, point: tuple[Number, ...]) -> None:
    _, leaves = _run_engine(Value, case, point)
    _, t_leaves = _run_torch(case, point)
    for i, (leaf, t_leaf) in enumerate(zip(leaves, t_leaves)):
        theirs = _torch_grad(t_leaf)
        assert type(leaf.grad) in (int, float)
        assert _close(leaf.grad, theirs, GRAD_REL_TOL, GRAD_ABS_TOL), (
            f"{case.name} at {point}: d/dleaf{i} = {leaf.grad!r}, torch says {theirs!r}"
        )


def _central_difference(Value: type, case: Case, point: tuple[Number, ...], i: int) -> float:
    h = FD_STEP * max(1.0, abs(point[i]))  # relative step for large inputs (log at 1000)

    def f(shift: float) -> float:
        xs = [float(x) for x in point]
        xs[i] += shift
        return float(case.fn(*[Value(x) for x in xs]).data)

    return (f(h) - f(-h)) / (2 * h)


@pytest.mark.parametrize(("case", "point"), _params("fd"))
def test_gradients_match_central_differences(
    Value: type, case: Case, point: tuple[Number, ...]
) -> None:
    _, leaves = _run_engine(Value, case, point)
    for i, leaf in enumerate(leaves):
        fd = _central_difference(Value, case, point, i)
        assert math.isclose(leaf.grad, fd, rel_tol=FD_REL_TOL, abs_tol=FD_ABS_TOL), (
            f"{case.name} at {point}: d/dleaf{i} = {leaf.grad!r}, central difference {fd!r}"
        )


# --- saturation: large |x| must neither overflow nor lose the limit --------------------------


@pytest.mark.parametrize(
    ("x", "expected"),
    [(1000.0, 1.0), (-1000.0, -1.0), (1000, 1.0), (-1000, -1.0), (1e308, 1.0), (-1e308, -1.0),
     (20.0, 1.0)],
)
def test_tanh_of_large_magnitude_is_exactly_plus_or_minus_one_with_zero_grad(
    Value: type, x: Number, expected: float
) -> None:
    v = Value(x)
    t = v.tanh()
    assert t.data == expected and type(t.data) is float
    t.backward()
    assert v.grad == 0
    assert t.data == torch.tanh(torch.tensor(float(x), dtype=torch.float64)).item()


@pytest.mark.parametrize(
    ("x", "expected"),
    [(1000.0, 1.0), (-1000.0, 0.0), (1000, 1.0), (-1000, 0.0), (1e308, 1.0), (-1e308, 0.0),
     (800.0, 1.0)],
)
def test_sigmoid_of_large_magnitude_saturates_without_overflow(
    Value: type, x: Number, expected: float
) -> None:
    v = Value(x)
    s = v.sigmoid()
    assert s.data == expected and type(s.data) is float
    s.backward()
    assert v.grad == 0
    assert s.data == torch.sigmoid(torch.tensor(float(x), dtype=torch.float64)).item()


def test_sigmoid_of_moderately_negative_input_keeps_relative_precision(Value: type) -> None:
    # for x < 0 the reference computes e/(1+e) with e = exp(x): a tiny result keeps full relative
    # precision (and its gradient s*(1-s) with it)
    v = Value(-700.0)
    s = v.sigmoid()
    expected = math.exp(-700.0) / (1.0 + math.exp(-700.0))
    assert s.data == expected
    theirs = torch.sigmoid(torch.tensor(-700.0, dtype=torch.float64)).item()
    assert math.isclose(s.data, theirs, rel_tol=1e-15)
    s.backward()
    assert math.isclose(v.grad, expected * (1 - expected), rel_tol=1e-15)
