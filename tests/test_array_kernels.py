"""The array kernels of issue #5 (the interface MLArray is built on), against both kernel modules.

`michigrad._engine` (compiled, _arrays.pxi) and `michigrad._reference_arrays` (reference Values)
implement the same functions. Each kernel must make exactly the nodes the scalar ops make (same
bits, int flags, labels and children), so values and gradients are checked against the scalar
engine, against PyTorch (float64) and, between the two modules, for bit-identity. Errors must be
raised before any node is made; a store owns its nodes' references and frees them when dropped.
"""

from __future__ import annotations

import gc
import importlib
import math
import random
import re
import sys
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from michigrad import _engine
from conftest import bits

KERNEL_MODULES = {"compiled": "michigrad._engine", "reference": "michigrad._reference_arrays"}
VALUE_MODULES = {"compiled": "michigrad._engine", "reference": "michigrad._reference"}


def kernel_module(name: str):
    try:
        return importlib.import_module(KERNEL_MODULES[name])
    except ImportError as exc:  # pragma: no cover - both modules exist
        pytest.fail(f"the {name} kernels cannot be imported: {exc}")


@pytest.fixture
def K(engine):  # noqa: N802 - the kernel module, short because every line uses it
    return kernel_module(engine)


def pos(*items) -> np.ndarray:
    return np.ascontiguousarray(np.array(items, dtype=np.int64))


