r"""Networks as data: a declarative, versioned model spec that a :class:`dynode.Network` round-trips.

A spec lists what :class:`~dynode.Network`'s builder calls make, in order::

    spec_version: 1
    inputs: {image: [1, 16, 16]}
    populations:                       # declaration order = evaluation order
      - {name: V1, shape: [8, 8, 8], tau: 5.0, phi: {kind: relu}, bias: false}
    connections:                       # connect() order (the summation order of u)
      - {src: image, dst: V1, delay: 0.0,
         op: {kind: conv2d, in_channels: 1, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}}
      - {src: V1, dst: V1, delay: 6.0, op: {kind: recurrence, type: full, channels: 8}}
    readout: {kind: readout, population: V1, shape: [8, 8, 8], num_classes: 10}
    protocol: {dt: 2.0, t_end: 40.0, solver: {kind: euler}}

so that ``tau_p dr_p/dt = -r_p + Phi_p(combine_p({op_c(r_src(c)(t - d_c))}) + b_p)`` is
fully described by data. An operator (``op``, ``phi``, ``combine``, the readout) is a mapping
with a ``kind`` and that kind's constructor arguments: a kind of the vocabulary
(:data:`OPERATOR_KINDS`: ``conv2d``, ``linear``, ``recurrence`` (any type of
:mod:`dynode.models.recurrence`), ``adapter`` (the automatic skip/feedback adapter from two
shapes), ``identity``, the activations, the normalization/adaptation/E-I modules, ...), or an
import path ``"pkg.mod:Name"`` whose remaining keys are its keyword arguments (the class
describes itself with a ``spec_kwargs()`` method returning them). ``op: null`` in a
connection is ``connect(op=None)``: the identity or the automatic adapter.

The spec is the architecture (and the initial values of hyper-parameters such as a pool's
weight); the trained values are the ``state_dict``. :func:`network_spec` reads a network
through its public attributes and checks that the spec rebuilds the same parameter layout;
:func:`build_network` replays the builder calls; checkpoints (:mod:`dynode.train`) and
archives store the spec, and :func:`load_model` rebuilds the trained network from a
checkpoint alone. Bad input (an unknown kind, an import path that does not import, a spec
written by a newer dynode, a typo in a key) is a :class:`~dynode.errors.ConfigurationError`
before anything is built.

A spec is data, whoever wrote it: building one imports and calls only the vocabulary, the
``nn.Module`` classes of ``torch.nn`` and dynode (checked to be such classes before they are
called) and, for ``{"kind": "function"}``, the tensor functions of ``torch``,
``torch.nn.functional``, ``torch.special`` and :mod:`dynode.activations`. Any other import
path is refused before its module is imported, unless the user trusts the file:
``build_network(spec, trust_code=True)``, ``load_spec(path, trust_code=True)``,
:func:`dynode.load_model` ``(..., trust_code=True)``. The current folder is never added to the
import path.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, PrivateAttr, ValidationError
from torch import nn

from dynode.datafile import load_yaml, read_text
from dynode.errors import ConfigurationError, DynodeError, describe_validation_error
from dynode.solver_config import FrozenConfig, solver_config
from dynode import pipeline
from dynode.activations import Lambda, RectifiedPower, Supralinear
from dynode.adapters import Adapter, Resize, adapter
from dynode.models.ei import SignedConv, signed_recurrence
from dynode.models.normalization import Divide, Pool, Subtract
from dynode.models.readout import Readout
from dynode.models.recurrence import LocalRecurrence, SelfRecurrence, SumOf, recurrence
from dynode.models.retina import Retina
from dynode.integrate import require_memory
from dynode.network import Network
from dynode.pipeline import Combine

__all__ = ["SPEC_VERSION", "ModelSpec", "PopulationSpec", "ConnectionSpec", "OPERATOR_KINDS",
           "network_spec", "build_network", "op_spec", "build_op", "load_spec", "save_spec",
           "import_object", "weights_fingerprint", "trusting", "check_imports"]

SPEC_VERSION = 1
"""The version this dynode writes; a spec of a higher version is refused (written by a newer dynode)."""

OpDict = dict[str, Any]


class PopulationSpec(FrozenConfig):
    """``add_population(name, shape, tau, phi, bias, combine)``; ``pipeline``: ``phi`` changes
    the shape (e.g. pools), so it is declared as ``pipeline=[combine, phi]``; ``role``: ``area``
    or the auxiliary role a component gave it. ``tau``: ms, a number or a nested list (per unit)."""

    name: str
    shape: list[int]
    tau: float | list
    phi: OpDict
    bias: Literal[False, "channel", "unit"] = False
    combine: OpDict | None = None
    pipeline: bool = False
    role: str = "area"


class ConnectionSpec(FrozenConfig):
    """``connect(src, dst, op, delay, skip_initial=...)``; ``op: null``: identity or the automatic adapter."""

    src: str
    dst: str
    delay: float = Field(0.0, ge=0)
    op: OpDict | None = None
    skip_initial: bool = False


class ProtocolSpec(FrozenConfig):
    """``net.protocol``: how the model is meant to be run (ms)."""

    dt: float | None = None
    t_end: float | None = None
    solver: OpDict | str = "euler"
    steps: int | None = None
    stimulus_onset: float | None = None
    stimulus_duration: float | None = None


class ModelSpec(FrozenConfig):
    """A whole network as data (see the module doc)."""

    spec_version: int = SPEC_VERSION
    inputs: dict[str, list[int]]
    populations: list[PopulationSpec]
    connections: list[ConnectionSpec] = Field(default_factory=list)
    readout: OpDict | None = None
    protocol: ProtocolSpec | None = None
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"
    _trusted: bool = PrivateAttr(default=False)

    @property
    def trusted(self) -> bool:
        """Whether the user opted in to the import paths of this spec (``load_spec(path,
        trust_code=True)``); not part of the data, never written."""
        return self._trusted

    @classmethod
    def from_data(cls, data: Any, where: str = "model spec") -> "ModelSpec":
        """Validate a dict (e.g. from YAML): the version first, then every key."""
        if isinstance(data, ModelSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where}: a model spec is a mapping (spec_version, inputs, "
                                     f"populations, ...), got {type(data).__name__}")
        version = data.get("spec_version", SPEC_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigurationError(f"{where}: spec_version must be a positive int, got {version!r}")
        if version > SPEC_VERSION:
            raise ConfigurationError(f"{where}: spec_version {version} was written by a newer dynode; this "
                                     f"dynode reads spec_version <= {SPEC_VERSION} (upgrade dynode)")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigurationError(f"{where}: {describe_validation_error(exc)}") from None


# ============================================================================================
# Operators: module <-> {"kind": ..., **kwargs}
# ============================================================================================
def import_object(path: str, what: str = "import path") -> Any:
    """The object at ``"pkg.mod:Name"`` (``Name`` may be dotted: ``"pkg.mod:Outer.Inner"``).

    This imports ``pkg.mod``, i.e. runs its code: call it only for a path the user chose (see
    :func:`trusting`). The module comes from the installed packages or ``sys.path``; the
    current folder is not added."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ConfigurationError(f"{what} {path!r}: write it as 'package.module:Name'")
    mod_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigurationError(f"{what} {path!r}: cannot import module {mod_name!r} ({exc}); is the package "
                                 "installed or on PYTHONPATH? (the current folder is not searched: "
                                 "PYTHONPATH=. dynode ... for a module next to your config)") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{what} {path!r}: module {mod_name!r} has no {attr!r}") from None
    return obj


