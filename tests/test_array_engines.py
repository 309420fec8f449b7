"""The two MLArray classes -- compiled kernels and reference kernels -- run the same random array
programs and must agree bit for bit: every intermediate's values (with their int/float kinds) and
op labels, and every input's gradient. (The kernels themselves are checked one by one in
test_array_kernels.py; this checks the whole layer on top of them.)
"""

from __future__ import annotations


import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from michigrad import array as A
from michigrad.array import array_class
from conftest import bits


def flat_bits(arr) -> list:
    return [bits(x) for x in np.array(arr.to_list(), dtype=object).reshape(-1).tolist()]


def labels(arr) -> list:
    return [v._op for v in arr.values()]


def grad_bits(arr) -> list:
    return [bits(v.grad) for v in arr.values()]


def _axis(a, k):
    """An axis argument for a: None, an int or a tuple, chosen by k."""
    if a.ndim == 0 or k % 4 == 0:
        return None
    if k % 4 == 1:
        return k % a.ndim
    if k % 4 == 2:
        return -1
    return tuple(sorted({0, k % a.ndim}))


def _binary(fn):
    def run(a, b, k):
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            return None
        return fn(a, b)
    return run


# Each op: (arrays, operand chosen by k, int parameter) -> array or None (not applicable).
OPS = {
    "exp": lambda a, b, k: (a * 0.25).exp(),
    "tanh": lambda a, b, k: a.tanh(),
    "relu": lambda a, b, k: a.relu(),
    "sigmoid": lambda a, b, k: a.sigmoid(),
    "abs_log": lambda a, b, k: (a.abs() + 1).log(),
    "sqrt": lambda a, b, k: (a * a + 0.5).sqrt(),
    "leaky": lambda a, b, k: A.leaky_relu(a, [0.01, 2, 0.5][k % 3]),
    "elu": lambda a, b, k: A.elu(a, [1.0, 2, 0.3][k % 3]),
    "neg": lambda a, b, k: -a,
    "powc": lambda a, b, k: [lambda: a ** 2, lambda: a ** 3, lambda: (a * a + 1) ** -1][k % 3](),
    "number": lambda a, b, k: [lambda: a + 3, lambda: 2 - a, lambda: a * 1.5, lambda: a / 4,
                               lambda: 5 / (a * a + 1)][k % 5](),
    "add": _binary(lambda a, b: a + b),
    "sub": _binary(lambda a, b: a - b),
    "mul": _binary(lambda a, b: a * b),
    "div": _binary(lambda a, b: a / (b * b + 1)),
    "pow": _binary(lambda a, b: (a * a + 1) ** (b * 0.5)),
    "sum": lambda a, b, k: a.sum(axis=_axis(a, k), keepdims=k % 2 == 0),
    "max": lambda a, b, k: a.max(axis=_axis(a, k)) if a.size() else None,
    "min": lambda a, b, k: a.min(axis=_axis(a, k), keepdims=True) if a.size() else None,
    "mean": lambda a, b, k: a.mean(axis=_axis(a, k)) if a.size() else None,
    "std": lambda a, b, k: (a.var(axis=_axis(a, k)) + 1).sqrt() if a.size() else None,
    "T": lambda a, b, k: a.T,
    "reshape": lambda a, b, k: a.reshape(-1),
    "getitem": lambda a, b, k: a[k % a.shape[0]] if a.ndim and a.shape[0] else None,
    "slice": lambda a, b, k: a[::-1] if a.ndim else None,
    "matmul": lambda a, b, k: a @ b if a.ndim and b.ndim and a.shape[-1] ==
    (b.shape[0] if b.ndim == 1 else b.shape[-2]) and _batch_ok(a, b) else None,
    "softmax": lambda a, b, k: A.softmax(a, axis=-1) if a.ndim else None,
    "log_softmax": lambda a, b, k: A.log_softmax(a, axis=0) if a.ndim else None,
}


def _batch_ok(a, b) -> bool:
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        return False
    return True


