"""Archives: plain-xarray readability, crash safety (SIGKILL), no pickle, reading helpers, export."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import dynode as dn

REPO = Path(__file__).resolve().parents[1]

# The network and stimulus, as source, so a child process builds exactly the same run.
NET_SRC = textwrap.dedent("""
    import torch
    from torch import nn
    import dynode as dn

    def build(batch=2, side=6):
        torch.manual_seed(0)
        net = dn.Network()
        net.add_input("img", shape=(2, side, side))
        net.add_population("V1", shape=(4, side, side), tau=5.0, phi="relu")
        net.add_population("IT", shape=(3,), tau=8.0, phi="relu")
        net.connect("img", "V1", nn.Conv2d(2, 4, 3, padding=1))
        net.connect("V1", "V1", nn.Conv2d(4, 4, 3, padding=1, bias=False), delay=2.0)
        net.connect("V1", "IT", nn.Sequential(nn.Flatten(), nn.Linear(4 * side * side, 3)), delay=1.0)
        g = torch.Generator().manual_seed(1)
        contrast = [0.25, 1.0, 0.5, 0.125][:batch]
        img = torch.rand(batch, 2, side, side, generator=g) * torch.tensor(contrast).view(-1, 1, 1, 1)
        stim = dn.stimuli.Pulse(10.0, 50.0, img, conditions={
            "contrast": contrast, "shape": ["disk", "grating", "noise", "blank"][:batch]})
        return net, stim
