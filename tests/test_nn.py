"""michigrad.nn: micrograd's Neuron/Layer/MLP to the last bit, and what the course adds on top
(bias=False, Linear and activation layers, Sequential/Model, naming, state dicts, saving)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap

import micrograd.nn as mg_nn
import numpy as np
import pytest
from micrograd.engine import Value as MGValue

from michigrad.datasets import make_moons
from michigrad.engine import Value
from michigrad.losses import mse_loss
from michigrad.nn import (MLP, Layer, Linear, Model, Module, Neuron, ReLU, Sequential, Sigmoid,
                          Tanh)
from michigrad.optim import SGD, Adam

STEP0_LOSS = 0.8958441028683222  # micrograd's demo.ipynb, step 0 (a pure forward pass)
STEP1_LOSS = 1.7235905336972022  # step 1 (depends on micrograd's gradients, up to the last bits)


def both_models(seed: int, nin: int, nouts: list[int]) -> tuple[MLP, mg_nn.MLP]:
    random.seed(seed)
    ours = MLP(nin, nouts)
    random.seed(seed)
    theirs = mg_nn.MLP(nin, nouts)
    return ours, theirs


def micrograd_demo(V: type, model: object, steps: int) -> tuple[list[float], float]:
    """micrograd's demo.ipynb training loop, verbatim but for the Value class and model."""
    np.random.seed(1337)
    X, y = make_moons(n_samples=100, noise=0.1)
    y = y * 2 - 1
    losses, acc = [], 0.0
    for k in range(steps):
        inputs = [list(map(V, xrow)) for xrow in X]
        scores = list(map(model, inputs))
        losses_ = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores)]
        data_loss = sum(losses_) * (1.0 / len(losses_))
        alpha = 1e-4
        reg_loss = alpha * sum((p * p for p in model.parameters()))
        total_loss = data_loss + reg_loss
        accuracy = [(yi > 0) == (scorei.data > 0) for yi, scorei in zip(y, scores)]
        acc = sum(accuracy) / len(accuracy)
        model.zero_grad()
        total_loss.backward()
        learning_rate = 1.0 - 0.9 * k / 100
        for p in model.parameters():
            p.data -= learning_rate * p.grad
        losses.append(total_loss.data)
    return losses, acc


# ===================================================================== micrograd, exactly

def test_reprs_are_microgrades():
    ours, theirs = both_models(0, 2, [16, 16, 1])
    assert repr(ours) == repr(theirs)
    assert repr(ours).startswith("MLP of [Layer of [ReLUNeuron(2), ReLUNeuron(2)")
    assert repr(ours.layers[-1]) == "Layer of [LinearNeuron(16)]"
    random.seed(1)
    assert repr(Neuron(3)) == "ReLUNeuron(3)"
    assert repr(Neuron(3, nonlin=False)) == "LinearNeuron(3)"


@pytest.mark.parametrize("seed,nin,nouts", [(1337, 2, [16, 16, 1]), (7, 3, [4, 4, 2]), (0, 5, [1]),
                                            (3, 1, [8, 1, 3])])
def test_weights_are_drawn_as_micrograd_draws_them(seed, nin, nouts):
    ours, theirs = both_models(seed, nin, nouts)
    random.seed(seed)
    mg_nn.MLP(nin, nouts)
    state_after_micrograd = random.getstate()
    random.seed(seed)
    MLP(nin, nouts)
    assert random.getstate() == state_after_micrograd  # the same number of draws
    ours_p, theirs_p = ours.parameters(), theirs.parameters()
    assert [p.data for p in ours_p] == [p.data for p in theirs_p]
    assert [type(p.data) for p in ours_p] == [type(p.data) for p in theirs_p]  # biases: int 0


def test_demo_model_has_337_parameters():
    assert len(MLP(2, [16, 16, 1]).parameters()) == 337


def test_forward_is_bit_identical_and_one_output_is_a_bare_value():
    ours, theirs = both_models(42, 3, [8, 8, 1])
    rng = np.random.RandomState(0)
    for row in rng.randn(20, 3):
        a = ours([Value(x) for x in row])
        b = theirs([MGValue(x) for x in row])
        assert isinstance(a, Value)
        assert a.data == b.data  # bit-identical, not approximately equal
    layer_ours, layer_theirs = both_models(5, 2, [3])
    out = layer_ours([0.5, -1.25])
    assert isinstance(out, list) and len(out) == 3
    assert [v.data for v in out] == [v.data for v in layer_theirs([0.5, -1.25])]


