"""``integrate``: the differentiable solve.

``integrate(field, stimulus, t_end=..., dt=..., solver=...)`` validates everything once
(times, delays against ``dt``, shapes of stimulus and initial state), then hands the
:class:`~dynode.problem.Problem` to the solver. Gradients flow through the whole trajectory
(back-propagation through time), so the same call trains a network.
"""

from __future__ import annotations

from dynode.errors import ConfigurationError
from dynode.problem import make_problem
from dynode.solution import Solution
from dynode.solvers import get_solver

__all__ = ["integrate"]


def integrate(field, stimulus=None, *, t_end: float, dt: float | None = None, t0: float = 0.0,
              solver="euler", save_at=None, initial_state=None, batch_size: int | None = None,
              max_abs: float | None = 1e6, check_every: int = 50,
              checkpoint: int | bool | None = None, dense: bool = False) -> Solution:
    """Integrate ``field`` from ``t0`` to ``t_end`` (ms) under ``stimulus``.

    Parameters
    ----------
    field : a :class:`dynode.VectorField` (e.g. a :class:`dynode.Network`).
    stimulus : a :class:`dynode.stimuli.Stimulus`, a tensor or a dict of tensors (constant
        input), or None for a field without inputs.
    t_end, t0 : time interval in ms. For fixed-step solvers ``t_end - t0`` must be a whole
        number of steps.
    dt : step size in ms (required by fixed-step solvers).
    solver : a name (``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``) or a solver object.
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
    check_every : steps between divergence checks (each costs one device sync).
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

    Returns
    -------
    :class:`dynode.Solution` with ``ts`` (ms), ``states`` (``(len(ts), batch, *shape)``),
    ``stats`` and ``final_state``.
    """
    problem = make_problem(field, stimulus, t0=t0, t_end=t_end, save_at=save_at,
                           initial_state=initial_state, batch_size=batch_size, max_abs=max_abs,
                           check_every=check_every, checkpoint=checkpoint, dense=dense)
    solver = get_solver(solver)
    if problem.tail is not None and getattr(solver, "adaptive", False):
        raise ConfigurationError(f"continuing a solution with its delayed history is implemented for the "
                                 f"fixed-step solvers, not {type(solver).__name__}; pass "
                                 "solution.final_state to restart from the last state instead")
    if checkpoint and getattr(solver, "adaptive", False):
        raise ConfigurationError(f"checkpoint= is implemented for the fixed-step solvers only, not "
                                 f"{type(solver).__name__}; use Euler/Heun/Midpoint/RK4 for checkpointed BPTT")
    if dense and not getattr(solver, "dense_output", False):
        raise ConfigurationError(f"dense=True is implemented for dynode's own solvers (Euler, Midpoint, "
                                 f"Heun, RK4, Dopri5, Tsit5, Bosh3), not {type(solver).__name__}; "
                                 "pass the times you need as save_at")
    return solver.solve(problem, dt)