# -- what a spec may import ------------------------------------------------------------------
# A spec, a checkpoint or an archive is data: building the network it describes runs dynode's
# vocabulary and the constructors of torch.nn / dynode module classes only. Any other import
# path is code named by the file, honoured only under trusting(True).
_TRUST: ContextVar[bool] = ContextVar("dynode_trust_code", default=False)
_SAFE_ROOTS = ("torch.nn", "dynode")  # packages whose nn.Module classes a spec names without trust
_SAFE_FUNCTIONS = ("torch", "torch.nn.functional", "torch.special", "dynode.activations")  # kind: function


@contextmanager
def trusting(trust_code: bool = True):
    """Within the block, specs may import and call any import path they name (the user
    trusts the file's source): ``build_network(..., trust_code=True)`` uses it."""
    token = _TRUST.set(bool(trust_code))
    try:
        yield
    finally:
        _TRUST.reset(token)


def _under(mod_name: str, roots) -> bool:
    return any(mod_name == r or mod_name.startswith(r + ".") for r in roots)


def _refuse_untrusted(path: str, what: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"{what}: {path!r} {why}; a spec is data, so building it imports and calls only dynode's operator "
        f"kinds and torch.nn/dynode module classes. If you trust where the spec comes from, opt in: "
        "build_network(spec, trust_code=True), load_spec(path, trust_code=True) or load_model(path, "
        "trust_code=True); on the command line --allow-imports (in a run config: model.allow_imports: true)")


