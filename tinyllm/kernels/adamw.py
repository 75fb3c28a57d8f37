"""One AdamW update of a parameter and its two moment estimates, in place (``torch.optim.AdamW``,
without amsgrad). ``step`` is the 1-based count of this update. Element-wise::

    param      = param * (1 - lr * weight_decay)              (decoupled weight decay)
    exp_avg    = beta1 * exp_avg    + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad^2
    bias_correction1 = 1 - beta1^step
    bias_correction2 = 1 - beta2^step
    denom      = sqrt(exp_avg_sq) / sqrt(bias_correction2) + eps
    param      = param - (lr / bias_correction1) * exp_avg / denom

``adamw_step_ref`` is the NumPy spec; :func:`adamw_step` does the same in one fused numba pass.
"""
import math

import numpy as np

from .systems.address import array_at, gather
from .systems.jit import njit, prange

__all__ = ["adamw_step_ref", "adamw_step", "adamw_step_gathered", "adamw_group_step_ref", "adamw_group_step",
           "sum_of_squares_ref", "sum_of_squares", "gather_floats", "sums_of_squares", "scale_all",
           "clip_grad_norm_ref", "clip_grad_norm"]

_CHUNK = 16384  # elements per parallel work item


# ----------------------------------------------------------------------------------------------
# NumPy reference


