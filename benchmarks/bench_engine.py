"""Side-by-side speed and memory benchmark of michigrad's engines against the alternatives.

Run from the repository root::

    python benchmarks/bench_engine.py            # N = 100,000, 7 repetitions (a few minutes)
    python benchmarks/bench_engine.py --quick    # N = 20,000, 3 repetitions
    python benchmarks/bench_engine.py --n 50000 --reps 5

Engines (each runs the very same Python expression; only the leaf type differs):

* ``compiled``  -- ``michigrad._engine.Value`` (the Cython core). If it is not built, its column
  is left out and the report says so; everything else still runs.
* ``reference`` -- ``michigrad._reference.Value`` (pure Python).
* ``micrograd`` -- Karpathy's ``micrograd.engine.Value`` 0.1.0, as users run it: garbage
  collector on, recursive ``backward()`` (so the recursion limit is raised and the benchmark runs in
  a thread with a 512 MiB stack).
* ``torch``     -- PyTorch 0-dim float64 tensors with ``requires_grad=True``.
* ``floats``    -- plain Python floats. Forward is the interpreter floor for the expression.
  Backward is a *hand-written* chain-rule loop over floats (no autograd engine at all): a floor
  for how fast any Python-level backward could be, not a competitor.

Workloads:

* W1 chain:  ``x = x * 0.999 + 0.001`` for N steps from a leaf ``x = leaf(1.0)``, then
  ``x.backward()``. Forward counts 2 ops per step.
* W3 fan-in: ``sum(a * b for a, b in zip(A, B))`` over N leaf pairs (the 2N leaves are made before
  the clock starts), then ``.backward()``. Forward counts 2 ops per term (one ``*``, one ``+``).

What is reported (medians over the repetitions):

* fwd ns/op    -- forward wall time / (2N).
* bwd ns/node  -- ``backward()`` wall time / graph nodes. Graph nodes are counted, untimed, by
  walking ``_prev`` from the root, the same way for every Value engine. Every operand is a node,
  including the constant leaf that ``x * 0.999`` creates, so both workloads have 4N + 1 nodes.
  torch and floats run the same expression and are divided by the same count (torch's own
  autograd graph is smaller -- constants are not nodes there; the report gives its size).
* fwd+bwd ms   -- the median of per-repetition forward + backward time.
* spread       -- (max - min) / median of fwd+bwd over the repetitions: how noisy it was.
* CPU ms       -- fwd+bwd median in the benchmarking thread's CPU time. Every engine computes on the
  calling thread (torch's CPU autograd included), so CPU ms well below fwd+bwd ms means other
  processes took the core away during the run.
* B/node       -- compiled: ``_arena_stats()['node_bytes']``; the others: tracemalloc peak while
  building the graph (leaves included) / nodes, in a separate untimed run. tracemalloc does not see
  torch's C++ allocations, so torch's figure there is Python-heap only (marked *).
* RSS B/node   -- growth of the process's resident memory while building the graph, measured in a
  fresh subprocess per engine and workload: a cross-check that sees every allocator.
* targets      -- compiled forward <= 3x plain floats (ns/op), compiled backward <= 20 ns/node,
  W1 forward+backward >= 100x faster than micrograd and >= 50x faster than torch. Verdicts use the
  wall-clock medians. Two cross-checks for a shared, noisy machine sit beside them: "paired" (the
  median of per-repetition ratios) and "CPU" (the same medians in the benchmarking thread's CPU
  time, which leaves out time the thread spent descheduled).

Timing hygiene: every engine gets one discarded full-size warm-up run per workload; each
repetition builds a fresh graph; dropping it (``del`` + ``gc.collect()``) happens outside the
timed region but always before the next repetition, and engines take turns within each repetition
so background noise spreads evenly. The garbage collector stays on inside the timed regions for
every engine. This script reports; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_SRC = Path(__file__).resolve().parent.parent / "src"

W1_MUL, W1_ADD = 0.999, 0.001
BIG_STACK_BYTES = 512 * 1024 * 1024

TARGETS = {
    "fwd_vs_float": 3.0,  # compiled forward ns/op <= 3x plain floats
    "bwd_ns_node": 20.0,  # compiled backward <= 20 ns/node
    "vs_micrograd": 100.0,  # W1 fwd+bwd speedup >= 100x
    "vs_torch": 50.0,  # W1 fwd+bwd speedup >= 50x
}


# --- engines -------------------------------------------------------------------------------------


@dataclass
class Engine:
    key: str
    label: str
    leaf: Callable[[float], Any]  # makes a leaf from a float
    autograd: bool = True  # False: floats, whose backward is the hand-written floor
    module: Any = None


def _import_michigrad(module: str) -> Any:
    """Import a michigrad module, from the installed package or else from the repo's src/."""
    try:
        importlib.import_module("michigrad")
    except ImportError:
        sys.path.insert(0, str(REPO_SRC))
    with warnings.catch_warnings():  # michigrad warns when falling back to the reference engine
        warnings.simplefilter("ignore", RuntimeWarning)
        return importlib.import_module(module)


