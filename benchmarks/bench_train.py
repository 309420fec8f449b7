"""W2: one full training step of micrograd's demo, michigrad against its peers, side by side.

Run from the repository root::

    python benchmarks/bench_train.py             # MLP(2,[16,16,1]) (5 reps), MLP(2,[64,64,1]) (3)
    python benchmarks/bench_train.py --quick     # 3 reps on the small model, 1 on the wide one
    python benchmarks/bench_train.py --reps 7 --sizes 16

A step is what micrograd's ``demo.ipynb`` does once per iteration, on all 100 two-moons samples:
wrap the inputs in Values, forward through the MLP, SVM max-margin loss + 1e-4 L2, ``zero_grad``,
``backward``, SGD update. Every contender runs the very same Python code; only the scalar type
and the model classes differ:

* ``michigrad``      -- ``michigrad.nn.MLP`` on ``michigrad.engine.Value`` (the compiled core when
  it is built; the header says which engine is active).
* ``michigrad API``  -- the same step written with michigrad's library: ``losses.hinge_loss`` and
  ``optim.SGD`` (should cost the same as the line above).
* ``micrograd``      -- Karpathy's micrograd 0.1.0, garbage collector on, as users run it.
* ``micrograd gc-off`` -- the same with ``gc.disable()`` during the step (its reference cycles are
  collected afterwards, outside the clock).
* ``torch scalars``  -- PyTorch with 0-dim float64 tensors, micrograd-style code, ``p.grad = None``
  as zero_grad and the update under ``torch.no_grad()``.
* ``floats fwd``     -- the forward pass and loss on plain Python floats: the interpreter's floor
  for the forward alone (no graph, no backward), not a competitor.

Reported, per model size: ms per step (median over the repetitions, and the best one; spread =
(max - min) / median; ratios use the medians), graph nodes per step (reachable from the loss,
counted the same way for every Value engine, untimed; torch's autograd graph is counted
separately), and the peak growth of resident memory (VmHWM) over three steps, measured in a fresh
subprocess per contender.

Timing hygiene: contenders take turns within each repetition, so background noise spreads evenly;
each timed step follows an untimed step of the same contender, as steps follow each other in a
training loop (the timed one does not pay for caches another contender has just flushed);
``gc.collect()`` runs outside the clock after every step, so no contender pays for another's
garbage. Everything runs in a thread with a 512 MiB stack and a high recursion limit, because
micrograd's recursive ``backward()`` needs it on the wide model. On a shared machine, read the
spread column before trusting a ratio. This script reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_SRC = Path(__file__).resolve().parent.parent / "src"
if str(REPO_SRC) not in sys.path:
    sys.path.insert(0, str(REPO_SRC))

ALPHA = 1e-4
BIG_STACK_BYTES = 512 * 1024 * 1024
TARGETS = {"micrograd": 100.0, "micrograd gc-off": 10.0}  # michigrad should be this many times faster


# ================================================================================ the data

def moons() -> tuple[list[list[float]], list[int]]:
    """micrograd's demo data (seed 1337), labels ±1, as plain Python lists."""
    import numpy as np

    from michigrad.datasets import make_moons

    np.random.seed(1337)
    X, y = make_moons(n_samples=100, noise=0.1)
    return X.tolist(), [int(v) for v in y * 2 - 1]


# ======================================================================= the contenders

