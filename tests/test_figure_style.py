"""Figures a scientist would put on a slide: readable text, units on every axis, populations in
the network's order (never alphabetical), one style (dynode.analysis.style) everywhere."""

import re
import warnings

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dynode import analysis as A  # noqa: E402
from dynode.analysis.style import RC, hierarchy_order, label  # noqa: E402

from test_analysis_groen import TRUE, archive, dn_response  # noqa: E402

POPS = ("V1", "V2", "V4", "IT")  # alphabetical would be IT, V1, V2, V4
MIN_PT = 9


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """Every analysis figure of a four-area Groen analysis, as matplotlib figures."""
    params = dict(TRUE, V2=dict(TRUE["V1"], shift=40.0), V4=dict(TRUE["IT"], shift=55.0))

    def response(pop, t, cond):
        return A.dn_model(A.pulse_envelope(t, contrast=cond["contrast"], duration=cond["duration"],
                                           isi=cond.get("isi")), t, params[pop]).numpy()

    trees = {k: archive(k, response, pops=POPS) for k in ("contrast", "duration", "repetition")}
    for tree in trees.values():
        for p in POPS:
            tree[p]["rate"].attrs["units"] = "a.u."
    kept = []
    savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        kept.append(fig)
        return savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            A.analyze(*trees.values()).figures(tmp_path_factory.mktemp("figs"))
    finally:
        plt.Figure.savefig = savefig
    assert len(kept) == 6
    return kept


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_title() in POPS]


def test_panels_follow_the_hierarchy(figures):
    for fig in figures:
        assert [ax.get_title() for ax in _panels(fig)] == list(POPS)


def test_every_axis_has_a_label_with_units(figures):
    for fig in figures:
        for ax in _panels(fig):
            for text in (ax.get_xlabel(), ax.get_ylabel()):
                assert text, ax.get_title()
                # units in parentheses, or a stated dimensionless scale
                assert re.search(r"\(([^)]+)\)$", text), text


def test_text_is_readable(figures):
    for fig in figures:
        for ax in _panels(fig):
            for t in ax.get_xticklabels() + ax.get_yticklabels():
                assert t.get_fontsize() >= MIN_PT
            assert ax.xaxis.label.get_fontsize() >= MIN_PT and ax.title.get_fontsize() >= MIN_PT
            leg = ax.get_legend()
            if leg is not None:
                assert all(t.get_fontsize() >= MIN_PT for t in leg.get_texts())


def test_style_helpers():
    assert label("time", "ms") == "time (ms)" and label("ratio", "1") == "ratio"
    assert hierarchy_order(["IT", "V1", "V4", "V2"]) == ["V1", "V2", "V4", "IT"]
    assert hierarchy_order(["b", "a", "c"], '["c", "a"]') == ["c", "a", "b"]
    assert RC["legend.fontsize"] >= MIN_PT and RC["xtick.labelsize"] >= MIN_PT