def _spec_class(path: str, what: str) -> Callable:
    """The class or factory an operator ``kind`` names by import path, checked *before* anything
    is called: without trust, an ``nn.Module`` subclass defined in ``torch.nn`` or dynode."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ConfigurationError(f"{what}: kind {path!r}: write an import path as 'package.module:Name'")
    if _TRUST.get():
        obj = import_object(path, f"{what}: kind")
        if isinstance(obj, type) and not issubclass(obj, nn.Module):
            raise ConfigurationError(f"{what}: {path!r} is the class {obj.__qualname__}, not an nn.Module")
        if not callable(obj):
            raise ConfigurationError(f"{what}: {path!r} is not a class or function")
        return obj
    mod_name, _, attr = path.partition(":")
    if not _under(mod_name, _SAFE_ROOTS) or any(part.startswith("_") for part in attr.split(".")):
        raise _refuse_untrusted(path, what, f"names a module outside torch.nn and dynode ({mod_name!r})")
    obj = import_object(path, f"{what}: kind")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module) and _under(obj.__module__, ("torch", "dynode"))):
        raise _refuse_untrusted(path, what, "is not an nn.Module class of torch or dynode")
    return obj


def _spec_function(path: str) -> Callable:
    """The function ``{"kind": "function", "path": ...}`` names: without trust, an operator of
    torch (a builtin), ``torch.nn.functional``, ``torch.special`` or dynode's activations."""
    what = "function"
    if not isinstance(path, str) or path.count(":") != 1:
        raise ConfigurationError(f"{what} {path!r}: write it as 'package.module:name'")
    mod_name, _, attr = path.partition(":")
    if not _TRUST.get():
        if mod_name not in _SAFE_FUNCTIONS or "." in attr:
            raise _refuse_untrusted(path, what, f"is not a tensor function of {', '.join(_SAFE_FUNCTIONS)}")
    fn = import_object(path, what)
    plain = isinstance(fn, types.BuiltinFunctionType) or (
        mod_name != "torch" and isinstance(fn, types.FunctionType))  # torch's own Python functions: load, save, ...
    if not _TRUST.get() and not plain:
        raise _refuse_untrusted(path, what, f"is not a tensor function of {', '.join(_SAFE_FUNCTIONS)}")
    if not callable(fn) or isinstance(fn, type):
        raise ConfigurationError(f"function {path!r} is not a function")
    return fn


def _import_path_of(obj) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _plain(x):
    """A JSON/YAML-safe copy: tuples become lists, numbers stay."""
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
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
        out[name] = _plain(getattr(module, name))
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
        return _plain(dict(tag))
    cls = type(module)
    if hasattr(module, "spec_kwargs") and callable(module.spec_kwargs):
        return {"kind": _import_path_of(cls), **_plain(dict(module.spec_kwargs()))}
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
def _build_recurrence(type: str, channels: int, kernel_size: int = 3, **options):

    return recurrence(type, channels, kernel_size, **options)