def adamw_step_ref(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """Update param, exp_avg, exp_avg_sq (same shape as grad) in place. Returns None."""
    param *= 1.0 - lr * weight_decay
    exp_avg *= beta1
    exp_avg += (1.0 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1.0 - beta2) * grad * grad
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + eps
    param -= (lr / bias_correction1) * exp_avg / denom


# ----------------------------------------------------------------------------------------------
# numba kernel


@njit
def _adamw_chunk(param, grad, exp_avg, exp_avg_sq, decay, beta1, one_minus_beta1, beta2,
                 one_minus_beta2, neg_step_size, bc2_sqrt, eps):
    """The update below on one chunk (slices of the four arrays). The loop runs over
    range(len) of its own slices: with indices that numba cannot prove non-negative it adds a
    wraparound branch per element, and LLVM does not vectorise a loop with a branch in it."""
    lerp = one_minus_beta1 < 0.5
    for k in range(param.shape[0]):
        g = grad[k]
        if lerp:  # lerp(m, g, w = 1 - beta1), PyTorch's two-sided formula
            m = exp_avg[k] + one_minus_beta1 * (g - exp_avg[k])
        else:  # exact at w = 1 (beta1 = 0): m = g
            m = g - (g - exp_avg[k]) * beta1
        v = exp_avg_sq[k] * beta2 + one_minus_beta2 * g * g
        exp_avg[k] = m
        exp_avg_sq[k] = v
        denom = np.sqrt(v) / bc2_sqrt + eps
        param[k] = param[k] * decay + neg_step_size * m / denom


@njit(parallel=True)
def _adamw_kernel(param, grad, exp_avg, exp_avg_sq, decay, beta1, one_minus_beta1, beta2,
                  one_minus_beta2, neg_step_size, bc2_sqrt, eps):
    """All arrays (n,), the scalars in their dtype: decay = 1 - lr * weight_decay,
    neg_step_size = -lr / bias_correction1, bc2_sqrt = sqrt(bias_correction2).

    for each chunk of _CHUNK elements (parallel): for k in chunk: the update above, in the
    arrays' own precision and in PyTorch's order of operations (m by lerp, param by addcdiv),
    so a float32 run follows torch.optim.AdamW closely.
    """
    n = param.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = c * _CHUNK, min((c + 1) * _CHUNK, n)
        _adamw_chunk(param[lo:hi], grad[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi], decay, beta1,
                     one_minus_beta1, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps)


# ----------------------------------------------------------------------------------------------
# public wrapper


def _check_hyperparameters(lr, beta1, beta2, eps, weight_decay, step):
    fn = "adamw_step"
    if not lr >= 0.0:  # also rejects nan
        raise ValueError(f"{fn}: lr must be >= 0, got {lr}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{fn}: {name} must be in [0, 1), got {beta}")
    if not eps >= 0.0:
        raise ValueError(f"{fn}: eps must be >= 0, got {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"{fn}: weight_decay must be >= 0, got {weight_decay}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer >= 1 (the count of this update), got {step!r}")


def _check_arrays(param, grad, exp_avg, exp_avg_sq):
    fn = "adamw_step"
    arrays = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{fn}: {name} has dtype {a.dtype}, expected float32 or float64")
        if a.shape != param.shape or a.dtype != param.dtype:
            raise ValueError(f"{fn}: {name} is {a.dtype} {a.shape} but param is {param.dtype} {param.shape}")
    for name in ("param", "exp_avg", "exp_avg_sq"):
        a = arrays[name]
        if not a.flags.c_contiguous:
            raise ValueError(
                f"{fn}: {name} (shape {a.shape}, strides {a.strides}) is not C-contiguous; it is updated "
                "in place, and a contiguous copy would leave the caller's array unchanged"
            )
        if not a.flags.writeable:
            raise ValueError(f"{fn}: {name} is read-only but is updated in place")


def _scalars(dtype, lr, beta1, beta2, eps, weight_decay, step):
    """The kernels' scalar arguments, in the arrays' dtype (float32 arrays: float32 arithmetic, as PyTorch)."""
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    scalar = dtype.type
    return (scalar(1.0 - lr * weight_decay), scalar(beta1), scalar(1.0 - beta1), scalar(beta2), scalar(1.0 - beta2),
            scalar(-lr / bias_correction1), scalar(math.sqrt(bias_correction2)), scalar(eps))


def adamw_step_gathered(param, grads, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """:func:`adamw_step` on flat (n,) buffers whose consecutive pieces belong to the arrays in
    ``grads`` (in order, sizes summing to n), reading each gradient in place instead of copying
    them all into one flat gradient first (a whole extra pass over the gradients' memory).

    Returns False, having done nothing, if the gradients cannot be read in place (one not a
    C-contiguous writeable array of param's dtype, or sizes that do not add up to the pieces):
    the caller then copies them into a flat gradient and calls :func:`adamw_step`.
    """
    _check_hyperparameters(lr, beta1, beta2, eps, weight_decay, step)
    _check_arrays(param, param, exp_avg, exp_avg_sq)  # the flat buffers (the gradients: gather)
    table = gather(grads, param.dtype)
    if table is None or table[1][-1] != param.size:
        return False
    _adamw_gathered_kernel(param.reshape(-1), *table, exp_avg.reshape(-1), exp_avg_sq.reshape(-1),
                           *_scalars(param.dtype, lr, beta1, beta2, eps, weight_decay, step))
    return True


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """Fused numba AdamW update, in place; same contract as :func:`adamw_step_ref`.

    param, exp_avg, exp_avg_sq must be C-contiguous and writeable; grad may have any layout.
    All four share one shape and one float dtype. Returns None.
    """
    _check_hyperparameters(lr, beta1, beta2, eps, weight_decay, step)
    _check_arrays(param, grad, exp_avg, exp_avg_sq)
    _adamw_kernel(param.reshape(-1), np.ascontiguousarray(grad).reshape(-1), exp_avg.reshape(-1),
                  exp_avg_sq.reshape(-1), *_scalars(param.dtype, lr, beta1, beta2, eps, weight_decay, step))


@njit(parallel=True)
def _adamw_gathered_kernel(param, addresses, offsets, exp_avg, exp_avg_sq, decay, beta1, one_minus_beta1,
                           beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps):
    """:func:`_adamw_kernel` with the gradient read where it lies: piece k of the flat buffers
    (elements offsets[k] .. offsets[k + 1]) takes its gradient from the array at addresses[k].
    A chunk of _CHUNK elements may span several pieces; each piece is one _adamw_chunk call."""
    n = param.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = c * _CHUNK, min((c + 1) * _CHUNK, n)
        k = np.searchsorted(offsets, lo, side="right") - 1  # the piece holding element lo
        while lo < hi:
            start, stop = offsets[k], offsets[k + 1]
            end = min(hi, stop)
            grad = array_at(addresses[k], stop - start, param)
            _adamw_chunk(param[lo:end], grad[lo - start:end - start], exp_avg[lo:end], exp_avg_sq[lo:end],
                         decay, beta1, one_minus_beta1, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps)
            lo = end
            k += 1


# ----------------------------------------------------------------------------------------------
# the squared L2 norm that gradient clipping needs


def sum_of_squares_ref(x):
    """sum(x^2) in float64, as a Python float (the reference: a float64 copy and a dot product)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    return float(np.dot(flat, flat))


@njit(fastmath={"reassoc"})
def _sum_of_squares_kernel(x):
    """x (n,) -> sum of x[k]^2 accumulated in float64. fastmath "reassoc" lets LLVM keep
    partial sums in the lanes of vector registers (the order of the additions changes, the
    precision does not)."""
    total = 0.0
    for k in range(x.shape[0]):
        v = np.float64(x[k])
        total += v * v
    return total


def sum_of_squares(x):
    """sum(x^2) in float64 without a float64 copy of x (float32 or float64 arrays of any shape)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"sum_of_squares: x has dtype {x.dtype}, expected float32 or float64")
    return float(_sum_of_squares_kernel(np.ascontiguousarray(x).reshape(-1)))


@njit(parallel=True)
def _sums_of_squares_kernel(addresses, offsets, like, out):
    """out[k] = sum of squares of the array at addresses[k] (float64), arrays in parallel."""
    for k in prange(addresses.shape[0]):
        out[k] = _sum_of_squares_kernel(array_at(addresses[k], offsets[k + 1] - offsets[k], like))


@njit(parallel=True)
def _scale_kernel(addresses, offsets, like, coef):
    """Each array at addresses[k] *= coef, in place, arrays in parallel."""
    for k in prange(addresses.shape[0]):
        a = array_at(addresses[k], offsets[k + 1] - offsets[k], like)
        for j in range(a.shape[0]):
            a[j] *= coef


def gather_floats(arrays):
    """:func:`.systems.address.gather` of float32 or float64 arrays (all of the first one's dtype), or None."""
    dtype = getattr(arrays[0], "dtype", None) if arrays else None
    return gather(arrays, dtype) if dtype in (np.float32, np.float64) else None


def sums_of_squares(arrays, table=None):
    """[sum(a^2) for a in arrays] as float64 (n,): one parallel kernel over all of them where they
    can be read in place (``table``, from :func:`gather_floats`, made here if not given), else
    :func:`sum_of_squares` one by one. The same numbers either way (each array's sum is the same
    loop)."""
    arrays = list(arrays)
    table = gather_floats(arrays) if table is None else table
    if table is None:
        return np.array([sum_of_squares(a) for a in arrays], dtype=np.float64)
    out = np.empty(len(arrays))
    _sums_of_squares_kernel(*table, arrays[0], out)
    return out


def scale_all(arrays, coef, table=None):
    """a *= coef (in a's dtype) for every array, in place, in one parallel kernel (``table`` as in
    :func:`sums_of_squares`). Returns False, having done nothing, if they cannot be read in place."""
    arrays = list(arrays)
    table = gather_floats(arrays) if table is None else table
    if table is None:
        return False
    _scale_kernel(*table, arrays[0], arrays[0].dtype.type(coef))
    return True


# ----------------------------------------------------------------------------------------------
# a whole parameter group, and gradient clipping: what tinyllm.optim calls


def adamw_group_step_ref(params, grads, states, cache, *, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step of every parameter of a group, one at a time, with :func:`adamw_step_ref`.

    params, grads: lists of arrays; states: one dict per parameter, ``{"step": int, "exp_avg":
    array, "exp_avg_sq": array}`` (step counts the updates done so far), updated in place.
    ``cache`` is a dict that :func:`adamw_group_step` keeps between calls; the reference keeps
    nothing in it. Returns the arrays the parameters hold afterwards: ``params`` itself, updated
    in place (a read-only one is replaced by an updated copy).
    """
    updated = []
    for param, grad, state in zip(params, grads, states):
        state["step"] += 1
        if not param.flags.writeable:
            param = param.copy()
        adamw_step_ref(param, grad.astype(param.dtype, copy=False), state["exp_avg"], state["exp_avg_sq"],
                       lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=state["step"])
        updated.append(param)
    return updated


def adamw_group_step(params, grads, states, cache, *, lr, beta1, beta2, eps, weight_decay):
    """:func:`adamw_group_step_ref` as one kernel call for the whole group (~50 parameters on a
    small GPT) instead of one per parameter.

    The group's parameters and both moments are moved into three flat buffers (kept in
    ``cache`` from one step to the next): the returned parameter arrays, and the moments left in
    ``states``, are views of their slices, and :func:`adamw_step_gathered` updates all of them
    at once, reading each gradient where it lies. The values are the same as the per-parameter
    update's, element for element. When the parameters or moments are no longer those views
    (a parameter rebound, ``load_state_dict``) the buffers are rebuilt from the current values;
    parameters of mixed dtypes or step counts take one :func:`adamw_step` call each.
    """
    settings = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    flat = cache.get("flat")
    if flat is None or not flat.holds(params, states):
        flat = cache["flat"] = _FlatGroup.build(params, states)
    if flat is None:
        return _adamw_one_by_one(params, grads, states, settings)
    flat.step(grads, settings)
    return list(flat.params)


def _adamw_one_by_one(params, grads, states, settings):
    updated = []
    for param, grad, state in zip(params, grads, states):
        state["step"] += 1
        param = np.ascontiguousarray(param)
        adamw_step(param, np.ascontiguousarray(grad, dtype=param.dtype), state["exp_avg"], state["exp_avg_sq"],
                   **settings, step=state["step"])
        updated.append(param)
    return updated


class _FlatGroup:
    """A group's parameters and moments in one flat buffer each; hands out views of the slices."""

    @classmethod
    def build(cls, params, states):
        """A _FlatGroup holding the current values, or None if the parameters do not share one
        float dtype and one step count."""
        dtypes = {p.dtype for p in params}
        steps = {s["step"] for s in states}
        if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64) or len(steps) != 1:
            return None
        return cls(params, states)

    def __init__(self, params, states):
        sizes = [p.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n, dtype = self.offsets[-1], params[0].dtype
        self.param, self.grad = np.empty(n, dtype), np.empty(n, dtype)
        self.exp_avg, self.exp_avg_sq = np.zeros(n, dtype), np.zeros(n, dtype)
        self.step_count = states[0]["step"]
        self.params, self.moments = [], []  # the views handed out: p, and (exp_avg, exp_avg_sq)
        for p, state, lo, hi in zip(params, states, self.offsets[:-1], self.offsets[1:]):
            view = self.param[lo:hi].reshape(p.shape)
            view[...] = p
            moments = self.exp_avg[lo:hi].reshape(p.shape), self.exp_avg_sq[lo:hi].reshape(p.shape)
            for name, moment in zip(("exp_avg", "exp_avg_sq"), moments):
                moment[...] = state[name]
                state[name] = moment
            self.params.append(view)
            self.moments.append(moments)
        self.states = states

    def holds(self, params, states):
        """Still valid: the same parameters in order, each still our view, and so are their
        moments, with the step count we know."""
        if len(params) != len(self.params) or len(states) != len(self.states):
            return False
        for p, s, view, (m, v) in zip(params, states, self.params, self.moments):
            if p is not view or s["exp_avg"] is not m or s["exp_avg_sq"] is not v or s["step"] != self.step_count:
                return False
        return True

    def step(self, grads, settings):
        self.step_count += 1
        settings = dict(settings, step=self.step_count)
        # the gradients read where they lie, or (any of them not a plain contiguous array) copied
        if not adamw_step_gathered(self.param, grads, self.exp_avg, self.exp_avg_sq, **settings):
            for g, lo, hi in zip(grads, self.offsets[:-1], self.offsets[1:]):
                self.grad[lo:hi] = g.reshape(-1)
            adamw_step(self.param, self.grad, self.exp_avg, self.exp_avg_sq, **settings)
        for s in self.states:
            s["step"] = self.step_count


def clip_grad_norm_ref(grads, max_norm):
    """Scale the arrays ``grads`` together so that their joint L2 norm is at most ``max_norm``:
    ``norm = sqrt(sum of all squares)`` (float64), and if ``norm > max_norm`` every array is
    multiplied by ``max_norm / (norm + 1e-6)`` in place (a read-only one: a scaled copy).
    Returns ``(norm, arrays)``: the norm before clipping and the arrays to keep."""
    norm = math.sqrt(sum(sum_of_squares_ref(g) for g in grads))
    coef = max_norm / (norm + 1e-6)
    if coef >= 1.0:
        return norm, list(grads)
    return norm, [_scaled(g, coef) for g in grads]


def _scaled(g, coef):
    coef = np.asarray(coef, dtype=g.dtype)
    if g.flags.writeable:
        g *= coef
        return g
    return g * coef


def clip_grad_norm(grads, max_norm):
    """:func:`clip_grad_norm_ref` with one parallel kernel for all the squares and one for all the
    scaling, reading the arrays where they lie (:mod:`.systems.address`); where they cannot be
    read that way, array by array. The norm's terms are added up in the same order either way."""
    grads = list(grads)
    table = gather_floats(grads)  # their addresses, for one kernel over all; None: one by one
    norm = math.sqrt(sum(sums_of_squares(grads, table)))
    coef = max_norm / (norm + 1e-6)
    if coef >= 1.0 or scale_all(grads, coef, table):
        return norm, grads
    return norm, [_scaled(g, coef) for g in grads]
