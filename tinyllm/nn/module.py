"""``Module``, ``Parameter`` and the containers, with PyTorch's API.

A Module finds its parameters the way PyTorch does: every attribute that is a :class:`Parameter`
or another Module is registered, in assignment order, under its attribute name, so names compose
into dotted paths such as ``transformer.h.0.attn.c_attn.weight``.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from ..errors import StateDictError
from ..tensor import Tensor, dtype_or_cpu

__all__ = ["Parameter", "Module", "ModuleList", "ModuleDict", "Sequential", "IncompatibleKeys"]

# What load_state_dict returns: a pair, with torch's field names (result.missing_keys)
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A Tensor that is a model weight: it requires a gradient and a Module registers it."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of every layer and model.

    Subclasses set parameters and sub-modules as attributes in ``__init__`` and write
    ``forward``; ``module(x)`` calls ``forward(x)``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_persistent", set())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before setting {name!r}")
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array, persistent=True):
        """A non-trainable array that belongs to the module (e.g. a positional-encoding table).

        Persistent buffers are part of ``state_dict()``; non-persistent ones are rebuilt by
        ``__init__`` and never saved.
        """
        object.__setattr__(self, name, array)
        self._buffers[name] = array
        if persistent:
            self._persistent.add(name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- walking the tree -------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        """(name, module) of the direct sub-modules, in assignment order."""
        return iter(self._modules.items())

    def apply(self, fn):
        """Call ``fn(module)`` on every sub-module, children before their parent, and last on
        ``self``, as PyTorch's ``apply`` (nanoGPT's ``self.apply(self._init_weights)``). Returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix="", remove_duplicate=True):
        """(name, Parameter) pairs; a tied parameter is listed once, under its first name."""
        seen = set()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if remove_duplicate and id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        """(name, array) pairs of every registered buffer, as torch's."""
        for mod_name, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # --- state --------------------------------------------------------------------------------
    def state_dict(self):
        """Name -> ndarray of every parameter (tied ones under each of their names, as PyTorch)
        and every persistent buffer. The arrays are the live ones: copy them to keep a snapshot."""
        state = OrderedDict()
        for name, p in self.named_parameters(remove_duplicate=False):
            state[name] = p.data
        for mod_name, module in self.named_modules():
            for name in module._persistent:
                buffer = module._buffers[name]  # an ndarray, or a Tensor (torch code registers tensors)
                state[f"{mod_name}.{name}" if mod_name else name] = _as_array(buffer)
        return state

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy arrays into the parameters, checking names and shapes.

        With ``strict=True`` any missing, unexpected or mis-shaped key is an error that names
        them all (:class:`~tinyllm.errors.StateDictError`, both a ValueError and, as in PyTorch, a
        RuntimeError); a mis-shaped key is one even when not strict. A tied parameter needs only
        one of its names. Returns ``(missing_keys, unexpected_keys)``, a named pair as PyTorch's.
        ``assign=True`` (PyTorch's flag) makes each parameter hold the given array itself instead
        of a copy (converted only if its dtype differs): for a loader whose arrays are fresh.
        """
        state_dict = {k: _as_array(v) for k, v in state_dict.items()}  # (a torch state_dict too)
        params = dict(self.named_parameters(remove_duplicate=False))
        buffers = {
            f"{m}.{n}" if m else n: (mod, n) for m, mod in self.named_modules() for n in mod._persistent
        }
        unexpected = [k for k in state_dict if k not in params and k not in buffers]
        mis_shaped = [
            f"{k}: checkpoint {tuple(np.shape(v))} vs model {tuple(params[k].shape)}"
            for k, v in state_dict.items()
            if k in params and tuple(np.shape(v)) != tuple(params[k].shape)
        ]
        first_value = {}
        for k, v in state_dict.items():  # a tied weight given under two names must agree with itself
            if k in params and not mis_shaped:
                other = first_value.setdefault(id(params[k]), (k, v))
                if other[0] != k and not np.array_equal(other[1], v):
                    mis_shaped.append(f"{other[0]} and {k} are one tied parameter but hold different values")
        loaded = {id(params[k]) for k in state_dict if k in params}
        missing = [k for k, p in params.items() if id(p) not in loaded]
        missing += [k for k in buffers if k not in state_dict]
        problems = []
        if mis_shaped:
            problems.append("shapes differ for " + "; ".join(mis_shaped))
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if problems:
            raise StateDictError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for k, v in state_dict.items():
            if k in params:
                p = params[k]
                p.data = np.asarray(v, dtype=p.dtype) if assign else np.array(v, dtype=p.dtype, copy=True)
            elif k in buffers:
                mod, n = buffers[k]
                value = np.array(v, copy=True)
                mod.register_buffer(n, Tensor(value) if isinstance(mod._buffers[n], Tensor) else value, persistent=True)
        return IncompatibleKeys(missing, unexpected)

    # --- modes and gradients -------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            p.grad = None if set_to_none else (np.zeros_like(p.data) if p.grad is not None else None)

    def requires_grad_(self, flag=True):
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def cpu(self):
        """``self``: tinyllm runs on the CPU (``model.cpu()`` in PyTorch code changes nothing)."""
        return self

    def to(self, dtype):
        """Cast every float parameter and buffer to ``dtype`` (e.g. np.float64 for gradcheck).

        PyTorch's ``model.to("cpu")`` is accepted and changes nothing (tinyllm runs on the CPU);
        another device is a ValueError naming it.
        """
        dtype = dtype_or_cpu(dtype, "Module.to")
        if dtype is None:
            return self
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        for m in self.modules():
            for n, b in list(m._buffers.items()):
                if isinstance(b, np.ndarray) and b.dtype.kind == "f":
                    m.register_buffer(n, b.astype(dtype), persistent=n in m._persistent)
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # --- printing -----------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        if len(lines) == 1:
            return lines[0] + ")"
        n = self.num_parameters()
        return "\n".join(lines) + f"\n)  # {n:,} parameters"


class ModuleList(Module):
    """A list of modules registered under the names "0", "1", ... (``transformer.h.0...``)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after another, ``Sequential(Linear(4, 8), ReLU(), Linear(8, 2))``,
    registered under "0", "1", ... as in ``torch.nn.Sequential`` (so their state_dict keys agree)."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x


class ModuleDict(Module):
    """Modules registered under the given names (``transformer.wte``, ``transformer.h``, ...)."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in (modules or {}).items():
            setattr(self, name, m)

    def __getitem__(self, name):
        return self._modules[name]

    def __contains__(self, name):
        return name in self._modules

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()


def _as_array(value):
    """A state_dict value as NumPy takes it: a tensor of another library (torch's, with
    ``.detach().numpy()``) through its own conversion, which shares memory and does not warn as
    ``np.asarray(torch_tensor)`` does under NumPy 2; anything else as it is."""
    if isinstance(value, np.ndarray) or not callable(getattr(value, "numpy", None)):
        return value
    return value.detach().numpy() if callable(getattr(value, "detach", None)) else value.numpy()
