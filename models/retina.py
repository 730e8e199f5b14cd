r"""A retina-like front end: centre-surround filtering and local contrast normalisation.

Per channel (the same filter for every channel, applied depthwise):

.. math:: d = (G_{\sigma_c} - w\,G_{\sigma_s}) * x, \qquad
          y = \frac{d}{\sqrt{\epsilon^2 + G_{\sigma_n} * d^2}}

with ``G_sigma`` a normalised 2-D Gaussian on a ``k x k`` grid (zero padding), ``w`` the
surround weight (``w = 1``: a balanced DoG, zero response to uniform light), and the
denominator the local contrast (root-mean-square of ``d`` in a Gaussian neighbourhood).
``on_off=True`` splits ``y`` into ON and OFF channels ``[relu(y), relu(-y)]`` (``2C`` out).

``learnable=True`` makes ``sigma_c, sigma_s, w, sigma_n`` parameters (kept positive through
their logarithms); otherwise they are fixed buffers. Use it on the stimulus connection, e.g.
``net.connect("image", "V1", nn.Sequential(Retina(3), nn.Conv2d(3, 36, 3, padding=1)))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynode.errors import ConfigurationError

__all__ = ["Retina", "gaussian_kernel"]


def gaussian_kernel(sigma: Tensor, grid2: Tensor) -> Tensor:
    """Normalised Gaussian ``exp(-|x|^2 / (2 sigma^2))`` on the squared-radius grid ``grid2``."""
    g = torch.exp(-grid2 / (2 * sigma * sigma))
    return g / g.sum()


class Retina(nn.Module):
    """Difference-of-Gaussians centre-surround plus divisive local contrast normalisation."""

    def __init__(self, channels: int = 3, *, kernel_size: int = 9, sigma_center: float = 1.0,
                 sigma_surround: float = 3.0, surround_weight: float = 1.0, sigma_norm: float = 3.0,
                 eps: float = 0.05, learnable: bool = False, on_off: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigurationError(f"Retina kernel_size must be odd, got {kernel_size}")
        if not (0 < sigma_center < sigma_surround):
            raise ConfigurationError(f"Retina needs 0 < sigma_center < sigma_surround, got "
                                     f"{sigma_center}, {sigma_surround}")
        if sigma_norm <= 0 or eps <= 0 or surround_weight < 0:
            raise ConfigurationError("Retina needs sigma_norm > 0, eps > 0 and surround_weight >= 0")
        self.channels, self.kernel_size, self.eps, self.on_off = channels, kernel_size, float(eps), on_off
        r = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
        self.register_buffer("grid2", r.view(-1, 1) ** 2 + r.view(1, -1) ** 2, persistent=False)
        logs = torch.log(torch.tensor([sigma_center, sigma_surround, sigma_norm], dtype=torch.float32))
        w = torch.tensor(float(surround_weight))
        self.learnable = learnable
        if learnable:
            self.log_sigma = nn.Parameter(logs)
            self.surround_weight = nn.Parameter(w)
        else:
            self.register_buffer("log_sigma", logs)
            self.register_buffer("surround_weight", w)

    def kernels(self) -> tuple[Tensor, Tensor]:
        """The DoG and the normalisation-pool kernels, each ``(k, k)``."""
        sc, ss, sn = self.log_sigma.exp()
        dog = gaussian_kernel(sc, self.grid2) - self.surround_weight * gaussian_kernel(ss, self.grid2)
        return dog, gaussian_kernel(sn, self.grid2)

    def out_channels(self) -> int:
        return 2 * self.channels if self.on_off else self.channels

    def forward(self, x: Tensor) -> Tensor:
        c, k = self.channels, self.kernel_size
        dog, pool = self.kernels()
        dog = dog.to(x.dtype).expand(c, 1, k, k)
        pool = pool.to(x.dtype).expand(c, 1, k, k)
        d = F.conv2d(x, dog, padding=k // 2, groups=c)
        y = d * torch.rsqrt(self.eps ** 2 + F.conv2d(d * d, pool, padding=k // 2, groups=c))
        if self.on_off:
            return torch.cat([torch.relu(y), torch.relu(-y)], dim=1)
        return y

    def extra_repr(self) -> str:
        sc, ss, sn = (float(v) for v in self.log_sigma.exp())
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, sigma_center={sc:.3g}, "
                f"sigma_surround={ss:.3g}, sigma_norm={sn:.3g}, learnable={self.learnable}, "
                f"on_off={self.on_off}")

