"""MLArray (issue #5): SmolML's N-d array API on engine nodes, against NumPy, on both engines.

Every test takes the ``MLArray`` fixture (the class of the engine under test). Values are checked
against NumPy; gradients where they are simple enough to state here (the PyTorch comparisons and
the property tests are in test_array_oracles.py, the compiled-vs-reference bit checks in
test_array_engines.py). This module imports neither torch nor graphviz, so the wheel tests run it.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import michigrad
from michigrad.array import MLArrayBase, array_class
from conftest import bits


def other_engine(engine: str) -> str:
    return "reference" if engine == "compiled" else "compiled"


def op_of(v) -> str:
    return v._op


def rnd(shape, seed=0, lo=-2.0, hi=2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, size=shape)


# ================================================================================ construction

def test_the_active_class_is_the_active_engines():
    assert michigrad.MLArray is array_class() is array_class(michigrad.ENGINE)
    assert michigrad.MLArray.engine == michigrad.ENGINE
    assert issubclass(michigrad.MLArray, MLArrayBase)
    with pytest.raises(ValueError, match="engine must be"):
        array_class("gpu")
    with pytest.raises(TypeError, match="abstract"):
        MLArrayBase([1])


def test_import_michigrad_does_not_import_numpy():
    code = ("import sys, michigrad; assert 'numpy' not in sys.modules, 'numpy imported';"
            "michigrad.MLArray; assert 'numpy' in sys.modules;"
            "assert michigrad.array.softmax and 'MLArray' in dir(michigrad); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_without_numpy_the_error_names_the_extra():
    code = ("import sys; sys.modules['numpy'] = None; import michigrad\n"
            "try:\n    michigrad.MLArray\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install michigrad[array]" in out.stdout, out.stderr


def test_from_numbers_and_nested_lists_keeps_ints(MLArray):
    a = MLArray([[1, 2.5], [True, -0.0]])
    assert a.shape == (2, 2) and a.ndim == 2 and a.size() == 4 and len(a) == 2
    assert [bits(x) for row in a.to_list() for x in row] == \
        [bits(1), bits(2.5), bits(1), bits(-0.0)]
    s = MLArray(3)
    assert s.shape == () and s.ndim == 0 and s.size() == 1 and s.item() == 3
    assert type(s.item()) is int
    assert MLArray(2.5).to_list() == 2.5
    assert MLArray((1, 2, 3)).to_list() == [1, 2, 3]
    assert MLArray([]).shape == (0,)
    assert MLArray([[], []]).shape == (2, 0)
    big = MLArray([2**60, 3])
    assert [type(x) for x in big.to_list()] == [float, int]  # Value's rule: not exact -> float


def test_from_numpy_arrays(MLArray):
    f = MLArray(np.arange(6, dtype=np.float32).reshape(2, 3) / 2)
    assert f.shape == (2, 3) and f.to_list() == [[0.0, 0.5, 1.0], [1.5, 2.0, 2.5]]
    i = MLArray(np.arange(6).reshape(3, 2))
    assert i.to_list() == [[0, 1], [2, 3], [4, 5]]
    assert all(type(x) is int for row in i.to_list() for x in row)
    assert MLArray(np.array([True, False])).to_list() == [1, 0]
    assert MLArray(np.array(4.0)).shape == ()
    assert MLArray(np.zeros((2, 0, 3))).shape == (2, 0, 3)
    assert MLArray(np.array([1, 2.5], dtype=object)).to_list() == [1, 2.5]
    assert MLArray([np.float64(1.5), np.int64(2)]).to_list() == [1.5, 2]
    other_order = np.array([[1.5, -2.0]]).dtype.newbyteorder()  # converted, not misread
    assert MLArray(np.array([[1.5, -2.0]], dtype=other_order)).to_list() == [[1.5, -2.0]]
    assert MLArray(np.array([3, -4], dtype=np.dtype(np.int64).newbyteorder())).to_list() == [3, -4]
    with pytest.raises(TypeError, match="dtype"):
        MLArray(np.array([1 + 2j]))


def test_numpy_subclasses_read_as_numpy_reads_them(MLArray):
    """A masked array gives its data (both engines: one read the masked entries as None), an
    np.matrix its 2-D values (it stayed 2-D when flattened)."""
    masked = np.ma.masked_array([1.0, 2.0], mask=[False, True])
    assert MLArray(masked).to_list() == [1.0, 2.0] == MLArray([masked]).to_list()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # NumPy's, about np.matrix
        matrix = np.matrix([[1.0, 2.0], [3.0, 4.0]])
    assert MLArray(matrix).to_list() == [[1.0, 2.0], [3.0, 4.0]]


def test_from_values_references_the_same_nodes(MLArray, Value):
    v, w = Value(1.0), Value(2)
    a = MLArray([[v, 3], [w, 4.5]])
    assert a[0, 0] is v and a[1, 0] is w
    assert a.to_list() == [[1.0, 3], [2, 4.5]]
    assert MLArray(v)[()] is v
    (a * 2).sum().backward()
    assert v.grad == 2 and w.grad == 2


def test_from_another_array_shares_nodes_not_slots(MLArray):
    a = MLArray([1.0, 2.0, 3.0])
    b = MLArray(a)
    assert all(b[i] is a[i] for i in range(3))
    b[0] = 9.0
    assert a.to_list() == [1.0, 2.0, 3.0] and b.to_list() == [9.0, 2.0, 3.0]
    import copy

    for d in (a.copy(), copy.copy(a)):
        assert type(d) is MLArray and d[2] is a[2]
        d[2] = 0.0
        assert a[2].data == 3.0
    c = MLArray([a, a * 2])  # a list of arrays stacks them
    assert c.shape == (2, 3) and c[0, 1] is a[1]


def test_bad_input_is_a_clear_error(MLArray, engine):
    with pytest.raises(ValueError, match="rectangular"):
        MLArray([[1, 2], [3]])
    with pytest.raises(TypeError, match="str"):
        MLArray(["a"])
    with pytest.raises(TypeError, match="NoneType"):
        MLArray(None)
    with pytest.raises(TypeError, match="NoneType"):
        MLArray([1, None])
    Other = array_class(other_engine(engine))
    OtherValue = Other._Value
    with pytest.raises(TypeError, match="engine"):
        MLArray(Other([1, 2]))
    with pytest.raises(TypeError, match="engine"):
        MLArray([OtherValue(1.0)])
    with pytest.raises(TypeError, match="engine"):
        MLArray([1.0]) + Other([1.0])
    with pytest.raises(TypeError, match="engine"):
        MLArray([1.0]) * OtherValue(2.0)


# ======================================================================== reading and basics

def test_len_iter_item_bool_like_numpy(MLArray, Value):
    s = MLArray(2.0)
    with pytest.raises(TypeError, match="len"):
        len(s)
    with pytest.raises(TypeError, match="iteration"):
        iter(s).__next__()
    assert s.item() == 2.0 and bool(s) is True
    m = MLArray([[1, 2], [3, 4]])
    rows = list(m)
    assert len(rows) == 2 and isinstance(rows[0], MLArray) and rows[1].to_list() == [3, 4]
    assert all(isinstance(v, Value) for v in MLArray([1, 2]))
    with pytest.raises(ValueError, match="size 1"):
        m.item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(m)
    with pytest.raises(ValueError, match="empty MLArray is ambiguous"):
        bool(MLArray([]))
    assert sum(MLArray([1.0, 2.0, 3.0])).data == 6.0  # builtin sum over the Values


def test_to_numpy_repr_and_data(MLArray, Value):
    a = MLArray([[1, 2.5], [3, 4]])
    n = a.to_numpy()
    assert n.dtype == np.float64 and n.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    r = repr(a)
    assert r.startswith("MLArray(shape=(2, 2),\ndata=[[1, 2.5],") and r.endswith("[3, 4]])")
    assert str(a) == r
    d = a.data
    assert isinstance(d[1][0], Value) and d[1][0] is a[1, 0]
    assert isinstance(MLArray(1.0).data, Value)
    assert [v.data for v in a.values()] == [1, 2.5, 3, 4]
    assert "..." in repr(MLArray.zeros(2000))  # NumPy's summarisation of large arrays
    assert f"{MLArray([[2.5]]):.3f}" == "2.500" and f"{MLArray(3)}" == "3"
    assert f"{a}" == r
    with pytest.raises(TypeError, match="format"):
        f"{a:.2f}"


def test_no_elementwise_comparison_or_hash_surprises(MLArray):
    a = MLArray([1.0])
    assert a == a and a != MLArray([1.0])  # identity, as for Values
    assert len({a, a}) == 1
    with pytest.raises(TypeError, match="pickled"):
        import pickle
        pickle.dumps(a)


# ============================================================================ element-wise ops

SHAPE_PAIRS = [((), ()), ((3,), ()), ((), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 4)),
               ((4, 1, 3), (2, 1)), ((2, 3, 4), (2, 3, 4)), ((1,), (5,))]


@pytest.mark.parametrize(("sa", "sb"), SHAPE_PAIRS)
def test_binary_ops_broadcast_like_numpy(MLArray, sa, sb):
    x, y = rnd(sa, 1, 0.5, 2.0), rnd(sb, 2, 0.5, 2.0)
    a, b = MLArray(x), MLArray(y)
    for got, want in [(a + b, x + y), (a - b, x - y), (a * b, x * y), (a / b, x / y),
                      (a ** b, x ** y), (-a, -x)]:
        assert got.shape == np.shape(want)
        np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-15, atol=0)


def test_incompatible_shapes_name_both(MLArray):
    a, b = MLArray.zeros(2, 3), MLArray.zeros(4)  # zeros: the shapes are checked first
    for op in (lambda: a + b, lambda: a - b, lambda: a * b, lambda: a / b, lambda: a ** b):
        with pytest.raises(ValueError, match=r"\(2, 3\) \(4,\)"):
            op()
    n = np.zeros(4)  # a left operand that is not an MLArray comes first too, as in NumPy
    for op in (lambda: n + a, lambda: n - a, lambda: n * a, lambda: n / a, lambda: n ** a):
        with pytest.raises(ValueError, match=r"\(4,\) \(2, 3\)"):
            op()


def test_a_division_with_no_element_divides_nothing(MLArray):
    """b ** -1 was taken over b's own elements before broadcasting: a zero there raised for a
    result with no element (NumPy and torch give the empty array)."""
    b = MLArray([0.0, 1.0, 2.0])
    assert (MLArray.zeros(0, 3) / b).shape == (0, 3)
    assert (np.zeros((0, 3)) / b).shape == (0, 3)
    assert (MLArray.zeros(0, 3) / 0).shape == (0, 3)
    with pytest.raises(ZeroDivisionError):
        MLArray.zeros(1, 3) / b


def test_each_element_is_the_scalar_values_graph(MLArray, Value):
    """Value's own graph shapes: a - b = a + b*-1, a / b = a * b**-1, -a = a * -1; every element
    equal to the scalar computation to the last bit."""
    x = [0.3, -1.7, 2.2]
    y = [1.1, 0.7, -3.3]
    a, b = MLArray(x), MLArray(y)
    for i in range(3):
        ai, bi = a[i], b[i]
        for arr, scalar in [(a - b, ai - bi), (a / b, ai / bi), (a + b, ai + bi), (a * b, ai * bi),
                            (-a, -ai), (a - 2, ai - 2), (2 - a, 2 - ai), (a / 3, ai / 3),
                            (3 / a, 3 / ai), (a ** 2, ai ** 2), (2 ** a, 2 ** ai),
                            (a.abs() ** b, ai.abs() ** bi), (a.abs().sqrt(), ai.abs() ** 0.5)]:
            assert bits(arr[i].data) == bits(scalar.data)
            assert arr[i]._op == scalar._op
    d = (a - b)[0]
    assert d._op == "+" and d._children[0] is a[0] and d._children[1]._op == "*"
    assert (a / b)[1]._children[1]._op == "**-1"
    assert (a - 2)[0]._children[1].data == -2 and (a / 2)[0]._children[1].data == 0.5
    assert (-a)[2]._children[1].data == -1


def test_a_number_operand_is_one_shared_leaf(MLArray):
    a = MLArray.zeros(3, 4)
    out = a + 2
    leaves = [out[i, j]._children[1] for i in range(3) for j in range(4)]
    assert all(leaf is leaves[0] for leaf in leaves) and leaves[0].data == 2
    assert type(leaves[0].data) is int


def test_a_value_operand_broadcasts_as_a_scalar(MLArray, Value):
    v = Value(3.0)
    a = MLArray([[1.0, 2.0], [3.0, 4.0]])
    out = a * v
    assert all(out[i, j]._children[1] is v for i in range(2) for j in range(2))
    out.sum().backward()
    assert v.grad == 10.0 and a.grad_numpy().tolist() == [[3.0, 3.0], [3.0, 3.0]]
    v2 = Value(2.0)
    assert (v2 - a).to_list() == [[1.0, 0.0], [-1.0, -2.0]]
    assert (v2 / MLArray([4.0])).to_list() == [0.5]
    assert (v2 ** MLArray([3])).to_list() == [8.0]
    assert isinstance(v2 + a, MLArray) and isinstance(a @ MLArray([1.0, 1.0]) + v2, MLArray)


def test_reflected_forms_with_numbers_lists_and_numpy(MLArray):
    a = MLArray([1.0, 2.0, 4.0])
    x = np.array([1.0, 2.0, 4.0])
    for got, want in [(2 + a, 2 + x), (2 - a, 2 - x), (2 * a, 2 * x), (2 / a, 2 / x),
                      (2 ** a, 2 ** x), (np.float64(2) * a, 2 * x), (np.array([1.0, 1, 1]) - a, 1 - x),
                      (a + [1, 2, 3], x + [1, 2, 3]), ([1, 2, 3] * a, x * [1, 2, 3]),
                      (abs(-a), x)]:
        assert isinstance(got, MLArray)
        np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-15)
    with pytest.raises(TypeError):
        a + "x"
    with pytest.raises(TypeError):
        a @ "x"


def test_unary_methods_like_numpy(MLArray):
    x = rnd((3, 4), 3)
    a = MLArray(x)
    np.testing.assert_allclose(a.exp().to_numpy(), np.exp(x), rtol=1e-15)
    np.testing.assert_allclose(a.abs().log().to_numpy(), np.log(abs(x)), rtol=1e-15)
    np.testing.assert_allclose(a.tanh().to_numpy(), np.tanh(x), rtol=1e-15)
    np.testing.assert_allclose(a.relu().to_numpy(), np.maximum(x, 0), rtol=1e-15)
    np.testing.assert_allclose(a.sigmoid().to_numpy(), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(a.abs().to_numpy(), abs(x), rtol=1e-15)
    np.testing.assert_allclose(a.abs().sqrt().to_numpy(), np.sqrt(abs(x)), rtol=1e-15)
    np.testing.assert_allclose(a.leaky_relu(0.1).to_numpy(), np.where(x > 0, x, 0.1 * x))
    np.testing.assert_allclose(a.elu(0.5).to_numpy(), np.where(x > 0, x, 0.5 * np.expm1(x)))
    assert a.relu()[0, 0]._op == "ReLU" and a.leaky_relu()[0, 0]._op == "leaky_relu"
    assert a.elu()[0, 0]._op == "elu" and a.sqrt if True else None
    assert MLArray([-3, 2]).relu().to_list() == [0, 2]  # micrograd's ints


def test_forward_errors_are_values_and_leave_state_intact(MLArray, Value):
    a = MLArray([1.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="log"):
        a.log()
    with pytest.raises(ZeroDivisionError):
        a / 0
    with pytest.raises(OverflowError):
        MLArray([1.0, 1000.0]).exp()
    with pytest.raises(ValueError, match="complex"):
        a ** 0.5
    assert a.to_list() == [1.0, 0.0, -1.0] and a.grad_numpy().tolist() == [0.0, 0.0, 0.0]


# ===================================================================================== matmul

MATMUL_SHAPES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
                 ((2, 2, 3), (2, 3, 4)), ((2, 2, 3), (3, 4)), ((3,), (2, 3, 4)),
                 ((2, 1, 2, 3), (5, 3, 2)), ((1, 3), (3, 1)), ((2, 0), (0, 3))]


@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES)
def test_matmul_like_numpy(MLArray, sa, sb):
    x, y = rnd(sa, 4), rnd(sb, 5)
    a, b = MLArray(x), MLArray(y)
    out = a @ b
    want = x @ y
    assert out.shape == np.shape(want)
    np.testing.assert_allclose(out.to_numpy(), want, rtol=1e-13, atol=1e-15)
    assert a.matmul(b).shape == out.shape


def test_matmul_element_is_one_linear_node_equal_to_linear(MLArray, Value):
    a = MLArray(rnd((2, 3), 6))
    b = MLArray(rnd((3, 2), 7))
    out = a @ b
    e = out[1, 0]
    assert e._op == "linear"
    assert list(e._children) == [a[1, 0], a[1, 1], a[1, 2], b[0, 0], b[1, 0], b[2, 0]]
    linear = sys.modules[Value.__module__].linear
    assert bits(e.data) == bits(linear([a[1, k] for k in range(3)], [b[k, 0] for k in range(3)]).data)


def test_matmul_errors_name_the_shapes(MLArray):
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 2\)"):
        MLArray.zeros(2, 3) @ MLArray.zeros(4, 2)
    with pytest.raises(ValueError, match=r"\(2, 2, 3\) and \(3, 3, 4\)"):
        MLArray.zeros(2, 2, 3) @ MLArray.zeros(3, 3, 4)
    with pytest.raises(ValueError, match="enough dimensions"):
        MLArray(2.0) @ MLArray.zeros(2)
    with pytest.raises(ValueError, match="enough dimensions"):
        MLArray.zeros(2) @ 3


def test_matmul_with_lists_and_numpy_on_either_side(MLArray):
    a = MLArray([[1.0, 2.0], [3.0, 4.0]])
    assert (a @ [1, 1]).to_list() == [3.0, 7.0]
    assert ([1, 1] @ a).to_list() == [4.0, 6.0]
    assert (np.eye(2) @ a).to_list() == [[1.0, 2.0], [3.0, 4.0]]


# ================================================================================= reductions

def all_axes(ndim):
    axes = [None] + list(range(ndim)) + [-1]
    if ndim >= 2:
        axes += [(0, ndim - 1), tuple(range(ndim))]
    if ndim >= 3:
        axes += [(1, 2), (2, 0)]
    if ndim >= 4:
        axes += [(0, 2, 3), (1, 3)]
    return axes


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (2, 3, 2, 3)])
def test_reductions_on_every_axis_like_numpy(MLArray, shape):
    x = rnd(shape, 8)
    a = MLArray(x)
    for axis in all_axes(len(shape)):
        for keepdims in (False, True):
            for name in ("sum", "mean", "max", "min", "std", "var"):
                got = getattr(a, name)(axis=axis, keepdims=keepdims)
                want = getattr(np, name)(x, axis=axis, keepdims=keepdims)
                assert got.shape == np.shape(want), (name, axis, keepdims)
                np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-12, atol=1e-14,
                                           err_msg=f"{name} axis={axis} keepdims={keepdims}")


def test_smolml_3d_axis_0_is_right(MLArray):
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(MLArray(x).sum(axis=0).to_numpy(), x.sum(axis=0))
    np.testing.assert_array_equal(MLArray(x).max(axis=0).to_numpy(), x.max(axis=0))


@pytest.mark.parametrize("shape", [(6,), (3, 4), (2, 3, 4)])
def test_reduction_gradients(MLArray, shape):
    x = np.round(rnd(shape, 9), 1)  # rounded: ties, which go to the first extreme element
    for axis in all_axes(len(shape)):
        for name in ("sum", "max", "min", "mean"):
            a = MLArray(x)
            getattr(a, name)(axis=axis).backward()
            g = a.grad_numpy()
            axes = tuple(range(x.ndim)) if axis is None else \
                tuple(np.atleast_1d(axis) % x.ndim)
            count = int(np.prod([x.shape[d] for d in axes]))
            if name == "sum":
                want = np.ones_like(x)
            elif name == "mean":
                want = np.full_like(x, 1.0 / count)
            else:  # one 1 per reduced group, at the first extreme element
                moved = np.moveaxis(x, axes, range(-len(axes), 0))
                flat = moved.reshape(moved.shape[:x.ndim - len(axes)] + (-1,))
                pick = (np.argmax if name == "max" else np.argmin)(flat, axis=-1)
                onehot = np.zeros_like(flat)
                np.put_along_axis(onehot, pick[..., None], 1.0, axis=-1)
                want = np.moveaxis(onehot.reshape(moved.shape), range(-len(axes), 0), axes)
            np.testing.assert_allclose(g, want, rtol=1e-15, err_msg=f"{name} axis={axis}")


def test_max_propagates_nan_like_numpy(MLArray):
    a = MLArray([1.0, math.nan, 3.0, math.nan])
    m = a.max()
    assert math.isnan(m.item())
    m.backward()
    assert a.grad_numpy().tolist() == [0.0, 1.0, 0.0, 0.0]
    assert MLArray([2, 5, 5]).max().item() == 5 and type(MLArray([2, 5]).max().item()) is int


def test_reduction_nodes_and_int_sums(MLArray):
    a = MLArray([[1, 2, 3], [4, 5, 6]])
    s = a.sum(axis=1)
    assert s.to_list() == [6, 15] and all(type(x) is int for x in s.to_list())
    assert s[0]._op == "sum" and list(s[0]._children) == [a[0, 0], a[0, 1], a[0, 2]]
    assert a.max(axis=0)[1]._op == "max" and a.min()._index.shape == ()
    assert a.sum(axis=()).to_list() == a.to_list()  # NumPy: reduce over no axis


def test_reduction_axis_errors_like_numpy(MLArray):
    a = MLArray.zeros(2, 3)
    with pytest.raises(np.exceptions.AxisError):
        a.sum(axis=2)
    with pytest.raises(ValueError, match="out of bounds"):  # AxisError is a ValueError
        a.max(axis=-3)
    with pytest.raises(ValueError, match="duplicate"):
        a.sum(axis=(0, 0))
    with pytest.raises(TypeError):
        a.sum(axis=1.5)
    with pytest.raises(ValueError, match="out of bounds"):
        MLArray(1.0).sum(axis=0)
    with pytest.raises(TypeError, match="bool"):  # NumPy: 'an integer is required'
        a.sum(axis=True)
    with pytest.raises(TypeError, match="bool"):
        a.max(axis=(0, np.bool_(False)))


def test_empty_reductions(MLArray):
    assert MLArray([]).sum().item() == 0
    assert MLArray.zeros(0, 3).sum(axis=0).to_list() == [0, 0, 0]
    assert MLArray.zeros(0, 3).sum(axis=1).shape == (0,)
    with pytest.raises(ValueError, match="zero-size"):
        MLArray([]).max()
    with pytest.raises(ValueError, match="empty"):
        MLArray([]).mean()


def test_std_with_ddof(MLArray):
    x = rnd((4, 5), 10)
    np.testing.assert_allclose(MLArray(x).std(axis=1, ddof=1).to_numpy(), x.std(axis=1, ddof=1),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="ddof"):
        MLArray([1.0]).std(ddof=1)


# ============================================================================== shape changes

def test_reshape(MLArray):
    a = MLArray(np.arange(12.0))
    assert a.reshape(3, 4).shape == (3, 4) == a.reshape((3, 4)).shape
    assert a.reshape(2, -1, 3).shape == (2, 2, 3) and a.reshape([-1]).shape == (12,)
    assert a.reshape(3, 4)[1, 2] is a[6]  # a view over the same nodes
    with pytest.raises(ValueError, match="reshape"):
        a.reshape(5, -1)
    with pytest.raises(ValueError, match="one unknown"):
        a.reshape(-1, -1)


def test_a_shape_may_be_a_numpy_array_as_in_numpy(MLArray):
    """reshape(np.array([4, 6])) and zeros(np.array([2, 3])) raised TypeError (only tuples and
    lists were read as one shape); reshape() with no shape made a 0-d array of a size-1 one."""
    a = MLArray(np.arange(24.0))
    assert a.reshape(np.array([4, 6])).shape == (4, 6) == np.arange(24).reshape(np.array([4, 6])).shape
    assert a.reshape(np.array([-1, 2, 3], dtype=np.int32)).shape == (4, 2, 3)
    assert a.reshape(np.int64(24)).shape == (24,) and a.reshape(np.array(24)).shape == (24,)
    assert MLArray.zeros(np.array([2, 3])).shape == (2, 3) == np.zeros(np.array([2, 3])).shape
    assert MLArray.ones(np.array(3)).shape == (3,) and MLArray.zeros(np.array([], dtype=int)).shape == ()
    with pytest.raises(TypeError):
        MLArray([1.0]).reshape()  # NumPy: TypeError, not a 0-d array
    with pytest.raises(TypeError, match="a shape is ints"):
        MLArray.zeros(np.array([2.0, 3.0]))


def test_numpy_functions_call_the_methods_and_refuse_what_an_array_of_nodes_cannot_do(MLArray):
    """np.sum(a), np.mean(a, axis=0), np.reshape(a, shape)... call the method of the same name
    with dtype=/out=/order= keywords; the methods used to refuse the keywords themselves."""
    data = np.array([[1.0, -2.0, 3.5], [0.5, 4.0, -1.0]])
    a = MLArray(data)
    cases = [
        (np.sum(a), np.sum(data)), (np.sum(a, axis=1, keepdims=True), np.sum(data, axis=1, keepdims=True)),
        (np.mean(a, axis=0), np.mean(data, axis=0)), (np.max(a, axis=1), np.max(data, axis=1)),
        (np.min(a), np.min(data)), (np.var(a, axis=1), np.var(data, axis=1)),
        (np.std(a, ddof=1), np.std(data, ddof=1)), (np.reshape(a, (3, 2)), np.reshape(data, (3, 2))),
        (np.reshape(a, -1), np.reshape(data, -1)),
    ]
    for got, expected in cases:
        assert isinstance(got, MLArray) and got.shape == expected.shape
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-15)
    total = np.sum(np.reshape(a, (3, 2)))  # the nodes are a's: gradients flow back into it
    total.backward()
    assert a.grad().to_list() == [[1.0] * 3] * 2
    for call, error in [(lambda: np.sum(a, dtype=np.float32), "dtype"), (lambda: np.mean(a, out=np.zeros(())), "out="),
                        (lambda: np.max(a, out=np.zeros(())), "out="), (lambda: a.std(dtype=float), "dtype")]:
        with pytest.raises(TypeError, match=error):
            call()
    with pytest.raises(ValueError, match="order='C'"):
        np.reshape(a, (3, 2), order="F")
    assert a.to_list() == data.tolist()


def test_reshape_is_a_view_where_numpy_gives_one_else_a_copy_of_the_same_nodes(MLArray):
    data = np.arange(6.0).reshape(2, 3)
    a, expected = MLArray(data), data.copy()
    flat = a.T.reshape(6)  # NumPy copies here: assigning to it leaves a alone
    flat[0] = 99.0
    expected.T.reshape(6)[0] = 99.0
    assert a.to_list() == expected.tolist()
    assert flat[1] is a[1, 0]  # still the same nodes: gradients flow back into a
    view = a.reshape(3, 2)  # NumPy gives a view here: assigning to it changes a
    view[0, 0] = 7.0
    expected.reshape(3, 2)[0, 0] = 7.0
    assert a.to_list() == expected.tolist()
    (a.T.reshape(6) * 2).sum().backward()
    assert a.grad().to_list() == [[2, 2, 2], [2, 2, 2]]


def test_transpose(MLArray):
    x = rnd((2, 3, 4), 11)
    a = MLArray(x)
    np.testing.assert_array_equal(a.transpose().to_numpy(), x.transpose())
    np.testing.assert_array_equal(a.T.to_numpy(), x.T)
    np.testing.assert_array_equal(a.transpose(1, 0, 2).to_numpy(), x.transpose(1, 0, 2))
    np.testing.assert_array_equal(a.transpose((2, 0, 1)).to_numpy(), x.transpose(2, 0, 1))
    assert a.T[3, 2, 1] is a[1, 2, 3]
    with pytest.raises(ValueError):
        a.transpose(0, 1)
    assert MLArray([1.0, 2.0]).T.shape == (2,)
    np.testing.assert_array_equal(a.transpose(np.array([2, 0, 1])).to_numpy(), x.transpose(2, 0, 1))
    for empty in ((), []):  # an explicit empty permutation is not "reverse" (NumPy: ValueError)
        with pytest.raises(ValueError, match="axes don't match"):
            a.transpose(empty)
    assert MLArray(2.0).transpose(()).to_list() == 2.0


# ============================================================================== indexing

def test_getitem_like_numpy(MLArray, Value):
    x = rnd((3, 4, 5), 12)
    a = MLArray(x)
    for key in [1, -1, (0, 2), (-1, -2), slice(1, None), (slice(None), 1), (Ellipsis, 2),
                (slice(None, None, -2), slice(1, 3)), (None, 0), ([0, 2], 1),
                (np.array([True, False, True]),), ([2, 2, 0],), (0, [1, 1], slice(None))]:
        got, want = a[key], x[key]
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got.to_numpy(), want)
    e = a[1, 2, 3]
    assert isinstance(e, Value) and e.data == x[1, 2, 3]
    assert a[1, 2, 3] is a[1, 2, 3] and a[-2, -3, -2] is a[1, 1, 3]
    assert a[1][2][3] is e
    with pytest.raises(IndexError):
        a[3]
    with pytest.raises(IndexError):
        a[0, 0, 0, 0]
    with pytest.raises(TypeError):
        a[a]


def test_gradients_flow_through_views_into_the_base(MLArray):
    a = MLArray(np.arange(12.0).reshape(3, 4))
    (a[1:, ::2] * 2).sum().backward()
    (a.T[0] * 1).sum().backward()
    a[[0, 0], 3].sum().backward()  # advanced indexing: the same nodes, counted twice
    want = np.zeros((3, 4))
    want[1:, ::2] += 2
    want[:, 0] += 1
    want[0, 3] += 2
    np.testing.assert_array_equal(a.grad_numpy(), want)


def test_setitem_repoints_slots_and_views_see_it(MLArray, Value):
    a = MLArray.zeros(3, 4)
    row = a[1]  # basic indexing: a view
    t = a.T
    a[1, 2] = 5
    assert row.to_list() == [0.0, 0.0, 5, 0.0] and t[2, 1].data == 5
    v = Value(7.0)
    row[0] = v  # through the view
    assert a[1, 0] is v
    a[0] = [1, 2, 3, 4]  # broadcast over the row
    a[:, 3] = MLArray([9.0])
    assert a.to_list() == [[1, 2, 3, 9.0], [v.data, 0.0, 5, 9.0], [0.0, 0.0, 0.0, 9.0]]
    a[2] = a[0]  # same store, source read before writing
    assert a[2, 1] is a[0, 1]
    b = MLArray([1.0, 2.0, 3.0, 4.0])
    b[1:] = b[:-1]
    assert b.to_list() == [1.0, 1.0, 2.0, 3.0]
    copy = a[[0, 1]]  # advanced indexing gives a new array, as in NumPy
    copy[0, 0] = 100
    assert a[0, 0].data == 1
    with pytest.raises(ValueError, match=r"from shape \(3,\) into shape \(4,\)"):
        a[0] = [1, 2, 3]
    with pytest.raises(TypeError, match="assign"):
        a[0] = "x"
    with pytest.raises(IndexError):
        a[5] = 1
    assert a.to_list()[0] == [1, 2, 3, 9.0]  # failed assignments changed nothing


def test_setitem_from_numbers_makes_a_leaf_per_element(MLArray, Value):
    """Numbers (a number, lists, a numpy array) become one new leaf per selected element, so
    the elements train apart (they were tied to one node: an update moved them together and
    their gradients summed); a Value or an MLArray is referenced, as documented."""
    w = MLArray.zeros(2, 3)
    w[0] = 0.5
    assert w[0, 0] is not w[0, 1] and w.to_list()[0] == [0.5, 0.5, 0.5]
    w.update_values([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert w.to_list() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    (w * MLArray([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])).sum().backward()
    assert w.grad_numpy().tolist() == [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]
    a = MLArray.zeros(2, 3)
    a[:] = [1, 2.0, 3]  # a list broadcast over the rows: ints stay ints, as MLArray([1]) keeps
    assert a[0, 0] is not a[1, 0] and a.to_list() == [[1, 2.0, 3], [1, 2.0, 3]]
    a[:, 1] = np.array([7.0, 8.0])
    a[1] = np.array([[True, False, True]])  # a leading length-1 axis is dropped, as in NumPy
    assert a.to_list() == [[1, 7.0, 3], [1, 0, 1]] and a[1, 0] is not a[1, 2]
    v = Value(4.0)
    a[0] = [v, 5, v]  # Values in a list are referenced, numbers become leaves
    assert a[0, 0] is v and a[0, 2] is v and a.to_list()[0] == [4.0, 5, 4.0]
    a[1] = v  # a Value broadcast: every selected element is that node
    assert a[1, 0] is v and a[1, 2] is v


def test_setitem_and_update_values_drop_leading_length_one_axes(MLArray):
    a = MLArray.zeros(2, 3)
    a[:] = np.full((1, 1, 3), 2.0)  # (1, 1, 3) into (2, 3)
    a[0] = MLArray.ones(1, 3)
    assert a.to_list() == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    b = MLArray.zeros(3).update_values(np.ones((1, 3)))
    assert b.to_list() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"from shape \(2, 3\) into shape \(3,\)"):
        a[0] = MLArray.zeros(2, 3)  # a leading axis of 2 is not dropped
    with pytest.raises(ValueError, match=r"shape \(2, 3\) does not fit"):
        b.update_values(np.zeros((2, 3)))
    assert a.to_list() == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]] and b.to_list() == [1.0] * 3


def test_a_one_element_list_into_one_element_drops_its_axes_as_an_array_does(MLArray, Value):
    """a[0, 0] = [1.0] raised AttributeError ('float' object has no attribute 'ndim'): the
    list's object array lost its last axis by [0], which gives the item, not a 0-d array."""
    a = MLArray.zeros(2, 3)
    v = Value(4.0)
    a[0, 0] = np.array([2.0])  # as an ndarray and an MLArray already were
    a[0, 1] = [3]
    a[0, 2] = [[v]]
    a[1, 0] = MLArray([5.0])
    assert a.to_list() == [[2.0, 3, 4.0], [5.0, 0.0, 0.0]] and a[0, 2] is v
    s = MLArray(0.0)
    s[()] = [1.5]
    assert s.to_list() == 1.5
    with pytest.raises(ValueError, match=r"from shape \(2,\) into shape \(\)"):
        a[1, 1] = [1.0, 2.0]
    assert a.to_list()[1] == [5.0, 0.0, 0.0]


