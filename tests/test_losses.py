"""michigrad.losses: values and gradients equal torch.nn.functional's (float64), the stable forms
stay finite where the textbook formulas overflow, and bad shapes are clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from micrograd.engine import Value as MGValue

from michigrad import losses as L
from michigrad.engine import Value

TOL = 1e-12


def values(xs):
    return [Value(float(x)) for x in xs]


def tensor(xs):
    return torch.tensor([float(x) for x in xs], dtype=torch.float64, requires_grad=True)


def check(loss, vs, t_loss, t):
    """Our loss Value and input gradients against torch's."""
    assert loss.data == pytest.approx(t_loss.item(), rel=TOL, abs=TOL)
    loss.backward()
    t_loss.backward()
    assert [v.grad for v in vs] == pytest.approx(t.grad.tolist(), rel=1e-10, abs=TOL)


RNG = np.random.RandomState(0)
PRED = RNG.randn(7) * 2
TARGET = RNG.randn(7) * 2


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ours,theirs", [(L.mse_loss, F.mse_loss), (L.l1_loss, F.l1_loss),
                                         (L.huber_loss, F.huber_loss)])
def test_regression_losses_match_torch(ours, theirs, reduction):
    vs, t = values(PRED), tensor(PRED)
    check(ours(vs, list(TARGET), reduction=reduction), vs,
          theirs(t, torch.tensor(TARGET), reduction=reduction), t)


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_huber_matches_torch_on_both_sides_of_delta_and_at_it(delta):
    pred = [0.0, 0.2, -0.4, delta, -delta, 2.5, -7.0]  # |d| = delta exactly: linear branch
    vs, t = values(pred), tensor(pred)
    check(L.huber_loss(vs, [0.0] * 7, delta=delta), vs,
          F.huber_loss(t, torch.zeros(7, dtype=torch.float64), delta=delta), t)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_huber_with_an_infinite_delta_is_the_quadratic_as_in_torch(reduction):
    # delta*relu(|d| - delta) is inf*0 there: NaN, where torch gives 0.5*d**2
    vs, t = values(PRED), tensor(PRED)
    check(L.huber_loss(vs, list(TARGET), reduction, delta=math.inf), vs,
          F.huber_loss(t, torch.tensor(TARGET), reduction=reduction, delta=math.inf), t)


def test_mae_is_l1():
    assert L.mae_loss is L.l1_loss
    vs = values([1.0, -2.0])
    assert L.mae_loss(vs, [0.0, 0.0]).data == 1.5


def test_reduction_none_gives_per_element_losses():
    out = L.mse_loss(values([1.0, 2.0, 3.0]), [1.0, 0.0, 0.0], reduction="none")
    assert [v.data for v in out] == [0.0, 4.0, 9.0]
    with pytest.raises(ValueError, match="reduction must be one of"):
        L.mse_loss(values([1.0]), [1.0], reduction="avg")


def test_nested_inputs_are_flattened_like_tensors():
    pred = [[Value(1.0), Value(2.0)], [Value(3.0), Value(4.0)]]
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    target = [[0.5, 0.5], [0.0, 8.0]]
    loss = L.mse_loss(pred, target)
    ref = F.mse_loss(t, torch.tensor(target, dtype=torch.float64))
    assert loss.data == ref.item()
    loss.backward()
    ref.backward()
    assert [v.grad for row in pred for v in row] == pytest.approx(t.grad.ravel().tolist())


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="input has 2 elements, target 3"):
        L.mse_loss(values([1.0, 2.0]), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="same shape"):
        L.l1_loss(values([1.0, 2.0]), 1.0)
    with pytest.raises(ValueError, match="empty input"):
        L.mse_loss([], [])


def test_a_scalar_prediction_and_target():
    v = Value(3.0)
    loss = L.mse_loss(v, 1.0)
    loss.backward()
    assert loss.data == 4.0 and v.grad == 4.0


# ============================================================================== hinge

def test_hinge_is_micrograds_demo_loss_bit_for_bit():
    scores_ours = [Value(s) for s in PRED]
    scores_mg = [MGValue(s) for s in PRED]
    y = np.array([1, -1, 1, 1, -1, -1, 1])
    ours = L.hinge_loss(scores_ours, y)
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores_mg)]
    theirs = sum(losses) * (1.0 / len(losses))
    assert ours.data == theirs.data


