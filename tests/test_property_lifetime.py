"""A stateful fuzz test of the compiled engine's node arena: lifetimes, re-entrant releases, views.

Hypothesis drives a ``RuleBasedStateMachine`` that keeps a pool of live objects -- scalar
Values, MLArrays (and views of them), ``michigrad.Graph``s -- each built twice, with the compiled
engine and with the pure-Python reference engine, by the same calls. In random interleavings it

* makes leaves (floats, ints, arrays from numbers or from pool Values, the same node repeated),
  scalar ops (+ - * / **, exp log tanh relu sigmoid abs, ``linear``, ``max_of``), array ops
  (element-wise with broadcasting, ``@`` and ``dense`` -- ``a @ a.T``, ``a.T @ a``, ``dense(a, a)``,
  rows that hold one node twice -- reductions, softmax), indexing (views, gathers, elements),
  ``__setitem__`` (numbers, Values, arrays, an array's own overlapping view), ``detach``,
  ``copy``, ``reshape``, ``transpose``, ``update_values``;
* makes Python-defined ops ``Value(x, children, 'op')`` and sets ``_backward`` closures on
  nodes that capture handles of other nodes (and arrays, graphs): releasing such a node runs
  Python code that releases others (re-entrant release), and running its backward drops the
  handles it holds, re-points an array slot, grows the arena, closes a graph, calls another
  backward, or raises;
* calls ``backward()`` (scalars, arrays), ``zero_grad``, records ``Graph(loss)`` (with inputs
  and params) and calls ``forward``/``backward``/``feed``/``train_step``/``step(SGD)``/``close``;
* drops references at random (some into a compiled-only "graveyard" whose nodes are still shared
  with the pool), runs ``gc.collect()``, and triggers operations that raise (log of a negative,
  ``0.0 ** -1``, overflow, shape mismatches, bad indices, a closed graph), asserting that both
  engines raise the same exception type and that a failed compiled operation leaves no node;
* now and then runs the compiled half of the next operations with the GC's threshold at 1 and a
  "chaos" callback that fires in the middle of an engine operation (at the first GC that
  operation's allocations trigger): it re-points a slot of an array the operation may be
  reading, frees the graveyard (nodes the operation may hold), or grows the arena (moving it).

After every step ``_engine._arena_check()`` verifies the reference counts, the free stack and
the handle links, the live count is never negative, and every pool object's data (and, while
they are comparable, gradients) are the reference engine's, bit for bit (conftest's ``bits``).
An object the chaos touched on the compiled side only is "tainted" and no longer compared (nor
anything made from it). At teardown everything is dropped and collected: the live node count and
the shared row blocks return to what they were before the machine started.

The examples are derandomized (the same runs every time, no example database): a normal run
takes well under a minute. MICHIGRAD_FUZZ_EXAMPLES=N runs N examples instead (long runs, ASan),
MICHIGRAD_FUZZ_STEPS=K steps per example (default 40), MICHIGRAD_FUZZ_SEED=S other random runs.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Optional

import numpy as np
from hypothesis import HealthCheck, event, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from michigrad import Graph, _engine, _reference, optim
from michigrad.array import MLArrayBase, array_class, dense
from conftest import bits

MC, MR = array_class("compiled"), array_class("reference")
VC, VR = _engine.Value, _reference.Value
SIDES = ((VC, MC, _engine.linear, _engine.max_of),
         (VR, MR, _reference.linear, _reference.max_of))

EXAMPLES = int(os.environ.get("MICHIGRAD_FUZZ_EXAMPLES", "0")) or 150
STEPS = int(os.environ.get("MICHIGRAD_FUZZ_STEPS", "0")) or 40
SEED = os.environ.get("MICHIGRAD_FUZZ_SEED")

# no_int_data_in_op_nodes: an int assigned to the data of an op node (``y = x.tanh();
# y.data = 0; y.backward()``, or update_values with ints on an array of op nodes) makes the
# engines disagree on the gradient's type: the reference engine's local derivative of tanh, exp
# and sigmoid is computed from out.data in Python (int 1, 0), the compiled one in doubles (1.0,
# 0.0). Found by this machine; reported, not fixed here (it is the engines' op table). The
# machine assigns floats to op nodes, ints to leaves only.

MAX_VALS, MAX_ARRS, MAX_GRAPHS, MAX_GRAVE = 14, 12, 3, 12
ARENA_CAP = 1 << 17  # chaos and closures grow the arena (moving it) only while it is smaller


# Every compiled Graph the machines made (across examples: one a failed example left open
# still holds references that _arena_check does not count).
COMPILED_GRAPHS: weakref.WeakSet[Any] = weakref.WeakSet()


def live() -> int:
    return int(_engine._arena_stats()["live"])


# --- pool entries ---------------------------------------------------------------------------

class Group:
    """A set of pool objects that share storage (an array and its views): `ok` while the two
    engines' objects are known to hold the same nodes."""

    __slots__ = ("ok",)

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok


class Pair:
    """One pool object: its compiled (c) and reference (r) twin, and its Group."""

    __slots__ = ("c", "r", "g")

    def __init__(self, c: Any, r: Any, g: Optional[Group] = None) -> None:
        self.c, self.r, self.g = c, r, g or Group()

    def side(self, s: int) -> Any:
        return self.c if s == 0 else self.r


def ok(*pairs: Any) -> bool:
    return all(p.g.ok for p in pairs if isinstance(p, Pair))


# --- strategies -------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False, width=64),
    st.sampled_from([0, 0.0, -0.0, 1, -1, 2.5, 1e-3, 0.5, 50.0, -7.25]),
)
small_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
shapes = st.one_of(
    small_shapes, small_shapes, small_shapes,
    st.sampled_from([(0,), (2, 0), (9,), (2, 9), (9, 3), (8, 8), (1, 16), (3, 1, 2)]),
)
index = st.integers(0, 1 << 16)

BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "**": lambda a, b: a ** b,
}
UNARY: dict[str, Callable[[Any], Any]] = {
    "exp": lambda a: a.exp(), "log": lambda a: a.log(), "tanh": lambda a: a.tanh(),
    "relu": lambda a: a.relu(), "sigmoid": lambda a: a.sigmoid(), "abs": lambda a: a.abs(),
    "neg": lambda a: -a, "sq": lambda a: a ** 2, "inv": lambda a: a ** -1,
    "sqrt": lambda a: a ** 0.5, "pow3": lambda a: a ** 3,
}
ARRAY_UNARY: dict[str, Callable[[Any], Any]] = dict(UNARY, **{
    "leaky_relu": lambda a: a.leaky_relu(0.1), "elu": lambda a: a.elu(),
    "softmax": lambda a: a.softmax(), "log_softmax": lambda a: a.log_softmax(),
    "abs()": lambda a: abs(a),
})
CLOSURES = ["grad", "drop", "mutate", "alloc", "raise", "nested", "close_graph", "setitem_self"]


class Box:
    """What one _backward closure holds (emptied at teardown: see LifetimeMachine.closure)."""

    __slots__ = ("items", "__weakref__")

    def __init__(self, **items: Any) -> None:
        self.items = items


class Boom(Exception):
    """What a `raise` closure raises."""


def grow_arena() -> None:
    """Make the compiled arena grow (realloc: it may move) unless it is large already."""
    stats = _engine._arena_stats()
    if stats["capacity"] < ARENA_CAP:
        junk = MC.zeros(int(stats["free"]) + 1)
        extra = [VC(k) for k in range(3)]
        del junk, extra


def draw_key(data: st.DataObject, shape: tuple[int, ...], bad: bool = False) -> Any:
    """A numpy index for an array of this shape (with an out-of-range int when bad)."""
    key: list[Any] = []
    for d in shape:
        kind = data.draw(st.sampled_from(["int", "slice", "slice", "all", "array"]))
        if kind == "int" and d > 0:
            key.append(data.draw(st.integers(-d, d - 1)))
        elif kind == "slice":
            start = data.draw(st.one_of(st.none(), st.integers(-d - 1, d + 1)))
            stop = data.draw(st.one_of(st.none(), st.integers(-d - 1, d + 1)))
            step = data.draw(st.sampled_from([None, 1, 2, -1, -2]))
            key.append(slice(start, stop, step))
        elif kind == "array" and d > 0:
            key.append(np.array(data.draw(st.lists(st.integers(-d, d - 1), max_size=3)),
                                dtype=np.int64))
        else:
            key.append(slice(None))
    if bad:
        if not shape:
            return (0,)  # too many indices
        axis = data.draw(st.integers(0, len(shape) - 1))
        key[axis] = shape[axis] + data.draw(st.integers(0, 2))
        return tuple(key)
    if key and data.draw(st.booleans()):
        key = key[:data.draw(st.integers(0, len(key)))]  # trailing axes left out
    if data.draw(st.integers(0, 9)) == 0:
        key.insert(data.draw(st.integers(0, len(key))), data.draw(st.sampled_from([Ellipsis, None])))
    return tuple(key)


# --- the machine -----------------------------------------------------------------------------

class LifetimeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        gc.collect()
        self.live0 = live()
        self.blocks0 = _engine._arena_stats()["shared_blocks"]
        self.threshold0 = gc.get_threshold()
        self.vals: list[Pair] = []
        self.arrs: list[Pair] = []
        self.graphs: list[Pair] = []
        self.compiled_graphs = COMPILED_GRAPHS
        self.boxes: weakref.WeakSet[Box] = weakref.WeakSet()  # every closure's captures
        self.grave: list[Any] = []          # compiled-side objects only, still sharing nodes
        self.pending: list[list[Any]] = []  # chaos: [countdown, action]
        self.chaos_errors: list[BaseException] = []
        self.aggressive = False
        self.buried = 0
        self.grads_ok = True   # gradients comparable (no backward through a tainted graph)
        self.shadow_ok = True  # anything comparable at all

    # --- plumbing ---------------------------------------------------------------------------

    def _gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "start" or not self.pending:
            return
        self.pending[0][0] -= 1
        if self.pending[0][0] > 0:
            return
        _, action = self.pending.pop(0)
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - reported by the next invariant
            self.chaos_errors.append(exc)

    @contextlib.contextmanager
    def side_ctx(self, s: int) -> Iterator[None]:
        """The compiled half of an operation runs with the GC at threshold 1 (a collection, and
        the chaos callback, at nearly every allocation) while aggressive or chaos is pending."""
        if s == 1 or not (self.aggressive or self.pending):
            yield
            return
        old = gc.get_threshold()
        gc.callbacks.append(self._gc_callback)
        gc.set_threshold(1, old[1], old[2])
        try:
            yield
        finally:
            gc.set_threshold(*old)
            gc.callbacks.remove(self._gc_callback)

    def both(self, fn: Callable[[int], Any], *inputs: Any,
             leak_check: bool = False) -> tuple[Any, Any, Any]:
        """(compiled result, reference result, exception type or None): fn(side) on each engine.
        Both must raise the same exception type, or neither -- unless one of `inputs` (the pool
        objects fn reads) is tainted: then the first error, if any, stands for both. With
        leak_check, a compiled side that raises must leave the live node count as it was (the
        GC held off meanwhile; skipped while the compiled side runs with the chaos GC)."""
        results: list[Any] = [None, None]
        errors: list[Any] = [None, None]
        for s in (0, 1):
            check = leak_check and s == 0 and not (self.aggressive or self.pending)
            if check:
                enabled = gc.isenabled()
                gc.disable()
                before = live()
            try:
                with self.side_ctx(s):
                    results[s] = fn(s)
            except (AssertionError, SystemError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - compared below
                errors[s] = type(exc)
                del exc
            if check:
                after = live()
                if enabled:
                    gc.enable()
                if errors[0] is not None:
                    assert after == before, f"a failed {errors[0].__name__} left {after - before} nodes"
        if ok(*inputs):
            assert errors[0] == errors[1], f"compiled raised {errors[0]}, reference {errors[1]}"
        err = errors[0] or errors[1]
        event(f"{sys._getframe(1).f_code.co_name}: {err.__name__ if err else 'ok'}")
        return results[0], results[1], errors[0] or errors[1]

    def add(self, pool: list[Pair], limit: int, pair: Pair) -> None:
        pool.append(pair)
        if len(pool) > limit:
            self.bury(pool.pop(0))

    def bury(self, pair: Pair) -> None:
        """Drop a pool object; its compiled twin sometimes lives on in the graveyard."""
        self.buried += 1
        if len(self.grave) < MAX_GRAVE and self.buried % 3 == 0:
            self.grave.append(pair.c)

    def add_val(self, c: Any, r: Any, *inputs: Any) -> None:
        self.add(self.vals, MAX_VALS, Pair(c, r, Group(ok(*inputs))))

    def add_arr(self, c: Any, r: Any, *inputs: Any, group: Optional[Group] = None) -> None:
        if not isinstance(c, MLArrayBase):  # an element: a Value
            self.add_val(c, r, *inputs)
            return
        self.add(self.arrs, MAX_ARRS, Pair(c, r, group or Group(ok(*inputs))))

    def pick(self, pool: list[Pair], i: int) -> Pair:
        return pool[i % len(pool)]

    def some_arr(self, i: int) -> Pair:
        """A pool array; a new one (of a shape and numbers i picks) when there is none."""
        if not self.arrs:
            shape = [(2, 3), (3,), (2, 2), (3, 3), (1, 4), (2, 9), (), (3, 1, 2)][i % 8]
            data = (np.arange(math.prod(shape), dtype=np.float64) * 0.375 - 1.0).reshape(shape)
            self.add_arr(MC(data), MR(data))
        return self.pick(self.arrs, i)

    def taint_grads_if(self, *pairs: Any) -> None:
        if not ok(*pairs):
            self.grads_ok = False

    # --- invariants -------------------------------------------------------------------------

    def open_graphs(self) -> int:
        return sum(1 for g in list(self.compiled_graphs) if not g.closed)

    @invariant()
    def arena_is_consistent(self) -> None:
        assert not self.chaos_errors, self.chaos_errors
        # (_arena_check does not count the references an open Graph's tape holds: it reports
        # them as a mismatch, so it runs only while no compiled Graph is open)
        if not self.open_graphs():
            assert _engine._arena_check()
        stats = _engine._arena_stats()
        assert stats["live"] >= 0 and stats["shared_blocks"] >= 0, stats
        assert stats["free"] >= 0 and stats["live"] <= stats["capacity"], stats

    @invariant()
    def engines_agree(self) -> None:
        if not self.shadow_ok:
            return
        for p in self.vals:
            if p.g.ok:
                assert bits(p.c.data) == bits(p.r.data), (p.c, p.r)
                if self.grads_ok:
                    assert bits(p.c.grad) == bits(p.r.grad), (p.c, p.r)
        for p in self.arrs:
            assert p.c.shape == p.r.shape
            if not p.g.ok:
                continue
            vc, vr = p.c.values(), p.r.values()
            assert [bits(v.data) for v in vc] == [bits(v.data) for v in vr], (p.c, p.r)
            if self.grads_ok:
                assert [bits(v.grad) for v in vc] == [bits(v.grad) for v in vr], (
                    p.c.grad_numpy(), p.r.grad_numpy())

    def teardown(self) -> None:
        self.pending.clear()
        gc.set_threshold(*self.threshold0)
        while self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)
        for g in self.graphs:
            g.c.close()
            g.r.close()
        self.vals.clear()
        self.arrs.clear()
        self.graphs.clear()
        self.grave.clear()
        while gc.collect():  # (a chain of custom ops may take a collection each)
            pass
        for box in list(self.boxes):  # the cycles through the arena that no collection frees
            box.items = {}
        while gc.collect():
            pass
        if sys.exc_info()[0] is not None:
            # a step is failing (or hypothesis stopped one midway): its frames still hold
            # nodes, so there is nothing to count -- the error itself is what gets reported
            return
        assert not self.open_graphs()
        assert _engine._arena_check()
        assert live() == self.live0, f"{live() - self.live0} nodes outlived the machine"
        assert _engine._arena_stats()["shared_blocks"] == self.blocks0

    # --- leaves -------------------------------------------------------------------------------

    @rule(x=numbers)
    def leaf(self, x: Any) -> None:
        self.add_val(VC(x), VR(x))

    @rule(data=st.data())
    def leaf_array(self, data: st.DataObject) -> None:
        shape = data.draw(shapes)
        n = math.prod(shape)
        kind = data.draw(st.sampled_from(["list", "float64", "int64", "zeros", "values", "dup"]))
        if kind in ("values", "dup") and self.vals and n:
            if kind == "dup":  # few distinct nodes, each many times: rows that repeat a node
                chosen = [data.draw(index), data.draw(index)]
                picks = [self.pick(self.vals, chosen[data.draw(st.integers(0, 1))]) for _ in range(n)]
            else:
                picks = [self.pick(self.vals, data.draw(index)) for _ in range(n)]
            items = [np.empty(n, dtype=object), np.empty(n, dtype=object)]
            for s in (0, 1):
                items[s][:] = [p.side(s) for p in picks]
            c, r, err = self.both(lambda s: SIDES[s][1](items[s].reshape(shape).tolist())
                                  if shape else SIDES[s][1](items[s][0]), *picks)
            if err is not None:
                return
            self.add_arr(c, r, *picks)
            return
        xs = data.draw(st.lists(numbers, min_size=n, max_size=n))
        flat = np.empty(n, dtype=object)
        flat[:] = xs
        if kind == "float64":
            arg: Any = np.array([float(x) for x in xs], dtype=np.float64).reshape(shape)
        elif kind == "int64":
            arg = np.array([int(x) for x in xs], dtype=np.int64).reshape(shape)
        elif kind == "zeros":
            c, r, _ = self.both(lambda s: SIDES[s][1].zeros(shape))
            self.add_arr(c, r)
            return
        else:
            arg = flat.reshape(shape).tolist() if shape else xs[0]
        c, r, _ = self.both(lambda s: SIDES[s][1](arg))
        self.add_arr(c, r)

    # --- scalar ops --------------------------------------------------------------------------

    @precondition(lambda self: self.vals)
    @rule(op=st.sampled_from(sorted(BINARY)), i=index, j=index, x=numbers,
          mode=st.sampled_from(["vv", "vv", "vn", "nv", "same"]))
    def scalar_binary(self, op: str, i: int, j: int, x: Any, mode: str) -> None:
        a = self.pick(self.vals, i)
        b = self.pick(self.vals, j) if mode != "same" else a
        f = BINARY[op]
        if mode in ("vv", "same"):
            c, r, err = self.both(lambda s: f(a.side(s), b.side(s)), a, b, leak_check=True)
        elif mode == "vn":
            c, r, err = self.both(lambda s: f(a.side(s), x), a, leak_check=True)
        else:
            c, r, err = self.both(lambda s: f(x, a.side(s)), a, leak_check=True)
        if err is None:
            self.add_val(c, r, a, b)

    @precondition(lambda self: self.vals)
    @rule(op=st.sampled_from(sorted(UNARY)), i=index)
    def scalar_unary(self, op: str, i: int) -> None:
        a = self.pick(self.vals, i)
        c, r, err = self.both(lambda s: UNARY[op](a.side(s)), a, leak_check=True)
        if err is None:
            self.add_val(c, r, a)

    @precondition(lambda self: self.vals)
    @rule(data=st.data())
    def linear(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, 4))
        ws = [self.pick(self.vals, data.draw(index)) for _ in range(n)]
        xs: list[Any] = [self.pick(self.vals, data.draw(index)) if data.draw(st.booleans())
                         else data.draw(numbers) for _ in range(n + data.draw(st.sampled_from([0, 0, 0, 1])))]
        bias = self.pick(self.vals, data.draw(index)) if data.draw(st.booleans()) else None

        def side(s: int) -> Any:
            return SIDES[s][2]([w.side(s) for w in ws],
                               [x.side(s) if isinstance(x, Pair) else x for x in xs],
                               bias.side(s) if bias is not None else None)
        c, r, err = self.both(side, *ws, *xs, bias, leak_check=True)
        if err is None:
            self.add_val(c, r, *ws, *xs, bias)

    @precondition(lambda self: self.vals)
    @rule(data=st.data())
    def max_of(self, data: st.DataObject) -> None:
        picks = [self.pick(self.vals, data.draw(index)) for _ in range(data.draw(st.integers(0, 4)))]
        c, r, err = self.both(lambda s: SIDES[s][3]([p.side(s) for p in picks]), *picks,
                                leak_check=True)
        if err is None:
            self.add_val(c, r, *picks)

    # --- Python-defined ops and _backward closures ------------------------------------------------

    def closure(self, s: int, kind: str, out: Any, targets: list[Any], holder: list[Any],
                arr: Any, key: Any, other: Any, graph: Any) -> Callable[[], None]:
        """A _backward for `out` on side s. It holds `out` (the usual cycle through the node)
        and `holder` (objects only it keeps: freed with it, or when it drops them). Everything
        it holds is in one Box, which teardown empties: a closure that holds a parent of its
        own node, or an array or graph holding it, makes a cycle through the arena that the
        compiled engine never collects (README, "Differences": a documented limitation)."""
        box = Box(out=out, targets=targets, holder=holder, arr=arr, other=other, graph=graph)
        self.boxes.add(box)
        busy = [False]

        def f(box: Box = box) -> None:
            b = box.items
            if not b:
                return
            if kind == "grad":
                for t in b["targets"]:
                    t.grad += b["out"].grad * 0.5
            elif kind == "drop":
                for t in b["targets"]:
                    t.grad += b["out"].grad
                b["holder"].clear()
            elif kind == "mutate":
                b["arr"][key] = 0.75
            elif kind == "setitem_self":  # an array re-pointed at its own reversed view
                a = b["arr"]
                a[...] = a[::-1] if a.ndim else a
            elif kind == "alloc":
                if s == 0:
                    grow_arena()
                for t in b["targets"]:
                    t.grad += 1
            elif kind == "raise":
                raise Boom("a _backward that fails")
            elif kind == "nested":  # another backward, from inside this one
                if busy[0]:
                    return
                busy[0] = True
                try:
                    b["other"].backward()
                finally:
                    busy[0] = False
            elif kind == "close_graph":
                b["graph"].close()
            else:
                raise AssertionError(kind)
        return f

    def closure_parts(self, data: st.DataObject, kind: str) -> Optional[dict[str, Any]]:
        """What a closure of this kind captures (pairs), or None if the pool lacks it."""
        parts: dict[str, Any] = {"targets": [], "holder": [], "arr": None, "key": None,
                                 "other": None, "graph": None}
        if self.vals:
            parts["targets"] = [self.pick(self.vals, data.draw(index))
                                for _ in range(data.draw(st.integers(0, 2)))]
        for _ in range(data.draw(st.integers(0, 2))):  # adopted: only the closure holds them
            pool = self.vals if data.draw(st.booleans()) else self.arrs
            if pool:
                parts["holder"].append(pool.pop(data.draw(index) % len(pool)))
        if kind in ("mutate", "setitem_self"):
            arrs = [p for p in self.arrs if p.c.size()]
            if not arrs:
                return None
            parts["arr"] = self.pick(arrs, data.draw(index))
            shape = parts["arr"].c.shape
            parts["key"] = tuple(data.draw(st.integers(0, d - 1)) for d in shape)
        if kind == "nested":
            pool = self.vals + [p for p in self.arrs if p.c.size()]
            if not pool:
                return None
            parts["other"] = self.pick(pool, data.draw(index))
        if kind == "close_graph":
            if not self.graphs:
                return None
            parts["graph"] = self.pick(self.graphs, data.draw(index))
        return parts

    def set_closure(self, target: Pair, kind: str, parts: dict[str, Any]) -> None:
        if not target.g.ok:
            # a tainted target may be another node on each side: the closure then runs on one
            # side only (a raise or a close would make the two engines' outcomes differ)
            kind = "grad" if kind in ("raise", "close_graph") else kind
            if kind in ("mutate", "setitem_self"):
                parts["arr"].g.ok = False
        self.taint_grads_if(target, *parts["targets"], parts["other"], parts["arr"])
        for s in (0, 1):
            fn = self.closure(
                s, kind, target.side(s), [t.side(s) for t in parts["targets"]],
                [h.side(s) for h in parts["holder"]],
                parts["arr"].side(s) if parts["arr"] else None, parts["key"],
                parts["other"].side(s) if parts["other"] else None,
                parts["graph"].side(s) if parts["graph"] else None)
            target.side(s)._backward = fn

    @rule(data=st.data(), x=numbers, kind=st.sampled_from(CLOSURES))
    def python_op(self, data: st.DataObject, x: Any, kind: str) -> None:
        children = [self.pick(self.vals, data.draw(index))
                    for _ in range(data.draw(st.integers(0, 4)))] if self.vals else []
        parts = self.closure_parts(data, kind)
        if parts is None:
            return
        c, r, err = self.both(lambda s: SIDES[s][0](
            x + sum(ch.side(s).data for ch in children) * 0.25,
            tuple(ch.side(s) for ch in children), "custom"), *children)
        if err is not None:
            return
        pair = Pair(c, r, Group(ok(*children)))
        self.set_closure(pair, kind, parts)
        self.add(self.vals, MAX_VALS, pair)

    @precondition(lambda self: self.vals or self.arrs)
    @rule(data=st.data(), kind=st.sampled_from(CLOSURES))
    def set_backward(self, data: st.DataObject, kind: str) -> None:
        if self.arrs and data.draw(st.booleans()):  # on an element of an array
            arrs = [p for p in self.arrs if p.c.size()]
            if not arrs:
                return
            a = self.pick(arrs, data.draw(index))
            key = tuple(data.draw(st.integers(0, d - 1)) for d in a.c.shape)
            target = Pair(a.c[key], a.r[key], Group(a.g.ok))
        elif self.vals:
            target = self.pick(self.vals, data.draw(index))
        else:
            return
        parts = self.closure_parts(data, kind)
        if parts is None:
            return
        self.set_closure(target, kind, parts)

    # --- array ops ---------------------------------------------------------------------------

    def operand(self, data: st.DataObject, a: Pair) -> tuple[Any, Any]:
        """Another operand for an op with array a: (pair or number or list, description)."""
        kind = data.draw(st.sampled_from(["array", "array", "self", "view", "number", "value", "list"]))
        if kind == "array" and self.arrs:
            return self.pick(self.arrs, data.draw(index)), kind
        if kind == "view" and a.c.ndim:
            return Pair(a.c[::-1], a.r[::-1], a.g), kind
        if kind == "value" and self.vals:
            return self.pick(self.vals, data.draw(index)), kind
        if kind == "list" and a.c.ndim:
            return data.draw(st.lists(numbers, min_size=a.c.shape[-1], max_size=a.c.shape[-1])), kind
        if kind == "number":
            return data.draw(numbers), kind
        return a, "self"

    @rule(data=st.data(), op=st.sampled_from(sorted(BINARY)), i=index, reflected=st.booleans())
    def array_binary(self, data: st.DataObject, op: str, i: int, reflected: bool) -> None:
        a = self.some_arr(i)
        b, _ = self.operand(data, a)
        f = BINARY[op]

        def side(s: int) -> Any:
            other = b.side(s) if isinstance(b, Pair) else b
            return f(other, a.side(s)) if reflected else f(a.side(s), other)
        c, r, err = self.both(side, a, b, leak_check=True)
        if err is None:
            self.add_arr(c, r, a, b)

    @rule(op=st.sampled_from(sorted(ARRAY_UNARY)), i=index)
    def array_unary(self, op: str, i: int) -> None:
        a = self.some_arr(i)
        c, r, err = self.both(lambda s: ARRAY_UNARY[op](a.side(s)), a, leak_check=True)
        if err is None:
            self.add_arr(c, r, a)

    @rule(data=st.data(), i=index,
          mode=st.sampled_from(["a@b", "a@aT", "aT@a", "a@a", "fresh", "dense", "dense_aa", "list@a"]))
    def matmul(self, data: st.DataObject, i: int, mode: str) -> None:
        a = self.some_arr(i)
        inputs: list[Any] = [a]
        if mode == "a@b":
            b = self.pick(self.arrs, data.draw(index))
            inputs.append(b)
            fn: Callable[[int], Any] = lambda s: a.side(s) @ b.side(s)  # noqa: E731
        elif mode == "a@aT":
            fn = lambda s: a.side(s) @ a.side(s).T  # noqa: E731
        elif mode == "aT@a":
            fn = lambda s: a.side(s).T @ a.side(s)  # noqa: E731
        elif mode == "a@a":
            fn = lambda s: a.side(s) @ a.side(s)  # noqa: E731
        elif mode == "list@a":
            k = a.c.shape[0] if a.c.ndim else 1
            xs = data.draw(st.lists(numbers, min_size=k, max_size=k))
            fn = lambda s: xs @ a.side(s)  # noqa: E731
        elif mode == "fresh":  # a well-shaped partner of new leaves (or of pool Values)
            k = a.c.shape[-1] if a.c.ndim else 1
            m = data.draw(st.sampled_from([1, 2, 3, 9]))
            xs = data.draw(st.lists(numbers, min_size=k * m, max_size=k * m))
            arg = np.array(xs, dtype=np.float64).reshape((k, m))
            fn = lambda s: a.side(s) @ SIDES[s][1](arg)  # noqa: E731
        else:  # dense(x, w[, bias]): w (nout, nin) against x (..., nin)
            w = a if mode == "dense_aa" else self.pick(self.arrs, data.draw(index))
            x = a if mode == "dense_aa" else self.pick(self.arrs, data.draw(index))
            inputs = [w, x]
            bias = None
            if data.draw(st.booleans()) and w.c.ndim == 2:
                nout = w.c.shape[0]
                candidates = [p for p in self.arrs if p.c.shape == (nout,)]
                if candidates and data.draw(st.booleans()):
                    bias = self.pick(candidates, data.draw(index))
                    inputs.append(bias)
                else:
                    bvals = data.draw(st.lists(numbers, min_size=nout, max_size=nout))
                    bias = Pair(MC(bvals), MR(bvals)) if nout else None
            fn = lambda s: dense(x.side(s), w.side(s), bias.side(s) if bias else None)  # noqa: E731
        c, r, err = self.both(fn, *inputs, leak_check=True)
        if err is None:
            self.add_arr(c, r, *inputs)

    @rule(data=st.data(), op=st.sampled_from(["sum", "max", "min", "mean", "var", "std"]), i=index,
          keepdims=st.booleans())
    def reduce(self, data: st.DataObject, op: str, i: int, keepdims: bool) -> None:
        a = self.some_arr(i)
        nd = a.c.ndim
        axis: Any = data.draw(st.one_of(
            st.none(), st.integers(-nd - 1, nd),
            st.lists(st.integers(-nd, max(nd - 1, 0)), max_size=nd, unique=True).map(tuple)))
        c, r, err = self.both(lambda s: getattr(a.side(s), op)(axis=axis, keepdims=keepdims),
                              a, leak_check=True)
        if err is None:
            self.add_arr(c, r, a)

    @rule(data=st.data(), i=index, bad=st.integers(0, 7))
    def getitem(self, data: st.DataObject, i: int, bad: int) -> None:
        a = self.some_arr(i)
        key = draw_key(data, a.c.shape, bad=bad == 0)
        c, r, err = self.both(lambda s: a.side(s)[key], a, leak_check=True)
        if err is None:  # views share a's storage (and its group); elements are Values
            if isinstance(c, VC):
                self.add_val(c, r, a)
            else:
                self.add_arr(c, r, group=a.g)

    @rule(data=st.data(), i=index, bad=st.integers(0, 7),
          kind=st.sampled_from(["number", "value", "array", "self_view", "self_whole", "list",
                                "ndarray"]))
    def setitem(self, data: st.DataObject, i: int, bad: int, kind: str) -> None:
        a = self.some_arr(i)
        key = draw_key(data, a.c.shape, bad=bad == 0)
        try:
            target = np.empty(a.c.shape)[key].shape
        except Exception:  # noqa: BLE001 - a bad key: the setitem must raise too
            target = ()
        source: Any = None
        if kind == "value" and self.vals:
            source = self.pick(self.vals, data.draw(index))
        elif kind == "array" and self.arrs:
            source = self.pick(self.arrs, data.draw(index))
        elif kind == "self_view" and a.c.ndim:  # an overlapping view of the target itself
            k2 = draw_key(data, a.c.shape)
            try:
                view = a.c[k2], a.r[k2]
            except IndexError:  # (index arrays that do not broadcast together)
                view = a.c, a.r
            source = Pair(*view, a.g if not isinstance(view[0], VC) else Group(a.g.ok))
        elif kind == "self_whole":
            source = a
        elif kind in ("list", "ndarray"):
            n = math.prod(target)
            xs = data.draw(st.lists(numbers, min_size=n, max_size=n))
            flat = np.empty(n, dtype=object)
            flat[:] = xs
            source = (flat.reshape(target).tolist() if kind == "list"
                      else np.array([float(x) for x in xs]).reshape(target))
            if not target:
                source = xs[0] if xs else 0.5
        else:
            source = data.draw(numbers)

        def side(s: int) -> None:
            a.side(s)[key] = source.side(s) if isinstance(source, Pair) else source
        self.both(side, a, source, leak_check=True)
        if isinstance(source, Pair) and not source.g.ok:
            a.g.ok = False

    @rule(data=st.data(), i=index,
          kind=st.sampled_from(["reshape-1", "reshape", "T", "transpose", "detach", "copy",
                                "newaxis", "bad_reshape"]))
    def reshape(self, data: st.DataObject, i: int, kind: str) -> None:
        a = self.some_arr(i)
        shape = a.c.shape
        if kind == "reshape-1":
            fn: Callable[[int], Any] = lambda s: a.side(s).reshape(-1)  # noqa: E731
        elif kind == "reshape":
            new = list(shape)
            data.draw(st.randoms()).shuffle(new)
            new = new + [1] * data.draw(st.integers(0, 1))
            fn = lambda s: a.side(s).reshape(tuple(new))  # noqa: E731
        elif kind == "T":
            fn = lambda s: a.side(s).T  # noqa: E731
        elif kind == "transpose":
            perm = list(range(len(shape)))
            data.draw(st.randoms()).shuffle(perm)
            fn = lambda s: a.side(s).transpose(*perm)  # noqa: E731
        elif kind == "detach":
            fn = lambda s: a.side(s).detach()  # noqa: E731
        elif kind == "copy":
            fn = lambda s: a.side(s).copy()  # noqa: E731
        elif kind == "newaxis":
            fn = lambda s: a.side(s)[None]  # noqa: E731
        else:
            fn = lambda s: a.side(s).reshape(math.prod(shape) + 1)  # noqa: E731
        c, r, err = self.both(fn, a, leak_check=True)
        if err is None:
            shared = kind not in ("detach", "copy")  # (a gathered reshape: conservative)
            self.add_arr(c, r, a, group=a.g if shared else None)

    @rule(data=st.data(), i=index, broadcast=st.booleans())
    def update_values(self, data: st.DataObject, i: int, broadcast: bool) -> None:
        a = self.some_arr(i)
        shape = a.c.shape[-1:] if broadcast else a.c.shape
        n = math.prod(shape)
        xs = data.draw(st.lists(numbers, min_size=n, max_size=n))
        if any(v._prev for v in a.c.values()):
            xs = [float(x) for x in xs]  # ints into op nodes: see no_int_data_in_op_nodes
        flat = np.empty(n, dtype=object)
        flat[:] = xs
        arg = flat.reshape(shape).tolist() if shape else (xs[0] if xs else 1.0)
        if not a.g.ok:  # (its nodes may differ: the ones the two twins change, and their users)
            self.shadow_ok = False
        self.both(lambda s: a.side(s).update_values(arg), a, leak_check=True)

    @precondition(lambda self: self.vals)
    @rule(i=index, x=numbers)
    def set_data(self, i: int, x: Any) -> None:
        p = self.pick(self.vals, i)
        if p.c._prev:
            x = float(x)  # see no_int_data_in_op_nodes
        if not p.g.ok:
            self.shadow_ok = False
        self.both(lambda s: setattr(p.side(s), "data", x), p)

    # --- gradients ---------------------------------------------------------------------------

    @precondition(lambda self: self.vals)
    @rule(i=index)
    def backward_scalar(self, i: int) -> None:
        p = self.pick(self.vals, i)
        self.taint_grads_if(p)
        self.both(lambda s: p.side(s).backward(), p)

    @rule(i=index)
    def backward_array(self, i: int) -> None:
        p = self.some_arr(i)
        self.taint_grads_if(p)
        self.both(lambda s: p.side(s).backward(), p)

    @precondition(lambda self: self.vals or self.arrs)
    @rule(i=index)
    def zero_grad(self, i: int) -> None:
        pool = self.arrs if (i & 1 and self.arrs) or not self.vals else self.vals
        p = self.pick(pool, i >> 1)
        self.taint_grads_if(p)
        if pool is self.arrs:
            self.both(lambda s: p.side(s).zero_grad(), p)
        else:
            self.both(lambda s: setattr(p.side(s), "grad", 0), p)

    # --- graphs -------------------------------------------------------------------------------

    @precondition(lambda self: self.vals or self.arrs)
    @rule(data=st.data(), i=index)
    def graph_capture(self, data: st.DataObject, i: int) -> None:
        pool = self.vals if (i & 1 and self.vals) or not self.arrs else self.arrs
        out = self.pick(pool, i >> 1)
        how_many = st.sampled_from([0, 0, 0, 1, 2])
        inputs = [self.pick(self.vals, data.draw(index))
                  for _ in range(data.draw(how_many))] if self.vals else []
        params = [self.pick(self.vals, data.draw(index))
                  for _ in range(data.draw(how_many))] if self.vals else []
        if params and data.draw(st.booleans()) and self.arrs:
            params.append(self.pick(self.arrs, data.draw(index)))  # an array's elements

        def side(s: int) -> Any:
            graph = Graph(out.side(s), inputs=[p.side(s) for p in inputs] or None,
                          params=[p.side(s) for p in params] or None)
            if s == 0:
                self.compiled_graphs.add(graph)
            return graph
        c, r, err = self.both(side, out, *inputs, *params, leak_check=True)
        if err is None:
            g = Pair(c, r, Group(ok(out, *inputs, *params)))
            self.add(self.graphs, MAX_GRAPHS, g)

    @rule(data=st.data(), i=index,
          op=st.sampled_from(["forward", "backward", "forward", "backward", "feed", "train_step",
                              "sgd", "close", "close", "len", "drop", "drop"]))
    def graph_op(self, data: st.DataObject, i: int, op: str) -> None:
        if not self.graphs:  # one to work on: of a fresh expression over a pool array
            a = self.some_arr(i)
            def capture(s: int) -> Any:
                graph = Graph((a.side(s).tanh() * 2.0).sum())
                if s == 0:
                    self.compiled_graphs.add(graph)
                return graph
            c, r, err = self.both(capture, a)
            if err is not None:
                return
            self.add(self.graphs, MAX_GRAPHS, Pair(c, r, Group(a.g.ok)))
        k = i % len(self.graphs)
        g = self.graphs[k]
        if op == "drop":
            del self.graphs[k]
            return
        if not g.g.ok and op not in ("close", "len"):  # tainted: nothing comparable after it
            self.shadow_ok = False
        if op in ("backward", "train_step", "sgd"):
            self.taint_grads_if(g)
        if op == "feed":
            n = len(g.c.inputs)
            arg = data.draw(st.lists(numbers, min_size=n, max_size=n + data.draw(st.sampled_from([0, 0, 1]))))
            fn: Callable[[int], Any] = lambda s: g.side(s).feed(arg)  # noqa: E731
        elif op == "sgd":
            def fn(s: int) -> Any:
                graph = g.side(s)
                if s == 0:  # (a closed graph has no params: a stand-in, and step raises)
                    return graph.step(optim.SGD(graph.params or [VC(0.0)], lr=0.125))
                # optim takes the active (compiled) engine's Values only: what step() does
                loss = graph.forward()
                for p in graph.params:
                    p.grad = 0
                graph.backward()
                for p in graph.params:
                    p.data -= 0.125 * p.grad
                return loss
        elif op == "train_step":
            fn = lambda s: g.side(s).train_step(0.25)  # noqa: E731
        else:
            fn = lambda s: getattr(g.side(s), op)()  # noqa: E731
        c, r, err = self.both(fn, g)
        if err is None and g.g.ok and self.shadow_ok and op in ("forward", "train_step", "sgd"):
            assert bits(c) == bits(r), (op, c, r)

    # --- lifetime ----------------------------------------------------------------------------

    @precondition(lambda self: self.vals or self.arrs or self.graphs)
    @rule(i=index, n=st.integers(1, 3))
    def drop(self, i: int, n: int) -> None:
        for _ in range(n):
            pools = [p for p in (self.vals, self.arrs, self.graphs) if p]
            if not pools:
                return
            pool = pools[i % len(pools)]
            victim = pool.pop((i >> 2) % len(pool))
            if pool is not self.graphs:
                self.bury(victim)
            i = i * 7 + 3

    @rule(full=st.booleans(), aggressive=st.booleans())
    def collect(self, full: bool, aggressive: bool) -> None:
        """gc.collect() (full: the graveyard too), then the compiled side of what follows runs
        with the GC at threshold 1, or not."""
        if full:
            self.grave.clear()
            self.walk_handles()
        gc.collect()
        self.aggressive = aggressive

    # (hypothesis orders rules by their number of arguments and draws the first more often than
    # the others: this is the one it then favours)

    @rule()
    def backward_everything(self) -> None:
        """One loss over every pool object (scalars, and each non-empty array's sum), backward."""
        parts = self.vals + [p for p in self.arrs if p.c.size()]
        if not parts:
            return
        self.taint_grads_if(*parts)

        def side(s: int) -> None:
            loss = SIDES[s][0](0.0)
            for p in parts:
                x = p.side(s)
                loss = loss + (x if isinstance(x, SIDES[s][0]) else x.sum())
            loss.backward()
        self.both(side, *parts)

    def walk_handles(self) -> None:
        """Every node below the pool's compiled scalars gets a handle (then drops it)."""
        seen: dict[int, Any] = {}
        stack = [p.c for p in self.vals]
        while stack and len(seen) < 500:
            for child in stack.pop()._prev:
                if id(child) not in seen:
                    seen[id(child)] = child
                    stack.append(child)
        del seen, stack

    @rule(data=st.data(), kind=st.sampled_from(["repoint", "free_grave", "grow", "handles"]),
          delay=st.integers(1, 8))
    def chaos(self, data: st.DataObject, kind: str, delay: int) -> None:
        """Queue an action that the GC callback runs inside a later compiled operation."""
        if kind == "repoint":
            arrs = [p for p in self.arrs if p.c.size()]
            if not arrs:
                return
            p = self.pick(arrs, data.draw(index))
            key = tuple(data.draw(st.integers(0, d - 1)) for d in p.c.shape)
            p.g.ok = False  # its compiled twin will differ: no longer compared
            arr = p.c

            def action() -> None:
                arr[key] = 0.125
        elif kind == "free_grave":
            grave = self.grave

            def action() -> None:
                grave.clear()
        elif kind == "grow":
            action = grow_arena
        else:
            grave = self.grave

            def action() -> None:
                handles = [x.values() if hasattr(x, "values") else x._prev for x in grave]
                del handles
        self.pending.append([delay, action])

    # --- operations that must raise ----------------------------------------------------------------

    @rule(kind=st.sampled_from(["log-", "log0", "zero_pow", "exp_big", "complex_pow", "shape",
                                "index", "matmul_k", "reshape", "max_empty", "closed_graph",
                                "array_log-", "array_zero_pow", "python_child", "linear_len",
                                "rpow_big"]))
    def raising(self, kind: str) -> None:
        table: dict[str, tuple[Callable[[int], Any], type]] = {
            "log-": (lambda s: SIDES[s][0](-1.5).log(), ValueError),
            "log0": (lambda s: (SIDES[s][0](2.0) * 0).log(), ValueError),
            "zero_pow": (lambda s: SIDES[s][0](0.0) ** -1, ZeroDivisionError),
            "exp_big": (lambda s: (SIDES[s][0](500.0) * 3).exp(), OverflowError),
            "complex_pow": (lambda s: SIDES[s][0](-8.0) ** 0.5, ValueError),
            "shape": (lambda s: SIDES[s][1]([[1.0, 2.0]]) + SIDES[s][1]([1.0, 2.0, 3.0]), ValueError),
            "index": (lambda s: SIDES[s][1]([1.0, 2.0])[2], IndexError),
            "matmul_k": (lambda s: SIDES[s][1]([[1.0, 2.0]]) @ SIDES[s][1]([[1.0, 2.0]]), ValueError),
            "reshape": (lambda s: SIDES[s][1]([1.0, 2.0, 3.0]).reshape(2, 2), ValueError),
            "max_empty": (lambda s: SIDES[s][1].zeros(0).max(), ValueError),
            "closed_graph": (lambda s: self._closed_graph(s), RuntimeError),
            "array_log-": (lambda s: SIDES[s][1]([1.0, -1.0, 2.0]).log(), ValueError),
            "array_zero_pow": (lambda s: SIDES[s][1]([1.0, 0.0]) ** -1, ZeroDivisionError),
            "python_child": (lambda s: SIDES[s][0](1.0, (SIDES[s][0](1.0), 3.0), "x"), TypeError),
            "linear_len": (lambda s: SIDES[s][2]([SIDES[s][0](1.0)], [1.0, 2.0]), ValueError),
            "rpow_big": (lambda s: 10.0 ** SIDES[s][0](400.0), OverflowError),
        }
        fn, expected = table[kind]
        _, _, err = self.both(fn, leak_check=True)
        assert err is expected, (kind, err)

    def _closed_graph(self, s: int) -> Any:
        g = Graph(SIDES[s][0](2.0) * 3)
        if s == 0:
            self.compiled_graphs.add(g)
        g.close()
        return g.forward()


LifetimeMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=SEED is None,
    database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])

if SEED is not None:  # (on the machine: its TestCase runs it with the machine's seed)
    seed(int(SEED))(LifetimeMachine)
TestLifetimeMachine = LifetimeMachine.TestCase