""")


def build(batch=2, side=6):
    scope: dict = {}
    exec(NET_SRC, scope)
    return scope["build"](batch=batch, side=side)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One complete archive (and its reference solution) shared by the read-only tests."""
    path = tmp_path_factory.mktemp("arch") / "run.zarr"
    net, stim = build(batch=4)
    run = dn.simulate(net, stim, t_end=80.0, dt=1.0, solver="heun", store=path, chunk_steps=16,
                      progress=False)
    with torch.no_grad():
        sol = dn.integrate(net, stim, t_end=80.0, dt=1.0, solver="heun")
    return path, run, sol


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_plain_xarray_reads_time_units_and_conditions_without_dynode(archive):
    path, _, sol = archive
    code = textwrap.dedent(f"""
        import json, sys, warnings
        import xarray as xr
        warnings.simplefilter("error")  # a complete archive opens cleanly (consolidated)
        tree = xr.open_datatree({str(path)!r}, engine="zarr")
        v1 = tree["V1"]
        print(json.dumps({{
            "dynode_imported": any(m == "dynode" or m.startswith("dynode.") for m in sys.modules),
            "time": tree["time"].values.tolist(), "units": tree["time"].attrs["units"],
            "contrast": tree["contrast"].values.tolist(),
            "shape": [str(s) for s in v1["shape"].values],
            "rate_units": v1["rate"].attrs["units"], "dims": list(v1["rate"].dims),
            "status": tree.attrs["status"],
            "v1_sum": float(v1["rate"].sum()),
        }}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=path.parent)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["dynode_imported"] is False
    assert got["time"] == sol.ts.tolist() and got["units"] == "ms"
    assert got["contrast"] == [0.25, 1.0, 0.5, 0.125]
    assert got["shape"] == ["disk", "grating", "noise", "blank"]
    assert got["dims"] == ["time", "sample", "channel", "y", "x"] and got["rate_units"] == "a.u."
    assert got["status"] == "complete"
    assert got["v1_sum"] == pytest.approx(float(sol.states["V1"].double().sum()), rel=1e-6)


_ALLOWED_CODECS = {"bytes", "blosc", "zstd", "vlen-utf8", "transpose", "crc32c", "gzip"}
_PICKLE_MARKERS = (b"\x80\x02c", b"\x80\x03c", b"\x80\x04\x95", b"\x80\x05\x95", b"c__builtin__",
                   b"\x8c\x08builtins", b"cnumpy.core", b"\x8c\x05numpy")


def _scan_store(path: Path):
    """Every metadata file is JSON with JSON-only attributes, known codecs and no object dtype;
    no file holds a pickle frame."""
    n_meta = 0
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        raw = f.read_bytes()
        assert not any(m in raw for m in _PICKLE_MARKERS), f"pickle marker in {f}"
        if f.name == "zarr.json":
            n_meta += 1
            meta = json.loads(raw)
            if meta["node_type"] == "array":
                assert meta["data_type"] not in ("object", "|O", "O"), f
                codecs = {c["name"] for c in meta["codecs"]}
                assert codecs <= _ALLOWED_CODECS, (f, codecs)
            json.dumps(meta.get("attributes", {}))
    return n_meta


def test_attributes_are_json_and_nothing_is_pickled(archive, tmp_path):
    path, run, _ = archive
    assert _scan_store(path) >= 10
    attrs = xr.open_datatree(path, engine="zarr").attrs
    for key in ("config", "solver_stats"):
        assert isinstance(json.loads(attrs[key]), dict)
    assert json.loads(attrs["config"])["model"]["populations"][0]["name"] == "V1"
    # the same holds uncompressed, where a pickle could not hide inside a compressed chunk
    net, stim = build()
    raw = tmp_path / "raw.zarr"
    dn.simulate(net, stim, t_end=20.0, dt=1.0, store=raw, compression=None, progress=False)
    _scan_store(raw)


def test_open_archive_is_lazy_and_checks_its_input(archive, tmp_path):
    path, run, sol = archive
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = dn.open_archive(path)
    assert not tree["V1"]["rate"].variable._in_memory
    assert tree["V1"]["rate"].encoding["chunks"][0] == 16
    np.testing.assert_array_equal(tree["IT"]["rate"].values, sol.states["IT"].numpy())
    with pytest.raises(dn.DynodeError, match="not a zarr v3 store"):
        dn.open_archive(tmp_path)
    xr.Dataset({"a": ("t", [1.0])}).to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(dn.DynodeError, match="not a dynode archive"):
        dn.open_archive(tmp_path / "other.zarr")


def test_selection_helpers(archive):
    path, _, sol = archive
    tree = dn.open_archive(path)
    sub = dn.archive.select_conditions(tree, contrast=[0.5, 1.0])
    assert list(sub["sample"].values) == [1, 2]
    assert list(sub["V1"]["shape"].values) == ["grating", "noise"]
    np.testing.assert_array_equal(sub["V1"]["rate"].values, sol.states["V1"].numpy()[:, [1, 2]])
    one = dn.archive.select_conditions(tree, shape="blank")
    assert list(one["sample"].values) == [3]
    with pytest.raises(dn.ConfigurationError, match=r"unknown condition 'color'.*\['contrast', 'shape'\]"):
        dn.archive.select_conditions(tree, color="red")
    with pytest.raises(dn.ConfigurationError, match="no sample matches"):
        dn.archive.select_conditions(tree, contrast=0.3)
    win = dn.archive.time_window(tree, 10.0, 20.0)
    assert win["time"].values.tolist() == [float(t) for t in range(10, 21)]
    assert win["V1"].sizes["time"] == 11
    assert dn.archive.populations(tree) == ["V1", "IT"]


def test_population_time_course_is_the_unit_mean(archive):
    path, _, sol = archive
    tree = dn.open_archive(path)
    course = dn.archive.population_time_course(tree, "V1", block_steps=7)
    assert course.dims == ("time", "sample")
    want = sol.states["V1"].double().mean(dim=(2, 3, 4)).numpy()
    np.testing.assert_allclose(course.values, want, rtol=1e-6)
    std = dn.archive.population_time_course(tree, "V1", statistic="std")
    np.testing.assert_allclose(std.values, sol.states["V1"].double().std(dim=(2, 3, 4), correction=0).numpy(),
                               rtol=1e-5, atol=1e-9)
    both = dn.archive.population_time_courses(tree)
    assert set(both.data_vars) == {"V1", "IT"}
    assert list(both["contrast"].values) == [0.25, 1.0, 0.5, 0.125]
    # the stimulus is on during [10, 60) ms: V1 responds after onset
    assert float(course.sel(time=5.0).max()) < float(course.sel(time=40.0).min())
    with pytest.raises(dn.ConfigurationError, match="no population 'V9'"):
        dn.archive.population_time_course(tree, "V9")


def test_time_course_of_a_reduced_recording_is_the_stored_one():
    net, stim = build()
    run = dn.simulate(net, stim, t_end=20.0, dt=1.0, record=dn.Record(reduce="mean_std"),
                      progress=False)
    course = dn.archive.population_time_course(run.tree, "IT")
    np.testing.assert_array_equal(course.values, run.tree["IT"]["rate"].sel(statistic="mean").values)
    mean_only = dn.simulate(net, stim, t_end=20.0, dt=1.0, record=dn.Record(reduce="mean"),
                            progress=False)
    with pytest.raises(dn.ConfigurationError, match="reduce='mean'"):
        dn.archive.population_time_course(mean_only.tree, "IT", statistic="std")
    with pytest.raises(dn.ConfigurationError, match="unit-level recordings"):
        dn.archive.to_brainscore(mean_only.tree, "IT", [0.0, 10.0])


@pytest.mark.parametrize("suffix", ["nc", "zarr"])
def test_brainscore_export(archive, tmp_path, suffix):
    path, _, sol = archive
    tree = dn.open_archive(path)
    edges = [0.0, 10.0, 30.0, 60.0]
    out = tmp_path / f"assembly.{suffix}"
    asm = dn.archive.to_brainscore(tree, "V1", edges, out)
    assert asm.dims == ("presentation", "neuroid", "time_bin")
    assert asm.shape == (4, 4 * 6 * 6, 3)
    assert asm["time_bin_start"].values.tolist() == [0.0, 10.0, 30.0]
    assert asm["time_bin_end"].values.tolist() == [10.0, 30.0, 60.0]
    # neuroid order: channel, then y, then x
    n = 1 * 36 + 2 * 6 + 5
    assert asm["neuroid_id"].values[n] == "V1.1.2.5"
    assert (asm["channel"].values[n], asm["channel_y"].values[n], asm["channel_x"].values[n]) == (1, 2, 5)
    assert set(asm["layer"].values) == {"V1"}
    ref = sol.states["V1"].double().numpy()  # (time, sample, c, y, x), times 0..80
    want = ref[10:30, :, 1, 2, 5].mean(axis=0)
    np.testing.assert_allclose(asm.values[:, n, 1], want, rtol=1e-6)
    assert list(asm["contrast"].values) == [0.25, 1.0, 0.5, 0.125]
    back = (xr.open_dataarray(out) if suffix == "nc"
            else xr.open_zarr(out)[asm.name])
    np.testing.assert_array_equal(back.values, asm.values)
    assert list(back["neuroid_id"].values[:2]) == ["V1.0.0.0", "V1.0.0.1"]
    with pytest.raises(dn.ConfigurationError, match="holds no recorded time"):
        dn.archive.to_brainscore(tree, "V1", [100.0, 200.0])
    with pytest.raises(dn.ConfigurationError, match="strictly increasing"):
        dn.archive.to_brainscore(tree, "V1", [10.0, 5.0])


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_incomplete_archive_warns_trims_and_repairs(tmp_path):
    """What a killed run leaves: committed steps, then a tail; and arrays of unequal length
    (a kill while the store is created or cut), which repair_archive mends."""
    import zarr

    net, stim = build()
    path = tmp_path / "cut.zarr"
    dn.simulate(net, stim, t_end=20.0, dt=1.0, store=path, chunk_steps=5, progress=False)
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    root.attrs.update({"status": "incomplete", "steps_written": 15})
    zarr.consolidate_metadata(path)
    with pytest.warns(dn.archive.IncompleteArchiveWarning, match="'incomplete'.*15 committed"):
        tree = dn.open_archive(path)
    assert tree.sizes["time"] == 15 and tree["V1"].sizes["time"] == 15
    # one array longer than the others -> plain xarray cannot align the tree
    root["V1"]["rate"].resize((25,) + root["V1"]["rate"].shape[1:])
    zarr.consolidate_metadata(path)
    with pytest.raises(dn.DynodeError, match="repair_archive"):
        dn.open_archive(path)
    assert dn.archive.repair_archive(path) == 15
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert tree["V1"].sizes["time"] == 15 and tree.sizes["time"] == 15


CHILD = NET_SRC + textwrap.dedent("""
    import sys
    net, stim = build()
    torch.set_num_threads(1)
    dn.simulate(net, stim, t_end=1e5, dt=1.0, store=sys.argv[1], chunk_steps=int(sys.argv[2]),
                progress=False)
""")


@pytest.mark.slow
def test_sigkill_leaves_a_readable_incomplete_archive(tmp_path):
    path, chunk = tmp_path / "killed.zarr", 25
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(chunk)], env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while seen < 3 * chunk:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the child wrote no blocks in 120 s"
            try:
                seen = json.loads((path / "zarr.json").read_text())["attributes"]["steps_written"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # right after a commit: mid-computation of the next block
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    code = textwrap.dedent(f"""
        import json, numpy as np, xarray as xr
        tree = xr.open_datatree({str(path)!r}, engine="zarr")
        n = tree.attrs["steps_written"]
        print(json.dumps({{"status": tree.attrs["status"], "n": tree.sizes["time"], "committed": n,
                          "v1": tree["V1"].sizes["time"], "t_last": float(tree["time"][-1]),
                          "finite": bool(np.isfinite(tree["V1"]["rate"][:n].values).all())}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == "incomplete"
    assert got["committed"] >= seen and got["committed"] % chunk == 0
    # the time axis was allocated for the whole run; the committed steps hold data
    assert got["n"] == got["v1"] == 100_001 and got["t_last"] == 1e5
    assert got["finite"]
    with pytest.warns(dn.archive.IncompleteArchiveWarning,
                      match=rf"'incomplete', its writer, pid {proc.pid} .* is gone"):
        tree = dn.open_archive(path)  # the lease of a killed writer is seen as dead
    n = got["committed"]
    assert tree.sizes["time"] == n and tree["time"].values[-1] == n - 1.0
    net, stim = build()
    with torch.no_grad():
        sol = dn.integrate(net, stim, t_end=float(n - 1), dt=1.0)
    np.testing.assert_array_equal(tree["V1"]["rate"].values, sol.states["V1"].numpy())
    np.testing.assert_array_equal(tree["IT"]["rate"].values, sol.states["IT"].numpy())
    assert dn.archive.repair_archive(path) == n
    assert xr.open_datatree(path, engine="zarr").sizes["time"] == n
