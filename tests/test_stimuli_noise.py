"""Noise: frozen by seed (query order does not matter), exact SNR, the kinds' properties."""

import math

import pytest
import torch

from dynode.errors import ConfigurationError
from dynode.stimuli import (NOISE_KINDS, DynamicNoise, Modulated, add_noise, envelopes as E, gabor,
                            noise_field, signal_power, snr_of)


@pytest.fixture(scope="module")
def images():
    return gabor(16, orientation=[0.0, 45.0, 90.0], phase=[0.0, 1.0, 2.0], contrast=[1.0, 0.5, 0.8],
                 channels=2)


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("snr_db", [-6.0, 0.0, 10.0])
def test_snr_is_exactly_what_was_asked(images, kind, snr_db):
    noisy = add_noise(images, kind, snr_db=snr_db, seed=3)
    torch.testing.assert_close(snr_of(images, noisy), torch.full((3,), 10 ** (snr_db / 10), dtype=torch.float64),
                               rtol=1e-5, atol=0)
    assert not torch.equal(noisy, images)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_same_seed_same_noise_different_seed_different_noise(images, kind):
    a = add_noise(images, kind, snr=2.0, seed=7)
    b = add_noise(images, kind, snr=2.0, seed=7)
    c = add_noise(images, kind, snr=2.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_snr_relative_to_background():
    x = torch.full((1, 1, 8, 8), 0.75)
    noisy = add_noise(x, "gaussian", snr=4.0, seed=0, background="grey")
    assert signal_power(x, "grey").item() == pytest.approx(0.0625)
    assert snr_of(x, noisy, "grey").item() == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ConfigurationError, match="zero signal power"):
        add_noise(x, "gaussian", snr=4.0, seed=0)  # background "mean": a flat image has no signal
    with pytest.raises(ConfigurationError, match="exactly one of snr"):
        add_noise(x, "gaussian", snr=1.0, snr_db=0.0)


def test_dynamic_noise_is_frozen_whatever_the_query_order():
    shape = (2, 1, 8, 8)
    times = [0.0, 3.0, 9.99, 10.0, 25.0, 47.0, 49.99]
    a = DynamicNoise("gaussian", shape, frame_ms=10.0, t_end=50.0, seed=5, scale=1.0, cache_frames=1)
    forward = {t: a(t).clone() for t in times}
    b = DynamicNoise("gaussian", shape, frame_ms=10.0, t_end=50.0, seed=5, scale=1.0, cache_frames=1)
    backward = {t: b(t).clone() for t in reversed(times)}
    shuffled = {t: b(t).clone() for t in (25.0, 0.0, 49.99, 3.0, 47.0, 10.0, 9.99)}
    for t in times:
        assert torch.equal(forward[t], backward[t]) and torch.equal(forward[t], shuffled[t])
    assert a.breakpoints == (10.0, 20.0, 30.0, 40.0)
    assert torch.equal(forward[0.0], forward[9.99])  # one frame
    assert not torch.equal(forward[9.99], forward[10.0])  # a new frame exactly at the boundary
    c = DynamicNoise("gaussian", shape, frame_ms=10.0, t_end=50.0, seed=6, scale=1.0)
    assert not torch.equal(c(3.0), forward[3.0])
    # the frame's RMS is the requested scale
    assert forward[3.0].pow(2).flatten(1).mean(1).sqrt().tolist() == pytest.approx([1.0, 1.0], rel=1e-5)


def test_dynamic_noise_at_snr_adds_to_an_image_stimulus(images):
    noise = DynamicNoise("correlated", reference=images, snr=0.5, frame_ms=20.0, t_end=100.0, seed=1)
    stim = Modulated(images, E.pulse(10.0, 50.0)) + noise
    assert stim.breakpoints == (10.0, 20.0, 40.0, 60.0, 80.0)
    x = stim(30.0)
    assert snr_of(images, x).tolist() == pytest.approx([0.5] * 3, rel=1e-5)
    static = DynamicNoise("gaussian", images.shape, seed=1, scale=0.1)
    assert static.breakpoints == () and static(0.0) is static(1e6)


def test_noise_kinds_have_their_defining_property(images):
    shape = (4, 1, 32, 32)
    white = noise_field("gaussian", shape, seed=0)
    corr = noise_field("correlated", shape, seed=0, correlation=3.0)

    def lag1(x):
        return (x[..., :, 1:] * x[..., :, :-1]).mean().item() / x.pow(2).mean().item()

    assert abs(lag1(white)) < 0.05 and lag1(corr) > 0.8  # neighbouring pixels correlate
    u = noise_field("uniform", shape, seed=0)
    assert u.abs().max().item() == pytest.approx(math.sqrt(3), rel=0.02)  # U(-a, a) has RMS a/sqrt(3)
    sp = noise_field("salt_and_pepper", shape, seed=0, density=0.1)
    assert (sp != 0).double().mean().item() == pytest.approx(0.1, abs=0.02)
    assert all(len(x.abs().unique()) == 2 for x in sp)  # per image: 0 and one impulse amplitude
    # phase scrambling keeps the image's amplitude spectrum
    ps = noise_field("phase_scrambled", images.shape, seed=0, reference=images)
    centred = images.double() - images.double().mean(dim=(-2, -1), keepdim=True)
    a_img = torch.fft.rfft2(centred).abs()
    a_ps = torch.fft.rfft2(ps).abs()
    ratio = (a_ps.flatten(1).norm(dim=1) / a_img.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
    interior = (slice(None), slice(None), slice(None), slice(1, -1))  # Hermitian edge columns aside
    torch.testing.assert_close(a_ps[interior], (a_img * ratio)[interior], rtol=1e-6, atol=1e-9)
    # Poisson noise is signal dependent: its variance grows with the intensity
    x = torch.cat([torch.full((1, 1, 32, 32), 0.1), torch.full((1, 1, 32, 32), 0.9)], dim=3)
    pn = noise_field("poisson", x.shape, seed=0, reference=x, rate=50.0)
    assert pn[..., 32:].var().item() > 4 * pn[..., :32].var().item()


def test_noise_errors_name_the_fix():
    with pytest.raises(ConfigurationError, match="unknown noise kind"):
        noise_field("pink", (1, 4))
    with pytest.raises(ConfigurationError, match="reference="):
        noise_field("poisson", (1, 1, 4, 4))
    with pytest.raises(ConfigurationError, match="t_end"):
        DynamicNoise("gaussian", (1, 4), frame_ms=5.0, scale=1.0)
    with pytest.raises(ConfigurationError, match="scale= .*snr"):
        DynamicNoise("gaussian", (1, 4))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_REF = DynamicNoise("uniform", (2, 3), frame_ms=2.5, t_end=30.0, seed=11, scale=0.3)
_FRAMES = {k: _REF(k * 2.5).clone() for k in range(12)}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5.0, 40.0, allow_nan=False), min_size=1, max_size=30))
def test_any_query_order_gives_the_frame_of_t(times):
    noise = DynamicNoise("uniform", (2, 3), frame_ms=2.5, t_end=30.0, seed=11, scale=0.3, cache_frames=2)
    for t in times:
        k = min(max(int(t // 2.5), 0), 11)  # frame 0 before t_start, the last frame after t_end
        assert torch.equal(noise(t), _FRAMES[k])
