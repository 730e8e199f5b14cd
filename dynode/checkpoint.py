"""Checkpoints and saved models: load them safely, rebuild a model from its stored spec.

Everything is loaded with ``torch.load(..., weights_only=True)``: tensors and plain data only,
nothing in a file is executed. A file that is not what it should be is a
:class:`~dynode.errors.CheckpointError` saying what it is and what was expected.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from dynode.archive import open_archive
from dynode.errors import CheckpointError, ConfigurationError
from dynode.spec import ModelSpec, build_field, build_network, is_field_spec, weights_fingerprint

__all__ = ["load_checkpoint", "load_weights", "load_state", "is_state_dict", "load_model"]


def load_checkpoint(path: str | Path) -> dict:
    """Load a dynode checkpoint (or a state_dict file) safely: ``weights_only=True`` (tensors
    and plain data only; nothing in the file is executed). A file that is not a readable torch
    file of that kind is a :class:`~dynode.errors.CheckpointError` saying what it is."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give the file itself "
                              f"(dynode train writes {path / 'last.pt'})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "unsupported" in ln.lower() or "Unpickler error" in ln),
                   lines[0] if lines else "")
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain data ({why[:160]}); "
            "dynode loads with weights_only=True and never runs code from a file: give a checkpoint "
            "written by dynode train / Trainer.save, or torch.save(net.state_dict(), path)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated, damaged or not written by torch.save: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); give the "
            "last.pt that dynode train writes, or a state_dict saved with torch.save") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint (a dict with 'model', "
                              "'optimizer', ...) nor a state_dict")
    return obj


def is_state_dict(obj) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def load_weights(network: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights in ``path`` (a training checkpoint's ``model`` or a plain state_dict)
    into ``network``; weights of another architecture are a :class:`CheckpointError` naming
    the missing, unexpected and mis-shaped entries."""
    ckpt = load_checkpoint(path)
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    if not is_state_dict(state):
        raise CheckpointError(f"{path} holds neither a training checkpoint (with 'model' weights) nor a "
                              f"state_dict (names -> tensors); its keys are {sorted(map(str, ckpt))[:8]}")
    load_state(network, state, path)
    return network


def load_state(network: nn.Module, state: dict, path) -> None:
    """``network.load_state_dict(state)``, with a :class:`CheckpointError` that says how the
    saved weights differ from the network's when they do not fit."""
    own = network.state_dict()
    missing = [repr(k) for k in own if k not in state]
    unexpected = [repr(k) for k in state if k not in own]
    shapes = [f"{k}: saved {tuple(state[k].shape)}, network {tuple(own[k].shape)}" for k in own
              if k in state and isinstance(state[k], Tensor) and state[k].shape != own[k].shape]
    parts = [f"{len(found)} {what}, e.g. {found[0]}" for what, found in (
        ("weights missing", missing), ("not in this network", unexpected), ("of another shape", shapes)) if found]
    if parts:
        raise CheckpointError(f"the weights in {path} do not fit this network ({'; '.join(parts)}): they were "
                              "saved from another architecture; build the model with the options it was "
                              "trained with (the checkpoint's spec: dynode.load_model(path))")
    network.load_state_dict(state)


def load_model(path, *, weights=None, eval: bool = True, trust_code: bool = False):
    """Rebuild the network saved in ``path`` -- a checkpoint of :mod:`dynode.train` (``.pt``)
    or an archive written by :func:`dynode.simulate` -- from its stored spec, with its weights.

    A checkpoint holds both. An archive holds the spec and the fingerprint of the weights the
    run used: pass ``weights=`` (a checkpoint or ``state_dict`` file) to load them (checked
    against the fingerprint), or ``weights=False`` for the architecture with fresh weights;
    a model whose fresh build already has the recorded weights (a field without parameters)
    needs neither.
    The caller's random state is left untouched. ``eval``: put the network in eval mode.

    The stored spec is data: operators that name code outside dynode's vocabulary and the
    ``nn.Module`` classes of ``torch.nn``/dynode are refused before anything is imported or
    built, unless ``trust_code=True`` (you trust whoever wrote the file). A custom vector field
    is recorded by its class's import path and ``spec_kwargs()`` (:mod:`dynode.spec.field`):
    rebuilding it imports your module, so it always needs ``trust_code=True`` and the module
    importable (installed or on ``PYTHONPATH``; the current folder is never searched).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or archive at {path}")
    if path.is_dir():
        spec_json, error, fingerprint = _archive_spec(path)
        state = None
    else:
        ckpt = load_checkpoint(path)
        spec_json, error = ckpt.get("spec", ""), ckpt.get("spec_error", "")
        state, fingerprint = ckpt.get("model"), None
        if not spec_json and not error:
            error = "it was written by a dynode without model specs"
    if not spec_json:
        raise ConfigurationError(f"{path} holds no model spec ({error or 'unknown reason'}); rebuild the "
                                 "network with the code that made it and load_state_dict()")
    try:
        data = json.loads(spec_json) if isinstance(spec_json, str) else spec_json
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"the model spec stored in {path} is not valid JSON (truncated or edited: "
                              f"{str(exc)[:100]}); rebuild the network with the code that made it and "
                              "load_state_dict(), or ask for an intact file") from None
    custom = is_field_spec(data)
    spec = None if custom else ModelSpec.from_data(data, f"{path}: spec")
    if weights is not None and weights is not False:
        w = load_checkpoint(weights)
        state = w.get("model", w)
    with torch.random.fork_rng(devices=[]):
        try:
            net = (build_field(data, trust_code=trust_code, where=f"{path}") if custom
                   else build_network(spec, trust_code=trust_code))
        except ConfigurationError as exc:
            raise type(exc)(exc if custom else f"{path}: {exc}") from None
    if state is None and weights is None and fingerprint and weights_fingerprint(net) == fingerprint:
        return net.eval() if eval else net  # the fresh build has the recorded weights (e.g. none at all)
    if state is None and weights is not False:
        raise ConfigurationError(f"the archive {path} stores the model's spec but not its weights "
                                 f"(fingerprint {fingerprint[:12] if fingerprint else '?'}...); pass "
                                 "weights='<checkpoint>.pt', or weights=False for fresh weights")
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigurationError(f"the weights do not fit the spec in {path}: {str(exc).splitlines()[0]}") from None
        if fingerprint and weights is not None and weights_fingerprint(net) != fingerprint:
            raise ConfigurationError(f"{weights} are not the weights the archive {path} was recorded with "
                                     "(their fingerprints differ)")
    return net.eval() if eval else net


def _archive_spec(path: Path) -> tuple[str, str, str | None]:
    tree = open_archive(path)
    try:
        config = json.loads(tree.attrs["config"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise ConfigurationError(f"{path} is not a dynode archive with a config") from None
    model = config.get("model", {}) if isinstance(config, Mapping) else None
    if not isinstance(model, Mapping):
        raise ConfigurationError(f"{path}: the archive's config has no 'model' section (not written by "
                                 "dynode.simulate, or edited)")
    spec = model.get("spec") or ""
    return (json.dumps(spec) if isinstance(spec, Mapping) else spec), model.get("spec_error", ""), \
        model.get("weights_sha256")