def test_hinge_matches_torch_multi_margin_loss():
    # binary multi_margin_loss over the columns [0, s] is relu(1 - y*s) / 2 per sample
    y = [1, -1, 1, 1, -1, -1, 1]
    vs, t = values(PRED), tensor(PRED)
    two_col = torch.stack([torch.zeros(7, dtype=torch.float64), t], dim=1)
    ref = F.multi_margin_loss(two_col, torch.tensor([int(v > 0) for v in y])) * 2
    check(L.hinge_loss(vs, y), vs, ref, t)
    vs, t = values(PRED), tensor(PRED)
    check(L.hinge_loss(vs, y, margin=0.5, reduction="sum"), vs,
          F.relu(0.5 - torch.tensor(y, dtype=torch.float64) * t).sum(), t)


# ===================================================================== cross-entropies

PROBS = [0.01, 0.2, 0.5, 0.7, 0.999, 0.35]
LABELS = [0.0, 1.0, 1.0, 0.0, 1.0, 0.3]  # a soft label too


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_binary_cross_entropy_matches_torch(reduction):
    vs, t = values(PROBS), tensor(PROBS)
    check(L.binary_cross_entropy(vs, LABELS, reduction=reduction), vs,
          F.binary_cross_entropy(t, torch.tensor(LABELS, dtype=torch.float64), reduction=reduction), t)


def test_binary_cross_entropy_clamps_the_log_like_torch():
    vs, t = values([0.0, 1.0]), tensor([0.0, 1.0])
    loss = L.binary_cross_entropy(vs, [1.0, 0.0])
    ref = F.binary_cross_entropy(t, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert loss.data == ref.item() == 100.0
    loss.backward()
    ref.backward()
    # torch divides by max(p*(1-p), 1e-12) with its epsilon in single precision: rel 4e-9
    assert [v.grad for v in vs] == pytest.approx(t.grad.tolist(), rel=1e-8)
    assert vs[0].grad == -0.5e12
    with pytest.raises(ValueError, match=r"input must be in \[0, 1\]"):
        L.binary_cross_entropy(values([1.5]), [1.0])


LOGITS = [-30.0, -3.0, -0.5, 0.0, 0.0, 0.5, 4.0, 40.0]
LOGIT_LABELS = [0.0, 1.0, 0.0, 1.0, 0.0, 0.25, 1.0, 0.0]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_binary_cross_entropy_with_logits_matches_torch(reduction):
    vs, t = values(LOGITS), tensor(LOGITS)
    check(L.binary_cross_entropy_with_logits(vs, LOGIT_LABELS, reduction=reduction), vs,
          F.binary_cross_entropy_with_logits(t, torch.tensor(LOGIT_LABELS, dtype=torch.float64),
                                             reduction=reduction), t)


def test_binary_cross_entropy_with_logits_is_stable_at_1000():
    logits, labels = [1000.0, -1000.0, 1000.0, -1000.0], [0.0, 1.0, 1.0, 0.0]
    vs, t = values(logits), tensor(logits)
    loss = L.binary_cross_entropy_with_logits(vs, labels, reduction="none")
    assert [v.data for v in loss] == [1000.0, 1000.0, 0.0, 0.0]
    vs, t = values(logits), tensor(logits)
    check(L.binary_cross_entropy_with_logits(vs, labels), vs,
          F.binary_cross_entropy_with_logits(t, torch.tensor(labels, dtype=torch.float64)), t)
    assert [v.grad for v in vs] == [0.25, -0.25, 0.0, 0.0]  # (sigmoid(z) - y) / 4


def test_binary_cross_entropy_with_logits_gradient_at_zero_is_sigmoid():
    z = Value(0.0)
    L.binary_cross_entropy_with_logits(z, 1.0).backward()
    assert z.grad == -0.5  # sigmoid(0) - 1, not a subgradient of relu/abs


BATCH = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 5.0, 1.0], [0.0, 0.0, 0.0]]
CLASSES = [0, 2, 1, 1]


def batch_values(rows):
    return [values(r) for r in rows]


def grads_of(rows):
    return [[v.grad for v in r] for r in rows]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_torch(reduction):
    vs = batch_values(BATCH)
    t = torch.tensor(BATCH, dtype=torch.float64, requires_grad=True)
    loss = L.cross_entropy(vs, CLASSES, reduction=reduction)
    ref = F.cross_entropy(t, torch.tensor(CLASSES), reduction=reduction)
    assert loss.data == pytest.approx(ref.item(), rel=TOL)
    loss.backward()
    ref.backward()
    assert np.allclose(grads_of(vs), t.grad.numpy(), rtol=1e-10, atol=TOL)


