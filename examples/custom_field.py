r"""A complete custom vector field that every ``dynode`` command can run.

A retinotopic Wilson-Cowan sheet: at every pixel ``x`` an excitatory rate ``E`` and an
inhibitory rate ``I`` with a delayed E-I loop, driven by the image (mean over channels)::

    tau_E dE/dt = -E + S(w_EE E - w_EI I(t - d) + g * image)
    tau_I dI/dt = -I + S(w_IE E(t - d) - w_II I)

with ``S(v) = sigmoid(v - theta)``. It implements the whole :class:`dynode.VectorField`
protocol: ``init_state``, ``forward``, ``max_delay``, ``delays`` (every delayed read, so the
time grid is checked before the first step), ``input_names`` (the stimulus inputs it reads)
and ``time_constants`` (for step-size warnings and error messages).

Use it from Python (``python examples/custom_field.py``) or give its factory to a run config
by import path, from the repository root::

    model:
      factory: examples.custom_field:build
      options: {delay: 4.0}
      allow_imports: true      # a config is data: it says that it imports code

then ``PYTHONPATH=. dynode simulate CONFIG`` and ``PYTHONPATH=. dynode convergence CONFIG``
run it (``examples/configs/custom_field.yaml``).
"""

from __future__ import annotations

import torch

import dynode as dn


class WilsonCowanSheet(dn.VectorField):
    """An E/I Wilson-Cowan pair at every pixel of a ``size x size`` sheet (times in ms)."""

    def __init__(self, size: int = 16, channels: int = 1, *, tau_e: float = 10.0, tau_i: float = 5.0,
                 delay: float = 4.0, gain: float = 4.0, theta: float = 4.0,
                 w: tuple[float, float, float, float] = (12.0, 10.0, 10.0, 2.0)):
        super().__init__()
        self.size, self.channels = size, channels
        self.tau_e, self.tau_i, self.delay, self.gain, self.theta = tau_e, tau_i, delay, gain, theta
        self.w_ee, self.w_ei, self.w_ie, self.w_ii = w

    def spec_kwargs(self):  # the constructor's arguments: archives record them (dn.load_model rebuilds)
        return {"size": self.size, "channels": self.channels, "tau_e": self.tau_e, "tau_i": self.tau_i,
                "delay": self.delay, "gain": self.gain, "theta": self.theta,
                "w": [self.w_ee, self.w_ei, self.w_ie, self.w_ii]}

    def init_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.size, self.size, device=device, dtype=dtype)
        return {"E": z, "I": z.clone()}

    def input_names(self):
        return ("image",)

    def max_delay(self):
        return self.delay

    def delays(self):
        return {"I -> E": ("I", self.delay), "E -> I": ("E", self.delay)}

    def time_constants(self):
        return {"E": self.tau_e, "I": self.tau_i}

    def forward(self, t, state, history, inputs):
        E, I = state["E"], state["I"]
        drive = self.gain * inputs["image"].mean(1)  # (batch, H, W)
        dE = (-E + torch.sigmoid(self.w_ee * E - self.w_ei * history.lag("I", self.delay) + drive
                                 - self.theta)) / self.tau_e
        dI = (-I + torch.sigmoid(self.w_ie * history.lag("E", self.delay) - self.w_ii * I
                                 - self.theta)) / self.tau_i
        return {"E": dE, "I": dI}


def build(input_shape=(1, 16, 16), num_classes=None, **options) -> WilsonCowanSheet:
    """The factory a run config names (``examples.custom_field:build``): the CLI passes the
    data's ``input_shape`` (and ``num_classes``, unused: this field has no readout)."""
    c, h, w = (int(s) for s in input_shape)
    if h != w:
        raise dn.ConfigurationError(f"WilsonCowanSheet needs square images, got {h} x {w}")
    return WilsonCowanSheet(size=h, channels=c, **options)


if __name__ == "__main__":
    field = build((1, 16, 16))
    image = torch.rand(2, 1, 16, 16)
    sol = dn.integrate(field, {"image": image}, t_end=100.0, dt=0.5, solver="rk4")
    print(f"E at 100 ms: mean {float(sol.final_state['E'].mean()):.3f}; "
          f"{sol.stats.steps} steps, {sol.stats.nfe} evaluations")
