r"""The network builder: populations, inputs and delayed connections.

Each population ``p`` obeys

.. math:: \tau_p \frac{dr_p}{dt} = -r_p(t) + \Phi_p(u_p(t)), \qquad
          u_p(t) = \mathrm{combine}_p\big(\{op_c(r_{src(c)}(t - d_c))\}_c\big) + b_p

with ``combine`` the sum unless the population supplies its own module. Inputs are source
populations whose value is the stimulus ``I(t)``.

A :class:`Network` is a :class:`~dynode.VectorField`. It also exposes :meth:`drive`
(``Phi(u)`` per population), from which :class:`dynode.solvers.Euler` updates ``r`` exactly.

Its evaluation plan (:meth:`Network.plan`, rebuilt after any change) resolves each connection's
operator, delay and where it reads (:class:`Read`), so the step loop does no lookups by string
beyond reading its state and input dicts. ``net.protocol`` (:class:`RunProtocol`) holds how the
model is meant to be run.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError, ShapeError
from dynode.field import VectorField
from dynode.activations import get_activation
from dynode.adapters import adapter as _adapter
from dynode.integrate import require_memory
from dynode.pipeline import build_pipeline, sums_term
from dynode.tolerances import time_tol

__all__ = ["Network", "Population", "Connection", "RunProtocol", "PopulationPlan", "Term", "Read"]



@dataclass(frozen=True)
class RunProtocol:
    """How a model is meant to be run (times in ms): the defaults of :class:`dynode.models.Classifier`,
    training and the CLI. ``stimulus_onset``/``stimulus_duration``: the image is shown as a pulse
    (``None``: from ``t0`` on, for good)."""

    dt: float | None = None
    t_end: float | None = None
    solver: object = "euler"
    steps: int | None = None
    stimulus_onset: float | None = None
    stimulus_duration: float | None = None

    def __post_init__(self):
        for key in ("dt", "t_end", "stimulus_onset", "stimulus_duration"):
            v = getattr(self, key)
            if v is not None:
                v = float(v)
                if not (math.isfinite(v) and (v >= 0 if key == "stimulus_onset" else v > 0)):
                    raise ConfigurationError(f"RunProtocol.{key} must be a finite number "
                                             f"{'>= 0' if key == 'stimulus_onset' else '> 0'} ms, got {v}")
                object.__setattr__(self, key, v)


@dataclass(frozen=True)
class Connection:
    """A connection ``src -> dst`` through ``op`` with transmission delay ``delay`` (ms)."""

    src: str
    dst: str
    delay: float
    op: nn.Module
    skip_initial: bool = False

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst}"


class Population(nn.Module):
    """One population: its shape, ``tau`` (ms), activation ``phi``, bias and combine module.

    The incoming operators live in ``self.incoming`` (keyed by source name), so
    ``state_dict`` keys read ``populations.V1.incoming.image.weight``.

    ``combine`` is part of the population's definition: give it to
    :meth:`Network.add_population` or replace it with :meth:`Network.set_combine` (which
    checks the shapes and rebuilds the evaluation plan). Assigning ``pop.combine = ...``
    directly raises, since the network's plan would not see it.
    """

    def __init__(self, name: str, shape: tuple[int, ...], tau: float | Tensor, phi: nn.Module,
                 bias: bool | str, combine: nn.Module | None):
        super().__init__()
        self.name, self.shape = name, shape
        # what the population is: "area" (a layer of the model), or an auxiliary population added
        # by a component of dynode.models ("normalization", "adaptation", "inhibitory")
        self.role = "area"
        self.phi = phi
        self.combine = combine
        self._combine_locked = True  # from now on only Network.set_combine replaces it
        self.incoming = nn.ModuleDict()
        self.delays: dict[str, float] = {}
        self.u_shape: tuple[int, ...] | None = shape  # shape of u; None: learnt from the first input
        what = f"population {name!r}"
        if isinstance(tau, Tensor):  # a float32 copy (and the checks' temporaries) where tau lives
            require_memory(tau.numel() * (_FLOAT_BYTES + 1), tau.device, f"{what}: its tau of shape "
                           f"{tuple(tau.shape)}", "give tau as a number, or per channel (C, 1, 1)")
        _check_tau(tau, shape, what)
        _check_bias(bias, what)
        if isinstance(tau, Tensor):
            self.register_buffer("tau", tau.detach().to(dtype=torch.float32, copy=True))
        else:
            self.tau = float(tau)
        if bias is True or bias == "channel":
            self.bias = nn.Parameter(torch.zeros((shape[0],) + (1,) * (len(shape) - 1)))
        elif bias == "unit":
            require_memory(math.prod(shape) * torch.get_default_dtype().itemsize, "cpu",
                           f"{what}: its per-unit bias (shape {shape})",
                           "make the population smaller, or use bias='channel' or False")
            self.bias = nn.Parameter(torch.zeros(shape))
        else:
            self.bias = None

    def __setattr__(self, name: str, value) -> None:
        if name == "combine" and self.__dict__.get("_combine_locked", False):
            raise ConfigurationError(
                f"population {self.name!r}: assigning .combine directly would not reach the network's "
                "evaluation plan; use net.set_combine(name, combine) (it checks the shapes) or pass "
                "combine= to add_population")
        super().__setattr__(name, value)

    def _replace_combine(self, combine: nn.Module | None) -> None:
        super().__setattr__("combine", combine)  # for Network.set_combine: past the guard above

    def tau_min(self) -> float:
        return float(self.tau.min()) if isinstance(self.tau, Tensor) else self.tau

    def extra_repr(self) -> str:
        tau = f"tensor{tuple(self.tau.shape)}" if isinstance(self.tau, Tensor) else f"{self.tau:g}"
        return f"shape={self.shape}, tau={tau} ms"


class Network(VectorField):
    """A network of populations and inputs joined by delayed connections. See the module doc.

    Example::

        net = dn.Network()
        net.add_input("image", shape=(3, 32, 32))
        net.add_population("V1", shape=(36, 16, 16), tau=5.0, phi="relu")
        net.connect("image", "V1", nn.Conv2d(3, 36, 3, stride=2, padding=1))
        net.connect("V1", "V1", nn.Conv2d(36, 36, 3, padding=1), delay=6.0)
    """

    def __init__(self):
        super().__init__()
        self.populations = nn.ModuleDict()
        self._inputs: dict[str, tuple[int, ...]] = {}
        self._connections: list[Connection] = []
        self._plan: tuple[PopulationPlan, ...] | None = None
        self._order: tuple[str, ...] | None = None
        self.readout: nn.Module | None = None
        self.protocol = RunProtocol()  # how the model is meant to be run (the zoo sets it)
        self.memory_format = torch.contiguous_format

    @property
    def protocol(self) -> RunProtocol:
        """The model's run defaults (:class:`RunProtocol`); a dict is converted."""
        return self.__dict__["_protocol"]

    @protocol.setter
    def protocol(self, value: RunProtocol | Mapping) -> None:
        if isinstance(value, Mapping):
            unknown = set(value) - set(RunProtocol.__dataclass_fields__)
            if unknown:
                raise ConfigurationError(f"network.protocol: unknown keys {sorted(unknown)}; known: "
                                         f"{list(RunProtocol.__dataclass_fields__)}")
            value = RunProtocol(**value)
        if not isinstance(value, RunProtocol):
            raise ConfigurationError(f"network.protocol must be a dynode.RunProtocol, got {type(value).__name__}")
        self.__dict__["_protocol"] = value

    def __getstate__(self) -> dict:
        # torch.memory_format objects pickle only under protocol >= 4 (they reduce to the dotted
        # name "torch.contiguous_format"); torch.save uses protocol 2 ("cannot pickle 'module'
        # object"), so pickle its name. To store a model as data, use dynode.spec instead.
        state = dict(self.__dict__)
        state["memory_format"] = str(self.memory_format).removeprefix("torch.")
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["memory_format"] = getattr(torch, state["memory_format"])
        super().__setstate__(state)

    # -- building --------------------------------------------------------------------
    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigurationError(f"names must be Python identifiers (letters, digits, _), got {name!r}")
        if name in self._inputs or name in self.populations:
            raise ConfigurationError(f"{name!r} is already declared in this network")

    @contextmanager
    def atomic(self) -> Iterator["Network"]:
        """A group of building calls that all take effect, or none: when one raises, the network
        is put back as it was (its populations, inputs, connections, combines, readout and
        evaluation plan; the same module objects) and the error propagates. The components of
        :mod:`dynode.models` (normalization, adaptation, E-I) build inside one::

            with net.atomic():
                net.add_population("V1_inh", shape=(8, 16, 16), tau=5.0)
                net.connect("V1", "V1_inh", op)      # a failure here also removes V1_inh

        It restores the building state only: parameter values changed inside are not undone."""
        pops = self.populations._modules
        saved_pops = dict(pops)
        saved = {n: (dict(p.incoming._modules), dict(p.delays), p.combine, p.u_shape, p.role)
                 for n, p in pops.items()}
        inputs, connections, readout = dict(self._inputs), list(self._connections), self.readout
        cached = {k: self.__dict__[k] for k in ("_plan", "_order", "_cyclic") if k in self.__dict__}
        try:
            yield self
        except BaseException:
            pops.clear()
            pops.update(saved_pops)
            for n, (incoming, delays, combine, u_shape, role) in saved.items():
                p = pops[n]
                p.incoming._modules.clear()
                p.incoming._modules.update(incoming)
                p.delays.clear()
                p.delays.update(delays)
                p._replace_combine(combine)
                p.u_shape, p.role = u_shape, role
            self._inputs.clear()
            self._inputs.update(inputs)
            self._connections[:] = connections
            self.readout = readout
            for k in ("_plan", "_order", "_cyclic"):
                self.__dict__.pop(k, None)
            self.__dict__.update(cached)
            raise

    def add_input(self, name: str, shape: Sequence[int]) -> "Network":
        """Declare a stimulus input of per-sample ``shape`` (batch excluded)."""
        self._check_new_name(name)
        self._inputs[name] = _shape(shape, f"input {name!r}")
        self._plan = None
        return self

    def add_population(self, name: str, shape: Sequence[int], tau: float | Tensor, phi=None,
                       bias: bool | str = False, combine: nn.Module | None = None,
                       pipeline: Sequence | None = None, **phi_params) -> "Network":
        """Declare a population of per-sample ``shape`` with time constant ``tau`` (ms).

        ``phi``: a name (``"relu"``, ``"identity"``, ``"tanh"``, ``"softplus"``,
        ``"supralinear"``, ...), an ``nn.Module`` or a callable; ``phi_params`` go to a named
        activation (e.g. ``n=1.8, k=0.8``). ``bias``: ``False``, ``True`` / ``"channel"``
        (one per channel) or ``"unit"`` (one per unit). ``combine``: a module mapping
        ``{source_name: op_output}`` to ``u`` (default: their sum); ``phi`` defaults to relu.

        ``pipeline``: instead of ``combine`` and ``phi``, the ordered list of the population's
        operations, e.g. ``["sum", nn.GroupNorm(32, C), "relu", nn.MaxPool2d(2)]`` (see
        :mod:`dynode.pipeline`): a combine stage first (default the sum), then modules
        or activation names applied in order; the bias (if any) is added after the combine.
        The stages after the combine are ``Phi`` (``populations[name].phi``).
        """
        self._check_new_name(name)
        what = f"population {name!r}"
        shape = _shape(shape, what)
        if combine is not None and not isinstance(combine, nn.Module):
            raise ConfigurationError(f"{what}: combine must be an nn.Module (a dynode.pipeline.Combine), "
                                     f"got {type(combine).__name__}")
        if pipeline is not None:
            if phi is not None or combine is not None or phi_params:
                given = [k for k, v in (("phi", phi), ("combine", combine)) if v is not None] + sorted(phi_params)
                raise ConfigurationError(f"{what}: give either pipeline=[...] or phi/combine/activation "
                                         f"parameters, not both (got {given} with the pipeline; put the "
                                         "activation and its parameters in the pipeline)")
            combine, phi_module = build_pipeline(pipeline, what)
        else:
            try:
                phi_module = get_activation("relu" if phi is None else phi, **phi_params)
            except ConfigurationError as exc:
                raise type(exc)(f"{what}: {exc}") from None
            out = _output_shape(phi_module, shape, f"{what}: phi")
            if out != shape:  # r = Phi(u) must keep the population's shape (it would be broadcast)
                raise ShapeError(f"{what}: phi maps shape {shape} to {out}; Phi acts per "
                                 "unit and must keep the population's shape (to pool or reshape, give "
                                 "pipeline=[..., the module] and the population's new shape)")
        first = phi_module[0] if isinstance(phi_module, nn.Sequential) and len(phi_module) else phi_module
        if getattr(first, "inplace", False) is True:
            raise ConfigurationError(f"{what}: Phi's first stage {first} works in place: it would overwrite "
                                     "u, which may be another population's state or a stimulus; build it "
                                     "with inplace=False")
        self.populations[name] = pop = Population(name, shape, tau, phi_module, bias, combine)
        if pipeline is not None:  # it may reshape (e.g. pool): u's shape is learnt from the first input
            pop.u_shape = None
        self._plan = self._order = None
        return self

    def connect(self, src: str, dst: str, op: nn.Module | None = None, delay: float = 0.0, *,
                skip_initial: bool = False) -> "Network":
        """Connect ``src`` (population or input) to population ``dst`` through ``op``.

        ``op`` maps a batch of ``src`` to a batch of ``dst``'s shape. ``delay`` (ms, >= 0) is
        the transmission delay: ``dst`` sees ``op(r_src(t - delay))``.

        ``op=None``: the identity when the shapes agree; between populations of different
        shapes (and a destination that sums this input: the default combine, or a combine whose
        ``sums(src)`` is true, such as normalization's drive) the automatic skip/feedback adapter
        :func:`dynode.adapters.adapter` built from the declared shapes (resize: area
        average down, bilinear up; then a 1x1 channel projection). An explicit ``op`` whose
        output does not fit ``dst`` is an error (wrap it: ``nn.Sequential(op, adapter(...))``).

        ``skip_initial=True``: the term is absent while the value it reads is the source's
        initial state (``t - delay <= t0`` on the fixed-step grid), as in CORnet-RT, whose
        upper areas get no input (not ``op(0)``) at the first step. It also skips that work.
        """
        if dst not in self.populations:
            known = list(self.populations)
            raise ConfigurationError(f"connect({src!r}, {dst!r}): {dst!r} is not a population "
                                     f"(populations: {known}); declare it with add_population first")
        if src not in self.populations and src not in self._inputs:
            raise ConfigurationError(f"connect({src!r}, {dst!r}): {src!r} is neither a population nor "
                                     f"an input (populations: {list(self.populations)}, inputs: {list(self._inputs)})")
        delay = _check_delay(delay, f"connect({src!r}, {dst!r})")
        _check_flag(skip_initial, f"connect({src!r}, {dst!r}): skip_initial")
        pop = self.populations[dst]
        if src in pop.incoming:
            raise ConfigurationError(f"connect({src!r}, {dst!r}): this connection already exists; "
                                     "combine both operators in one module")
        src_shape = self.shape_of(src)
        target = pop.u_shape if pop.u_shape is not None else pop.shape
        if op is None:
            op = (_adapter(src_shape, target) if src_shape != target and sums_term(pop.combine, src)
                  else nn.Identity())
        if not isinstance(op, nn.Module):
            raise ConfigurationError(f"connect({src!r}, {dst!r}): op must be an nn.Module, got {type(op).__name__}")
        out = _output_shape(op, src_shape, f"connection {src} -> {dst}")
        if pop.combine is None and pop.u_shape is None:  # first input of a pipeline population
            target = _learn_u_shape(pop, out, f"connection {src} -> {dst}: the operator")
        if sums_term(pop.combine, src) and out != target:
            raise ShapeError(f"connection {src} -> {dst}: the operator maps {src_shape} to {out}, but "
                             f"{dst!r} has shape {target}; fix the operator (channels, stride, "
                             "padding) or the population shape, or pass op=None for the automatic "
                             "adapter (resize + 1x1 projection)")
        if pop.combine is not None:
            self._check_combine(dst, pop.combine, {**self._term_shapes(dst), src: out},
                                f"connection {src} -> {dst}")
        pop.incoming[src] = op
        pop.delays[src] = delay
        self._connections.append(Connection(src, dst, delay, op, bool(skip_initial)))
        self._plan = self._order = None
        return self

    def set_combine(self, name: str, combine: nn.Module | None) -> "Network":
        """Replace population ``name``'s combine (``None``: the sum) and rebuild the plan.

        The combine maps ``{source: op_output}`` (a subset of the incoming connections, see
        :class:`dynode.pipeline.Combine`) to ``u``; its output for the current
        connections is checked on the meta device against the shape ``u`` must have.
        """
        if name not in self.populations:
            raise ConfigurationError(f"set_combine({name!r}): no such population "
                                     f"(populations: {list(self.populations)})")
        if combine is not None and not isinstance(combine, nn.Module):
            raise ConfigurationError(f"population {name!r}: combine must be an nn.Module, got "
                                     f"{type(combine).__name__}")
        pop = self.populations[name]
        if combine is None:
            bad = {s: o for s, o in self._term_shapes(name).items()
                   if pop.u_shape is not None and o != pop.u_shape}
            if bad:
                raise ShapeError(f"population {name!r}: the sum needs every input of shape {pop.u_shape}, "
                                 f"but {bad} differ; keep a combine that maps them to it")
        else:
            self._check_combine(name, combine, self._term_shapes(name), f"set_combine({name!r})")
        pop._replace_combine(combine)
        self._plan = None
        return self

    def _term_shapes(self, name: str) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of each incoming operator of ``name`` (meta device)."""
        pop = self.populations[name]
        return {src: _output_shape(op, self.shape_of(src), f"connection {src} -> {name}")
                for src, op in pop.incoming.items()}

    def _check_combine(self, name: str, combine: nn.Module, shapes: Mapping[str, tuple[int, ...]],
                       what: str) -> None:
        """Check that ``combine`` maps inputs of ``shapes`` to the shape of ``u`` (learning it
        for a pipeline population that has none yet)."""
        if not shapes:
            return
        pop = self.populations[name]
        out = _combine_shape(combine, shapes, what)
        if pop.u_shape is None:
            _learn_u_shape(pop, out, f"{what}: the combine")
        elif out != pop.u_shape:
            raise ShapeError(f"{what}: the combine of {name!r} maps its inputs "
                             f"{dict(shapes)} to {out}, but u must have shape {pop.u_shape}; fix "
                             "the combine or the operators")

    # -- introspection ---------------------------------------------------------------
    def shape_of(self, name: str) -> tuple[int, ...]:
        if name in self._inputs:
            return self._inputs[name]
        return self.populations[name].shape

    @property
    def connections(self) -> tuple[Connection, ...]:
        return tuple(self._connections)

    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._inputs)

    def areas(self) -> tuple[str, ...]:
        """The populations that are areas of the model (``role == "area"``), i.e. not the
        normalization pools, adaptation and inhibitory populations that components add."""
        return tuple(n for n, p in self.populations.items() if p.role == "area")

    def time_constants(self) -> dict[str, float]:
        return {name: pop.tau_min() for name, pop in self.populations.items()}

    def delays(self) -> dict[str, tuple[str, float]]:
        return {c.label: (c.src, c.delay) for c in self._connections if c.delay > 0}

    def max_delay(self) -> float:
        return max((c.delay for c in self._connections), default=0.0)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> dict[str, Tensor]:
        # memory_format (e.g. channels_last) applies to the (batch, C, H, W) states only
        return {name: torch.zeros((batch_size, *pop.shape), device=device, dtype=dtype).contiguous(
                    memory_format=self.memory_format if len(pop.shape) == 3 else torch.contiguous_format)
                for name, pop in self.populations.items()}

    # -- readout and summary ---------------------------------------------------------------
    def set_readout(self, readout: nn.Module) -> "Network":
        """Attach a readout (e.g. :class:`dynode.models.Readout`) on one population; its
        parameters become the network's (``state_dict`` keys ``readout.*``)."""
        pop = getattr(readout, "population", None)
        if pop not in self.populations:
            raise ConfigurationError(f"the readout reads population {pop!r}, which this network does not "
                                     f"have (populations: {list(self.populations)})")
        shape = tuple(getattr(readout, "shape", self.populations[pop].shape))
        if shape != self.populations[pop].shape:
            raise ShapeError(f"the readout expects {pop!r} of shape {shape}, but it has shape "
                             f"{self.populations[pop].shape}")
        self.readout = readout
        return self

    def decode(self, solution) -> Tensor:
        """The readout applied to a :class:`dynode.Solution` of this network: logits."""
        ro = self.readout
        if ro is None:
            raise ConfigurationError("this network has no readout; attach one with set_readout()")
        name = ro.population
        if getattr(ro, "at", "last") == "last":
            return ro(solution.final_state[name].unsqueeze(0), solution.ts)
        if name not in solution.states:
            raise ConfigurationError(f"the solution holds no trajectory of {name!r} (streamed run?); "
                                     "integrate with saving on")
        return ro(solution.states[name], solution.ts)

    def update_order(self) -> tuple[str, ...]:
        """Populations in topological order of their zero-delay connections (declaration order
        breaks ties and cycles): the sweep order of ``Euler(order="sequential")``."""
        if self._order is None:
            names = list(self.populations)
            deps = {n: {c.src for c in self._connections
                        if c.dst == n and c.delay == 0 and c.src in self.populations and c.src != n}
                    for n in names}
            order: list[str] = []
            while len(order) < len(names):
                ready = [n for n in names if n not in order and deps[n] <= set(order)]
                order.append(ready[0] if ready else next(n for n in names if n not in order))
            self._order = tuple(order)
            self._cyclic = tuple(n for n in order if n in _upstream(n, deps))
        return self._order

    def zero_delay_cycles(self) -> tuple[str, ...]:
        """The populations on cycles of zero-delay connections (self-connections aside), in the
        sweep order :meth:`update_order` gives them; empty when there is none. A sequential
        sweep of such a cycle depends on the declaration order."""
        self.update_order()
        return self._cyclic

    # -- evaluation --------------------------------------------------------------------
    def plan(self) -> tuple[PopulationPlan, ...]:
        """The resolved evaluation plan, one :class:`PopulationPlan` per population in
        declaration order (built once, rebuilt after any change to the network)."""
        if self._plan is None:
            self._plan = tuple(
                PopulationPlan(name, tuple(_term(c, c.src in self._inputs) for c in self._connections
                                           if c.dst == name),
                               pop.combine, pop.bias, pop.phi)
                for name, pop in self.populations.items())
        return self._plan

    def drive(self, t: float, state: Mapping[str, Tensor], history, inputs: Mapping[str, Tensor]
              ) -> dict[str, Tensor]:
        """``Phi_p(u_p(t))`` for every population."""
        plan = self._plan if self._plan is not None else self.plan()
        return {p.name: p.drive(state, history, inputs) for p in plan}

    def forward(self, t: float, state: Mapping[str, Tensor], history, inputs: Mapping[str, Tensor]
                ) -> dict[str, Tensor]:
        """``dr/dt = (Phi(u) - r) / tau`` per population."""
        target = self.drive(t, state, history, inputs)
        return {name: (target[name] - state[name]) / pop.tau
                for name, pop in self.populations.items()}


