"""michigrad.Graph over MLArray graphs: the array ops (linear, sum, max, min, leaky_relu, elu,
softmax's max shift) replay to the same bits as a fresh build, on both engines; MLArrays are
accepted as the output, the inputs and the parameters of a Graph.

(No torch here: this module also runs under valgrind, see scripts/memcheck.sh.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from michigrad import Graph
from michigrad.array import elu, log_softmax, softmax
from conftest import bits, check_replays

BATCH, NIN, HIDDEN, NOUT = 5, 3, 4, 3


def make_params(MLArray: type) -> list[Any]:  # noqa: N803 - the fixture's name
    rng = np.random.default_rng(7)
    return [MLArray(rng.normal(size=(NIN, HIDDEN))), MLArray(rng.normal(size=(HIDDEN,))),
            MLArray(rng.normal(size=(HIDDEN, NOUT)))]


def loss_of(X: Any, params: list[Any]) -> Any:  # noqa: N803 - a batch is X
    """A loss that goes through every array op whose value depends on the data."""
    w1, b1, w2 = params
    h = (X @ w1 + b1).leaky_relu(0.1)
    z = h @ w2
    return (-log_softmax(z, axis=1).mean() + softmax(z, axis=0).max(axis=1).sum()
            + h.min() + elu(h).mean() + h.abs().std() + (z ** 2).sum(axis=0).max())


def element_values(arrays: list[Any]) -> list[Any]:
    return [v for a in arrays for v in a.values()]


def test_array_graph_replays_to_the_bits_of_a_fresh_build(MLArray: type) -> None:  # noqa: N803
    params = make_params(MLArray)
    X = MLArray.zeros(BATCH, NIN)  # noqa: N806 - the input leaves
    g = Graph(loss_of(X, params), inputs=X, params=params)
    leaves = element_values(params)
    rng = np.random.default_rng(3)
    def fresh(batch: Any) -> tuple[Any, list[Any]]:
        return loss_of(MLArray(batch), params).values()[0], leaves

    for _ in range(4):
        batch = rng.normal(size=(BATCH, NIN)) * 3  # large enough to flip relu/max/min choices
        check_replays(g, leaves, fresh, [batch])
        for p in leaves:  # move the parameters too: the next replay reads them
            p.data = p.data - 0.01 * p.grad
    g.close()


def test_std_replays_its_zero_gradient_at_zero_spread(MLArray: type) -> None:  # noqa: N803
    def loss(x: Any) -> Any:
        return (x.std(axis=1) * MLArray([1.0, 2.0, 3.0])).sum()

    def fresh(batch: Any) -> tuple[Any, list[Any]]:
        x = MLArray(batch)
        return loss(x).values()[0], x.values()

    X = MLArray.zeros(3, 4)  # noqa: N806
    g = Graph(loss(X), inputs=X)
    leaves = X.values()
    batches = [np.array([[1.0, 1.0, 1.0, 1.0], [0.5, -1.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]]),
               np.zeros((3, 4))]
    check_replays(g, leaves, fresh, batches)
    g.feed(batches[0])
    g.forward()
    for v in leaves:
        v.grad = 0
    g.backward()
    grads = np.array([v.grad for v in leaves]).reshape(3, 4)
    assert grads[0].tolist() == [0.0] * 4 == grads[2].tolist() and np.isfinite(grads).all()
    g.close()


def test_train_step_over_an_array_model_equals_dynamic_sgd(MLArray: type) -> None:  # noqa: N803
    batches = [np.random.default_rng(k).normal(size=(BATCH, NIN)) for k in range(3)]
    replay_params, dynamic_params = make_params(MLArray), make_params(MLArray)
    X = MLArray.zeros(BATCH, NIN)  # noqa: N806
    g = Graph(loss_of(X, replay_params), inputs=X, params=replay_params)
    replay_losses, dynamic_losses = [], []
    for batch in batches:
        g.feed(batch)
        replay_losses.append(g.train_step(0.05))
        loss = loss_of(MLArray(batch), dynamic_params)
        for p in element_values(dynamic_params):
            p.grad = 0
        loss.backward()
        for p in element_values(dynamic_params):
            p.data -= 0.05 * p.grad
        dynamic_losses.append(loss.item())
    assert [bits(x) for x in replay_losses] == [bits(x) for x in dynamic_losses]
    assert ([bits(p.data) for p in element_values(replay_params)]
            == [bits(p.data) for p in element_values(dynamic_params)])


def test_array_inputs_fix_the_batch_shape(MLArray: type) -> None:  # noqa: N803
    X = MLArray.zeros(BATCH, NIN)  # noqa: N806
    g = Graph(loss_of(X, make_params(MLArray)), inputs=X)
    assert [v.data for v in g.inputs] == [0.0] * (BATCH * NIN)
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        g.feed(np.zeros((NIN, BATCH)))
    g.feed(np.arange(BATCH * NIN, dtype=float).reshape(BATCH, NIN))
    assert X.to_list() == np.arange(BATCH * NIN, dtype=float).reshape(BATCH, NIN).tolist()


def test_an_array_output_must_have_one_element(MLArray: type) -> None:  # noqa: N803
    X = MLArray.ones(2, 2)  # noqa: N806
    with pytest.raises(ValueError, match=r"one-element output.*\(2, 2\)"):
        Graph(X * 2)
    assert Graph((X * 2).sum(), inputs=X).forward() == 8.0


# Graphs whose matmul outputs the compiled replay recomputes side by side, on copies of their
# rows (a depth of the graph at a time): each against a fresh build, for new inputs and after
# the parameters move.

def chained(M: type, X: Any, params: list[Any]) -> Any:  # noqa: N803
    """(X @ w) @ v with no op between: the second product reads the first, one depth up."""
    w, v, _ = params
    return ((X @ w) @ v * 0.5).sum() + (X @ w).tanh().sum()


def dense_rows(M: type, X: Any, params: list[Any]) -> Any:  # noqa: N803
    """A dense layer with a bias (its outputs share an x row), 13 outputs a row: groups of 8
    and the rest alone."""
    from michigrad.array import dense
    _, _, b = params
    w = params[0].T[:13] if params[0].shape[1] >= 13 else params[0].T
    return dense(X, w, b[: w.shape[0]]).tanh().sum()


def wider_than_a_run(M: type, X: Any, params: list[Any]) -> Any:  # noqa: N803
    """91 x 91 outputs at one depth: more than one run of 8192."""
    w, _, _ = params
    return ((X.T @ X) * 0.25).tanh().sum() + (w * 0.5).sum()


def specials(M: type, X: Any, params: list[Any]) -> Any:  # noqa: N803
    """Operand rows that hold -0.0, infinities and NaN (set in the batch)."""
    w, v, _ = params
    return ((X @ w) * -0.0).sum() + ((X @ w) @ v).sum()


WIDE_SHAPES = {chained: (9, 40), dense_rows: (12, 40), wider_than_a_run: (40, 91), specials: (9, 40)}


def wide_params(M: type, nin: int) -> list[Any]:  # noqa: N803
    rng = np.random.default_rng(11)
    return [M(rng.normal(size=(nin, 24)) * 0.2), M(rng.normal(size=(24, 20)) * 0.2),
            M(rng.normal(size=(24,)))]


@pytest.mark.parametrize("graph", list(WIDE_SHAPES), ids=lambda g: g.__name__)
def test_matmul_outputs_replay_side_by_side_to_a_fresh_builds_bits(MLArray: type, graph: Any) -> None:  # noqa: N803
    rows, nin = WIDE_SHAPES[graph]
    params = wide_params(MLArray, nin)
    X = MLArray.zeros(rows, nin)  # noqa: N806
    g = Graph(graph(MLArray, X, params), inputs=X, params=params)
    leaves = element_values(params)

    def fresh(batch: Any) -> tuple[Any, list[Any]]:
        return graph(MLArray, MLArray(batch), params).values()[0], leaves

    rng = np.random.default_rng(5)
    for step in range(3):
        batch = rng.normal(size=(rows, nin))
        if graph is specials:
            batch[::2, ::7] = [-0.0, np.inf, np.nan, 5e-324, -np.inf, 0.0][: len(batch[0, ::7])]
            for v in leaves:
                v.grad = 0
            g.feed(batch)
            replayed = g.forward()
            assert bits(replayed) == bits(graph(MLArray, MLArray(batch), params).item())
        else:
            check_replays(g, leaves, fresh, [batch])
        for p in leaves:  # the next replay reads the moved parameters
            p.data = p.data - 0.01 * (p.grad if math.isfinite(p.grad) else 0.0)
    g.close()


# The compiled replay sums 32 or 16 outputs that share a row (of 32 to 4096 products) on a
# panel: their other rows copied side by side, made when a set of rows is met a second time in
# a run and kept for the rest of it (8 at most). The reference engine sums one at a time.
# Each graph: (leaf arrays' shapes, loss of the arrays, whether panels are used).

def panel_matmul(M: type, a: Any, b: Any) -> Any:  # noqa: N803
    """W1's shape: each of a's 64 rows meets the same two sets of 32 of b's columns."""
    return (a @ b).tanh().sum()


