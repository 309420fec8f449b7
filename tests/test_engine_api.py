"""The two engines present one API: names, signatures, docstrings, engine selection, pickling."""

from __future__ import annotations

import inspect
import math
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from conftest import engine_value_class

COMPILED = engine_value_class("compiled")
REFERENCE = engine_value_class("reference")

MICROGRAD_NAMES = {"data", "grad", "_prev", "_op", "_backward", "backward", "relu"}


def public_names(cls: type) -> set[str]:
    names = set(dir(cls(1.0)))  # an instance: the reference engine keeps _op, _backward there
    return {n for n in names if not n.startswith("_")} | (MICROGRAD_NAMES & names)


def test_both_engines_have_the_same_public_api():
    assert public_names(COMPILED) == public_names(REFERENCE)
    assert MICROGRAD_NAMES <= public_names(COMPILED)
    for op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
               "__truediv__", "__rtruediv__", "__pow__", "__rpow__", "__neg__", "__abs__"):
        assert hasattr(COMPILED, op) and hasattr(REFERENCE, op), op


@pytest.mark.parametrize("method", ["exp", "log", "tanh", "relu", "sigmoid", "abs", "backward"])
def test_methods_have_the_same_docstring_and_signature(method):
    compiled, reference = getattr(COMPILED, method), getattr(REFERENCE, method)
    assert inspect.getdoc(compiled) == inspect.getdoc(reference)
    assert list(inspect.signature(compiled).parameters) == list(inspect.signature(reference).parameters)


def test_constructor_signatures_match():
    compiled = inspect.signature(COMPILED).parameters
    reference = inspect.signature(REFERENCE).parameters
    assert list(compiled) == list(reference) == ["data", "_children", "_op", "name", "label"]
    assert compiled["label"].kind is inspect.Parameter.KEYWORD_ONLY


def test_repr_is_the_seed_michigrads(Value):
    assert repr(Value(2.0, name="x")) == "Value(data=2.0, grad=0, name=x)"
    assert repr(Value(3)) == "Value(data=3, grad=0, name=)"


def test_label_is_an_alias_of_name(Value):
    v = Value(1.0, label="a")
    assert v.name == v.label == "a"
    v.label = "b"
    assert v.name == "b"
    with pytest.raises(TypeError, match="not both"):
        Value(1.0, name="x", label="y")
    with pytest.raises(TypeError, match="name must be a str"):
        v.name = 3


def test_constructor_made_op_keeps_its_label_and_children(Value):
    a, b, c = Value(1.0), Value(2.0), Value(3.0)
    out = Value(6.0, (a, b, c, a), "sum3")
    assert out._op == "sum3"
    assert out._prev == {a, b, c}
    out._op = "renamed"
    assert out._op == "renamed"
    with pytest.raises(TypeError, match="children must be Values"):
        Value(1.0, (a, 2.0), "bad")


def test_extra_attributes_and_vars(Value):
    p = Value(1.0)
    p.m, p.v = 0.1, 0.2
    assert (p.m, p.v) == (0.1, 0.2)
    assert {"m": 0.1, "v": 0.2}.items() <= vars(p).items()
    del p.m
    with pytest.raises(AttributeError):
        p.m  # noqa: B018


def test_the_values_own_attributes_cannot_be_deleted_and_stay_intact(Value):
    a = Value(2.0, name="a")
    b = (a * 3).tanh()
    for name in ("data", "grad", "name", "label", "_op", "_prev", "_children", "_backward", "exp"):
        with pytest.raises(AttributeError, match=f"^'Value' object attribute '{name}' cannot be deleted$"):
            delattr(b, name)
    with pytest.raises(AttributeError, match="has no attribute 'm'"):
        del b.m
    assert (b._op, b.name, len(b._children)) == ("tanh", "", 1)
    b.backward()
    assert a.grad == pytest.approx(3 * (1 - math.tanh(6.0) ** 2))


def test_the_reference_engine_protects_every_field_of_its_values():
    from michigrad import _reference

    assert set(vars(_reference.Value(1.0))) == _reference._FIELDS


