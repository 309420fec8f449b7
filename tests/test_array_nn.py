"""MLArrays in michigrad.nn and michigrad.losses: the Dense layer (a batch in one kernel call,
micrograd's numbers), the activation layers on arrays, and every loss on arrays -- the same numbers
as the scalar forms, with clear errors. Both engines (the Dense tests switch the active MLArray and
Value classes of michigrad.array, nn and optim to the engine under test).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import michigrad
from michigrad import losses, nn, optim
from michigrad import array as A
from michigrad.array import array_class
from conftest import bits


@pytest.fixture
def active(engine, MLArray, Value, monkeypatch):
    """Make the engine under test the one nn, optim and losses build on."""
    monkeypatch.setattr(A, "MLArray", MLArray)
    for module in (nn, optim, losses):
        monkeypatch.setattr(module, "Value", Value)
    monkeypatch.setattr(nn, "linear", __import__(Value.__module__, fromlist=["linear"]).linear)
    return MLArray


# ===================================================================================== Dense

def test_dense_shapes(active):
    MLArray = active
    d = nn.Dense(3, 4)
    assert d.weight.shape == (4, 3) and d.bias.shape == (4,)
    assert d(MLArray.ones(5, 3)).shape == (5, 4)
    assert d(MLArray.ones(3)).shape == (4,)
    assert d(MLArray.ones(2, 6, 3)).shape == (2, 6, 4)
    assert d([[1.0, 2.0, 3.0]]).shape == (1, 4)  # lists become arrays
    assert nn.Dense(3, 4, bias=False)(MLArray.ones(2, 3)).shape == (2, 4)
    assert nn.Dense(0, 2)(MLArray.zeros(5, 0)).to_list() == [[0, 0]] * 5  # an empty sum: bias
    with pytest.raises(ValueError, match=r"expects inputs of shape \(\.\.\., 3\), got \(2, 4\)"):
        d(MLArray.ones(2, 4))
    with pytest.raises(ValueError, match="activation"):
        nn.Dense(2, 2, activation="softplus")


def test_dense_function_rejects_bad_arguments_by_name(MLArray, engine):
    other = array_class("reference" if engine == "compiled" else "compiled")
    w, x, b = MLArray.ones(4, 3), MLArray.ones(2, 3), MLArray.ones(4)
    assert A.dense(x, w, b).shape == (2, 4)
    cases = [
        (lambda: A.dense(x, [[1.0] * 3] * 4, b), TypeError, "weight must be an MLArray"),
        (lambda: A.dense(x, MLArray.ones(4, 3, 1), b), ValueError, r"2-D \(nout, nin\)"),
        (lambda: A.dense(MLArray.ones(2, 5), w, b), ValueError, r"\(2, 5\).*3 features"),
        (lambda: A.dense(MLArray(1.0), w), ValueError, "features"),
        (lambda: A.dense(x, w, MLArray.ones(3)), ValueError, r"shape \(4,\), not \(3,\)"),
        (lambda: A.dense(x, w, [1.0] * 4), ValueError, "not list"),
        (lambda: A.dense(other.ones(2, 3), w, b), TypeError, "engine"),
        (lambda: A.dense(x, w, other.ones(4)), TypeError, "engine"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_dense_is_linear_to_the_last_bit(active, Value):
    """Same draws as nn.Linear (micrograd's), same 'linear' nodes: same values and gradients."""
    MLArray = active
    random.seed(7)
    dense = nn.Dense(3, 4)
    random.seed(7)
    layer = nn.Linear(3, 4)
    X = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    inputs = MLArray(X)
    out = dense(inputs)
    assert out[0, 0]._op == "linear"
    assert list(out[2, 1]._children) == [dense.bias[1]] + [dense.weight[1, k] for k in range(3)] \
        + [inputs[2, k] for k in range(3)]
    total_dense = out.tanh().sum()
    total_dense.backward()
    rows = [layer([Value(x) for x in row]) for row in X.tolist()]
    assert [[bits(v.data) for v in r] for r in rows] == \
        [[bits(x) for x in r] for r in out.to_list()]
    scalar_total = sum(v.tanh() for r in rows for v in r)
    scalar_total.backward()
    assert [bits(p.grad) for p in layer.parameters()] == \
        [bits(g) for g in _neuron_order_grads(dense)]


def _neuron_order_grads(dense):
    """Dense's gradients in Linear's parameter order (neuron by neuron: weights, then bias)."""
    w, b = dense.weight.grad().to_list(), dense.bias.grad().to_list()
    return [g for j in range(dense.nout) for g in w[j] + [b[j]]]


def test_dense_activations(active):
    MLArray = active
    X = MLArray(np.linspace(-2, 2, 12).reshape(4, 3))
    for act in ("relu", "tanh", "sigmoid", "leaky_relu", "elu"):
        random.seed(1)
        plain = nn.Dense(3, 2)(X)
        random.seed(1)
        d = nn.Dense(3, 2, activation=act)
        assert d(X).to_list() == getattr(plain, act)().to_list()
        assert act in repr(d)
    random.seed(1)
    custom = nn.Dense(3, 2, activation=A.softmax)(X)
    np.testing.assert_allclose(custom.to_numpy().sum(axis=1), 1.0)
    assert repr(nn.Dense(3, 2, bias=False)) == "Dense(3, 2, bias=False)"


def test_dense_parameters_state_dict_and_saving(active, tmp_path):
    MLArray = active
    random.seed(3)
    model = nn.Sequential(nn.Dense(2, 3, activation="tanh"), nn.Dense(3, 1))
    params = model.parameters()
    assert len(params) == 2 * 3 + 3 + 3 + 1
    assert params[0] is model[0].weight[0, 0] and params[6] is model[0].bias[0]
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["0.weight.0.0", "0.weight.0.1"] and names[-1] == "1.bias.0"
    state = model.state_dict()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert np.shape(state["0.weight"]) == (3, 2)
    path = tmp_path / "dense.json"
    model.save(path)
    random.seed(4)
    other = nn.Sequential(nn.Dense(2, 3, activation="tanh"), nn.Dense(3, 1))
    X = MLArray([[0.5, -1.0], [2.0, 0.25]])
    assert other(X).to_list() != model(X).to_list()
    other.load(path)
    assert other(X).to_list() == model(X).to_list()
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({**state, "1.bias": [0.0, 1.0]})
    shared = nn.Dense(2, 2)
    twice = nn.Sequential(shared, shared)  # one module used twice is one set of parameters
    assert list(twice.state_dict()) == ["0.weight", "0.bias"] and len(twice.parameters()) == 6
    (model(X) ** 2).sum().backward()
    model.zero_grad()
    assert all(p.grad == 0 for p in model.parameters())


def test_deepcopy_of_an_array_model_keeps_its_weights_apart(active):
    """copy.deepcopy(model) -- "keep the best model" -- works for array layers as for Linear:
    new leaves with the same data and gradients, trained apart from the original."""
    import copy

    MLArray = active
    random.seed(5)
    model = nn.Sequential(nn.Dense(2, 3, activation="tanh"), nn.Dense(3, 1))
    X = MLArray([[0.5, -1.0], [2.0, 0.25]])
    (model(X) ** 2).sum().backward()
    best = copy.deepcopy(model)
    assert best(X).to_list() == model(X).to_list()
    assert [p.grad for p in best.parameters()] == [p.grad for p in model.parameters()]
    assert not any(p is q for p, q in zip(best.parameters(), model.parameters()))
    before = [p.data for p in best.parameters()]
    optim.SGD(model.parameters(), lr=0.1).step()
    assert [p.data for p in best.parameters()] == before != [p.data for p in model.parameters()]
    shared = nn.Dense(2, 2)
    twice = copy.deepcopy(nn.Sequential(shared, shared))  # one module: still one after copying
    assert twice[0].weight[0, 0] is twice[1].weight[0, 0]
    with pytest.raises(TypeError, match="leaf"):
        copy.deepcopy(model(X))  # op nodes: their closures cannot be copied, as for a Value


@pytest.mark.parametrize("make_opt", [lambda p: optim.SGD(p, lr=0.1),
                                      lambda p: optim.Adam(p, lr=0.05)])
def test_dense_trains_with_an_optimiser(active, make_opt):
    MLArray = active
    random.seed(0)
    model = nn.Sequential([nn.Dense(2, 8, activation="tanh"), nn.Dense(8, 1)])
    X = MLArray([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = [[0.0], [1.0], [1.0], [0.0]]
    opt = make_opt(model.parameters())
    history = []
    for _ in range(30):
        loss = losses.mse_loss(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.data)
    assert history[-1] < 0.5 * history[0]


def test_activation_layers_take_arrays(active):
    MLArray = active
    random.seed(2)
    model = nn.Sequential(nn.Dense(2, 4), nn.ReLU(4), nn.Dense(4, 3), nn.Tanh(), nn.Sigmoid())
    out = model(MLArray([[1.0, -1.0], [0.5, 2.0]]))
    assert out.shape == (2, 3) and out[0, 0]._op == "sigmoid"
    assert nn.ReLU()(MLArray([-1.0, 2.0])).to_list() == [0, 2.0]
    with pytest.raises(ValueError, match=r"ReLU\(3\) expects 3 inputs, got shape \(2, 4\)"):
        nn.ReLU(3)(MLArray.zeros(2, 4))


# ==================================================================================== losses

def test_array_losses_return_a_value_or_an_array(MLArray, Value):
    x = MLArray([[0.5, -1.0], [2.0, 0.0]])
    t = [[1.0, -1.0], [0.0, 0.0]]
    for fn in (losses.mse_loss, losses.l1_loss, losses.huber_loss, losses.hinge_loss,
               losses.binary_cross_entropy_with_logits):
        mean = fn(x, t)
        assert isinstance(mean, Value)
        assert isinstance(fn(x, t, reduction="sum"), Value)
        none = fn(x, t, reduction="none")
        assert isinstance(none, MLArray) and none.shape == (2, 2)
        assert math.isclose(mean.data, none.to_numpy().mean(), rel_tol=1e-15)
    assert isinstance(losses.MSELoss(reduction="sum")(x, MLArray(t)), Value)
    assert isinstance(losses.cross_entropy(x, [0, 1]), Value)


def test_array_losses_equal_the_scalar_forms():
    """Same graphs as the scalar forms, element by element (the active engine's)."""
    MLArray = michigrad.MLArray
    rng = np.random.default_rng(5)
    x = rng.uniform(-2, 2, (3, 4))
    x[0, 0] = 0.0  # hinge and relu at the kink
    t = rng.uniform(-2, 2, (3, 4))
    labels = rng.choice([-1.0, 1.0], (3, 4))
    probs = rng.uniform(0, 1, (3, 4))
    probs[0, :2] = [0.0, 1.0]  # the clamped logs
    bce_t = rng.integers(0, 2, (3, 4)).astype(float)
    bce_t[1, 1] = 0.25  # soft label: the full formula
    cases = [(losses.mse_loss, x, t, {}), (losses.l1_loss, x, t, {}),
             (losses.huber_loss, x, t, {"delta": 0.8}), (losses.hinge_loss, x, labels, {}),
             (losses.binary_cross_entropy, probs, bce_t, {}),
             (losses.binary_cross_entropy_with_logits, x * 30, probs, {})]
    for fn, inp, target, kw in cases:
        for reduction in ("mean", "sum", "none"):
            a = MLArray(inp)
            ours = fn(a, target.tolist(), reduction=reduction, **kw)
            scalar = fn([[a[i, j] for j in range(4)] for i in range(3)], target.tolist(),
                        reduction=reduction, **kw)
            if reduction == "none":
                assert [bits(v.data) for v in scalar] == [bits(v) for v in
                                                          np.array(ours.to_list(), dtype=object).reshape(-1)]
            else:
                assert bits(ours.data) == bits(scalar.data), (fn.__name__, reduction)
                a.zero_grad()
                ours.backward()
                g = a.grad_numpy().reshape(-1).tolist()
                a.zero_grad()
                scalar.backward()
                assert g == a.grad_numpy().reshape(-1).tolist(), fn.__name__


def test_clamped_bce_on_arrays(MLArray):
    p = MLArray([0.0, 1.0, 0.5])
    loss = losses.binary_cross_entropy(p, [1, 0, 1], reduction="none")
    assert loss.to_list()[:2] == [100.0, 100.0]
    loss.sum().backward()
    assert np.isfinite(p.grad_numpy()).all()


def test_array_loss_errors(MLArray):
    x = MLArray([[0.5, 0.2]])
    with pytest.raises(ValueError, match=r"shape \(1, 2\) but target \(2,\)"):
        losses.mse_loss(x, [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        losses.mse_loss(MLArray([]), [])
    with pytest.raises(ValueError, match="reduction"):
        losses.mse_loss(x, [[1.0, 2.0]], reduction="avg")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        losses.binary_cross_entropy(MLArray([1.5]), [1.0])
    with pytest.raises(ValueError, match="target class 2 is not in 0..1"):
        losses.cross_entropy(x, [2])
    with pytest.raises(ValueError, match="target class 0.5"):
        losses.cross_entropy(x, [0.5])
    with pytest.raises(ValueError, match="1 samples need 1 targets"):
        losses.cross_entropy(x, [0, 1, 0])
    with pytest.raises(ValueError, match="probabilities"):
        losses.cross_entropy(x, [[0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match=r"\(C,\) or \(N, C\)"):
        losses.cross_entropy(MLArray.zeros(1, 2, 3), [0])
    with pytest.raises(TypeError, match="engine"):
        other = "reference" if MLArray.engine == "compiled" else "compiled"
        losses.mse_loss(x, array_class(other)([[1.0, 2.0]]))


def test_cross_entropy_on_one_sample_and_huge_logits(MLArray):
    z = MLArray([1000.0, 0.0, -1000.0])
    loss = losses.cross_entropy(z, 1)
    assert loss.data == 1000.0
    assert losses.cross_entropy(z, 1, reduction="none").shape == ()
    p = losses.cross_entropy(z, [0.0, 1.0, 0.0])
    assert p.data == 1000.0
    loss.backward()
    assert np.isfinite(z.grad_numpy()).all()