def arange(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def numbers(K, xs):
    """A store of leaves holding xs (ints stay ints)."""
    data = np.array([float(x) for x in xs], dtype=np.float64)
    is_int = np.array([type(x) is int for x in xs], dtype=bool)
    return K.array_from_numbers(data, is_int)


def element_bits(K, store, n):
    return [bits(x) for x in K.array_numbers(store, arange(n))]


def grad_bits(K, store, n):
    return [bits(v.grad) for v in K.array_values(store, arange(n))]


def live() -> int:
    return _engine._arena_stats()["live"]


# ----------------------------------------------------------------------------- ops vs scalar Values

UNARY_SCALAR = {
    "exp": lambda v, c: v.exp(),
    "log": lambda v, c: v.log(),
    "tanh": lambda v, c: v.tanh(),
    "relu": lambda v, c: v.relu(),
    "sigmoid": lambda v, c: v.sigmoid(),
    "abs": lambda v, c: abs(v),
    "powc": lambda v, c: v**c,
}
UNARY_INPUTS = [3, -2, 0, 0.5, -1.25, 2.0, -0.0, 7, 1e-3]


def positive(xs):
    return [x for x in xs if x > 0]


@pytest.mark.parametrize(("op", "c"), [(op, 0.0) for op in UNARY_SCALAR if op != "powc"]
                         + [("powc", 2), ("powc", 3), ("powc", -1), ("powc", 0.5), ("powc", 2.0)])
def test_unary_makes_the_nodes_the_scalar_op_makes(K, Value, op, c):
    xs = positive(UNARY_INPUTS) if op == "log" or (op == "powc" and (c == 0.5 or c == -1)) else UNARY_INPUTS
    store = numbers(K, xs)
    out = K.array_unary(op, store, arange(len(xs)), c)
    leaves = [Value(x) for x in xs]
    want = [UNARY_SCALAR[op](v, c) for v in leaves]
    got = K.array_values(out, arange(len(xs)))
    assert [bits(v.data) for v in got] == [bits(v.data) for v in want]
    assert [v._op for v in got] == [v._op for v in want]
    sources = K.array_values(store, arange(len(xs)))
    for g, s in zip(got, sources):
        assert g._children == (s,)
    # gradients: the same bits as the scalar graph's
    for g, w in zip(got, want):
        g.backward()
        w.backward()
    assert [bits(s.grad) for s in sources] == [bits(v.grad) for v in leaves]


@pytest.mark.parametrize("op", ["add", "mul", "pow"])
def test_binary_makes_the_nodes_the_scalar_op_makes(K, Value, op):
    xs = [3, -2, 0.5, 2.0, 1.5, 4, 0, -0.0] if op != "pow" else [3, 2, 0.5, 2.0, 1.5, 4, 1, 7]
    ys = [2, 5, -1.5, 3, 0.25, -0.5, 3, 0] if op != "pow" else [2, 3, -1.5, 3, 0.25, -0.5, 10, 0]
    a, b = numbers(K, xs), numbers(K, ys)
    n = len(xs)
    out = K.array_binary(op, a, arange(n), b, arange(n)[::-1].copy())
    fn = {"add": lambda u, v: u + v, "mul": lambda u, v: u * v, "pow": lambda u, v: u**v}[op]
    lx, ly = [Value(x) for x in xs], [Value(y) for y in ys]
    want = [fn(u, v) for u, v in zip(lx, ly[::-1])]
    got = K.array_values(out, arange(n))
    assert [bits(v.data) for v in got] == [bits(v.data) for v in want]
    assert [v._op for v in got] == [v._op for v in want]
    for g, w in zip(got, want):
        g.backward()
        w.backward()
    assert grad_bits(K, a, n) == [bits(v.grad) for v in lx]
    assert grad_bits(K, b, n) == [bits(v.grad) for v in ly]


@pytest.mark.parametrize("k", [0, 1, 2, 5, 64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_rows_are_michigrad_linear_to_the_last_bit(K, Value, engine, k, with_bias):
    linear = importlib.import_module(VALUE_MODULES[engine]).linear
    rng = random.Random(k)
    n = 3
    wx = [rng.uniform(-1, 1) for _ in range(n * k)]
    xx = [rng.choice([rng.uniform(-3, 3), rng.randint(-3, 3)]) for _ in range(n * k)]
    bx = [rng.uniform(-1, 1) for _ in range(n)]
    w, x, b = numbers(K, wx), numbers(K, xx), numbers(K, bx)
    w_pos = arange(n * k).reshape(n, k)
    x_pos = arange(n * k).reshape(n, k)
    out = (K.array_linear(w, w_pos, x, x_pos, b, arange(n)) if with_bias
           else K.array_linear(w, w_pos, x, x_pos))
    ws, xs, bs = (K.array_values(s, arange(len(s))) for s in (w, x, b))
    got = K.array_values(out, arange(n))
    for r in range(n):
        want = linear(ws[r * k:(r + 1) * k], xs[r * k:(r + 1) * k], bs[r] if with_bias else None)
        assert bits(got[r].data) == bits(want.data)
        assert got[r]._op == "linear"
        assert got[r]._children == want._children


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("batches", [1, 2])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_major", [False, True])
def test_matmul_grid_is_array_linear_row_by_row(K, k, batches, with_bias, x_major):
    """array_matmul pairs every w row with every x row of its batch: node for node (bits, int
    kinds, children, gradients) what array_linear makes from the spelled-out positions."""
    rng = random.Random(f"{k}{batches}{with_bias}{x_major}")
    p_count, q_count = 3, 2
    mixed = lambda: rng.choice([rng.uniform(-3, 3), rng.randint(-3, 3)])  # ints take the int path
    w_rows = arange(batches * p_count * k)[::-1].copy().reshape(batches * p_count, k)
    x_rows = (arange(batches * q_count * k) * 5 % max(batches * q_count * k, 1)).reshape(batches * q_count, k)

    def run(kernel_call):
        w = numbers(K, [rng.uniform(-1, 1) for _ in range(batches * p_count * k)])
        x = numbers(K, [mixed() for _ in range(batches * q_count * k)])
        b = numbers(K, [mixed() for _ in range(batches * p_count)])
        out = kernel_call(w, x, b)
        if K is _engine:  # every reference counted once: each w entry Q times, each x entry P
            assert _engine._arena_check()
        total = K.array_reduce("sum", out, arange(len(out)).reshape(1, -1))
        K.array_backward(total, 0)
        stores = (w, x, b)
        held = [K.array_values(store, arange(len(store))) for store in stores]  # ids stay valid
        index = {id(v): (s, j) for s, values in enumerate(held) for j, v in enumerate(values)}
        nodes = K.array_values(out, arange(len(out)))
        return ([(bits(v.data), v._op, [index[id(c)] for c in v._children]) for v in nodes],
                [grad_bits(K, s, len(s)) for s in stores])

    def grid(w, x, b):
        bias = (b, arange(batches * p_count)) if with_bias else (None, None)
        return K.array_matmul(w, w_rows, x, x_rows, batches, *bias, x_major)

    def spelled_out(w, x, b):
        ps, qs = [], []
        for bt in range(batches):
            pairs = [(p, q) for p in range(p_count) for q in range(q_count)]
            if x_major:
                pairs = [(p, q) for q in range(q_count) for p in range(p_count)]
            ps += [bt * p_count + p for p, q in pairs]
            qs += [bt * q_count + q for p, q in pairs]
        bias = (b, np.array(ps, dtype=np.int64)) if with_bias else (None, None)
        return K.array_linear(w, np.ascontiguousarray(w_rows[ps]), x,
                              np.ascontiguousarray(x_rows[qs]), *bias)

    state = rng.getstate()
    want = run(spelled_out)
    rng.setstate(state)
    assert run(grid) == want
    assert len(want[0]) == batches * p_count * q_count


def test_matmul_grid_of_ints_is_exact_like_linear(K, Value):
    # [[1, 2], [3, 4]] @ [[5, 6], [7, 8]] in ints: ints out, as michigrad.linear gives them
    a, b = numbers(K, [1, 2, 3, 4]), numbers(K, [5, 6, 7, 8])
    out = K.array_matmul(a, arange(4).reshape(2, 2), b, pos([0, 2], [1, 3]), 1)
    assert K.array_numbers(out, arange(4)) == [19, 22, 43, 50]
    assert all(type(v) is int for v in K.array_numbers(out, arange(4)))
    half = numbers(K, [1, 2.5])  # one float row: that row's products are floats
    out = K.array_matmul(half, pos([0, 1]), b, pos([0, 2], [1, 3]), 1)
    assert K.array_numbers(out, arange(2)) == [22.5, 26.0]
    assert [type(v) for v in K.array_numbers(out, arange(2))] == [float, float]


@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_grid_of_floats_is_linear_to_the_last_bit(K, Value, engine, with_bias):
    """All-float rows take the kernel's fast sum: the same bits as michigrad.linear, special
    values included (-0.0 products summed from the int 0 give 0.0, inf - inf is nan)."""
    linear = importlib.import_module(VALUE_MODULES[engine]).linear
    specials = [-0.0, 0.0, 1.0, -1.5, float("inf"), float("-inf"), float("nan"), 5e-324, 1e308]
    rng = random.Random(with_bias)
    cases = [(1, [-0.0, 2.0], [1.0, -0.0, float("inf")], [-0.0, 1.0])]  # -0.0 products, 0 * inf
    for _ in range(30):
        k = rng.randint(1, 4)
        cases.append((k, [rng.choice(specials) for _ in range(2 * k)],  # 2 w rows
                      [rng.choice(specials) for _ in range(3 * k)],     # 3 x rows
                      [rng.choice(specials) for _ in range(2)]))
    for k, wx, xx, bx in cases:
        w, x, b = numbers(K, wx), numbers(K, xx), numbers(K, bx)
        bias = (b, arange(2)) if with_bias else (None, None)
        out = K.array_matmul(w, arange(2 * k).reshape(2, k), x, arange(3 * k).reshape(3, k), 1, *bias)
        ws, xs, bs = (K.array_values(s, arange(len(s))) for s in (w, x, b))
        want = [linear(ws[p * k:(p + 1) * k], xs[q * k:(q + 1) * k], bs[p] if with_bias else None)
                for p in range(2) for q in range(3)]
        assert element_bits(K, out, 6) == [bits(v.data) for v in want]


@pytest.mark.parametrize("x_major", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_wide_matmul_grids_are_linear_to_the_last_bit(K, Value, engine, x_major, with_bias):
    """Output rows of 8 or more take the kernel's side-by-side sums (eight at a time, the shared
    operand row read once): still michigrad.linear's bits for every output, with special values,
    int rows mixed in (a group holding an int pair falls back to one sum at a time), widths that
    leave a remainder, and both layouts."""
    linear = importlib.import_module(VALUE_MODULES[engine]).linear
    specials = [-0.0, 0.0, 1.0, -1.5, float("inf"), float("-inf"), float("nan"), 5e-324, 1e308]
    rng = random.Random(f"{x_major}{with_bias}")
    for p_count, q_count, k in [(8, 8, 3), (9, 17, 2), (3, 16, 1), (16, 5, 4), (1, 8, 6)]:
        def number(row_has_ints):
            if row_has_ints and rng.random() < 0.7:
                return rng.randint(-3, 3)
            return rng.choice(specials) if rng.random() < 0.3 else rng.uniform(-2, 2)
        w_int_rows = {p for p in range(p_count) if rng.random() < 0.3}
        x_int_rows = {q for q in range(q_count) if rng.random() < 0.3}
        wx = [number(p in w_int_rows) for p in range(p_count) for _ in range(k)]
        xx = [number(q in x_int_rows) for q in range(q_count) for _ in range(k)]
        bx = [number(True) for _ in range(p_count)]
        w, x, b = numbers(K, wx), numbers(K, xx), numbers(K, bx)
        bias = (b, arange(p_count)) if with_bias else (None, None)
        out = K.array_matmul(w, arange(p_count * k).reshape(p_count, k), x,
                             arange(q_count * k).reshape(q_count, k), 1, *bias, x_major)
        ws, xs, bs = (K.array_values(s, arange(len(s))) for s in (w, x, b))
        pairs = [(p, q) for q in range(q_count) for p in range(p_count)] if x_major else \
            [(p, q) for p in range(p_count) for q in range(q_count)]
        want = [linear(ws[p * k:(p + 1) * k], xs[q * k:(q + 1) * k], bs[p] if with_bias else None)
                for p, q in pairs]
        got = K.array_numbers(out, arange(len(pairs)))
        assert [bits(v) for v in got] == [bits(v.data) for v in want]


@pytest.mark.parametrize("x_major", [False, True])
def test_batched_wide_matmul_grids_are_linear_to_the_last_bit(K, Value, engine, x_major):
    """The side-by-side sums read the inner operand transposed, batch by batch: three batches
    of 9 x 11 outputs (a group of eight and a remainder in each row), with a bias."""
    linear = importlib.import_module(VALUE_MODULES[engine]).linear
    rng = random.Random(f"batched{x_major}")
    batches, p_count, q_count, k = 3, 9, 11, 5
    w = numbers(K, [rng.uniform(-2, 2) for _ in range(batches * p_count * k)])
    x = numbers(K, [rng.uniform(-2, 2) for _ in range(batches * q_count * k)])
    b = numbers(K, [rng.uniform(-2, 2) for _ in range(batches * p_count)])
    out = K.array_matmul(w, arange(batches * p_count * k).reshape(-1, k), x,
                         arange(batches * q_count * k).reshape(-1, k), batches, b,
                         arange(batches * p_count), x_major)
    ws, xs, bs = (K.array_values(s, arange(len(s))) for s in (w, x, b))
    pairs = [(p, q) for q in range(q_count) for p in range(p_count)] if x_major else \
        [(p, q) for p in range(p_count) for q in range(q_count)]
    want = [linear(ws[(bt * p_count + p) * k:(bt * p_count + p + 1) * k],
                   xs[(bt * q_count + q) * k:(bt * q_count + q + 1) * k], bs[bt * p_count + p])
            for bt in range(batches) for p, q in pairs]
    got = K.array_numbers(out, arange(len(want)))
    assert [bits(v) for v in got] == [bits(v.data) for v in want]


@pytest.mark.parametrize(("batches", "p_rows", "q_rows", "k"), [
    (0, 0, 0, 3), (1, 0, 4, 2), (1, 4, 0, 2), (2, 0, 0, 5), (3, 3, 0, 0)])
def test_matmul_grid_with_no_output_makes_nothing(K, engine, batches, p_rows, q_rows, k):
    store = numbers(K, [1.0, 2.0, 3.0, 4.0, 5.0])
    before = stats_now(engine)
    w_rows = (arange(p_rows * k) % 5).reshape(p_rows, k)
    x_rows = (arange(q_rows * k) % 5).reshape(q_rows, k)
    out = K.array_matmul(store, w_rows, store, x_rows, batches)
    assert len(out) == 0
    if engine == "compiled":
        assert stats_now(engine) == before


def test_matmul_grid_references_and_frees_its_operands(K, engine):
    if engine == "compiled":
        gc.collect()
        before = live()
    a, b = numbers(K, [0.5, 1.5, -2.0, 3.0]), numbers(K, [1.0, 2.0])
    out = K.array_matmul(a, arange(4).reshape(2, 2), b, pos([0, 1]), 1, b, pos(0, 1))
    del a, b
    gc.collect()
    assert K.array_numbers(out, arange(2)) == [1.0 + 0.5 + 3.0, 2.0 + -2.0 + 6.0]
    if engine == "compiled":
        assert live() == before + 8  # the inputs stay alive through the outputs' references
        assert _engine._arena_check()
    del out
    gc.collect()
    if engine == "compiled":
        assert live() == before
        assert _engine._arena_check()
    # two batches of 3 w rows x 2 x rows, both layouts: w nodes used Q = 2 times, x nodes P = 3
    # times, biases Q times per batch; dropping the outputs gives every reference back
    a, b, bias = numbers(K, [0.5] * 12), numbers(K, [1.5] * 8), numbers(K, [2.0] * 6)
    outs = [K.array_matmul(a, arange(12).reshape(6, 2), b, arange(8).reshape(4, 2), 2,
                           bias, arange(6), x_major) for x_major in (False, True)]
    if engine == "compiled":
        assert _engine._arena_check()
    del a, b, bias
    gc.collect()
    assert [len(o) for o in outs] == [12, 12]
    del outs
    gc.collect()
    if engine == "compiled":
        assert live() == before
        assert _engine._arena_check()


def shared_blocks() -> int:
    return _engine._arena_stats()["shared_blocks"]


def test_matmul_rows_are_shared_and_live_as_long_as_a_node_reads_them(K, engine):
    """The compiled kernel stores each operand row once, as a block of children shared by the
    outputs that read it (batches * (P + Q) blocks), not once per output node. Each node still
    shows its own children, and a block keeps its nodes alive until its last reader is freed."""
    gc.collect()
    if engine == "compiled":
        before, blocks = live(), shared_blocks()
    a = numbers(K, [0.5, 1.5, -2.0, 3.0, 1.0, -1.0])  # 3 w rows of 2
    b = numbers(K, [1.0, 2.0, 4.0, -3.0])  # [[1, 2], [4, -3]]: x rows are its columns
    bias = numbers(K, [10, 20, 30])
    out = K.array_matmul(a, arange(6).reshape(3, 2), b, pos([0, 2], [1, 3]), 1, bias, arange(3))
    if engine == "compiled":
        assert shared_blocks() == blocks + 3 + 2
        assert _engine._arena_check()
    kept = K.array_values(out, pos(4))[0]  # output (2, 0): 30 + 1.0 * 1.0 + -1.0 * 4.0
    del out, a, b, bias
    gc.collect()
    if engine == "compiled":
        assert shared_blocks() == blocks + 2  # its w row (with its bias) and its x row
        assert live() == before + 1 + 5  # the node, its bias, 2 weights, 2 inputs
        assert _engine._arena_check()
    assert kept.data == 27.0
    assert [c.data for c in kept._children] == [30, 1.0, -1.0, 1.0, 4.0]
    kept.backward()
    assert [c.grad for c in kept._children] == [1, 1.0, 4.0, 1.0, -1.0]
    del kept
    gc.collect()
    if engine == "compiled":
        assert (live(), shared_blocks()) == (before, blocks)
        assert _engine._arena_check()
    # one input per row and no bias: two children, the node's own (no block)
    a, b = numbers(K, [2.0, 3.0]), numbers(K, [5.0, 7.0])
    out = K.array_matmul(a, arange(2).reshape(2, 1), b, arange(2).reshape(2, 1), 1)
    assert K.array_numbers(out, arange(4)) == [10.0, 14.0, 15.0, 21.0]
    if engine == "compiled":
        assert shared_blocks() == blocks
        assert _engine._arena_check()


def test_backward_sees_every_shared_row_after_the_visit_mark_wraps():
    """backward() marks a shared block as scanned with the sort's visit mark; when the mark wraps
    around (once in 2**32 sorts) every old mark is cleared, the blocks' too, or a block marked
    with the new mark long ago would be skipped and its nodes' gradients lost."""
    K = _engine
    a, b = numbers(K, [0.5, -1.0, 2.0, 0.25]), numbers(K, [1.5, 1.0, -0.5, 3.0])
    ea, eb = K.array_unary("exp", a, arange(4)), K.array_unary("tanh", b, arange(4))  # not leaves
    out = K.array_matmul(ea, arange(4).reshape(2, 2), eb, pos([0, 2], [1, 3]), 1)
    total = K.array_reduce("sum", out, arange(4).reshape(1, 4))
    stores = (a, b, ea, eb, out, total)
    runs = []
    for _ in range(2):  # the first run leaves its blocks marked 1; the second wraps to 1 again
        for store in stores:
            K.array_zero_grad(store, arange(len(store)))
        _engine._force_epoch_wrap()
        K.array_backward(total, 0)
        runs.append([grad_bits(K, s, 4) for s in (a, b)])
    ea_, eb_ = np.exp([0.5, -1.0, 2.0, 0.25]), np.tanh([1.5, 1.0, -0.5, 3.0])
    want_a = (eb_.reshape(2, 2).sum(axis=1)[None, :] * np.ones((2, 1))).reshape(-1) * ea_
    assert runs[0] == runs[1]
    np.testing.assert_allclose(K.array_grad(a, arange(4)), want_a, rtol=1e-12)
    assert all(g != 0 for g in K.array_grad(b, arange(4)))


# ------------------------------------------------------------------------------ the new ops

def reduce_rows(K, op, xs_rows):
    k = len(xs_rows[0])
    store = numbers(K, [x for row in xs_rows for x in row])
    return store, K.array_reduce(op, store, arange(len(xs_rows) * k).reshape(-1, k))


def test_sum_is_a_left_fold_with_plus_semantics(K):
    rows = [[1, 2, 3], [1, 2.0, 3], [0.1, 0.2, 0.3], [2**52, 2**52, 1], [-0.0, -0.0, -0.0], [5, -5, 0]]
    store, out = reduce_rows(K, "sum", rows)
    want = []
    for row in rows:
        acc = row[0]
        for x in row[1:]:
            acc = acc + x
            if type(acc) is int and abs(acc) >= 2**53:
                acc = float(acc)
        want.append(acc)
    assert element_bits(K, out, len(rows)) == [bits(w) for w in want]
    v = K.array_value(out, 0)
    assert v._op == "sum" and len(v._children) == 3


def test_sum_gradient_counts_a_repeated_child_each_time(K):
    store = numbers(K, [1.5, 2])
    out = K.array_reduce("sum", store, pos([0, 1, 0, 0]))
    K.array_backward(out, 0)
    assert K.array_numbers(out, arange(1)) == [6.5]
    assert [v.grad for v in K.array_values(store, arange(2))] == [3, 1]
    assert [type(v.grad) for v in K.array_values(store, arange(2))] == [int, int]
    assert len(K.array_value(out, 0)._children) == 2  # _children lists each child once


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_pick_the_first_extreme_child_and_keep_its_int_flag(K, op):
    rows = [[1, 3, 3.0, 2], [3.0, 3, 1, 3], [-1, -1.0, -2, -2.0], [0.0, -0.0, 5, -5], [-0.0, 0.0, 5, -5]]
    store, out = reduce_rows(K, op, rows)
    pick = max if op == "max" else min
    assert element_bits(K, out, len(rows)) == [bits(pick(row)) for row in rows]  # Python's max/min: first
    for r in range(len(rows)):
        K.array_backward(out, r)
    grads = [v.grad for v in K.array_values(store, arange(20))]
    want = []
    for row in rows:
        first = next(i for i, x in enumerate(row) if x == pick(row))
        want += [1 if i == first else 0 for i in range(4)]
    assert grads == want
    assert K.array_value(out, 0)._op == op


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_propagate_the_first_nan(K, op):
    nan = float("nan")
    store, out = reduce_rows(K, op, [[1.0, nan, 5.0, nan], [nan, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, nan]])
    assert all(math.isnan(x) for x in K.array_numbers(out, arange(3)))
    for r in range(3):
        K.array_backward(out, r)
    assert [v.grad for v in K.array_values(store, arange(12))] == [0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(("slope", "xs"), [(0.01, [2, -3, 0, 1.5, -0.5, -0.0]),
                                           (2, [2, -3, 0, 1.5, -0.5, -0.0]),
                                           (0.2, [-2**60, 2**52 - 1])])
def test_leaky_relu_values_and_int_rules(K, slope, xs):
    store = numbers(K, xs)
    out = K.array_unary("leaky_relu", store, arange(len(xs)), slope)
    want = []
    for x in K.array_numbers(store, arange(len(xs))):
        y = x if x > 0 else slope * x
        want.append(y + 0 if type(y) is int else y)
    assert element_bits(K, out, len(xs)) == [bits(w) for w in want]
    for k in range(len(xs)):
        K.array_backward(out, k)
    grads = [v.grad for v in K.array_values(store, arange(len(xs)))]
    expected = [(1 if x > 0 else slope) * 1 for x in K.array_numbers(store, arange(len(xs)))]
    assert [bits(g) for g in grads] == [bits(e) for e in expected]
    assert K.array_value(out, 0)._op == "leaky_relu"


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2])
def test_elu_values_and_gradients(K, alpha):
    xs = [2, -3, 0, 1.5, -0.5, -0.0, -40.0]
    store = numbers(K, xs)
    out = K.array_unary("elu", store, arange(len(xs)), alpha)
    want = [x if x > 0 else alpha * math.expm1(x) for x in xs]
    assert element_bits(K, out, len(xs)) == [bits(w) for w in want]
    for k in range(len(xs)):
        K.array_backward(out, k)
    grads = [v.grad for v in K.array_values(store, arange(len(xs)))]
    assert [bits(g) for g in grads] == [bits(1 if x > 0 else (alpha * math.exp(x)) * 1) for x in xs]
    assert K.array_value(out, 0)._op == "elu"


# ------------------------------------------------------------------------------ vs PyTorch

def torch_check(K, build_ours, build_torch, xs, rtol=1e-12):
    """Forward values and leaf gradients of ours (a store of outputs summed by a 'sum' node)
    against torch float64."""
    import torch  # here: the memcheck run deselects torch tests

    store = numbers(K, xs)
    out = build_ours(store)
    n = len(out)
    total = K.array_reduce("sum", out, arange(n).reshape(1, n))
    K.array_backward(total, 0)
    t = torch.tensor([float(x) for x in xs], dtype=torch.float64, requires_grad=True)
    tout = build_torch(t)
    tout.sum().backward()
    np.testing.assert_allclose(K.array_data(out, arange(n)), tout.detach().numpy(), rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(K.array_grad(store, arange(len(xs))), t.grad.numpy(), rtol=rtol, atol=1e-14)


TORCH_UNARY = {
    "exp": (0.0, lambda t: t.exp()),
    "log": (0.0, lambda t: t.log()),
    "tanh": (0.0, lambda t: t.tanh()),
    "relu": (0.0, lambda t: t.relu()),
    "sigmoid": (0.0, lambda t: t.sigmoid()),
    "abs": (0.0, lambda t: t.abs()),
    "powc": (3, lambda t: t**3),
    "leaky_relu": (0.1, lambda t: __import__("torch").nn.functional.leaky_relu(t, 0.1)),
    "elu": (1.5, lambda t: __import__("torch").nn.functional.elu(t, 1.5)),
}


@pytest.mark.parametrize("op", list(TORCH_UNARY))
def test_unary_values_and_gradients_match_torch(K, op):
    rng = random.Random(op)
    xs = [rng.uniform(0.1, 3) if op == "log" else rng.uniform(-3, 3) for _ in range(50)]
    c, fn = TORCH_UNARY[op]
    torch_check(K, lambda s: K.array_unary(op, s, arange(50), c), fn, xs)


def test_std_is_the_root_with_no_gradient_where_it_is_zero(K):
    """'std' (MLArray.std's last node): x ** 0.5's value and, where it is not 0, its gradient
    bit for bit; 0 where it is 0 (PyTorch's std), where '**0.5' gives inf and NaN below."""
    s = numbers(K, [0.0, 4.0, 2.25, 0, 1e-300])
    out = K.array_unary("std", s, arange(5), 7.0)  # (the constant is always 0.5)
    powc = K.array_unary("powc", s, arange(5), 0.5)
    assert K.array_numbers(out, arange(5)) == K.array_numbers(powc, arange(5))
    assert [v._op for v in K.array_values(out, arange(5))] == ["std"] * 5
    K.array_backward(K.array_reduce("sum", out, arange(5).reshape(1, 5)), 0)
    grads = K.array_grad(s, arange(5)).tolist()
    assert [bits(g) for g in grads] == [bits(x) for x in (0.0, 0.25, 0.5 * 2.25 ** -0.5, 0.0,
                                                          0.5 * 1e-300 ** -0.5)]
    with pytest.raises(ValueError, match="complex"):
        K.array_unary("std", numbers(K, [-1.0]), arange(1))


@pytest.mark.parametrize("op", ["add", "mul", "pow"])
def test_binary_values_and_gradients_match_torch(K, op):
    rng = random.Random(op)
    xs = [rng.uniform(0.5, 2) for _ in range(40)]
    fn = {"add": lambda u, v: u + v, "mul": lambda u, v: u * v, "pow": lambda u, v: u**v}[op]
    ours = lambda s: K.array_binary(op, s, arange(20), s, arange(20) + 20)
    torch_check(K, ours, lambda t: fn(t[:20], t[20:]), xs)


def test_linear_as_matmul_matches_torch(K):
    # A (3x4) @ B (4x2): row r of A against column c of B, plus a bias per output
    rng = random.Random(5)
    xs = [rng.uniform(-2, 2) for _ in range(12 + 8 + 6)]
    a_idx, b_idx = arange(12).reshape(3, 4), (arange(8) + 12).reshape(4, 2)
    w_pos = np.ascontiguousarray(np.repeat(a_idx, 2, axis=0))            # (6, 4): rows of A
    x_pos = np.ascontiguousarray(np.tile(b_idx.T, (3, 1)))               # (6, 4): columns of B
    ours = lambda s: K.array_linear(s, w_pos, s, x_pos, s, arange(6) + 20)
    theirs = lambda t: (t[:12].reshape(3, 4) @ t[12:20].reshape(4, 2)).reshape(-1) + t[20:]
    torch_check(K, ours, theirs, xs)


@pytest.mark.parametrize("op", ["sum", "max", "min"])
def test_reductions_match_torch_without_ties(K, op):
    import torch

    rng = random.Random(op)
    xs = [rng.uniform(-3, 3) for _ in range(24)]  # no ties: torch.amax's tie rule does not matter
    fn = {"sum": lambda t: t.reshape(4, 6).sum(1), "max": lambda t: torch.amax(t.reshape(4, 6), 1),
          "min": lambda t: torch.amin(t.reshape(4, 6), 1)}[op]
    torch_check(K, lambda s: K.array_reduce(op, s, arange(24).reshape(4, 6)), fn, xs)


# --------------------------------------------------------------- compiled vs reference kernels

def run_program(K, program, xs):
    """Run a small program of kernel calls; return every store's numbers and grads, as bits."""
    stores = [numbers(K, xs)]
    n = len(xs)
    for op, arg in program:
        src = stores[arg % len(stores)]
        if op in ("exp", "tanh", "relu", "sigmoid", "abs", "leaky_relu", "elu", "std"):
            stores.append(K.array_unary(op, src, arange(n), {"leaky_relu": 3, "elu": 0.5}.get(op, 0.0)))
        elif op == "powc":
            stores.append(K.array_unary(op, src, arange(n), 2))
        elif op in ("add", "mul"):
            stores.append(K.array_binary(op, src, arange(n), stores[-1], arange(n)[::-1].copy()))
        elif op in ("sum", "max", "min"):
            rows = (arange(2 * n) % n).reshape(n, 2)
            stores.append(K.array_reduce(op, src, rows))
        elif op == "linear":
            w_pos = (arange(n * 3) * 7 % n).reshape(n, 3)
            x_pos = (arange(n * 3) * 5 % n).reshape(n, 3)
            stores.append(K.array_linear(src, w_pos, stores[-1], x_pos, stores[0], arange(n)))
        elif op == "matmul":  # P rows of src against Q rows of the last store, P * Q = n
            p_count = 2 if n % 2 == 0 else n  # both > 1 where n allows: the layout matters
            q_count = n // p_count
            w_rows = (arange(p_count * 2) * 7 % n).reshape(p_count, 2)
            x_rows = (arange(q_count * 2) * 5 % n).reshape(q_count, 2)
            stores.append(K.array_matmul(src, w_rows, stores[-1], x_rows, 1, stores[0],
                                         arange(p_count), arg % 2 == 1))
    top = stores[-1]
    root = K.array_reduce("sum", top, arange(n).reshape(1, n))
    K.array_backward(root, 0)
    return ([element_bits(K, s, n) for s in stores], [grad_bits(K, s, n) for s in stores],
            [[v._op for v in K.array_values(s, arange(n))] for s in stores])


OPS = ["exp", "tanh", "relu", "sigmoid", "abs", "leaky_relu", "elu", "std", "powc", "add", "mul",
       "sum", "max", "min", "linear", "matmul"]


def outcome(K, program, xs):
    """run_program's result, or the type and message of the error it raised."""
    try:
        return run_program(K, program, xs)
    except (ArithmeticError, ValueError) as exc:
        return type(exc), str(exc)


SPECIAL = st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, 2**53 - 1, float("inf"), float("-inf"), float("nan")])


@settings(max_examples=60, deadline=None)
@given(xs=st.lists(st.one_of(st.integers(-5, 5), st.floats(-3, 3, allow_nan=False), SPECIAL),
                   min_size=1, max_size=6),
       program=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 10)), min_size=1, max_size=6))
