"""``integrate``: the differentiable solve.

``integrate(field, stimulus, t_end=..., dt=..., solver=...)`` validates the run once
(:func:`~dynode.problem.make_problem`: times, shapes of stimulus and initial state; the solver
checks the delays against ``dt``), then hands the :class:`~dynode.problem.Problem` to the
solver. Gradients flow through the whole trajectory (back-propagation through time), so the
same call trains a network.
"""

from __future__ import annotations

import math

import torch

from dynode.brownian import noise_coefficients, pending_states
from dynode.errors import ConfigurationError
from dynode.events import as_events
from dynode.problem import as_ms, make_problem
from dynode.solution import Solution, noise_refusal
from dynode.solver import get_solver
from dynode.threads import share as share_cpus
from dynode.tolerances import TIME_RTOL

__all__ = ["integrate", "available_memory", "require_memory", "check_state_memory"]


def integrate(field, stimulus=None, *, t_end: float, dt: float | None = None, t0: float = 0.0,
              solver="euler", save_at=None, initial_state=None, batch_size: int | None = None,
              max_abs: float | None = 1e6, check_every: int = 50,
              checkpoint: int | bool | None = None, dense: bool = False,
              memory_limit: float | None = None, seed=None, events=None, terminate=None) -> Solution:
    """Integrate ``field`` from ``t0`` to ``t_end`` (ms) under ``stimulus``.

    Parameters
    ----------
    field : a :class:`dynode.VectorField` (e.g. a :class:`dynode.Network`).
    stimulus : a :class:`dynode.stimuli.Stimulus`, a tensor or a dict of tensors (constant
        input), or None for a field without inputs.
    t_end, t0 : time interval in ms. For fixed-step solvers ``t_end - t0`` must be a whole
        number of steps.
    dt : step size in ms (required by fixed-step solvers; an adaptive solver's first step).
    solver : a name from ``dn.solvers.SOLVERS`` (``"euler"``, ``"rk4"``, ``"dopri5"``, ...) or a
        solver object.
    save_at : None (every step), a number (every that many ms) or a sequence of times (ms).
        Times between a fixed-step solver's grid points come from the step's interpolant
        (see ``dense``), computed as the step is taken.
    initial_state : ``{population: tensor}`` overriding the field's ``init_state`` (zeros
        for a Network); batch first, or per-sample shape to share across the batch. Or a
        :class:`Solution` of a fixed-step run with the same ``dt``: the run continues exactly,
        its delayed past included (e.g. after an idle warm-up, or for truncated BPTT with
        ``solution.tail.detach()`` via ``dataclasses.replace``).
    batch_size : batch size when neither the stimulus nor the initial state sets it (default 1).
    max_abs : blow-up threshold for the divergence check (None: only NaN/inf).
    check_every : steps between a fixed-step solver's divergence checks (each costs one device
        sync; see :mod:`dynode.guards` for the other solvers).
    checkpoint : gradient checkpointing for long BPTT (fixed-step solvers): the run is cut
        into segments of this many steps (``True``: about sqrt(steps)); only segment
        boundaries and saved states are kept, the inside is recomputed during backward.
        Memory then grows with sqrt(steps) (plus the saved states); time about 1.3x.
    dense : keep the solver's interpolant on every step, so that ``sol.evaluate(t)`` gives the
        state at any time in ``[t0, t_end]`` (Hermite for the fixed-step methods, the method's
        own continuous extension for Dopri5/Tsit5/Bosh3). It keeps every step's states and
        stage derivatives (2-8 states per step), so it is off by default; for known times
        ``save_at`` costs nothing extra. Not with ``checkpoint`` nor the torchdiffeq/torchode
        adapters.
    memory_limit : bytes the run may take (default: the memory available on the states'
        device). Two lower bounds are checked against it, each with its remedies: the working
        state (the batch's state, the solver's stage buffers and a fixed-step delay history),
        before ``init_state`` allocates it; and the kept trajectory (the saved states), before
        the first step. ``math.inf`` runs anyway.
    seed : fixes the Brownian paths of a noisy field (``add_population(..., noise=sigma)``; see
        :mod:`dynode.brownian`): an int (sample ``b`` gets the path of key ``(seed, b)``, whatever
        the rest of the batch), or the per-sample keys of a run (``sol.seeds``, or a slice of it
        to replay some samples alone). ``None``: a continued solution's keys, else a seed drawn
        from torch's global generator; either way the keys are recorded in ``Solution.seeds``.
        Reruns with one seed are bit-identical, and ``dt`` and ``dt/2`` see the same path. Only
        ``solver="euler"`` (Euler-Maruyama) and ``"heun"`` (stochastic Heun) integrate noise;
        a seed for a field without noise is an error.
    events : ``{name: g}`` or ``{name: dynode.Event(g, direction=, terminal=)}``: per-sample zero
        crossings of ``g(t, state) -> (batch,)`` (``t`` a ``(batch,)`` tensor of ms; a readout's
        confidence minus a threshold, an accumulator minus a bound), located on the step's
        interpolant to the solver's accuracy; ``sol.events[name]`` holds each sample's first
        crossing time (ms, float64, NaN where none fired), differentiable w.r.t. the parameters
        (implicit function theorem; see :mod:`dynode.events`). A plain callable fires either
        way and does not terminate. dynode's own solvers only (not the torchdiffeq/torchode
        adapters), not with ``checkpoint=``.
    terminate : the events that stop a sample (a name, a list of names, or True for all; in
        addition to ``Event(..., terminal=True)``): its state is held from its event time on,
        and the run ends when every sample has stopped (read once per ``check_every`` steps;
        the remaining saves repeat the held states, ``stats.t_final`` is where it stopped).

    Returns
    -------
    :class:`dynode.Solution` with ``ts`` (ms), ``states`` (``(len(ts), batch, *shape)``),
    ``stats`` and ``final_state``.
    """
    share_cpus()  # a CLI process told nothing gives up the CPUs other processes keep busy (dynode.threads)
    dt = None if dt is None else as_ms(dt, "dt")
    _check_limit(memory_limit)
    if dt is not None and not (math.isfinite(dt) and dt > 0):  # before an adaptive solver evaluates
        raise ConfigurationError(f"dt must be a finite number > 0 ms (the step of a fixed-step solver, the "
                                 f"first step of an adaptive one), got {dt}")
    solver = get_solver(solver)
    watched = as_events(events, terminate)
    if watched is not None:
        _check_events(watched, solver, checkpoint, dense)
    noise = noise_coefficients(field)
    if noise and not getattr(solver, "stochastic", False):
        raise ConfigurationError(noise_refusal(type(solver).__name__, noise))
    problem = make_problem(field, stimulus, t0=t0, t_end=t_end, save_at=save_at,
                           initial_state=initial_state, batch_size=batch_size, max_abs=max_abs,
                           check_every=check_every, checkpoint=checkpoint, dense=dense, noise=noise,
                           seed=seed, events=watched, check_state=lambda batch, device, dtype: check_state_memory(
                               field, solver, dt, batch, device, dtype, memory_limit))
    _check_memory(problem, dt, solver.grid, memory_limit)
    if problem.tail is not None and not solver.continues:
        raise ConfigurationError(f"continuing a solution with its delayed history is implemented for the "
                                 f"fixed-step solvers, not {type(solver).__name__}; pass "
                                 "solution.final_state to restart from the last state instead")
    if checkpoint and not solver.continues:
        raise ConfigurationError(f"checkpoint= is implemented for the fixed-step solvers only, not "
                                 f"{type(solver).__name__}; use Euler/Heun/Midpoint/RK4 for checkpointed BPTT")
    if dense and not solver.dense_output:
        raise ConfigurationError(f"dense=True is implemented for dynode's own solvers (Euler, Midpoint, "
                                 f"Heun, RK4, Dopri5, Tsit5, Bosh3), not {type(solver).__name__}; "
                                 "pass the times you need as save_at")
    return solver.solve(problem, dt)


