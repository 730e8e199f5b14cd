"""Implausible ratios are flagged (with the reason), not printed as results: the numbers the
issue saw from a diverging chain (summation ratio -0.27, ISI recovery 30.8)."""

import warnings

import numpy as np

from dynode import analysis as A
from dynode.analysis.summary import PLAUSIBLE

from test_analysis_groen import TRUE, archive, dn_response, envelope


def _builds_up(pop, t, cond):
    """Two pulses whose second response is 30 times the first (a response that builds up)."""
    base = A.dn_model(envelope(t, cond), t, TRUE[pop]).numpy()
    second = t >= cond["duration"] + cond.get("isi", 0.0)
    return np.where(second, 30.0 * base, base)


def _negative_long(pop, t, cond):
    """Responses that go below baseline for the long pulses (a diverging or oscillating network)."""
    r = dn_response(pop, t, cond)
    return -r if cond["duration"] >= 267.0 else r


def test_implausible_recovery_and_summation_are_flagged():
    trees = {"contrast": archive("contrast", dn_response, pops=("V1",)),
             "duration": archive("duration", _negative_long, pops=("V1",)),
             "repetition": archive("repetition", _builds_up, pops=("V1",))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = A.analyze(*trees.values(), dn=False)
    s = res.summary()["V1"]
    flags = s["flags"]
    hi = PLAUSIBLE["isi_recovery"][1]
    big = [k for k, v in s["isi_recovery"].items() if v is not None and v > hi]
    assert big and all(f"isi_recovery[{float(k):g}]" in flags for k in big)
    assert "implausible recovery" in flags[f"isi_recovery[{float(big[0]):g}]"]
    neg = [k for k, v in s["summation_ratio"].items() if v is not None and v <= 0]
    assert neg and all(f"summation_ratio[{float(k):g}]" in flags for k in neg)
    text = A.format_summary(res.summary())
    assert "*" in text  # the table marks them as footnotes
