"""michigrad.optim: SGD, Adam and AdamW follow torch.optim update for update (float64), and keep
their state in the optimiser, saveable and restorable."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from michigrad.engine import Value
from michigrad.nn import MLP
from michigrad.optim import SGD, Adam, AdamW, Optimizer

TOL = 1e-12

CONFIGS = [
    (SGD, torch.optim.SGD, dict(lr=0.1)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001)),
    (SGD, torch.optim.SGD, dict(lr=0.05, maximize=True)),
    (Adam, torch.optim.Adam, dict(lr=0.01)),
    (Adam, torch.optim.Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    (Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.3, 0.9))),  # lerp weight > 0.5: other branch
    (AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (AdamW, torch.optim.AdamW, dict(lr=0.03, weight_decay=0.1, amsgrad=True)),
]
IDS = [f"{ours.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for ours, _, kw in CONFIGS]


@pytest.mark.parametrize("ours_cls,torch_cls,kwargs", CONFIGS, ids=IDS)
def test_same_gradients_give_the_same_updates_as_torch(ours_cls, torch_cls, kwargs):
    rng = np.random.RandomState(0)
    init = rng.randn(6)
    ours = [Value(float(x)) for x in init]
    theirs = [torch.tensor(float(x), dtype=torch.float64, requires_grad=True) for x in init]
    opt, topt = ours_cls(ours, **kwargs), torch_cls(theirs, **kwargs)
    for _ in range(12):
        grads = rng.randn(6) * rng.choice([1e-3, 1.0, 100.0])
        for p, t, g in zip(ours, theirs, grads):
            p.grad = float(g)
            t.grad = torch.tensor(float(g), dtype=torch.float64)
        opt.step()
        topt.step()
        for p, t in zip(ours, theirs):
            assert p.data == pytest.approx(t.item(), rel=TOL, abs=TOL)


def build_pair(seed: int):
    """A 2-4-1 tanh network as michigrad Values and as 0-dim float64 torch tensors, same weights."""
    rng = np.random.RandomState(seed)
    shapes = [(4, 2), (4,), (1, 4), (1,)]
    arrays = [rng.uniform(-1, 1, s) for s in shapes]
    ours = [[Value(float(x)) for x in a.ravel()] for a in arrays]
    theirs = [[torch.tensor(float(x), dtype=torch.float64, requires_grad=True) for x in a.ravel()]
              for a in arrays]
    return ours, theirs


def forward(params, x, tanh):
    w1, b1, w2, b2 = params
    h = [tanh(sum((w1[2 * j + i] * x[i] for i in range(2)), b1[j])) for j in range(4)]
    return sum((w2[j] * h[j] for j in range(4)), b2[0])


@pytest.mark.parametrize("ours_cls,torch_cls,kwargs", CONFIGS, ids=IDS)
def test_training_follows_torch_step_for_step(ours_cls, torch_cls, kwargs):
    X = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    Y = [-1.0, 1.0, 1.0, -1.0]
    ours, theirs = build_pair(1)
    flat_o = [p for group in ours for p in group]
    flat_t = [p for group in theirs for p in group]
    opt, topt = ours_cls(flat_o, **kwargs), torch_cls(flat_t, **kwargs)
    for _ in range(8):
        loss_o = sum((forward(ours, x, lambda v: v.tanh()) - y) ** 2 for x, y in zip(X, Y))
        loss_t = sum((forward(theirs, x, torch.tanh) - y) ** 2 for x, y in zip(X, Y))
        assert loss_o.data == pytest.approx(loss_t.item(), rel=TOL, abs=TOL)
        opt.zero_grad()
        loss_o.backward()
        topt.zero_grad()
        loss_t.backward()
        opt.step()
        topt.step()
        for p, t in zip(flat_o, flat_t):
            assert p.data == pytest.approx(t.item(), rel=1e-11, abs=TOL)


def test_sgd_is_microgrades_update_exactly():
    random.seed(0)
    a = MLP(2, [3, 1])
    random.seed(0)
    b = MLP(2, [3, 1])
    opt = SGD(a.parameters(), lr=0.7)
    for k in range(3):
        for model in (a, b):
            model.zero_grad()
            ((model([0.5, -1.5]) - 2.0) ** 2).backward()
        opt.lr = 0.7 - 0.1 * k
        opt.step()
        for p in b.parameters():
            p.data -= (0.7 - 0.1 * k) * p.grad
    assert [p.data for p in a.parameters()] == [p.data for p in b.parameters()]


def test_adam_bias_correction_makes_the_first_step_lr_sized():
    # with bias correction, the first step moves each parameter by lr * sign(grad) (up to eps)
    ps = [Value(0.0), Value(0.0)]
    ps[0].grad, ps[1].grad = 1e-3, -50.0
    Adam(ps, lr=0.1).step()
    assert ps[0].data == pytest.approx(-0.1, rel=1e-4)
    assert ps[1].data == pytest.approx(0.1, rel=1e-9)


def test_state_is_kept_in_the_optimizer_by_parameter_index():
    ps = [Value(1.0), Value(2.0)]
    opt = Adam(ps, lr=0.1)
    ps[0].grad, ps[1].grad = 0.5, -0.5
    opt.step()
    assert set(opt.state) == {0, 1}
    assert opt.state[0]["step"] == 1
    assert opt.state[0]["exp_avg"] == pytest.approx(0.05)
    assert opt.state[1]["exp_avg_sq"] == pytest.approx(0.00025)
    assert "exp_avg" not in ps[0].__dict__  # nothing is stored on the parameters


def test_zero_grad_zeroes_every_group():
    a, b = Value(1.0), Value(2.0)
    a.grad, b.grad = 3.0, 4.0
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    opt.zero_grad()
    assert a.grad == 0 and b.grad == 0 and type(a.grad) is int


def test_param_groups_have_their_own_hyperparameters():
    a, b = Value(1.0), Value(1.0)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad = b.grad = 1.0
    opt.step()
    assert a.data == pytest.approx(0.9) and b.data == pytest.approx(0.5)
    assert opt.param_groups[1]["momentum"] == 0.0  # defaults fill what a group leaves out
    opt.lr = 0.2  # sets every group, as a schedule would
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2] and opt.lr == 0.2


def test_state_dict_round_trip_resumes_identically():
    def run(opt_cls, resume_at=None):
        ps = [Value(1.0), Value(-2.0), Value(0.5)]
        opt = opt_cls(ps, lr=0.05)
        for k in range(6):
            if k == resume_at:  # save, rebuild everything from the saved state, go on
                saved = json.loads(json.dumps(opt.state_dict()))  # through JSON: str keys
                ps = [Value(p.data) for p in ps]
                opt = opt_cls(ps, lr=123.0)
                opt.load_state_dict(saved)
            for i, p in enumerate(ps):
                p.grad = (p.data - i) * 2.0
            opt.step()
        return [p.data for p in ps]

    for cls in (Adam, AdamW, lambda ps, lr: SGD(ps, lr=lr, momentum=0.9)):
        assert run(cls, resume_at=3) == run(cls)


def test_state_dict_layout_is_torchs():
    ps = [Value(1.0), Value(2.0)]
    opt = SGD(ps, lr=0.1, momentum=0.9)
    ps[0].grad = ps[1].grad = 1.0
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0, 1]
    assert sd["param_groups"][0]["lr"] == 0.1
    assert sd["state"] == {0: {"momentum_buffer": 1.0}, 1: {"momentum_buffer": 1.0}}
    sd["state"][0]["momentum_buffer"] = 99.0
    assert opt.state[0]["momentum_buffer"] == 1.0  # a copy


def test_load_state_dict_rejects_a_different_layout():
    opt = Adam([Value(1.0), Value(2.0)], lr=0.1)
    other = Adam([Value(1.0)], lr=0.1)
    with pytest.raises(ValueError, match="group of 1 parameters cannot be loaded into one of 2"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="2 parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0]}, {"params": [1]}]})
    with pytest.raises(ValueError, match="out of range"):
        opt.load_state_dict({"state": {5: {"step": 1}}, "param_groups": [{"params": [0, 1]}]})


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        SGD([Value(1.0)], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        Adam([Value(1.0)], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([Value(1.0)], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="must be Values"):
        SGD([1.0], lr=0.1)
    v = Value(1.0)
    with pytest.raises(ValueError, match="more than once"):
        SGD([v, v], lr=0.1)
    with pytest.raises(TypeError, match="unknown option"):
        SGD([{"params": [v], "betas": (0.9, 0.9)}], lr=0.1)
    with pytest.raises(NotImplementedError):
        Optimizer([v], {"lr": 0.1}).step()


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("option", ["lr", "eps", "weight_decay"])
def test_adam_refuses_a_nan_hyperparameter_as_torch_does(cls, option):
    # `x < 0` lets NaN through; torch.optim.Adam checks `not 0 <= x`. A NaN lr, eps or weight
    # decay makes every parameter NaN at the first step.
    with pytest.raises(ValueError, match=f"invalid {option.replace('lr', 'learning rate')}"):
        cls([Value(1.0)], **{option: math.nan})
    with pytest.raises(ValueError):
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], **{option: math.nan})


def test_a_groups_params_follow_torchs_rules():
    # a set has no stable order, and state_dict() maps the state to parameters by position:
    # torch.optim refuses a set in a group (and takes a lone tensor there)
    a, b = Value(1.0), Value(2.0)
    with pytest.raises(TypeError, match="ordered collection"):
        Adam([{"params": {a, b}}], lr=0.1)
    with pytest.raises(TypeError, match="ordered collection"):
        torch.optim.Adam([{"params": {torch.zeros(1, requires_grad=True)}}], lr=0.1)
    opt = SGD([{"params": a}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert [g["params"] for g in opt.param_groups] == [[a], [b]]
    with pytest.raises(TypeError, match="not a single Value"):
        SGD(a, lr=0.1)


@pytest.mark.parametrize("cls,torch_cls", [(Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)])
def test_adam_with_eps_0_and_no_gradient_yet_divides_as_torch(cls, torch_cls):
    # eps = 0 is allowed (torch too); a parameter whose gradients have all been 0 then has
    # m = v = 0 and its update is 0/0: NaN in torch, where Python's float division raised
    # ZeroDivisionError half-way through step() (parameters before it updated, its state written)
    ours = [Value(1.0), Value(2.0), Value(3.0)]
    theirs = [torch.tensor(x.data, dtype=torch.float64, requires_grad=True) for x in ours]
    opt, topt = cls(ours, lr=0.1, eps=0.0), torch_cls(theirs, lr=0.1, eps=0.0)
    for p, t, g in zip(ours, theirs, (1.0, 0, -2.0)):
        p.grad = g
        t.grad = torch.tensor(float(g), dtype=torch.float64)
    opt.step()
    topt.step()
    assert str([p.data for p in ours]) == str([t.item() for t in theirs])  # [0.9.., nan, 3.1..]
    assert [s["step"] for s in opt.state.values()] == [1, 1, 1]


def test_repr_lists_the_hyperparameters():
    text = repr(AdamW([Value(1.0)], lr=0.01))
    assert text.startswith("AdamW (\nParameter Group 0\n")
    assert "    lr: 0.01" in text and "    weight_decay: 0.01" in text


def test_a_value_of_the_other_engine_is_refused_naming_both_engines():
    """Both engines' classes are named Value: the message said "must be Values, not Value"."""
    import michigrad._reference as reference
    import michigrad.engine as engine
    other = reference.Value if engine.ENGINE == "compiled" else __import__(
        "michigrad._engine", fromlist=["Value"]).Value
    with pytest.raises(TypeError, match=rf"not {other.__module__}\.Value \(the optimizer takes "
                                        rf"the active engine's {Value.__module__}\.Value\)"):
        SGD([Value(1.0), other(2.0)], lr=0.1)
    with pytest.raises(TypeError, match="must be Values, not float$"):
        SGD([1.0], lr=0.1)
