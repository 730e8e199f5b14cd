"""Protocols: the Groen et al. (2022) conditions and exact timing; generic series builders."""

import math

import pytest
import torch

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.stimuli import contrast_series, duration_series, grating, groen2022, interval_series


def before(t):
    return math.nextafter(t, -math.inf)


@pytest.fixture(scope="module")
def images():
    return grating(8, orientation=[0.0, 90.0], frequency=2.0, channels=3)


def shown(p, t, i):
    """The contrast seen by sample ``i`` at ``t``: (I - g) / (x - g) on the image's pixels."""
    x = p.images[i]
    d = x - 0.5
    return float(((p(t)[i] - 0.5) * d).sum() / (d * d).sum())


def on_intervals(p, i):
    c = p.conditions
    on, du, isi = c["onset"][i], c["duration"][i], c["isi"][i]
    first = (on, on + du)
    return [first] if c["n_pulses"][i] == 1 else [first, (on + du + isi, on + 2 * du + isi)]


def check_exact_timing(p):
    edges = set()
    for i in range(p.batch_size):
        level = p.conditions["contrast"][i]
        for start, stop in on_intervals(p, i):
            edges.update((start, stop))
            assert shown(p, before(start), i) == pytest.approx(0.0, abs=1e-6)
            assert shown(p, start, i) == pytest.approx(level, abs=1e-6)
            assert shown(p, before(stop), i) == pytest.approx(level, abs=1e-6)
            assert shown(p, stop, i) == pytest.approx(0.0, abs=1e-6)
        assert shown(p, p.onset - 50.0, i) == pytest.approx(0.0, abs=1e-6)  # baseline
        assert shown(p, p.t_end, i) == pytest.approx(0.0, abs=1e-6)
    assert set(p.breakpoints) == edges  # exactly the onsets and offsets, nothing else


def test_groen2022_contrast(images):
    p = groen2022("contrast", images=images)
    assert p.batch_size == 10 and p.t_end == 1300.0 and p.onset == 100.0  # -0.1 .. 1.2 s
    assert p.conditions["contrast"] == [c for c in (0.0625, 0.125, 0.25, 0.5, 1.0) for _ in range(2)]
    assert set(p.conditions["duration"]) == {500.0}
    assert p.conditions["image"] == [0, 1] * 5
    assert p.breakpoints == (100.0, 600.0)
    check_exact_timing(p)


def test_groen2022_duration(images):
    p = groen2022("duration", images=images)
    assert p.conditions["duration"] == [d for d in (17.0, 33.0, 67.0, 133.0, 267.0, 533.0) for _ in range(2)]
    assert set(p.conditions["contrast"]) == {1.0} and set(p.conditions["n_pulses"]) == {1}
    assert p.breakpoints == (100.0, 117.0, 133.0, 167.0, 233.0, 367.0, 633.0)
    check_exact_timing(p)


def test_groen2022_repetition(images):
    p = groen2022("repetition", images=images)
    assert p.conditions["isi"] == [g for g in (17.0, 33.0, 67.0, 133.0, 267.0, 533.0) for _ in range(2)]
    assert set(p.conditions["duration"]) == {133.0} and set(p.conditions["n_pulses"]) == {2}
    # second pulse: onset 100 + 133 + isi, offset 133 ms later; the longest ends at 899, and
    # its 300 ms recovery window (to 1199 ms) ends inside the 1300 ms epoch
    seconds = {(233.0 + g, 366.0 + g) for g in (17.0, 33.0, 67.0, 133.0, 267.0, 533.0)}
    assert {on_intervals(p, i)[1] for i in range(p.batch_size)} == seconds
    assert max(start for start, _ in seconds) + 300.0 <= p.t_end  # the last recovery window fits
    check_exact_timing(p)


def test_full_contrast_shows_the_image_and_blank_is_mean_grey(images):
    p = groen2022("duration", images=images)
    torch.testing.assert_close(p(100.0)[:2], images)
    assert torch.equal(p(50.0), torch.full_like(p(50.0), 0.5))


def test_default_images_and_onset():
    p = groen2022("contrast", onset=200.0)
    assert p.batch_size == 5 and p.images.shape[1:] == (3, 32, 32)
    assert p.breakpoints == (200.0, 700.0) and p.t_end == 1400.0


def test_generic_series_with_user_values(images):
    p = contrast_series(images[:1], [0.2, 0.9], onset=10.0, duration=40.0, t_end=100.0, background="blank")
    assert p.conditions["contrast"] == [0.2, 0.9] and p.breakpoints == (10.0, 50.0)
    torch.testing.assert_close(p(20.0), torch.stack([0.2 * images[0], 0.9 * images[0]]))
    d = duration_series(images, [5.0, 10.0], onset=0.0, contrast=0.5, t_end=50.0)
    assert d.breakpoints == (0.0, 5.0, 10.0) and d.conditions["contrast"] == [0.5] * 4
    check_exact_timing(d)
    r = interval_series(images[:1], [0.5, 2.5], onset=1.0, duration=2.0, t_end=20.0)
    assert r.breakpoints == (1.0, 3.0, 3.5, 5.5, 7.5) and r.conditions["isi"] == [0.5, 2.5]
    check_exact_timing(r)


def test_protocol_errors():
    with pytest.raises(ConfigurationError, match=r"one of \['contrast', 'duration', 'repetition'\], got 'masking'"):
        groen2022("masking")
    with pytest.raises(ConfigurationError, match="after the end of the epoch"):
        duration_series(None, [500.0], onset=600.0, t_end=1000.0)
    with pytest.raises(ConfigurationError, match="durations must be > 0"):
        duration_series(None, [0.0])


def test_protocol_runs_through_integrate_with_labels():
    net = dn.Network()
    net.add_input("image", shape=(3, 32, 32))
    net.add_population("V1", shape=(4, 16, 16), tau=5.0, phi="relu")
    net.connect("image", "V1", torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))
    p = groen2022("duration")
    sol = dn.integrate(net, p, t_end=p.t_end, dt=1.0, save_at=[0.0, 99.0, 120.0, 999.0])
    v1 = sol.states["V1"]
    assert v1.shape == (4, 6, 4, 16, 16)
    assert len(p.conditions["duration"]) == v1.shape[1]
    # all samples identical before the onset; the 17 ms pulse is over by 120 ms, the others not
    assert torch.allclose(v1[1, 0], v1[1, 5])
    assert not torch.allclose(v1[2, 0], v1[2, 5])


def test_present_a_labelled_batch_after_the_background(images):
    p = dn.stimuli.present(images, onset=20.0, duration=40.0, labels=torch.tensor([3, 7]))
    assert p.conditions == {"label": [3, 7]} and p.breakpoints == (20.0, 60.0) and p.t_end == 60.0
    screen = images.mean(dim=(2, 3), keepdim=True).expand_as(images)  # the default: each image's mean
    assert torch.equal(p(before(20.0)), screen)
    torch.testing.assert_close(p(20.0), images)
    assert torch.equal(p(60.0), screen)
    blank = dn.stimuli.present(images, onset=20.0, duration=40.0, background="blank")
    assert torch.equal(blank(before(20.0)), torch.zeros_like(images))
    stay = dn.stimuli.present(images, onset=5.0)
    assert stay.breakpoints == (5.0,) and torch.equal(stay(1e9), stay(5.0))
