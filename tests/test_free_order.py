"""The order in which the arena hands out freed slots (compiled core only: the reference engine
has no arena).

A graph freed in one run of the release loop (a training step's graph, an array's store) goes
back on the free stack in address order: the next graph, built from those slots, lies in the
order it is built, not scattered over the run. The order is only a matter of speed; these tests
pin it down, and that no slot is lost or handed out twice on the way (``_arena_check``).
"""

from __future__ import annotations

import gc

import random
import subprocess
import sys
import textwrap

import pytest

from michigrad import _engine
from michigrad.array import array_class

Value = _engine.Value
MLArray = array_class("compiled")

SKEW = 64  # grow() hands out slot k with k % 64 == 63 after the others: a sorted run keeps that


def address_order(slots: list[int]) -> list[int]:
    """The order a sorted run is taken in: ascending, the 64th slots after all the others."""
    return (sorted(s for s in slots if s % SKEW != SKEW - 1)
            + sorted(s for s in slots if s % SKEW == SKEW - 1))


def run_fresh(code: str) -> str:
    """Run code in a new interpreter (an arena that has seen nothing else) and return its output."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def freed_run(out: str) -> tuple[int, list[int]]:
    """(the count of nodes freed, the slots the next nodes take) from a run_fresh printing them."""
    freed_line, slots_line = out.splitlines()
    return int(freed_line), [int(s) for s in slots_line.split()]


def test_a_freed_graph_is_taken_again_in_address_order():
    out = run_fresh("""
        import random
        from michigrad import _engine
        V = _engine.Value
        keep = [V(float(i)) for i in range(300)]      # some live slots among the graph's
        x = V(0.5)
        y = x
        for i in range(2000):                         # a chain and its constants: 4000 nodes
            y = (y * 0.5 + keep[i % 300]).tanh() if i % 3 else y * 1.0
        live = _engine._arena_stats()['live']
        del y
        freed = live - _engine._arena_stats()['live']
        print(freed)
        print(*_engine._next_free_slots(freed))
        assert _engine._arena_check()
    """)
    freed, slots = freed_run(out)
    assert freed > 4000 and len(slots) == freed
    assert len(set(slots)) == len(slots)
    assert slots == address_order(slots)
    assert any(s % SKEW == SKEW - 1 for s in slots)  # the run did hold 64th slots


def test_an_array_store_is_freed_as_one_run():
    """A store's nodes die together (one release loop for the whole store), so they are sorted
    too, and the next array of that size takes them lowest first."""
    out = run_fresh("""
        import random
        from michigrad import _engine
        from michigrad.array import MLArray
        a = MLArray([random.random() for _ in range(5000)])
        b = (a * 2.0).tanh()                  # 5000 products, 5000 tanh, one constant
        del a
        before = _engine._arena_stats()['live']
        del b                                 # the store holds the graph: all of it dies
        freed = before - _engine._arena_stats()['live']
        print(freed)
        print(*_engine._next_free_slots(freed))
    """)
    freed, slots = freed_run(out)
    assert freed == 15001 == len(slots)
    assert slots == address_order(slots)


@pytest.mark.parametrize("n", [255, 256])
def test_only_runs_of_256_or_more_are_sorted(n):
    """A few nodes freed at a time (each scalar operation drops its temporaries) are not worth
    sorting: below 256 the stack takes the last freed first, as it always did. A store of n
    leaves in shuffled order, freed in one run, shows both sides."""
    out = run_fresh(f"""
        import random
        from michigrad import _engine
        from michigrad.array import MLArray
        room = [_engine.Value(0.0) for _ in range(2000)]
        del room                                 # (a new arena has no free slots yet)
        slots = _engine._next_free_slots({n})      # the slots the n leaves will take
        vs = [_engine.Value(float(i)) for i in range({n})]
        order = list(range({n}))
        random.Random(1).shuffle(order)
        a = MLArray([vs[i] for i in order])      # a store of the same nodes, shuffled
        del vs
        del a                                    # its n nodes die in one run
        print(*[slots[i] for i in order])
        print(*_engine._next_free_slots({n}))
    """)
    store_order, taken = ([int(s) for s in line.split()] for line in out.splitlines())
    assert sorted(taken) == sorted(store_order)
    if n >= 256:
        assert taken == address_order(taken)
    else:  # the last queued dies first, so the stack's top is the store's first element
        assert taken == store_order


@pytest.mark.parametrize("step", [64, 65])
def test_a_run_sparser_than_a_slot_per_64_is_left_as_freed(step):
    """The bitmap sort costs a word per 64 slots of the run's span: a run with fewer freed slots
    than that is left in the order it was freed. 300 slots `step` apart span 300 words at step
    64 (sorted) and 305 at step 65 (not)."""
    out = run_fresh(f"""
        import random
        from michigrad import _engine
        from michigrad.array import MLArray
        total = 300 * {step} + 4000
        room = [_engine.Value(0.0) for _ in range(total)]
        del room                                  # (free slots for all of them)
        slots = _engine._next_free_slots(total)   # the slots the leaves below will take
        vs = [_engine.Value(float(i)) for i in range(total)]
        start = min(slots) + 64 - min(slots) % 64
        picked = [i for i, s in enumerate(slots) if s >= start and (s - start) % {step} == 0][:300]
        assert len(picked) == 300
        random.Random(2).shuffle(picked)
        a = MLArray([vs[i] for i in picked])    # a store of 300 nodes, shuffled
        del vs
        del a
        print(*[slots[i] for i in picked])
        print(*_engine._next_free_slots(300))
    """)
    store_order, taken = ([int(s) for s in line.split()] for line in out.splitlines())
    assert sorted(taken) == sorted(store_order)
    if step == 64:
        assert taken == address_order(taken)
    else:
        assert taken == store_order


def test_nodes_replaced_by_setitem_are_freed_as_one_run():
    out = run_fresh("""
        import random
        from michigrad import _engine
        from michigrad.array import MLArray
        room = [_engine.Value(0.0) for _ in range(2000)]
        del room
        a = MLArray([random.random() for _ in range(1000)]).tanh()   # 2000 nodes
        before = _engine._arena_stats()['live']
        a[:] = MLArray.zeros(1000)            # the tanh nodes and their leaves die together
        freed = before + 1000 - _engine._arena_stats()['live']
        print(freed)
        print(*_engine._next_free_slots(freed))
    """)
    freed, slots = freed_run(out)
    assert freed == 2000 == len(slots)
    assert slots == address_order(slots)


def test_no_slot_is_lost_or_doubled_by_sorting():
    """Graphs and arrays of random sizes freed in random order, each free sorting its run: the
    free stack still holds every free slot once (a doubled or lost slot stays on the stack, so
    one check per trial finds it; _arena_check is O(arena), slow under valgrind)."""
    rng = random.Random(5)
    for trial in range(12):
        keep = [Value(rng.random()) for _ in range(rng.randrange(0, 400))]
        graphs = []
        for _ in range(rng.randrange(1, 4)):
            y = Value(rng.random())
            for i in range(rng.randrange(50, 1500)):
                y = y * rng.random() + (keep[i % len(keep)] if keep and rng.random() < 0.3 else 1.0)
            graphs.append(y)
        arrays = [MLArray([rng.random() for _ in range(rng.randrange(1, 900))]).exp()
                  for _ in range(rng.randrange(0, 3))]
        rng.shuffle(graphs)
        while graphs or arrays:
            if graphs and (not arrays or rng.random() < 0.5):
                graphs.pop()
            else:
                arrays.pop()
        if rng.random() < 0.5:
            keep = keep[::3]
        assert _engine._arena_check()


def test_python_code_that_makes_nodes_while_a_graph_is_freed():
    """Freeing a graph may run Python code (an attribute or a closure dies with its node); code
    that makes new nodes then takes slots from the stack while the run is being pushed. Nothing
    may be lost, doubled or left with wrong values."""
    made = []

    class MakesNodesWhenFreed:
        def __del__(self):
            made.append([Value(float(i)) * 2.0 for i in range(300)])

    x = Value(1.5)
    y = x
    for i in range(300):
        y = y * 3.0
        y.witness = MakesNodesWhenFreed()  # kept in the node: it dies when the node is freed
        y = y + 1.0
    gc.collect()  # garbage of earlier tests could die in the release below and skew the count
    live = _engine._arena_stats()["live"]
    y.backward()
    expected = 1.0
    for _ in range(300):
        expected = 3.0 * expected
    assert x.grad == expected
    del y  # one release loop: 1,200 nodes, and 300 times Python code making 900 more
    assert len(made) == 300
    assert _engine._arena_stats()["live"] == live - 1200 + 300 * 900  # x stays
    assert all(v.data == 2.0 * i for batch in made for i, v in enumerate(batch))
    assert _engine._arena_check()
    made.clear()
    assert _engine._arena_check()


@pytest.mark.parametrize("ops", [1, 3])
def test_values_and_gradients_do_not_depend_on_the_order(ops):
    """The same computation on sorted and unsorted slots gives the same bits (the order only
    moves nodes in memory)."""
    rng = random.Random(ops)
    data = [rng.uniform(-1, 1) for _ in range(2000)]

    def step():
        a = MLArray(data).reshape(40, 50)
        h = a
        for _ in range(ops):
            h = (h @ a.T).tanh() if h.shape[-1] == 50 else (h @ a).tanh()
        loss = (h * h).sum()
        loss.backward()
        return loss.to_list(), a.grad().to_list()

    first = step()  # fresh slots
    for _ in range(3):  # slots of the previous step's graph, sorted on the way back
        assert step() == first
