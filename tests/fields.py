"""Small vector fields with known solutions, shared by tests."""

import torch

import dynode as dn


class ScalarDDE(dn.VectorField):
    """tau dr/dt = -r(t) - r(t - delay), constant history ``r0``.

    For tau = delay = 1, r0 = 1: r(1) = -1 + 2/e, r(2) = 1 + 2/e^2 - 4/e.
    """

    def __init__(self, tau: float = 1.0, delay: float = 1.0, r0: float = 1.0):
        super().__init__()
        self.tau, self.delay, self.r0 = tau, delay, r0

    def init_state(self, batch_size, *, device=None, dtype=None):
        return {"r": torch.full((batch_size, 1), self.r0, device=device, dtype=dtype)}

    def max_delay(self):
        return self.delay

    def time_constants(self):
        return {"r": self.tau}

    def forward(self, t, state, history, inputs):
        return {"r": (-state["r"] - history.lag("r", self.delay)) / self.tau}


def leaky(tau: float = 5.0, units: int = 3, phi: str = "identity") -> dn.Network:
    """One population driven by its input: tau dr/dt = -r + I(t)."""
    net = dn.Network()
    net.add_input("x", shape=(units,))
    net.add_population("r", shape=(units,), tau=tau, phi=phi)
    net.connect("x", "r")
    return net


def chunk_file(array, index: int):
    """The one chunk file of the zarr array folder ``array`` at time-chunk ``index`` (the chunks
    span every other dimension), under either zarr v3 key layout: ``c.<index>.0.0`` or
    ``c/<index>/0/0``."""
    files = [f for f in array.rglob("*") if f.is_file()
             and f.relative_to(array).as_posix().replace("/", ".").startswith(f"c.{index}.")]
    assert len(files) == 1, files
    return files[0]
