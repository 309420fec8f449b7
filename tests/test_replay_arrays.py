"""michigrad.Graph over MLArray graphs: the array ops (linear, sum, max, min, leaky_relu, elu,
softmax's max shift) replay to the same bits as a fresh build, on both engines; MLArrays are
accepted as the output, the inputs and the parameters of a Graph.

(No torch here: this module also runs under valgrind, see scripts/memcheck.sh.)
"""

from __future__ import annotations

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