def test_gradients_match_micrograd():
    ours, theirs = both_models(3, 2, [16, 16, 1])
    rng = np.random.RandomState(1)
    xs = rng.randn(10, 2)
    loss_a = sum((ours(list(map(Value, x))) - 1.0) ** 2 for x in xs)
    loss_b = sum((theirs(list(map(MGValue, x))) - 1.0) ** 2 for x in xs)
    assert loss_a.data == loss_b.data
    loss_a.backward()
    loss_b.backward()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert p.grad == pytest.approx(q.grad, rel=1e-12, abs=1e-15)


def test_micrograd_demo_reproduces_its_losses_and_reaches_full_accuracy():
    random.seed(1337)
    model = MLP(2, [16, 16, 1])
    losses, acc = micrograd_demo(Value, model, 100)
    assert losses[0] == STEP0_LOSS
    assert losses[1] == pytest.approx(STEP1_LOSS, abs=1e-12)
    assert acc == 1.0
    assert losses[-1] < 0.02


def test_the_demo_is_deterministic_to_the_last_bit():
    runs = []
    for _ in range(2):
        random.seed(1337)
        runs.append(micrograd_demo(Value, MLP(2, [16, 16, 1]), 4)[0])
    assert runs[0] == runs[1]


def test_the_demo_on_the_reference_engine_gives_the_same_numbers():
    code = textwrap.dedent("""
        import random, numpy as np
        import michigrad
        assert michigrad.ENGINE == "reference"
        from michigrad.engine import Value
        from michigrad.nn import MLP
        from michigrad.datasets import make_moons
        np.random.seed(1337); random.seed(1337)
        X, y = make_moons(n_samples=100, noise=0.1); y = y * 2 - 1
        model = MLP(2, [16, 16, 1])
        out = []
        for k in range(2):
            scores = list(map(model, [list(map(Value, r)) for r in X]))
            losses = [(1 + -yi * s).relu() for yi, s in zip(y, scores)]
            total = sum(losses) * (1.0 / len(losses)) + 1e-4 * sum(p * p for p in model.parameters())
            model.zero_grad(); total.backward()
            for p in model.parameters(): p.data -= (1.0 - 0.9 * k / 100) * p.grad
            out.append(repr(total.data))
        print(" ".join(out))
    """)
    env = {**os.environ, "MICHIGRAD_PURE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    step0, step1 = run.stdout.split()
    assert float(step0) == STEP0_LOSS
    assert float(step1) == pytest.approx(STEP1_LOSS, abs=1e-12)


def test_zero_grad_sets_int_zero():
    model = MLP(2, [3, 1])
    model([1.0, 2.0]).backward()
    assert any(p.grad != 0 for p in model.parameters())
    model.zero_grad()
    assert all(p.grad == 0 and type(p.grad) is int for p in model.parameters())


def test_inputs_can_be_numbers_numpy_rows_or_a_bare_value():
    random.seed(0)
    model = MLP(2, [1, 3])  # micrograd fails here: the 1-output layer returns a bare Value
    out = model(np.array([0.5, -0.5]))
    assert len(out) == 3 and all(isinstance(v, Value) for v in out)
    assert model([0.5, -0.5])[0].data == out[0].data
    random.seed(0)
    n = Neuron(1, nonlin=False)
    assert n(2.0).data == n([2.0]).data == n(Value(2.0)).data == n.w[0].data * 2.0  # a 1-vector


def test_wrong_input_size_is_an_error_not_a_silent_truncation():
    random.seed(0)
    with pytest.raises(ValueError, match="expects 2 inputs, got 3"):
        MLP(2, [4, 1])([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="expects 3 inputs, got 2"):
        Neuron(3)([1.0, 2.0])


# ============================================================== what the course asks for

def test_bias_false():
    random.seed(0)
    n = Neuron(3, bias=False)
    assert n.b is None and len(n.parameters()) == 3
    assert repr(n) == "ReLUNeuron(3, bias=False)"
    x = [0.5, -1.0, 2.0]
    n.nonlin = False
    expected = 0 + n.w[0].data * x[0] + n.w[1].data * x[1] + n.w[2].data * x[2]
    assert n(x).data == expected
    layer = Layer(3, 4, bias=False)
    assert len(layer.parameters()) == 12
    assert len(Linear(3, 4, bias=False).parameters()) == 12
    assert len(MLP(2, [3, 1], bias=False).parameters()) == 9
    with pytest.raises(ValueError, match="at least one input"):
        Neuron(0, bias=False)


def test_bias_false_draws_the_same_weights():
    random.seed(9)
    a = Layer(3, 2)
    random.seed(9)
    b = Layer(3, 2, bias=False)
    assert [n.w[i].data for n in a.neurons for i in range(3)] == [p.data for p in b.parameters()]


def test_sequential_of_linear_and_relu_is_micrograds_mlp_to_the_last_bit():
    random.seed(11)
    mlp = MLP(2, [16, 16, 1])
    random.seed(11)
    seq = Sequential([Linear(2, 16), ReLU(), Linear(16, 16), ReLU(), Linear(16, 1)])
    assert [p.data for p in seq.parameters()] == [p.data for p in mlp.parameters()]
    for row in np.random.RandomState(3).randn(10, 2):
        assert seq(list(row)).data == mlp(list(row)).data
    assert repr(seq) == ("Sequential([Linear(2, 16), ReLU(), Linear(16, 16), ReLU(), "
                         "Linear(16, 1)])")


def test_the_exercises_model():
    random.seed(0)
    model = Model([Linear(2, 4), Linear(4, 4, bias=False), Linear(4, 3), Tanh(3)])
    out = model([Value(1.0), Value(-2.0)])
    assert len(out) == 3 and all(-1 < v.data < 1 for v in out)
    assert len(model.parameters()) == (2 * 4 + 4) + 4 * 4 + (4 * 3 + 3)
    assert out[0]._op == "tanh"
    assert Model is Sequential
    assert repr(model) == "Sequential([Linear(2, 4), Linear(4, 4, bias=False), Linear(4, 3), Tanh(3)])"


def test_pytorch_style_sequential_and_container_access():
    random.seed(0)
    model = Sequential(Linear(2, 3), Sigmoid(), Linear(3, 1))
    assert len(model) == 3 and isinstance(model[1], Sigmoid) and list(model)[2] is model[2]
    out = model([0.1, 0.2])
    assert isinstance(out, Value)
    with pytest.raises(TypeError, match="Modules"):
        Sequential([Linear(2, 3), "relu"])


def test_activations_apply_to_values_lists_and_numbers():
    v = Value(-0.5)
    assert ReLU()(v).data == 0
    assert Tanh()(v).data == math.tanh(-0.5)
    assert Sigmoid()([v, 0.0])[1].data == 0.5
    assert [x.data for x in Tanh(2)([0.5, 1.5])] == [math.tanh(0.5), math.tanh(1.5)]
    with pytest.raises(ValueError, match=r"Tanh\(3\) expects 3 inputs, got 2"):
        Tanh(3)([0.5, 1.5])
    assert repr(ReLU()) == "ReLU()" and repr(Sigmoid(4)) == "Sigmoid(4)"
    assert ReLU().parameters() == []


def test_xor_trains_with_sequential():
    random.seed(3)
    model = Model([Linear(2, 4), Tanh(), Linear(4, 1), Sigmoid()])
    X = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    y = [0.0, 1.0, 1.0, 0.0]
    opt = Adam(model.parameters(), lr=0.1)
    for _ in range(300):
        loss = mse_loss([model(x) for x in X], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    preds = [model(x).data for x in X]
    assert loss.data < 0.01
    assert [round(p) for p in preds] == [0, 1, 1, 0]


# ===================================================================== naming and state

def test_named_parameters_follow_parameters_order():
    random.seed(0)
    model = MLP(2, [3, 1])
    named = list(model.named_parameters())
    assert [p for _, p in named] == model.parameters()
    assert all(a is b for (_, a), b in zip(named, model.parameters()))
    names = [n for n, _ in named]
    assert names[:4] == ["layers.0.neurons.0.w.0", "layers.0.neurons.0.w.1",
                         "layers.0.neurons.0.b", "layers.0.neurons.1.w.0"]
    assert names[-1] == "layers.1.neurons.0.b"
    seq = Sequential([Linear(2, 2, bias=False), ReLU(), Linear(2, 1)])
    assert [n for n, _ in seq.named_parameters()] == [
        "0.neurons.0.w.0", "0.neurons.0.w.1", "0.neurons.1.w.0", "0.neurons.1.w.1",
        "2.neurons.0.w.0", "2.neurons.0.w.1", "2.neurons.0.b"]
    assert [p for _, p in seq.named_parameters()] == seq.parameters()


def test_a_course_style_module_is_found_by_its_attributes():
    class Affine(Module):
        def __init__(self):
            self.scale = Value(2.0)
            self.shift = [Value(1.0), Value(-1.0)]
            self.size = 2  # not a parameter
            self.inner = Linear(2, 1)

        def __call__(self, x):
            return self.inner([self.scale * xi + s for xi, s in zip(x, self.shift)])

    m = Affine()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "shift.0", "shift.1", "inner.neurons.0.w.0", "inner.neurons.0.w.1",
                     "inner.neurons.0.b"]
    assert len(m.parameters()) == 6
    assert set(m.state_dict()) == {"scale", "shift", "inner.neurons.0.w", "inner.neurons.0.b"}


def test_a_module_used_twice_is_one_set_of_parameters():
    random.seed(0)
    shared = Linear(2, 2)
    model = Sequential([shared, Tanh(), shared])
    assert len(model.parameters()) == 6
    assert len(list(model.named_parameters())) == 6
    assert set(model.state_dict()) == {"0.neurons.0.w", "0.neurons.0.b", "0.neurons.1.w",
                                       "0.neurons.1.b"}


def test_state_dict_is_a_snapshot_of_numbers():
    random.seed(0)
    model = MLP(2, [2, 1])
    sd = model.state_dict()
    assert list(sd) == ["layers.0.neurons.0.w", "layers.0.neurons.0.b", "layers.0.neurons.1.w",
                        "layers.0.neurons.1.b", "layers.1.neurons.0.w", "layers.1.neurons.0.b"]
    assert sd["layers.0.neurons.0.w"] == [p.data for p in model.layers[0].neurons[0].w]
    assert sd["layers.0.neurons.0.b"] == 0 and type(sd["layers.0.neurons.0.b"]) is int
    model.layers[0].neurons[0].w[0].data = 123.0
    assert sd["layers.0.neurons.0.w"][0] != 123.0  # a copy, not a view


def test_load_state_dict_round_trip_gives_identical_outputs():
    random.seed(1)
    a = MLP(2, [8, 8, 1])
    random.seed(2)
    b = MLP(2, [8, 8, 1])
    x = [0.3, -0.7]
    assert a(x).data != b(x).data
    b.load_state_dict(a.state_dict())
    assert a(x).data == b(x).data
    assert [p.data for p in a.parameters()] == [p.data for p in b.parameters()]


def test_load_state_dict_names_missing_and_unexpected_keys_and_changes_nothing():
    random.seed(0)
    model = MLP(2, [2, 1])
    before = [p.data for p in model.parameters()]
    sd = model.state_dict()
    sd["layers.0.neurons.0.w"] = [9.0, 9.0]
    del sd["layers.1.neurons.0.b"]
    sd["layers.2.neurons.0.w"] = [1.0]
    with pytest.raises(KeyError) as err:
        model.load_state_dict(sd)
    assert "missing keys: layers.1.neurons.0.b" in str(err.value)
    assert "unexpected keys: layers.2.neurons.0.w" in str(err.value)
    assert [p.data for p in model.parameters()] == before


def test_load_state_dict_rejects_wrong_shapes_and_non_numbers():
    random.seed(0)
    model = MLP(2, [2, 1])
    before = [p.data for p in model.parameters()]
    sd = model.state_dict()
    sd["layers.0.neurons.1.b"] = 5.0  # fine on its own ...
    sd["layers.0.neurons.0.w"] = [1.0, 2.0, 3.0]  # ... but this is the wrong shape
    with pytest.raises(ValueError, match=r"'layers.0.neurons.0.w' has shape \[2\] in the model "
                                         r"but \[3\] in the state dict"):
        model.load_state_dict(sd)
    sd["layers.0.neurons.0.w"] = 1.0
    with pytest.raises(ValueError, match=r"shape \[2\] in the model but \[\]"):
        model.load_state_dict(sd)
    for bad in (["a", "b"], ["1.0", "2.0"], [True, False], [[1.0], [2.0, 3.0]]):
        sd["layers.0.neurons.0.w"] = bad
        with pytest.raises(ValueError, match="must be a number"):
            model.load_state_dict(sd)
    assert [p.data for p in model.parameters()] == before  # nothing was half-loaded
    random.seed(0)
    with pytest.raises(KeyError, match="missing keys"):
        MLP(3, [2, 1]).load_state_dict(MLP(2, [2]).state_dict())
    sd["layers.0.neurons.0.w"] = [np.float64(1.5), np.int64(2)]  # numpy numbers are numbers
    model.load_state_dict(sd)
    assert [p.data for p in model.layers[0].neurons[0].w] == [1.5, 2]
    assert model.layers[0].neurons[1].b.data == 5.0


def test_load_state_dict_changes_nothing_when_a_number_cannot_be_stored():
    # 10**400 passes the shape check (an int) but no Value can hold it: the error must come
    # before any parameter is set, not after the ones before it were
    random.seed(0)
    model = MLP(2, [2, 1])
    before = [p.data for p in model.parameters()]
    sd = model.state_dict()
    sd["layers.0.neurons.0.b"] = 7.0
    sd["layers.0.neurons.1.w"] = [1.0, 10**400]
    with pytest.raises(ValueError, match=r"'layers.0.neurons.1.w' holds a number a Value cannot "
                                         r"store: int too large"):
        model.load_state_dict(sd)
    assert [p.data for p in model.parameters()] == before
    sd["layers.0.neurons.1.w"] = [1.0, 2**60]  # stored as a Value stores it: a float
    model.load_state_dict(sd)
    assert [type(v.data) for v in model.layers[0].neurons[1].w] == [float, float]
    assert model.layers[0].neurons[0].b.data == 7.0


def test_save_and_load_a_model_file(tmp_path):
    random.seed(4)
    model = Sequential([Linear(2, 8), ReLU(), Linear(8, 8, bias=False), Tanh(), Linear(8, 1)])
    for p in model.parameters():  # awkward floats: they must come back exactly
        p.data = p.data / 3.0 + 1e-17
    path = tmp_path / "model.json"
    model.save(path)
    payload = json.loads(path.read_text())
    assert payload["format"] == "michigrad.state_dict" and payload["version"] == 1
    random.seed(5)
    fresh = Sequential([Linear(2, 8), ReLU(), Linear(8, 8, bias=False), Tanh(), Linear(8, 1)])
    assert fresh.load(path) is fresh
    assert [p.data for p in fresh.parameters()] == [p.data for p in model.parameters()]
    for row in np.random.RandomState(0).randn(5, 2):
        assert fresh(list(row)).data == model(list(row)).data


def test_loading_a_file_that_is_not_a_model_fails_clearly(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a michigrad model file"):
        MLP(2, [1]).load(path)
    path.write_text(json.dumps({"format": "michigrad.state_dict", "version": 99, "state_dict": {}}))
    with pytest.raises(ValueError, match="version 99"):
        MLP(2, [1]).load(path)


def test_training_after_loading_continues_identically(tmp_path):
    random.seed(6)
    a = MLP(2, [4, 1])
    a.save(tmp_path / "a.json")
    b = MLP(2, [4, 1]).load(tmp_path / "a.json")
    for model in (a, b):
        opt = SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            loss = mse_loss([model([1.0, 2.0]), model([-1.0, 0.5])], [1.0, -1.0])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [p.data for p in a.parameters()] == [p.data for p in b.parameters()]


def test_module_without_forward_says_so():
    with pytest.raises(NotImplementedError, match="does not define __call__"):
        Module()([1.0])
    assert Module().parameters() == []


def test_neurons_are_one_fused_node_by_default_and_micrograds_graph_on_request(monkeypatch):
    import michigrad.nn as nn

    random.seed(4)
    neuron = Neuron(3, nonlin=False)
    x = [0.5, -1.0, 2.0]
    fused = neuron(x)
    assert fused._op == "linear" and len(fused._prev) == 7  # bias, 3 weights, 3 inputs
    monkeypatch.setattr(nn, "FUSED", False)
    unfused = neuron(x)
    assert unfused._op == "+" and {c._op for c in unfused._prev} == {"+", "*"}
    assert fused.data == unfused.data  # the same left fold, to the last bit


def test_fused_and_unfused_training_steps_agree(monkeypatch):
    import michigrad.nn as nn

    grads = []
    for fused in (True, False):
        monkeypatch.setattr(nn, "FUSED", fused)
        random.seed(1337)
        model = MLP(2, [16, 16, 1])
        losses, _ = micrograd_demo(Value, model, 2)
        grads.append((losses, [p.grad for p in model.parameters()]))
    (losses_a, grads_a), (losses_b, grads_b) = grads
    assert losses_a[0] == losses_b[0] == STEP0_LOSS
    assert losses_a[1] == pytest.approx(losses_b[1], abs=1e-12)
    for a, b in zip(grads_a, grads_b):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
