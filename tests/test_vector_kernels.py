"""The matmul kernels' vector loops (_vector_kernels.pxi), one copy per x86-64 instruction set:
every copy this machine runs gives the reference engine's bits.

array_matmul sums 32 outputs of a row side by side where 32 are left, then 8, then one at a
time; the backward sweep adds the contributions of four outputs at once into copied rows. The
compiled engine picks the widest copy the CPU runs when it loads (MICHIGRAD_VECTOR_ISA caps
it); each test here runs every copy in turn, on shapes that reach each of those paths, and
compares values and gradients bit for bit with the reference engine's, which sums one product
at a time. An instruction set this machine does not run is refused with a clear error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from michigrad import _engine
from michigrad.array import array_class, dense
from conftest import bits

COMPILED, REFERENCE = array_class("compiled"), array_class("reference")
ALL_ISAS = ["sse2", "avx2", "avx512f"]  # x86-64's copies; elsewhere there is one, "baseline"
IN_USE, SUPPORTED = _engine._vector_isa()


@pytest.fixture(autouse=True)
def restore_isa() -> Iterator[None]:
    yield
    _engine._set_vector_isa(IN_USE)


def flat(x: Any) -> list:
    return [y for item in x for y in flat(item)] if isinstance(x, list) else [x]


def number(x: Any) -> Any:
    """A Value's or a 0-d array's number (an array's .data is its element)."""
    while hasattr(x, "data"):
        x = x.data
    return x


def run(M: type, graph: Any, seed: int) -> list:
    """The bits of the graph's loss, its matmul's values and every array's gradients."""
    loss, product, arrays = graph(M, np.random.default_rng(seed))
    loss.backward()
    out = [bits(number(loss))] + [bits(number(v)) for v in flat(product.to_list())]
    return out + [bits(g) for a in arrays for g in flat(a.grad().to_list())]


def uniform(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(-2.0, 2.0, shape)


# (M, rng) -> (loss, the product, the arrays whose gradients are compared). Output rows of 70
# are two runs of 32 and six alone; of 45, 32 + 8 + five alone; of 16, two runs of 8.

def matmul_70(M, rng):
    a, b = M(uniform(rng, 5, 64)), M(uniform(rng, 64, 70))
    c = a @ b
    return c.tanh().sum(), c, [a, b]


def matmul_45_short_rows(M, rng):  # products of 3: the sums are short, the rows many
    a, b = M(uniform(rng, 9, 3)), M(uniform(rng, 3, 45))
    c = a @ b
    return (c * c).sum(), c, [a, b]


def matmul_one_term(M, rng):  # m = 1: one product per sum
    a, b = M(uniform(rng, 6, 1)), M(uniform(rng, 1, 40))
    c = a @ b
    return c.sum(), c, [a, b]


def square_64(M, rng):  # W1's shape: the backward sweep's four-output groups on copied rows
    a, b = M(uniform(rng, 64, 64)), M(uniform(rng, 64, 64))
    c = a @ b
    return c.tanh().sum(), c, [a, b]


def dense_16(M, rng):  # a dense layer: each input row's 16 outputs, 8 at a time, with a bias
    x, w, bias = M(uniform(rng, 40, 48)), M(uniform(rng, 16, 48)), M(uniform(rng, 16))
    out = dense(x, w, bias)
    return out.tanh().sum(), out, [x, w, bias]


def batched_40(M, rng):
    a, b = M(uniform(rng, 3, 7, 33)), M(uniform(rng, 3, 33, 40))
    c = a @ b
    return (c.relu() * 0.5).sum(), c, [a, b]


def matmul_of_an_op(M, rng):  # b's columns are an op's outputs, not leaves: the sweep's mg_axpy4
    a, b0 = M(uniform(rng, 6, 40)), M(uniform(rng, 40, 36))
    c = a @ b0.tanh()
    return c.tanh().sum(), c, [a, b0]


GRAPHS = [matmul_70, matmul_45_short_rows, matmul_one_term, square_64, dense_16, batched_40,
          matmul_of_an_op]


def test_the_copy_in_use_is_the_widest_this_machine_runs_unless_capped() -> None:
    assert IN_USE in SUPPORTED
    assert SUPPORTED[0] in ("sse2", "baseline")
    if "MICHIGRAD_VECTOR_ISA" not in os.environ:
        assert IN_USE == SUPPORTED[-1]


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.__name__)
def test_every_copy_gives_the_reference_bits(isa: str, graph: Any) -> None:
    expected = run(REFERENCE, graph, seed=7)
    if isa not in SUPPORTED:  # another machine's copy: refused, and the one in use stays
        with pytest.raises(ValueError, match=f"'{isa}' are not ones this machine runs"):
            _engine._set_vector_isa(isa)
        assert _engine._vector_isa()[0] == IN_USE
        isa = IN_USE
    _engine._set_vector_isa(isa)
    assert _engine._vector_isa()[0] == isa
    assert run(COMPILED, graph, seed=7) == expected


def test_the_copies_agree_on_a_training_step_with_ints_and_replay() -> None:
    # int data takes the one-at-a-time path beside vector runs in the same output rows
    from michigrad import Graph

    def step() -> list:
        rng = np.random.default_rng(3)
        w = COMPILED(uniform(rng, 40, 36))
        x = COMPILED(rng.integers(-3, 4, (36, 48)).tolist())
        loss = ((w @ x).tanh() ** 2).mean()
        g = Graph(loss)
        g.forward()
        g.backward()
        return [bits(number(loss))] + [bits(v) for v in flat(w.grad().to_list())]

    results = {}
    for isa in SUPPORTED:
        _engine._set_vector_isa(isa)
        results[isa] = step()
    assert all(r == results[SUPPORTED[0]] for r in results.values())


def test_an_unknown_name_is_refused_and_changes_nothing() -> None:
    with pytest.raises(ValueError, match=r"'sse3' are not ones this machine runs \(it runs \["):
        _engine._set_vector_isa("sse3")
    assert _engine._vector_isa() == (IN_USE, SUPPORTED)


def _import_with(cap: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MICHIGRAD_VECTOR_ISA=cap)
    code = "from michigrad import _engine; isa, supported = _engine._vector_isa(); print(isa, *supported)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("cap", ["sse2", " AVX2", "avx512f"])
def test_the_environment_variable_caps_the_copy_at_import(cap: str) -> None:
    # the widest copy the process runs up to the cap (its only one, off x86-64). The process's
    # own list: under valgrind, which hides AVX-512, this one's differs
    done = _import_with(cap)
    assert done.returncode == 0, done.stderr
    isa, *supported = done.stdout.split()
    assert isa == supported[min(ALL_ISAS.index(cap.strip().lower()), len(supported) - 1)]


def test_an_unknown_cap_stops_the_import_with_a_clear_error() -> None:
    done = _import_with("avx1024")
    assert done.returncode != 0
    assert ("ValueError: michigrad: MICHIGRAD_VECTOR_ISA='avx1024' is not one of sse2, avx2, "
            "avx512f (it caps the vector kernels' instruction set)") in done.stderr
