"""One figure style for everything dynode draws (analysis figures, ``dynode compare``, the
dt/tau study, the examples): font sizes readable on a slide, axis labels with units, and
populations in the network's order (the hierarchy: V1, V2, V4, IT), never alphabetical.

    plt = pyplot()                      # Agg unless the user chose a backend
    with style():                       # the rc settings below, for one figure
        fig, axes = plt.subplots(...)
        axes[0].set_ylabel(label("firing rate", "a.u."))
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence

__all__ = ["RC", "pyplot", "style", "label", "rate_label", "hierarchy_order", "legend"]

RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "savefig.dpi": 120,
    "savefig.bbox": "tight",
}
"""matplotlib rc settings of every dynode figure (sizes in points at 100 % zoom)."""


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (never opens a window; a backend the user set
    stays)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def style():
    """The :data:`RC` settings for the figures made inside the block."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def label(quantity: str, units: str | None) -> str:
    """An axis label ``"quantity (units)"``; dimensionless quantities (units ``"1"`` or none)
    get no parenthesis."""
    return quantity if units in (None, "", "1") else f"{quantity} ({units})"


def rate_label(attrs: dict | None = None, quantity: str = "firing rate") -> str:
    """The label of a rate axis from a variable's attributes (its ``units``, default ``a.u.``)."""
    units = str((attrs or {}).get("units", "a.u."))
    return label(quantity, "a.u." if units in ("", "1") else units)


def hierarchy_order(names: Iterable[str], order: Sequence[str] | str | None = None) -> list[str]:
    """``names`` in the network's order: ``order`` (an archive's ``populations`` attribute, a
    list or its JSON) first, then any others in the order given. Without ``order``: the
    ventral-stream areas V1, V2, V3, V4, (P)IT first, then the rest in the order given (a
    fallback; an archive always records its order)."""
    names = list(names)
    if isinstance(order, str):
        order = json.loads(order)
    if not order:
        canon = ["retina", "LGN", "V1", "V2", "V3", "V4", "PIT", "AIT", "IT"]
        order = [c for c in canon if c in names]
    return [n for n in order if n in names] + [n for n in names if n not in order]


def legend(ax, **kwargs):
    """A legend outside the panel on the right (the data stays visible), in the style's sizes."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    kwargs.setdefault("loc", "upper left")
    kwargs.setdefault("bbox_to_anchor", (1.02, 1.0))
    return ax.legend(handles, labels, **kwargs)