def load_engine(key: str) -> Engine:
    """One engine by key; raises ImportError when it is not available."""
    if key == "compiled":
        mod = _import_michigrad("michigrad._engine")
        return Engine(key, "michigrad compiled", mod.Value, module=mod)
    if key == "reference":
        mod = _import_michigrad("michigrad._reference")
        return Engine(key, "michigrad reference", mod.Value, module=mod)
    if key == "micrograd":
        mod = importlib.import_module("micrograd.engine")
        return Engine(key, "micrograd 0.1.0", mod.Value, module=mod)
    if key == "torch":
        import torch

        def leaf(x: float) -> Any:
            return torch.tensor(x, dtype=torch.float64, requires_grad=True)

        return Engine(key, "torch 0-dim f64", leaf, module=torch)
    if key == "floats":
        return Engine(key, "python floats †", float, autograd=False)
    raise ValueError(key)


ENGINE_KEYS = ("compiled", "reference", "micrograd", "torch", "floats")


def load_engines() -> tuple[list[Engine], dict[str, str]]:
    """The engines that import, and why the others did not."""
    engines, missing = [], {}
    for key in ENGINE_KEYS:
        try:
            engines.append(load_engine(key))
        except ImportError as exc:
            missing[key] = f"{type(exc).__name__}: {exc}"
    return engines, missing


# --- workloads -----------------------------------------------------------------------------------
# Each workload: make_inputs (untimed), forward (timed), and for floats a hand-written backward
# floor with its own untimed tape.


def w1_inputs(leaf: Callable[[float], Any], n: int) -> list[Any]:
    return [leaf(1.0)]


def w1_forward(inputs: list[Any], n: int) -> Any:
    x = inputs[0]
    for _ in range(n):
        x = x * W1_MUL + W1_ADD
    return x


def w1_float_tape(inputs: list[float], n: int) -> list[float]:
    """The input of every step, which the chain rule needs (untimed)."""
    xs, x = [], inputs[0]
    for _ in range(n):
        xs.append(x)
        x = x * W1_MUL + W1_ADD
    return xs


def w1_float_backward(xs: list[float]) -> None:
    """Hand-written chain rule for W1: per step, grads of the two constants and of x."""
    g, g_mul_const, g_add_const = 1.0, 0.0, 0.0
    for x in reversed(xs):
        g_add_const += g  # d out / d 0.001
        g_mul_const += x * g  # d out / d 0.999
        g = g * W1_MUL  # d out / d x


def w3_inputs(leaf: Callable[[float], Any], n: int) -> list[Any]:
    rng = random.Random(0)
    a = [leaf(rng.uniform(-1.0, 1.0)) for _ in range(n)]
    b = [leaf(rng.uniform(-1.0, 1.0)) for _ in range(n)]
    return [a, b]


def w3_forward(inputs: list[Any], n: int) -> Any:
    a, b = inputs
    return sum(x * y for x, y in zip(a, b))


def w3_float_tape(inputs: list[Any], n: int) -> list[Any]:
    return inputs


def w3_float_backward(tape: list[Any]) -> None:
    """Hand-written chain rule for W3: d sum / d a_i = b_i, d sum / d b_i = a_i (times 1.0)."""
    a, b = tape
    g = 1.0
    grad_a = [0.0] * len(a)
    grad_b = [0.0] * len(b)
    for i in range(len(a)):
        grad_a[i] += b[i] * g
        grad_b[i] += a[i] * g


@dataclass
class Workload:
    key: str
    title: str
    make_inputs: Callable[[Callable[[float], Any], int], list[Any]]
    forward: Callable[[list[Any], int], Any]
    float_tape: Callable[[list[Any], int], Any]
    float_backward: Callable[[Any], None]