def _check_events(events, solver, checkpoint, dense: bool) -> None:
    """Refuse, before anything runs, events that the solver or the options cannot support."""
    if not getattr(solver, "locates_events", False):
        raise ConfigurationError(f"events= are located by dynode's own solvers (euler, midpoint, heun, rk4, "
                                 f"dopri5, tsit5, bosh3), not {type(solver).__name__}; use one of those")
    if checkpoint:
        raise ConfigurationError("events= with checkpoint= is not supported (the checkpointed segments are "
                                 "recomputed during backward, which would watch the events twice); drop "
                                 "checkpoint= or the events")
    if dense and any(ev.terminal for ev in events.values()):
        raise ConfigurationError("dense=True with terminal events is not supported (the dense output would show "
                                 "a stopped sample's computed, not its held, state); use save_at for the times "
                                 "you need, or non-terminal events")


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (CUDA: the driver's free memory from
    ``mem_get_info`` plus what torch's caching allocator has reserved but not allocated, which it
    reuses; CPU: ``MemAvailable`` of /proc/meminfo), or ``None`` where it cannot be read."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _check_limit(memory_limit) -> None:
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, float))
                                     or not memory_limit > 0):
        raise ConfigurationError(f"memory_limit must be a positive number of bytes (math.inf: no check), "
                                 f"got {memory_limit!r}")