def test_an_empty_sum_gives_each_element_its_own_zero(MLArray):
    s = MLArray.zeros(0, 3).sum(axis=0)
    assert s.to_list() == [0, 0, 0] and type(s.to_list()[0]) is int  # Python's sum([])
    s[0] = 5
    assert s.to_list() == [5, 0, 0]
    s.update_values([1.0, 2.0, 3.0])
    assert s.to_list() == [1.0, 2.0, 3.0]
    k = MLArray.zeros(2, 0).sum(axis=1, keepdims=True)
    assert k.shape == (2, 1) and k[0, 0] is not k[1, 0]


def test_setitem_then_backward_reaches_the_new_node(MLArray, Value):
    v = Value(2.0)
    a = MLArray([1.0, 1.0])
    a[0] = v
    (a * 3).sum().backward()
    assert v.grad == 3


# ============================================================================ gradients

def test_backward_on_one_element_and_sum_of_many(MLArray):
    a = MLArray([[1.0, 2.0]])
    (a * a).backward()  # sums first, as SmolML does
    assert a.grad().to_list() == [[2.0, 4.0]]
    a.zero_grad()
    assert a.grad().to_list() == [[0, 0]] and type(a.grad().to_list()[0][0]) is int
    (a[0, 1] * a[0, 0] * MLArray(1.0)).backward()  # a one-element array: that node
    assert a.grad_numpy().tolist() == [[2.0, 1.0]]
    with pytest.raises(ValueError, match="empty"):
        MLArray([]).backward()