WORKLOADS = (
    Workload("W1", "chain  x = x*0.999 + 0.001", w1_inputs, w1_forward, w1_float_tape,
             w1_float_backward),
    Workload("W3", "fan-in sum(a_i*b_i)", w3_inputs, w3_forward, w3_float_tape,
             w3_float_backward),
)


def forward_ops(n: int) -> int:
    return 2 * n  # both workloads: one * and one + per step / term


# --- graph inspection (untimed) ------------------------------------------------------------------


def count_nodes(root: Any) -> int:
    """Distinct nodes reachable from root through ``_prev``, walked iteratively."""
    children_of = "_prev" if hasattr(root, "_prev") else "_children"
    seen = {root}
    stack = [root]
    while stack:
        for child in getattr(stack.pop(), children_of):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return len(seen)


def count_torch_nodes(root: Any) -> int:
    """Nodes of torch's own autograd graph (grad_fn nodes, AccumulateGrad for leaves)."""
    start = root.grad_fn
    seen = {start}
    stack = [start]
    while stack:
        for fn, _ in stack.pop().next_functions:
            if fn is not None and fn not in seen:
                seen.add(fn)
                stack.append(fn)
    return len(seen)


# --- timing --------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Per-repetition times in ns: wall clock, and CPU time of the benchmarking thread."""

    fwd_ns: list[int] = field(default_factory=list)
    bwd_ns: list[int] = field(default_factory=list)
    fwd_cpu_ns: list[int] = field(default_factory=list)
    bwd_cpu_ns: list[int] = field(default_factory=list)

    @property
    def total_ns(self) -> list[int]:
        return [f + b for f, b in zip(self.fwd_ns, self.bwd_ns)]

    @property
    def total_cpu_ns(self) -> list[int]:
        return [f + b for f, b in zip(self.fwd_cpu_ns, self.bwd_cpu_ns)]

    def add(self, fwd: tuple[int, int], bwd: tuple[int, int]) -> None:
        self.fwd_ns.append(fwd[0])
        self.fwd_cpu_ns.append(fwd[1])
        self.bwd_ns.append(bwd[0])
        self.bwd_cpu_ns.append(bwd[1])


def now() -> tuple[int, int]:
    """(wall ns, this thread's CPU ns). CPU time leaves out time spent descheduled, which on a
    shared machine is most of the noise; every engine here computes on the calling thread."""
    return time.perf_counter_ns(), time.thread_time_ns()


