"""What a spec may import: dynode's vocabulary, the ``nn.Module`` classes of ``torch.nn`` and
dynode, and tensor functions; any other import path only under :func:`trusting` (the user
opted in: ``trust_code=True``, ``--allow-imports``, ``model.allow_imports``)."""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from torch import nn

from dynode.errors import ConfigurationError

__all__ = ["import_object", "trusting", "trust_enabled", "spec_class", "spec_function"]


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


def trust_enabled() -> bool:
    """Whether import paths are honoured here (inside :func:`trusting`)."""
    return _TRUST.get()


def _under(mod_name: str, roots) -> bool:
    return any(mod_name == r or mod_name.startswith(r + ".") for r in roots)


def _refuse_untrusted(path: str, what: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"{what}: {path!r} {why}; a spec is data, so building it imports and calls only dynode's operator "
        f"kinds and torch.nn/dynode module classes. If you trust where the spec comes from, opt in: "
        "build_network(spec, trust_code=True), load_spec(path, trust_code=True) or load_model(path, "
        "trust_code=True); on the command line --allow-imports (in a run config: model.allow_imports: true)")


def spec_class(path: str, what: str) -> Callable:
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


def spec_function(path: str) -> Callable:
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


