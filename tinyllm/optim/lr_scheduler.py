"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s API and numbers.

    opt = AdamW(model.parameters(), lr=3e-4)
    sched = CosineAnnealingLR(opt, T_max=1000)
    for step in range(1000):
        ...; opt.step(); sched.step()          # the scheduler after the optimizer, as in PyTorch

Building a scheduler records each group's ``initial_lr`` (kept in the group, as PyTorch does)
and sets the lr of iteration 0; ``step()`` moves to the next iteration and writes every group's
``lr``. ``get_last_lr()`` lists what it set. ``state_dict()`` / ``load_state_dict()`` carry the
position (``last_epoch``, PyTorch's name: it counts ``step()`` calls) for resuming.

Most schedules are written as PyTorch writes them: as a change to the group's current lr
("chainable": StepLR multiplies the lr it finds by gamma), so the floats come out as PyTorch's
bit for bit and two schedulers on one optimizer compose. LambdaLR and Hugging Face's
``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup`` (transformers'
``optimization.py``, built on LambdaLR) multiply the initial lr by a factor of the step.
"""
import math
from collections import Counter
from functools import partial

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "CosineAnnealingLR",
           "get_constant_schedule_with_warmup", "get_linear_schedule_with_warmup",
           "get_cosine_schedule_with_warmup"]


class LRScheduler:
    """The base: subclasses define :meth:`get_lr`, the lrs of iteration ``self.last_epoch``.

    ``last_epoch=-1`` starts a schedule (each group's ``initial_lr`` := its lr); a larger value
    resumes one, and then every group must already hold ``initial_lr`` (from the optimizer's
    saved state), as in PyTorch.
    """

    def __init__(self, optimizer, last_epoch=-1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an optimizer (it has no "
                            "param_groups)")
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"{type(self).__name__}: param_groups[{i}] has no 'initial_lr' while resuming with "
                               f"last_epoch={last_epoch}; load the optimizer's state first, or pass last_epoch=-1")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial = True  # PyTorch's _is_initial: the step the constructor takes
        self.step()
        self._initial = False

    def get_lr(self):
        raise NotImplementedError

    def step(self):
        """Move to the next iteration and set every group's lr (call it after ``optimizer.step()``)."""
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        """The lr of each group set by the last :meth:`step` (or by the constructor)."""
        return list(self._last_lr)

    def _current(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def _scaled(self, factor):
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def state_dict(self):
        """Everything but the optimizer (and functions, which cannot be saved as data)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict):
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("optimizer", "lr_lambdas")})

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


class LambdaLR(LRScheduler):
    """lr(t) = initial_lr * lr_lambda(t): one function for every group, or a list of one per group."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups)
        lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * n
        if len(lambdas) != n:
            raise ValueError(f"LambdaLR: {len(lambdas)} lr_lambdas for {n} parameter groups")
        for fn in lambdas:
            if not callable(fn):
                raise TypeError(f"LambdaLR: lr_lambda should be a function, got {type(fn).__name__}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """lr multiplied by ``gamma`` every ``step_size`` iterations: initial_lr * gamma ** (t // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if not (isinstance(step_size, int) and step_size >= 1):
            raise ValueError(f"StepLR: step_size must be an int >= 1, got {step_size!r}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return self._current()
        return self._scaled(self.gamma)


class MultiStepLR(LRScheduler):
    """lr multiplied by ``gamma`` at each of ``milestones`` (iterations; a repeated one counts twice)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones, self.gamma = Counter(int(m) for m in milestones), gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._current()
        return self._scaled(self.gamma ** self.milestones[self.last_epoch])


class ExponentialLR(LRScheduler):
    """lr multiplied by ``gamma`` at every step: initial_lr * gamma ** t."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return self._current() if self._initial else self._scaled(self.gamma)


class LinearLR(LRScheduler):
    """The factor on the lr goes linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, then stays: initial_lr * (s + (e - s) * min(t, total_iters) / total_iters),
    computed as PyTorch does, as the ratio of one step's factor to the previous one's."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:
            return self._scaled(self.start_factor)
        if self._initial or self.last_epoch > self.total_iters:
            return self._current()
        change = self.end_factor - self.start_factor
        return self._scaled(1.0 + change / (self.total_iters * self.start_factor + (self.last_epoch - 1) * change))


class CosineAnnealingLR(LRScheduler):
    """lr(t) = eta_min + (initial_lr - eta_min) * (1 + cos(pi t / T_max)) / 2 (periodic past
    T_max, as PyTorch's), computed as PyTorch does: from the previous step's lr."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if not T_max > 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be > 0, got {T_max}")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._current()
        if (t - 1 - T) % (2 * T) == 0:  # the bottom of a period: the recurrence below would divide by 0
            return [g["lr"] + (base - lo) * (1 - math.cos(math.pi / T)) / 2
                    for base, g in zip(self.base_lrs, self.optimizer.param_groups)]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (g["lr"] - lo) + lo for g in self.optimizer.param_groups]


# --- Hugging Face's schedules (transformers.optimization): LambdaLR with these factors ------------

def _warmup(step, num_warmup_steps):
    return float(step) / float(max(1, num_warmup_steps))


def _constant_factor(step, num_warmup_steps):
    return _warmup(step, num_warmup_steps) if step < num_warmup_steps else 1.0


def _linear_factor(step, num_warmup_steps, num_training_steps):
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def _cosine_factor(step, num_warmup_steps, num_training_steps, num_cycles):
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps, last_epoch=-1):
    """lr rises linearly from 0 to the initial lr over ``num_warmup_steps``, then stays."""
    return LambdaLR(optimizer, partial(_constant_factor, num_warmup_steps=num_warmup_steps), last_epoch)


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, last_epoch=-1):
    """Linear warmup from 0, then linear decay to 0 at ``num_training_steps`` (transformers')."""
    fn = partial(_linear_factor, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    return LambdaLR(optimizer, fn, last_epoch)


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, num_cycles=0.5,
                                    last_epoch=-1):
    """Linear warmup from 0, then a cosine down to 0 at ``num_training_steps`` (``num_cycles=0.5``:
    half a period), transformers' schedule."""
    fn = partial(_cosine_factor, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
                 num_cycles=num_cycles)
    return LambdaLR(optimizer, fn, last_epoch)
