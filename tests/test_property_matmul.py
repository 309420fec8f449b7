"""Property tests on random matmul graphs: the compiled engine's matmul kernels, bit for bit.

Hypothesis draws small graphs of matrix products -- ``a @ b`` (2-D, with 1-D operands, batched
3-D with broadcasting), ``dense(x, w[, b])`` (2-D and 3-D x), chained products (one product's
outputs, through tanh, relu or nothing, as the next one's operand rows: op nodes, not leaves),
aliasing (one array on both sides: ``a @ a.T``, ``a.T @ a``, ``a @ a``, ``dense(a, a[, b])``,
``h @ h.T``) and sibling products of one operand (``a @ b`` and ``a @ c``: one depth of a
replay, their sets of columns in one panel cache) -- with shapes
around every threshold of the kernels: products per sum (m) around the 8/16/32-wide runs and
replay's panel rows (32..4096 products), outputs per row around array_matmul's runs of 32, 16
and 8 and replay's groups of 32 and 16, rows enough for a replay's panels to be made (a set's
second sighting), hit and -- with 9 to 11 sets of 32 columns a row -- overflowed (8 are kept);
and, now and then, int leaves (all of an array, or some elements) and special values (-0.0,
+-inf, nan, +-5e-324, rows of -0.0) in the data. The loss is the sum or mean of a final
elementwise op. For each graph:

1. the compiled MLArray against the reference one: every product's values, the loss, and every
   leaf gradient after backward();
2. the same for every vector instruction set this machine runs (``_engine._set_vector_isa``);
3. a ``michigrad.Graph`` (compiled, and reference) records the loss once; the leaves' data then
   change two or three times (in place through the elements' ``.data``, or ``g.feed(batch)``
   for an input array bound with ``inputs=``), and each replayed forward value, the recorded
   products' values and the backward leaf gradients are a fresh build's -- the compiled graph
   replayed under every instruction set in turn.

Comparisons use conftest's ``bits`` (NaNs alike; -0.0 != 0.0; 1 != 1.0).

The examples are derandomized (the same graphs on every run, no example database): a normal run
takes about 30 s on two cores. MICHIGRAD_FUZZ_EXAMPLES=N runs N examples per test instead (for
long runs, or under ASan); MICHIGRAD_FUZZ_SEED=S draws other graphs (a random run, seeded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, seed, settings
from hypothesis import strategies as st

from michigrad import Graph, _engine
from michigrad.array import array_class, dense
from conftest import bits

COMPILED, REFERENCE = array_class("compiled"), array_class("reference")
IN_USE, SUPPORTED = _engine._vector_isa()

EXAMPLES = int(os.environ.get("MICHIGRAD_FUZZ_EXAMPLES", "0")) or None
SEED = os.environ.get("MICHIGRAD_FUZZ_SEED")  # other graphs than the derandomized ones

# products per sum, and outputs per row: either side of every width the kernels switch at
M_SIZES = [1, 2, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 100]
Q_SIZES = [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 64, 70]
WIDE_Q = [288, 300, 352]  # 9, 9 (+ 12) and 11 sets of 32 columns a row: more than 8 panels
PANEL_M = [32, 33, 40, 64]  # rows of products a panel is made for (32..4096)
PANEL_Q = [16, 17, 31, 32, 33, 48, 64, 70]  # outputs per row that make runs of 16 or 32
MAX_PRODUCTS = 20000  # per product (m * outputs): keeps an example's reference build short
WIDE_PRODUCTS = 30000  # three rows of 288 outputs of 32 products: a set's third sighting

SPECIALS = [-0.0, 0.0, math.inf, -math.inf, math.nan, 5e-324, -5e-324]


def fuzz_settings(default: int) -> Callable[[Any], Any]:
    def decorate(test: Any) -> Any:
        test = settings(max_examples=EXAMPLES or default, deadline=None,
                        derandomize=SEED is None, database=None, print_blob=False,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.data_too_large])(test)
        return test if SEED is None else seed(int(SEED))(test)
    return decorate


@pytest.fixture(autouse=True, scope="module")
def restore_isa() -> Iterator[None]:
    yield
    _engine._set_vector_isa(IN_USE)


# --- the graphs -----------------------------------------------------------------------------


@dataclass
class Spec:
    """A drawn graph: its kind and shapes, the ops around the products, how the leaves' data are
    made (a seed; per array: float, int or mixed) and replayed."""
    kind: str
    variant: str
    shapes: list[tuple[int, ...]]
    act: str = "none"  # between a chain's two products
    final: str = "none"
    loss: str = "sum"
    extra_term: bool = False  # a chain's loss also reads the first product's outputs
    modes: list[str] = field(default_factory=list)  # per leaf array: float, int, mixed
    specials: list[bool] = field(default_factory=list)  # per data set (capture, then each step)
    seed: int = 0
    int_changes: bool = False  # a replay step may change which leaves hold ints
    feed: bool = False  # replay: the first array is the Graph's inputs, fed each step
    steps: int = 2

    def __post_init__(self) -> None:
        self.modes = self.modes or ["float"] * len(self.shapes)
        self.specials = self.specials or [False] * (self.steps + 1)


ACTS: dict[str, Callable[[Any], Any]] = {
    "none": lambda h: h,
    "tanh": lambda h: h.tanh(),
    "relu": lambda h: h.relu(),
}
FINALS: dict[str, Callable[[Any], Any]] = {
    "none": lambda h: h,
    "tanh": lambda h: h.tanh(),
    "relu": lambda h: h.relu(),
    "square": lambda h: h * h,
    "half": lambda h: h * 0.5,
}


def products_of(spec: Spec, arrays: list[Any]) -> list[Any]:
    """The graph's products (MLArrays), the last one the loss reads."""
    kind, variant = spec.kind, spec.variant
    if kind in ("matmul", "batched"):
        a, b = arrays
        return [a @ b]
    if kind == "siblings":  # two products of one operand at one depth: one replay run
        if variant == "matmul":
            return [arrays[0] @ arrays[1], arrays[0] @ arrays[2]]
        return [dense(arrays[0], arrays[1]), dense(arrays[0], arrays[2])]
    if kind == "dense":
        return [dense(*arrays)]
    if kind == "alias":
        a = arrays[0]
        if variant == "a@a.T":
            return [a @ a.T]
        if variant == "a.T@a":
            return [a.T @ a]
        if variant == "a@a":
            return [a @ a]
        if variant == "dense(a,a,b)":
            return [dense(a, a, arrays[1])]
        return [dense(a, a)]
    # a chain: the first product's outputs (through an activation) are the second's operand
    first_kind, second_kind = variant.split(">")
    if first_kind == "matmul":
        y = arrays[0] @ arrays[1]
    else:
        y = dense(arrays[0], arrays[1], arrays[2] if first_kind == "dense+b" else None)
    h = ACTS[spec.act](y)
    w2 = arrays[-1]
    if second_kind == "h@w":
        z = h @ w2
    elif second_kind == "w@h":
        z = w2 @ h
    elif second_kind == "dense":
        z = dense(h, w2)
    else:  # "h@h.T": the activation's nodes on both sides
        z = h @ h.T
    return [y, z]