def require_memory(nbytes: int, device, what: str, remedy: str, memory_limit: float | None = None) -> None:
    """Refuse, before anything is allocated, work that needs ``nbytes`` bytes on ``device``.

    Raises :class:`ConfigurationError` ``"<what> needs X GiB but Y GiB are available on
    <device>; <remedy>"`` when ``nbytes`` exceeds the budget: ``memory_limit`` bytes if given
    (``math.inf`` disables the check), else :func:`available_memory` of ``device`` (no check
    where that cannot be read). ``what`` names what needs the memory (and how it was counted),
    ``remedy`` what to change. One read of the free memory, no allocation: call it once per
    run, never per step."""
    _check_limit(memory_limit)
    if memory_limit == math.inf:
        return
    device = torch.device(device)
    budget = memory_limit if memory_limit is not None else available_memory(device)
    if budget is None or nbytes <= budget:
        return
    source = " (the memory_limit given)" if memory_limit is not None else ""
    raise ConfigurationError(f"{what} needs {_gib(nbytes)} GiB but {_gib(budget)} GiB are available "
                             f"on {device}{source}; {remedy}")


def _gib(nbytes: float) -> str:
    """Bytes as GiB for a message: 3 significant digits, whole GiB from 100 on (no exponent)."""
    x = nbytes / 1024 ** 3
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def check_state_memory(field, solver, dt: float | None, batch: int, device: torch.device, dtype: torch.dtype,
                 memory_limit: float | None) -> None:
    """Refuse, before ``init_state`` allocates it, a batch whose working state would not fit.

    Counted (a lower bound): the state, one state per solver stage, and for a
    fixed-step solver on a delayed field the ring of ``K = ceil(max_delay / dt)`` past states
    (and ``K + 1`` derivatives where its stages read between grid points). The per-sample size
    comes from ``init_state(1)`` on the meta device: no memory is allocated."""
    if memory_limit == math.inf:
        return
    sample = field.init_state(1, device="meta", dtype=dtype)
    if not isinstance(sample, dict):
        return  # make_problem refuses it with its own message
    per_sample = sum(v.numel() * v.element_size() for v in sample.values() if isinstance(v, torch.Tensor))
    # the stage derivatives a Runge-Kutta step holds at once: a fixed-step solver's ``c``, an
    # adaptive one's ``tableau.c``; 1 for a solver that declares neither
    stages = len(getattr(getattr(solver, "tableau", solver), "c", (0.0,)))
    copies, history, remedy = 1 + stages, "", ""
    max_delay = float(field.max_delay())
    if solver.grid and dt is not None and max_delay > 0:
        k = math.ceil(max_delay / dt - TIME_RTOL)
        derivatives = bool(getattr(solver, "needs_derivatives", False))
        copies += k + (k + 1 if derivatives else 0)
        history = (f", {k} past states{' and their derivatives' if derivatives else ''} of the delay "
                   f"history (max_delay {max_delay:g} ms / dt {dt:g} ms)")
        remedy = "a larger dt (the history keeps max_delay / dt past states), "
    noisy = noise_coefficients(field) if getattr(solver, "stochastic", False) and dt is not None else {}
    if noisy:  # the Brownian walk's pending halves, its int64 keys (as 2 float32 states) and a normal
        extra = pending_states(dt) + 3
        per_noisy = sum(v.numel() * v.element_size() for k, v in sample.items() if k in noisy)
        copies += extra * per_noisy / max(per_sample, 1)
        history += f", {extra} for the noise's Brownian path"
    count = f"{copies:.0f}" if float(copies).is_integer() else f"{copies:.1f}"
    require_memory(int(batch * per_sample * copies), device,
                   f"the working state of batch {batch} ({per_sample / 1024 ** 2:.3g} MiB per sample, "
                   f"{count} copies: the state, {stages} stage(s) of "
                   f"{type(solver).__name__}{history}; a lower bound)",
                   f"use a smaller batch (fewer samples in the stimulus, or batch_size=), {remedy}"
                   "a device with more memory, or pass memory_limit=math.inf to try anyway", memory_limit)


def _check_memory(problem, dt: float | None, grid: bool, memory_limit: float | None) -> None:
    """Refuse, before the first step, a run whose kept trajectory alone would not fit
    (``dt``: None or the finite step > 0 that :func:`integrate` has checked).

    The saved states need ``n_saves * sum_p (batch * numel_p * bytes)``; a fixed-step run that
    saves every step keeps ``(t_end - t0) / dt + 1`` of them. Autograd keeps more when gradients
    are on, so this is a lower bound. ``memory_limit``: as in :func:`integrate`."""
    if problem.save_at is None and (not grid or dt is None):
        return  # every accepted step (count unknown before the run), or no dt (the solver refuses it)
    n_saves = (len(problem.save_at) if problem.save_at is not None
               else int(round((problem.t_end - problem.t0) / dt)) + 1)
    per_save = sum(y.numel() * y.element_size() for y in problem.y0.values())
    require_memory(n_saves * per_save, next(iter(problem.y0.values())).device,
                   f"keeping {n_saves} saved states of {per_save / 1024 ** 2:.3g} MiB each (batch "
                   f"{problem.batch_size})",
                   "save fewer times (save_at=<ms between saves> or a list of times), stream the run to disk "
                   "(dn.simulate(..., store='run.zarr')), use a smaller batch, or pass memory_limit=math.inf "
                   "to run anyway", memory_limit)
