"""Safe by default, archives (issue 20): verify_archive checks the store against what the
archive declares; a malformed or clock-skewed ``writer`` lease is reported and cleared by
``repair_archive(force=True)``; a lazy read of a damaged chunk names the population and steps."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fields
import dynode as dn
from dynode.archive import LEASE_TIMEOUT_S, lease_state, repair_archive, verify_archive
from dynode.errors import ArchiveCorruptError, ArchiveError, ArchiveLockedError, DynodeError

SWEEP = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HOST = socket.gethostname()


def tiny_net() -> dn.Network:
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("x", shape=(2, 4, 4))
    net.add_population("V1", shape=(3, 4, 4), tau=4.0, phi="relu")
    net.add_population("IT", shape=(5,), tau=3.0, phi="tanh")
    net.connect("x", "V1", nn.Conv2d(2, 3, 3, padding=1))
    net.connect("V1", "IT", nn.Sequential(nn.Flatten(), nn.Linear(48, 5)), delay=1.0)
    return net


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One complete archive (30 steps, chunks of 10, two samples with a condition); each test
    works on its own copy."""
    path = tmp_path_factory.mktemp("pristine") / "run.zarr"
    x = torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    stim = dn.stimuli.Constant(x, conditions={"contrast": [0.5, 1.0]})
    dn.simulate(tiny_net(), stim, t_end=29.0, dt=1.0, store=path, chunk_steps=10, progress=False)
    return path