def _build_signed_recurrence(type: str, channels: int, kernel_size: int = 3, *, sign: int = 1,
                             gain: float = 0.1, flat: bool = False):

    return signed_recurrence(type, channels, kernel_size, sign=sign, gain=gain, flat=flat)


def _build_adapter(src_shape: list, dst_shape: list, project: bool | None = None, bias: bool = False):

    return adapter(src_shape, dst_shape, project=project, bias=bias)


def _build_sequential(modules: list, names: list | None = None):
    mods = [build_op(m, f"sequential[{i}]") for i, m in enumerate(modules)]
    if names is None:
        return nn.Sequential(*mods)
    if len(names) != len(mods):
        raise ConfigurationError(f"sequential: {len(names)} names for {len(mods)} modules")
    return nn.Sequential(OrderedDict(zip(names, mods)))


def _build_function(path: str):
    return Lambda(_spec_function(path))


def _nested(kind: str, builder: Callable, keys: tuple[str, ...]):
    def build(**kw):
        for k in keys:
            v = kw.get(k)
            if isinstance(v, Mapping):
                kw[k] = build_op(v, f"{kind}.{k}")
            elif isinstance(v, list) and v and isinstance(v[0], Mapping):
                kw[k] = [build_op(x, f"{kind}.{k}[{i}]") for i, x in enumerate(v)]
        if kind == "sum_of":
            return builder(*kw["modules"])
        return builder(**kw)
    build.__signature__ = inspect.signature(builder)  # type: ignore[attr-defined]
    return build


def _builders() -> dict[str, Callable]:
    b: dict[str, Callable] = {"identity": lambda: nn.Identity(), "sequential": _build_sequential,
                              "recurrence": _build_recurrence, "signed_recurrence": _build_signed_recurrence,
                              "adapter": _build_adapter, "function": _build_function}
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
        fn = _spec_class(kind, what)
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


# ============================================================================================
# Networks
# ============================================================================================
def _solver_spec(solver) -> OpDict | str:
    import dataclasses

    if isinstance(solver, str):
        return solver
    name = getattr(solver, "name", None)
    if not isinstance(name, str) or not dataclasses.is_dataclass(solver):
        raise ConfigurationError(f"protocol solver {solver!r}: a spec names solvers by their config "
                                 "(kind and options); use a dynode solver")
    return {"kind": name, **{f.name: _plain(getattr(solver, f.name)) for f in dataclasses.fields(solver)
                             if f.init}}


def _bias_kind(pop) -> str | bool:
    if pop.bias is None:
        return False
    return "unit" if tuple(pop.bias.shape) == tuple(pop.shape) and len(pop.shape) > 1 else "channel"


def network_spec(net, *, check: bool = True) -> ModelSpec:
    """The :class:`ModelSpec` of ``net`` (a :class:`dynode.Network`), read through its public
    attributes. ``check``: rebuild the spec on the meta device and compare the parameter and
    buffer layout (names, shapes, parameter or buffer) with ``net``'s."""

    if type(net) is not Network:
        raise ConfigurationError(f"network_spec describes a dynode.Network, got {type(net).__name__}; "
                                 "a custom VectorField is given to the CLI by the import path of its "
                                 "factory (model.factory)")
    pops = []
    for name, pop in net.populations.items():
        tau = pop.tau
        tau = tau.detach().cpu().tolist() if isinstance(tau, torch.Tensor) else float(tau)
        u_shape = getattr(pop, "u_shape", pop.shape)
        pops.append(PopulationSpec(
            name=name, shape=list(pop.shape), tau=tau, phi=op_spec(pop.phi), bias=_bias_kind(pop),
            combine=None if pop.combine is None else op_spec(pop.combine),
            pipeline=u_shape is None or tuple(u_shape) != tuple(pop.shape), role=pop.role))
    conns = [ConnectionSpec(src=c.src, dst=c.dst, delay=c.delay, op=op_spec(c.op), skip_initial=c.skip_initial)
             for c in net.connections]
    proto = getattr(net, "protocol", None)
    protocol = None
    if proto is not None:
        items = proto if isinstance(proto, Mapping) else {k: getattr(proto, k) for k in ProtocolSpec.model_fields}
        items = {k: v for k, v in items.items() if v is not None}
        if "solver" in items:
            items["solver"] = _solver_spec(items["solver"])
        protocol = ProtocolSpec(**items)
    fmt = "channels_last" if net.memory_format is torch.channels_last else "contiguous"
    spec = ModelSpec(inputs={k: list(v) for k, v in net.input_shapes().items()}, populations=pops,
                     connections=conns, readout=None if net.readout is None else op_spec(net.readout),
                     protocol=protocol, memory_format=fmt)
    if check:
        _check_layout(net, spec)
    return spec