def since(start: tuple[int, int]) -> tuple[int, int]:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def time_once(engine: Engine, work: Workload, n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """One repetition: forward and backward (wall ns, CPU ns). Graph teardown is untimed, but
    done here."""
    gc.collect()
    inputs = work.make_inputs(engine.leaf, n)
    t0 = now()
    root = work.forward(inputs, n)
    fwd = since(t0)
    if engine.autograd:
        t0 = now()
        root.backward()
        bwd = since(t0)
    else:  # floats: the hand-written floor, on a tape recorded outside the clock
        tape = work.float_tape(inputs, n)
        t0 = now()
        work.float_backward(tape)
        bwd = since(t0)
        del tape
    del root, inputs
    gc.collect()
    return fwd, bwd


def time_workload(engines: list[Engine], work: Workload, n: int, reps: int) -> dict[str, Samples]:
    """One discarded full-size warm-up per engine (imports, caches, arena growth), then turns:
    rep 1 of each engine, rep 2 of each, ..."""
    for engine in engines:
        time_once(engine, work, n)
    samples = {e.key: Samples() for e in engines}
    for rep in range(reps):
        for engine in engines:
            samples[engine.key].add(*time_once(engine, work, n))
        print(f"  {work.key} rep {rep + 1}/{reps} done", file=sys.stderr, flush=True)
    return samples


# --- memory (untimed, separate runs) -------------------------------------------------------------


@dataclass
class GraphInfo:
    nodes: int | None = None  # walked through _prev (Value engines only)
    traced_bytes: int | None = None  # tracemalloc peak growth while building
    arena_node_bytes: int | None = None  # compiled only
    arena_live_delta: int | None = None  # compiled only
    torch_nodes: int | None = None  # torch only
    rss_bytes: int | None = None  # from the subprocess probe


def arena_stats(engine: Engine) -> dict[str, int] | None:
    stats = getattr(engine.module, "_arena_stats", None)
    return dict(stats()) if stats else None


def inspect_graph(engine: Engine, work: Workload, n: int) -> GraphInfo:
    """Build the graph once under tracemalloc, then count its nodes."""
    info = GraphInfo()
    gc.collect()
    before = arena_stats(engine)
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    inputs = work.make_inputs(engine.leaf, n)
    root = work.forward(inputs, n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    info.traced_bytes = peak - start
    after = arena_stats(engine)
    if before is not None and after is not None:
        info.arena_node_bytes = after.get("node_bytes")
        if "live" in after:
            info.arena_live_delta = after["live"] - before["live"]
    if engine.key == "torch":
        info.torch_nodes = count_torch_nodes(root)
    elif engine.autograd:
        info.nodes = count_nodes(root)
    del root, inputs
    gc.collect()
    return info


def current_rss() -> int | None:
    """Resident set size of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def rss_probe(engine_key: str, work_key: str, n: int) -> None:
    """Subprocess mode: print the RSS growth of building one graph, then exit without teardown."""
    engine = load_engine(engine_key)
    work = next(w for w in WORKLOADS if w.key == work_key)
    work.forward(work.make_inputs(engine.leaf, 100), 100)  # first-call allocations out of the way
    gc.collect()
    before = current_rss()
    inputs = work.make_inputs(engine.leaf, n)
    root = work.forward(inputs, n)
    after = current_rss()
    delta = None if before is None or after is None else after - before
    print(json.dumps({"rss_bytes": delta, "root": type(root).__name__}), flush=True)
    os._exit(0)  # skip tearing down a deep graph at interpreter exit


def measure_rss(engine_key: str, work_key: str, n: int) -> int | None:
    """RSS growth of building the graph in a fresh interpreter, or None if the probe fails."""
    cmd = [sys.executable, __file__, "--rss-probe", engine_key, work_key, str(n)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["rss_bytes"]
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


# --- report --------------------------------------------------------------------------------------


def median(xs: list[int]) -> float:
    return statistics.median(xs)


def fmt(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_header(args: argparse.Namespace, engines: list[Engine], missing: dict[str, str]) -> None:
    print("# michigrad engine benchmark\n")
    print(f"- date:      {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"- machine:   {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}")
    print(f"- python:    {platform.python_implementation()} {platform.python_version()} "
          f"({sys.executable})")
    torch_mod = next((e.module for e in engines if e.key == "torch"), None)
    torch_info = (f"{torch_mod.__version__} (intra-op threads: {torch_mod.get_num_threads()})"
                  if torch_mod else "not importable")
    print(f"- libraries: torch {torch_info}, micrograd {version_of('micrograd')}, "
          f"Cython {version_of('Cython')}")
    mich = sys.modules.get("michigrad")
    if mich is not None:
        print(f"- michigrad: {getattr(mich, '__version__', '?')} from {Path(mich.__file__).parent}")
    compiled = next((e for e in engines if e.key == "compiled"), None)
    if compiled is not None:
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(
            compiled.module.__file__)))
        print(f"- compiled:  {compiled.module.__file__} (built {built})")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"- load avg:  {load} (1/5/15 min, at start; > CPU count means contended timings)")
    print(f"- run:       N = {args.n:,}, {args.reps} repetitions per engine and workload "
          "(medians reported), gc on in timed regions")
    for key, why in missing.items():
        note = "compiled engine not built" if key == "compiled" else f"{key} unavailable"
        print(f"- NOTE: {note} -- its column is omitted ({why})")
    print(flush=True)


def graph_nodes(infos: dict[str, GraphInfo]) -> int | None:
    """The Value-graph node count shared by every engine (they run the same expression)."""
    counts = {k: i.nodes for k, i in infos.items() if i.nodes is not None}
    for key in ("reference", "micrograd", "compiled"):
        if key in counts:
            return counts[key]
    return None


def engine_row(engine: Engine, s: Samples, info: GraphInfo, nodes: int, n: int) -> list[str]:
    fwd = median(s.fwd_ns) / forward_ops(n)
    bwd = median(s.bwd_ns) / nodes
    total = median(s.total_ns)
    total_cpu = median(s.total_cpu_ns)
    spread = (max(s.total_ns) - min(s.total_ns)) / total if total else 0.0
    if engine.key == "compiled" and info.arena_node_bytes is not None:
        mem = f"{info.arena_node_bytes} (arena)"
    elif engine.key == "floats" or info.traced_bytes is None:
        mem = "—"
    else:
        mem = fmt(info.traced_bytes / nodes, ".0f", "*" if engine.key == "torch" else "")
    rss = "—" if info.rss_bytes is None else f"{info.rss_bytes / nodes:.0f}"
    node_str = f"{info.nodes:,}" if info.nodes is not None else f"({nodes:,})"
    return [engine.label, fmt(fwd), fmt(bwd), fmt(total / 1e6, ".2f"), f"{spread:.0%}",
            fmt(total_cpu / 1e6, ".2f"), node_str, mem, rss]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"
    print(line(header))
    print("|" + "|".join(("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1))
                         for i, w in enumerate(widths)) + "|")
    for row in rows:
        print(line(row))


def print_workload(work: Workload, engines: list[Engine], samples: dict[str, Samples],
                   infos: dict[str, GraphInfo], n: int) -> None:
    nodes = graph_nodes(infos)
    print(f"## {work.key}: {work.title}, N = {n:,} "
          f"({forward_ops(n):,} forward ops, {nodes:,} graph nodes)\n")
    header = ["engine", "fwd ns/op", "bwd ns/node", "fwd+bwd ms", "spread", "CPU ms", "nodes",
              "B/node", "RSS B/node"]
    rows = [engine_row(e, samples[e.key], infos[e.key], nodes, n) for e in engines]
    print_table(header, rows)
    notes = []
    counts = {k: i.nodes for k, i in infos.items() if i.nodes is not None}
    if len(set(counts.values())) > 1:
        notes.append(f"WARNING: engines disagree on the node count: {counts}")
    c = infos.get("compiled")
    if c is not None:
        if c.arena_live_delta is not None:
            notes.append(f"compiled: arena 'live' grew by {c.arena_live_delta:,} nodes while "
                         f"building (walked: {c.nodes:,})")
        if c.traced_bytes is not None:
            traced = c.traced_bytes / nodes
            notes.append(f"compiled: tracemalloc sees {traced:.0f} B/node of Python "
                         "objects (handles the workload holds, e.g. W3's leaf lists); the arena "
                         "itself is malloc'd, outside tracemalloc -- see RSS")
    t = infos.get("torch")
    if t is not None and t.torch_nodes is not None:
        notes.append(f"torch's own autograd graph has {t.torch_nodes:,} nodes (constants are not "
                     f"nodes); per-node figures above use the common count {nodes:,}")
    for note in notes:
        print(f"- {note}")
    print(flush=True)


def ratio(num: list[int] | None, den: list[int] | None) -> tuple[float | None, float | None]:
    """(ratio of the medians, median of the per-repetition ratios). Engines take turns within a
    repetition, so the paired figure cancels slow drifts in machine load."""
    if not num or not den:
        return None, None
    paired = statistics.median(a / b for a, b in zip(num, den))
    return median(num) / median(den), paired


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "FAIL"


def ratio_rows(samples: dict[str, dict[str, Samples]], infos: dict[str, dict[str, GraphInfo]],
               n: int) -> list[list[str]]:
    """Target checks and informative ratios: [measure, wall medians, wall paired, CPU medians,
    target, verdict]. Verdicts are judged on the wall-clock medians."""
    def get(w: str, e: str, what: str) -> list[int] | None:
        s = samples[w].get(e)
        return getattr(s, what) if s else None

    def compare(w: str, num: str, den: str, what: str,
                spec: str) -> tuple[list[str], float | None]:
        wall, paired = ratio(get(w, num, what), get(w, den, what))
        cpu, _ = ratio(get(w, num, what.replace("_ns", "_cpu_ns")),
                       get(w, den, what.replace("_ns", "_cpu_ns")))
        return [fmt(wall, spec, "x"), fmt(paired, spec, "x"), fmt(cpu, spec, "x")], wall

    rows = []
    for w in ("W1", "W3"):  # the same op count on both sides, so ns/op ratio = time ratio
        cells, r = compare(w, "compiled", "floats", "fwd_ns", ".2f")
        rows.append([f"{w} fwd ns/op: compiled ÷ python floats", *cells, "<= 3x",
                     verdict(r, TARGETS["fwd_vs_float"], False)])
    for w in ("W1", "W3"):
        nodes = graph_nodes(infos[w])
        wall, cpu = get(w, "compiled", "bwd_ns"), get(w, "compiled", "bwd_cpu_ns")
        b = median(wall) / nodes if wall and nodes else None
        b_cpu = median(cpu) / nodes if cpu and nodes else None
        rows.append([f"{w} bwd ns/node: compiled", fmt(b, ".1f"), "—", fmt(b_cpu, ".1f"),
                     "<= 20", verdict(b, TARGETS["bwd_ns_node"], False)])
    for other, key in (("micrograd", "vs_micrograd"), ("torch", "vs_torch")):
        cells, r = compare("W1", other, "compiled", "total_ns", ".0f")
        rows.append([f"W1 fwd+bwd speedup: compiled vs {other}", *cells,
                     f">= {TARGETS[key]:.0f}x", verdict(r, TARGETS[key], True)])
    informative = [("W1", "compiled", "reference")] + [
        ("W3", "compiled", other) for other in ("micrograd", "torch", "reference")
    ] + [(w, "reference", "micrograd") for w in ("W1", "W3")]
    for w, fast, slow in informative:
        cells, _ = compare(w, slow, fast, "total_ns", ".0f" if fast == "compiled" else ".2f")
        rows.append([f"{w} fwd+bwd speedup: {fast} vs {slow}", *cells, "—", "info"])
    return rows


LEGEND = (
    "fwd ns/op = forward time / (2N); bwd ns/node = backward() time / graph nodes (walked via "
    "_prev, constants included, the same count for every engine; in parentheses for engines "
    "without a _prev graph); fwd+bwd ms = median of per-repetition totals",
    "spread = (max - min) / median of fwd+bwd; CPU ms = fwd+bwd median in the benchmarking "
    "thread's CPU time (leaves out time other processes took)",
    "B/node = arena node size (compiled) or tracemalloc peak / nodes (others; * = torch: Python "
    "heap only); RSS B/node = resident-memory growth while building, in a fresh process",
    "targets table: 'wall: medians' = from the wall-clock medians (verdicts use these); "
    "'wall: paired' = median of per-repetition ratios; 'CPU: medians' = from thread CPU time",
    "† python floats: forward is the plain-float interpreter floor; backward is a hand-written "
    "Python chain-rule loop over floats (not autograd), a floor for reference",
)


def print_footer(missing: dict[str, str]) -> None:
    print("Legend:")
    for line in LEGEND:
        print(f"- {line}")
    if "compiled" in missing:
        print("\nNOTE: compiled engine not built -- its column and the targets are n/a. Build it "
              "with `pip install -e .` and re-run.")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 20,000 and 3 repetitions")
    p.add_argument("--n", type=int, help="steps / terms per workload (default 100,000)")
    p.add_argument("--reps", type=int, help="repetitions per engine and workload (default 7)")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS subprocess probes")
    p.add_argument("--rss-probe", nargs=3, metavar=("ENGINE", "WORKLOAD", "N"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.n = args.n or (20_000 if args.quick else 100_000)
    args.reps = args.reps or (3 if args.quick else 7)
    return args


def run(args: argparse.Namespace) -> None:
    engines, missing = load_engines()
    print_header(args, engines, missing)
    samples: dict[str, dict[str, Samples]] = {}
    infos: dict[str, dict[str, GraphInfo]] = {}
    for work in WORKLOADS:
        samples[work.key] = time_workload(engines, work, args.n, args.reps)
        infos[work.key] = {e.key: inspect_graph(e, work, args.n) for e in engines}
        if not args.no_rss:
            for e in engines:
                if e.autograd:
                    infos[work.key][e.key].rss_bytes = measure_rss(e.key, work.key, args.n)
        print_workload(work, engines, samples[work.key], infos[work.key], args.n)
    print("## Targets and ratios (compiled = michigrad._engine)\n")
    header = ["measure", "wall: medians", "wall: paired", "CPU: medians", "target", "verdict"]
    print_table(header, ratio_rows(samples, infos, args.n))
    print()
    print_footer(missing)


def run_in_big_stack_thread(fn: Callable[[], None]) -> None:
    """micrograd's backward() recurses once per graph level; give it room to do so."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threading.stack_size(BIG_STACK_BYTES)
    thread = threading.Thread(target=target, name="bench")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.rss_probe:
        engine_key, work_key, n = args.rss_probe
        rss_probe(engine_key, work_key, int(n))
        return
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * args.n + 10_000))
    run_in_big_stack_thread(lambda: run(args))


if __name__ == "__main__":
    main(sys.argv[1:])
