r"""The network builder: populations, inputs and delayed connections.

Each population ``p`` obeys

.. math:: \tau_p \frac{dr_p}{dt} = -r_p(t) + \Phi_p(u_p(t)), \qquad
          u_p(t) = \mathrm{combine}_p\big(\{op_c(r_{src(c)}(t - d_c))\}_c\big) + b_p

with ``combine`` the sum unless the population supplies its own module. Inputs are source
populations whose value is the stimulus ``I(t)``.

A :class:`Network` is a :class:`~dynode.VectorField`. It also exposes :meth:`drive`
(``Phi(u)`` per population), from which :class:`dynode.solvers.Euler` updates ``r`` exactly.

Its evaluation plan (:meth:`Network.plan`, rebuilt after any change; :mod:`dynode.plan`) resolves
each connection's operator, delay and where it reads, so the step loop does no lookups by string
beyond reading its state and input dicts. Its parts are in :mod:`dynode.population`, the argument
checks in :mod:`dynode.checks`. ``net.protocol`` (:class:`RunProtocol`) holds how the model is
meant to be run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynode.activations import get_activation
from dynode.adapters import adapter as _adapter
from dynode.checks import as_shape, check_delay, check_flag, combine_shape, output_shape
from dynode.errors import ConfigurationError, ShapeError
from dynode.field import VectorField
from dynode.pipeline import build_pipeline, sums_term
from dynode.plan import PopulationPlan, Read, Term, build_plan, sweep_order
from dynode.population import Bounded, Connection, Population

__all__ = ["Network", "Population", "Connection", "RunProtocol", "PopulationPlan", "Term", "Read"]

_DERIVED = ("_plan", "_order", "_cyclic")  # what a network derives from its building state, lazily


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
        saved = {n: (dict(p.incoming._modules), dict(p.learnt_delays._modules), dict(p.delays), p.combine,
                     p.u_shape, p.role) for n, p in pops.items()}
        inputs, connections, readout = dict(self._inputs), list(self._connections), self.readout
        cached = {k: self.__dict__[k] for k in _DERIVED if k in self.__dict__}
        try:
            yield self
        except BaseException:
            pops.clear()
            pops.update(saved_pops)
            for n, (incoming, learnt, delays, combine, u_shape, role) in saved.items():
                p = pops[n]
                for mine, old in ((p.incoming._modules, incoming), (p.learnt_delays._modules, learnt)):
                    mine.clear()
                    mine.update(old)
                p.delays.clear()
                p.delays.update(delays)
                p._replace_combine(combine)
                p.u_shape, p.role = u_shape, role
            self._inputs.clear()
            self._inputs.update(inputs)
            self._connections[:] = connections
            self.readout = readout
            for k in _DERIVED:
                self.__dict__.pop(k, None)
            self.__dict__.update(cached)
            raise

    def add_input(self, name: str, shape: Sequence[int]) -> "Network":
        """Declare a stimulus input of per-sample ``shape`` (batch excluded)."""
        self._check_new_name(name)
        self._inputs[name] = as_shape(shape, f"input {name!r}")
        self._plan = None
        return self

    def add_population(self, name: str, shape: Sequence[int], tau: float | Tensor, phi=None,
                       bias: bool | str = False, combine: nn.Module | None = None,
                       pipeline: Sequence | None = None, *, learn_tau: bool = False,
                       tau_bounds: tuple[float, float] | None = None, noise: float | Tensor = 0.0,
                       **phi_params) -> "Network":
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

        ``learn_tau=True``: ``tau`` (a number, or a tensor per channel or unit) is learnt, kept
        inside ``tau_bounds = (lo, hi)`` ms (default ``(tau / 2, 2 tau)``) by the
        parametrisation :class:`dynode.population.Bounded`; the fixed-step solvers warn when ``dt``
        is beyond their stability limit at the lower bound.

        ``noise``: ``sigma`` of additive white noise in the dynamics, ``tau dr = (-r + Phi(u)) dt +
        sigma sqrt(2 tau) dW`` (a number >= 0, or a tensor per channel or unit): ``sigma`` is the
        stationary standard deviation of a linearly relaxing rate (see :mod:`dynode.brownian`;
        integrate with ``solver="euler"`` or ``"heun"`` and ``seed=``).
        """
        self._check_new_name(name)
        what = f"population {name!r}"
        check_flag(learn_tau, f"{what}: learn_tau")
        shape = as_shape(shape, what)
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
            out = output_shape(phi_module, shape, f"{what}: phi")
            if out != shape:  # r = Phi(u) must keep the population's shape (it would be broadcast)
                raise ShapeError(f"{what}: phi maps shape {shape} to {out}; Phi acts per "
                                 "unit and must keep the population's shape (to pool or reshape, give "
                                 "pipeline=[..., the module] and the population's new shape)")
        first = phi_module[0] if isinstance(phi_module, nn.Sequential) and len(phi_module) else phi_module
        if getattr(first, "inplace", False) is True:
            raise ConfigurationError(f"{what}: Phi's first stage {first} works in place: it would overwrite "
                                     "u, which may be another population's state or a stimulus; build it "
                                     "with inplace=False")
        self.populations[name] = pop = Population(name, shape, tau, phi_module, bias, combine,
                                                  learn_tau, tau_bounds, noise)
        if pipeline is not None:  # it may reshape (e.g. pool): u's shape is learnt from the first input
            pop.u_shape = None
        self._plan = self._order = None
        return self

    def connect(self, src: str, dst: str, op: nn.Module | None = None, delay: float = 0.0, *,
                skip_initial: bool = False, learn_delay: bool = False,
                delay_bounds: tuple[float, float] | None = None) -> "Network":
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

        ``learn_delay=True``: the delay (> 0, from a population) is learnt inside
        ``delay_bounds = (lo, hi)`` ms (default ``(delay / 2, 2 delay)``), read at any real value
        through the history's interpolant and differentiable with respect to it
        (:meth:`dynode.History.lag_at`); the history reaches back ``hi``. Fixed-step solvers need
        ``lo >= dt``; the torchdiffeq/torchode backends cannot read learnt delays.
        """
        if dst not in self.populations:
            known = list(self.populations)
            raise ConfigurationError(f"connect({src!r}, {dst!r}): {dst!r} is not a population "
                                     f"(populations: {known}); declare it with add_population first")
        if src not in self.populations and src not in self._inputs:
            raise ConfigurationError(f"connect({src!r}, {dst!r}): {src!r} is neither a population nor "
                                     f"an input (populations: {list(self.populations)}, inputs: {list(self._inputs)})")
        what = f"connect({src!r}, {dst!r})"
        delay = check_delay(delay, what)
        check_flag(skip_initial, f"{what}: skip_initial")
        learnt = self._learnt_delay(src, delay, learn_delay, delay_bounds, skip_initial, what)
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
        out = output_shape(op, src_shape, f"connection {src} -> {dst}")
        if pop.combine is None and pop.u_shape is None:  # first input of a pipeline population
            target = pop.learn_u_shape(out, f"connection {src} -> {dst}: the operator")
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
        if learnt is not None:
            pop.learnt_delays[src] = learnt
        self._connections.append(Connection(src, dst, delay, op, bool(skip_initial), learnt))
        self._plan = self._order = None
        return self

    def _learnt_delay(self, src: str, delay: float, learn: bool, bounds, skip_initial: bool,
                      what: str) -> Bounded | None:
        """The :class:`Bounded` delay of ``connect(..., learn_delay=True)``, after its checks."""
        check_flag(learn, f"{what}: learn_delay")
        if not learn:
            if bounds is not None:
                raise ConfigurationError(f"{what}: delay_bounds bound a learnt delay; pass learn_delay=True "
                                         "too (or drop delay_bounds)")
            return None
        if src in self._inputs:
            raise ConfigurationError(
                f"{what}: a stimulus is piecewise constant in time, so its delayed read has no gradient "
                "with respect to the delay; model the pathway as a population (e.g. an LGN population "
                "between the image and V1) and learn the delay of its connection")
        if delay <= 0:
            raise ConfigurationError(f"{what}: a learnt delay must start > 0 ms (it is kept inside "
                                     "delay_bounds, lo > 0); give delay=")
        if skip_initial:
            raise ConfigurationError(f"{what}: skip_initial needs a fixed delay on the grid; drop it or "
                                     "learn_delay")
        return Bounded(delay, bounds, what, "delay_bounds")

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
        return {src: output_shape(op, self.shape_of(src), f"connection {src} -> {name}")
                for src, op in pop.incoming.items()}

    def _check_combine(self, name: str, combine: nn.Module, shapes: Mapping[str, tuple[int, ...]],
                       what: str) -> None:
        """Check that ``combine`` maps inputs of ``shapes`` to the shape of ``u`` (learning it
        for a pipeline population that has none yet)."""
        if not shapes:
            return
        pop = self.populations[name]
        out = combine_shape(combine, shapes, what)
        if pop.u_shape is None:
            pop.learn_u_shape(out, f"{what}: the combine")
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
        """The smallest ``tau`` (ms) of each population (a learnt one: its value now)."""
        return {name: pop.tau_min() for name, pop in self.populations.items()}

    def tau_bounds(self) -> dict[str, tuple[float, float]]:
        """``(lo, hi)`` ms of each population whose ``tau`` is learnt."""
        return {name: pop.tau_bounds for name, pop in self.populations.items() if pop.tau_bounds is not None}

    def delays(self) -> dict[str, tuple[str, float]]:
        """``{label: (source, delay ms)}`` of every delayed connection (a learnt delay: its value now)."""
        return {c.label: (c.src, c.current_delay()) for c in self._connections if c.delay > 0}

    def delay_bounds(self) -> dict[str, tuple[float, float]]:
        """``(lo, hi)`` ms of each connection whose delay is learnt."""
        return {c.label: (c.learnt.lo, c.learnt.hi) for c in self._connections if c.learnt is not None}

    def max_delay(self) -> float:
        """The longest delay any read may use (ms): a learnt delay counts with its upper bound."""
        return max((c.delay if c.learnt is None else c.learnt.hi for c in self._connections), default=0.0)

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
            self._order, self._cyclic = sweep_order(tuple(self.populations), self._connections)
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
            self._plan = build_plan(self.populations, self._connections, self._inputs)
        return self._plan

    drive_hook = None
    """None, or a callable ``hook(t, state, history, inputs, plan) -> {population: Phi(u)}`` that
    :meth:`drive` calls instead of evaluating the plan itself: a recording run installs one
    (:class:`dynode.observe.CurrentsCapture`, while ``dynode.simulate`` runs) to keep the input
    currents of the stage it evaluates. A class attribute, so the hot path pays one attribute
    check when none is installed."""

    def drive(self, t: float, state: Mapping[str, Tensor], history, inputs: Mapping[str, Tensor]
              ) -> dict[str, Tensor]:
        """``Phi_p(u_p(t))`` for every population."""
        plan = self._plan if self._plan is not None else self.plan()
        if self.drive_hook is not None:
            return self.drive_hook(t, state, history, inputs, plan)
        return {p.name: p.drive(state, history, inputs) for p in plan}

    def forward(self, t: float, state: Mapping[str, Tensor], history, inputs: Mapping[str, Tensor]
                ) -> dict[str, Tensor]:
        """``dr/dt = (Phi(u) - r) / tau`` per population."""
        target = self.drive(t, state, history, inputs)
        return {name: (target[name] - state[name]) / pop.tau
                for name, pop in self.populations.items()}
