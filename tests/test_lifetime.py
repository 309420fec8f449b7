"""Lifetime: handle identity, freeing, arena slot reuse, deep graphs, no reference cycles.

Identity and freeing tests run on both engines; the arena's own counters (``_arena_stats``) and
invariant check (``_arena_check``) exist only in the compiled core.
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import weakref

import pytest

from michigrad import _engine

compiled = _engine.Value


def live_nodes() -> int:
    return _engine._arena_stats()["live"]


def custom_sigmoid(x, Value):  # noqa: N803 - the course's way of writing an op
    out = Value(1 / (1 + math.exp(-x.data)), (x,), "sigmoid")

    def _backward():
        x.grad += out.data * (1 - out.data) * out.grad

    out._backward = _backward
    return out


def collect_all() -> None:
    while gc.collect():
        pass


# --- identity ---------------------------------------------------------------------------------


def test_prev_returns_the_same_objects_every_time(Value):
    a, b = Value(2.0), Value(3.0)
    c = a * b + 1
    (product, one) = sorted(c._prev, key=lambda v: v._op == "")
    assert product._op == "*" and one.data == 1
    assert {id(v) for v in c._prev} == {id(v) for v in c._prev}
    assert a in product._prev and b in product._prev
    assert any(child is a for child in product._prev)


def test_prev_handles_of_dropped_intermediates_are_stable_while_held(Value):
    c = (Value(2.0) * Value(3.0)) * 4
    first = c._prev
    second = c._prev
    assert {id(v) for v in first} == {id(v) for v in second}


def test_extra_attributes_live_with_the_node(Value):
    x = Value(2.0)
    y = x * 3
    y.tag = "kept"
    y.m = 0.5
    z = y + 1
    del y
    collect_all()
    (product,) = [v for v in z._prev if v._op == "*"]
    assert product.tag == "kept" and product.m == 0.5
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        product.missing  # noqa: B018


def test_builtin_names_cannot_be_shadowed_by_attributes(Value):
    v = Value(1.0)
    with pytest.raises(AttributeError):
        v.exp = 3  # a method: an instance attribute would be invisible
    assert callable(v.exp)


# --- freeing ----------------------------------------------------------------------------------


def test_a_dropped_value_is_freed(Value):
    v = Value(1.0) * 2
    ref = weakref.ref(v)
    del v
    gc.collect()  # the reference engine, like micrograd, has closure cycles
    assert ref() is None


def test_compiled_handles_die_without_the_cyclic_collector():
    gc.disable()
    try:
        x = compiled(1.0)
        y = (x * 2 + 1).tanh()
        ref = weakref.ref(y)
        del y
        assert ref() is None
    finally:
        gc.enable()


def test_arena_slots_are_reused_and_counted():
    collect_all()
    base_live = live_nodes()
    x = compiled(1.0)
    y = x * 2 + 3  # 4 nodes more: constant 2, product, constant 3, sum
    assert live_nodes() == base_live + 5
    del y
    assert live_nodes() == base_live + 1
    before = _engine._arena_stats()
    z = x * 2 + 3
    after = _engine._arena_stats()
    assert after["reuses"] - before["reuses"] == 4
    assert after["capacity"] == before["capacity"]
    del x, z
    assert live_nodes() == base_live
    assert _engine._arena_check()


def test_fresh_slots_are_not_counted_as_reuses():
    """grow() hands out every 64th new slot after all the others: those are fresh too, not
    reuses (the counter used to take any slot below the highest one handed out for a reuse).
    A fresh interpreter: its arena has seen no frees, so nothing it hands out is reused."""
    code = ("from michigrad import _engine\n"
            "assert _engine._arena_stats()['reuses'] == 0\n"
            "vs = [_engine.Value(float(i)) for i in range(5000)]\n"  # a few grows
            "print(_engine._arena_stats()['reuses'])\n"
            "del vs[2500:]\n"
            "vs += [_engine.Value(1.0) for _ in range(100)]\n"  # freed slots: reuses
            "print(_engine._arena_stats()['reuses'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["0", "100"], out.stderr


def test_an_arena_node_is_64_bytes():
    assert _engine._arena_stats()["node_bytes"] <= 64


def test_training_style_loop_creates_no_cyclic_garbage_and_stays_flat():
    params = [compiled(0.1 * i) for i in range(10)]
    gc.collect()
    gc.disable()
    try:
        base_live = live_nodes()
        capacities = []
        for step in range(10_000):
            loss = sum((p * p for p in params), compiled(0.0)).tanh()
            loss.backward()
            for p in params:
                p.data -= 0.01 * p.grad
                p.grad = 0
            del loss
            assert live_nodes() == base_live
            if step % 1000 == 999:
                capacities.append(_engine._arena_stats()["capacity"])
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert len(set(capacities)) == 1, capacities
    assert _engine._arena_check()


def test_custom_op_cycles_are_collected():
    collect_all()
    base_live = live_nodes()
    x = compiled(0.5)
    z = custom_sigmoid(custom_sigmoid(x, compiled) * 2, compiled)
    z.backward()
    assert x.grad != 0
    ref = weakref.ref(z)
    del z
    collect_all()
    assert ref() is None
    assert live_nodes() == base_live + 1
    del x
    assert live_nodes() == base_live
    assert _engine._arena_check()


def test_custom_op_kept_alive_by_a_parent_keeps_its_backward():
    x = compiled(0.5)
    y = custom_sigmoid(x, compiled)
    z = y * 3
    del y
    collect_all()  # y's closure must survive: z's node still needs it
    z.backward()
    s = 1 / (1 + math.exp(-0.5))
    assert x.grad == pytest.approx(3 * s * (1 - s), rel=1e-15)


class Tagged(compiled):
    """A user's subclass: its instances have a __dict__ the cyclic collector must see."""


