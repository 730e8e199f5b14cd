"""Operators as data: a module <-> ``{"kind": ..., **constructor arguments}`` (see
:mod:`dynode.spec`): the vocabulary, :func:`op_spec` and :func:`build_op`."""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from dynode import pipeline
from dynode.activations import Lambda, RectifiedPower, Supralinear
from dynode.adapters import Adapter, Resize, adapter
from dynode.errors import ConfigurationError
from dynode.models.ei import SignedConv, signed_recurrence
from dynode.models.normalization import Divide, Pool, Subtract
from dynode.models.readout import Readout
from dynode.models.recurrence import LocalRecurrence, SelfRecurrence, SumOf, recurrence
from dynode.models.retina import Retina
from dynode.spec.trust import spec_class, spec_function

__all__ = ["OPERATOR_KINDS", "op_spec", "build_op", "OpDict", "plain"]

OpDict = dict[str, Any]


def _import_path_of(obj) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def plain(x):
    """A JSON/YAML-safe copy: tuples become lists, numbers stay."""
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        raise ConfigurationError(f"a spec holds finite numbers only, got {x}")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    raise ConfigurationError(f"cannot write {type(x).__name__} {x!r} into a spec (numbers, strings, "
                             "lists and mappings only)")


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# torch.nn classes described by their constructor arguments, read back from the attributes
# of the same name (``bias``: whether there is one)
_TORCH = {
    "conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d, "conv_transpose2d": nn.ConvTranspose2d,
    "linear": nn.Linear, "bilinear": nn.Bilinear,
    "group_norm": nn.GroupNorm, "batch_norm1d": nn.BatchNorm1d, "batch_norm2d": nn.BatchNorm2d,
    "instance_norm2d": nn.InstanceNorm2d, "layer_norm": nn.LayerNorm, "local_response_norm": nn.LocalResponseNorm,
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "gelu": nn.GELU,
    "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "relu6": nn.ReLU6, "softmax": nn.Softmax,
    "max_pool2d": nn.MaxPool2d, "avg_pool2d": nn.AvgPool2d, "adaptive_avg_pool2d": nn.AdaptiveAvgPool2d,
    "adaptive_max_pool2d": nn.AdaptiveMaxPool2d, "flatten": nn.Flatten, "unflatten": nn.Unflatten,
    "dropout": nn.Dropout, "dropout2d": nn.Dropout2d, "upsample": nn.Upsample,
}
_SKIP_ARGS = {"self", "device", "dtype"}


def _torch_kwargs(kind: str, module: nn.Module) -> OpDict:
    cls = _TORCH[kind]
    out: OpDict = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in _SKIP_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name == "bias":
            b = getattr(module, "bias", None)
            out[name] = b if isinstance(b, bool) else b is not None
            continue
        if not hasattr(module, name):
            raise ConfigurationError(f"cannot describe {type(module).__name__}: no attribute {name!r}")
        out[name] = plain(getattr(module, name))
    return out


def _dynode_classes() -> dict[str, type]:

    Sum = getattr(pipeline, "SumCombine", None) or getattr(pipeline, "Sum")

    return {"supralinear": Supralinear, "rectified_power": RectifiedPower, "resize_project": Adapter,
            "resize": Resize, "signed_conv": SignedConv, "divide": Divide, "pool": Pool,
            "subtract": Subtract, "readout": Readout, "local_recurrence": LocalRecurrence,
            "self_recurrence": SelfRecurrence, "sum_of": SumOf, "retina": Retina, "sum": Sum}