def test_compiled_and_reference_kernels_are_bit_identical(xs, program):
    compiled = outcome(kernel_module("compiled"), program, xs)
    reference = outcome(kernel_module("reference"), program, xs)
    assert compiled == reference


# ------------------------------------------------------------------------------ errors

def check_unchanged(K, engine, before, store, n, action, error, match=None):
    """action raises `error`, creates no node (arena counts unchanged) and leaves store intact."""
    values = element_bits(K, store, n)
    with pytest.raises(error, match=match):
        action()
    if engine == "compiled":
        gc.collect()
        stats = _engine._arena_stats()
        assert (stats["live"], stats["allocations"]) == before
        assert _engine._arena_check()
    assert element_bits(K, store, n) == values


def stats_now(engine):
    if engine != "compiled":
        return None
    gc.collect()
    stats = _engine._arena_stats()
    return stats["live"], stats["allocations"]


@pytest.mark.parametrize(("call", "error"), [
    (lambda K, s: K.array_unary("tanh", s, pos(0, 3)), IndexError),
    (lambda K, s: K.array_unary("tanh", s, pos(-1)), IndexError),
    (lambda K, s: K.array_unary("tanh", s, [0, 1]), TypeError),
    (lambda K, s: K.array_unary("tanh", s, np.array([0, 1], dtype=np.int32)), TypeError),
    (lambda K, s: K.array_unary("tanh", s, np.array([0.0, 1.0])), TypeError),
    (lambda K, s: K.array_unary("tanh", s, pos(0, 1, 2, 0)[::2]), ValueError),
    (lambda K, s: K.array_unary("tanh", s, pos([0, 1])), ValueError),
    (lambda K, s: K.array_unary("nope", s, pos(0)), ValueError),
    (lambda K, s: K.array_unary(3, s, pos(0)), TypeError),
    (lambda K, s: K.array_unary("powc", s, pos(0), "2"), TypeError),
    (lambda K, s: K.array_unary("tanh", [1.0], pos(0)), TypeError),
    (lambda K, s: K.array_binary("add", s, pos(0, 1), s, pos(0)), ValueError),
    (lambda K, s: K.array_binary("add", s, pos(0), s, pos(5)), IndexError),
    (lambda K, s: K.array_binary("sub", s, pos(0), s, pos(1)), ValueError),
    (lambda K, s: K.array_linear(s, pos([0, 1]), s, pos([0, 1], [1, 2])), ValueError),
    (lambda K, s: K.array_linear(s, pos([0, 1]), s, pos([0, 2, 1])), ValueError),
    (lambda K, s: K.array_linear(s, pos([0, 1]), s, pos([2, 1]), s, pos(0, 1)), ValueError),
    (lambda K, s: K.array_linear(s, pos([0, 1]), s, pos([2, 1]), s, None), ValueError),
    (lambda K, s: K.array_linear(s, pos([0, 1]), s, pos([2, 9]), s, pos(0)), IndexError),
    (lambda K, s: K.array_matmul(s, pos([0, 1]), s, pos([0]), 1), ValueError),
    (lambda K, s: K.array_matmul(s, pos([0], [1], [2]), s, pos([0], [1]), 2), ValueError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([1]), 0), ValueError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([1]), -1), ValueError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([1]), 1, s, None), ValueError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([1]), 1, s, pos(0, 1)), ValueError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([1]), 1, [1.0], pos(0)), TypeError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([7]), 1), IndexError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([1]), 1, s, pos(3)), IndexError),
    (lambda K, s: K.array_matmul(s, pos(0, 1), s, pos(1, 2), 1), ValueError),
    (lambda K, s: K.array_matmul(s, pos([9]), s, pos([1]), "1"), TypeError),
    (lambda K, s: K.array_matmul(s, pos([0]), s, pos([1]), 2**70), OverflowError),
    (lambda K, s: K.array_reduce("sum", s, np.zeros((2, 0), dtype=np.int64)), ValueError),
    (lambda K, s: K.array_reduce("sum", s, pos(0, 1)), ValueError),
    (lambda K, s: K.array_reduce("mean", s, pos([0, 1])), ValueError),
    (lambda K, s: K.array_assign(s, pos(0, 1), s, pos(1)), ValueError),
    (lambda K, s: K.array_assign(s, pos(0), s, pos(3)), IndexError),
    (lambda K, s: K.array_set_data(s, pos(0, 1), np.array([1.0])), ValueError),
    (lambda K, s: K.array_set_data(s, pos(0), np.array([1], dtype=np.int64)), TypeError),
    (lambda K, s: K.array_value(s, 3), IndexError),
    (lambda K, s: K.array_value(s, -1), IndexError),
    (lambda K, s: K.array_backward(s, 3), IndexError),
    (lambda K, s: K.array_from_numbers(np.array([1.0, 2.0]), np.array([True])), ValueError),
    (lambda K, s: K.array_from_numbers([1.0, 2.0]), TypeError),
    (lambda K, s: K.array_from_values([K.array_value(s, 0), 2.0]), TypeError),
])
def test_bad_arguments_raise_before_any_node_is_made(K, engine, call, error):
    store = numbers(K, [1, 2.5, -3])
    check_unchanged(K, engine, stats_now(engine), store, 3, lambda: call(K, store), error)


