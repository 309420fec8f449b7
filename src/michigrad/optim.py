"""Optimisers: ``SGD`` (momentum, Nesterov, weight decay), ``Adam`` and ``AdamW``, shaped like
``torch.optim`` and computing the same floating-point updates as its single-tensor (CPU) code
path, the same operations in the same order, so a model trained here follows PyTorch's float64
run step for step. (Not always to the last bit: torch's CPU kernels may fuse a multiply and an
add into one rounding, which Python never does; the updates agree within a few ulps, and the
tests hold them to a relative 1e-12.)

``SGD(params, lr)`` is exactly micrograd's update ``p.data -= lr * p.grad``.

State lives in the optimiser, not on the parameters: ``state[i]`` is a dict for the ``i``-th
parameter (counting across parameter groups), as in ``torch.optim``'s ``state_dict()``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any, Union

from .engine import Value

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]

ParamsT = Union[Iterable[Value], Iterable[dict[str, Any]]]


class Optimizer:
    """Base class: parameter groups, ``zero_grad()``, ``state_dict()``/``load_state_dict()``.

    ``params`` is an iterable of Values (e.g. ``model.parameters()``) or of dicts
    ``{"params": [...], "lr": ...}`` with per-group hyperparameters, as in PyTorch.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[int, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Value):
            raise TypeError("optimizer params must be an iterable of Values or of parameter-group "
                            "dicts, not a single Value (give [value])")
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        seen: set[int] = set()
        for group in groups:
            if not isinstance(group, dict):
                raise TypeError("give either Values or parameter-group dicts, not a mix")
            group = dict(group)
            if isinstance(group["params"], Value):  # torch.optim takes a lone tensor here
                group["params"] = [group["params"]]
            elif isinstance(group["params"], (set, frozenset)):  # ... and refuses a set
                raise TypeError("a parameter group's params must be an ordered collection (a "
                                "list), not a set: the state is kept by position, and a set's "
                                "order changes between runs")
            group["params"] = list(group["params"])
            for p in group["params"]:
                if not isinstance(p, Value):
                    what = type(p).__name__
                    if what == Value.__name__:  # the other engine's Value: say which is which
                        what = (f"{type(p).__module__}.{what} (the optimizer takes the active "
                                f"engine's {Value.__module__}.{what})")
                    raise TypeError(f"optimizer params must be Values, not {what}")
                if id(p) in seen:  # it would be updated twice per step
                    raise ValueError("some parameters appear more than once in the optimizer")
                seen.add(id(p))
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            unknown = set(group) - set(self.defaults) - {"params"}
            if unknown:
                raise TypeError(f"unknown option(s) for {type(self).__name__}: {sorted(unknown)}")
            self._check(group)
            self.param_groups.append(group)

    def _check(self, group: dict[str, Any]) -> None:
        if group["lr"] < 0.0:
            raise ValueError(f"invalid learning rate: {group['lr']}")
        if group.get("weight_decay", 0.0) < 0.0:
            raise ValueError(f"invalid weight_decay: {group['weight_decay']}")

    @property
    def lr(self) -> float:
        """The first group's learning rate (set it to schedule the rate, as micrograd's demo
        does: ``opt.lr = 1.0 - 0.9 * k / 100``). Setting it sets every group's."""
        lr: float = self.param_groups[0]["lr"]
        return lr

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.param_groups:
            group["lr"] = value

    def _indexed(self) -> Iterable[tuple[int, Value, dict[str, Any]]]:
        """(parameter index, parameter, its group), the index counting across groups."""
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, p, group
                i += 1

    def zero_grad(self) -> None:
        """Set every parameter's gradient to 0 (micrograd's int 0)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = 0

    def step(self) -> None:
        """Update every parameter from its gradient."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{hyperparameters, "params": [indices]}]}``
        -- numbers only, PyTorch's layout."""
        groups, i = [], 0
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = list(range(i, i + len(group["params"])))
            i += len(group["params"])
            groups.append(g)
        return {"state": copy.deepcopy(self.state), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict()`` returned (for the same parameters, in the same order)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(groups)} parameter groups, "
                             f"this optimizer {len(self.param_groups)}")
        for mine, theirs in zip(self.param_groups, groups):
            if len(theirs["params"]) != len(mine["params"]):
                raise ValueError(f"a parameter group of {len(theirs['params'])} parameters cannot "
                                 f"be loaded into one of {len(mine['params'])}")
        n = sum(len(g["params"]) for g in self.param_groups)
        state = {int(k): dict(v) for k, v in state_dict["state"].items()}  # JSON keys are str
        bad = [k for k in state if not 0 <= k < n]
        if bad:
            raise ValueError(f"state for parameter indices {bad} out of range (0..{n - 1})")
        for mine, theirs in zip(self.param_groups, groups):
            for key, value in theirs.items():
                if key != "params":
                    mine[key] = value
        self.state = copy.deepcopy(state)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``'s update:
    ``g = grad + weight_decay*p``; with momentum ``buf = momentum*buf + (1-dampening)*g``
    (``buf = g`` on the first step) and ``g = buf`` (or ``g + momentum*buf`` with Nesterov);
    then ``p -= lr * g``."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _check(self, group: dict[str, Any]) -> None:
        super()._check(group)
        if group["momentum"] < 0.0:
            raise ValueError(f"invalid momentum: {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def step(self) -> None:
        i0 = 0
        for group in self.param_groups:
            params = group["params"]
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            if momentum == 0 and wd == 0 and not group["maximize"]:
                for p in params:  # micrograd's update, the hot path
                    p.data -= lr * p.grad
                i0 += len(params)
                continue
            dampening, nesterov = group["dampening"], group["nesterov"]
            for k, p in enumerate(params):
                g = -p.grad if group["maximize"] else p.grad
                if wd != 0:
                    g = g + wd * p.data
                if momentum != 0:
                    state = self.state.setdefault(i0 + k, {})
                    buf = state.get("momentum_buffer")
                    buf = g if buf is None else buf * momentum + (1 - dampening) * g
                    state["momentum_buffer"] = buf
                    g = g + momentum * buf if nesterov else buf
                p.data = p.data + -lr * g
            i0 += len(params)


class Adam(Optimizer):
    """Adam (Kingma & Ba), ``torch.optim.Adam``'s update with bias correction:
    ``m = lerp(m, g, 1-β₁)``, ``v = β₂v + (1-β₂)g²``,
    ``p -= lr/(1-β₁ᵗ) · m / (√v/√(1-β₂ᵗ) + eps)``. ``weight_decay`` is L2 added to the gradient
    (use ``AdamW`` for decoupled decay)."""

    _decoupled = False

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _check(self, group: dict[str, Any]) -> None:
        super()._check(group)
        # torch.optim.Adam's checks, written `not 0 <= x` as there: NaN is refused too (it
        # would turn every parameter into NaN at the first step)
        if not 0.0 <= group["lr"]:
            raise ValueError(f"invalid learning rate: {group['lr']}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"invalid weight_decay: {group['weight_decay']}")
        beta1, beta2 = group["betas"]
        if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
            raise ValueError(f"invalid betas: {group['betas']} (each must be in [0, 1))")
        if not 0.0 <= group["eps"]:
            raise ValueError(f"invalid eps: {group['eps']}")

    def step(self) -> None:
        i = 0
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            maximize, amsgrad, decoupled = group["maximize"], group["amsgrad"], self._decoupled
            w1 = 1 - beta1
            for p in group["params"]:
                g = -p.grad if maximize else p.grad
                state = self.state.get(i)
                if state is None:
                    state = self.state[i] = {"step": 0, "exp_avg": 0.0, "exp_avg_sq": 0.0}
                    if amsgrad:
                        state["max_exp_avg_sq"] = 0.0
                i += 1
                state["step"] = t = state["step"] + 1
                x = p.data
                if wd != 0:
                    if decoupled:
                        x = x * (1 - lr * wd)  # AdamW: shrink the weight, not the gradient
                    else:
                        g = g + wd * x
                # torch's lerp: start + w*(end - start) if w < 0.5, else end - (end - start)*(1 - w)
                m = state["exp_avg"]
                m = m + w1 * (g - m) if abs(w1) < 0.5 else g - (g - m) * (1 - w1)
                v = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
                state["exp_avg"], state["exp_avg_sq"] = m, v
                if amsgrad:
                    v = state["max_exp_avg_sq"] = max(state["max_exp_avg_sq"], v)
                step_size = lr / (1 - beta1 ** t)
                denom = math.sqrt(v) / (1 - beta2 ** t) ** 0.5 + eps
                try:
                    p.data = x + -step_size * m / denom
                except ZeroDivisionError:  # eps = 0 and v = 0 (no gradient yet): IEEE, as torch
                    p.data = x + _ieee_quotient(-step_size * m, denom)


def _ieee_quotient(a: float, b: float) -> float:
    """a / b for b == 0 as IEEE (and torch) divides: NaN for 0/0 or NaN/0, else ±inf."""
    if a == 0 or a != a:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), ``torch.optim.AdamW``: each step
    first multiplies the weight by ``1 - lr*weight_decay``, then takes Adam's step."""

    _decoupled = True

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