@pytest.fixture
def archive(pristine, tmp_path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(pristine, path)
    return path


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` except under ``skip``: (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if skip is not None and (p == skip or skip in p.parents):
                continue
            s = p.lstat()
            out[str(p.relative_to(root))] = (s.st_size if name in filenames else 0, s.st_mtime_ns)
    return out


def root_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def set_writer(path: Path, lease) -> None:
    """Put ``lease`` in the root attributes as another process would (NaN/inf as JSON allows)."""
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["writer"] = lease
    meta.pop("consolidated_metadata", None)
    (path / "zarr.json").write_text(json.dumps(meta))


def chunk_file(path: Path, group: str, index: int) -> Path:
    return fields.chunk_file(path / group / "rate", index)


def flip_a_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


# -- finding 1: verify_archive checks the store against the archive's declarations ----------
def test_a_deleted_population_group_is_damage_named(archive):
    assert root_attrs(archive)["populations"] == ["V1", "IT"]
    shutil.rmtree(archive / "IT")
    with pytest.raises(ArchiveCorruptError, match=r"group 'IT': population group missing from the "
                                                  r"store \(the root attribute 'populations' lists "
                                                  r"it\)") as err:
        verify_archive(archive)
    assert [(d.group, d.variable) for d in err.value.report.damaged] == [("IT", "")]
    with pytest.raises(ArchiveCorruptError, match="group 'IT'"):  # the cheap check sees it too
        dn.open_archive(archive)


def test_an_undeclared_group_and_a_missing_declared_array_are_damage_named(archive):
    shutil.copytree(archive / "IT", archive / "V9")  # a group no attribute declares
    shutil.rmtree(archive / "V1" / "channel")  # a coordinate the rate's dims declare
    shutil.rmtree(archive / "contrast")  # a condition the config declares
    with pytest.raises(ArchiveCorruptError) as err:
        verify_archive(archive)
    damaged = {(d.group, d.variable): d.reason for d in err.value.report.damaged}
    assert set(damaged) == {("V9", ""), ("V1", "channel"), ("/", "contrast")}, damaged
    assert "group not declared: the root attribute 'populations' lists only ['V1', 'IT']" in damaged["V9", ""]
    assert "array missing from the store" in damaged["V1", "channel"]
    assert "V1/channel: array missing" in str(err.value)


def test_a_malformed_populations_attribute_and_a_shortened_array_are_damage(archive):
    import zarr

    zarr.open_array(archive / "IT" / "rate", mode="r+").resize((25, 2, 5))
    with pytest.raises(ArchiveCorruptError, match=r"IT/rate: steps 25\.\.29, t = 25\.\.29 ms: the "
                                                  r"array ends after 25 steps"):
        verify_archive(archive)
    meta = json.loads((archive / "zarr.json").read_text())
    meta["attributes"]["populations"] = {"V1": 1}
    (archive / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ArchiveCorruptError, match=r"root attributes: the root attribute 'populations' "
                                                  r"is \{'V1': 1\} \(dict\), not a list"):
        verify_archive(archive)


# -- finding 2: a malformed lease is reported, and force=True clears it ----------------------
@pytest.mark.parametrize("lease, says", [
    ("garbage", r"'writer' attribute is malformed \(it is 'garbage' \(str\), not an object"),
    ([1, 2], r"'writer' attribute is malformed \(it is \[1, 2\] \(list\)"),
    ({"pid": "x"}, r"'writer' attribute is malformed \(it lacks 'host', 'heartbeat'\)"),
    ({"pid": 12.5, "host": "h", "heartbeat": 1.0}, r"its pid 12\.5 \(float\) is not a process id"),
    ({"pid": -1, "host": "h", "heartbeat": 1.0}, r"its pid -1 \(int\) is not a process id"),
    ({"pid": 7, "host": ["h"], "heartbeat": 1.0}, r"its host \['h'\] \(list\) is not a host name"),
    ({"pid": 7, "host": "elsewhere", "heartbeat": time.time(), "token": ["t"]},
     r"pid 7 on host 'elsewhere' cannot be trusted \(token \['t'\] \(list\) is not a str\)"),
], ids=["str", "list", "lacks-keys", "float-pid", "negative-pid", "list-host", "list-token"])
def test_a_malformed_lease_is_reported_and_force_clears_it(archive, lease, says):
    set_writer(archive, lease)
    outside = snapshot(archive.parent, skip=archive)
    with pytest.raises(ArchiveLockedError, match=says + r".*refusing to repair it: dynode cannot tell "
                                                 r"whether a run still writes it.*repair_archive\(path, "
                                                 r"force=True\)"):
        repair_archive(archive)
    with pytest.raises(ArchiveLockedError, match="refusing to overwrite"):
        dn.simulate(tiny_net(), torch.ones(2, 4, 4), t_end=3.0, dt=1.0, store=archive,
                    overwrite=True, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dn.open_archive(archive).sizes["time"] == 30  # a reader is not blocked
    assert repair_archive(archive, force=True) == 30
    assert "writer" not in root_attrs(archive)
    assert snapshot(archive.parent, skip=archive) == outside
    assert verify_archive(archive).ok


# -- finding 3: clock skew and heartbeats that are not times ---------------------------------
def test_a_heartbeat_far_in_the_future_does_not_block_forever(archive):
    lease = {"pid": 4242, "host": "elsewhere", "boot_id": None, "pid_start": None,
             "started": "2026-01-01T00:00:00Z", "heartbeat": time.time() + 1e9}
    set_writer(archive, lease)
    st = lease_state(root_attrs(archive))
    assert st.stale and not st.dead and st.age is None and "in the future" in st.problem
    with pytest.raises(ArchiveLockedError, match=r"lease of pid 4242 on host 'elsewhere' cannot be "
                                                 r"trusted \(heartbeat \d+ s in the future: the "
                                                 r"writer's clock and this one disagree\)"):
        repair_archive(archive)
    meta = json.loads((archive / "zarr.json").read_text())
    meta["attributes"].update(status="incomplete", steps_written=20)
    (archive / "zarr.json").write_text(json.dumps(meta))
    with pytest.warns(dn.archive.IncompleteArchiveWarning,
                      match=r"'writer' lease cannot be trusted \(heartbeat \d+ s in the future.*whether a "
                            r"run still writes it is unknown; it holds 20 committed time steps.*"
                            r"repair_archive\(path, force=True\)"):
        assert dn.open_archive(archive).sizes["time"] == 20  # a reader is told, not blocked
    assert repair_archive(archive, force=True) == 20
    assert "writer" not in root_attrs(archive)
    # a few seconds ahead (ordinary skew) is a live lease, refused even with force
    set_writer(archive, dict(lease, heartbeat=time.time() + 5.0))
    assert lease_state(root_attrs(archive)).problem is None
    with pytest.raises(ArchiveLockedError, match=r"heartbeat 0 s ago"):
        repair_archive(archive, force=True)


@pytest.mark.parametrize("beat", [math.nan, math.inf, -math.inf, -5.0, "yesterday", None, True, 10 ** 400],
                         ids=["nan", "inf", "-inf", "negative", "str", "None", "bool", "huge-int"])
def test_a_heartbeat_that_is_not_a_time_is_untrusted_and_force_clears_it(archive, beat):
    set_writer(archive, {"pid": 4242, "host": "elsewhere", "heartbeat": beat})
    st = lease_state(root_attrs(archive))
    assert st.stale and st.problem.startswith("heartbeat")
    with pytest.raises(ArchiveLockedError, match=r"cannot be trusted \(heartbeat .* is not a Unix time\)"):
        repair_archive(archive)
    assert repair_archive(archive, force=True) == 30 and "writer" not in root_attrs(archive)


def test_same_host_dead_pid_is_broken_whatever_its_heartbeat(archive):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    for beat in (math.nan, time.time() + 1e9, "soon"):
        set_writer(archive, {"pid": proc.pid, "host": HOST, "heartbeat": beat})
        assert lease_state(root_attrs(archive)).dead
        assert repair_archive(archive) == 30 and "writer" not in root_attrs(archive)


# -- finding 4: a lazy read of a damaged chunk names the population and the steps -------------
def test_a_flipped_byte_read_lazily_names_population_and_steps(archive):
    flip_a_byte(chunk_file(archive, "V1", 1))
    tree = dn.open_archive(archive)  # the cheap check does not read chunks
    np.testing.assert_array_equal(tree["V1"]["rate"].isel(time=5).shape, (2, 3, 4, 4))
    for read in (lambda: tree["V1"]["rate"].isel(time=15).values,
                 lambda: tree["V1"]["rate"].sel(time=slice(8.0, 12.0)).mean().item(),
                 lambda: tree["V1"]["rate"].values,
                 lambda: dn.archive.population_time_course(tree, "V1")):
        with pytest.raises(ArchiveCorruptError, match=r"reading rate of population 'V1' hit damaged data"
                                                      r" on disk:\n  V1/rate: steps 10\.\.19, t = "
                                                      r"10\.\.19 ms: checksum mismatch\n.*"
                                                      r"verify_archive\(path\)") as err:
            read()
        damaged = [(d.group, d.variable, d.steps) for d in err.value.report.damaged]
        assert damaged == [("V1", "rate", (10, 19))]
        assert "checksum" in str(err.value.__cause__)  # zarr's own error is kept as the cause
    assert float(tree["IT"]["rate"].sum()) != 0  # the other population reads as before
    with pytest.raises(ArchiveCorruptError, match=r"V1/rate: steps 10\.\.19"):
        dn.open_archive(archive, verify=True)


def test_a_damaged_stimulus_chunk_is_named_too(archive):
    flip_a_byte(fields.chunk_file(archive / "stimulus", 2))
    tree = dn.open_archive(archive)
    with pytest.raises(ArchiveCorruptError, match=r"reading stimulus hit damaged data on disk:\n  "
                                                  r"stimulus: steps 20\.\.29"):
        tree["stimulus"].values


def test_other_read_errors_pass_unchanged(archive, monkeypatch):
    import xarray.backends.zarr as xz

    tree = dn.open_archive(archive)

    def unplugged(self, key):
        raise OSError("disk unplugged")

    monkeypatch.setattr(xz.ZarrArrayWrapper, "_getitem", unplugged)
    with pytest.raises(OSError, match="disk unplugged"):  # every chunk is intact: not corruption
        tree["V1"]["rate"].isel(time=15).values


# -- the sweep: malformed leases never block for ever, force always clears them ---------------
NOW = time.time()
MALFORMED = st.one_of(
    st.sampled_from(["garbage", 1, 2.5, None, [], [1, 2], True, {}]),
    st.fixed_dictionaries(
        {},
        optional={"pid": st.sampled_from([4242, -1, 0, 2 ** 40, "4242", 4242.0, True, None]),
                  "host": st.sampled_from(["elsewhere", HOST, "", 3, None, ["h"]]),
                  "heartbeat": st.sampled_from([NOW - 10 * LEASE_TIMEOUT_S, NOW + 1e6, NOW + 1e12,
                                                math.nan, math.inf, -1.0, 0, "now", None, [NOW]]),
                  "boot_id": st.sampled_from([None, "b", 3]),
                  "pid_start": st.sampled_from([None, 5, "5", 2.5]),
                  "token": st.sampled_from([None, "t", ["t"]])}))


@SWEEP
@given(lease=MALFORMED)
def test_sweep_malformed_leases(archive, lease):
    set_writer(archive, lease)
    outside = snapshot(archive.parent, skip=archive)
    state = lease_state(root_attrs(archive))  # never raises
    assert state is None or state.dead or state.stale  # never "live for ever"
    started = time.monotonic()
    try:
        repair_archive(archive)
        taken_over = True
    except DynodeError as exc:
        assert isinstance(exc, ArchiveLockedError) and "force=True" in str(exc), exc
        taken_over = False
    if taken_over:  # only a provably gone writer's lease (or none) is broken without force
        assert state is None or state.dead
    assert repair_archive(archive, force=True) == 30
    assert time.monotonic() - started < 10
    assert "writer" not in root_attrs(archive)
    assert snapshot(archive.parent, skip=archive) == outside


def test_repair_of_a_store_that_is_no_archive_is_still_refused(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(ArchiveError, match="no zarr.json"):
        repair_archive(tmp_path / "x.zarr", force=True)