@pytest.mark.parametrize("make", [lambda: compiled(1.0) * 2, lambda: Tagged(1.0)],
                         ids=["operation", "subclass"])
def test_self_referencing_attribute_is_collected(make):
    collect_all()
    base_live = live_nodes()
    v = make()
    v.me = v
    ref = weakref.ref(v)
    del v
    collect_all()
    assert ref() is None
    assert live_nodes() == base_live


# --- deep graphs ------------------------------------------------------------------------------


def chain(Value, ops):  # noqa: N803
    x = Value(1.0)
    y = x
    for _ in range(ops // 2):
        y = y * 1.0000001 + 0.0
    return x, y


def test_a_million_op_chain_backward_and_free(Value):
    n = 1_000_000 if Value is compiled else 100_000
    x, y = chain(Value, n)
    y.backward()
    assert x.grad == pytest.approx(1.0000001 ** (n // 2), rel=1e-9)
    del y
    gc.collect()
    assert x.data == 1.0


@pytest.mark.slow
def test_a_ten_million_op_chain_backward_and_free():
    collect_all()
    base_live = live_nodes()
    x, y = chain(compiled, 10_000_000)
    y.backward()
    assert x.grad == pytest.approx(1.0000001**5_000_000, rel=1e-7)
    del y
    assert live_nodes() == base_live + 1


# --- exceptions leave the arena as it was -----------------------------------------------------


@pytest.mark.parametrize(
    "failing",
    [
        lambda v: v / 0,
        lambda v: v**-1 * (v - v) ** -1,
        lambda v: 0 ** (v - v - 1),
        lambda v: (v * 0).log(),
        lambda v: (v * 1000).exp(),
        lambda v: (v - 9) ** 0.5,
        lambda v: v + "x",
        lambda v: compiled(v.data, (v, "not a value"), "op"),
    ],
)
def test_a_failed_operation_leaves_no_node_behind(failing):
    v = compiled(2.0)
    collect_all()
    before = live_nodes()
    with pytest.raises((ZeroDivisionError, ValueError, OverflowError, TypeError)):
        failing(v)
    collect_all()
    assert live_nodes() == before
    assert v.data == 2.0 and v.grad == 0
    assert _engine._arena_check()


def test_a_value_made_without_init_is_rejected_not_crashing():
    v = compiled.__new__(compiled)
    with pytest.raises(TypeError, match="without Value.__init__"):
        v.data  # noqa: B018
    with pytest.raises(TypeError):
        v + 1
    with pytest.raises(TypeError):
        compiled(1.0) + v


def test_init_cannot_reinitialise_a_live_value():
    v = compiled(1.0)
    w = v * 2
    with pytest.raises(TypeError, match="re-initialise"):
        v.__init__(5.0)
    assert w.data == 2.0 and v.data == 1.0


# --- found in review: dying handles, subclasses, the fused kernel's checks ---------------------


def test_a_weakref_callback_cannot_resurrect_a_dying_handle():
    kept = []
    a = compiled(1.0)
    b = a * 2
    ref = weakref.ref(a, lambda _: kept.extend(b._prev))  # asks the node for its handle again
    del a
    assert ref() is None
    (fresh,) = [v for v in kept if v.data == 1.0]
    c = b * 3
    assert fresh.data == 1.0 and c.data == 6.0
    del kept, fresh
    assert c.data == 6.0 and b.data == 2.0
    assert _engine._arena_check()


def test_linear_rejects_an_uninitialised_bias_and_converts_inputs_once():
    w = compiled(2.0)
    with pytest.raises(TypeError, match="without Value.__init__"):
        _engine.linear([w], [3.0], compiled.__new__(compiled))

    class Flaky:  # a number whose second conversion fails
        calls = 0

        def __float__(self):
            Flaky.calls += 1
            if Flaky.calls > 1:
                raise RuntimeError("converted twice")
            return 3.0

    collect_all()
    before = live_nodes()
    out = _engine.linear([w, w], [1.5, Flaky()], None)
    assert out.data == 2.0 * 1.5 + 2.0 * 3.0 and Flaky.calls == 1
    del out
    assert live_nodes() == before
    assert _engine._arena_check()


# --- Python code run in the middle of an engine operation ------------------------------------
# A Python _backward, or a finalizer the GC runs while the engine allocates an object, may drop
# or re-point what the operation is working on. (Found by a crash hunt on a sanitizer build.)

@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_a_python_backward_that_drops_the_loss_array_keeps_its_graph_until_the_end(engine):
    from michigrad.array import array_class

    MLArray = array_class(engine)  # noqa: N806
    Value = MLArray._Value  # noqa: N806
    x = MLArray([[1.0, 2.0], [3.0, 4.0]])
    holder = {}

    def build():
        marker = Value(2.0, (Value(1.0),), "marker")

        def _backward():  # runs first: re-points the one slot that held the root
            holder["loss"][()] = 0.0

        marker._backward = _backward
        return (x * 2.0).sum() + MLArray(marker)

    holder["loss"] = build()
    holder["loss"].backward()
    assert x.grad_numpy().tolist() == [[2.0, 2.0], [2.0, 2.0]]  # (they were lost: all 0)
    if engine == "compiled":
        collect_all()
        assert _engine._arena_check()


def test_a_finalizer_run_while_a_handle_is_allocated_cannot_free_its_node():
    """arr[0] reads the slot's node, then allocates its handle; the GC run by that allocation
    may call a finalizer that re-points the slot. The handle must keep the node it was made for
    (it was linked to the freed slot, which the next node then reused)."""
    from michigrad import MLArray

    arr = MLArray([1.0, 2.0, 3.0])
    fired = []

    class Repoints:
        def __init__(self):
            self.cycle = self  # garbage only the cyclic GC frees

        def __del__(self):
            fired.append(1)
            arr[0] = 42.0

    collect_all()
    threshold = gc.get_threshold()
    gc.disable()  # (a collection now could refill the engine's list of recycled handles)
    one = compiled(1.0)
    keep = [one + k for k in range(600)]  # handles the engine makes: it has no recycled one left
    Repoints()
    gc.set_threshold(1)
    gc.enable()
    try:
        v = arr[0]
    finally:
        gc.set_threshold(*threshold)
    assert fired  # (inside arr[0]: in the handle's allocation, the first GC-tracked one)
    collect_all()
    assert _engine._arena_check()
    other = compiled(7.0)
    v.data = 99.0
    assert other.data == 7.0 and arr[0].data == 42.0 and v.data == 99.0
    del keep


def test_an_extra_made_by_python_code_during_its_allocation_is_kept():
    """Giving a node a name allocates its NodeExtra; if the GC runs Python code then that sets
    the same node's _backward, that backward must survive (it was overwritten: backward() then
    called None)."""
    x = compiled(1.0)
    y = x * 3.0
    fired = []

    def backward():
        x.grad += 3.0 * y.grad

    def on_gc(phase, info):
        if phase == "start" and not fired:
            fired.append(1)
            y._backward = backward

    gc.collect()
    gc.callbacks.append(on_gc)
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        y.name = "y"
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(on_gc)
    assert fired and y._backward is backward and y.name == "y"
    y.backward()
    assert x.grad == 3.0
