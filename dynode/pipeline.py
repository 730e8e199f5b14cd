r"""Per-population pipelines: the ordered operations that turn a population's inputs into its
drive ``Phi(u)``.

A pipeline is declared when the network is built, as an ordered list::

    net.add_population("V2", shape=(128, 28, 28), tau=10.0,
                       pipeline=["sum", nn.Conv2d(128, 128, 3, padding=1, bias=False),
                                 nn.GroupNorm(32, 128), "relu"])

* the first stage may be a :class:`Combine` (a module mapping ``{source: op_output}`` to one
  tensor) or ``"sum"``; without one, the sum is used;
* the later stages are modules (normalisation, activation, pooling, convolutions, ...),
  activation names (resolved once by :func:`~dynode.activations.get_activation`) or
  callables; they are applied in the given order.

So ``u = combine({op_c(r_src(c))}) + bias`` and ``Phi = stage_n o ... o stage_1``, every stage
a module from the network's construction on (see :mod:`dynode.activations`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from dynode.errors import ConfigurationError
from dynode.activations import get_activation

__all__ = ["Combine", "SumCombine", "build_pipeline", "sums_term"]


class Combine(nn.Module):
    """Base class of combine stages: ``forward({source: op_output}) -> u``.

    A combine must accept a subset of its sources: a connection declared with
    ``skip_initial=True`` is absent while its source is still at its initial state.
    """

    def forward(self, terms: Mapping[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sums(self, source: str) -> bool:
        """Whether ``source``'s term is added to ``u`` as is (then it must have u's shape, and
        ``connect(..., op=None)`` inserts the automatic adapter). Default: no (free form)."""
        return False


def sums_term(combine: nn.Module | None, source: str) -> bool:
    """Whether ``combine`` adds ``source``'s term to ``u`` as is: always for ``None`` (the
    sum), else as its :meth:`Combine.sums` says (a module without one: no)."""
    if combine is None:
        return True
    says = getattr(combine, "sums", None)
    return bool(says(source)) if callable(says) else False


class SumCombine(Combine):
    """``u = sum_c op_c(r_src(c))`` (the default combine)."""

    def sums(self, source: str) -> bool:
        return True

    def forward(self, terms: Mapping[str, Tensor]) -> Tensor:
        it = iter(terms.values())
        u = next(it)
        for v in it:
            u = u + v
        return u


def _is_sum(stage) -> bool:
    """Whether ``stage`` is the name ``"sum"`` (``==`` on a tensor stage would compare elements)."""
    return isinstance(stage, str) and stage == "sum"


def build_pipeline(stages: Sequence, what: str) -> tuple[nn.Module | None, nn.Module]:
    """Resolve a pipeline list to ``(combine, phi)``.

    ``combine`` is ``None`` for the plain sum (the network's fast path); ``phi`` is one module
    applying the remaining stages in order (``nn.Identity`` if there are none).
    """
    if isinstance(stages, (str, nn.Module)) or not isinstance(stages, Sequence):
        raise ConfigurationError(f"{what}: pipeline must be a list of stages (modules or activation "
                                 f"names), got {type(stages).__name__}")
    stages = list(stages)
    combine: nn.Module | None = None
    if stages and (isinstance(stages[0], Combine) or _is_sum(stages[0])):
        first = stages.pop(0)
        combine = None if _is_sum(first) or type(first) is SumCombine else first
    post = []
    for i, stage in enumerate(stages):
        if isinstance(stage, Combine) or _is_sum(stage):
            raise ConfigurationError(f"{what}: the combine stage {stage!r} must come first in the "
                                     "pipeline (it turns the inputs into one tensor)")
        try:
            post.append(get_activation(stage))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{what}: pipeline stage {i}: {exc}") from None
    phi = post[0] if len(post) == 1 else nn.Sequential(*post) if post else nn.Identity()
    return combine, phi
