"""``python -m michigrad demo``: micrograd's demo, trained with michigrad.

Two moons (100 samples, noise 0.1), ``MLP(2, [16, 16, 1])``, SVM max-margin loss plus ``1e-4`` L2,
SGD with the learning rate falling from 1.0 to 0.1: exactly micrograd's ``demo.ipynb``, with the
same numbers (step 0 loss 0.8958441028683222 for seed 1337). Shows a progress bar when tqdm is
installed and stderr is a terminal, prints the final accuracy and writes the decision boundary to a
PNG when matplotlib is installed. Without them it still trains, and says which extra to install.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from .datasets import make_moons
from .engine import Value
from .losses import hinge_loss
from .nn import MLP
from .optim import SGD
from .replay import Graph

ALPHA = 1e-4  # micrograd's demo: L2 regularisation strength


def _note(message: str) -> None:
    print(f"michigrad: {message}", file=sys.stderr)


def _progress(steps: int) -> tuple[Iterable[int], Callable[[str], None]]:
    """range(steps) with a tqdm bar when stderr is a terminal, and a function to show the loss on
    it. Without tqdm, or off a terminal, plain range and no output."""
    if not sys.stderr.isatty():
        return range(steps), lambda text: None
    try:
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        _note("tqdm is not installed, so no progress bar (pip install michigrad[progress])")
        return range(steps), lambda text: None
    bar = tqdm(range(steps), desc="training", unit="step", file=sys.stderr)
    return bar, bar.set_postfix_str


def make_data(seed: int, n_samples: int = 100, noise: float = 0.1) -> tuple[list[list[float]], list[int]]:
    """micrograd's demo data: seed NumPy's and Python's global generators (in that order, as the
    notebook does), two moons, labels mapped to ±1."""
    try:
        import numpy as np
    except ImportError:  # make_moons replays NumPy's generator for an explicit seed
        X, y = make_moons(n_samples, noise=noise, random_state=seed)
    else:
        np.random.seed(seed)
        X, y = make_moons(n_samples, noise=noise)
        X, y = X.tolist(), y.tolist()
    random.seed(seed)
    return X, [2 * yi - 1 for yi in y]


def demo_graph(model: MLP, X: Sequence[Sequence[float]], y: Sequence[int]) -> tuple[Value, list[Any]]:
    """micrograd's demo loss: mean hinge loss over the samples plus ALPHA * Σ p², and the scores
    it is computed from."""
    inputs = [list(map(Value, xrow)) for xrow in X]
    scores: list[Any] = list(map(model, inputs))  # one output: each a bare Value
    data_loss: Any = hinge_loss(scores, y)  # a Value: the default reduction is the mean
    reg_loss = ALPHA * sum(p * p for p in model.parameters())
    return data_loss + reg_loss, scores


def accuracy_of(scores: Sequence[Value], y: Sequence[int]) -> float:
    """The fraction of samples whose score has the label's sign."""
    accuracy = [(yi > 0) == (s.data > 0) for yi, s in zip(y, scores)]
    return sum(accuracy) / len(accuracy)


def demo_loss(model: MLP, X: Sequence[Sequence[float]], y: Sequence[int]) -> tuple[Value, float]:
    """micrograd's demo loss (see demo_graph) and the accuracy (the sign of the score)."""
    loss, scores = demo_graph(model, X, y)
    return loss, accuracy_of(scores, y)


def train(steps: int = 100, seed: int = 1337, verbose: bool = False,
          replay: bool = False) -> tuple[MLP, Any, list[float], float]:
    """Train micrograd's demo model; returns (model, data, losses per step, final accuracy).

    With ``replay`` the step's graph is built once and re-run by ``michigrad.Graph`` (forward,
    zero_grad, backward and SGD update in C); the losses are the same to the last bit."""
    X, y = make_data(seed)
    model = MLP(2, [16, 16, 1])
    optimizer = SGD(model.parameters(), lr=1.0)
    step: Callable[[], tuple[Any, float]]
    graph = None
    if replay:
        loss, scores = demo_graph(model, X, y)
        graph = Graph(loss)

        def step() -> tuple[Any, float]:
            return graph.step(optimizer), accuracy_of(scores, y)
    else:
        def step() -> tuple[Any, float]:
            total_loss, accuracy = demo_loss(model, X, y)
            optimizer.zero_grad()
            total_loss.backward()
            optimizer.step()
            return total_loss.data, accuracy

    losses: list[float] = []
    accuracy = 0.0
    iterator, show = _progress(steps)
    for k in iterator:
        optimizer.lr = 1.0 - 0.9 * k / steps  # micrograd's schedule (k/100 over its 100 steps)
        loss_value, accuracy = step()
        losses.append(loss_value)
        show(f"loss {loss_value:.4f}, accuracy {accuracy * 100:.0f}%")
        if verbose:
            print(f"step {k} loss {loss_value}, accuracy {accuracy * 100}%")
    if graph is not None:
        graph.close()
    _, accuracy = demo_loss(model, X, y)  # of the trained model, after the last update
    return model, (X, y), losses, accuracy


