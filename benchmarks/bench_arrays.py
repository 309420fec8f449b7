"""Issue #5's workloads: michigrad.MLArray against SmolML, nested lists of Values, micrograd and
PyTorch.

Run from the repository root (after building the extension in place)::

    PYTHONPATH=src python benchmarks/bench_arrays.py            # 7 repetitions
    PYTHONPATH=src python benchmarks/bench_arrays.py --quick    # 3 repetitions
    PYTHONPATH=src:/path/to/SmolML python benchmarks/bench_arrays.py   # with SmolML's rows

Workloads (forward + backward, leaves made before the clock starts):

* W1 matmul: A (64x64) @ B (64x64), then ``.tanh().sum()`` and ``backward()``.
* W2 MLP:    8 -> 16 -> 16 -> 1 (tanh on the hidden layers) on a 256x8 batch, loss
  ``mean((pred - y) ** 2)``, then ``backward()``.

Peers, each running the same computation:

* ``SmolML``             -- SmolML's own ``MLArray`` (nested Python lists of its pure-Python
  ``Value``), the issue's baseline. It is not on the package index: the rows appear when a
  checkout of github.com/rodmarkun/SmolML is on PYTHONPATH (only for the benchmark; nothing of
  it is in this repository), and are left out, with a note, otherwise.
* ``MLArray``            -- michigrad.MLArray (compiled kernels: one C loop per array op; a
  matmul or dense layer makes one 'linear' node per output element).
* ``MLArray replay``     -- the MLArray graph recorded once with ``michigrad.Graph``, each run
  ``forward()`` + ``backward()`` in C (a training loop over a fixed-shape batch).
* ``MLArray sse2``, ``replay sse2`` -- the same two with the matmul's vector kernels switched to
  the x86-64 baseline's copy (``_engine._set_vector_isa('sse2')``), when the machine runs a wider
  one (AVX2, AVX-512): what the wider copies gain, same bits.
* ``nested Values``      -- nested Python lists of michigrad's *compiled* scalar ``Value``,
  written as SmolML's MLArray does it (``sum(a * b ...)``, ``+``, ``tanh``): SmolML's workload
  on our fast scalar engine, the stricter comparison.
* ``nested + linear``    -- the same nested lists, but each dot product is one fused
  ``michigrad.linear`` node (the scalar engine at its best).
* ``micrograd``          -- micrograd 0.1.0's Value in nested lists (it has no tanh: tanh is
  added the way Karpathy's lecture writes it, a node with a ``_backward`` closure).
* ``torch``              -- PyTorch float64 tensors (the whole batch as one tensor op).
* ``C floor``            -- benchmarks/c_floor/tape_floor.c (needs gcc) running MLArray's graph,
  recorded with ``michigrad.Graph``, over flat arrays of doubles: the same operations and bits,
  no node made, ordered or freed.

Reported: median wall time over the repetitions (and median CPU time of the thread as a
cross-check on a shared machine), speedups over SmolML, ``nested Values`` and micrograd (their
time / this time), time relative to torch (this time / torch's), nodes created, ns per created
node, and ns per node of micrograd's graph for the same computation (a common yardstick: a fused
'linear' node does the work of 2k micrograd nodes, torch makes no nodes). Nodes are counted
with ``michigrad._engine._arena_stats()['allocations']`` (every node the arena hands out during
the timed run: leaves such as the constant ``0`` of Python's ``sum()`` included); micrograd's by
walking ``_prev`` from the loss (untimed). Timing hygiene as in bench_engine.py: one discarded
warm-up per peer, peers take turns within each repetition, the garbage collector stays on inside
the timed region for everyone, and the previous graph is dropped (``del`` + ``gc.collect()``)
outside it. Each timed run follows an untimed run of the same peer: a step of a training loop
runs right after the previous step, not after another library's (SmolML's multi-second runs and
gc.collect() leave every cache cold; the first run after them pays for that, whichever peer it
is).

A third table times MLArray beside torch on two more shapes whose backward the sweep batches
differently: a matmul whose left operand is op nodes, and an MLP with 64-wide layers.

Two more tables time the kernels alone on 1,000,000-element arrays (ns per created node: the
issue's <= 20 ns target), once on a fresh arena (before the workloads) and once after them, when
the arena's free stack holds what their graphs freed (a run of 256 or more freed slots goes back
in address order; smaller ones are last freed, first reused). ``ns/child`` explains
the n-ary nodes: a 'linear' node sums its k products left to right (bit for bit micrograd's
neuron) and references 2k children, so its cost grows with k. A C program
(``benchmarks/c_floor/libm_floor.c``, needs gcc) gives the floor under those figures on the same
machine: writing one 64-byte node, and the libm calls (tanh, exp, pow) that Python's own
arithmetic makes and the engine must make too. This script asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

import michigrad
from michigrad import Graph, _engine
from michigrad.array import MLArray, dense

sys.setrecursionlimit(100_000)  # micrograd's backward() is recursive

RNG = np.random.default_rng(0)
A_NP, B_NP = RNG.uniform(-1, 1, (64, 64)), RNG.uniform(-1, 1, (64, 64))
X_NP, Y_NP = RNG.uniform(-1, 1, (256, 8)), RNG.uniform(-1, 1, (256, 1))
SIZES = [(8, 16), (16, 16), (16, 1)]
PARAMS_NP = [(RNG.uniform(-0.5, 0.5, (nout, nin)), RNG.uniform(-0.5, 0.5, nout)) for nin, nout in SIZES]
WIDE_X_NP, WIDE_Y_NP = RNG.uniform(-1, 1, (256, 64)), RNG.uniform(-1, 1, (256, 1))
WIDE_PARAMS_NP = [(RNG.uniform(-0.2, 0.2, (nout, nin)), RNG.uniform(-0.2, 0.2, nout))
                  for nin, nout in [(64, 64), (64, 64), (64, 1)]]


def allocations() -> int:
    return _engine._arena_stats()["allocations"]


# ===================================================================================== peers
# Each peer maps a workload name to a setup function returning (leaves, run); run(leaves)
# builds the graph, calls backward() and returns the loss (kept alive until after the clock).

# The array workloads, written once for any peer with NumPy-style operators (MLArray, torch).

def matmul_loss(a, b):
    return (a @ b).tanh().sum()


def matmul_step(leaves):
    loss = matmul_loss(*leaves)
    loss.backward()
    return loss


def mlp_loss(layer, x, y, params):
    """The MLP workload's loss: layer(h, w, b) is the peer's dense layer."""
    h = x
    for k, (w, b) in enumerate(params):
        h = layer(h, w, b)
        if k < len(params) - 1:
            h = h.tanh()
    return ((h - y) ** 2).mean()


def mlp_step(layer):
    """run(leaves) for the MLP workload."""
    def run(leaves):
        loss = mlp_loss(layer, *leaves)
        loss.backward()
        return loss

    return run


def torch_dense(h, w, b):
    return h @ w.T + b


def op_operand_step(leaves):
    """W1 with an op node for every element of the left operand: one side of each output's
    backward goes into leaves (b), the other into op nodes (a * 1.0)."""
    a, b = leaves
    loss = ((a * 1.0) @ b).tanh().sum()
    loss.backward()
    return loss


def mlarray_peer() -> dict[str, Callable[[], tuple[Any, Callable[[Any], Any]]]]:
    def matmul():
        leaves = (MLArray(A_NP), MLArray(B_NP))

        return leaves, matmul_step

    def mlp():
        params = [(MLArray(w), MLArray(b)) for w, b in PARAMS_NP]
        leaves = (MLArray(X_NP), MLArray(Y_NP), params)

        return leaves, mlp_step(dense)

    return {"W1 matmul": matmul, "W2 MLP": mlp}


def replay_step(graph):
    """A replayed step: forward and backward of the recorded graph, in C."""
    graph.forward()
    graph.backward()


def mlarray_replay_peer() -> dict[str, Callable[[], tuple[Any, Callable[[Any], Any]]]]:
    """MLArray's graphs recorded once with michigrad.Graph: each run replays them (no node is
    made)."""
    def matmul():
        return Graph(matmul_loss(MLArray(A_NP), MLArray(B_NP))), replay_step

    def mlp():
        params = [(MLArray(w), MLArray(b)) for w, b in PARAMS_NP]
        return Graph(mlp_loss(dense, MLArray(X_NP), MLArray(Y_NP), params)), replay_step

    return {"W1 matmul": matmul, "W2 MLP": mlp}


def nested_peer(Value: type, tanh: Callable[[Any], Any], fused: bool) -> dict[str, Callable[[], Any]]:  # noqa: N803
    """Nested lists of scalar Values (micrograd's or michigrad's)."""
    def dot(ws, xs, b=None):
        if fused:
            return michigrad.linear(ws, xs, b)
        s = sum(w * x for w, x in zip(ws, xs))
        return s if b is None else s + b

    def matmul():
        leaves = ([[Value(float(x)) for x in row] for row in A_NP],
                  [[Value(float(x)) for x in row] for row in B_NP])

        def run(leaves):
            a, b = leaves
            cols = list(zip(*b))
            c = [[dot(row, col) for col in cols] for row in a]
            loss = sum(tanh(v) for row in c for v in row)
            loss.backward()
            return loss

        return leaves, run

    def mlp():
        params = [([[Value(float(x)) for x in row] for row in w], [Value(float(x)) for x in b])
                  for w, b in PARAMS_NP]
        leaves = ([[Value(float(x)) for x in row] for row in X_NP],
                  [Value(float(row[0])) for row in Y_NP], params)

        def run(leaves):
            xs, ys, params = leaves
            total = 0
            for x, y in zip(xs, ys):
                h = x
                for k, (w, b) in enumerate(params):
                    h = [dot(wj, h, bj) for wj, bj in zip(w, b)]
                    if k < len(params) - 1:
                        h = [tanh(v) for v in h]
                total = total + (h[0] - y) ** 2
            loss = total * (1.0 / len(xs))
            loss.backward()
            return loss

        return leaves, run

    return {"W1 matmul": matmul, "W2 MLP": mlp}


def smolml_peer() -> Optional[dict[str, Callable[[], Any]]]:
    """SmolML's own MLArray (nested lists of its pure-Python Value), if it is importable: it is
    not on the package index, so install it from its source (github.com/rodmarkun/SmolML) or put
    a checkout on PYTHONPATH. None when it is not there."""
    try:
        from smolml.core.ml_array import MLArray as SmolArray
        from smolml.utils.activation import tanh as smol_tanh
    except ImportError:
        return None

    def matmul():
        leaves = (SmolArray(A_NP.tolist()), SmolArray(B_NP.tolist()))

        def run(leaves):
            a, b = leaves
            loss = smol_tanh(a @ b).sum()
            loss.backward()
            return loss

        return leaves, run

    def mlp():
        # SmolML's layers compute x @ W + b with W (nin, nout): our (nout, nin) weights, transposed
        params = [(SmolArray(w.T.tolist()), SmolArray(b.tolist())) for w, b in PARAMS_NP]
        leaves = (SmolArray(X_NP.tolist()), SmolArray(Y_NP.tolist()), params)

        def run(leaves):
            x, y, params = leaves
            h = x
            for k, (w, b) in enumerate(params):
                h = h @ w + b
                if k < len(params) - 1:
                    h = smol_tanh(h)
            loss = ((h - y) ** 2).mean()
            loss.backward()
            return loss

        return leaves, run

    return {"W1 matmul": matmul, "W2 MLP": mlp}


def micrograd_tanh(x):
    """tanh for micrograd 0.1.0 (which has none), as Karpathy's lecture writes it."""
    from micrograd.engine import Value

    t = math.tanh(x.data)
    out = Value(t, (x,), "tanh")

    def _backward():
        x.grad += (1 - t * t) * out.grad

    out._backward = _backward
    return out


