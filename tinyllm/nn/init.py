"""Initialising weights in place, with ``torch.nn.init``'s names, formulas and defaults.

    rng = np.random.default_rng(1337)
    nn.init.normal_(layer.weight, mean=0.0, std=0.02, generator=rng)   # nanoGPT's _init_weights
    nn.init.zeros_(layer.bias)

Each function overwrites the tensor's values (keeping its array, so views of it see them) and
returns the tensor. The random ones draw from ``generator``, a ``np.random.Generator``. It is
required: tinyllm keeps no global random state (where PyTorch would use ``torch.manual_seed``'s),
so the same generator and seed give the same weights on every run.

The fans of a weight of shape (out, in, *kernel) are fan_in = in * prod(kernel) and fan_out =
out * prod(kernel), as PyTorch computes them (a ``Linear.weight`` is (out_features, in_features)).
"""
import math

import numpy as np

from ..factories import require_generator
from ..tensor import Tensor

__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """The gain PyTorch recommends for a nonlinearity: 1 (linear, sigmoid), 5/3 (tanh), sqrt 2
    (relu), sqrt(2 / (1 + slope^2)) (leaky_relu, slope ``param``, default 0.01), 3/4 (selu)."""
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; one of {list(_LINEAR)}, "
                     "'tanh', 'relu', 'leaky_relu', 'selu'")


# --- constant fills ------------------------------------------------------------------------------

def constant_(tensor, val):
    """Every value := ``val``."""
    return _fill(tensor, np.full(tensor.shape, val), "constant_")


def ones_(tensor):
    return constant_(tensor, 1.0)


def zeros_(tensor):
    return constant_(tensor, 0.0)


def eye_(tensor):
    """A 2-D tensor := the identity (ones on the diagonal of a rectangular one)."""
    if tensor.ndim != 2:
        raise ValueError(f"eye_: needs a 2-D tensor, got shape {tensor.shape}")
    return _fill(tensor, np.eye(*tensor.shape), "eye_")


# --- random fills --------------------------------------------------------------------------------

def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Values drawn from U(a, b)."""
    if not a <= b:
        raise ValueError(f"uniform_: needs a <= b, got a={a}, b={b}")
    return _fill(tensor, require_generator(generator, "uniform_").uniform(a, b, tensor.shape), "uniform_")


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Values drawn from N(mean, std^2)."""
    if not std >= 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    return _fill(tensor, require_generator(generator, "normal_").normal(mean, std, tensor.shape), "normal_")


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """Values drawn from N(mean, std^2) conditioned on a <= x <= b (absolute bounds, as
    PyTorch's), by redrawing the values that fall outside until none does."""
    if not a < b:
        raise ValueError(f"trunc_normal_: needs a < b, got a={a}, b={b}")
    if not std > 0:
        raise ValueError(f"trunc_normal_: std must be > 0, got {std}")
    if max((a - mean) / std, (mean - b) / std) > 6:
        raise ValueError(f"trunc_normal_: [a, b] = [{a}, {b}] lies more than 6 std from mean {mean}: almost no "
                         "draw would land there")
    rng = require_generator(generator, "trunc_normal_")
    values = rng.normal(mean, std, tensor.shape)
    outside = (values < a) | (values > b)
    while outside.any():
        values[outside] = rng.normal(mean, std, int(outside.sum()))
        outside = (values < a) | (values > b)
    return _fill(tensor, values, "trunc_normal_")


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot: U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor, "xavier_uniform_")
    bound = math.sqrt(3.0) * gain * math.sqrt(2.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor, "xavier_normal_")
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He: U(-bound, bound), bound = sqrt 3 * gain / sqrt(fan) (``mode`` picks fan_in or fan_out;
    the gain of ``nonlinearity``, with slope ``a`` for leaky_relu). ``torch.nn.Linear`` starts its
    weight with ``a=sqrt(5)``: U(-1/sqrt(in), 1/sqrt(in)), as :class:`~tinyllm.nn.Linear` does."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode, "kaiming_uniform_"))
    return uniform_(tensor, -math.sqrt(3.0) * std, math.sqrt(3.0) * std, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He: N(0, std^2), std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode, "kaiming_normal_"))
    return normal_(tensor, 0.0, std, generator)


# --- helpers -------------------------------------------------------------------------------------

def _fans(tensor, who):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel)."""
    if tensor.ndim < 2:
        raise ValueError(f"{who}: fan in and fan out need a tensor of at least 2 dimensions, got shape "
                         f"{tensor.shape}")
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor, mode, who):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{who}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(tensor, who)
    return fan_in if mode == "fan_in" else fan_out


def _fill(tensor, values, who):
    """Write ``values`` into ``tensor`` (a Tensor or an ndarray) in its dtype; return it.

    In place, so that views of the array (an optimizer's flat buffer) see the new values; a
    read-only array (weights memory-mapped from a file) is replaced by a new one instead.
    """
    array = tensor.data if isinstance(tensor, Tensor) else tensor
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise TypeError(f"{who}: needs a float Tensor or ndarray, got {type(tensor).__name__} of dtype "
                        f"{getattr(array, 'dtype', None)}")
    if array.flags.writeable:
        array[...] = values
    elif isinstance(tensor, Tensor):
        tensor.data = np.asarray(values, dtype=array.dtype)
    else:
        raise ValueError(f"{who}: the ndarray is read-only")
    return tensor