def test_grad_returns_new_leaves(MLArray):
    a = MLArray([1.0, 2.0])
    (a * 3).backward()
    g = a.grad()
    assert g.to_list() == [3.0, 3.0] and g[0]._op == "" and not g[0]._children
    assert g[0] is not a[0]


def test_detach(MLArray):
    a = MLArray([1, 2.0])
    d = (a * 2).detach()
    assert d.to_list() == [2, 4.0] and not d[0]._children


def test_update_values(MLArray):
    a = MLArray([[1.0, 2.0], [3.0, 4.0]])
    e = a[0, 0]
    a.update_values([[5, 6], [7, 8]])
    assert a[0, 0] is e and a.to_list() == [[5.0, 6.0], [7.0, 8.0]]
    a.update_values(0)
    assert a.to_list() == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="shape"):
        a.update_values([1, 2, 3])


def test_update_values_keeps_ints_as_the_constructor_does(MLArray):
    """update_values read every number as a float (5 became 5.0); it now reads them as
    MLArray(data) does, so ``value.data`` is what micrograd's ``p.data = 5`` would hold."""
    a = MLArray([[1.0, 2.0], [3.0, 4.0]])
    first = a[0, 0]
    for new, expected in [([[5, 6.5], [7, 8]], [[5, 6.5], [7, 8]]), (0, [[0, 0], [0, 0]]),
                          (np.array([1, 2]), [[1, 2], [1, 2]]), (np.array([[1.5, 2]]), [[1.5, 2.0]] * 2),
                          (MLArray([3, 4.0]), [[3, 4.0]] * 2), ([[2**60, -1]], [[float(2**60), -1]] * 2)]:
        assert a.update_values(new) is a and a[0, 0] is first
        got = a.to_list()
        assert got == expected and [[type(x) for x in row] for row in got] == [
            [type(x) for x in row] for row in expected], (new, got)
    assert type((a * 2)[0, 1].data) is int  # the forward keeps the int, as Value(-1) * 2 does
    with pytest.raises(TypeError, match="real number"):
        a.update_values([["x", 1.0], [2.0, 3.0]])
    assert a.to_list() == [[float(2**60), -1]] * 2  # a refused update changes nothing


