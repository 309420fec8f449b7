"""The fused neuron kernel `linear(w, x, b)`: one node for b + Σ wᵢxᵢ.

Its value must equal micrograd's left fold `sum((wi*xi for wi, xi in zip(w, x)), b)` to the last
bit, and its gradients the unfused graph's (to 1e-12) and PyTorch's.
"""

from __future__ import annotations

import gc
import math
import random

import pytest

from michigrad import _engine, _reference

LINEAR = {"compiled": _engine.linear, "reference": _reference.linear}


@pytest.fixture
def linear(engine):
    return LINEAR[engine]


def unfused(w, x, b):
    return sum((wi * xi for wi, xi in zip(w, x)), b) if b is not None else sum(wi * xi for wi, xi in zip(w, x))


def make(Value, n, seed, bias=True):  # noqa: N803
    rng = random.Random(seed)
    w = [Value(rng.uniform(-1, 1)) for _ in range(n)]
    x = [Value(rng.uniform(-3, 3)) for _ in range(n)]
    b = Value(rng.uniform(-1, 1)) if bias else None
    return w, x, b


@pytest.mark.parametrize("n", [0, 1, 2, 3, 16, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_value_is_micrograds_left_fold_to_the_last_bit(Value, linear, n, bias):
    w, x, b = make(Value, n, seed=n, bias=bias)
    fused, reference = linear(w, x, b), unfused(w, x, b)
    expected = reference.data if isinstance(reference, Value) else reference  # sum([]) is 0
    assert fused.data == expected
    assert type(fused.data) is type(expected)
    assert fused._op == "linear"


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_gradients_match_the_unfused_graph_and_torch(Value, linear, n):
    w, x, b = make(Value, n, seed=100 + n)
    out = linear(w, x, b).tanh()
    out.backward()
    fused_grads = [v.grad for v in (*w, *x, b)]

    w2, x2, b2 = make(Value, n, seed=100 + n)
    unfused(w2, x2, b2).tanh().backward()
    for got, want in zip(fused_grads, [v.grad for v in (*w2, *x2, b2)]):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15)

    import torch  # here, not at the top: the memcheck run deselects the torch comparisons

    tw = torch.tensor([v.data for v in w], dtype=torch.float64, requires_grad=True)
    tx = torch.tensor([v.data for v in x], dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b.data, dtype=torch.float64, requires_grad=True)
    torch.tanh(tb + (tw * tx).sum()).backward()
    for got, want in zip(fused_grads, [*tw.grad.tolist(), *tx.grad.tolist(), tb.grad.item()]):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15)


def test_numbers_as_inputs_and_shared_values(Value, linear):
    w = [Value(0.5), Value(-2.0), Value(1.5)]
    x = Value(3.0)
    out = linear(w, [x, 2, x], w[0])  # x used twice, a weight reused as the bias
    assert out.data == 0.5 + 0.5 * 3.0 + -2.0 * 2 + 1.5 * 3.0
    out.backward()
    assert w[0].grad == 1 + 3.0
    assert w[1].grad == 2
    assert x.grad == 0.5 + 1.5
    constants = [c for c in out._prev if c.data == 2 and c._op == ""]
    assert len(constants) == 1 and constants[0].grad == -2.0


def test_ints_stay_ints_as_in_micrograd(Value, linear):
    w, x = [Value(2), Value(3)], [Value(4), 5]
    out = linear(w, x, Value(1))
    assert out.data == 24 and type(out.data) is int
    out.backward()
    assert w[0].grad == 4 and type(w[0].grad) is int


def test_engines_agree_bit_for_bit():
    results = []
    for engine in ("compiled", "reference"):
        Value = _engine.Value if engine == "compiled" else _reference.Value  # noqa: N806
        layer_w = [make(Value, 8, seed=7 + j)[0] for j in range(4)]
        x = make(Value, 8, seed=99)[1]
        hidden = [LINEAR[engine](w, x, Value(0.1 * j)).relu() for j, w in enumerate(layer_w)]
        out = LINEAR[engine]([Value(0.3), Value(-0.7), Value(0.2), Value(0.9)], hidden, Value(0))
        out.backward()
        results.append([out.data] + [v.grad for w in layer_w for v in w] + [v.grad for v in x])
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda V, lin: lin([V(1.0)], [V(1.0), V(2.0)], None), ValueError),
        (lambda V, lin: lin([1.0], [V(1.0)], None), TypeError),
        (lambda V, lin: lin([V(1.0)], ["x"], None), TypeError),
        (lambda V, lin: lin([V(1.0), V(2.0)], [3.0, "x"], None), TypeError),
        (lambda V, lin: lin([V(1.0)], [V(1.0)], 0.5), TypeError),
    ],
)
def test_bad_input_raises_and_creates_no_node(Value, linear, call, error):
    gc.collect()
    before = _engine._arena_stats()["live"]
    with pytest.raises(error):
        call(Value, linear)
    gc.collect()
    assert _engine._arena_stats()["live"] == before