def value_step(V: type, model: Any, X: list, y: list, k: int) -> Any:
    """micrograd's demo step, verbatim (V is the Value class)."""
    inputs = [list(map(V, xrow)) for xrow in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = ALPHA * sum((p * p for p in model.parameters()))
    total_loss = data_loss + reg_loss
    model.zero_grad()
    total_loss.backward()
    learning_rate = 1.0 - 0.9 * k / 100
    for p in model.parameters():
        p.data -= learning_rate * p.grad
    return total_loss


class Contender:
    """A model of one kind, and its training step."""

    name = ""
    note = ""

    def __init__(self, width: int, seed: int = 1337) -> None:
        self.width = width
        self.X, self.y = moons()
        random.seed(seed)
        self.setup()
        self.k = 0

    def setup(self) -> None:
        raise NotImplementedError

    def step(self) -> Any:
        """One training step; returns the loss (its graph root)."""
        raise NotImplementedError

    def timed_step(self) -> tuple[float, Any]:
        start = time.perf_counter()
        out = self.step()
        elapsed = time.perf_counter() - start
        self.k = (self.k + 1) % 100
        return elapsed, out


class Michigrad(Contender):
    name = "michigrad"

    def setup(self) -> None:
        from michigrad.engine import Value
        from michigrad.nn import MLP

        self.V, self.model = Value, MLP(2, [self.width, self.width, 1])

    def step(self) -> Any:
        return value_step(self.V, self.model, self.X, self.y, self.k)


class MichigradAPI(Michigrad):
    name = "michigrad API"
    note = "losses.hinge_loss + optim.SGD"

    def setup(self) -> None:
        super().setup()
        from michigrad.losses import hinge_loss
        from michigrad.optim import SGD

        self.hinge_loss = hinge_loss
        self.optimizer = SGD(self.model.parameters(), lr=1.0)

    def step(self) -> Any:
        V, model = self.V, self.model
        scores = [model(list(map(V, xrow))) for xrow in self.X]
        total_loss = self.hinge_loss(scores, self.y) + ALPHA * sum(p * p for p in model.parameters())
        self.optimizer.zero_grad()
        total_loss.backward()
        self.optimizer.lr = 1.0 - 0.9 * self.k / 100
        self.optimizer.step()
        return total_loss


class Micrograd(Contender):
    name = "micrograd"
    note = "gc on"

    def setup(self) -> None:
        from micrograd.engine import Value
        from micrograd.nn import MLP

        self.V, self.model = Value, MLP(2, [self.width, self.width, 1])

    def step(self) -> Any:
        return value_step(self.V, self.model, self.X, self.y, self.k)


class MicrogradNoGC(Micrograd):
    name = "micrograd gc-off"
    note = "gc.disable() in the step"

    def step(self) -> Any:
        gc.disable()
        try:
            return super().step()
        finally:
            gc.enable()


class TorchScalars(Contender):
    name = "torch scalars"
    note = "0-dim float64 tensors"

    def setup(self) -> None:
        import torch

        self.torch = torch
        torch.set_num_threads(1)
        sz = [2, self.width, self.width, 1]
        self.layers = []  # [(weights per neuron, bias per neuron, nonlin)]
        for i in range(3):  # micrograd's draws, in micrograd's order
            neurons = []
            for _ in range(sz[i + 1]):
                w = [torch.tensor(random.uniform(-1, 1), dtype=torch.float64, requires_grad=True)
                     for _ in range(sz[i])]
                b = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
                neurons.append((w, b))
            self.layers.append((neurons, i != 2))
        self.params = [p for neurons, _ in self.layers for w, b in neurons for p in w + [b]]

    def model(self, x: list) -> Any:
        for neurons, nonlin in self.layers:
            out = []
            for w, b in neurons:
                act = sum((wi * xi for wi, xi in zip(w, x)), b)
                out.append(act.relu() if nonlin else act)
            x = out
        return x[0]

    def step(self) -> Any:
        torch = self.torch
        inputs = [[torch.tensor(v, dtype=torch.float64) for v in xrow] for xrow in self.X]
        scores = list(map(self.model, inputs))
        losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(self.y, scores)]
        data_loss = sum(losses) * (1.0 / len(losses))
        reg_loss = ALPHA * sum((p * p for p in self.params))
        total_loss = data_loss + reg_loss
        for p in self.params:
            p.grad = None
        total_loss.backward()
        learning_rate = 1.0 - 0.9 * self.k / 100
        with torch.no_grad():
            for p in self.params:
                p -= learning_rate * p.grad
        return total_loss


class FloatsForward(Contender):
    name = "floats fwd"
    note = "forward + loss only"

    def setup(self) -> None:
        sz = [2, self.width, self.width, 1]
        self.layers = [([[random.uniform(-1, 1) for _ in range(sz[i])] for _ in range(sz[i + 1])],
                        [0] * sz[i + 1], i != 2) for i in range(3)]
        self.params = [v for ws, bs, _ in self.layers for w in ws for v in w] + \
            [b for _, bs, _ in self.layers for b in bs]

    def model(self, x: list) -> float:
        for ws, bs, nonlin in self.layers:
            out = []
            for w, b in zip(ws, bs):
                act = sum((wi * xi for wi, xi in zip(w, x)), b)
                out.append((act if act > 0 else 0) if nonlin else act)
            x = out
        return x[0]

    def step(self) -> float:
        scores = list(map(self.model, self.X))
        losses = [max(0, 1 + -yi * s) for yi, s in zip(self.y, scores)]
        return sum(losses) * (1.0 / len(losses)) + ALPHA * sum(p * p for p in self.params)


CONTENDERS: dict[str, type[Contender]] = {c.name: c for c in (
    Michigrad, MichigradAPI, Micrograd, MicrogradNoGC, TorchScalars, FloatsForward)}


# ========================================================================= measuring

def count_value_nodes(root: Any) -> int:
    """Nodes reachable from root through _prev (iterative: the graphs are deep)."""
    seen, stack = {id(root)}, [root]
    keep = [root]  # keep objects alive so ids stay unique
    while stack:
        v = stack.pop()
        for c in v._prev:
            if id(c) not in seen:
                seen.add(id(c))
                keep.append(c)
                stack.append(c)
    return len(seen)


