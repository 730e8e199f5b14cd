"""Recurrence operators: parameter counts, shapes, coupling structure, the cortical sheet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dynode as dn
from dynode.models import RECURRENCE_TYPES, recurrence, spectral_radius
from dynode.models.recurrence import sheet_index_map, sheet_side

C, K = 9, 3


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("kind, expected", [
    ("self", C), ("full", C * C * K * K), ("depthwise", C * K * K), ("pointwise", C * C),
    ("depthpointwise", C * K * K + C * C), ("pointdepthwise", C * C + C * K * K),
    ("local", K * K), ("localdepthwise", 3 * 3 + C * K * K)])
def test_parameter_counts(kind, expected):
    assert n_params(recurrence(kind, C, K)) == expected


def test_parameter_counts_with_bias_and_kernel_5():
    assert n_params(recurrence("full", 4, 5, bias=True)) == 4 * 4 * 25 + 4
    assert n_params(recurrence("self", 4, bias=True)) == 8
    assert n_params(recurrence("local", 16, 5)) == 25
    assert n_params(recurrence("localdepthwise", 16, 3, sheet_kernel_size=5)) == 25 + 16 * 9


@pytest.mark.parametrize("kind", RECURRENCE_TYPES)
@pytest.mark.parametrize("channels", [1, 10, 16])
def test_shape_preserved(kind, channels):
    x = torch.randn(2, channels, 7, 5)
    assert recurrence(kind, channels, 3)(x).shape == x.shape


@pytest.mark.parametrize("kind", RECURRENCE_TYPES)
def test_small_stable_initialisation(kind):
    torch.manual_seed(0)
    rho = spectral_radius(recurrence(kind, 16, 3), (16, 6, 6))
    assert 0 < rho < 0.5


def _support(kind, channels, j, h, w, size=7, **opts):
    torch.manual_seed(1)
    op = recurrence(kind, channels, 3, **opts)
    e = torch.zeros(1, channels, size, size)
    e[0, j, h, w] = 1.0
    with torch.no_grad():
        x = torch.randn(1, channels, size, size)
        d = op(x + e) - op(x)  # the effect of perturbing channel j at (h, w)
    return d[0].abs() > 1e-6


def _expected(channels, size, chans, h, w, radius):
    m = torch.zeros(channels, size, size, dtype=torch.bool)
    for c in chans:
        m[c, max(0, h - radius):h + radius + 1, max(0, w - radius):w + radius + 1] = True
    return m


def _sheet_neighbours(channels, j, r=1):
    s = sheet_side(channels)
    return [c for c in range(channels) if abs(c // s - j // s) <= r and abs(c % s - j % s) <= r]


@pytest.mark.parametrize("j, h, w", [(0, 0, 0), (4, 3, 3), (8, 6, 2)])
def test_coupling_structure(j, h, w):
    n, s = C, 7
    allc = range(n)
    # self: only the perturbed unit
    assert torch.equal(_support("self", n, j, h, w), _expected(n, s, [j], h, w, 0))
    # depthwise: only channel j, within the kernel's reach
    assert torch.equal(_support("depthwise", n, j, h, w), _expected(n, s, [j], h, w, 1))
    # pointwise: only position (h, w), every channel
    assert torch.equal(_support("pointwise", n, j, h, w), _expected(n, s, allc, h, w, 0))
    # full and the separable pairs: every channel within the kernel's reach
    for kind in ("full", "depthpointwise", "pointdepthwise"):
        assert torch.equal(_support(kind, n, j, h, w), _expected(n, s, allc, h, w, 1)), kind
    # local: only position (h, w), only sheet neighbours of j
    assert torch.equal(_support("local", n, j, h, w), _expected(n, s, _sheet_neighbours(n, j), h, w, 0))
    # localdepthwise: sheet neighbours at (h, w) plus channel j around it
    both = _expected(n, s, _sheet_neighbours(n, j), h, w, 0) | _expected(n, s, [j], h, w, 1)
    assert torch.equal(_support("localdepthwise", n, j, h, w), both)


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(2, 40), data=st.data())
def test_local_couples_only_sheet_neighbours(channels, data):
    j = data.draw(st.integers(0, channels - 1))
    got = _support("local", channels, j, 1, 1, size=3)
    assert torch.equal(got, _expected(channels, 3, _sheet_neighbours(channels, j), 1, 1, 0))


@pytest.mark.parametrize("channels, m", [(9, 3), (10, 3), (16, 5), (36, 3)])
def test_local_is_a_convolution_over_the_channel_sheet(channels, m):
    """The gathered 1x1 matrix equals laying the channels on the sqrt(C) x sqrt(C) sheet
    (zero-padded to a square) and convolving the sheet with the kernel."""
    torch.manual_seed(0)
    op = recurrence("local", channels, m)
    s = sheet_side(channels)
    x = torch.randn(2, channels, 4, 3)
    with torch.no_grad():
        got = op(x)
        sheet = torch.zeros(2, 4, 3, s * s)
        sheet[..., :channels] = x.permute(0, 2, 3, 1)
        sheet = sheet.reshape(-1, 1, s, s)
        conv = F.conv2d(sheet, op.kernel.view(1, 1, m, m), padding=m // 2)
        ref = conv.reshape(2, 4, 3, s * s)[..., :channels].permute(0, 3, 1, 2)
    torch.testing.assert_close(got, ref)


def test_sheet_index_map_layout():
    idx = sheet_index_map(5, 3)  # S = 3: channels 0 1 2 / 3 4
    assert sheet_side(5) == 3 and sheet_side(4) == 2 and sheet_side(1) == 1
    assert idx[0, 0] == 4  # the kernel centre
    assert idx[0, 1] == 5  # right neighbour: offset (0, +1)
    assert idx[0, 4] == 8  # diagonal (+1, +1)
    assert idx[2, 3] == 9  # channel 3 is at (1, 0), channel 2 at (0, 2): not neighbours


def test_local_gradients_reach_the_kernel():
    op = recurrence("local", 16, 3)
    op(torch.randn(2, 16, 3, 3)).square().sum().backward()
    assert op.kernel.grad is not None and op.kernel.grad.abs().sum() > 0


def test_errors_name_what_to_change():
    with pytest.raises(dn.ConfigurationError, match="unknown recurrence type 'diag'; known: self, full, "
                                                    "depthwise, pointwise, depthpointwise, pointdepthwise, "
                                                    "local, localdepthwise"):
        recurrence("diag", 4)
    with pytest.raises(dn.ConfigurationError, match="kernel_size must be an odd"):
        recurrence("full", 4, 4)
    with pytest.raises(dn.ConfigurationError, match=r"unknown options \['sheet_kernel_size'\]"):
        recurrence("local", 4, sheet_kernel_size=3)
    with pytest.raises(dn.ConfigurationError, match="channels must be a positive int"):
        recurrence("full", 0)