def _layout(module: nn.Module) -> dict[str, tuple]:
    params = {n for n, _ in module.named_parameters()}
    return {k: (tuple(v.shape), k in params) for k, v in module.state_dict().items()}


def _check_layout(net, spec: ModelSpec) -> None:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            rebuilt = build_network(spec, trust_code=True)  # the classes of a live network, not a file's
        except (NotImplementedError, RuntimeError):  # a module that cannot be built on meta
            rebuilt = None
    if rebuilt is None:
        with torch.random.fork_rng(devices=[]):
            rebuilt = build_network(spec, trust_code=True)
    want, got = _layout(net), _layout(rebuilt)
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:5]
        raise ConfigurationError(f"the spec does not rebuild this network's parameters exactly (first "
                                 f"differences: {diff}); an operator is described incompletely -- give its "
                                 "class a spec_kwargs() method returning all its constructor arguments")


def build_network(spec: ModelSpec | Mapping, *, trust_code: bool = False):
    """The :class:`dynode.Network` a spec describes (fresh initial weights; load a
    ``state_dict`` for trained ones, or use :func:`load_model`).

    Nothing outside dynode's vocabulary and the ``nn.Module`` classes of ``torch.nn`` and
    dynode is imported or called unless ``trust_code=True`` (or the spec came from
    ``load_spec(path, trust_code=True)``): an operator named by another import path is a
    :class:`~dynode.errors.ConfigurationError` before anything is built."""

    spec = ModelSpec.from_data(spec)
    with trusting(trust_code or spec.trusted):
        check_imports(spec)
        _check_memory(spec)
        return _build(spec)