def panel_dense(M: type, x: Any, w: Any, bias: Any) -> Any:  # noqa: N803
    """A dense layer, 48 outputs a sample (32 + 16): the w rows, each with its bias first, are
    the panels every sample meets."""
    from michigrad.array import dense
    return (dense(x, w, bias).tanh() * 0.5).sum()


def panel_many_sets(M: type, a: Any, b: Any, c: Any) -> Any:  # noqa: N803
    """Eleven sets of 32 columns a row, more than the 8 panels kept: they keep replacing one
    another; and a second product one depth up, with a run of its own."""
    ab = a @ b
    return (ab @ c).sum() + ab.sum()


def panel_seen_once(M: type, a: Any, b: Any) -> Any:  # noqa: N803
    """One row of outputs: every set of columns is met once, so no panel is made."""
    return (a @ b).sum()


PANEL_GRAPHS = {
    panel_matmul: ([(64, 64), (64, 64)], True),
    panel_dense: ([(20, 40), (48, 40), (48,)], True),
    panel_many_sets: ([(5, 33), (33, 352), (352, 32)], True),
    panel_seen_once: ([(1, 50), (50, 64)], False),
}


@pytest.mark.parametrize("graph", list(PANEL_GRAPHS), ids=lambda g: g.__name__)
def test_outputs_summed_on_panels_replay_to_a_fresh_builds_bits(engine: str, MLArray: type, graph: Any) -> None:  # noqa: N803
    def panel_outputs() -> int:
        from michigrad import _engine
        return _engine._arena_stats()["panel_outputs"] if engine == "compiled" else 0

    shapes, uses_panels = PANEL_GRAPHS[graph]
    rng = np.random.default_rng(17)
    arrays = [MLArray(rng.normal(size=shape)) for shape in shapes]
    leaves = element_values(arrays)
    g = Graph(graph(MLArray, *arrays))
    for step in range(3):
        for p in leaves:  # new data each run: the panels of the last one are stale
            p.data = p.data * 0.9 + 0.01 * step
            p.grad = 0
        before = panel_outputs()
        replayed = g.forward()
        on_panels = panel_outputs() - before
        g.backward()
        replayed_grads = [bits(p.grad) for p in leaves]
        for p in leaves:
            p.grad = 0
        fresh = graph(MLArray, *arrays)
        fresh.backward()
        assert bits(replayed) == bits(fresh.item())
        assert replayed_grads == [bits(p.grad) for p in leaves]
        if engine == "compiled":
            assert (on_panels > 0) == uses_panels, on_panels
    g.close()


