"""Recordings in (issue 24 item 2): the layout and its loaders, every bad input, the Groen
metrics on recordings (the same code path as on archives) and the model-data score."""

import math
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import dynode as dn
from dynode import analysis as A
from dynode.analysis import DN_START, dn_model, pulse_envelope
from dynode.errors import ConfigurationError, DynodeError, MissingConditionsError
from dynode.recordings import (SCORE, RecordingsError, analyze_recordings, compare_recordings, load_recordings,
                               make_recordings, read_csv, recording_courses, validate_recordings, write_csv)
from dynode.stimuli.protocols import GROEN2022

RATE = 512.0  # Groen's ECoG sampling rate (Hz)
DT = 1000.0 / RATE


def groen_conditions(onset=0.0):
    conds = [dict(experiment="contrast", contrast=c, duration=500.0, isi=0.0, onset=onset)
             for c in GROEN2022["contrast"]["contrasts"]]
    conds += [dict(experiment="duration", contrast=1.0, duration=d, isi=0.0, onset=onset)
              for d in GROEN2022["duration"]["durations"]]
    conds += [dict(experiment="repetition", contrast=1.0, duration=133.0, isi=i, onset=onset)
              for i in GROEN2022["repetition"]["isis"]]
    return conds


def dn_courses(t, conds, **params):
    """Groen's DN model (its start values, updated by ``params``) for every condition."""
    s = np.stack([pulse_envelope(t, contrast=c["contrast"], duration=c["duration"],
                                 isi=c["isi"] if c["experiment"] == "repetition" else None) for c in conds])
    return dn_model(s, t, {**DN_START, **params}).numpy()


@pytest.fixture(scope="module")
def groen():
    """DN-model recordings of the 17 Groen conditions at 512 Hz, -0.1 to 1.2 s around onset."""
    t = np.arange(-51, 615) * DT  # a sample at the onset, as in the data
    conds = groen_conditions()
    y = dn_courses(t, conds)
    return t, conds, y, make_recordings({"V1": y, "V2": 0.5 * y}, t, conds, units="a.u.", source="DN start values")


@pytest.fixture(scope="module")
def groen_analysis(groen):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze_recordings(groen[3])


def small(units="uV", electrodes=False):
    """Three conditions, 40 samples at 512 Hz."""
    t = np.arange(-8, 32) * DT
    conds = [dict(experiment="contrast", contrast=c, duration=50.0, isi=0.0, onset=0.0) for c in (0.25, 1.0)]
    conds.append(dict(experiment="repetition", contrast=1.0, duration=20.0, isi=10.0, onset=0.0))
    rng = np.random.default_rng(0)
    shape = (2, 3, len(t)) if electrodes else (3, len(t))
    return make_recordings({"V1": rng.normal(size=shape), "hV4": rng.normal(size=shape)}, t, conds, units=units,
                           source="test", electrodes=["e1", "e2"] if electrodes else None)