def test_mixing_with_scalar_values(MLArray, Value):
    a = MLArray([[1.0, 2.0], [3.0, 4.0]])
    w = Value(0.5)
    y = a[0, 0] * w + a[1, 1].tanh() + (a.sum() * w)[()]  # scalar code on elements
    assert isinstance(y, Value)
    y.backward()
    assert w.grad == 1.0 + 10.0
    np.testing.assert_allclose(a.grad_numpy(), [[0.5 + 0.5, 0.5], [0.5, 0.5 + 1 - math.tanh(4) ** 2]])


# ============================================================================ constructors

def test_zeros_ones(MLArray):
    for make, fill in ((MLArray.zeros, 0.0), (MLArray.ones, 1.0)):
        a, b = make(2, 3), make((2, 3))
        assert a.shape == b.shape == (2, 3) and a.to_list() == [[fill] * 3] * 2
        assert type(a.to_list()[0][0]) is float
        assert a[0, 0] is not a[0, 1]  # one leaf per element: parameters update separately
    assert MLArray.zeros().shape == () and MLArray.ones(0).shape == (0,)
    with pytest.raises(ValueError, match="negative"):
        MLArray.zeros(-1)
    with pytest.raises(TypeError, match="shape"):
        MLArray.ones(2.5)


def test_random_constructors_use_pythons_random(MLArray):
    random.seed(3)
    a = MLArray.randn(2, 3)
    random.seed(3)
    assert a.to_list() == [[random.gauss(0, 1) for _ in range(3)] for _ in range(2)]
    assert MLArray.randn((2, 3), rng=5).to_list() == MLArray.randn(2, 3, rng=5).to_list()
    r = random.Random(5)
    assert MLArray.randn(4, rng=random.Random(5)).to_list() == [r.gauss(0, 1) for _ in range(4)]
    random.seed(1)  # SmolML's draws: row-major, U(-l, l) and N(0, s)
    xu = MLArray.xavier_uniform(3, 4)
    random.seed(1)
    lim = math.sqrt(6.0 / 7)
    assert xu.shape == (3, 4)
    assert xu.to_list() == [[random.uniform(-lim, lim) for _ in range(4)] for _ in range(3)]
    xn = MLArray.xavier_normal(30, 40, rng=0).to_numpy()
    assert xn.shape == (30, 40) and abs(xn.std() - math.sqrt(2 / 70)) < 0.02
    he = MLArray.he_normal(50, 40, rng=0).to_numpy()
    assert he.shape == (50, 40) and abs(he.std() - math.sqrt(2 / 50)) < 0.02
    with pytest.raises(TypeError, match="rng"):
        MLArray.randn(2, rng="seed")
    for init in (MLArray.xavier_uniform, MLArray.xavier_normal, MLArray.he_normal):
        assert init(0, 4).shape == (0, 4) and init(3, 0).shape == (3, 0)  # no draw, no scale
        with pytest.raises(ValueError, match="negative dimensions"):
            init(-2, 4)
        with pytest.raises(TypeError, match="rng"):
            init(0, 4, rng="seed")