def _check_memory(spec: ModelSpec) -> None:
    """Refuse a spec whose parameters and buffers do not fit in the memory available on the
    default device, counted on a build on the meta device (no allocation) before the real one."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            sized = _build(spec)
        except (NotImplementedError, RuntimeError):  # a module that cannot be built on meta: no estimate
            return
    tensors = [*sized.parameters(), *sized.buffers()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    require_memory(nbytes, torch.get_default_device(),
                   f"the network of this spec ({sum(t.numel() for t in tensors):,} weights, biases, time "
                   "constants and buffers)",
                   "check the population shapes and operator sizes in the spec (a per-unit bias or tau and "
                   "a dense linear layer grow with the number of units)")


def check_imports(spec: ModelSpec) -> None:
    """Refuse, before anything is built, a spec whose operators name code outside the
    vocabulary (unless within :func:`trusting`): a module outside ``torch.nn`` and dynode is
    not even imported. The message names the first such path and counts the others."""
    if _TRUST.get():
        return
    found: list[tuple[str, str, bool]] = []  # (where, import path, a function?)

    def walk(x, where: str):
        if isinstance(x, Mapping):
            kind = x.get("kind")
            if isinstance(kind, str) and ":" in kind:
                found.append((where, kind, False))
            if kind == "function":
                found.append((where, x.get("path"), True))
            for k, v in x.items():
                walk(v, f"{where}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")

    for p in spec.populations:
        walk(p.phi, f"population {p.name!r} phi")
        walk(p.combine, f"population {p.name!r} combine")
    for c in spec.connections:
        walk(c.op, f"connection {c.src} -> {c.dst}")
    walk(spec.readout, "readout")
    errors = []
    for where, path, function in found:
        try:
            _spec_function(path) if function else _spec_class(path, where)
        except ConfigurationError as exc:
            errors.append(f"{where}: {exc}" if function else str(exc))
    if errors:
        more = f" [{len(errors) - 1} more import path(s) refused]" if len(errors) > 1 else ""
        raise ConfigurationError(errors[0] + more)


def _build(spec: ModelSpec):
    net = Network()
    for name, shape in spec.inputs.items():
        net.add_input(name, shape)
    for p in spec.populations:
        what = f"population {p.name!r}"
        tau = torch.tensor(p.tau, dtype=torch.float32) if isinstance(p.tau, list) else p.tau
        phi = build_op(p.phi, f"{what} phi")
        combine = None if p.combine is None else build_op(p.combine, f"{what} combine")
        bias = "unit" if p.bias == "unit" else p.bias == "channel"
        if p.pipeline:

            if combine is not None and not isinstance(combine, Combine):
                raise ConfigurationError(f"{what}: a pipeline population's combine must be a "
                                         "dynode.pipeline.Combine")
            net.add_population(p.name, p.shape, tau, bias=bias,
                               pipeline=([combine] if combine is not None else []) + [phi])
        else:
            net.add_population(p.name, p.shape, tau, phi=phi, bias=bias, combine=combine)
        net.populations[p.name].role = p.role
    for i, c in enumerate(spec.connections):
        op = None if c.op is None else build_op(c.op, f"connection {c.src} -> {c.dst}")
        net.connect(c.src, c.dst, op, delay=c.delay, skip_initial=c.skip_initial)
    if spec.readout is not None:
        net.set_readout(build_op(spec.readout, "readout"))
    if spec.protocol is not None:
        proto = spec.protocol.model_dump(exclude_none=True)
        if isinstance(proto.get("solver"), dict):
            try:
                proto["solver"] = solver_config(proto["solver"]).build()
            except ValidationError as exc:
                raise ConfigurationError(f"protocol.solver: {describe_validation_error(exc)}") from None
        net.protocol = proto
    if spec.memory_format == "channels_last":
        net.memory_format = torch.channels_last
    return net


# ============================================================================================
# Files, checkpoints, archives
# ============================================================================================
def save_spec(spec: ModelSpec, path) -> Path:
    """Write ``spec`` as YAML (``.yaml``/``.yml``) or JSON (any other suffix)."""
    path = Path(path)
    data = spec.model_dump(mode="json")
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=1))
    return path


def load_spec(path, *, trust_code: bool = False) -> ModelSpec:
    """Read a spec file (YAML or JSON, safe and bounded: :func:`dynode.datafile.load_yaml`).

    A spec whose operators name code outside dynode's vocabulary and ``torch.nn`` is refused
    here, before anything is imported, unless ``trust_code=True``: then the returned spec is
    marked trusted and :func:`build_network` honours its import paths."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model spec at {path}")
    spec = ModelSpec.from_data(load_yaml(read_text(path, "model spec"), str(path)), str(path))
    if trust_code:
        spec._trusted = True
    else:
        try:
            check_imports(spec)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc}") from None
    return spec


def weights_fingerprint(net: nn.Module) -> str:
    """sha256 over the ``state_dict`` (names, dtypes, shapes and bytes, sorted by name: a rebuilt
    network may register a population's combine before its incoming operators)."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def spec_record(net) -> dict:
    """What a checkpoint or an archive stores about the model: ``{"spec": JSON or "",
    "spec_error": why not}``."""

    try:
        return {"spec": network_spec(net).model_dump_json(), "spec_error": ""}
    except DynodeError as exc:
        return {"spec": "", "spec_error": str(exc)}