def torch_peer() -> dict[str, Callable[[], Any]]:
    import torch

    torch.set_num_threads(1)

    def matmul():
        leaves = tuple(torch.tensor(m, dtype=torch.float64, requires_grad=True) for m in (A_NP, B_NP))

        return leaves, matmul_step

    def mlp():
        params = [(torch.tensor(w, dtype=torch.float64, requires_grad=True),
                   torch.tensor(b, dtype=torch.float64, requires_grad=True)) for w, b in PARAMS_NP]
        leaves = (torch.tensor(X_NP), torch.tensor(Y_NP), params)

        return leaves, mlp_step(torch_dense)

    return {"W1 matmul": matmul, "W2 MLP": mlp}


def count_micrograd_nodes(root) -> int:
    seen, stack = {id(root)}, [root]
    while stack:
        for child in stack.pop()._prev:
            if id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return len(seen)


# ================================================================================== timing

def timed(run: Callable[[Any], Any], leaves: Any) -> tuple[float, float, int, Any]:
    before = allocations()
    t0, c0 = time.perf_counter(), time.thread_time()
    loss = run(leaves)
    t1, c1 = time.perf_counter(), time.thread_time()
    return t1 - t0, c1 - c0, allocations() - before, loss


def alternating_runs(setups: dict[str, tuple[Any, Callable[[Any], Any]]], reps: int,
                     record: Callable[[str, int, float, float, int, Any], None]) -> None:
    """Repetition 0 (the warm-up) to reps, the peers taking turns; each timed run follows an
    untimed run of the same peer. record(name, rep, wall, cpu, allocated, loss) sees each timed
    run (it must not keep the loss: the graph is dropped before the next run)."""
    for rep in range(reps + 1):
        for name, (leaves, run) in setups.items():
            gc.collect()
            previous = run(leaves)  # the previous step (untimed): warm, as in a loop
            del previous
            wall, cpu, allocated, loss = timed(run, leaves)
            record(name, rep, wall, cpu, allocated, loss)
            del loss
            gc.collect()


