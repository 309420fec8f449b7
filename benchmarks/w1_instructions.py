"""W1 in instructions, not seconds: repeatable on a noisy machine.

    python benchmarks/w1_instructions.py            # needs valgrind

Runs the chain ``x = x*0.999 + 0.001`` (100,000 steps) under ``valgrind --tool=callgrind`` for
plain floats and for michigrad's compiled engine, each minus the same program with 0 steps (the
interpreter's start-up and imports), and prints instructions per forward op and their ratio. The
michigrad figure includes growing the arena and freeing the graph at exit.
"""

from __future__ import annotations

import re
import subprocess
import sys

STEPS = 100_000
PROGRAM = """
import sys
steps, kind = int(sys.argv[1]), sys.argv[2]
from michigrad._engine import Value
x = Value(1.0) if kind == "michigrad" else 1.0
for _ in range(steps):
    x = x*0.999 + 0.001
"""


def instructions(steps: int, kind: str) -> int:
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", PROGRAM, str(steps), kind],
        capture_output=True, text=True, check=True)
    return int(re.search(r"refs:\s+([\d,]+)", run.stderr).group(1).replace(",", ""))


def main() -> None:
    per_op = {}
    for kind in ("floats", "michigrad"):
        loop = instructions(STEPS, kind) - instructions(0, kind)
        per_op[kind] = loop / (2 * STEPS)
        print(f"{kind:>10}: {loop:>13,} instructions for {STEPS:,} steps, "
              f"{per_op[kind]:7.0f} per forward op")
    print(f"     ratio: {per_op['michigrad'] / per_op['floats']:.2f}x (target for wall time: <= 3x)")


if __name__ == "__main__":
    main()