def test_module_functions_use_the_active_engine():
    from michigrad import array

    assert type(array.zeros(2)) is michigrad.MLArray and array.ones(2, 2).shape == (2, 2)
    assert array.randn(3, rng=1).shape == (3,)
    assert array.xavier_uniform(2, 3).shape == (2, 3) == array.xavier_normal(2, 3).shape
    assert array.he_normal(2, 3).shape == (2, 3)
    assert array.relu([-1.0, 2.0]).to_list() == [0, 2.0]


# ============================================================================ functions

def test_array_functions(MLArray):
    from michigrad import array as A

    x = rnd((3, 5), 13, -3, 3)
    a = MLArray(x)
    np.testing.assert_allclose(A.relu(a).to_numpy(), np.maximum(x, 0))
    np.testing.assert_allclose(A.leaky_relu(a).to_numpy(), np.where(x > 0, x, 0.01 * x))
    np.testing.assert_allclose(A.leaky_relu(a, slope=0.2).to_numpy(), np.where(x > 0, x, 0.2 * x))
    np.testing.assert_allclose(A.elu(a).to_numpy(), np.where(x > 0, x, np.expm1(x)))
    np.testing.assert_allclose(A.elu(a, alpha=2.0).to_numpy(), np.where(x > 0, x, 2 * np.expm1(x)))
    np.testing.assert_allclose(A.sigmoid(a).to_numpy(), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(A.tanh(a).to_numpy(), np.tanh(x), rtol=1e-15)
    for axis in (-1, 0, 1):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        sm = e / e.sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(A.softmax(a, axis=axis).to_numpy(), sm, rtol=1e-14)
        np.testing.assert_allclose(a.softmax(axis).to_numpy(), sm, rtol=1e-14)
        np.testing.assert_allclose(A.log_softmax(a, axis=axis).to_numpy(), np.log(sm), rtol=1e-13,
                                   atol=1e-14)
        np.testing.assert_allclose(a.log_softmax(axis).to_numpy(), np.log(sm), rtol=1e-13,
                                   atol=1e-14)


def test_softmax_is_stable_for_huge_logits(MLArray):
    from michigrad import array as A

    a = MLArray([[1000.0, 1001.0, -1000.0], [-1e6, 0.0, 1e6]])
    sm = A.softmax(a).to_numpy()
    assert np.isfinite(sm).all()
    np.testing.assert_allclose(sm.sum(axis=1), [1.0, 1.0])
    ls = A.log_softmax(a).to_numpy()
    assert ls[0, 1] == pytest.approx(-math.log1p(math.exp(-1)))
    assert ls[1, 2] == 0.0
    A.log_softmax(a).sum().backward()
    assert np.isfinite(a.grad_numpy()).all()


def test_softmax_over_an_empty_axis_is_empty(MLArray):
    from michigrad import array as A

    assert A.softmax(MLArray.zeros(3, 0), axis=1).shape == (3, 0)  # as torch's
    assert A.log_softmax(MLArray.zeros(0, 4), axis=0).shape == (0, 4)
    assert A.softmax(MLArray.zeros(0, 4), axis=1).shape == (0, 4)


# ================================================================================ lifetime

def _live_nodes(engine) -> int:
    """Nodes alive in the engine: the arena's count (compiled) or Values the collector tracks
    (reference)."""
    import gc

    gc.collect()
    if engine == "compiled":
        from michigrad import _engine

        return _engine._arena_stats()["live"]
    from michigrad._reference import Value

    return sum(1 for o in gc.get_objects() if type(o) is Value)


def test_arrays_free_their_nodes_and_a_training_loop_runs_in_flat_memory(MLArray, engine):
    W = MLArray.randn(8, 4, rng=0)
    X = MLArray.randn(16, 4, rng=1)
    before = _live_nodes(engine)
    out = (X @ W.T).tanh()
    view = out[::2].T
    loss = (view.sum(axis=0) ** 2).mean() + _softmax_max(out)
    loss.backward()
    assert _live_nodes(engine) > before
    del out, view, loss
    assert _live_nodes(engine) == before
    counts = []
    for _ in range(5):  # a training step: build, backward, update, drop
        loss = ((X @ W.T).relu() - 1.0).abs().mean()
        W.zero_grad()
        loss.backward()
        W.update_values(W.to_numpy() - 0.01 * W.grad_numpy())
        del loss
        counts.append(_live_nodes(engine))
    assert len(set(counts)) == 1 and counts[0] == before


def _softmax_max(x):
    from michigrad.array import softmax

    return softmax(x, axis=1).max()


# ============================================================================ properties

PROPERTY = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
numbers = st.one_of(st.integers(-2**60, 2**60), st.floats(allow_nan=False, width=64))


@PROPERTY
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3), data=st.data())
def test_nested_lists_round_trip_with_their_int_and_float_kinds(MLArray, shape, data):
    flat = data.draw(st.lists(numbers, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    nested = np.array(flat + [None], dtype=object)[:-1].reshape(shape).tolist()
    a = MLArray(nested)
    assert a.shape == shape
    want = [float(x) if type(x) is int and abs(x) >= 2**53 else x for x in flat]  # Value's rule
    got = np.array(a.to_list(), dtype=object).reshape(-1).tolist() if shape else [a.to_list()]
    assert [bits(x) for x in got] == [bits(x) for x in want]


@PROPERTY
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), data=st.data())
def test_setitem_like_numpy(MLArray, shape, data):
    key = data.draw(hnp.basic_indices(shape, allow_ellipsis=True))
    target_shape = np.empty(shape)[key].shape
    value_shape = data.draw(
        hnp.broadcastable_shapes(target_shape, max_dims=len(target_shape), min_side=0)
        .filter(lambda s: np.broadcast_shapes(s, target_shape) == target_shape))
    x = np.arange(float(np.prod(shape))).reshape(shape)
    v = -1.0 - np.arange(float(np.prod(value_shape))).reshape(value_shape)
    a = MLArray(x)
    view = a.T  # a view made before the assignment sees it too
    a[key] = MLArray(v) if value_shape else float(v)
    x[key] = v
    np.testing.assert_array_equal(a.to_numpy(), x)
    np.testing.assert_array_equal(view.to_numpy(), x.T)