def on_isa(peer: dict[str, Callable[[], Any]], isa: str) -> dict[str, Callable[[], Any]]:
    """The peer with the engine's vector kernels switched to `isa` for each of its runs (the
    same bits, the speed of narrower vectors)."""
    from michigrad import _engine

    def wrap(setup: Callable[[], Any]) -> Callable[[], Any]:
        def make() -> tuple[Any, Callable[[Any], Any]]:
            leaves, run = setup()

            def run_on_isa(leaves: Any) -> Any:
                in_use = _engine._vector_isa()[0]
                _engine._set_vector_isa(isa)
                try:
                    return run(leaves)
                finally:
                    _engine._set_vector_isa(in_use)

            return leaves, run_on_isa

        return make

    return {workload: wrap(setup) for workload, setup in peer.items()}


def baseline_isa_peers() -> dict[str, dict[str, Callable[[], Any]]]:
    """MLArray and its replay on the x86-64 baseline's (SSE2) vector kernels, when the machine
    runs wider ones: what the wider copies gain."""
    if michigrad.engine.ENGINE != "compiled":
        return {}
    from michigrad import _engine

    in_use, supported = _engine._vector_isa()
    if supported[0] != "sse2" or in_use == "sse2":
        return {}
    return {"MLArray sse2": on_isa(mlarray_peer(), "sse2"),
            "replay sse2": on_isa(mlarray_replay_peer(), "sse2")}


