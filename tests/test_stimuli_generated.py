"""Generated images (formulas) and the generated classification task (learnable offline)."""

import math
import time

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.stimuli import checkerboard, gabor, generated_task, grating, pink_noise


def test_grating_formula_orientation_frequency_contrast():
    g = grating(16, orientation=0.0, frequency=2.0, phase=0.0, contrast=0.5, mean=0.5)
    assert g.shape == (1, 1, 16, 16)
    x = torch.arange(16) - 7.5
    expect = 0.5 * (1 + 0.5 * torch.cos(2 * math.pi * 2.0 * x / 16))
    torch.testing.assert_close(g[0, 0, 3], expect.float())  # every row is the same: vertical bars
    torch.testing.assert_close(g[0, 0, :, 5], g[0, 0, 0, 5].expand(16))
    h = grating(16, orientation=90.0, frequency=2.0)
    torch.testing.assert_close(h[0, 0], grating(16, frequency=2.0)[0, 0].T)  # horizontal bars
    batch = grating(8, orientation=[0.0, 45.0, 90.0], channels=3)
    assert batch.shape == (3, 3, 8, 8) and torch.equal(batch[:, 0], batch[:, 2])


def test_gabor_envelope_and_centre():
    g = gabor(33, orientation=0.0, frequency=3.0, phase=0.0, contrast=1.0, sigma=3.0, center_x=4.0)
    img = g[0, 0]
    assert img[16, 20].item() == pytest.approx(1.0)  # carrier peak at the centre (phase 0)
    assert abs(img[0, 0].item() - 0.5) < 1e-6  # far from the centre: mean grey
    assert img.max().item() <= 1.0 and img.min().item() >= 0.0


def test_checkerboard_and_pink_noise():
    c = checkerboard(8, check=2.0)
    vals = c[0, 0]
    assert set(vals.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(vals[:, :2], vals[:, 4:6]) and not torch.equal(vals[:, :2], vals[:, 2:4])
    p = pink_noise(64, 8, exponent=1.0, seed=0)
    assert p.shape == (8, 1, 64, 64) and p.min() >= 0 and p.max() <= 1
    # the amplitude spectrum falls as 1/f: a log-log fit has slope about -1
    spec = torch.fft.rfft2(p[:, 0].double() - 0.5).abs().mean(0)
    fy = torch.fft.fftfreq(64)[:, None]
    fx = torch.fft.rfftfreq(64)[None, :]
    f = (fy ** 2 + fx ** 2).sqrt()
    sel = (f > 0.02) & (f < 0.4)
    lx, ly = f[sel].log(), spec[sel].log()
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    assert slope.item() == pytest.approx(-1.0, abs=0.05)
    assert not torch.equal(pink_noise(16, 1, seed=0), pink_noise(16, 1, seed=1))


def test_generated_task_is_deterministic_balanced_and_varied():
    a = generated_task(60, 30, size=16, seed=4)
    b = generated_task(60, 30, size=16, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (60, 1, 16, 16) and a.num_classes == 6
    assert torch.bincount(a.y_train).tolist() == [10] * 6
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    vert = a.x_train[a.y_train == 0]
    assert len({tuple(v.flatten()[:8].tolist()) for v in vert}) == len(vert)  # nuisance varies
    assert not torch.equal(a.x_train, generated_task(60, 30, size=16, seed=5).x_train)
    x, y = next(iter(a.loader("train", batch_size=16)))
    assert x.shape == (16, 1, 16, 16) and abs(a.normalize(a.x_train).mean().item()) < 1e-5
    assert len(a.dataset("test")) == 30
    with pytest.raises(ConfigurationError, match="unknown classes"):
        generated_task(10, 10, classes=("vertical", "circle"))


@pytest.mark.slow
def test_small_recurrent_network_learns_the_generated_task():
    """A one-area conv network (recurrent delay 2 ms), Euler dt 2 ms for 20 ms, linear readout
    of the spatially averaged last state: well above chance (1/6) after a few epochs."""
    torch.manual_seed(0)
    task = generated_task(600, 300, size=16, seed=0)
    net = dn.Network()
    net.add_input("image", shape=(1, 16, 16))
    net.add_population("V1", shape=(16, 8, 8), tau=5.0, phi="relu")
    net.connect("image", "V1", nn.Conv2d(1, 16, 5, stride=2, padding=2))
    net.connect("V1", "V1", nn.Conv2d(16, 16, 3, padding=1, bias=False), delay=2.0)
    readout = nn.Linear(16, task.num_classes)
    opt = torch.optim.Adam(list(net.parameters()) + list(readout.parameters()), lr=5e-3)

    def logits(x):
        sol = dn.integrate(net, x, t_end=20.0, dt=2.0, solver=dn.solvers.Euler(), save_at=[20.0])
        return readout(sol.final_state["V1"].mean(dim=(2, 3)))

    start = time.perf_counter()
    for _ in range(5):
        for x, y in task.loader("train", batch_size=50, seed=1):
            loss = nn.functional.cross_entropy(logits(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        x, y = next(iter(task.loader("test", batch_size=300)))
        acc = (logits(x).argmax(1) == y).double().mean().item()
    assert acc > 0.6, f"test accuracy {acc:.2f} (chance 0.17) after {time.perf_counter() - start:.1f} s"
