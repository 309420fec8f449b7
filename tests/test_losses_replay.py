"""Every loss replays: a ``michigrad.Graph`` recorded on one batch and fed batches that take every
other branch (|d| on both sides of Huber's delta, logits of either sign and huge, probabilities at
and below the clamped log's floor, a new largest logit) computes the value and the input gradients
of a fresh build of the same loss, bit for bit -- scalar and MLArray forms, both engines.

(No torch here: the oracle is the fresh build; test_losses.py and test_array_oracles.py check the
losses themselves against torch.)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from michigrad import Graph, losses
from conftest import bits, check_replays


@pytest.fixture(autouse=True)
def active(Value: type, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: N803 - fixture name
    """losses wraps numbers with the engine under test's Value."""
    monkeypatch.setattr(losses, "Value", Value)


# name -> (loss of (input, target, reduction), target, the batch recorded, batches fed after it)
Loss = Callable[[Any, Any, str], Any]

ZERO = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
CASES: dict[str, tuple[Loss, Any, list[Any], list[Any]]] = {
    "mse": (losses.mse_loss, ZERO, [[0.1, 0.2, -0.3], [0.5, -0.4, 0.0]],
            [[[5.0, 0.2, -3.0], [1.0, -1.0, 0.999]]]),
    "l1": (losses.l1_loss, ZERO, [[0.1, 0.2, -0.3], [0.5, -0.4, 0.0]],
           [[[-5.0, 0.0, 3.0], [1.0, -1.0, 0.999]]]),
    # recorded with every |d| < delta (the quadratic side); then the linear side, |d| = delta
    # exactly, both sides mixed
    "huber": (lambda x, t, r: losses.huber_loss(x, t, r, delta=1.0), ZERO,
              [[0.1, 0.2, -0.3], [0.5, -0.4, 0.0]],
              [[[5.0, 0.2, -3.0], [1.0, -1.0, 0.999]], [[-7.5, 2.0, 1e6], [-1e-3, 1.5, -0.5]],
               [[0.1, 0.2, -0.3], [0.5, -0.4, 0.0]]]),
    "hinge": (losses.hinge_loss, [[1, -1, 1], [-1, 1, 1]], [[0.1, 0.2, -0.3], [0.5, -0.4, 0.0]],
              [[[5.0, 0.2, -3.0], [-1.0, -1.0, 0.999]]]),
    # recorded with small logits of either sign; then ±1000 (overflowed when the stable branch
    # was picked from the recorded signs), exactly 0, sign flips
    "bce_logits": (losses.binary_cross_entropy_with_logits, [[1.0, 0.0, 1.0], [0.25, 1.0, 0.0]],
                   [[0.5, -0.5, 2.0], [-3.0, 0.1, 1.0]],
                   [[[-1000.0, 1000.0, 0.0], [30.0, -30.0, 0.5]],
                    [[1000.0, -1000.0, -2.0], [0.0, 700.0, -710.0]],
                    [[-0.5, 0.5, -2.0], [3.0, -0.1, -1.0]]]),
    # hard labels (one log each) and soft ones (both logs); recorded inside (0, 1), then p at 0
    # and 1 (clamped logs), below the floor e**-100, just above it, near 1
    "bce": (losses.binary_cross_entropy, [[1.0, 0.0, 0.3], [1.0, 0.0, 0.5]],
            [[0.3, 0.6, 0.5], [0.9, 0.2, 0.4]],
            [[[0.0, 1.0, 0.0], [1e-50, 1.0 - 1e-16, 1.0]],
             [[1e-30, 1e-45, 1e-60], [1.0, 0.0, 1e-200]],
             [[0.7, 0.1, 0.999999], [0.5, 0.5, 0.5]]]),
    # recorded with the largest logit last; then a huge new largest logit elsewhere (overflowed
    # with the recorded max as a constant shift), huge negatives, ties
    "cross_entropy": (losses.cross_entropy, [2, 0], [[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]],
                      [[[0.0, 1.0, 800.0], [-800.0, 0.0, 5.0]],
                       [[1000.0, -1000.0, 500.0], [-1000.0, -1000.0, -999.0]],
                       [[0.0, 0.0, 0.0], [1e15, 3.0, -1e15]]]),
    "cross_entropy_probs": (losses.cross_entropy, [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]],
                            [[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]],
                            [[[900.0, 1.0, -800.0], [-800.0, 0.0, 5.0]],
                             [[-1000.0, 1000.0, 500.0], [7.0, 7.0, 7.0]]]),
}