def run_program(cls, inputs, steps):
    """Apply the steps; returns (inputs, every array made, the error that stopped it)."""
    arrays = [cls(x) for x in inputs]
    made = []
    for name, i, j, k in steps:
        a, b = arrays[i % len(arrays)], arrays[j % len(arrays)]
        try:
            out = OPS[name](a, b, k)
        except (ArithmeticError, ValueError) as exc:  # e.g. exp overflow: both engines alike
            return arrays[:len(inputs)], made, (type(exc), str(exc))
        if out is None:
            continue
        if not hasattr(out, "values"):  # a Value: one element
            out = cls(out)
        arrays.append(out)
        made.append(out)
    return arrays[:len(inputs)], made, None


@settings(max_examples=100, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3,
                                                max_side=3),
       ints=st.lists(st.booleans(), min_size=3, max_size=3),
       steps=st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.integers(0, 99),
                                st.integers(0, 99), st.integers(0, 99)),
                      min_size=2, max_size=10),
       seed=st.integers(0, 2**16))
def test_compiled_and_reference_arrays_are_bit_identical(shapes, ints, steps, seed):
    rng = np.random.default_rng(seed)
    inputs = []
    for shape, as_int in zip(shapes.input_shapes, ints):
        if as_int:  # ints stay ints: the int flags must agree too
            inputs.append(rng.integers(-3, 4, shape).tolist() if shape else int(rng.integers(-3, 4)))
        else:
            inputs.append(rng.uniform(-2, 2, shape))
    results = {}
    for engine in ("compiled", "reference"):
        cls = array_class(engine)
        ins, made, error = run_program(cls, inputs, steps)
        total = sum((m.sum() for m in made if m.size()), cls(0.0))
        total.backward()
        results[engine] = ([flat_bits(m) for m in made], [labels(m) for m in made],
                           [grad_bits(m) for m in ins], [m.shape for m in made], error)
    compiled, reference = results["compiled"], results["reference"]
    assert compiled[4] == reference[4]
    assert compiled[3] == reference[3]
    assert compiled[1] == reference[1]
    assert compiled[0] == reference[0]
    assert compiled[2] == reference[2]


@pytest.mark.parametrize("expr", [
    lambda M: (M([[1, 2], [3, 4]]) @ M([5, -6])).sum(),
    lambda M: M([3, -2, 0]).relu() + M([1, 2, 3]).max(),
    lambda M: M([[2, 7, 7], [1, 0, -1]]).min(axis=1) * 3,
    lambda M: M([1, 2, 3]) ** 2 - M([2**52, 1, 0]),
    lambda M: A.leaky_relu(M([-3, 4]), 2),
])
def test_int_results_agree(expr):
    """micrograd keeps ints; so do both engines' arrays, identically."""
    compiled = expr(array_class("compiled"))
    reference = expr(array_class("reference"))
    assert flat_bits(compiled) == flat_bits(reference)
    assert any(type(x) is int for x in np.array(reference.to_list(), dtype=object).reshape(-1))


FIXED_INPUTS = [
    [np.linspace(-2.3, 1.9, 12).reshape(3, 4), np.linspace(-1.1, 2.7, 4), 0.7],
    [[[3, -1, 0], [2, 2, -4]], [1, -2, 5], [[-3], [4]]],  # ints: int flags must agree
    [np.linspace(-0.9, 0.8, 24).reshape(2, 3, 4), np.linspace(1.5, -1.5, 8).reshape(2, 4, 1),
     np.linspace(-2, 2, 3).reshape(3, 1)],
]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("which", range(len(FIXED_INPUTS)))
def test_every_op_is_bit_identical_across_engines(name, which):
    """Each op of the random programs, on fixed inputs, with every operand pairing and param."""
    inputs = FIXED_INPUTS[which]
    results = {}
    for engine in ("compiled", "reference"):
        cls = array_class(engine)
        steps = [(name, i, j, k) for i in range(3) for j in range(3) for k in range(4)]
        ins, made, error = run_program(cls, inputs, steps)
        for m in made:
            if m.size():
                m.sum().backward()
        results[engine] = ([flat_bits(m) for m in made], [labels(m) for m in made],
                           [grad_bits(m) for m in ins], error)
    assert results["compiled"] == results["reference"]
    assert results["reference"][0], "the op never applied"