def bench_workloads(reps: int) -> None:
    from micrograd.engine import Value as MicrogradValue

    peers: dict[str, dict[str, Callable[[], Any]]] = {
        "MLArray": mlarray_peer(),
        "MLArray replay": mlarray_replay_peer(),
        **baseline_isa_peers(),
        "nested Values": nested_peer(michigrad.Value, lambda v: v.tanh(), fused=False),
        "nested + linear": nested_peer(michigrad.Value, lambda v: v.tanh(), fused=True),
        "micrograd": nested_peer(MicrogradValue, micrograd_tanh, fused=False),
        "torch": torch_peer(),
    }
    smolml = smolml_peer()
    if smolml is not None:
        peers = {"SmolML": smolml, **peers}
    else:
        print("\nSmolML is not importable: its rows are left out (put a checkout of "
              "github.com/rodmarkun/SmolML on PYTHONPATH to add them)")
    print(f"\nWorkloads: median of {reps} repetitions (forward + backward)\n")
    header = (f"{'workload':10s} {'peer':16s} {'median ms':>10s} {'CPU ms':>9s} {'spread':>7s} "
              f"{'x faster than SmolML':>21s} {'x faster than nested':>21s} "
              f"{'x faster than micrograd':>24s} {'time / torch':>13s} {'nodes':>9s} {'ns/node':>8s} "
              f"{'ns/micrograd node':>18s}")
    print(header)
    print("-" * len(header))
    for workload in ("W1 matmul", "W2 MLP"):
        setups = {name: peer[workload]() for name, peer in peers.items()}
        walls: dict[str, list[float]] = {name: [] for name in peers}
        cpus: dict[str, list[float]] = {name: [] for name in peers}
        nodes: dict[str, int] = {}

        def record(name: str, rep: int, wall: float, cpu: float, allocated: int, loss: Any) -> None:
            if name in ("MLArray", "MLArray sse2", "nested Values", "nested + linear"):
                nodes[name] = allocated
            elif name == "micrograd" and rep == 0:
                nodes[name] = count_micrograd_nodes(loss)
            elif name == "SmolML" and rep == 0:
                nodes[name] = count_micrograd_nodes(loss.data)  # its 0-d array's Value
            if rep > 0:
                walls[name].append(wall)
                cpus[name].append(cpu)

        alternating_runs(setups, reps, record)
        medians = {name: statistics.median(ts) for name, ts in walls.items()}
        graph = mlarray_replay_peer()[workload]()[0]
        floor = graph_floor_ms(graph, 100 * reps)
        if floor is not None:  # the same graph in plain C: what making nodes costs beyond it
            medians["C floor"] = floor / 1e3
            walls["C floor"] = [floor / 1e3]
            cpus["C floor"] = [floor / 1e3]
            nodes["C floor"] = len(graph)
        graph.close()
        for name in medians:
            m = medians[name]
            spread = (max(walls[name]) - min(walls[name])) / m
            n = nodes.get(name)
            vs_smolml = f"{medians['SmolML'] / m:21.1f}" if "SmolML" in medians else f"{'n/a':>21s}"
            print(f"{workload:10s} {name:16s} {m * 1e3:10.2f} {statistics.median(cpus[name]) * 1e3:9.2f} "
                  f"{spread:7.0%} {vs_smolml} {medians['nested Values'] / m:21.2f} "
                  f"{medians['micrograd'] / m:24.1f} "
                  f"{m / medians['torch']:13.2f} "
                  f"{n if n is not None else 'n/a':>9} {m / n * 1e9 if n else float('nan'):8.0f} "
                  f"{m / nodes['micrograd'] * 1e9:18.1f}")
        print()
    print("nodes: michigrad peers count _engine._arena_stats()['allocations'] during the timed run "
          "(constant leaves included); micrograd and SmolML, the Values reachable from the loss; ns/node = "
          "median time / nodes. A 'linear' node stands for 2k micrograd nodes (k '*' and k '+'); "
          "ns/micrograd node = median time / the nodes micrograd makes for the same computation. "
          "C floor: benchmarks/c_floor/tape_floor.c running MLArray's recorded graph (its op nodes) "
          "over flat arrays of doubles, scalar C, gcc -O2, same bits: the graph's arithmetic "
          "without making, ordering or freeing a node (median of the steps timed inside C).")