def test_cross_entropy_makes_its_max_node_with_the_logits_engine(
        Value: type, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: N803
    # whichever engine engine.max_of is (the reference one under MICHIGRAD_PURE=1), the 'max'
    # node is made by the engine of the logits: it was the default engine's for compiled Values
    from michigrad import _engine, _reference

    for default in (_engine.max_of, _reference.max_of):
        monkeypatch.setattr(losses, "max_of", default)
        loss = losses.cross_entropy([Value(1.0), Value(3.0)], 1)
        assert type(loss) is Value and loss.data == pytest.approx(0.12692801104297263, rel=1e-15)


def scalar_inputs(Value: type, rows: list[list[float]]) -> list[list[Any]]:  # noqa: N803
    return [[Value(x) for x in row] for row in rows]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_scalar_loss_replays_to_a_fresh_build(Value: type, name: str,  # noqa: N803
                                               reduction: str) -> None:
    fn, target, recorded, batches = CASES[name]
    X = scalar_inputs(Value, recorded)  # noqa: N806 - a batch is X
    g = Graph(fn(X, target, reduction), inputs=X)

    def fresh(batch: Any) -> tuple[Any, list[Any]]:
        Xf = scalar_inputs(Value, batch)  # noqa: N806
        return fn(Xf, target, reduction), [v for row in Xf for v in row]

    check_replays(g, [v for row in X for v in row], fresh, batches + [recorded])
    g.close()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_array_loss_replays_to_a_fresh_build(MLArray: type, name: str,  # noqa: N803
                                              reduction: str) -> None:
    fn, target, recorded, batches = CASES[name]
    X = MLArray(recorded)  # noqa: N806
    g = Graph(fn(X, target, reduction), inputs=X)

    def fresh(batch: Any) -> tuple[Any, list[Any]]:
        Xf = MLArray(np.array(batch))  # noqa: N806
        return fn(Xf, target, reduction), Xf.values()

    check_replays(g, X.values(), fresh, [np.array(b) for b in batches] + [np.array(recorded)])
    g.close()


def test_the_reviewed_failures_now_replay(Value: type, MLArray: type) -> None:  # noqa: N803
    """The cases found in review: each replay used to overflow or silently differ."""
    def replayed(loss: Any, X: Any, batch: Any) -> float:  # noqa: N803
        g = Graph(loss, inputs=X)
        g.feed(batch)
        out = g.forward()
        g.close()
        return out

    for form in ("scalar", "array"):
        def inputs(rows: list[list[float]]) -> Any:
            return scalar_inputs(Value, rows) if form == "scalar" else MLArray(rows)

        X = inputs([[0.0, 1.0, 2.0]])  # noqa: N806
        assert replayed(losses.cross_entropy(X, [2]), X, [[0.0, 1.0, 800.0]]) == 0.0
        X = inputs([[0.1, 0.2]])  # noqa: N806
        assert replayed(losses.huber_loss(X, [[0.0, 0.0]]), X, [[5.0, 0.2]]) == pytest.approx(2.26)
        X = inputs([[1.0, -1.0]])  # noqa: N806
        assert replayed(losses.binary_cross_entropy_with_logits(X, [[0.0, 1.0]], "sum"), X,
                        [[1000.0, -1000.0]]) == 2000.0
        X = inputs([[0.5, 0.5]])  # noqa: N806
        assert replayed(losses.binary_cross_entropy(X, [[1.0, 0.0]], "sum"), X,
                        [[0.0, 1.0]]) == 200.0