def test_arrays_in_the_other_byte_order_are_refused_and_the_native_order_taken(K):
    """A kernel reads its arrays' memory as is: one in the other byte order is a TypeError (not
    misread), one whose format names this machine's order explicitly ('<' here) is taken."""
    other, native = (">", "<") if sys.byteorder == "little" else ("<", ">")
    with pytest.raises(TypeError, match="float64"):
        K.array_from_numbers(np.array([1.5, -2.0], dtype=other + "f8"))
    store = K.array_from_numbers(np.array([1.5, -2.0], dtype=native + "f8"))
    assert K.array_numbers(store, arange(2)) == [1.5, -2.0]
    with pytest.raises(TypeError, match="int64"):
        K.array_unary("relu", store, np.array([0, 1], dtype=other + "i8"))
    out = K.array_unary("relu", store, np.array([0, 1], dtype=native + "i8"))
    assert K.array_numbers(out, arange(2)) == [1.5, 0]


def test_values_of_the_other_engine_are_rejected_by_name(K, engine):
    other = importlib.import_module(VALUE_MODULES["reference" if engine == "compiled" else "compiled"])
    with pytest.raises(TypeError, match="Value"):
        K.array_from_values([other.Value(1.0)])


@pytest.mark.parametrize(("op", "xs", "c", "scalar"), [
    ("log", [2.0, 0.0], 0.0, lambda v, c: v.log()),
    ("log", [2.0, -1], 0.0, lambda v, c: v.log()),
    ("exp", [1.0, 1000.0], 0.0, lambda v, c: v.exp()),
    ("powc", [2.0, 0.0], -1, lambda v, c: v**c),
    ("powc", [2.0, -8.0], 0.5, lambda v, c: v**c),
    ("powc", [2.0, 1e200], 2, lambda v, c: v**c),
])
def test_forward_errors_are_the_scalar_ops_errors_and_leave_no_node(K, Value, engine, op, xs, c, scalar):
    store = numbers(K, xs)
    with pytest.raises(Exception) as scalar_error:
        scalar(Value(xs[1]), c)
    check_unchanged(K, engine, stats_now(engine), store, 2,
                    lambda: K.array_unary(op, store, arange(2), c), type(scalar_error.value),
                    match=re.escape(str(scalar_error.value)))