def bench_more_shapes(reps: int) -> None:
    """Two more shapes for MLArray's backward, beside torch: a matmul whose left operand is op
    nodes, and an MLP with 64-wide layers (the sweep batches the contributions into the
    leaves -- weights, inputs -- across samples and layers, and makes the others at once)."""
    import torch

    torch.set_num_threads(1)

    def tensor(m: np.ndarray, grad: bool = True) -> Any:
        return torch.tensor(m, dtype=torch.float64, requires_grad=grad)

    shapes = {
        "64x64 (a*1.0) @ b": {
            "MLArray": lambda: ((MLArray(A_NP), MLArray(B_NP)), op_operand_step),
            "torch": lambda: ((tensor(A_NP), tensor(B_NP)), op_operand_step),
        },
        "MLP 64-64-64-1, 256x64": {
            "MLArray": lambda: ((MLArray(WIDE_X_NP), MLArray(WIDE_Y_NP),
                                 [(MLArray(w), MLArray(b)) for w, b in WIDE_PARAMS_NP]), mlp_step(dense)),
            "torch": lambda: ((tensor(WIDE_X_NP, False), tensor(WIDE_Y_NP, False),
                               [(tensor(w), tensor(b)) for w, b in WIDE_PARAMS_NP]), mlp_step(torch_dense)),
        },
    }
    print(f"\nMore shapes (MLArray and torch only): median of {reps} repetitions (forward + backward)\n")
    header = f"{'shape':24s} {'peer':8s} {'median ms':>10s} {'time / torch':>13s} {'nodes':>9s} {'ns/node':>8s}"
    print(header)
    print("-" * len(header))
    for shape, peers in shapes.items():
        setups = {name: make() for name, make in peers.items()}
        walls: dict[str, list[float]] = {name: [] for name in setups}
        made: dict[str, int] = {}

        def record(name: str, rep: int, wall: float, cpu: float, allocated: int, loss: Any) -> None:
            made[name] = allocated
            if rep > 0:
                walls[name].append(wall)

        alternating_runs(setups, reps, record)
        medians = {name: statistics.median(ts) for name, ts in walls.items()}
        for name, m in medians.items():
            n = made[name] if name == "MLArray" else 0
            print(f"{shape:24s} {name:8s} {m * 1e3:10.2f} {m / medians['torch']:13.2f} "
                  f"{n if n else 'n/a':>9} {m / n * 1e9 if n else float('nan'):8.0f}")
        print()