def test_cross_entropy_of_one_sample_and_with_probability_targets():
    vs = values([1.0, 2.0, 3.0])
    assert L.cross_entropy(vs, 2).data == pytest.approx(
        F.cross_entropy(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), torch.tensor([2])).item())
    probs = [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]
    vs = batch_values(BATCH)
    t = torch.tensor(BATCH, dtype=torch.float64, requires_grad=True)
    loss = L.cross_entropy(vs, probs)
    ref = F.cross_entropy(t, torch.tensor(probs, dtype=torch.float64))
    assert loss.data == pytest.approx(ref.item(), rel=TOL)
    loss.backward()
    ref.backward()
    assert np.allclose(grads_of(vs), t.grad.numpy(), rtol=1e-10, atol=TOL)


@pytest.mark.parametrize(("rows", "targets"), [
    ([[1000.0, -1000.0, 500.0], [-1000.0, -1000.0, -999.0]], [1, 2]),  # huge logits
    # the shift is one exact max node: a leading -inf or a spread beyond 1e18 is no problem
    ([[-math.inf, 0.0, 1.0], [1e20, -1e20, 0.0]], [2, 0]),
])
def test_cross_entropy_is_finite_and_torchs_on_extreme_logits(rows, targets):
    vs = batch_values(rows)
    t = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    loss = L.cross_entropy(vs, targets)
    ref = F.cross_entropy(t, torch.tensor(targets))
    assert math.isfinite(loss.data) and loss.data == pytest.approx(ref.item(), rel=TOL)
    loss.backward()
    ref.backward()
    assert np.allclose(grads_of(vs), t.grad.numpy(), rtol=1e-10, atol=TOL)


def test_cross_entropy_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"target class 3 is not in 0..2"):
        L.cross_entropy(values([1.0, 2.0, 3.0]), 3)
    with pytest.raises(ValueError, match="2 samples need 2 targets"):
        L.cross_entropy(batch_values(BATCH[:2]), [0])
    with pytest.raises(ValueError, match="one probability per class"):
        L.cross_entropy(values([1.0, 2.0]), [0.5, 0.25, 0.25])


@pytest.mark.parametrize("bad", [True, False, math.nan, math.inf, -math.inf, 1.5, -1])
def test_cross_entropy_class_index_rules_are_those_of_array_input(bad):
    # a bool is not a class index (torch refuses it too), NaN and inf are not classes: the same
    # ValueError for a list of Values as for an MLArray, not int()'s "cannot convert"
    with pytest.raises(ValueError, match=r"target class .* is not in 0..2"):
        L.cross_entropy(values([1.0, 2.0, 3.0]), bad)
    with pytest.raises(ValueError, match=r"target class .* is not in 0..2"):
        L.cross_entropy([values([1.0, 2.0, 3.0])] * 2, [0, bad])
    for good in (2, 2.0, np.int64(2), np.float64(2.0)):
        assert L.cross_entropy(values([1.0, 2.0, 3.0]), good).data == pytest.approx(
            F.cross_entropy(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
                            torch.tensor(2)).item(), rel=TOL)


# ===================================================================== class forms

def test_class_forms_call_the_functions():
    vs = values(PRED)
    assert L.MSELoss()(vs, list(TARGET)).data == L.mse_loss(vs, list(TARGET)).data
    assert L.L1Loss(reduction="sum")(vs, list(TARGET)).data == L.l1_loss(vs, list(TARGET), "sum").data
    assert L.HuberLoss(delta=0.5)(vs, list(TARGET)).data == L.huber_loss(vs, list(TARGET), delta=0.5).data
    y = [1, -1, 1, 1, -1, -1, 1]
    assert L.HingeLoss()(vs, y).data == L.hinge_loss(vs, y).data
    assert L.BCEWithLogitsLoss()(vs, [0.0] * 7).data == L.binary_cross_entropy_with_logits(vs, [0.0] * 7).data
    assert L.BCELoss()(values([0.5]), [1.0]).data == pytest.approx(math.log(2))
    assert L.CrossEntropyLoss()(batch_values(BATCH), CLASSES).data == L.cross_entropy(
        batch_values(BATCH), CLASSES).data
    assert repr(L.MSELoss()) == "MSELoss()"
    with pytest.raises(ValueError, match="reduction"):
        L.MSELoss(reduction="avg")