def test_int_operands_replay_with_ints(MLArray: type) -> None:  # noqa: N803
    """A matmul over int leaves: its products are ints (Python's int arithmetic), so the
    replay takes the int-aware path and gives ints, as a fresh build does."""
    rng = np.random.default_rng(2)
    a, b = MLArray(rng.integers(-3, 4, (12, 40)).tolist()), MLArray(rng.integers(-3, 4, (40, 9)).tolist())
    out = a @ b
    g = Graph(out.sum())
    a[0, 0].data = 5  # an int still: the replay must see it
    b[3, 3].data = 2.5  # one float: the products of b's column 3 are floats
    replayed = g.forward()
    fresh = (a @ b).sum().item()
    assert bits(replayed) == bits(fresh)
    assert type(replayed) is type(fresh)
    assert [type(v.data) for v in out.values()] == [type(v.data) for v in (a @ b).values()]
    g.close()


def test_a_forward_error_is_a_fresh_builds_whatever_order_the_replay_runs_in() -> None:
    """The compiled replay runs a graph with matmul outputs depth by depth; an error must still
    be the one the topological order meets first (as a fresh build, and the reference replay),
    with the nodes before it new and the rest old -- here the matmul's outputs, which the depth
    pass computes before it meets the other error."""
    from michigrad.array import array_class

    results = []
    for engine in ("reference", "compiled"):
        M = array_class(engine)  # noqa: N806
        rng = np.random.default_rng(4)
        x, w = M(rng.uniform(0.5, 1.0, (6, 40))), M(rng.uniform(0.5, 1.0, (40, 9)))
        y = x @ w
        # depth 1: x * 1.0, y and x.exp(); depth 2: the log. In the topological order the log
        # of (x * 1.0)[0, 0] comes first, y and the exps after it.
        root = (x * 1.0).log().sum() + y.sum() + x.exp().sum()
        g = Graph(root)
        x[0, 0].data = -1.0  # the log fails: first in topological order ...
        x[1, 1].data = 1000.0  # ... the exp overflows: first in depth order
        with pytest.raises(ValueError) as error:
            g.forward()
        with pytest.raises(RuntimeError, match="stale"):
            g.backward()
        results.append((str(error.value), [bits(v.data) for v in y.values()],
                        [bits(v.data) for v in root.values()]))
        g.close()
    assert results[0] == results[1]
