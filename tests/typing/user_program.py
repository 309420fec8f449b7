"""A small program written against michigrad's typed API, as a user would write it.

tests/test_packaging.py checks that `mypy --strict` accepts it against the installed package
(the stubs and `py.typed` the wheel ships), then runs it. Python 3.9 syntax: it is checked on
every Python the wheels are built for.
"""

from __future__ import annotations

import math
import random
from typing import List, Sequence

import michigrad
from michigrad.engine import Value


def sigmoid(x: Value) -> Value:
    """A custom op written the micrograd way: a node and its backward closure."""
    out = Value(1 / (1 + math.exp(-x.data)), (x,), "sigmoid")

    def _backward() -> None:
        x.grad += out.data * (1 - out.data) * out.grad

    out._backward = _backward
    return out


class Neuron:
    def __init__(self, nin: int) -> None:
        self.w: List[Value] = [Value(random.uniform(-1, 1), name=f"w{i}") for i in range(nin)]
        self.b = Value(0.0, label="b")

    def __call__(self, x: Sequence[float]) -> Value:
        act: Value = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        return act.tanh()

    def parameters(self) -> List[Value]:
        return [*self.w, self.b]


def mean_squared_error(predictions: Sequence[Value], targets: Sequence[float]) -> Value:
    total = Value(0.0)
    for p, t in zip(predictions, targets):
        total = total + (p - t) ** 2
    return total / len(targets)


def main() -> None:
    a = Value(-4.0, name="a")
    b = Value(2.0, label="b")
    c = a * b + b**3
    d = (c.relu() + (a - b).tanh() + sigmoid(c) + (2**a).log() - c.exp() / 1e3).abs()
    d.backward()
    grads: List[float] = [float(a.grad), float(b.grad)]
    assert all(math.isfinite(g) for g in grads), grads
    assert a._prev == set() and len(c._prev) == 2 and c._op == "+"

    random.seed(1337)
    neuron = Neuron(2)
    xs = [[2.0, 3.0], [3.0, -1.0], [0.5, 1.0], [-1.0, -2.0]]
    ys = [1.0, -1.0, 1.0, -1.0]
    losses: List[float] = []
    for _ in range(30):
        loss = mean_squared_error([neuron(x) for x in xs], ys)
        for p in neuron.parameters():
            p.grad = 0.0
        loss.backward()
        for p in neuron.parameters():
            p.data -= 0.1 * p.grad
        losses.append(float(loss.data))
    assert losses[-1] < losses[0], losses
    print(michigrad.__version__, michigrad.ENGINE, f"{losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
