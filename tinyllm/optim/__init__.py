"""Optimizers (AdamW, Adam, SGD), gradient clipping and the warmup + cosine learning-rate schedule,
with PyTorch's API: ``opt = AdamW(model.parameters(), lr=1e-3); loss.backward(); opt.step()``.

PyTorch's schedulers (``LambdaLR``, ``CosineAnnealingLR``, ...) are in :mod:`tinyllm.optim.lr_scheduler`,
where ``torch.optim.lr_scheduler`` keeps them.
"""
import math

import numpy as np

from ..kernels.dispatch import dispatch
from ..tensor import Tensor
from . import lr_scheduler  # noqa: E402,F401  (torch.optim.lr_scheduler's place)

_adamw = dispatch("adamw")  # tinyllm/kernels/adamw.py: numba, or NumPy in reference mode

__all__ = ["Optimizer", "AdamW", "Adam", "SGD", "clip_grad_norm", "clip_grad_norm_", "cosine_lr", "WarmupCosineLR"]


class Optimizer:
    """Holds parameter groups (lists of parameters with their own settings) and per-parameter state.

    ``params`` is an iterable of Parameters, or of dicts ``{"params": [...], "weight_decay": 0.0}``
    whose keys override the defaults for that group, exactly as in PyTorch.
    """

    def __init__(self, params, defaults):
        self.defaults = defaults
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        seen = set()
        for g in groups:
            unknown = set(g) - set(defaults) - {"params"}
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown parameter-group keys {sorted(unknown)}")
            group = {**defaults, **g, "params": list(g["params"])}
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} appears in two groups")
                seen.add(id(p))
            self.param_groups.append(group)
        self.state = {}  # id(param) -> dict of arrays and the step count

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None if set_to_none or p.grad is None else np.zeros_like(p.grad)

    def _all_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """{"state": {index: {name: array or number}}, "param_groups": [settings]}, parameters
        numbered in group order as in PyTorch."""
        state = {}
        for i, p in enumerate(self._all_params()):
            if id(p) in self.state:
                state[i] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.state[id(p)].items()}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        params = self._all_params()
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: {len(groups)} parameter groups saved, {len(self.param_groups)} here")
        for mine, saved in zip(self.param_groups, groups):
            mine.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            if i >= len(params):
                raise ValueError(f"load_state_dict: state for parameter {i}, but there are only {len(params)}")
            p = params[i]
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.shape != p.shape:
                    raise ValueError(f"load_state_dict: {k} of parameter {i} has shape {v.shape}, parameter {p.shape}")
            self.state[id(p)] = {k: (np.array(v, dtype=p.dtype) if isinstance(v, np.ndarray) else v)
                                 for k, v in s.items()}


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's ``torch.optim.AdamW``.

    For each parameter, with t the step count::

        p  <- p * (1 - lr * weight_decay)
        m  <- beta1 m + (1 - beta1) g          v <- beta2 v + (1 - beta2) g^2
        p  <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    Each group's update is one call of :func:`tinyllm.kernels.adamw.adamw_group_step`; its NumPy
    reference (reference mode) applies the formulas above to one parameter after another.
    The fast kernel updates the whole group in one pass over memory, so it keeps the group's
    parameters and moments in one flat buffer each: after the first step every ``p.data`` is a
    view of its slice of that buffer (same values, new place), which ``step`` rebinds. Rebinding
    ``p.data`` yourself is fine: the next step rebuilds the buffer from the current values.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, foreach=None, fused=None):
        """``foreach`` and ``fused`` are accepted so that torch code (nanoGPT passes ``fused=True``)
        runs unchanged; they pick torch's implementation and change no number. tinyllm's step is
        always one fused kernel call per group."""
        name = type(self).__name__
        if not lr >= 0:
            raise ValueError(f"{name}: lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"{name}: betas must be in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"{name}: eps must be >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"{name}: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._kernel_cache = {}  # group index -> what the fast kernel keeps between steps

    def step(self):
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state_of(p) for p in params]
            beta1, beta2 = group["betas"]
            updated = _adamw.adamw_group_step(
                [p.data for p in params], self._gradients(params, group), states,
                self._kernel_cache.setdefault(index, {}), lr=group["lr"], beta1=beta1, beta2=beta2,
                eps=group["eps"], weight_decay=self._decoupled_decay(group))
            for p, data in zip(params, updated):
                p.data = data  # the same array, or (fast kernel) a view of the group's flat buffer

    def _gradients(self, params, group):
        """The gradients the moments see (AdamW: the parameters' own)."""
        return [p.grad for p in params]

    def _decoupled_decay(self, group):
        """The weight decay applied to the parameters directly, beside the gradient step."""
        return group["weight_decay"]

    def _state_of(self, p):
        """The step count and the two moment estimates of p (zeros before its first step)."""
        state = self.state.get(id(p))
        if state is None:
            state = self.state[id(p)] = dict(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
        if state["exp_avg"].shape != p.shape:
            raise ValueError(f"AdamW: a parameter of shape {p.shape} has moments of shape {state['exp_avg'].shape}: "
                             "it changed shape since (resize_token_embeddings?); build a new optimizer")
        return state


class Adam(AdamW):
    """Adam with the weight decay added to the gradient (L2 regularisation), as ``torch.optim.Adam``
    (whose default weight_decay is 0)::

        g  <- g + weight_decay * p
        m  <- beta1 m + (1 - beta1) g          v <- beta2 v + (1 - beta2) g^2
        p  <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    With weight_decay 0 it is AdamW with weight_decay 0, step for step. With decay, AdamW (which
    decays the parameters directly) is what transformer training uses: the decay through the
    gradient is divided by sqrt(v) like the rest of it, so it shrinks rarely-updated weights most.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, foreach=None, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _gradients(self, params, group):
        decay = group["weight_decay"]
        if not decay:
            return [p.grad for p in params]
        return [p.grad + np.asarray(decay, dtype=p.grad.dtype) * p.data for p in params]  # new arrays: p.grad stays

    def _decoupled_decay(self, group):
        return 0.0


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and (coupled) weight decay, as PyTorch's
    ``torch.optim.SGD`` (``nesterov`` and ``dampening`` too)::

        g <- g + weight_decay * p
        b <- momentum * b + (1 - dampening) * g        (b = g at the first step)
        d <- g + momentum * b  if nesterov  else  b     (d = g without momentum)
        p <- p - lr * d
    """

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
        if not lr >= 0:
            raise ValueError(f"SGD: lr must be >= 0, got {lr}")
        if not momentum >= 0:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov momentum needs momentum > 0 and dampening 0, got momentum={momentum}, "
                             f"dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      dampening=dampening))

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.astype(p.dtype, copy=False)
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p.data
                if group["momentum"]:
                    g = self._momentum_direction(p, g, group)
                p.data -= group["lr"] * g

    def _momentum_direction(self, p, g, group):
        """Update p's momentum buffer b with g; the step direction (b, or g + momentum * b for Nesterov)."""
        momentum, state = group["momentum"], self.state.setdefault(id(p), {})
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = g.copy()
        else:
            buf = momentum * buf + (g if not group["dampening"] else (1 - group["dampening"]) * g)
        state["momentum_buffer"] = buf
        return g + momentum * buf if group["nesterov"] else buf


def clip_grad_norm(params, max_norm, norm_type=2.0):
    """Scale all gradients together so their joint norm is at most ``max_norm``: each is
    multiplied by ``max_norm / (norm + 1e-6)`` when that is below 1, as PyTorch does.

    ``norm_type`` is 2 (the default: the L2 norm of all gradients as one vector, summed in
    float64) or ``inf`` (``"inf"`` also: the largest |gradient|), torch's usual two. Returns the
    norm before clipping (as ``torch.nn.utils.clip_grad_norm_``, as a float). The gradients are
    scaled in place (:func:`tinyllm.kernels.adamw.clip_grad_norm` for the L2 norm).
    """
    if norm_type in ("inf", math.inf):
        clip = _clip_grad_max_abs
    elif norm_type == 2:
        clip = _adamw.clip_grad_norm
    else:
        raise ValueError(f"clip_grad_norm: norm_type {norm_type!r} is not supported; use 2 (the default) or inf")
    params = [params] if isinstance(params, Tensor) else list(params)  # one tensor, or a generator
    params = [p for p in params if p.grad is not None]
    norm, grads = clip([p.grad for p in params], max_norm)
    for p, g in zip(params, grads):
        p.grad = g  # the same array scaled in place (a read-only gradient: a scaled copy)
    return norm


def _clip_grad_max_abs(grads, max_norm):
    """clip_grad_norm with the inf-norm: norm = max |g| over all gradients; (norm, gradients)."""
    norm = max((float(np.abs(g).max()) for g in grads if g.size), default=0.0)
    coef = max_norm / (norm + 1e-6)
    if coef >= 1.0:
        return norm, grads
    scaled = []
    for g in grads:
        coef_g = np.asarray(coef, dtype=g.dtype)
        scaled.append(np.multiply(g, coef_g, out=g) if g.flags.writeable else g * coef_g)
    return norm, scaled


clip_grad_norm_ = clip_grad_norm


def cosine_lr(step, max_lr, min_lr, warmup_steps, decay_steps):
    """nanoGPT's schedule: linear warmup to ``max_lr`` over ``warmup_steps``, then a half cosine
    down to ``min_lr`` at ``decay_steps``, then ``min_lr``.

        lr(t) = max_lr * (t + 1) / (warmup + 1)                         t < warmup
        lr(t) = min_lr + (1 + cos(pi * r)) / 2 * (max_lr - min_lr)      r = (t - warmup) / (decay - warmup)
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step > decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(decay_steps - warmup_steps, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


class WarmupCosineLR:
    """Sets every group's ``lr`` from :func:`cosine_lr`, a ``torch.optim.lr_scheduler``-style object.

    Built, it sets lr(0); ``step()`` (after each ``optimizer.step()``, as in PyTorch) moves to the
    next iteration; ``set_step(t)`` jumps to iteration t (what resuming needs); ``get_last_lr()``
    lists the lr it set, one per group.
    """

    def __init__(self, optimizer, max_lr, min_lr, warmup_steps, decay_steps):
        if warmup_steps < 0 or decay_steps < 0:
            raise ValueError(f"WarmupCosineLR: need warmup_steps >= 0 and decay_steps >= 0, got {warmup_steps}, {decay_steps}")
        self.optimizer, self.max_lr, self.min_lr = optimizer, max_lr, min_lr
        self.warmup_steps, self.decay_steps = warmup_steps, decay_steps
        self.set_step(0)

    def lr_at(self, step):
        return cosine_lr(step, self.max_lr, self.min_lr, self.warmup_steps, self.decay_steps)

    def set_step(self, step):
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step = step
        return lr

    def step(self):
        """Move to the next iteration (PyTorch's ``scheduler.step()``); returns its lr."""
        return self.set_step(self.last_step + 1)

    def get_last_lr(self):
        return [self.lr_at(self.last_step)] * len(self.optimizer.param_groups)
