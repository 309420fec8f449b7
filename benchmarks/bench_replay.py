"""W2 replayed: micrograd's demo training step through ``michigrad.Graph``, against the same step
built dynamically, micrograd, and a plain C program running the same tape (the physical floor).

Run from the repository root (needs gcc; numpy and micrograd 0.1.0 as for bench_train.py)::

    python benchmarks/bench_replay.py                 # MLP(2,[16,16,1]) and MLP(2,[64,64,1])
    python benchmarks/bench_replay.py --quick         # fewer repetitions
    python benchmarks/bench_replay.py --callgrind     # also instructions per step (valgrind)

The step is micrograd's ``demo.ipynb`` iteration on all 100 two-moons samples: forward, SVM
max-margin loss + 1e-4 L2, zero_grad, backward, SGD with micrograd's schedule
(lr = 1 - 0.9*k/100). Rows:

* ``michigrad replay``     -- ``Graph.train_step(lr)``: the graph recorded once, each step
  forward + zero grads + backward + update in one C call (the fastest path).
* ``michigrad replay SGD`` -- ``Graph.step(optim.SGD)``: the optimiser path (C fast path).
* ``michigrad dynamic``    -- bench_train.py's ``michigrad`` row: the graph built in Python
  every step (micrograd's code, michigrad's Value).
* ``micrograd``            -- bench_train.py's ``micrograd`` row: Karpathy's micrograd 0.1.0.
* ``C floor``              -- benchmarks/c_floor/tape_floor.c, compiled here with
  ``gcc -O2 -ffp-contract=off``: the same tape (``Graph.export_tape()``, written to a file) over
  flat arrays of doubles, timed inside the C program.

Timing: the slow rows use bench_train.py's protocol (turns, an untimed step before each timed
one, gc outside the clock). The fast rows take turns in rounds of 100 consecutive steps each
(9 rounds, 3 with --quick); their ms/step is the median over rounds of each round's median,
"best" the fastest single step. Before timing, the script checks bit-identity: replay vs the
dynamic build (losses and parameters of the first steps) and vs the C floor (every loss of 100
steps and every final parameter). It reports; it asserts nothing. Ratios use medians; on a
shared machine compare the spread and the best steps, or use ``--callgrind`` (instructions are
repeatable where seconds are not).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_train  # noqa: E402  (the W2 workload: data, dynamic step, contenders)

from michigrad import Graph, __version__  # noqa: E402  (bench_train put src/ on the path)
from michigrad.engine import ENGINE, Value  # noqa: E402
from michigrad.nn import MLP  # noqa: E402
from michigrad.optim import SGD  # noqa: E402

C_SOURCE = HERE / "c_floor" / "tape_floor.c"
C_OPS = {"+": 1, "*": 2, "**c": 3, "exp": 5, "log": 6, "tanh": 7, "ReLU": 8, "sigmoid": 9,
         "abs": 10, "linear": 12, "sum": 13}  # tape_floor.c's enum
TARGETS = {"micrograd": 1000.0}  # replay should be this many times faster
FLOOR_FACTOR = 3.0  # ... and within this factor of the C floor


# =============================================================================== the graph

def demo_graph(width: int, X: list, y: list) -> tuple[MLP, Value]:
    """micrograd's demo loss on MLP(2, [width, width, 1]), built once (bench_train's step, as
    value_step writes it) -- the graph every replay re-runs."""
    model = MLP(2, [width, width, 1])
    inputs = [list(map(Value, xrow)) for xrow in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = bench_train.ALPHA * sum((p * p for p in model.parameters()))
    return model, data_loss + reg_loss


class Replay(bench_train.Contender):
    name = "michigrad replay"
    note = "Graph.train_step(lr), one C call"

    def setup(self) -> None:
        self.model, loss = demo_graph(self.width, self.X, self.y)
        self.graph = Graph(loss, params=self.model.parameters())

    def step(self) -> Any:
        return self.graph.train_step(1.0 - 0.9 * self.k / 100)


class ReplaySGD(Replay):
    name = "michigrad replay SGD"
    note = "Graph.step(optim.SGD)"

    def setup(self) -> None:
        super().setup()
        self.optimizer = SGD(self.model.parameters(), lr=1.0)

    def step(self) -> Any:
        self.optimizer.lr = 1.0 - 0.9 * self.k / 100
        return self.graph.step(self.optimizer)


# =============================================================================== the C floor

def build_floor(workdir: Path, source: Path = C_SOURCE) -> Path:
    """Compile one of benchmarks/c_floor/*.c into workdir (as the engine is: no FMA contraction)."""
    exe = workdir / source.stem
    subprocess.run(["gcc", "-O2", "-ffp-contract=off", "-o", str(exe), str(source), "-lm"],
                   check=True)
    return exe


def write_tape(graph: Graph, path: Path) -> None:
    """The tape in tape_floor.c's text format (floats as repr: they read back exactly)."""
    t = graph.export_tape()
    for label, code in C_OPS.items():
        if t["op_codes"][label] != code:
            raise SystemExit(f"tape_floor.c's op code for {label!r} is {code}, the engine's "
                             f"{t['op_codes'][label]}: update the C enum")
    unsupported = set(t["ops"]) - set(C_OPS.values())
    if unsupported:
        raise SystemExit(f"the tape has ops tape_floor.c does not implement: {unsupported}")
    lines = [f"{len(t['data'])} {t['nleaves']} {len(t['kids'])} {len(t['params'])} {t['output']}",
             " ".join(repr(float(x)) for x in t["data"]),
             " ".join(map(str, t["ops"])),
             " ".join(repr(float(x)) for x in t["aux"]),
             " ".join(map(str, t["kid_start"])),
             " ".join(map(str, t["kids"])),
             " ".join(map(str, t["params"]))]
    path.write_text("\n".join(lines) + "\n")


def run_floor(exe: Path, tape: Path, steps: int) -> dict[str, Any]:
    out = subprocess.run([str(exe), str(tape), str(steps)], capture_output=True, text=True,
                         check=True).stdout
    losses = [float.fromhex(m) for m in re.findall(r"^loss \d+ (\S+)$", out, re.M)]
    params = [float.fromhex(m) for m in re.findall(r"^param \d+ (\S+)$", out, re.M)]
    timing = re.search(r"^ms_per_step (\S+) (\S+)$", out, re.M)
    return {"losses": losses, "params": params,
            "ms": float(timing.group(1)) if timing else None,
            "best": float(timing.group(2)) if timing else None}


# =============================================================================== checks

def check_bits(width: int, exe: Path, workdir: Path, dynamic_steps: int) -> list[str]:
    """Replay against the dynamic build and the C floor; returns the verdict lines."""
    verdicts = []
    replay = Replay(width)
    dynamic = bench_train.CONTENDERS["michigrad"](width)
    same = all(replay.timed_step()[1] == dynamic.timed_step()[1].data for _ in range(dynamic_steps))
    same = same and all(a.data == b.data for a, b in zip(replay.model.parameters(),
                                                         dynamic.model.parameters()))
    verdicts.append(f"replay vs dynamic build, {dynamic_steps} steps (losses, parameters): "
                    + ("same bits" if same else "DIFFERENT"))
    replay = Replay(width)
    tape = workdir / f"w{width}.tape"
    write_tape(replay.graph, tape)
    floor = run_floor(exe, tape, 100)
    losses = [replay.timed_step()[1] for _ in range(100)]
    params = [p.data for p in replay.model.parameters()]
    same = losses == floor["losses"] and params == floor["params"]
    verdicts.append("replay vs C floor, 100 steps (every loss, every final parameter): "
                    + ("same bits" if same else "DIFFERENT"))
    return verdicts


# =============================================================================== timing

def time_fast(contender: bench_train.Contender, steps: int) -> dict[str, float]:
    """Median and best of `steps` consecutive training steps, in ms."""
    times = []
    gc.collect()
    for _ in range(steps):
        times.append(contender.timed_step()[0])
    return {"ms": 1000 * statistics.median(times), "best": 1000 * min(times)}


def bench_width(width: int, exe: Path, workdir: Path, reps: int, steps: int,
                rounds: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    tape = workdir / f"w{width}.tape"
    write_tape(Replay(width).graph, tape)
    fast = {"michigrad replay": Replay(width), "michigrad replay SGD": ReplaySGD(width)}
    floor_runs, fast_runs = [], {name: [] for name in fast}
    for _ in range(rounds):  # take turns, so background noise spreads over every row
        for name, contender in fast.items():
            fast_runs[name].append(time_fast(contender, steps))
        floor_runs.append(run_floor(exe, tape, steps))
    for name, runs in fast_runs.items():
        ms = [r["ms"] for r in runs]
        results[name] = {"ms": statistics.median(ms), "best": min(r["best"] for r in runs),
                         "spread": (max(ms) - min(ms)) / statistics.median(ms)}
    floor_ms = [r["ms"] for r in floor_runs]
    results["C floor"] = {"ms": statistics.median(floor_ms), "best": min(r["best"] for r in floor_runs),
                          "spread": (max(floor_ms) - min(floor_ms)) / statistics.median(floor_ms)}
    slow = bench_train.in_big_stack(lambda: bench_train.bench_size(width, ["michigrad", "micrograd"],
                                                                   reps))
    results["michigrad dynamic"] = slow["michigrad"]
    results["micrograd"] = slow["micrograd"]
    return results


# =============================================================================== callgrind

CALLGRIND_PROGRAM = """
import sys
sys.path.insert(0, sys.argv[3])
import bench_replay
width, steps = int(sys.argv[1]), int(sys.argv[2])
r = bench_replay.Replay(width)
for _ in range(steps):
    r.step()
"""


def instructions(cmd: list[str]) -> int:
    """Instructions the command executes under callgrind (a fixed hash seed: the set-up that
    the 0-step run subtracts must cost the same)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                         capture_output=True, text=True, check=True, env=env)
    return int(re.search(r"refs:\s+([\d,]+)", run.stderr).group(1).replace(",", ""))


def callgrind_per_step(width: int, exe: Path, workdir: Path, steps: int) -> tuple[float, float]:
    tape = workdir / f"w{width}.tape"
    replay = [sys.executable, "-c", CALLGRIND_PROGRAM, str(width)]
    ours = (instructions(replay + [str(steps), str(HERE)])
            - instructions(replay + ["0", str(HERE)])) / steps
    floor = (instructions([str(exe), str(tape), str(steps)])
             - instructions([str(exe), str(tape), "0"])) / steps
    return ours, floor


# =============================================================================== main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per step (replay vs C floor) with valgrind")
    args = parser.parse_args()
    print("W2 replayed: micrograd's demo training step (100 samples, hinge + L2, backward, SGD)")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
          f"michigrad {__version__} (engine: {ENGINE}), micrograd {bench_train.version('micrograd')}")
    if ENGINE != "compiled":
        raise SystemExit("bench_replay.py needs the compiled engine")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        exe = build_floor(workdir)
        tables = []
        for width in args.sizes:
            nparams = (2 * width + width) + (width * width + width) + (width + 1)
            reps = (3 if width <= 16 else 1) if args.quick else (5 if width <= 16 else 3)
            steps, rounds = (100, 3) if args.quick else (100, 9)
            print(f"\nMLP(2, [{width}, {width}, 1]), {nparams} parameters")
            for line in check_bits(width, exe, workdir, 3 if width <= 16 else 2):
                print(f"  check: {line}")
            results = bench_width(width, exe, workdir, reps, steps, rounds)
            cg = callgrind_per_step(width, exe, workdir, 30) if args.callgrind else None
            tables.append((width, nparams, len(Replay(width).graph), results, cg))
        for width, nparams, nops, results, cg in tables:
            base, floor = results["michigrad replay"]["ms"], results["C floor"]["ms"]
            print(f"\n== MLP(2, [{width}, {width}, 1]) ({nparams} params, {nops} op nodes): "
                  "ms per training step ==")
            print(f"{'contender':<22}{'ms/step':>10}{'best':>9}{'spread':>8}{'vs replay':>16}"
                  f"{'vs C floor':>12}  note")
            notes = {"michigrad dynamic": "graph built in Python each step",
                     "micrograd": "micrograd 0.1.0, gc on",
                     "C floor": "tape_floor.c, gcc -O2, same tape",
                     "michigrad replay": Replay.note, "michigrad replay SGD": ReplaySGD.note}
            for name in ("michigrad replay", "michigrad replay SGD", "michigrad dynamic",
                         "micrograd", "C floor"):
                t = results[name]
                rel = t["ms"] / base
                vs = "-" if name == "michigrad replay" else (
                    f"{rel:.1f}x slower" if rel >= 1 else f"{1 / rel:.2f}x faster")
                print(f"{name:<22}{t['ms']:>10.3f}{t['best']:>9.3f}{t['spread'] * 100:>7.0f}%"
                      f"{vs:>16}{t['ms'] / floor:>11.2f}x  {notes[name]}")
            speedup = results["micrograd"]["ms"] / base
            print(f"target: >= {TARGETS['micrograd']:.0f}x faster than micrograd: {speedup:.0f}x "
                  f"({'met' if speedup >= TARGETS['micrograd'] else 'NOT met'})")
            best = results["michigrad replay"]["best"] / results["C floor"]["best"]
            print(f"target: within {FLOOR_FACTOR:.0f}x of the C floor: {base / floor:.2f}x "
                  f"({'met' if base / floor <= FLOOR_FACTOR else 'NOT met'}; "
                  f"best steps: {best:.2f}x)")
            if cg:
                print(f"callgrind: replay {cg[0]:,.0f} instructions per step, C floor "
                      f"{cg[1]:,.0f}: {cg[0] / cg[1]:.2f}x")


if __name__ == "__main__":
    main()
