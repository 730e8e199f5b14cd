"""A custom vector field in a few lines: a Wilson-Cowan E/I pair with a delayed loop.

    tau_E dE/dt = -E + S(w_EE E - w_EI I(t - d) + P(t))
    tau_I dI/dt = -I + S(w_IE E(t - d) - w_II I)

The delayed E-I loop oscillates while the drive P is on; the loop delay ``d`` sets the
period (longer delay, fewer and larger peaks). Run::

    python examples/wilson_cowan.py

``spec_kwargs()`` lets archives record the field (its import path and these arguments), so
``dn.load_model(archive, trust_code=True)`` rebuilds it, with this folder on ``PYTHONPATH`` and
the class imported from the module (``from wilson_cowan import WilsonCowan``), not run as a
script (a class defined in ``__main__`` has no import path).
"""

from __future__ import annotations

import torch

import dynode as dn
from dynode.stimuli import Pulse


class WilsonCowan(dn.VectorField):
    def __init__(self, tau_e=10.0, tau_i=5.0, delay=6.0, w=(16.0, 12.0, 15.0, 3.0)):
        super().__init__()
        self.tau_e, self.tau_i, self.delay = tau_e, tau_i, delay
        self.w_ee, self.w_ei, self.w_ie, self.w_ii = w

    def spec_kwargs(self):  # the constructor's arguments: archives record them (dn.load_model rebuilds)
        return {"tau_e": self.tau_e, "tau_i": self.tau_i, "delay": self.delay,
                "w": [self.w_ee, self.w_ei, self.w_ie, self.w_ii]}

    def init_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, 1, device=device, dtype=dtype)
        return {"E": z, "I": z.clone()}

    def max_delay(self):
        return self.delay

    def input_names(self):
        return ("P",)

    def time_constants(self):
        return {"E": self.tau_e, "I": self.tau_i}

    def forward(self, t, state, history, inputs):
        E, I = state["E"], state["I"]
        S = lambda x: torch.sigmoid(x - 4.0)  # noqa: E731
        dE = (-E + S(self.w_ee * E - self.w_ei * history.lag("I", self.delay) + inputs["P"])) / self.tau_e
        dI = (-I + S(self.w_ie * history.lag("E", self.delay) - self.w_ii * I)) / self.tau_i
        return {"E": dE, "I": dI}


def count_peaks(x: torch.Tensor) -> int:
    return int(((x[1:-1] > x[:-2]) & (x[1:-1] > x[2:]) & (x[1:-1] > 0.3)).sum())


def main() -> None:
    drive = Pulse(onset=50.0, duration=400.0, value=torch.tensor([[1.5], [3.0]]))  # two drives
    for d in (1.0, 6.0):
        sol = dn.integrate(WilsonCowan(delay=d), drive, t_end=500.0, dt=0.5, solver="rk4")
        E = sol.states["E"][:, :, 0]
        peaks = [count_peaks(E[:, b]) for b in range(E.shape[1])]
        print(f"loop delay {d:g} ms: E peaks per drive {peaks}, max E {E.max().item():.3f}")


if __name__ == "__main__":
    main()