def count_torch_nodes(root: Any) -> int:
    seen, stack = set(), [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


def nodes_per_step(name: str, width: int) -> int | None:
    c = CONTENDERS[name](width)
    out = c.step()
    if name == "floats fwd":
        return None
    if name == "torch scalars":
        return count_torch_nodes(out)
    return count_value_nodes(out)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark (VmHWM). Not ru_maxrss: after fork that
    starts from the parent's peak, so a child spawned by a big benchmark would report it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_child(name: str, width: int, steps: int) -> None:
    """(In a fresh process.) Print the peak RSS growth over `steps` training steps."""
    c = CONTENDERS[name](width)
    gc.collect()
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = rss_bytes()
    for _ in range(steps):
        out = c.step()
        del out
    print(json.dumps({"peak_growth": max(0, peak_rss_bytes() - before)}))


def peak_memory(name: str, width: int) -> int | None:
    run = subprocess.run([sys.executable, __file__, "--memory-child", name, str(width)],
                         capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        print(f"  (memory of {name} failed: {run.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_growth"]


def in_big_stack(fn: Callable[[], Any]) -> Any:
    """Run fn in a thread with a big stack and recursion limit (micrograd's backward recurses)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threading.stack_size(BIG_STACK_BYTES)
    sys.setrecursionlimit(1_000_000)
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def bench_size(width: int, names: list[str], reps: int) -> dict[str, dict[str, Any]]:
    contenders = {name: CONTENDERS[name](width) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for c in contenders.values():  # warm-up: one untimed step each
        c.timed_step()
        gc.collect()
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]  # take turns going first
        for name in order:
            # an untimed step first: in a training loop steps run back to back, so the timed
            # one should not pay for the caches another contender has just flushed
            _, out = contenders[name].timed_step()
            del out
            gc.collect()
            elapsed, out = contenders[name].timed_step()
            del out
            gc.collect()  # outside the clock: nobody pays for another's garbage
            times[name].append(elapsed)
        print(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{n} {1000 * times[n][-1]:.1f} ms"
                                                     for n in names), flush=True)
    results = {}
    for name in names:
        ts = times[name]
        med = statistics.median(ts)
        results[name] = {"ms": 1000 * med, "best": 1000 * min(ts),
                         "spread": (max(ts) - min(ts)) / med if med else 0.0}
    return results


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=None,
                        help="timed steps per contender (median); default 5, 3 for widths > 16")
    parser.add_argument("--quick", action="store_true",
                        help="3 reps on the small model, 1 on the wide one, no memory runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64],
                        help="hidden widths w of MLP(2, [w, w, 1]) (default 16 64)")
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS),
                        help="contenders to run (default all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-child", nargs=2, metavar=("NAME", "WIDTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, width = args.memory_child
        in_big_stack(lambda: peak_memory_child(name, int(width), 3))
        return

    import michigrad

    print("W2: one training step of micrograd's demo (100 samples, hinge + L2, backward, SGD)")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
          f"michigrad {michigrad.__version__} (engine: {michigrad.ENGINE}), micrograd "
          f"{version('micrograd')}, torch {version('torch')}")
    names = args.only
    rows = []
    for width in args.sizes:
        if args.quick:
            reps = 3 if width <= 16 else 1
        else:
            reps = args.reps or (5 if width <= 16 else 3)
        nparams = (2 * width + width) + (width * width + width) + (width + 1)
        print(f"\nMLP(2, [{width}, {width}, 1]), {nparams} parameters, {reps} reps")
        timing = in_big_stack(lambda: bench_size(width, names, reps))
        nodes = {n: in_big_stack(lambda n=n: nodes_per_step(n, width)) for n in names}
        memory = {}
        if not (args.quick or args.no_memory):
            memory = {n: peak_memory(n, width) for n in names}
        rows.append((width, nparams, timing, nodes, memory))

    base = "michigrad"
    for width, nparams, timing, nodes, memory in rows:
        print(f"\n== MLP(2, [{width}, {width}, 1]) ({nparams} params): ms per training step ==")
        print(f"{'contender':<18}{'ms/step':>10}{'best':>9}{'spread':>8}{'nodes/step':>12}"
              f"{'peak RSS':>11}{'michigrad is':>15}  note")
        for name in names:
            t = timing[name]
            ratio = ""
            if base in timing and name != base:
                ratio = f"{t['ms'] / timing[base]['ms']:.1f}x faster"
                if t["ms"] < timing[base]["ms"]:
                    ratio = f"{timing[base]['ms'] / t['ms']:.1f}x slower"
            n = nodes.get(name)
            note = CONTENDERS[name].note + (" (autograd nodes)" if name == "torch scalars" else "")
            print(f"{name:<18}{t['ms']:>10.2f}{t['best']:>9.2f}{t['spread'] * 100:>7.0f}%"
                  f"{(n if n else '-'):>12}"
                  f"{fmt_bytes(memory.get(name)):>11}{ratio:>15}  {note}")
        if base in timing:
            for name, target in TARGETS.items():
                if name in timing:
                    got = timing[name]["ms"] / timing[base]["ms"]
                    verdict = "met" if got >= target else "NOT met"
                    print(f"target: >= {target:.0f}x faster than {name}: {got:.1f}x ({verdict})")


if __name__ == "__main__":
    main()