def bench_kernels(reps: int, when: str) -> None:
    n = 1_000_000
    pos = np.arange(n, dtype=np.int64)
    rev = pos[::-1].copy()
    half64 = n // 2 // 64 * 64  # half the elements, in whole rows of 64
    data = np.random.default_rng(1).uniform(-2, 2, n)
    store = _engine.array_from_numbers(data)
    def matmul_grid() -> Any:  # 125 x 64 @ 64 x 64: 8,000 nodes of 128 children
        return _engine.array_matmul(store, pos[: 125 * 64].reshape(125, 64), store,
                                    rev[: 64 * 64].reshape(64, 64), 1)

    # (label, children per node where more than one: the ns/child column, make the nodes)
    cases: list[tuple[str, int, Callable[[], Any]]] = [
        ("array_from_numbers (leaves)", 0, lambda: _engine.array_from_numbers(data)),
        ("unary relu", 0, lambda: _engine.array_unary("relu", store, pos)),
        ("unary leaky_relu", 0, lambda: _engine.array_unary("leaky_relu", store, pos, 0.01)),
        ("unary tanh", 0, lambda: _engine.array_unary("tanh", store, pos)),
        ("unary exp (checked first)", 0, lambda: _engine.array_unary("exp", store, pos)),
        ("unary powc 2 (checked first)", 0, lambda: _engine.array_unary("powc", store, pos, 2)),
        ("binary mul", 0, lambda: _engine.array_binary("mul", store, pos, store, rev)),
        ("binary add", 0, lambda: _engine.array_binary("add", store, pos, store, rev)),
        ("reduce sum, rows of 2", 2, lambda: _engine.array_reduce("sum", store, pos.reshape(-1, 2))),
        ("reduce sum, rows of 16", 16, lambda: _engine.array_reduce("sum", store, pos.reshape(-1, 16))),
        ("reduce max, rows of 16", 16, lambda: _engine.array_reduce("max", store, pos.reshape(-1, 16))),
        ("linear, rows of 8 (+bias)", 17, lambda: _engine.array_linear(
            store, pos[: n // 2].reshape(-1, 8), store, rev[: n // 2].reshape(-1, 8),
            store, pos[: n // 16])),
        ("linear, rows of 64 (matmul 64)", 128, lambda: _engine.array_linear(
            store, pos[: half64].reshape(-1, 64), store, rev[: half64].reshape(-1, 64))),
        ("matmul (125x64 @ 64x64)", 128, matmul_grid),
    ]
    print(f"\nKernels alone on {n:,}-element inputs, {when}: median of {reps} (ns per created "
          "node; target <= 20)\n")
    header = f"{'kernel':34s} {'median ms':>10s} {'nodes':>9s} {'ns/node':>8s} {'ns/child':>9s}"
    print(header)
    print("-" * len(header))
    for label, kids, fn in cases:
        times, made = [], 0
        for rep in range(reps + 1):
            gc.collect()
            before = allocations()
            t0 = time.perf_counter()
            out = fn()
            t1 = time.perf_counter()
            made = allocations() - before
            del out
            if rep > 0:
                times.append(t1 - t0)
        m = statistics.median(times)
        per_child = f"{m / (made * kids) * 1e9:9.1f}" if kids else ""
        print(f"{label:34s} {m * 1e3:10.2f} {made:9d} {m / made * 1e9:8.1f} {per_child}")

    def backward_of_sum(label: str, layer: Any, nodes: int, children: int) -> None:
        """Time backward() from sum(layer), over `nodes` nodes: the sweep applies the op table
        in C."""
        total = _engine.array_reduce("sum", layer, pos[: len(layer)].reshape(1, -1))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _engine.array_backward(total, 0)
            times.append(time.perf_counter() - t0)
        m = statistics.median(times)
        per_child = f"{m / (len(layer) * children) * 1e9:9.1f}" if children else ""
        print(f"{label:34s} {m * 1e3:10.2f} {nodes:9d} {m / nodes * 1e9:8.1f} {per_child}")

    backward_of_sum("backward: sum(tanh(x)), 2M+1 nodes", _engine.array_unary("tanh", store, pos),
                    2 * n + 1, 0)
    # a matmul's 'linear' nodes: each child's gradient is one read and one read-modify-write of
    # a node (plus its visit in the topological order). sum() hands them the int 1, so they run
    # one at a time; after '** 1.0' their gradients are floats and the sweep applies them in a
    # batch, on dense copies of the operand rows (_sweep.pxi)
    backward_of_sum("backward: sum(125x64 @ 64x64)", matmul_grid(), 8000 + 1, 128)
    backward_of_sum("backward: sum((..)**1.0), copies", _engine.array_unary(
        "powc", matmul_grid(), pos[:8000], 1.0), 2 * 8000 + 1, 128)


def graph_floor_ms(graph: Any, steps: int) -> Optional[float]:
    """benchmarks/c_floor/tape_floor.c run on the recorded graph (the same ops over flat arrays
    of doubles, scalar C, gcc -O2: no node made, ordered or freed): its median ms per forward +
    backward, after checking that it gives the graph's value bit for bit. None without gcc."""
    import subprocess
    import tempfile
    from pathlib import Path

    from bench_replay import build_floor, run_floor, write_tape

    with tempfile.TemporaryDirectory() as tmp:
        try:
            exe = build_floor(Path(tmp), Path(__file__).resolve().parent / "c_floor" / "tape_floor.c")
        except (OSError, subprocess.CalledProcessError):
            return None
        write_tape(graph, Path(tmp) / "tape.txt")
        result = run_floor(exe, Path(tmp) / "tape.txt", steps)
    if result["losses"][0] != graph.forward():
        raise SystemExit("tape_floor.c does not give the graph's value: the floor would be wrong")
    return result["ms"]


def print_c_floor(reps: int) -> None:
    """benchmarks/c_floor/libm_floor.c: the least a created node can cost here (writing 64
    bytes), and the libm calls the engine must make to give Python's bits."""
    import subprocess
    import tempfile
    from pathlib import Path

    from bench_replay import build_floor

    source = Path(__file__).resolve().parent / "c_floor" / "libm_floor.c"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            exe = build_floor(Path(tmp), source)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"\nC floor: cannot build {source.name} ({exc}); skipped")
            return
        out = subprocess.run([str(exe), "1000000", str(reps)], capture_output=True, text=True,
                             check=True).stdout
    floor = dict(line.split() for line in out.splitlines())
    print(f"\nC floor, same machine ({source.name}, gcc -O2, 1,000,000 elements, ns per element): "
          f"write a 64-byte node {floor['node64']}, libm tanh {floor['tanh']}, exp {floor['exp']}, "
          f"pow(x, 2) {floor['pow']} (the functions math.tanh, math.exp and ** call) on sorted "
          f"inputs; on the same values shuffled, as the kernels above get them: tanh "
          f"{floor['tanh_shuffled']}, exp {floor['exp_shuffled']}, pow(x, 2) {floor['pow_shuffled']} "
          f"(glibc's tanh branches on |x| >= 1 and on the sign, which random inputs mispredict)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    import platform

    import micrograd  # noqa: F401 - fail early if missing
    import torch

    kernels = ""
    if michigrad.engine.ENGINE == "compiled":
        from michigrad import _engine
        kernels = f", {_engine._vector_isa()[0]} matmul kernels"
    print(f"michigrad {michigrad.__version__} ({michigrad.engine.ENGINE} engine{kernels}), "
          f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    bench_kernels(reps, "fresh arena (free slots in address order)")
    print_c_floor(reps)
    bench_workloads(reps)
    bench_more_shapes(reps)
    # Same kernels, same inputs, on the slots the workloads' graphs freed (runs of 256+ slots
    # sorted back into address order, smaller ones last freed, first reused):
    bench_kernels(reps, "after the workloads (on the slots their graphs freed)")


if __name__ == "__main__":
    main()