@pytest.mark.parametrize(("xs", "ys"), [([2.0, 0.0], [1.0, -1.0]), ([2.0, -8.0], [1.0, 0.5]),
                                        ([2.0, 10.0], [1.0, 400.0])])
def test_binary_pow_errors_leave_no_node(K, Value, engine, xs, ys):
    a, b = numbers(K, xs), numbers(K, ys)
    with pytest.raises(Exception) as scalar_error:
        Value(xs[1]) ** Value(ys[1])
    check_unchanged(K, engine, stats_now(engine), a, 2,
                    lambda: K.array_binary("pow", a, arange(2), b, arange(2)), type(scalar_error.value))


def test_a_pow_error_late_in_the_array_with_one_node_on_both_sides_leaves_no_node(K, Value, engine):
    """x ** x over the same nodes: each checked element holds two references to one node until
    the error at the last one gives them all back."""
    store = numbers(K, [2.0, 3, 0.5, -0.5])
    with pytest.raises(ValueError) as scalar_error:
        Value(-0.5) ** Value(-0.5)
    check_unchanged(K, engine, stats_now(engine), store, 4,
                    lambda: K.array_binary("pow", store, arange(4), store, arange(4)), ValueError,
                    match=re.escape(str(scalar_error.value)))


# ------------------------------------------------------------------------------ storage

