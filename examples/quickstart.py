"""The michigrad README example (from the course's README): one neuron, one squared error.

Run: python examples/quickstart.py
"""

import numpy as np

import michigrad
from michigrad.engine import Value

print(f"michigrad {michigrad.__version__}, {michigrad.ENGINE} engine")

# weights
np.random.seed(42)
W0 = Value(np.random.random(), name="W₀")
W1 = Value(np.random.random(), name="W₁")
b = Value(np.random.random(), name="b")
print(W0)  # Value(data=0.3745401188473625, grad=0, name=W₀)

# training example
x0 = Value(0.5, name="x₀")
x1 = Value(1.0, name="x₁")
y = Value(2.0, name="y")

# forward pass
yhat = x0 * W0 + x1 * W1 + b
yhat.name = "ŷ"
print(yhat)  # Value(data=1.8699783076450025, grad=0, name=ŷ)

L = (y - yhat) ** 2
L.name = "L"
print(L)  # Value(data=0.016905640482857615, grad=0, name=L)

# backward pass
L.backward()
print(L)  # Value(data=0.016905640482857615, grad=1, name=L)
print(W0)  # Value(data=0.3745401188473625, grad=-0.1300216923549975, name=W₀)

# one step of gradient descent lowers the loss
for w in (W0, W1, b):
    w.data -= 0.1 * w.grad
print(((y - (x0 * W0 + x1 * W1 + b)) ** 2).data < L.data)  # True