class Read(Enum):
    """Where a connection's operator reads its source."""

    STATE = "r_src(t)"          # a population, no delay: the current state
    INPUT = "I(t)"              # an input, no delay: the stimulus now
    LAG = "r_src(t - d)"        # a population or input read with delay d from the history


@dataclass(frozen=True, eq=False, slots=True)
class Term:
    """One incoming connection as evaluated: ``op(source read as `read`)`` (``skip_initial``:
    see :meth:`Network.connect`)."""

    src: str
    op: nn.Module
    read: Read
    delay: float
    skip_initial: bool


_STATE, _INPUT = Read.STATE, Read.INPUT


@dataclass(frozen=True, eq=False, slots=True)
class PopulationPlan:
    """A population as evaluated: ``Phi(combine({c: op_c(...)}) + bias)`` (sum by default)."""

    name: str
    terms: tuple[Term, ...]
    combine: nn.Module | None
    bias: Tensor | None
    phi: nn.Module

    def drive(self, state: Mapping[str, Tensor], history, inputs: Mapping[str, Tensor]) -> Tensor:
        """``Phi(u)`` with ``u = combine(terms) + bias``."""
        combine, u, parts = self.combine, None, {}
        for term in self.terms:  # each term read in place (this is the hot loop)
            if term.skip_initial and history.reads_initial(term.delay):
                continue
            read = term.read
            x = (state[term.src] if read is _STATE else inputs[term.src] if read is _INPUT
                 else history.lag(term.src, term.delay))
            y = term.op(x)
            if combine is None:
                u = y if u is None else u + y
            else:
                parts[term.src] = y
        if combine is not None:
            u = combine(parts)
        elif u is None:
            u = torch.zeros_like(state[self.name])
        if self.bias is not None:
            u = u + self.bias
        return self.phi(u)