def test_numbers_keep_ints_and_huge_ints_become_floats(K):
    data = np.array([1.0, -0.0, 2.5, 2.0**60, float("inf"), float("nan"), -0.0, 1.5, float("inf")])
    is_int = np.array([True, True, False, True, False, False, False, True, True])
    store = K.array_from_numbers(data, is_int)
    got = K.array_numbers(store, arange(9))
    assert [type(x) for x in got] == [int, int, float, float, float, float, float, float, float]
    assert bits(got[1]) == bits(0) and bits(got[6]) == bits(-0.0)
    assert K.array_from_numbers(np.array([1.0])).__len__() == 1
    assert type(K.array_numbers(K.array_from_numbers(np.array([1.0])), pos(0))[0]) is float


def test_array_value_returns_the_same_handle_and_the_given_values(K, Value):
    a, b = Value(1.5), Value(2)
    store = K.array_from_values([a, b, a])
    assert K.array_value(store, 0) is a and K.array_value(store, 2) is a
    assert K.array_values(store, pos(1, 0)) == [b, a]
    out = K.array_unary("tanh", store, pos(0))
    v = K.array_value(out, 0)
    assert K.array_value(out, 0) is v
    assert v._children == (a,)
    # mixing with scalar Values: an array element is an ordinary node
    y = v * b + a
    y.backward()
    assert a.grad == pytest.approx(1 + 2 * (1 - math.tanh(1.5) ** 2))
    assert b.grad == pytest.approx(math.tanh(1.5))