def test_leaves_pickle_and_operations_do_not(Value):
    v = Value(2.5, name="w")
    v.grad = 0.5
    v.m = 7
    w = pickle.loads(pickle.dumps(v))
    assert (w.data, w.grad, w.name, w.m) == (2.5, 0.5, "w", 7)
    assert type(w) is Value
    with pytest.raises(TypeError, match="only leaf Values"):
        pickle.dumps(v * 2)


def test_backward_attribute_is_callable_and_assignable(Value):
    a = Value(2.0)
    b = a * 3
    b.grad = 1.0
    b._backward()
    assert a.grad == 3.0
    with pytest.raises(TypeError, match="callable"):
        b._backward = 5


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "MICHIGRAD_PURE"} | env
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=environment, check=True)


def test_compiled_engine_is_active_by_default():
    result = run_python("import michigrad; print(michigrad.ENGINE, michigrad.Value.__module__)")
    assert result.stdout.split() == ["compiled", "michigrad._engine"]
    assert result.stderr == ""


def test_michigrad_pure_selects_the_reference_engine():
    result = run_python("import michigrad; print(michigrad.ENGINE, michigrad.Value.__module__)",
                        MICHIGRAD_PURE="1")
    assert result.stdout.split() == ["reference", "michigrad._reference"]
    assert result.stderr == ""


def test_missing_extension_falls_back_with_one_warning():
    result = run_python(
        """
        import sys
        class NoExtension:
            def find_spec(self, name, path=None, target=None):
                if name == "michigrad._engine":
                    raise ImportError("no compiled engine in this test")
        sys.meta_path.insert(0, NoExtension())
        import michigrad, michigrad.engine
        from michigrad.engine import Value
        print(michigrad.ENGINE, (Value(2) * 3).data)
        """
    )
    assert result.stdout.split() == ["reference", "6"]
    warnings = [line for line in result.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1 and "compiled engine unavailable" in warnings[0]


def test_children_are_the_inputs_in_order_each_once(Value):
    a, b = Value(1.0), Value(2.0)
    c = a * b + a
    product, one = c._children
    assert product._op == "*" and one is a
    assert product._children == (a, b)
    assert (a * a)._children == (a,)
    assert Value(3.0, (b, a, b), "op")._children == (b, a)
    assert set(c._children) == c._prev


def test_op_and_name_must_be_strings_not_none(Value):
    with pytest.raises(TypeError):
        Value(1.0, (), None)
    with pytest.raises(TypeError):
        Value(1.0, (), "", None)


def test_a_number_whose_index_fails_falls_back_to_float(Value):
    class Odd:
        def __index__(self):
            raise TypeError("not an integer")

        def __float__(self):
            return 2.5

    assert (Value(1.0) * Odd()).data == 2.5


def test_pickled_leaves_keep_public_attributes_only(Value):
    v = Value(1.0)
    v.public, v._private = 1, 2
    w = pickle.loads(pickle.dumps(v))
    assert w.public == 1 and not hasattr(w, "_private")


# --- max_of: the 'max' node of MLArray's reductions, for scalar code ----------------------------

def test_max_of_is_one_node_choosing_the_first_largest(Value: type) -> None:
    max_of = sys.modules[Value.__module__].max_of
    a, b, c = Value(2), Value(5.0), Value(5)
    m = max_of([a, b, c])
    assert (m.data, type(m.data), m._op) == (5.0, float, "max")  # the first largest, its kind
    assert m._children == (a, b, c)
    (m * 3).backward()
    assert (a.grad, b.grad, c.grad) == (0, 3, 0)  # only the chosen child
    assert type(max_of([Value(1), Value(4)]).data) is int
    nan = max_of([Value(1.0), Value(float("nan")), Value(9.0)])
    assert math.isnan(nan.data)  # NaN wins, as in NumPy
    assert max_of([Value(-math.inf), Value(-1.0)]).data == -1.0


def test_max_of_rejects_bad_input_before_making_a_node(Value: type) -> None:
    max_of = sys.modules[Value.__module__].max_of
    with pytest.raises(ValueError, match="at least one"):
        max_of([])
    with pytest.raises(TypeError, match="must be Values"):
        max_of([Value(1.0), 2.0])
    other = "michigrad._reference" if Value.__module__ == "michigrad._engine" else "michigrad._engine"
    with pytest.raises(TypeError, match="must be Values"):
        max_of([Value(1.0), sys.modules[other].Value(2.0)])