def _dynode_kwargs(kind: str, m: nn.Module) -> OpDict:
    """Constructor arguments of dynode's building blocks, from their attributes (initial
    values that training changes, such as a pool's weight, are read from the current values)."""
    if kind in ("supralinear", "rectified_power"):
        return {"n": m.n, "k": m.k}
    if kind == "resize_project":
        return {"resize": None if m.resize is None else op_spec(m.resize),
                "project": None if m.project is None else op_spec(m.project)}
    if kind == "resize":
        return {"in_size": list(m.in_size), "size": list(m.size)}
    if kind == "signed_conv":
        fan_in = (m.c_in // m.groups) * (m.kernel_size or 1) ** 2
        return {"c_in": m.c_in, "c_out": m.c_out, "kernel_size": m.kernel_size, "sign": m.sign,
                "groups": m.groups, "gain": float(m.weight.detach().abs().mean()) * fan_in}
    if kind == "pool":
        w = float(m.weight.detach().abs().mean())
        return {"shape": list(m.shape), "pool": m.pool,
                "weight": w * m.shape[0] if m.pool in ("channel", "both") else w,
                "learn": isinstance(m.weight, nn.Parameter), "magnitude": m.magnitude,
                "neighborhood": m.neighborhood}
    if kind in ("divide", "subtract"):
        # the module's own ``kind`` (a label for summaries) is stored as ``label``
        out = {"source": m.source, "inner": None if m.inner is None else op_spec(m.inner), "label": m.kind}
        if kind == "divide":
            out.update(sigma=float(m.sigma.detach()), learn_sigma=isinstance(m.s, nn.Parameter))
        return out
    if kind == "readout":
        return {"population": m.population, "shape": list(m.shape), "num_classes": m.num_classes,
                "at": m.at, "window": None if m.window is None else list(m.window), "pool": m.pool,
                "bias": m.linear.bias is not None}
    if kind == "local_recurrence":
        return {"channels": m.channels, "kernel_size": m.kernel_size,
                "gain": float(m.kernel.detach().std()) * m.kernel_size if m.kernel.numel() > 1 else 0.1,
                "bias": m.bias is not None}
    if kind == "self_recurrence":
        return {"channels": m.channels, "gain": float(m.weight.detach().mean()), "bias": m.bias is not None}
    if kind == "sum_of":
        return {"modules": [op_spec(op) for op in m.ops]}
    if kind == "retina":
        sc, ss, sn = (float(v) for v in m.log_sigma.detach().exp())
        return {"channels": m.channels, "kernel_size": m.kernel_size, "sigma_center": sc,
                "sigma_surround": ss, "surround_weight": float(m.surround_weight.detach()),
                "sigma_norm": sn, "eps": m.eps, "learnable": m.learnable, "on_off": m.on_off}
    return {}  # sum


def op_spec(module: nn.Module) -> OpDict:
    """``{"kind": ..., **constructor arguments}`` of one operator module.

    In order: a module made by a factory that tagged it (``module.dynode_spec``, e.g.
    :func:`dynode.models.recurrence`), a class of the vocabulary, a class with a
    ``spec_kwargs()`` method (stored as its import path), ``nn.Sequential`` of those. Anything
    else is a :class:`~dynode.errors.ConfigurationError` saying how to describe it.
    """

    tag = module.__dict__.get("dynode_spec")
    if isinstance(tag, Mapping) and "kind" in tag:
        return plain(dict(tag))
    cls = type(module)
    if hasattr(module, "spec_kwargs") and callable(module.spec_kwargs):
        return {"kind": _import_path_of(cls), **plain(dict(module.spec_kwargs()))}
    if cls is nn.Identity:
        return {"kind": "identity"}
    if cls is nn.Sequential:
        names = list(module._modules)
        out = {"kind": "sequential", "modules": [op_spec(m) for m in module]}
        if names != [str(i) for i in range(len(names))]:
            out["names"] = names
        return out
    if cls is Lambda:
        fn = module.fn
        path = f"{getattr(fn, '__module__', None)}:{getattr(fn, '__qualname__', '')}"
        if "<" in path or path.startswith("None:"):
            raise ConfigurationError(f"the activation {fn!r} is a lambda or local function; a spec can "
                                     "name only an importable function (define it at module level)")
        return {"kind": "function", "path": path}
    for kind, k in _TORCH.items():
        if cls is k:
            return {"kind": kind, **_torch_kwargs(kind, module)}
    for kind, k in _dynode_classes().items():
        if cls is k:
            return {"kind": kind, **_dynode_kwargs(kind, module)}
    raise ConfigurationError(
        f"operator {cls.__module__}.{cls.__qualname__} is not in the spec vocabulary ({', '.join(OPERATOR_KINDS)}); "
        f"give the class a method spec_kwargs(self) -> dict returning its constructor's keyword arguments "
        f"(the spec then stores it as '{_import_path_of(cls)}' with them)")


# -- building ---------------------------------------------------------------------------------
def _build_sequential(modules: list, names: list | None = None):
    mods = [build_op(m, f"sequential[{i}]") for i, m in enumerate(modules)]
    if names is None:
        return nn.Sequential(*mods)
    if len(names) != len(mods):
        raise ConfigurationError(f"sequential: {len(names)} names for {len(mods)} modules")
    return nn.Sequential(OrderedDict(zip(names, mods)))


def _build_function(path: str):
    return Lambda(spec_function(path))


def _nested(kind: str, builder: Callable, keys: tuple[str, ...]):
    def build(**kw):
        for k in keys:
            v = kw.get(k)
            if isinstance(v, Mapping):
                kw[k] = build_op(v, f"{kind}.{k}")
            elif isinstance(v, list) and v and isinstance(v[0], Mapping):
                kw[k] = [build_op(x, f"{kind}.{k}[{i}]") for i, x in enumerate(v)]
        return builder(**kw)
    build.__signature__ = inspect.signature(builder)  # type: ignore[attr-defined]
    return build


def _builders() -> dict[str, Callable]:
    b: dict[str, Callable] = {"identity": lambda: nn.Identity(), "sequential": _build_sequential,
                              "recurrence": recurrence, "signed_recurrence": signed_recurrence,
                              "adapter": adapter, "function": _build_function}
    b.update(_TORCH)
    for kind, cls in _dynode_classes().items():
        if kind == "resize_project":
            b[kind] = _nested(kind, cls, ("resize", "project"))
        elif kind == "divide":
            def divide(source: str, sigma: float = 1.0, learn_sigma: bool = True, inner: OpDict | None = None,
                       label: str = "divisive", _cls=cls):
                return _cls(source, sigma, learn_sigma=learn_sigma, kind=label,
                            inner=None if inner is None else build_op(inner, "divide.inner"))
            b[kind] = divide
        elif kind == "subtract":
            def subtract(source: str, inner: OpDict | None = None, label: str = "subtractive", _cls=cls):
                return _cls(source, kind=label, inner=None if inner is None else build_op(inner, "subtract.inner"))
            b[kind] = subtract
        elif kind == "sum_of":
            def sum_of(modules: list):
                return SumOf(*(build_op(m, f"sum_of[{i}]") for i, m in enumerate(modules)))
            b[kind] = sum_of
        else:
            b[kind] = cls
    return b


OPERATOR_KINDS = ("identity", "sequential", "recurrence", "signed_recurrence", "adapter", "function",
                  *_TORCH, "supralinear", "rectified_power", "resize_project", "resize", "signed_conv",
                  "divide", "pool", "subtract", "readout", "local_recurrence", "self_recurrence",
                  "sum_of", "retina", "sum")
"""The operator kinds a spec names without an import path."""


def _check_kwargs(fn: Callable, kwargs: Mapping, what: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n not in _SKIP_ARGS and p.kind != p.VAR_POSITIONAL
               and not n.startswith("_")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigurationError(f"{what}: unknown arguments {unknown}; it takes {allowed}")
    missing = [n for n, p in params.items() if n in allowed and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs]
    if missing:
        raise ConfigurationError(f"{what}: missing arguments {missing}")


def build_op(data: Mapping, what: str = "operator") -> nn.Module:
    """The module described by ``{"kind": ..., **kwargs}`` (see :func:`op_spec`)."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ConfigurationError(f"{what}: an operator is a mapping with a 'kind', got {data!r}")
    kwargs = {k: v for k, v in data.items() if k != "kind"}
    kind = data["kind"]
    if not isinstance(kind, str):
        raise ConfigurationError(f"{what}: kind must be a string, got {kind!r}")
    builders = _builders()
    if kind in builders:
        fn = builders[kind]
        if kind in _TORCH:
            kwargs = {k: _tuples(v) for k, v in kwargs.items()}
        elif kind in ("resize", "readout"):
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    elif ":" in kind:
        fn = spec_class(kind, what)
    else:
        raise ConfigurationError(f"{what}: unknown operator kind {kind!r}; known: {', '.join(OPERATOR_KINDS)}, "
                                 "or an import path 'package.module:Name'")
    _check_kwargs(fn, kwargs, f"{what} ({kind})")
    try:
        module = fn(**kwargs)
    except ConfigurationError as exc:
        raise type(exc)(f"{what} ({kind}): {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what} ({kind}): {exc}") from None
    if not isinstance(module, nn.Module):
        raise ConfigurationError(f"{what}: {kind!r} returned {type(module).__name__}, not an nn.Module")
    return module