def plot_decision_boundary(model: MLP, X: Sequence[Sequence[float]], y: Sequence[int], path: str,
                           h: float = 0.1) -> bool:
    """Write the model's decision regions and the data to a PNG. False (and a note naming the
    extra) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        _note("matplotlib is not installed, so no decision-boundary plot "
              "(pip install michigrad[plot])")
        return False
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    Xa, ya = np.asarray(X), np.asarray(y)
    x_min, x_max = Xa[:, 0].min() - 1, Xa[:, 0].max() + 1
    y_min, y_max = Xa[:, 1].min() - 1, Xa[:, 1].max() + 1
    xx, yy = np.meshgrid(np.arange(x_min, x_max, h), np.arange(y_min, y_max, h))
    scores = [model([Value(a), Value(b)]).data for a, b in zip(xx.ravel(), yy.ravel())]
    Z = np.array(scores, dtype=float).reshape(xx.shape)
    # two regions split at score 0; contouring the score itself draws a smooth boundary
    bound = max(abs(Z.min()), abs(Z.max()), 1e-9) * 1.01
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contourf(xx, yy, Z, levels=[-bound, 0.0, bound], cmap=plt.cm.Spectral, alpha=0.8)
    ax.scatter(Xa[:, 0], Xa[:, 1], c=ya, s=40, cmap=plt.cm.Spectral, edgecolors="k")
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_title("michigrad: MLP(2, [16, 16, 1]) on two moons")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def demo(args: argparse.Namespace) -> int:
    print(f"michigrad demo: MLP(2, [16, 16, 1]), 337 parameters, two moons (100 samples, "
          f"noise 0.1), seed {args.seed}, {args.steps} steps"
          + (", replaying the recorded graph" if args.replay else ""))
    start = time.perf_counter()
    model, (X, y), losses, accuracy = train(args.steps, args.seed, args.verbose, args.replay)
    elapsed = time.perf_counter() - start
    per_step = 1000 * elapsed / max(args.steps, 1)
    if losses:
        print(f"loss {losses[0]:.6f} -> {losses[-1]:.6f} in {elapsed:.2f} s ({per_step:.1f} ms/step)")
    print(f"final accuracy: {accuracy * 100:.1f}%")
    if args.out and plot_decision_boundary(model, X, y, args.out):
        print(f"decision boundary written to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m michigrad",
                                     description="michigrad: micrograd's autograd, compiled.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = commands.add_parser("demo", help="train micrograd's two-moons MLP and plot it",
                            description="Train micrograd's demo MLP on two moons.")
    p.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    p.add_argument("--out", default="decision_boundary.png",
                   help="PNG file for the decision boundary; '' for none "
                        "(default decision_boundary.png)")
    p.add_argument("--verbose", action="store_true",
                   help="print every step's loss and accuracy, as micrograd's notebook does")
    p.add_argument("--replay", action="store_true",
                   help="record the training step's graph once and re-run it in C "
                        "(michigrad.Graph): the same losses, much faster")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if not 0 <= args.seed < 2**32:
        parser.error("--seed must be in [0, 2**32)")
    if args.out:  # checked before training, not after it
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            parser.error(f"--out: the folder {folder} does not exist")
        if os.path.isdir(args.out):
            parser.error(f"--out: {args.out} is a folder; give a file name, e.g. "
                         f"{os.path.join(args.out, 'decision_boundary.png')}")
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
