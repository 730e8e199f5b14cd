"""Warnings point at the user's line (not at dynode's source), one per analysis flag; the
command line prints the flags once, as its table's footnotes, and no Python warning lines."""

import inspect
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import dynode as dn
from dynode import analysis as A
from dynode.cli import main
from dynode.errors import AnalysisWarning, BaselineDriftWarning, UndefinedMetricWarning
from test_analysis_archive import two_area_net
from test_analysis_groen import archive


def plateau(pop, t, cond):
    """A response that rises to a plateau (no peak: time to peak undefined) and saturates with
    contrast (c50 below the tested range); V2's baseline still creeps up (drift flagged)."""
    drift = 0.002 * np.clip(t + 150.0, 0, None) if pop == "V2" else 0.0
    rise = np.minimum(1 - np.exp(-np.clip(t, 0, None) / 30.0), 1 - math.exp(-8.0)) * (t >= 0) * (t < 500)
    return drift + (0.9 + 0.1 * cond["contrast"]) * rise


def test_a_metric_warning_points_at_the_callers_line():
    t = np.arange(0.0, 300.0)
    course = xr.DataArray(np.minimum(t / 50.0, 1.0), dims="time", coords={"time": t}, name="V1")
    with pytest.warns(UndefinedMetricWarning, match="plateau") as rec:
        line = inspect.currentframe().f_lineno + 1
        assert math.isnan(A.time_to_peak(course, 0.0, 300.0))
    assert [(w.filename, w.lineno) for w in rec] == [(__file__, line)]
    # two levels down inside dynode (summation_window -> fwhm): still this file
    durations = xr.DataArray(np.minimum(t / 50.0, 1.0)[None], dims=("duration", "time"),
                             coords={"duration": [17.0], "time": t}, name="V1")
    with pytest.warns(UndefinedMetricWarning) as rec:
        line = inspect.currentframe().f_lineno + 1
        A.summation_window(durations)
    assert {(w.filename, w.lineno) for w in rec} == {(__file__, line)}


def test_a_solver_warning_points_at_the_callers_line():
    """dynode.solvers lives outside the dynode/ folder: still dynode's own frames, skipped."""
    from fields import leaky

    with pytest.warns(dn.StabilityWarning, match="dt = 2 ms > tau = 1 ms") as rec:
        line = inspect.currentframe().f_lineno + 1
        dn.integrate(leaky(tau=1.0), torch.ones(3), t_end=4.0, dt=2.0)
    assert [(w.filename, w.lineno) for w in rec] == [(__file__, line)]


def test_a_warning_points_at_the_innermost_user_line():
    """The walk stops at the first frame outside dynode: the user's helper that called it."""
    def users_metric(t, y):
        return A.time_to_peak(xr.DataArray(y, dims="time", coords={"time": t}), 0.0, None)

    t = np.arange(0.0, 100.0)
    with pytest.warns(UndefinedMetricWarning) as rec:
        users_metric(t, np.minimum(t / 10.0, 1.0))
    assert [w.lineno for w in rec] == [users_metric.__code__.co_firstlineno + 1]


def test_analysis_warns_each_flag_once_at_the_callers_line():
    tree = archive("contrast", plateau, pops=("V1", "V2"))
    with pytest.warns((AnalysisWarning, BaselineDriftWarning)) as rec:
        line = inspect.currentframe().f_lineno + 1
        res = A.analyze(contrast=tree)
    assert {(w.filename, w.lineno) for w in rec} == {(__file__, line)}
    # every warning is a flag (it carries which) and every flag was warned: the table's
    # footnotes are the same set, so the command line may drop the warnings
    flags = {(p, k) for p, d in res.flags.items() for k in d}
    assert {w.message.flag for w in rec} == flags
    assert ("V1", "c50") in flags and ("V1", "time_to_peak_ms[1]") in flags
    assert ("V2", "baseline_drift_to_peak") in flags
    assert any(w.category is BaselineDriftWarning for w in rec)


def test_flags_in_tables_drops_flags_and_keeps_other_warnings(recwarn):
    res = A.Analysis(courses={}, summed={}, populations=["V1"])
    with A.flags_in_tables():
        res.flag("V1", "c50", "below the tested range", UndefinedMetricWarning)
        warnings.warn("not a flag", BaselineDriftWarning)
    res.flag("V1", "c50", "outside the block: warned")
    assert [(w.category, str(w.message)) for w in recwarn] == [
        (BaselineDriftWarning, "not a flag"), (AnalysisWarning, "V1: c50: outside the block: warned")]
    assert res.flags == {"V1": {"c50": "outside the block: warned"}}


def test_format_summary_names_the_flags_outside_its_columns():
    s = {"V1": {"c50": 0.3, "flags": {"c50_naka_rushton": "extrapolates", "time_to_peak_ms[0.0625]": "plateau",
                                      "c50": "shown as a footnote"}}}
    text = A.format_summary(s)
    assert "*1 shown as a footnote" in text
    assert text.splitlines()[-1] == ("also flagged, values not in this table (reasons in the summary's flags): "
                                     "c50_naka_rushton (V1), time_to_peak_ms[0.0625] (V1)")


def test_analyze_command_prints_flags_in_its_table_not_as_warnings(tmp_path, recwarn):
    net = two_area_net(linear=False)
    images = 0.5 + 0.5 * torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    paths = []
    for kind in ("contrast", "duration"):
        p = dn.stimuli.groen2022(kind, images=images, onset=300.0, background="grey")
        paths.append(dn.simulate(net, p, t_end=p.t_end, dt=1.0, record=dn.Record(reduce="mean"),
                                 store=tmp_path / f"{kind}.zarr", progress=False).path)
    with pytest.warns(AnalysisWarning, match="c50_naka_rushton"):  # a library call warns the flags
        A.analyze(*paths)
    # in this process: no warning reaches Python's warning printer
    assert main(["analyze", *map(str, paths), "--out", str(tmp_path / "figs")]) == 0
    assert [str(w.message) for w in recwarn] == []
    # the command itself: the flags named on stdout, no warning on stderr
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "dynode.cli", "analyze", *map(str, paths), "--out",
                           str(tmp_path / "figs2")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    assert "also flagged, values not in this table" in proc.stdout and "c50_naka_rushton (V1, V2)" in proc.stdout
