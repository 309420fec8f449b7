"""MLArray against its oracles on random shapes: values against NumPy, gradients against PyTorch
(float64), on both engines. Property tests (hypothesis) cover broadcasting, every reduction axis,
batched matmul, views, softmax and the losses; the SmolML seed's example is checked against torch,
and an array expression is drawn with michigrad.visualize.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import michigrad
from michigrad import losses
from michigrad import array as A
from conftest import bits

PROPERTY = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
RTOL = 1e-12


def seeded(seed: int, shape, lo=-2.0, hi=2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, size=shape)


def check(MLArray, build, arrays, seed=0, rtol=RTOL, atol=1e-13, build_torch=None):
    """build(*operands) on MLArrays and on float64 torch tensors: the values against NumPy's
    (torch's, computed in float64 with NumPy's semantics), the gradients of a random weighting
    of the output against torch's."""
    ours = [MLArray(x) for x in arrays]
    out = build(*ours)
    theirs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in arrays]
    want = (build_torch or build)(*theirs)
    assert out.shape == tuple(want.shape)
    np.testing.assert_allclose(out.to_numpy(), want.detach().numpy(), rtol=rtol, atol=atol)
    weights = seeded(seed + 1000, out.shape, 0.5, 1.5)
    (out * MLArray(weights)).sum().backward()
    (want * torch.tensor(weights)).sum().backward()
    for a, t in zip(ours, theirs):
        expected = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        np.testing.assert_allclose(a.grad_numpy(), expected, rtol=rtol, atol=atol)


# ============================================================================ element-wise

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "rsub_number": lambda a, b: 1.5 - a * b,
    "rdiv_number": lambda a, b: 2 / b + a,
    "mixed": lambda a, b: (a * 2 - b / 3) ** 2 + (-a) * b,
}


@PROPERTY
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                                max_side=3),
       op=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_binary_ops_with_broadcasting(MLArray, shapes, op, seed):
    sa, sb = shapes.input_shapes
    x = seeded(seed, sa, 0.5, 2.0)  # positive: a ** b and b ** -1 are real and finite
    y = seeded(seed + 1, sb, 0.5, 2.0)
    check(MLArray, BINARY[op], [x, y], seed)


UNARY = {
    "exp": (lambda a: a.exp(), torch.exp),
    "log": (lambda a: a.abs().log(), lambda t: t.abs().log()),
    "tanh": (lambda a: a.tanh(), torch.tanh),
    "relu": (lambda a: a.relu(), torch.relu),
    "sigmoid": (lambda a: a.sigmoid(), torch.sigmoid),
    "abs": (lambda a: a.abs(), torch.abs),
    "sqrt": (lambda a: a.abs().sqrt(), lambda t: t.abs().sqrt()),
    "leaky_relu": (lambda a: A.leaky_relu(a, 0.2),
                   lambda t: torch.nn.functional.leaky_relu(t, 0.2)),
    "elu": (lambda a: A.elu(a, 1.5), lambda t: torch.nn.functional.elu(t, 1.5)),
    "square": (lambda a: a ** 2, lambda t: t ** 2),
}


@PROPERTY
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=3),
       op=st.sampled_from(sorted(UNARY)), seed=st.integers(0, 2**16))
def test_unary_ops(MLArray, shape, op, seed):
    ours, theirs = UNARY[op]
    x = seeded(seed, shape)
    x[np.abs(x) < 1e-3] = 0.5  # away from the kinks of relu/abs and the pole of log
    check(MLArray, lambda a: ours(a), [x], seed, build_torch=theirs)


# ================================================================================ reductions

@st.composite
def reduction_cases(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-nd, nd - 1))
    else:
        axis = tuple(draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True)))
    return shape, axis, draw(st.booleans())


def torch_reduce(name, t, axis, keepdims):
    dims = tuple(range(t.ndim)) if axis is None else axis
    if name == "sum":
        return t.sum(dim=dims, keepdim=keepdims)
    if name == "mean":
        return t.mean(dim=dims, keepdim=keepdims)
    if name == "max":
        return t.amax(dim=dims, keepdim=keepdims)
    if name == "min":
        return t.amin(dim=dims, keepdim=keepdims)
    if name == "var":
        return t.var(dim=dims, keepdim=keepdims, correction=0)
    return t.std(dim=dims, keepdim=keepdims, correction=0)


@PROPERTY
@given(case=reduction_cases(), name=st.sampled_from(["sum", "mean", "max", "min", "std", "var"]),
       seed=st.integers(0, 2**16))
