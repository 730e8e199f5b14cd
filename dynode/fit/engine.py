r"""The fit itself: :func:`fit` checks its arguments, builds the problem
(:mod:`dynode.fit.problem`) and hands it to :class:`_Fitter`, the restart and iteration loops
with checkpoints and divergence handling.

**Optimiser.** L-BFGS (default; one step with a strong-Wolfe line search per iteration) or Adam
(``lr`` cosine-annealed to ``lr / 10``) on the parameters' unconstrained forms (learnt times
are :class:`dynode.population.Bounded`, so they stay inside their bounds; gains and offsets are
scaled by their least-squares values at the start of each restart, so a step is relative for
them).

**Convergence.** A restart stops after ``steps`` iterations or when the best loss of the last
``patience`` iterations improves on the best before by less than ``tol`` (relative),

.. math:: \min_{k < K - p} \mathcal L_k - \min_{k \ge K - p} \mathcal L_k \le
          \mathrm{tol}\, \big|\min_{k < K - p} \mathcal L_k\big| ,

or when the loss is below :data:`EXACT` (``1e-12``): *converged*.

**Restarts.** Restart 0 starts from the model's values; restart ``k > 0`` from a random point
(seed ``seed + k``; :mod:`dynode.fit.params`): learnt times uniform in the middle 70 % of
their log range, other parameters multiplied by ``exp(0.3 z)``. The lowest final loss wins;
its values are loaded into the model. The spread over restarts (mean, sd, every restart's
value) is reported.

**Checkpoints and divergence.** With ``checkpoint_dir``, ``last.pt`` holds the fit after every
iteration (:mod:`dynode.fit.checkpoint`); ``resume=True`` continues it exactly. A fit whose
loss, gradient or parameters become NaN or inf, or whose simulation diverges, stops: the last
good state is put back into the model and saved, and the result's ``status`` is
``"diverged"`` with the reason (also warned, :class:`FitDivergenceWarning`).
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import Tensor

from dynode.checkpoint import load_state
from dynode.errors import ConfigurationError, DivergenceError, SolverError, user_stacklevel
from dynode.fit.checkpoint import _run_record, read_checkpoint, write_checkpoint
from dynode.fit.conditions import _area_map, _experiments
from dynode.fit.params import _resolve, _scalar_or_list
from dynode.fit.problem import _observation, _Problem, _problem
from dynode.fit.result import FitResult, _spread
from dynode.network import Network
from dynode.recordings import load_recordings
from dynode.solver_config import FIXED_STEP

__all__ = ["fit", "OPTIMIZERS", "FitDivergenceWarning"]

OPTIMIZERS = ("adam", "lbfgs")
"""``"adam"`` (``lr`` cosine-annealed to ``lr / 10`` over ``steps``) or ``"lbfgs"`` (one
L-BFGS step with a strong-Wolfe line search of at most 8 evaluations per iteration, step
length ``lr``: 1 is its natural step)."""
EXACT = 1e-12
"""A loss (``mean_a (1 - R^2_a)``) below this is an exact fit: the fit has converged."""
DEFAULT_LR = {"adam": 0.05, "lbfgs": 1.0}
"""``lr`` when none is given."""


class _Diverged(Exception):
    """Internal: an evaluation whose simulation, loss or gradient is not finite."""


class FitDivergenceWarning(UserWarning):
    """A fit stopped because its loss, gradient, parameters or simulation became NaN/inf; the
    last good state was kept (and saved where the fit checkpoints)."""


def _snapshot(prob: _Problem) -> list[Tensor]:
    return [t.detach().clone() for t in prob.tensors()] + [b.clone() for b in prob.obs.buffers()]


def _restore(prob: _Problem, snap: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for t, s in zip([*prob.tensors(), *prob.obs.buffers()], snap):
            t.copy_(s)


def _values(prob: _Problem) -> tuple[dict[str, Any], dict[str, str]]:
    vals, units = {}, {}
    with torch.no_grad():
        for p in prob.params:
            vals[p.name], units[p.name] = _scalar_or_list(p.read()), p.unit
        for a in prob.obs.fit_gain:
            vals[f"gain:{a}"], units[f"gain:{a}"] = _scalar_or_list(torch.as_tensor(prob.obs.values(a)[0])), "data/rate"
        for a in prob.obs.fit_offset:
            vals[f"offset:{a}"], units[f"offset:{a}"] = _scalar_or_list(torch.as_tensor(prob.obs.values(a)[1])), "data"
    return vals, units


def _converged(history: Sequence[float], tol: float, patience: int) -> bool:
    """The best loss of the last ``patience`` iterations improves on the best before them by
    less than ``tol`` (relative), or the loss is below :data:`EXACT` (nothing left to fit)."""
    if history and history[-1] <= EXACT:
        return True
    if len(history) <= patience:
        return False
    before, recent = min(history[:-patience]), min(history[-patience:])
    return before - recent <= tol * abs(before)


def fit(model: Network, recordings, *, params: Sequence[str], observe: str = "rate", areas=None,
        experiments: Sequence[str] | None = None, solver: str = "euler", dt: float = 1.0,
        optimizer: str = "lbfgs", steps: int = 100, lr: float | None = None, restarts: int = 1, seed: int = 0,
        tol: float = 1e-4, patience: int = 10,
        images=None, background="blank", input: str | None = None, checkpoint_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False, progress: bool = True, log_every: int = 10) -> FitResult:
    """Fit ``params`` of ``model`` so that its observed time courses match ``recordings``
    (the equations: :mod:`dynode.fit.problem`; the parameter names: :mod:`dynode.fit.params`; the
    optimiser: this module's doc).

    model : a :class:`dynode.Network` whose fitted times are learnt (``learn_tau`` /
        ``learn_delay``); its values are the start of restart 0, and the best restart's values
        are loaded into it at the end.
    recordings : an ``xarray.Dataset`` in the :mod:`dynode.recordings` layout or a path
        (:func:`dynode.recordings.load_recordings`).
    params : parameter names (``tau:V1``, ``delay:V1->V2``, ``norm:V1``, ``gain``, ...).
    observe : ``"rate"`` (the area's mean rate), ``"bold"``, ``"drive"``, ``"lfp"`` or a
        :mod:`dynode.observe` object (:mod:`dynode.fit.problem`); gain and offset as named in ``params``.
    areas : a list of names that are both populations and recorded areas, or
        ``{population: recorded area}`` (:func:`dynode.recordings.match_areas`); default every
        population with a recorded area of its name.
    experiments : the experiments whose conditions are fitted (default every one recorded).
    solver, dt : a fixed-step solver by name and its step (ms).
    steps, lr, tol, patience : at most ``steps`` Adam iterations at ``lr`` per restart; the
        convergence rule of this module's doc.
    restarts, seed : the number of starts (restart 0 from the model's values) and the seed
        of the others.
    images, background, input : what the stimulus shows (default a one-image batch of ones
        on a ``"blank"`` (0) screen, so the input is the contrast envelope itself), as in
        :func:`dynode.stimuli.groen2022`; ``input`` names the fed input of a multi-input model.
    checkpoint_dir, resume, overwrite : ``last.pt`` there after every iteration; ``resume``
        continues it exactly; an existing one is refused unless ``resume`` or ``overwrite``.
    progress, log_every : one line every ``log_every`` iterations (``progress=False``: silent).
    """
    t_start = time.perf_counter()
    if not isinstance(model, Network):
        raise ConfigurationError(f"model must be a dynode.Network, got {type(model).__name__}")
    if optimizer not in OPTIMIZERS:
        raise ConfigurationError(f"optimizer={optimizer!r}: give one of {list(OPTIMIZERS)}")
    if solver not in FIXED_STEP:
        raise ConfigurationError(f"solver={solver!r}: a fit integrates with a fixed-step solver ({list(FIXED_STEP)})")
    if lr is None:
        lr = DEFAULT_LR[optimizer] if optimizer in DEFAULT_LR else 1.0
    for name, v, lo in (("dt", dt, 0.0), ("lr", lr, 0.0), ("tol", tol, -1e-300)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > lo:
            raise ConfigurationError(f"{name} must be a finite number > {max(lo, 0)}, got {v!r}")
    for name, v in (("steps", steps), ("restarts", restarts), ("patience", patience), ("log_every", log_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigurationError(f"{name} must be an int >= 1, got {v!r}")
    if resume and overwrite:
        raise ConfigurationError("resume continues the checkpoint and overwrite starts over; give one")
    if (resume or overwrite) and checkpoint_dir is None:
        raise ConfigurationError("resume/overwrite need checkpoint_dir (where last.pt is)")
    obs_model = _observation(observe)
    ds = load_recordings(recordings)
    amap = _area_map(ds, model, areas)
    exps = _experiments(ds, experiments)
    plist, gains, offsets = _resolve(model, params, list(amap))
    prob, sub, images = _problem(model, ds, amap, exps, plist, gains, offsets, obs_model, solver, dt, images,
                                 background, input)
    record = _run_record(model, sub, params, amap, exps, obs_model, solver, dt, optimizer, steps, lr, restarts, seed,
                         tol,
                         patience, background, images)
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "last.pt"
    if ckpt_path is not None and ckpt_path.exists() and not (resume or overwrite):
        raise ConfigurationError(f"{ckpt_path} exists (a fit's checkpoint); pass resume=True to continue it or "
                                 "overwrite=True to start over")
    if resume and not ckpt_path.is_file():
        raise ConfigurationError(f"resume: no checkpoint {ckpt_path} to continue; leave resume out to start a fit")
    return _Fitter(prob, record, ckpt_path, optimizer, steps, lr, restarts, seed, tol, patience, progress, log_every,
                   sub, t_start).run(resume)


class _Fitter:
    """The restart and iteration loops, checkpoints and divergence handling of :func:`fit`."""

    def __init__(self, prob: _Problem, record: dict, path: Path | None, optimizer: str, steps, lr, restarts, seed,
                 tol, patience, progress, log_every, data: xr.Dataset, t_start: float):
        self.prob, self.record, self.path, self.optimizer = prob, record, path, optimizer
        self.steps, self.lr, self.restarts, self.seed = steps, lr, restarts, seed
        self.tol, self.patience, self.progress, self.log_every = tol, patience, progress, log_every
        self.data, self.t_start = data, t_start
        self.start = _snapshot(prob)  # the model's values: restart 0 starts here
        self.frozen: list[tuple[Tensor, bool]] = []

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.prob.tensors(), lr=self.lr)
        return torch.optim.LBFGS(self.prob.tensors(), lr=self.lr, max_iter=1, max_eval=8, history_size=20,
                                 line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)

    def _checkpoint(self, restart: int, history: list[float], opt, done: list[dict], status: str) -> None:
        """Save the fit as it stands (:func:`~dynode.fit.checkpoint.write_checkpoint`; nothing
        without a path)."""
        write_checkpoint(self.path, self.record, restart, history, done, status, self.prob.net, self.prob.obs, opt)

    # the loops -------------------------------------------------------------------------------
    def run(self, resume: bool) -> FitResult:
        prob = self.prob
        done: list[dict] = []
        history_all: list[list[float]] = []
        first, ckpt = 0, None
        if resume:
            ckpt = read_checkpoint(self.path, self.record)
            done = json.loads(ckpt["done"])
            history_all = [d["history"] for d in done]
            first = int(ckpt["restart"])
            if ckpt["status"] == "diverged":
                raise ConfigurationError(f"{self.path}: this fit diverged (its last good state is saved); change "
                                         "the settings (lr, bounds, dt) and start over with overwrite=True")
        fitted = {id(t) for t in prob.tensors()}
        self.frozen = [(p, p.requires_grad) for p in prob.net.parameters() if id(p) not in fitted]
        for p, _ in self.frozen:  # not fitted: no gradient computed for it
            p.requires_grad_(False)
        try:
            status, message = "converged", ""
            for r in range(first, self.restarts):
                res = self._restart(r, ckpt if r == first else None, done)
                history_all.append(res["history"])
                done.append(res)
                if res["status"] == "diverged":
                    status, message = "diverged", res["message"]
                    break
                if res["status"] == "max_steps":
                    status = "max_steps"
        finally:
            for p, flag in self.frozen:
                p.requires_grad_(flag)
        return self._result(done, history_all, status, message)

    def _restart(self, r: int, ckpt: dict | None, done: list[dict]) -> dict:
        prob = self.prob
        opt = self._optimizer()
        history: list[float] = json.loads(ckpt["history"]) if ckpt is not None else []
        if history:  # continue this restart where the checkpoint left it
            load_state(prob.net, ckpt["model"], self.path)
            prob.obs.load_state_dict(ckpt["observation"])
            opt.load_state_dict(ckpt["optimizer"])
        else:
            _restore(prob, self.start)
            if r > 0:
                gen = torch.Generator().manual_seed(self.seed + r)
                for p in prob.params:
                    if p.perturb is not None:
                        p.perturb(gen)
        status, message, last_good = "max_steps", "", None
        if not history:  # the observation starts at its least-squares gain and offset
            reason = self._least_squares()
        else:
            reason = None
        while reason is None and len(history) < self.steps:
            k = len(history)
            if self.optimizer == "adam":  # cosine from lr to lr / 10 over the steps (a function of k: resumes exactly)
                for g in opt.param_groups:
                    g["lr"] = self.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * k / self.steps)))
            before = (_snapshot(prob), copy.deepcopy(opt.state_dict()))
            reason = self._step(opt)
            if reason is not None:
                break
            last_good = before  # the values at which history[-1] was computed
            history.append(self._last_loss)
            if self.progress and (len(history) % self.log_every == 0 or len(history) == 1):
                vals, _ = _values(prob)
                shown = ", ".join(f"{n}={v:.4g}" for n, v in list(vals.items())[:6] if isinstance(v, float))
                print(f"fit restart {r + 1}/{self.restarts} iteration {len(history)}/{self.steps}: loss "
                      f"{self._last_loss:.5g} (mean R^2 {1 - self._last_loss:.4f}); {shown}", flush=True)
            if _converged(history, self.tol, self.patience):
                status = "converged"
                break
            self._checkpoint(r, history, opt, done, "running")
        if reason is None:  # the values after the last step, evaluated once more
            try:
                with torch.no_grad():
                    loss, r2 = prob.loss(prob.simulate())
                if not math.isfinite(float(loss)):
                    reason = f"the loss is {float(loss)}"
            except (DivergenceError, SolverError) as exc:
                reason = f"the simulation diverged ({str(exc).splitlines()[0]})"
        if reason is not None:
            if last_good is not None:
                _restore(prob, last_good[0])
                opt.load_state_dict(last_good[1])
            status = "diverged"
            where = (f"the last good state (the values of iteration {len(history)}, loss {history[-1]:.4g}) is kept"
                     if last_good is not None else "no iteration finished")
            message = (f"restart {r}, iteration {len(history) + 1}: {reason}; {where}"
                       f"{' and saved in ' + str(self.path) if self.path else ''}; lower lr or narrow the bounds")
            warnings.warn(f"fit diverged: {message}", FitDivergenceWarning, stacklevel=user_stacklevel())
            self._checkpoint(r, history, opt, done, "diverged")
            nan = float("nan")
            loss, r2 = (torch.tensor(history[-1]) if history else torch.tensor(nan)), {a: nan for a in prob.areas}
            if last_good is not None:
                with torch.no_grad():
                    loss, r2 = prob.loss(prob.simulate())
        vals, units = _values(prob)
        res = {"restart": r, "params": vals, "units": units, "loss": float(loss), "r2": r2, "history": history,
               "iterations": len(history), "status": status, "message": message,
               "state": [t.tolist() for t in _snapshot(prob)]}
        if status != "diverged":  # the next restart starts afresh from here
            self._checkpoint(r + 1, [], self._optimizer(), done + [res], "running")
        if self.progress:
            print(f"fit restart {r + 1}/{self.restarts}: {status} after {len(history)} iterations, loss "
                  f"{float(loss):.5g}, R^2 " + ", ".join(f"{a} {v:.4f}" for a, v in r2.items()), flush=True)
        return res

    def _least_squares(self) -> str | None:
        """Start every fitted gain and offset at its least-squares value for the model as it
        is; the reason when that simulation diverges."""
        prob = self.prob
        try:
            with torch.no_grad():
                rates = prob.simulate()
        except (DivergenceError, SolverError) as exc:
            return f"the simulation diverged at the start values ({str(exc).splitlines()[0]})"
        for a in prob.areas:
            prob.obs.least_squares(a, rates[a], prob.y[a])
        return None

    def _evaluate(self, opt) -> Tensor:
        """Loss and gradient at the current values (raises :class:`_Diverged`)."""
        prob = self.prob
        opt.zero_grad(set_to_none=True)
        try:
            rates = prob.simulate()
        except (DivergenceError, SolverError) as exc:
            raise _Diverged(f"the simulation diverged ({str(exc).splitlines()[0]})") from None
        loss, _ = prob.loss(rates)
        if not torch.isfinite(loss):
            raise _Diverged(f"the loss is {float(loss)}")
        loss.backward()
        bad = [p.name for p in prob.params if any(t.grad is not None and not torch.isfinite(t.grad).all()
                                                  for t in p.tensors)]
        bad += [n for n, t in prob.obs.named_parameters() if t.grad is not None and not torch.isfinite(t.grad).all()]
        if bad:
            raise _Diverged(f"the gradient of {bad} is NaN/inf")
        return loss

    def _step(self, opt) -> str | None:
        """One iteration (Adam: one gradient step; L-BFGS: one step with its line search); the
        reason when it diverges (the caller puts the last good state back)."""
        prob = self.prob
        try:
            if self.optimizer == "adam":
                loss = self._evaluate(opt)
                opt.step()
            else:
                losses: list[Tensor] = []
                opt.step(lambda: losses.append(self._evaluate(opt)) or losses[-1])
                loss = losses[0]
        except _Diverged as exc:
            return str(exc)
        bad = [p.name for p in prob.params if not all(torch.isfinite(t).all() for t in p.tensors)]
        if bad:
            return f"the parameters {bad} became NaN/inf"
        self._last_loss = float(loss.detach())
        return None

    def _result(self, done: list[dict], history_all, status: str, message: str) -> FitResult:
        prob = self.prob
        finished = [d for d in done if d["status"] != "diverged"] or done
        best = min(finished, key=lambda d: d["loss"] if math.isfinite(d["loss"]) else math.inf)
        _restore(prob, [torch.as_tensor(v, dtype=t.dtype).reshape(t.shape)
                        for v, t in zip(best["state"], _snapshot(prob))])
        out = None
        if best["iterations"] or best["status"] != "diverged":  # else the start itself diverged: nothing to show
            with torch.no_grad():
                rates = prob.simulate()
                pred = {a: prob.obs(a, rates[a]).double().cpu().numpy() for a in prob.areas}
            ds = self.data
            out = xr.Dataset({a: (("condition", "time"), pred[a], dict(ds[a].attrs, long_name=f"fitted {a}"))
                              for a in prob.areas}, coords={k: v for k, v in ds.coords.items()
                                                            if set(v.dims) <= {"condition", "time"}})
        if not message:
            message = f"best of {len(done)} restart(s): restart {best['restart']}"
        restarts = [{k: d[k] for k in ("restart", "params", "loss", "r2", "iterations", "status", "message")}
                    for d in done]
        return FitResult(params=best["params"], units=best["units"], spread=_spread(finished), loss=best["loss"],
                         r2=best["r2"], history=history_all, restarts=restarts, best=int(best["restart"]),
                         status=status, message=message, prediction=out,
                         seconds=time.perf_counter() - self.t_start,
                         iterations=sum(d["iterations"] for d in done))