def loss_of(spec: Spec, products: list[Any]) -> Any:
    out = FINALS[spec.final](products[-1])
    loss = out.sum() if spec.loss == "sum" else out.mean()
    if spec.kind == "siblings":
        loss = loss + FINALS[spec.final](products[0]).sum()
    elif spec.extra_term:
        loss = loss + (products[0] * 0.25).sum()
    return loss


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    kind = draw(st.sampled_from(["alias", "siblings", "batched", "chain", "dense", "matmul"]))
    sizes = draw(st.integers(0, 3))
    if sizes == 0:  # more sets of 32 columns a row than the panels kept
        m, q = draw(st.sampled_from(PANEL_M)), draw(st.sampled_from(WIDE_Q))
    elif sizes == 1:  # rows a panel is made for, runs of 16 or 32 outputs: hits
        m, q = draw(st.sampled_from(PANEL_M + [65, 100])), draw(st.sampled_from(PANEL_Q))
    else:  # anywhere around the thresholds
        m, q = draw(st.sampled_from(M_SIZES)), draw(st.sampled_from(Q_SIZES))
    budget_rows = max(1, (WIDE_PRODUCTS if sizes == 0 else MAX_PRODUCTS) // (m * q))
    n = min(draw(st.integers(3 if sizes < 2 else 1, 12)), budget_rows)
    variant = ""
    if kind == "matmul":
        variant = draw(st.sampled_from(["2d", "2d", "2d", "1d@2d", "2d@1d", "1d@1d"]))
        shapes = [(m,) if variant.startswith("1d") else (n, m),
                  (m,) if variant.endswith("1d") else (m, q)]
    elif kind == "batched":
        nb = draw(st.integers(2, 4))
        n = max(1, min(n, budget_rows // nb))
        variant = draw(st.sampled_from(["3d@3d", "3d@3d", "1@3d", "3d@1", "3d@2d", "2d@3d"]))
        a_b = 1 if variant == "1@3d" else nb
        b_b = 1 if variant == "3d@1" else nb
        a_shape = (n, m) if variant == "2d@3d" else (a_b, n, m)
        b_shape = (m, q) if variant == "3d@2d" else (b_b, m, q)
        shapes = [a_shape, b_shape]
    elif kind == "siblings":  # a @ b and a @ c, or dense(x, w1) and dense(x, w2)
        variant = draw(st.sampled_from(["matmul", "dense"]))
        q2 = draw(st.sampled_from(Q_SIZES + WIDE_Q[:1]))
        n = min(n, max(1, MAX_PRODUCTS // (m * (q + q2))))
        shapes = [(n, m)] + ([(m, q), (m, q2)] if variant == "matmul" else [(q, m), (q2, m)])
    elif kind == "dense":
        variant = draw(st.sampled_from(["bias", "no bias", "bias, 3-d x"]))
        x_shape = (2, max(1, n // 2), m) if variant == "bias, 3-d x" else (n, m)
        shapes = [x_shape, (q, m)] + ([(q,)] if variant.startswith("bias") else [])
    elif kind == "alias":
        variant = draw(st.sampled_from(["a@a.T", "a.T@a", "a@a", "dense(a,a)", "dense(a,a,b)"]))
        # a (n, m): a @ a.T has n x n outputs of m products, a.T @ a m x m of n
        if variant == "a@a":
            n = m = min(m, 64)
        elif variant == "a.T@a":
            m = min(m, 65)
            n = min(draw(st.sampled_from(M_SIZES)), max(1, MAX_PRODUCTS // (m * m)))
        else:
            n = min(draw(st.sampled_from(Q_SIZES + [n])), max(1, int(math.sqrt(MAX_PRODUCTS // m))))
        shapes = [(n, m)] + ([(n,)] if variant == "dense(a,a,b)" else [])
    else:  # a chain: (n, m) -> (n, q) -> (n, q2), or w2 @ h: (r, n) @ (n, q)
        first = draw(st.sampled_from(["matmul", "dense", "dense+b"]))
        second = draw(st.sampled_from(["h@w", "h@w", "w@h", "dense", "h@h.T"]))
        variant = f"{first}>{second}"
        q2 = draw(st.sampled_from(Q_SIZES))
        q = min(q, 70)  # the second product's products per sum (or its outputs per row)
        n = min(n, max(1, MAX_PRODUCTS // (m * q)), max(1, MAX_PRODUCTS // (q * q2)))
        if second == "h@h.T":
            n = min(n, max(1, int(math.sqrt(MAX_PRODUCTS // q))))
        shapes = [(n, m), (m, q) if first == "matmul" else (q, m)]
        if first == "dense+b":
            shapes.append((q,))
        if second == "h@w":
            shapes.append((q, q2))
        elif second == "w@h":
            shapes.append((min(q2, max(1, MAX_PRODUCTS // (n * q))), n))
        elif second == "dense":
            shapes.append((q2, q))
    spec = Spec(kind, variant, shapes)
    if kind == "chain":
        spec.act = draw(st.sampled_from(sorted(ACTS)))
        spec.extra_term = draw(st.booleans())
    spec.final = draw(st.sampled_from(sorted(FINALS)))
    spec.loss = draw(st.sampled_from(["sum", "mean"]))
    spec.steps = draw(st.integers(2, 3))
    spec.modes = ["float"] * len(shapes)
    if draw(st.integers(0, 4)) == 0:  # int leaves: one array or more, all ints or some
        spec.modes = [draw(st.sampled_from(["float", "int", "mixed"])) for _ in shapes]
        spec.modes[draw(st.integers(0, len(shapes) - 1))] = draw(st.sampled_from(["int", "mixed"]))
        spec.int_changes = True
    else:
        spec.int_changes = draw(st.integers(0, 7)) == 0  # ints may come in at a replay step
    spec.specials = [False] * (spec.steps + 1)
    if draw(st.integers(0, 3)) == 0:  # special values, at capture or at a replay step
        spec.specials = [draw(st.booleans()) for _ in range(spec.steps + 1)]
    spec.seed = draw(st.integers(0, 2**32 - 1))
    spec.feed = draw(st.booleans())
    return spec


# --- the data -------------------------------------------------------------------------------


def leaf_data(spec: Spec, step: int) -> list[tuple[list[Any], tuple[int, ...]]]:
    """Each leaf array's numbers (flat, C order, Python ints and floats) and shape, for the
    capture (step 0) or a replay step."""
    rng = np.random.default_rng([spec.seed, step])
    out = []
    for shape, mode in zip(spec.shapes, spec.modes):
        size = math.prod(shape)
        if step and spec.int_changes and rng.integers(0, 3) == 0:
            mode = ["float", "int", "mixed"][rng.integers(0, 3)]
        floats = rng.uniform(-1.5, 1.5, size).tolist()
        ints = rng.integers(-3, 4, size).tolist()
        if mode == "float":
            flat = floats
        elif mode == "int":
            flat = ints
        else:
            pick = rng.integers(0, 2, size)
            flat = [i if p else x for i, x, p in zip(ints, floats, pick)]
        if spec.specials[step]:
            for k in rng.integers(0, size, rng.integers(1, 5)).tolist():
                flat[k] = SPECIALS[rng.integers(0, len(SPECIALS))]
            if len(shape) >= 2 and rng.integers(0, 2) == 0:  # a whole row of -0.0
                row = shape[-1]
                start = int(rng.integers(0, size // row)) * row
                flat[start:start + row] = [-0.0] * row
        out.append((flat, shape))
    return out


def nested(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0]
    return [nested(flat[k * step:(k + 1) * step], shape[1:]) for k in range(shape[0])]


def make_arrays(M: type, data: list[tuple[list[Any], tuple[int, ...]]]) -> list[Any]:  # noqa: N803
    arrays = []
    for flat, shape in data:
        if all(type(x) is float for x in flat):
            arrays.append(M(np.array(flat, dtype=np.float64).reshape(shape)))
        else:
            arrays.append(M(nested(flat, shape)))
    return arrays


def set_data(arrays: list[Any], data: list[tuple[list[Any], tuple[int, ...]]],
             g: Any = None) -> None:
    """The arrays' elements take the new numbers: in place, or the first array through
    g.feed (a float64 array when all floats, else nested lists: ints stay ints)."""
    for k, (a, (flat, shape)) in enumerate(zip(arrays, data)):
        if k == 0 and g is not None:
            floats = all(type(x) is float for x in flat)
            batch = (np.array(flat, dtype=np.float64).reshape(shape) if floats
                     else nested(flat, shape))
            g.feed(batch)
            continue
        for v, x in zip(a.values(), flat):
            v.data = x


# --- the comparisons ------------------------------------------------------------------------


def leaf_grads(arrays: list[Any]) -> list[tuple]:
    return [bits(v.grad) for a in arrays for v in a.values()]


def zero_grads(arrays: list[Any]) -> None:
    for a in arrays:
        for v in a.values():
            v.grad = 0


def value_bits(products: list[Any]) -> list[list[tuple]]:
    return [[bits(v.data) for v in p.values()] for p in products]


def fresh(spec: Spec, arrays: list[Any]) -> tuple[tuple, list, list]:
    """A fresh build over the arrays' current data: the loss's bits, the products' values and
    the leaf gradients after backward() (the leaves' gradients zeroed first)."""
    zero_grads(arrays)
    products = products_of(spec, arrays)
    loss = loss_of(spec, products)
    loss.backward()
    return bits(loss.item()), value_bits(products), leaf_grads(arrays)


def describe(spec: Spec) -> str:
    return (f"{spec.kind} {spec.variant} {spec.shapes} act={spec.act} final={spec.final} "
            f"loss={spec.loss} extra_term={spec.extra_term} modes={spec.modes} "
            f"int_changes={spec.int_changes} specials={spec.specials} seed={spec.seed} "
            f"feed={spec.feed} steps={spec.steps}")


def assert_same(got: tuple, expected: tuple, what: str, spec: Spec) -> None:
    names = ("the loss", "the products' values", "the leaf gradients")
    for name, g, e in zip(names, got, expected):
        assert g == e, f"{what}: not the expected bits in {name}, on {describe(spec)}"


def counters() -> tuple[int, int]:
    stats = _engine._arena_stats()
    return stats["panel_outputs"], stats["row_copied_outputs"]


def note_events(spec: Spec) -> None:
    event(f"kind: {spec.kind}")
    if spec.shapes[-1][-1] in WIDE_Q:
        event("more sets of 32 columns a row than panels kept")
    if any(mode != "float" for mode in spec.modes):
        event("int leaves")
    if any(spec.specials):
        event("special values")


# --- the properties -------------------------------------------------------------------------


# graphs every run checks, whatever hypothesis draws: runs of 32, 16 and 8 and lone outputs in
# one row, int and float rows side by side, special values
PINNED_FRESH = [
    Spec("matmul", "2d", [(5, 33), (33, 70)], final="tanh", modes=["mixed", "float"], seed=1,
         specials=[True, False, False]),
    Spec("dense", "bias", [(9, 64), (57, 64), (57,)], final="square", loss="mean",
         modes=["float", "float", "int"], seed=2, specials=[False, True, True]),
]


@fuzz_settings(default=150)
@example(spec=PINNED_FRESH[0])
@example(spec=PINNED_FRESH[1])
@given(spec=specs())
def test_compiled_matmul_graphs_give_the_reference_bits_on_every_isa(spec: Spec) -> None:
    note_events(spec)
    data = leaf_data(spec, 0)
    expected = fresh(spec, make_arrays(REFERENCE, data))
    before = counters()
    try:
        for isa in SUPPORTED:
            _engine._set_vector_isa(isa)
            got = fresh(spec, make_arrays(COMPILED, data))
            assert_same(got, expected, f"compiled ({isa}) against reference", spec)
    finally:
        _engine._set_vector_isa(IN_USE)
    if counters()[1] > before[1]:
        event("backward: rows copied")


# replays every run checks: panels made and hit (a dense layer's 48 outputs a sample: 32 + 16,
# fed inputs), and overflowed (11 sets of 32 columns a row, 8 panels kept)
PINNED_REPLAYS = [
    Spec("dense", "bias", [(6, 40), (48, 40), (48,)], final="tanh", seed=3, feed=True, steps=3,
         specials=[False] * 4),
    Spec("matmul", "2d", [(3, 32), (32, 352)], final="half", loss="mean", seed=4, steps=2,
         specials=[False, False, True]),
    Spec("siblings", "matmul", [(4, 33), (33, 288), (33, 48)], final="relu", seed=5, steps=2,
         modes=["float", "float", "float"], int_changes=True, specials=[False] * 3),
]


@fuzz_settings(default=60)
@example(spec=PINNED_REPLAYS[0])
@example(spec=PINNED_REPLAYS[1])
@example(spec=PINNED_REPLAYS[2])
@given(spec=specs())
def test_replayed_matmul_graphs_give_a_fresh_builds_bits(spec: Spec) -> None:
    note_events(spec)
    data = leaf_data(spec, 0)
    ref_arrays, com_arrays = make_arrays(REFERENCE, data), make_arrays(COMPILED, data)
    ref_products, com_products = products_of(spec, ref_arrays), products_of(spec, com_arrays)
    inputs = (lambda arrays: arrays[0]) if spec.feed else (lambda arrays: None)
    ref_graph = Graph(loss_of(spec, ref_products), inputs=inputs(ref_arrays))
    com_graph = Graph(loss_of(spec, com_products), inputs=inputs(com_arrays))
    panels_before = counters()[0]
    try:
        for step in range(1, spec.steps + 1):
            data = leaf_data(spec, step)
            set_data(ref_arrays, data, ref_graph if spec.feed else None)
            set_data(com_arrays, data, com_graph if spec.feed else None)
            expected = fresh(spec, ref_arrays)

            zero_grads(ref_arrays)
            replayed = ref_graph.forward()
            ref_graph.backward()
            got = (bits(replayed), value_bits(ref_products), leaf_grads(ref_arrays))
            assert_same(got, expected, f"reference replay, step {step}", spec)

            for isa in SUPPORTED:  # one recorded graph, replayed with each copy in turn
                _engine._set_vector_isa(isa)
                zero_grads(com_arrays)
                replayed = com_graph.forward()
                com_graph.backward()
                got = (bits(replayed), value_bits(com_products), leaf_grads(com_arrays))
                assert_same(got, expected, f"compiled replay ({isa}), step {step}", spec)
                assert_same(fresh(spec, com_arrays), expected,
                            f"compiled fresh build ({isa}), step {step}", spec)
    finally:
        _engine._set_vector_isa(IN_USE)
        ref_graph.close()
        com_graph.close()
    if counters()[0] > panels_before:
        event("replay: outputs summed on panels")
    if spec.feed:
        event("replay: fed inputs")