def test_data_grad_set_data_and_zero_grad(K):
    store = numbers(K, [1, 2.5, -3])
    out = K.array_binary("mul", store, arange(3), store, arange(3))
    K.array_backward(K.array_reduce("sum", out, pos([0, 1, 2])), 0)
    np.testing.assert_array_equal(K.array_data(store, pos(2, 0)), [-3.0, 1.0])
    np.testing.assert_array_equal(K.array_grad(store, arange(3)), [2.0, 5.0, -6.0])
    K.array_zero_grad(store, pos(0, 2))
    assert [bits(v.grad) for v in K.array_values(store, arange(3))] == [bits(0), bits(5.0), bits(0)]
    K.array_set_data(store, pos(0, 1), np.array([4.0, -1.0]))
    assert element_bits(K, store, 3) == [bits(4.0), bits(-1.0), bits(-3)]
    # is_int: an int where marked and integral (array_from_numbers' rule), else the float
    K.array_set_data(store, pos(0, 1, 2), np.array([4.0, -0.0, 2.5]), np.array([True, True, True]))
    assert element_bits(K, store, 3) == [bits(4), bits(0), bits(2.5)]
    K.array_set_data(store, pos(0), np.array([7.0]), np.array([False]))
    assert element_bits(K, store, 1) == [bits(7.0)]
    with pytest.raises(ValueError, match="is_int"):
        K.array_set_data(store, pos(0, 1), np.array([1.0, 2.0]), np.array([True]))
    assert element_bits(K, store, 3) == [bits(7.0), bits(0), bits(2.5)]
    assert K.array_data(store, pos()).dtype == np.float64


