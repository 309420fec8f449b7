"""backward()'s batches of matmul outputs (_sweep.pxi) against the plain sweep: the same
gradients, bit for bit.

The compiled engine defers the contributions of wide matmul nodes (shared operand rows of 32
or more) into their rows of leaves and applies a batch of them on dense copies of the rows
(four outputs that share a row together), making the others at once; the reference engine
applies every node alone in reverse topological order, as micrograd does. Each graph below is
built by both engines from the same numbers and every gradient must be the same bits --
whatever the graph shares between its rows, whoever else reads the rows, however many nodes
are deferred and wherever the visit mark wraps around. The `row_copied_outputs` counter
shows whether the copies were used, so a test meant for them cannot pass by falling back to the
plain order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from michigrad import Graph, _engine
from michigrad.array import array_class, dense
from conftest import bits

COMPILED, REFERENCE = array_class("compiled"), array_class("reference")


def copied() -> int:
    return _engine._arena_stats()["row_copied_outputs"]


def flat(x: Any) -> list:
    return [y for item in x for y in flat(item)] if isinstance(x, list) else [x]


def grad_bits(arrays: list) -> list:
    return [bits(g) for a in arrays for g in flat(a.grad().to_list())]


def uniform(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, shape)


# Each graph: (M, rng) -> (loss, the arrays whose gradients are compared). The rng draws the
# same numbers for both engines.

def matmul(M, rng):
    a, b = M(uniform(rng, 40, 48)), M(uniform(rng, 48, 36))
    c = a @ b
    return (c.tanh()).sum(), [a, b, c]


def dense_layer(M, rng):  # groups of outputs share an x row; their own rows hold the bias
    x, w, b = M(uniform(rng, 44, 40)), M(uniform(rng, 36, 40)), M(uniform(rng, 36))
    out = dense(x, w, b)
    return out.tanh().sum(), [x, w, b, out]


def batched(M, rng):
    a, b = M(uniform(rng, 2, 20, 40)), M(uniform(rng, 2, 40, 24))
    return (a @ b).tanh().sum(), [a, b]


def two_layers(M, rng):
    # Layer 2's x rows are layer 1's outputs, and the order takes one sample at a time (layer 2,
    # then layer 1, for sample n): the contributions into the weights and the inputs (leaves)
    # wait in the batch, those into h are made at once.
    x = M(uniform(rng, 24, 40))
    w1, b1, w2, b2 = M(uniform(rng, 36, 40)), M(uniform(rng, 36)), M(uniform(rng, 32, 36)), M(uniform(rng, 32))
    h = dense(x, w1, b1).tanh()
    return dense(h, w2, b2).tanh().sum() + (h * h).sum(), [x, w1, b1, w2, b2, h]


def ragged(M, rng):  # rows of 30 outputs: seven groups of four, then two outputs alone
    a, b = M(uniform(rng, 38, 40)), M(uniform(rng, 40, 30))
    return (a @ b).tanh().sum(), [a, b]


def nonleaf_operand(M, rng):  # a's rows are op nodes: only b's side waits in the batch
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    return ((a * 1.0) @ b).tanh().sum(), [a, b]


def nonleaf_operands(M, rng):  # neither side is leaves: nothing to defer
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    return ((a * 1.0) @ (b * 1.0)).tanh().sum(), [a, b]


def one_column(M, rng):  # 36 outputs, 37 rows: each row read about twice, not worth a copy
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 1))
    return (a @ b).tanh().sum(), [a, b]


def more_than_a_batch(M, rng):  # 91 x 91 outputs: more than the 8192 one batch holds
    a, b = M(uniform(rng, 91, 32)), M(uniform(rng, 32, 91))
    return (a @ b).tanh().sum(), [a, b]


def specials(M, rng):  # infinities, NaNs, signed zeros and subnormals in the rows
    a, b = uniform(rng, 36, 40), uniform(rng, 40, 36)
    a[::5, ::7] = [[np.inf, -0.0, 0.0, np.nan, 5e-324, -np.inf]] * 8
    b[::9, ::3] = -0.0
    a, b = M(a), M(b)
    return ((a @ b) * 0.5).sum(), [a, b]


def int_data(M, rng):  # int leaves, float gradients: deferred like floats
    a, b = M(rng.integers(-3, 4, (36, 40)).tolist()), M(rng.integers(-3, 4, (40, 36)).tolist())
    return ((a @ b) * 0.5).sum(), [a, b]


def int_gradients(M, rng):  # int gradients (sum passes the int 1): never deferred
    a, b = M(rng.integers(-3, 4, (36, 40)).tolist()), M(rng.integers(-3, 4, (40, 36)).tolist())
    return (a @ b).sum(), [a, b]


def interleaved_reader(M, rng):
    # b * 3 adds into b's nodes between the matmul's outputs: a batch ends at the first row of
    # outputs that meets a column already in it, one run long.
    a, b = M(uniform(rng, 40, 40)), M(uniform(rng, 40, 40))
    return ((a @ b).tanh() * (b * 3.0)).sum(), [a, b]


def shared_operand(M, rng):  # a's rows are in the blocks of two matmuls
    a, b, c = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36)), M(uniform(rng, 40, 36))
    return (a @ b).tanh().sum() + (a @ c).exp().sum(), [a, b, c]


def self_product(M, rng):  # a @ a: every node is in a w row and in an x row
    a = M(uniform(rng, 36, 36))
    return (a @ a).tanh().sum(), [a]


def with_transpose(M, rng):  # a @ a.T: the same rows as w rows and as x rows
    a = M(uniform(rng, 36, 40))
    return (a @ a.T).tanh().sum(), [a]


def repeated_bias(M, rng):  # one Value as every output's bias: in every w row
    x, w = M(uniform(rng, 24, 40)), M(uniform(rng, 36, 40))
    v = M(uniform(rng, 1))[0]
    b = M([v] * 36)
    return dense(x, w, b).tanh().sum(), [x, w, b]


def repeated_in_a_row(M, rng):  # a row that holds one Value twice
    a = uniform(rng, 36, 40).tolist()
    b = M(uniform(rng, 40, 36))
    rows = M(a)
    twice = M([[rows[i, 0]] + [rows[i, k] for k in range(1, 39)] + [rows[i, 0]] for i in range(36)])
    return (twice @ b).tanh().sum(), [rows, b]


# Graphs that share rows in every way MLArray allows (from a review of the tiles this sweep
# once had): the copies may or may not be used; the bits must be the plain order's.

def chained(M, rng):  # linear outputs are the x rows / w rows of later matmuls
    a, b, c, d = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36)), M(uniform(rng, 36, 36)), M(uniform(rng, 36, 36))
    y = a @ b
    return ((y @ c) * 0.5).sum() + (y * 0.25).sum() + ((d @ y.T) * 0.125).sum(), [a, b, c, d, y]


def mixed_int_float_gradients(M, rng):  # in one row and one column, int and float gradients
    a, b = M(uniform(rng, 40, 40)), M(uniform(rng, 40, 40))
    y = a @ b
    return y[:, ::3].sum() + (y[20:] * 0.5).sum() + y[::5].sum() + (y[13] * 0.1).sum(), [a, b, y]


def used_twice(M, rng):
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    y = a @ b
    return (y * y).sum() + (y.tanh() * 0.5).sum(), [a, b, y]


def repeated_rows(M, rng):  # fancy indexing: the same nodes in several w rows and x rows
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    idx = np.array([0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 9] * 3)
    return ((a[idx] @ b[:, idx]) * 0.5).sum(), [a, b]


def broadcast_batches(M, rng):  # one operand's rows in every batch's blocks, either side
    a, b, c = M(uniform(rng, 2, 20, 40)), M(uniform(rng, 40, 24)), M(uniform(rng, 3, 40, 24))
    return ((a @ b) * 0.5).tanh().sum() + ((a[0] @ c) * 0.5).tanh().sum(), [a, b, c]


def views_of_one_array(M, rng):  # views of the same array as both operands, overlapping or not
    a = M(uniform(rng, 72, 40))
    return ((a[:36] @ a[36:].T) * 0.5).sum() + ((a[:40, :36] @ a[4:40, 4:]) * 0.25).sum(), [a]


def biases_in_the_rows(M, rng):  # biases that are inputs, weights, or another matmul's outputs
    x, w, c = M(uniform(rng, 24, 40)), M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    in_x = M([x[i % 24, i] for i in range(36)])
    in_w = M([w[(i + 1) % 36, 0] for i in range(36)])
    h = x @ c
    return (dense(x, w, in_x).tanh().sum() + dense(x, w, in_w).tanh().sum()
            + (dense(x, w, h[0]) * 0.5).sum() + (h * 0.25).sum()), [x, w, c, h]


def elements_mixed_in(M, rng):  # scalar Value ops on elements, mixed with array ops
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    y = a @ b
    s = y[0, 0] * y[1, 1] + a[0, 0].tanh() * 3 + b[5, 5] * y[35, 35]
    rows = [[y[i, j] if (i + j) % 7 else y[i, j] * a[i, j] for j in range(36)] for i in range(36)]
    return s + ((M(rows) @ b.T) * 0.5).sum() + (y * 0.1).sum(), [a, b, y]


def negative_zero_gradients(M, rng):
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    return ((a @ b) * -0.0).sum(), [a, b]


def batch_ends_inside_a_run(M, rng):  # 8192 = 81 * 101 + 11
    a, b = M(uniform(rng, 101, 33)), M(uniform(rng, 33, 101))
    y = a @ b
    return (y * 0.5).sum() + (y[::7] * 0.25).sum(), [a, b]


def other_orders(M, rng):  # by columns (runs share x rows in a @ b), and reversed
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    return ((a @ b).T * 0.5).sum() + ((a @ b)[::-1, ::-1] * 0.25).sum(), [a, b]


def two_matmuls_interleaved(M, rng):  # the order alternates between two matmuls' outputs
    a, b, c = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36)), M(uniform(rng, 40, 36))
    return ((a @ b) * (a @ c)).sum() + ((a @ b) * 0.5 + (a @ b) * 0.25).sum(), [a, b, c]


def deep_chain(M, rng):  # each product's rows are the next one's w rows
    a, b = M(uniform(rng, 36, 36)), M(uniform(rng, 36, 36))
    y = a
    for _ in range(3):
        y = (y @ b) * 0.5
    return (y * 0.5).sum(), [a, b]


def mixed_rows(M, rng):  # w rows of leaves and op nodes: not rows of leaves, made at once
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    mixed = M([[a[i, k] if k % 3 else a[i, k] * 0.5 for k in range(40)] for i in range(36)])
    return (mixed @ b).tanh().sum(), [a, b]


def leaf_in_both_rows(M, rng):
    # w rows that mix op nodes with b's own leaves: the w side, made at once, adds into nodes
    # whose contributions through b's columns wait in the batch
    a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
    mixed = M([[b[k, i] if k % 5 == 0 else a[i, k] * 1.0 for k in range(40)] for i in range(36)])
    return (mixed @ b).tanh().sum(), [a, b]


def one_weight_two_layers(M, rng):  # the same leaves in the rows of two matmuls
    x, w = M(uniform(rng, 24, 36)), M(uniform(rng, 36, 36))
    h = dense(x, w).tanh()
    return dense(h, w).tanh().sum() + (dense(x, w) * 0.5).sum(), [x, w, h]


def width_boundary(M, rng):  # 31 wide with a bias (63 children: not deferred) and 32 wide (64)
    x, w, b = M(uniform(rng, 24, 31)), M(uniform(rng, 36, 31)), M(uniform(rng, 36))
    x2, w2 = M(uniform(rng, 24, 32)), M(uniform(rng, 36, 32))
    return dense(x, w, b).tanh().sum() + dense(x2, w2).tanh().sum(), [x, w, b, x2, w2]


ADVERSARIAL = [chained, mixed_int_float_gradients, used_twice, repeated_rows, broadcast_batches,
               views_of_one_array, biases_in_the_rows, elements_mixed_in, negative_zero_gradients,
               batch_ends_inside_a_run, other_orders, two_matmuls_interleaved, deep_chain,
               mixed_rows, leaf_in_both_rows, one_weight_two_layers, width_boundary]

ROW_COPIED = [matmul, dense_layer, batched, ragged, more_than_a_batch, specials, int_data,
              shared_operand, two_layers, nonleaf_operand]
NODE_BY_NODE = [interleaved_reader, int_gradients, self_product, with_transpose, repeated_bias,
                repeated_in_a_row, one_column, nonleaf_operands]


def both_engines(graph: Callable, seed: int = 0) -> tuple[list, list, int]:
    """The gradient bits the graph gets from each engine, and how many of the compiled run's
    outputs ran on copied rows."""
    ref_loss, ref_arrays = graph(REFERENCE, np.random.default_rng(seed))
    ref_loss.backward()
    loss, arrays = graph(COMPILED, np.random.default_rng(seed))
    before = copied()
    loss.backward()
    return grad_bits(arrays), grad_bits(ref_arrays), copied() - before


@pytest.mark.parametrize("graph", ROW_COPIED, ids=lambda g: g.__name__)
def test_backward_on_copied_rows_gives_the_plain_sweeps_bits(graph):
    got, want, outputs = both_engines(graph)
    assert got == want
    assert outputs > 0


@pytest.mark.parametrize("graph", NODE_BY_NODE, ids=lambda g: g.__name__)
def test_graphs_that_cannot_batch_fall_back_to_the_plain_order(graph):
    got, want, outputs = both_engines(graph)
    assert got == want
    assert outputs == 0


@pytest.mark.parametrize("graph", ADVERSARIAL, ids=lambda g: g.__name__)
def test_graphs_sharing_rows_every_way_give_the_plain_sweeps_bits(graph):
    got, want, _ = both_engines(graph)
    assert got == want


@pytest.mark.parametrize("graph", [chained, other_orders, batch_ends_inside_a_run],
                         ids=lambda g: g.__name__)
def test_a_second_backward_and_a_replayed_one_give_the_plain_sweeps_bits(graph):
    """Gradients accumulate over two backward() calls, and Graph.backward() (which zeroes the
    inner nodes' gradients first) gives a fresh backward's bits, both engines alike."""
    results = []
    for M in (REFERENCE, COMPILED):
        loss, arrays = graph(M, np.random.default_rng(7))
        loss.backward()
        loss.backward()
        twice = grad_bits(arrays)
        replay = Graph(loss)
        for a in arrays:
            a.zero_grad()
        replay.backward()
        results.append((twice, grad_bits(arrays)))
        replay.close()
    assert results[0] == results[1]


def test_python_backward_anywhere_takes_the_plain_order():
    """A Python-defined _backward in the graph: the sweep runs node by node (no copies)."""
    def graph(M, rng):
        a, b = M(uniform(rng, 36, 40)), M(uniform(rng, 40, 36))
        y = a @ b
        s = y[0, 0] * 0.5
        out = type(s)(s.data * 2.0, (s,), "double")

        def _backward():
            s.grad += 2.0 * out.grad
        out._backward = _backward
        return (y * 0.5).sum() + out, [a, b, y]

    got, want, outputs = both_engines(graph)
    assert got == want
    assert outputs == 0


def test_outputs_outside_a_group_of_four_run_on_the_copies_too():
    """A 38 x 30 matmul's outputs all run on copied rows: seven groups of four that share a w row
    in each row of outputs, and the two left over one at a time."""
    got, want, outputs = both_engines(ragged)
    assert got == want
    assert outputs == 38 * 30


@pytest.mark.parametrize("seed", range(8))
def test_random_grids_give_the_plain_sweeps_bits(seed):
    """Random batch counts, sizes, widths around the 32 where deferring starts, both layouts
    (a @ b: runs share a w row; dense: runs share an x row) and biases."""
    rng = np.random.default_rng(seed)
    batches, p, q, k = (int(rng.integers(lo, hi)) for lo, hi in [(1, 3), (1, 14), (1, 14), (28, 40)])
    layout = ("matmul", "dense", "dense with bias")[seed % 3]

    def graph(M, rng):
        w, x, b = M(uniform(rng, batches, p, k)), M(uniform(rng, batches, q, k)), M(uniform(rng, q))
        if layout == "matmul":
            out = w @ x.transpose((0, 2, 1))
        else:
            out = dense(w, x[0], b if layout == "dense with bias" else None)
        return out.tanh().sum(), [w, x, b]

    got, want, _ = both_engines(graph, seed)
    assert got == want


@pytest.mark.parametrize("marks_before", range(8))
def test_the_visit_mark_may_wrap_anywhere_in_a_backward(marks_before):
    """The sweep takes fresh marks for every batch and for placing its rows: a wrap-around (which
    clears every mark) at any of them leaves the gradients as they are."""
    _engine._force_epoch_wrap(marks_before)
    got, want, outputs = both_engines(shared_operand)
    assert got == want
    assert outputs > 0


def test_replayed_backward_copies_rows_too_and_gives_the_same_bits():
    loss, arrays = matmul(COMPILED, np.random.default_rng(3))
    loss.backward()
    first = grad_bits(arrays)
    graph = Graph(loss)
    for a in arrays:
        a.zero_grad()
    before = copied()
    graph.backward()
    assert copied() > before
    assert grad_bits(arrays) == first
    graph.close()


def test_force_epoch_wrap_twice_without_a_wrap_between_loses_nothing():
    """The hook may move the visit mark back (a backward used fewer marks than it was given):
    it clears the live marks, or a node still holding a mark to come would be taken for visited
    and its gradient lost."""
    results = []
    for M in (REFERENCE, COMPILED):
        loss, (a, b, _) = matmul(M, np.random.default_rng(5))
        for _ in range(2):  # the second backward's leaf gradients, alone
            a.zero_grad()
            b.zero_grad()
            if M is COMPILED:
                _engine._force_epoch_wrap(1000)  # a backward takes a few marks: no wrap
            loss.backward()
        results.append(grad_bits([a, b]))
    assert results[0] == results[1]
    assert any(g != bits(0.0) for g in results[1])


def test_force_epoch_wrap_refuses_a_negative_count():
    with pytest.raises(ValueError, match="marks_before"):
        _engine._force_epoch_wrap(-1)
