"""A whole network as data: :class:`ModelSpec`, :func:`network_spec` (a network -> its spec),
:func:`build_network` (a spec -> a network), spec files, fingerprints (see :mod:`dynode.spec`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, PrivateAttr, ValidationError
from torch import nn

from dynode.datafile import load_yaml, read_text
from dynode.errors import ConfigurationError, DynodeError, describe_validation_error
from dynode.integrate import require_memory
from dynode.network import Network
from dynode.pipeline import Combine
from dynode.solver_config import FrozenConfig, solver_config
from dynode.spec.field import field_spec
from dynode.spec.operators import OpDict, build_op, op_spec, plain
from dynode.spec.trust import spec_class, spec_function, trust_enabled, trusting

__all__ = ["SPEC_VERSION", "ModelSpec", "PopulationSpec", "ConnectionSpec", "ProtocolSpec", "network_spec",
           "build_network", "check_imports", "load_spec", "save_spec", "weights_fingerprint", "spec_record"]

SPEC_VERSION = 1
"""The version this dynode writes; a spec of a higher version is refused (written by a newer dynode)."""



class PopulationSpec(FrozenConfig):
    """``add_population(name, shape, tau, phi, bias, combine)``; ``pipeline``: ``phi`` changes
    the shape (e.g. pools), so it is declared as ``pipeline=[combine, phi]``; ``role``: ``area``
    or the auxiliary role a component gave it. ``tau``: ms, a number or a nested list (per unit);
    ``learn_tau``/``tau_bounds``: a learnt tau (``tau`` is then its value when the spec was made).
    ``noise``: sigma of the additive noise in the dynamics (a number >= 0 or a nested list per
    channel/unit; 0: none; see :mod:`dynode.brownian`)."""

    name: str
    shape: list[int]
    tau: float | list
    phi: OpDict
    bias: Literal[False, "channel", "unit"] = False
    combine: OpDict | None = None
    pipeline: bool = False
    role: str = "area"
    learn_tau: bool = False
    tau_bounds: tuple[float, float] | None = None
    noise: float | list = 0.0


class ConnectionSpec(FrozenConfig):
    """``connect(src, dst, op, delay, skip_initial=..., learn_delay=..., delay_bounds=...)``; ``op:
    null``: identity or the automatic adapter; a learnt delay's ``delay`` is its value when the
    spec was made."""

    src: str
    dst: str
    delay: float = Field(0.0, ge=0)
    op: OpDict | None = None
    skip_initial: bool = False
    learn_delay: bool = False
    delay_bounds: tuple[float, float] | None = None


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


def _solver_spec(solver) -> OpDict | str:
    import dataclasses

    if isinstance(solver, str):
        return solver
    name = getattr(solver, "name", None)
    if not isinstance(name, str) or not dataclasses.is_dataclass(solver):
        raise ConfigurationError(f"protocol solver {solver!r}: a spec names solvers by their config "
                                 "(kind and options); use a dynode solver")
    return {"kind": name, **{f.name: plain(getattr(solver, f.name)) for f in dataclasses.fields(solver)
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
        noise = pop.noise
        noise = noise.detach().cpu().tolist() if isinstance(noise, torch.Tensor) else float(noise)
        pops.append(PopulationSpec(
            name=name, shape=list(pop.shape), tau=tau, phi=op_spec(pop.phi), bias=_bias_kind(pop),
            combine=None if pop.combine is None else op_spec(pop.combine),
            pipeline=u_shape is None or tuple(u_shape) != tuple(pop.shape), role=pop.role,
            learn_tau=pop.tau_bounds is not None, tau_bounds=pop.tau_bounds, noise=noise))
    conns = [ConnectionSpec(src=c.src, dst=c.dst, delay=c.current_delay(), op=op_spec(c.op),
                            skip_initial=c.skip_initial, learn_delay=c.learnt is not None,
                            delay_bounds=None if c.learnt is None else (c.learnt.lo, c.learnt.hi))
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


def _on_meta(spec: ModelSpec) -> Network | None:
    """``spec`` built on the meta device (no memory, the caller's random state untouched), or
    ``None`` where a module cannot be built there."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            return _build(spec)
        except (NotImplementedError, RuntimeError):
            return None


def _check_layout(net, spec: ModelSpec) -> None:
    with trusting(True):  # the classes of a live network, not a file's
        rebuilt = _on_meta(spec)
        if rebuilt is None:
            with torch.random.fork_rng(devices=[]):
                rebuilt = _build(spec)
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
    sized = None if torch.get_default_device().type == "meta" else _on_meta(spec)
    if sized is None:  # building on meta allocates nothing; a module that cannot be built there: no estimate
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
    if trust_enabled():
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
            spec_function(path) if function else spec_class(path, where)
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
        # on the CPU even in a build on the meta device (_on_meta): tau's values are checked
        tau = torch.tensor(p.tau, dtype=torch.float32, device="cpu") if isinstance(p.tau, list) else p.tau
        phi = build_op(p.phi, f"{what} phi")
        combine = None if p.combine is None else build_op(p.combine, f"{what} combine")
        bias = "unit" if p.bias == "unit" else p.bias == "channel"
        if p.pipeline:

            if combine is not None and not isinstance(combine, Combine):
                raise ConfigurationError(f"{what}: a pipeline population's combine must be a "
                                         "dynode.pipeline.Combine")
            net.add_population(p.name, p.shape, tau, bias=bias, learn_tau=p.learn_tau, tau_bounds=p.tau_bounds,
                               pipeline=([combine] if combine is not None else []) + [phi])
        else:
            net.add_population(p.name, p.shape, tau, phi=phi, bias=bias, combine=combine,
                               learn_tau=p.learn_tau, tau_bounds=p.tau_bounds)
        net.populations[p.name].role = p.role
        if p.noise != 0.0:  # checked by the population (a list: on the CPU, as tau)
            net.populations[p.name].noise = (torch.tensor(p.noise, dtype=torch.float32, device="cpu")
                                             if isinstance(p.noise, list) else p.noise)
    for i, c in enumerate(spec.connections):
        op = None if c.op is None else build_op(c.op, f"connection {c.src} -> {c.dst}")
        net.connect(c.src, c.dst, op, delay=c.delay, skip_initial=c.skip_initial, learn_delay=c.learn_delay,
                    delay_bounds=c.delay_bounds)
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
    "spec_error": why not}``. A :class:`dynode.Network` is stored as its :class:`ModelSpec`;
    any other vector field as ``{"kind": "<module>:<Class>", **spec_kwargs()}``
    (:func:`dynode.spec.field.field_spec`; rebuilding it needs ``trust_code=True``)."""

    try:
        if isinstance(net, Network):
            return {"spec": network_spec(net).model_dump_json(), "spec_error": ""}
        return {"spec": json.dumps(field_spec(net)), "spec_error": ""}
    except DynodeError as exc:
        return {"spec": "", "spec_error": str(exc)}
