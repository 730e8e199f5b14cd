"""A custom vector field as data: ``{"kind": "<module>:<Class>", **constructor arguments}``.

A :class:`dynode.Network` is described population by population (:func:`dynode.spec.network_spec`);
a field of the user's own (any ``nn.Module`` with the vector-field protocol, e.g.
``examples/wilson_cowan.py``) is described as an operator of its own class is: by the import
path of its class and the keyword arguments its ``spec_kwargs()`` method returns, so that
``Class(**kwargs)`` builds the same field (the trained values are the ``state_dict``).

Recording needs no import: the class's module must already be in ``sys.modules`` under the
name the class gives (``Class.__module__``), so a class defined in the script being run
(``__main__``), inside a function, or in a module loaded from a file path without being
registered cannot be recorded (the record says why). Rebuilding imports that module and calls
the class: that is code named by a file, so :func:`build_field` refuses a class outside
dynode before importing anything unless the user opts in (``trust_code=True``, see
:mod:`dynode.spec.trust`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dynode.errors import ConfigurationError
from dynode.spec.operators import OpDict, build_op, plain
from dynode.spec.trust import spec_class, trusting

__all__ = ["field_spec", "build_field", "is_field_spec"]


def is_field_spec(data: Any) -> bool:
    """Whether stored spec data describe a custom field (a ``kind``) rather than a
    :class:`~dynode.spec.ModelSpec` (``populations``)."""
    return isinstance(data, Mapping) and "kind" in data and "populations" not in data


def _import_path(field: nn.Module) -> str:
    """``"<module>:<Class>"`` of ``field``'s class, checked to name that very class through
    ``sys.modules`` (nothing is imported)."""
    cls = type(field)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if cls.__module__ == "__main__":
        raise ConfigurationError(
            f"the custom vector field {cls.__qualname__} is defined in the script being run (__main__), so no "
            "import path names it; move the class into a module (e.g. mymodels.py, importable through "
            "PYTHONPATH) and import it from there, then archives and checkpoints record it")
    if "<locals>" in cls.__qualname__:
        raise ConfigurationError(f"the custom vector field {name} is defined inside a function, so no import path "
                                 "names it; define the class at module level")
    obj: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    if obj is not cls:
        raise ConfigurationError(
            f"the custom vector field {cls.__qualname__} says it lives in module {cls.__module__!r}, but that "
            "module (as imported) does not hold this class (loaded from a file path, or reloaded); import it "
            "the ordinary way (import mymodule, with its folder on PYTHONPATH)")
    return name


def _layout(module: nn.Module) -> dict[str, tuple]:
    params = {n for n, _ in module.named_parameters()}
    return {k: (tuple(v.shape), k in params) for k, v in module.state_dict().items()}


def _protocol(field: nn.Module) -> dict[str, Any]:
    """What the solvers read from a field besides ``forward`` (numbers, names; a tensor by its
    shape, which a field built on the meta device keeps)."""
    def sig(x):
        if isinstance(x, torch.Tensor):
            return ("tensor", tuple(x.shape))
        if isinstance(x, Mapping):
            return {str(k): sig(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return tuple(sig(v) for v in x)
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x

    out = {}
    for method in ("max_delay", "input_names", "time_constants", "delays"):
        fn = getattr(field, method, None)
        if callable(fn):
            out[method] = sig(fn())
    return out


def _rebuild(data: OpDict) -> nn.Module:
    """The field ``data`` describes, built (under trust: the class of a live field) on the meta
    device, or on the CPU where it cannot be built or read there; the random state is kept."""
    with trusting(True), torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                built = build_op(data, "custom vector field")
                _protocol(built)
            return built
        except (NotImplementedError, RuntimeError):
            return build_op(data, "custom vector field")


def field_spec(field: nn.Module) -> OpDict:
    """``{"kind": "<module>:<Class>", **field.spec_kwargs()}``, checked to rebuild the same field:
    the same parameter and buffer layout and the same protocol answers (``max_delay``,
    ``input_names``, ``time_constants``, ``delays``). A :class:`ConfigurationError` says why a
    field cannot be recorded (no ``spec_kwargs``, not importable by path, incomplete arguments)."""
    cls = type(field)
    if not callable(getattr(field, "spec_kwargs", None)):
        raise ConfigurationError(
            f"the custom vector field {cls.__module__}.{cls.__qualname__} does not describe itself: give the class "
            "a method spec_kwargs(self) -> dict returning its constructor's keyword arguments; archives and "
            f"checkpoints then record it as '{cls.__module__}:{cls.__qualname__}' with them, and "
            "dn.load_model(..., trust_code=True) rebuilds it")
    path = _import_path(field)
    try:
        kwargs = field.spec_kwargs()
    except Exception as exc:  # the user's method: its failure goes into the record's spec_error
        raise ConfigurationError(f"{path}.spec_kwargs() failed ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"{path}.spec_kwargs() returned {type(kwargs).__name__}; return a dict of the "
                                 "constructor's keyword arguments")
    data = {"kind": path, **plain(dict(kwargs))}
    try:
        rebuilt = _rebuild(data)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}(**spec_kwargs()) does not build: {exc}") from None
    except Exception as exc:  # the user's constructor: any failure is reported in the record, not raised
        raise ConfigurationError(f"{path}(**spec_kwargs()) does not build ({type(exc).__name__}: "
                                 f"{str(exc)[:160]}); spec_kwargs() must return the constructor's arguments") from None
    if _layout(rebuilt) != _layout(field):
        want, got = _layout(field), _layout(rebuilt)
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:5]
        raise ConfigurationError(f"{path}(**spec_kwargs()) does not rebuild this field's parameters (first "
                                 f"differences: {diff}); spec_kwargs() must return all constructor arguments")
    want, got = _protocol(field), _protocol(rebuilt)
    if want != got:
        diff = [f"{k}: {want.get(k)!r} here, {got.get(k)!r} rebuilt" for k in want if want.get(k) != got.get(k)]
        raise ConfigurationError(f"{path}(**spec_kwargs()) builds another field ({'; '.join(diff)[:300]}); "
                                 "spec_kwargs() must return all constructor arguments")
    return data


def build_field(data: Mapping, *, trust_code: bool = False, where: str = "custom vector field") -> nn.Module:
    """The field a :func:`field_spec` record describes, with fresh weights (load its
    ``state_dict`` for trained ones).

    A class outside dynode is the user's code: without ``trust_code=True`` it is refused before
    its module is imported, naming the import path and the opt-in. The module must be
    importable (installed, or its folder on ``PYTHONPATH``; the current folder is not searched)."""
    kind = data.get("kind")
    if not isinstance(kind, str) or kind.count(":") != 1:
        raise ConfigurationError(f"{where}: kind {kind!r} is not an import path 'package.module:Class'")
    if not trust_code:
        try:
            spec_class(kind, where)
        except ConfigurationError:
            raise ConfigurationError(
                f"{where}: the model is the custom vector field {kind!r} (its import path and constructor "
                "arguments are recorded); rebuilding it imports and runs that module, so it needs your opt-in: "
                "dn.load_model(path, trust_code=True) if you trust where the file comes from, with the module "
                "importable (installed or on PYTHONPATH; the current folder is not searched)") from None
    with trusting(trust_code):
        return build_op(dict(data), where)