def test_reductions_on_every_axis(MLArray, case, name, seed):
    shape, axis, keepdims = case
    x = seeded(seed, shape)  # continuous: no ties (torch shares a tie's gradient, NumPy's
    # argmax -- and ours -- gives it to the first; test_array.py checks ties)
    want_np = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    ours = getattr(MLArray(x), name)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(ours.to_numpy(), want_np, rtol=RTOL, atol=1e-13)
    check(MLArray, lambda a: getattr(a, name)(axis=axis, keepdims=keepdims), [x], seed,
          build_torch=lambda t: torch_reduce(name, t, axis, keepdims))


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_std_of_a_constant_slice_has_pytorchs_zero_gradient(MLArray, axis, ddof):
    """std's gradient where the spread is 0 is 0, as torch's (the root's derivative there is
    infinite: '** 0.5' would make every gradient below it NaN)."""
    x = np.array([[3.0, 3.0, 3.0], [1.0, 2.0, 4.0], [0.5, 0.5, 0.5]])
    check(MLArray, lambda a: a.std(axis=axis, ddof=ddof), [x],
          build_torch=lambda t: t.std(dim=axis, correction=ddof))
    a = MLArray(x[0])
    a.std().backward()
    assert [bits(g) for g in a.grad_numpy().tolist()] == [bits(0.0)] * 3


# ==================================================================================== matmul

@st.composite
def matmul_shapes(draw):
    n, k, m = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2,
                                                   max_side=3)).input_shapes
    a_vec, b_vec = draw(st.booleans()), draw(st.booleans())
    sa = (k,) if a_vec else batch[0] + (n, k)
    sb = (k,) if b_vec else batch[1] + (k, m)
    return sa, sb


@PROPERTY
@given(shapes=matmul_shapes(), seed=st.integers(0, 2**16))
def test_matmul_batched_and_broadcast(MLArray, shapes, seed):
    sa, sb = shapes
    x, y = seeded(seed, sa), seeded(seed + 1, sb)
    np.testing.assert_allclose((MLArray(x) @ MLArray(y)).to_numpy(), x @ y, rtol=RTOL,
                               atol=1e-13)
    check(MLArray, lambda a, b: a @ b, [x, y], seed)


# ===================================================================== views, reshape, setitem

@PROPERTY
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), seed=st.integers(0, 2**16),
       data=st.data())
def test_indexing_views_and_reshapes_pass_gradients(MLArray, shape, seed, data):
    key = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    x = seeded(seed, shape)
    sub = np.asarray(x[key])
    perm = data.draw(st.permutations(range(sub.ndim)))
    ours = MLArray(x)
    v = ours[key]
    view = v.transpose(*perm) if isinstance(v, MLArray) else MLArray(v)  # one element: a Value
    out = view.reshape(-1) * 3
    assert out.to_numpy().tolist() == (np.transpose(sub, perm).reshape(-1) * 3).tolist()
    out.sum().backward()
    want = np.zeros(shape)
    want[key] += 3  # basic indexing selects each element at most once
    np.testing.assert_array_equal(ours.grad_numpy(), want)


def test_setitem_then_gradients_match_torch(MLArray):
    x = seeded(1, (3, 4))
    a = MLArray(x)
    b = a * 2
    b[1] = a[2] ** 2  # re-pointed: row 2 feeds both rows 1 and 2
    b[:, 0] = 1.0
    t = torch.tensor(x, requires_grad=True)
    tb = (t * 2).clone()
    tb[1] = t[2] ** 2
    tb[:, 0] = 1.0
    np.testing.assert_allclose(b.to_numpy(), tb.detach().numpy(), rtol=1e-15)
    b.sum().backward()
    tb.sum().backward()
    np.testing.assert_allclose(a.grad_numpy(), t.grad.numpy(), rtol=1e-15)


# ======================================================================= softmax, functions

@PROPERTY
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), seed=st.integers(0, 2**16),
       data=st.data(), log=st.booleans())
def test_softmax_and_log_softmax(MLArray, shape, seed, data, log):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = seeded(seed, shape, -5, 5)
    fn = A.log_softmax if log else A.softmax
    tfn = torch.log_softmax if log else torch.softmax
    check(MLArray, lambda a: fn(a, axis=axis), [x], seed,
          build_torch=lambda t: tfn(t, dim=axis))


# ==================================================================================== losses

F = torch.nn.functional

LOSSES = {
    "mse": (losses.mse_loss, F.mse_loss, "real"),
    "l1": (losses.l1_loss, F.l1_loss, "real"),
    "huber": (lambda x, t, reduction: losses.huber_loss(x, t, reduction, delta=0.7),
              lambda x, t, reduction: F.huber_loss(x, t, reduction=reduction, delta=0.7), "real"),
    "bce": (losses.binary_cross_entropy, F.binary_cross_entropy, "prob"),
    "bce_logits": (losses.binary_cross_entropy_with_logits,
                   F.binary_cross_entropy_with_logits, "label"),
    "hinge": (losses.hinge_loss, lambda s, y, reduction: _torch_reduce(
        torch.relu(1 - y * s), reduction), "sign"),
}


def _torch_reduce(t, reduction):
    return {"mean": t.mean(), "sum": t.sum(), "none": t}[reduction]


@PROPERTY
@given(shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), seed=st.integers(0, 2**16),
       name=st.sampled_from(sorted(LOSSES)), reduction=st.sampled_from(["mean", "sum", "none"]),
       target_as_array=st.booleans())