def _term(c: Connection, from_input: bool) -> Term:
    read = Read.LAG if c.delay > 0 else Read.INPUT if from_input else Read.STATE
    return Term(c.src, c.op, read, c.delay, c.skip_initial)


def _learn_u_shape(pop: Population, u_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Set the shape of ``u`` of a pipeline population from its first input, once the
    pipeline is seen to map it to the population's shape."""
    after = _output_shape(pop.phi, u_shape, f"population {pop.name!r} pipeline")
    if after != pop.shape:
        raise ShapeError(f"{what} gives {u_shape}, which {pop.name!r}'s pipeline maps to {after}, "
                         f"not to its shape {pop.shape}")
    pop.u_shape = u_shape
    return u_shape


def _upstream(name: str, deps: dict[str, set[str]]) -> set[str]:
    """Every population that reaches ``name`` through ``deps`` (``name`` itself if on a cycle)."""
    seen: set[str] = set()
    todo = list(deps[name])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(deps[n])
    return seen


_FLOAT_BYTES = 4  # a population's tau and bias are float32 when built


def _check_tau(tau, shape: tuple[int, ...], what: str) -> None:
    """Refuse a ``tau`` that a population of ``shape`` cannot have: a number (not a bool) or a real
    tensor, finite and > 0 ms, broadcasting to ``shape``, not requiring a gradient (tau is a fixed
    buffer: it is not learnt). ``what`` names the population in the message."""
    if isinstance(tau, Tensor):
        if tau.is_meta or tau.dtype == torch.bool or tau.is_complex():
            raise ConfigurationError(f"{what}: tau must be a real tensor of ms with values, got "
                                     f"{tau.dtype} on {tau.device}")
        if tau.requires_grad:
            raise ConfigurationError(f"{what}: tau requires a gradient, but a population's tau is a fixed "
                                     "buffer (it is not learnt); pass tau.detach()")
        try:
            torch.broadcast_shapes(tau.shape, shape)
        except RuntimeError:
            raise ShapeError(f"{what}: tau of shape {tuple(tau.shape)} does not broadcast to the "
                             f"population shape {shape}") from None
        if tau.numel() == 0 or not bool(torch.all(tau > 0)) or not bool(torch.all(torch.isfinite(tau))):
            raise ConfigurationError(f"{what}: tau must be finite and > 0 ms (every entry)")
        return
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise ConfigurationError(f"{what}: tau must be a number of ms (or a tensor of them), got {tau!r}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ConfigurationError(f"{what}: tau must be finite and > 0 ms, got {tau}")


def _check_bias(bias, what: str) -> None:
    if not (bias is None or isinstance(bias, bool) or (isinstance(bias, str) and bias in ("channel", "unit"))):
        raise ConfigurationError(f"{what}: bias must be False, True/'channel' or 'unit', got {bias!r}")


def _check_delay(delay, what: str) -> float:
    """``delay`` as a float of ms: a number (or one-element tensor), finite and >= 0."""
    if isinstance(delay, bool) or not (isinstance(delay, numbers.Real)
                                       or (isinstance(delay, Tensor) and delay.numel() == 1
                                           and not delay.is_meta)):
        raise ConfigurationError(f"{what}: delay must be a number of ms, got {delay!r}")
    delay = float(delay)
    if not (delay >= 0 and math.isfinite(delay)):
        raise ConfigurationError(f"{what}: delay must be finite and >= 0 ms, got {delay}")
    return delay


def _check_number(value, what: str, *, positive: bool = False) -> float:
    """``value`` as a float: a real number (not a bool or a string), finite and >= 0 (``positive``:
    > 0); else a ConfigurationError ``"<what> must be ..."``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0 or (positive and value == 0)):
        raise ConfigurationError(f"{what} must be finite and {'> 0' if positive else '>= 0'} (a number), "
                                 f"got {value!r}")
    return float(value)


def _check_flag(value, what: str) -> bool:
    """A bool option (a string such as ``"False"`` would be true): refused unless a bool."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{what} must be True or False, got {value!r}")
    return value


def _shape(shape, what: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what}: shape must be a tuple of positive ints, got {shape!r}") from None
    if not out or any(s <= 0 for s in out):
        raise ConfigurationError(f"{what}: shape must be a non-empty tuple of positive ints, got {shape!r}")
    return out


def _combine_shape(combine: nn.Module, shapes: Mapping[str, tuple[int, ...]], what: str
                   ) -> tuple[int, ...]:
    """Per-sample shape of ``combine({src: batch of shape})`` (see :func:`_trial_shape`)."""
    return _trial_shape(combine, lambda new: {s: new((1, *sh)) for s, sh in shapes.items()},
                        f"{what}: the combine", f"inputs of shapes {dict(shapes)}")


def _output_shape(op: nn.Module, in_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Per-sample output shape of ``op`` on ``in_shape`` (see :func:`_trial_shape`)."""
    return _trial_shape(op, lambda new: new((1, *in_shape)), f"{what}: the operator",
                        f"an input of shape (batch, *{in_shape})")


def _trial_shape(module: nn.Module, inputs, what: str, given: str) -> tuple[int, ...]:
    """Per-sample shape of ``module(inputs(new))`` for one sample: on the meta device (no FLOPs, no
    memory) when the module allows it, else on zeros of its parameters' device and dtype, once
    :func:`~dynode.integrate.require_memory` has seen that those zeros (and as much again for the
    output) fit."""
    numel: list[int] = []  # of each sample input, for the memory check of the fallback

    def meta(shape):
        numel.append(math.prod(shape))
        return torch.empty(shape, device="meta")

    try:
        with torch.no_grad():
            out = module(inputs(meta))
    except (NotImplementedError, RuntimeError, TypeError) as meta_error:
        p = next(module.parameters(), None)
        kw = dict(device=p.device, dtype=p.dtype) if p is not None and p.is_floating_point() else {}
        itemsize = kw.get("dtype", torch.get_default_dtype()).itemsize
        require_memory(2 * sum(numel) * itemsize, kw.get("device", "cpu"),
                       f"{what}: trying it on zeros of {given} (it does not run on the meta device)",
                       "make the population smaller, or make the module run on meta tensors")
        try:
            with torch.no_grad():
                out = module(inputs(lambda shape: torch.zeros(shape, **kw)))
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise ShapeError(f"{what} cannot take {given}: {exc}") from meta_error
    if not isinstance(out, Tensor):
        raise ShapeError(f"{what} must return a tensor, got {type(out).__name__}")
    return tuple(out.shape[1:])