def test_assign_reads_all_sources_before_writing(K):
    store = numbers(K, [10, 20, 30])
    nodes = K.array_values(store, arange(3))
    K.array_assign(store, pos(0, 1, 2), store, pos(2, 0, 1))  # a rotation within one store
    assert K.array_values(store, arange(3)) == [nodes[2], nodes[0], nodes[1]]
    other = numbers(K, [7])
    K.array_assign(store, pos(0, 0), other, pos(0, 0))  # a repeated target
    assert K.array_numbers(store, arange(3)) == [7, 10, 20]
    if K is _engine:
        assert _engine._arena_check()


def test_linear_without_inputs_is_zero_or_the_bias(K):
    b = numbers(K, [1.5, -2])
    empty = np.zeros((2, 0), dtype=np.int64)
    assert element_bits(K, K.array_linear(b, empty, b, empty), 2) == [bits(0), bits(0)]
    with_bias = K.array_linear(b, empty, b, empty, b, pos(1, 0))
    assert element_bits(K, with_bias, 2) == [bits(-2), bits(1.5)]
    K.array_backward(with_bias, 0)
    assert [v.grad for v in K.array_values(b, arange(2))] == [0, 1]


def test_graph_of_array_nodes_has_labels_and_children(K):
    store = numbers(K, [1.0, 2.0, 3.0])
    m = K.array_reduce("max", store, pos([0, 1, 2, 1]))
    v = K.array_value(m, 0)
    assert v._op == "max"
    assert v._children == tuple(K.array_values(store, pos(0, 1, 2)))
    assert v._prev == set(K.array_values(store, arange(3)))


# ------------------------------------------------------------------------------ lifetime

def test_dropping_a_store_frees_its_nodes(K, engine):
    if engine == "compiled":
        gc.collect()
        before = live()
    store = numbers(K, [1.0, 2.0, 3.0])
    out = K.array_unary("tanh", store, arange(3))
    total = K.array_reduce("sum", out, pos([0, 1, 2]))
    probe = weakref.ref(K.array_value(out, 1)) if engine == "reference" else None
    if engine == "compiled":
        assert live() == before + 7
    del store, out
    if engine == "compiled":
        assert live() == before + 7  # the sum node keeps its inputs alive
    del total
    gc.collect()
    if engine == "compiled":
        assert live() == before
        assert _engine._arena_check()
    else:
        assert probe() is None


def test_many_iterations_do_not_leak(K, engine):
    w = numbers(K, [0.5] * 16)

    def step():
        x = numbers(K, list(range(16)))
        h = K.array_unary("tanh", K.array_linear(w, arange(16).reshape(4, 4), x, arange(16).reshape(4, 4)), arange(4))
        loss = K.array_reduce("sum", h, pos([0, 1, 2, 3]))
        K.array_backward(loss, 0)
        K.array_zero_grad(w, arange(16))

    step()
    gc.collect()
    if engine == "compiled":
        before = live()
        for _ in range(200):
            step()
        assert live() == before
        assert _engine._arena_check()
    else:
        probe = []
        for _ in range(20):
            x = numbers(K, [1.0])
            probe.append(weakref.ref(K.array_value(x, 0)))
            del x
            step()
        gc.collect()
        assert all(p() is None for p in probe)


@pytest.mark.parametrize("engine", ["compiled", pytest.param("reference", marks=pytest.mark.slow)])
def test_a_million_element_op_works(engine):
    K = kernel_module(engine)
    n = 1_000_000
    store = K.array_from_numbers(np.linspace(-2, 2, n))
    out = K.array_binary("mul", store, arange(n), store, arange(n))
    total = K.array_reduce("sum", out, arange(n).reshape(1, n))
    K.array_backward(total, 0)
    data = np.linspace(-2, 2, n)
    assert K.array_numbers(total, pos(0))[0] == pytest.approx(float(np.sum(data * data)), rel=1e-12)
    np.testing.assert_array_equal(K.array_grad(store, arange(n)), 2 * data)


def test_show_graph_draws_array_nodes(K):
    from michigrad.visualize import show_graph, trace

    store = numbers(K, [1.0, -2.0, 3.0])
    act = K.array_unary("leaky_relu", store, arange(3), 0.1)
    top = K.array_value(K.array_reduce("max", act, pos([0, 1, 2])), 0)
    nodes, edges = trace(top)
    assert len(nodes) == 7 and len(edges) == 6
    source = show_graph(top).source
    assert "max" in source and source.count("leaky_relu") == 3
