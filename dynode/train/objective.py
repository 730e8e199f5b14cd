"""What one training step integrates and minimises (:class:`Objective`, a part of
:class:`~dynode.train.Trainer`): the stimulus, the idle warm-up, the times saved per segment and
the loss of each segment (steps 1-3 and "Long runs" of the package docstring)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError
from dynode.integrate import integrate
from dynode.models.losses import classification_loss, energy_loss, stability_loss, time_weights
from dynode.network import Network
from dynode.stimulus import Pulse
from dynode.tolerances import TIME_RTOL


class Objective:
    """The loss part of :class:`~dynode.train.Trainer` (it reads the trainer's ``config``,
    ``network``, ``readout``, ``device``, ``dt``, ``t_end``, ``n_steps``, ``n_idle``, ``onset``
    and ``duration``); :meth:`_plan_losses` runs once when the trainer is made."""

    def _plan_losses(self) -> None:
        """Which grid steps the loss reads, with which weights, and the TBPTT segments."""
        cfg, ro, dt, n = self.config, self.readout, self.dt, self.n_steps
        self.at = getattr(ro, "at", "last")
        window = getattr(ro, "window", None)

        def in_window(k: int) -> bool:
            return window is None or window[0] - TIME_RTOL <= k * dt <= window[1] + TIME_RTOL

        # the steps a decoder returns: those after t0 in the window, as the Classifier decodes
        # (the state at t0 is given, not a response to the image: it carries no information)
        self._read_steps = [k for k in range(1, n + 1) if in_window(k)]
        self._read_set = frozenset(self._read_steps)
        if self.at in ("every", "mean") and not self._read_steps:
            raise ConfigurationError(f"the readout window {window} ms holds no step of the run after "
                                     f"its start ({dt:g} .. {self.t_end:g} ms, dt = {dt:g})")
        self._ce_weight: dict[int, float] = {}
        if self.at == "every":
            w = time_weights([k * dt for k in self._read_steps], onset=self.onset,
                             reaction_time=cfg.reaction_time, ramp=cfg.ramp)
            self._ce_weight = {k: float(x) for k, x in zip(self._read_steps, w.tolist()) if x > 0}
        elif cfg.reaction_time > 0 or cfg.ramp:
            raise ConfigurationError(f"reaction_time/ramp weight the loss over time and need a readout "
                                     f"at='every'; this network's readout is at={self.at!r}")
        self._save_all = cfg.energy_weight > 0 or cfg.stability_weight > 0
        # the activity penalty is on the model's areas, not on the normalization pools or
        # adaptation variables that components add (they are not extra spikes to pay for)
        areas = self.network.areas() if isinstance(self.network, Network) else None
        self._energy_of = {a: 1.0 for a in areas} if areas else 1.0
        if cfg.stability_weight > 0:
            off = self.onset + self.duration
            if off >= self.t_end - TIME_RTOL:
                raise ConfigurationError(f"stability_weight: the stimulus ends at {off:g} ms, not before "
                                         f"t_end = {self.t_end:g} ms; nothing to measure after the offset")
        if self.onset >= self.t_end:
            raise ConfigurationError(f"stimulus_onset {self.onset:g} ms is not before t_end "
                                     f"{self.t_end:g} ms")
        seg = cfg.tbptt
        self._bounds = [0, n] if seg is None else list(range(0, n, seg)) + [n]
        last_a = self._bounds[-2]
        if self.at == "every" and not any(k > last_a for k in self._ce_weight) and seg is not None:
            raise ConfigurationError(f"tbptt={seg}: the last segment ({last_a * dt:g} .. {self.t_end:g} ms) "
                                     "holds no time of the loss window; shorten the window or the segments")
        if self.at == "mean" and seg is not None and self._read_steps[0] <= last_a:
            raise ConfigurationError(f"tbptt={seg}: a readout at='mean' must average inside the last segment "
                                     f"({last_a * dt:g} .. {self.t_end:g} ms), but its window is {window}")

    def _save_at(self, a: int, b: int, first: bool) -> list[float] | None:
        """Save times (ms) of the segment of steps a..b (a only for the first segment)."""
        lo = a if first else a + 1
        if self._save_all:
            return None if (first and b == self.n_steps and a == 0) else [k * self.dt for k in range(lo, b + 1)]
        read = {"every": self._ce_weight, "mean": self._read_set}.get(self.at, ())
        ks = [k for k in range(lo, b + 1) if k in read]
        if b not in ks:
            ks.append(b)  # the final state (at='last', accuracy) and never an empty save list
        return [k * self.dt for k in ks]

    def _stimulus(self, images: Tensor):
        name = self.network.input_names()[0]
        if self.onset == 0 and self.duration is None:
            return {name: images}
        duration = self.duration if self.duration is not None else math.inf
        return Pulse(self.onset, duration, {name: images})

    def _warm_up(self, batch: int):
        """Idle run from ``-idle`` to 0 ms without input and without gradient (or None)."""
        if self.n_idle == 0:
            return None
        with torch.no_grad():
            zeros = {n: torch.zeros(batch, *s, device=self.device)
                     for n, s in self.network.input_shapes().items()}
            return integrate(self.network, zeros, t0=-self.config.idle, t_end=0.0, dt=self.dt,
                             solver=self.config.solver, save_at=[0.0])

    def _drop_unread(self, sol):
        """Free the saved trajectories the loss does not read (all but the readout's
        population, unless the energy or stability terms read every population)."""
        if self._save_all:
            return sol
        keep = self.readout.population if self.at != "last" else None
        return replace(sol, states={k: v for k, v in sol.states.items() if k == keep})

    def _segment_loss(self, sol, labels: Tensor, last: bool) -> tuple[Tensor | None, Tensor | None]:
        """This segment's part of the loss, and the final logits (last segment only)."""
        cfg = self.config
        loss, final = None, None
        read = sol
        if self.at != "last" and len(sol.ts) and round(float(sol.ts[0]) / self.dt) == 0:
            # a first segment that saved every step (energy/stability terms) saved t0 too
            name = self.readout.population
            read = replace(sol, ts=sol.ts[1:], states={name: sol.states[name][1:]})
        if self.at == "every":
            steps = [round(float(t) / self.dt) for t in read.ts.tolist()]
            steps = [k for k in steps if k in self._read_set]
            w = [self._ce_weight.get(k, 0.0) for k in steps]
            if any(w) or last:
                logits = self.network.decode(read)
                if any(w):
                    loss = classification_loss(logits.float(), labels,
                                               weights=torch.tensor(w, dtype=torch.float32))
                final = logits[-1] if last else None
        elif last:
            logits = self.network.decode(read)
            loss = nn.functional.cross_entropy(logits.float(), labels)
            final = logits
        if cfg.energy_weight > 0:
            share = len(sol.ts) / (self.n_steps + 1)  # this segment's share of the N + 1 times
            e = (cfg.energy_weight * share) * energy_loss(sol.states, p=cfg.energy_p, weights=self._energy_of)
            loss = e if loss is None else loss + e
        if cfg.stability_weight > 0:
            s = cfg.stability_weight * stability_loss(
                sol.states, sol.ts, baseline=(0.0, self.onset), after=self.onset + self.duration)
            loss = s if loss is None else loss + s
        return loss, final