# xarray's to_zarr of a user's file: zarr warns about fixed-length strings and consolidated metadata
# (its own format notes, not dynode's), so the tests that write one silence exactly those two
ZARR_NOTES = [pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
              pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")]


# -- layout and loaders -------------------------------------------------------------------------
@ZARR_NOTES[0]
@ZARR_NOTES[1]
@pytest.mark.parametrize("fmt", ["nc", "zarr", "csv"])
def test_round_trips(tmp_path, fmt):
    ds = small(electrodes=fmt == "csv")
    path = tmp_path / f"rec.{fmt}"
    if fmt == "nc":
        pytest.importorskip("scipy")
        ds.to_netcdf(path)
    elif fmt == "zarr":
        ds.to_zarr(path)
    else:
        write_csv(ds, path)
    back = load_recordings(path)
    xr.testing.assert_allclose(back, ds)
    assert list(back.data_vars) == ["V1", "hV4"]
    assert back["V1"].attrs["units"] == "uV" and back["time"].attrs["units"] == "ms"
    assert back.attrs["sampling_rate_hz"] == pytest.approx(RATE) and back.attrs["source"] == "test"
    assert [str(e) for e in back["experiment"].values] == ["contrast", "contrast", "repetition"]


def test_csv_example_file(tmp_path):
    """The documented example: the long format with a units comment line."""
    ds = small()
    text = write_csv(ds, tmp_path / "example.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == "# units: uV" and lines[1] == "# source: test"
    assert lines[2] == "area,experiment,contrast,duration,isi,onset,time_ms,value"
    assert lines[3].startswith("V1,contrast,0.25,50.0,0.0,0.0,-15.625,")
    assert len(lines) == 3 + 2 * 3 * 40
    # time in s is converted; units given as an argument when the file has none
    rows = ["area,experiment,contrast,duration,isi,onset,time_s,value"]
    rows += [f"V1,duration,1,17,0,0,{k / 512:.10f},{k}" for k in range(6)]  # onset etc. always in ms
    rec = read_csv("\n".join(rows) + "\n", units="%")
    rec = load_recordings(rec)
    np.testing.assert_allclose(rec["time"].values, np.arange(6) * DT)
    assert rec["V1"].attrs["units"] == "%" and float(rec["duration"][0]) == 17.0


def test_time_in_seconds_is_converted_and_the_original_kept(groen):
    ds = groen[3].copy(deep=True)
    ds = ds.assign_coords(time=("time", ds["time"].values / 1000.0, {"units": "s"}))
    ds.attrs.pop("sampling_rate_hz")
    back = load_recordings(ds)
    np.testing.assert_allclose(back["time"].values, groen[3]["time"].values)
    assert back.attrs["sampling_rate_hz"] == pytest.approx(512.0)
    assert ds["time"].attrs["units"] == "s"  # the input is not modified


# -- bad input: each a DynodeError naming the field, before any computation ---------------------------------
def _bad(ds, **changes):
    ds = ds.copy(deep=True)
    for k, v in changes.items():
        ds = v(ds)
    return ds


@pytest.mark.parametrize("change, field, match", [
    (lambda d: d.drop_vars("isi"), "isi", "condition coordinates \\['isi'\\] are missing"),
    (lambda d: d.assign_coords(time=("time", d["time"].values ** 1.01 if False else
                                     np.r_[d["time"].values[:-1], d["time"].values[-1] + 1.0], {"units": "ms"})),
     "time", "not uniform"),
    (lambda d: d.assign_coords(time=("time", d["time"].values, {"units": "min"})), "time.units", "'min'"),
    (lambda d: d.assign_coords(time=("time", d["time"].values, {})), "time.units", "no 'units'"),
    (lambda d: d.assign_attrs(sampling_rate_hz=500.0), "sampling_rate_hz", "512"),
    (lambda d: d.assign(V1=d["V1"].where(d["time"] != d["time"][5])), "V1", "NaN"),
    (lambda d: d.assign(hV4=d["hV4"].assign_attrs(units="%")), "units", "different units"),
    (lambda d: d.assign(hV4=d["hV4"].assign_attrs(units="")), "hV4.units", "no 'units'"),
    (lambda d: d.assign_coords(experiment=("condition", ["contrast", "size", "repetition"])), "experiment",
     "unknown experiment"),
    (lambda d: d.assign_coords(onset=("condition", [0.0, 10.0, 0.0])), "onset", "different onsets"),
    (lambda d: d.assign_coords(contrast=("condition", [25.0, 100.0, 100.0])), "contrast", "divide by 100"),
])
def test_bad_recordings(change, field, match):
    ds = change(small().copy(deep=True))
    with pytest.raises(RecordingsError, match=match) as err:
        load_recordings(ds)
    assert field in err.value.missing and isinstance(err.value, DynodeError)


def test_bad_csv_and_files(tmp_path):
    with pytest.raises(RecordingsError, match="no units") as err:
        read_csv("area,experiment,contrast,duration,isi,onset,time_ms,value\nV1,contrast,1,500,0,0,0,1\n")
    assert err.value.missing == ["units"]
    with pytest.raises(RecordingsError, match="lacks the column\\(s\\) \\['onset'\\]"):
        read_csv("# units: uV\narea,experiment,contrast,duration,isi,time_ms,value\n")
    text = "# units: uV\narea,experiment,contrast,duration,isi,onset,time_ms,value\n"
    with pytest.raises(RecordingsError, match="no sample at time 1 ms"):
        read_csv(text + "V1,contrast,1,500,0,0,0,1\nV1,contrast,1,500,0,0,1,1\nV2,contrast,1,500,0,0,0,1\n")
    with pytest.raises(RecordingsError, match="units 'uV' but units='%'"):
        read_csv(text + "V1,contrast,1,500,0,0,0,1\n", units="%")
    with pytest.raises(ConfigurationError, match="cannot tell the format"):
        (tmp_path / "x.txt").write_text("1")
        load_recordings(tmp_path / "x.txt")
    with pytest.raises(ConfigurationError, match="no file"):
        load_recordings(tmp_path / "missing.nc")


def test_missing_conditions_and_areas(groen, groen_analysis):
    t, conds, y, ds = groen
    # the analysis needs the single 133 ms pulse for ISI recovery
    keep = [i for i, c in enumerate(conds) if not (c["experiment"] == "duration" and c["duration"] == 133.0)]
    with pytest.raises(MissingConditionsError, match="single 133 ms pulse"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analyze_recordings(ds.isel(condition=keep))
    with pytest.raises(RecordingsError, match="same duration"):
        recording_courses(ds.isel(condition=[5, 5, 6]))
    # the comparison needs every recorded condition on the model
    fewer = ds.isel(condition=[i for i, c in enumerate(conds) if c.get("isi") != 533.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = analyze_recordings(fewer)
    with pytest.raises(MissingConditionsError, match="not run at isi \\[533.0\\]"):
        compare_recordings(model, groen_analysis)
    with pytest.raises(RecordingsError, match="no area \\['hV4'\\]"):
        compare_recordings(groen_analysis, groen_analysis, areas={"V1": "hV4"})
    with pytest.raises(RecordingsError, match="no population \\['V4'\\]"):
        compare_recordings(groen_analysis, groen_analysis, areas={"V4": "V1"})
    with pytest.raises(RecordingsError, match="areas \\['IT'\\] are not recorded"):
        validate_recordings(ds, areas=["IT"])


# -- one code path: the metrics of an archive and of recordings of its courses ------------------------
def test_metrics_on_recordings_equal_metrics_on_the_archive():
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("image", shape=(1, 2, 2))
    net.add_population("V1", shape=(1, 2, 2), tau=10.0, phi="relu")
    net.add_population("V2", shape=(1, 1, 1), tau=20.0, phi="relu")
    net.connect("image", "V1", nn.Conv2d(1, 1, 1))
    net.connect("V1", "V2", nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 1, 1)), delay=10.0)
    net.connect("V1", "V1", nn.Conv2d(1, 1, 1, bias=False), delay=20.0)
    with torch.no_grad():
        for name, w in net.named_parameters():
            w.copy_(w.abs() + 0.2)
        net.populations  # noqa: B018
        rec = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.bias is None][0]
        rec.weight.fill_(-0.6)  # a delayed negative loop: transients and adaptation
    images = torch.full((1, 1, 2, 2), 0.9)
    runs = {}
    for kind in ("contrast", "duration", "repetition"):
        p = dn.stimuli.groen2022(kind, images=images, background="grey")
        runs[kind] = dn.simulate(net, p, t_end=p.t_end, dt=1.0, record=dn.Record(reduce="mean"), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_archive = A.analyze(**runs).summary()
    data, conds = {"V1": [], "V2": []}, []
    for kind, run in runs.items():
        by = dn.stimuli.EXPERIMENTS[kind].by
        ds = A.all_time_courses(run, by)
        fixed = {k: float(np.unique(v)[0]) for k, v in A.conditions(run.tree).items() if k in ("contrast", "duration")}
        for v in ds[by].values:
            conds.append({**fixed, by: float(v), "experiment": kind, "isi": 0.0, "onset": 0.0,
                          **({"isi": float(v)} if by == "isi" else {})})
            for a in data:
                data[a].append(ds[a].sel({by: v}).values)
    t = ds["time"].values
    rec = make_recordings({a: np.stack(v) for a, v in data.items()}, t, conds, units="a.u.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_recordings = analyze_recordings(rec).summary()
    assert from_archive.keys() == from_recordings.keys()
    for pop in from_archive:
        a, r = from_archive[pop], from_recordings[pop]
        assert a.keys() == r.keys() and a["flags"] == r["flags"]
        for key in ("summation_ratio", "isi_recovery", "time_to_peak_ms", "half_rise_ms", "c50",
                    "asymptote_to_peak", "summation_window_ms", "summed_response"):
            assert a[key] == pytest.approx(r[key], rel=1e-9, abs=1e-12), (pop, key)
        assert a["isi_recovery"][17.0] is not None and a["summation_ratio"][33.0] < 1.0


# -- the score's known cases -------------------------------------------------------------------------
def test_identical_courses_score_one(groen_analysis):
    cmp = compare_recordings(groen_analysis, groen_analysis)
    assert cmp.score == pytest.approx(1.0, abs=1e-12) and cmp.score_cells == 6
    np.testing.assert_allclose(cmp.fit["shift_ms"].values, 0.0, atol=1e-9)
    np.testing.assert_allclose(cmp.fit["gain"].values, 1.0)
    np.testing.assert_allclose(cmp.courses["normalised_error"].values, 0.0, atol=1e-20)
    np.testing.assert_allclose(cmp.metrics["difference"].values, 0.0, atol=1e-12)
    text = str(cmp)
    assert text.startswith("score 1.000 over 6 (area, experiment) cells") and SCORE in text
    assert "isi_recovery[133]" in text


def test_shifted_and_scaled_copy_recovers_shift_and_gain(groen, groen_analysis):
    t, conds, y, _ = groen
    late = dn_courses(t, conds, shift=DN_START["shift"] + 23.0)  # the data 23 ms later, in other units
    data = make_recordings({"hV4": 40.0 * late}, t, conds, units="uV")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = compare_recordings(groen_analysis, data, areas={"V2": "hV4"})
    f = cmp.fit.sel(area="hV4")
    assert str(f["population"].values) == "V2"
    assert float(f["shift_ms"]) == pytest.approx(23.0, abs=DT / 2)  # recovered, and reported
    assert float(f["gain"]) == pytest.approx(80.0, rel=0.02)  # V2 = 0.5 y
    assert cmp.score > 0.995
    assert (cmp.courses["correlation_unshifted"] < cmp.courses["correlation"] - 0.1).all()  # not hidden
    td = cmp.metrics["difference"].sel(area="hV4", metric="time_to_peak_ms[1]")
    assert float(td) == pytest.approx(-23.0, abs=DT)  # latencies are reported as they are
    assert "+23" in str(cmp)
    # a shift beyond the bound is flagged, not reported as a result
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Naka-Rushton")  # the DN courses' c50 flag, tested elsewhere
        with pytest.warns(UserWarning, match="on the bound"):
            bounded = compare_recordings(groen_analysis, data, areas={"V2": "hV4"}, max_shift=10.0)
    assert "hV4/shift_ms" in bounded.flags
    assert float(bounded.fit["shift_ms"].sel(area="hV4")) == pytest.approx(10.0, abs=DT)


def test_undefined_values_are_flagged_not_printed(groen, groen_analysis):
    t, conds, y, _ = groen
    flat = make_recordings({"V1": np.zeros_like(y)}, t, conds, units="uV")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = compare_recordings(groen_analysis, flat)
    assert math.isnan(cmp.score) and "score" in cmp.flags
    assert "V1/contrast/correlation" in cmp.flags
    text = str(cmp)
    assert "score n/a" in text and "nan" not in text.lower()


def test_compare_ranks_variants_and_draws_model_and_data(tmp_path, groen, groen_analysis):
    from dynode.compare import rank_by_recordings

    t, conds, y, _ = groen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = analyze_recordings(make_recordings({"V1": dn_courses(t, conds, tau2=400.0, n=1.0)}, t, conds,
                                                  units="a.u."))
        out = rank_by_recordings({"slow": slow, "groen": groen_analysis}, groen[3], tmp_path)
    assert [label for label, _ in out["ranking"]] == ["groen", "slow"]
    assert out["ranking"][0][1] == pytest.approx(1.0) and out["ranking"][1][1] < 0.99
    assert out["text"].splitlines()[2].startswith("| 1 | groen | 1.000 |")
    assert (tmp_path / "recordings.csv").read_text().splitlines()[1].startswith("1,groen,")
    assert set(out["figures"]) == {"V1", "V2"}  # an area per figure, each variant that has it
    assert out["figures"]["V1"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@ZARR_NOTES[0]
@ZARR_NOTES[1]
def test_cli_checks_the_recordings_before_anything_trains(tmp_path, capsys):
    from dynode.cli import main

    bad = small().assign_coords(time=("time", small()["time"].values, {"units": "min"}))
    bad.to_zarr(tmp_path / "bad.zarr")
    assert main(["compare", "--quick", "--variants", "full", "--recordings", str(tmp_path / "bad.zarr"),
                 "--out", str(tmp_path / "c")]) == 2
    assert "time is in 'min'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    write_csv(small(), tmp_path / "ok.csv")
    assert main(["compare", "--quick", "--variants", "full", "--recordings", str(tmp_path / "ok.csv"),
                 "--areas", "V1=IT", "--out", str(tmp_path / "c")]) == 2
    assert "no area ['IT']" in capsys.readouterr().err and not (tmp_path / "c" / "full").exists()
    assert main(["compare", "--quick", "--areas", "V1=V1"]) == 2
    assert "apply with --recordings only" in capsys.readouterr().err