def test_losses_on_arrays_match_torch(MLArray, shape, seed, name, reduction, target_as_array):
    ours_fn, torch_fn, kind = LOSSES[name]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, shape)
    if kind == "prob":
        x = rng.uniform(0.05, 0.95, shape)
    target = {"real": rng.uniform(-2, 2, shape), "prob": rng.integers(0, 2, shape).astype(float),
              "label": rng.uniform(0, 1, shape),
              "sign": rng.choice([-1.0, 1.0], shape)}[kind]
    a = MLArray(x)
    out = ours_fn(a, MLArray(target) if target_as_array else target.tolist(), reduction=reduction)
    t = torch.tensor(x, requires_grad=True)
    want = torch_fn(t, torch.tensor(target), reduction=reduction)
    if reduction == "none":
        assert out.shape == shape
        np.testing.assert_allclose(out.to_numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-14)
        out.sum().backward()
        want.sum().backward()
    else:
        assert math.isclose(out.data, want.item(), rel_tol=1e-12, abs_tol=1e-14)
        out.backward()
        want.backward()
    np.testing.assert_allclose(a.grad_numpy(), t.grad.numpy(), rtol=1e-11, atol=1e-14)


@PROPERTY
@given(n=st.integers(1, 4), c=st.integers(1, 5), seed=st.integers(0, 2**16),
       probs=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_on_arrays_matches_torch_and_the_scalar_form(MLArray, n, c, seed, probs,
                                                                   reduction):
    rng = np.random.default_rng(seed)
    z = rng.uniform(-4, 4, (n, c))
    if probs:
        target = rng.dirichlet(np.ones(c), n)
    else:
        target = rng.integers(0, c, n)
    a = MLArray(z)
    out = losses.cross_entropy(a, target.tolist(), reduction=reduction)
    t = torch.tensor(z, requires_grad=True)
    want = F.cross_entropy(t, torch.tensor(target), reduction=reduction)
    if reduction == "none":
        np.testing.assert_allclose(out.to_numpy(), want.detach().numpy(), rtol=1e-12)
        out.sum().backward()
        want.sum().backward()
    else:
        assert math.isclose(out.data, want.item(), rel_tol=1e-12)
        # the scalar form's numbers (written for the active engine's Values), bit for bit: both
        # shift by one exact max node
        if MLArray.engine == michigrad.ENGINE:
            scalar = losses.cross_entropy([[a[i, j] for j in range(c)] for i in range(n)],
                                          target.tolist(), reduction=reduction)
            assert bits(scalar.data) == bits(out.data)
        out.backward()
        want.backward()
    np.testing.assert_allclose(a.grad_numpy(), t.grad.numpy(), rtol=1e-11, atol=1e-14)


# ============================================================================ the seed example

def test_smolml_seed_example_gradients_match_torch(MLArray, capsys):
    """The seed's x/w/z/a/L block, verbatim but for the import."""
    x = MLArray([[1.0, 2.0], [3.0, 4.0]])
    w = MLArray([[0.5], [-0.5]])
    z = x @ w
    a = z.tanh()
    L = a.sum()
    L.backward()
    print("Gradiente w.r.t. x:")
    print(x.grad())
    print("\nGradiente w.r.t. w:")
    print(w.grad())
    printed = capsys.readouterr().out
    assert "MLArray(shape=(2, 2)" in printed and "MLArray(shape=(2, 1)" in printed
    t0, t1 = 1 - math.tanh(-0.5) ** 2, 1 - math.tanh(-0.5) ** 2
    np.testing.assert_allclose(w.grad().to_numpy(), [[1 * t0 + 3 * t1], [2 * t0 + 4 * t1]])
    np.testing.assert_allclose(x.grad().to_numpy(), [[0.5 * t0, -0.5 * t0], [0.5 * t1, -0.5 * t1]])
    tx = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    tw = torch.tensor([[0.5], [-0.5]], dtype=torch.float64, requires_grad=True)
    (tx @ tw).tanh().sum().backward()
    for ours, theirs in ((x, tx), (w, tw)):
        grads = ours.grad()
        np.testing.assert_allclose(grads.to_numpy(), theirs.grad.numpy(), rtol=1e-14)
        for number in grads.to_numpy().reshape(-1):
            assert repr(float(number)) in printed  # what was printed is what was checked


# ============================================================================ visualize

def test_show_graph_of_an_array_expression(MLArray):
    from michigrad import visualize

    x = MLArray([[1.0, 2.0], [3.0, 4.0]])
    w = MLArray([[0.5], [-0.5]])
    L = (x @ w).tanh().sum()
    L.backward()
    dot = visualize.show_graph(L[()])
    src = dot.source
    for label in ("linear", "tanh", "sum"):
        assert label in src
    nodes, edges = visualize.trace(L[()])
    assert len(nodes) == 4 + 2 + 2 + 2 + 1  # x, w, two linear, two tanh, the sum
    assert x[0, 1] in nodes and w[1, 0] in nodes
