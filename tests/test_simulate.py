"""simulate: round trips against integrate, streaming equivalences, status and errors."""

import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dynode as dn
from dynode.stimulus import Stimulus


def small_net(seed: int = 0, channels: int = 3, side: int = 4, units: int = 5) -> dn.Network:
    """A conv population with a delayed recurrence feeding a vector population."""
    torch.manual_seed(seed)
    net = dn.Network()
    net.add_input("x", shape=(2, side, side))
    net.add_population("A", shape=(channels, side, side), tau=4.0, phi="relu")
    net.add_population("B", shape=(units,), tau=3.0, phi="tanh")
    net.connect("x", "A", nn.Conv2d(2, channels, 3, padding=1))
    net.connect("A", "A", nn.Conv2d(channels, channels, 3, padding=1, bias=False), delay=1.0)
    net.connect("A", "B", nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, units)),
                delay=0.5)
    return net


def pulse(batch: int = 3, side: int = 4, seed: int = 1, **conditions):
    g = torch.Generator().manual_seed(seed)
    return dn.stimuli.Pulse(2.0, 6.0, torch.rand(batch, 2, side, side, generator=g),
                            conditions=conditions or None)


def reference(net, stim, **kw):
    with torch.no_grad():
        return dn.integrate(net, stim, **kw)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_round_trip_is_bit_exact_in_float32(tmp_path, solver):
    net, stim = small_net(), pulse()
    run = dn.simulate(net, stim, t_end=12.0, dt=0.5, solver=solver, store=tmp_path / "a.zarr",
                      chunk_steps=4, progress=False)
    sol = reference(net, stim, t_end=12.0, dt=0.5, solver=solver)
    tree = run.tree
    np.testing.assert_array_equal(tree["time"].values, sol.ts.numpy())
    for name in ("A", "B"):
        stored = tree[name]["rate"].values
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, sol.states[name].numpy())
        torch.testing.assert_close(run.final_state[name], sol.final_state[name], rtol=0, atol=0)
    assert run.stats == sol.stats
    assert run.status == "complete" and tree.attrs["status"] == "complete"
    assert json.loads(tree.attrs["solver_stats"]) == sol.stats.as_dict()


def test_every_start_stop_pick_the_solver_times(tmp_path):
    net, stim = small_net(), pulse()
    rec = dn.Record(every=1.5, start=3.0, stop=10.0)
    run = dn.simulate(net, stim, t_end=12.0, dt=0.5, record=rec, progress=False)
    sol = reference(net, stim, t_end=12.0, dt=0.5)
    want = [3.0, 4.5, 6.0, 7.5, 9.0]
    np.testing.assert_array_equal(run.tree["time"].values, want)
    idx = [int(round(t / 0.5)) for t in want]
    np.testing.assert_array_equal(run.tree["A"]["rate"].values, sol.states["A"].numpy()[idx])


def test_blockwise_streaming_equals_one_shot_and_memory(tmp_path):
    net, stim = small_net(), pulse(contrast=[0.1, 0.5, 1.0])
    kw = dict(t_end=10.0, dt=0.5, solver="heun", progress=False)
    blocks = dn.simulate(net, stim, store=tmp_path / "b.zarr", chunk_steps=3, **kw).tree
    one = dn.simulate(net, stim, store=tmp_path / "o.zarr", chunk_steps=1000, **kw).tree
    mem = dn.simulate(net, stim, chunk_steps=3, **kw).tree
    assert blocks["A"]["rate"].encoding["chunks"][0] == 3
    assert one["A"]["rate"].encoding["chunks"][0] == 1000
    for tree in (one, mem):
        xr.testing.assert_identical(blocks["A"].to_dataset(), tree["A"].to_dataset())
        xr.testing.assert_identical(blocks["B"].to_dataset(), tree["B"].to_dataset())
        np.testing.assert_array_equal(blocks["stimulus"].values, tree["stimulus"].values)


def test_root_holds_the_stimulus_time_course_and_condition_labels():
    net = small_net()
    stim = pulse(contrast=[0.25, 0.5, 1.0], label=["low", "mid", "high"])
    run = dn.simulate(net, stim, t_end=10.0, dt=0.5, progress=False)
    tree = run.tree
    on = (tree["time"].values >= 2.0) & (tree["time"].values < 8.0)
    course = tree["stimulus"].sel(input="x").values  # (time, sample)
    want = stim.value.reshape(3, -1).mean(dim=1).numpy()
    np.testing.assert_allclose(course[on], np.broadcast_to(want, (on.sum(), 3)), rtol=1e-6)
    assert np.all(course[~on] == 0)
    assert tree["stimulus"].attrs["units"] == "a.u."
    assert list(tree["contrast"].values) == [0.25, 0.5, 1.0]
    assert list(tree["A"]["label"].values) == ["low", "mid", "high"]
    assert tree["time"].attrs["units"] == "ms"


def test_conditions_must_label_every_sample():
    with pytest.raises(dn.ConfigurationError, match="condition 'contrast'.*batch 3"):
        dn.simulate(small_net(), pulse(contrast=[0.1, 0.2]), t_end=2.0, dt=0.5, progress=False)
    with pytest.raises(dn.ConfigurationError, match="condition names"):
        dn.simulate(small_net(), pulse(time=[1, 2, 3]), t_end=2.0, dt=0.5, progress=False)


def test_config_and_versions_are_json_attributes(tmp_path):
    run = dn.simulate(small_net(), pulse(), t_end=4.0, dt=0.5, solver=dn.solvers.Euler(order="sequential"),
                      store=tmp_path / "c.zarr", progress=False, attrs={"experiment": "unit test"})
    attrs = run.tree.attrs
    cfg = json.loads(attrs["config"])
    pops = {p["name"]: p for p in cfg["model"]["populations"]}
    assert pops["A"]["tau"] == 4.0 and pops["A"]["shape"] == [3, 4, 4] and "ReLU" in pops["A"]["phi"]
    delays = {(c["src"], c["dst"]): c["delay"] for c in cfg["model"]["connections"]}
    assert delays == {("x", "A"): 0.0, ("A", "A"): 1.0, ("A", "B"): 0.5}
    assert cfg["solver"]["name"] == "euler" and cfg["solver"]["options"] == {"order": "sequential"}
    assert cfg["dt"] == 0.5 and attrs["dt"] == 0.5 and attrs["solver"] == "euler"
    assert cfg["stimulus"]["breakpoints"] == [2.0, 8.0]
    assert dn.archive.archive_config(run.tree) == cfg
    assert attrs["dynode_version"] == dn.__version__ and attrs["torch_version"] == torch.__version__
    assert attrs["experiment"] == "unit test" and len(attrs["run_id"]) == 32
    assert attrs["run_id"] == run.run_id


def test_existing_store_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "r.zarr"
    net, stim = small_net(), pulse()
    first = dn.simulate(net, stim, t_end=2.0, dt=0.5, store=path, progress=False)
    with pytest.raises(dn.ConfigurationError, match="already exists; pass overwrite=True"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, store=path, progress=False)
    second = dn.simulate(net, stim, t_end=3.0, dt=0.5, store=path, overwrite=True, progress=False)
    assert second.run_id != first.run_id
    assert dn.open_archive(path).attrs["run_id"] == second.run_id
    assert dn.open_archive(path).sizes["time"] == 7
    other = tmp_path / "not_a_store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(dn.ConfigurationError, match="not a zarr store; refusing"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, store=other, overwrite=True, progress=False)
    assert (other / "precious.txt").exists()


def test_configuration_errors_create_no_store(tmp_path):
    path = tmp_path / "never.zarr"
    with pytest.raises(dn.DelayError, match="A -> A"):
        dn.simulate(small_net(), pulse(), t_end=3.0, dt=0.3, store=path, progress=False)
    with pytest.raises(dn.ConfigurationError, match=r"Record\(every=0.75\) is not a multiple of dt = 0.5"):
        dn.simulate(small_net(), pulse(), t_end=3.0, dt=0.5, record=dn.Record(every=0.75),
                    store=path, progress=False)
    assert not path.exists()


class Failing(Stimulus):
    """A constant input that raises ``error`` when asked for t >= ``at``."""

    def __init__(self, value, at, error):
        self.value, self.at, self.error = value, at, error
        self.breakpoints, self.conditions = (), {}

    def __call__(self, t):
        if t >= self.at:
            raise self.error
        return self.value

    def to(self, device=None, dtype=None):
        return Failing(self.value.to(device=device, dtype=dtype), self.at, self.error)


@pytest.mark.parametrize("error, status", [
    (RuntimeError("sensor unplugged"), "failed: RuntimeError: sensor unplugged"),
    (KeyboardInterrupt(), "failed: KeyboardInterrupt (the run was interrupted)"),
])
def test_an_exception_keeps_the_computed_steps_and_marks_failure(tmp_path, error, status):
    net = small_net()
    x = torch.rand(3, 2, 4, 4)
    path = tmp_path / "f.zarr"
    with pytest.raises(type(error)):
        dn.simulate(net, Failing(x, 5.0, error), t_end=10.0, dt=0.5, store=path, chunk_steps=4,
                    progress=False)
    with pytest.warns(dn.archive.IncompleteArchiveWarning, match="failed"):
        tree = dn.open_archive(path)
    assert tree.attrs["status"] == status
    sol = reference(net, dn.stimuli.Constant(x), t_end=4.5, dt=0.5)
    # every state before the failing step was written, including the partial last block
    n = tree.sizes["time"]
    assert n == tree.attrs["steps_written"] == len(sol.ts)
    np.testing.assert_array_equal(tree["A"]["rate"].values, sol.states["A"].numpy())


def test_in_memory_failure_raises_and_custom_fields_record(f64):
    from fields import ScalarDDE

    run = dn.simulate(ScalarDDE(), None, t_end=2.0, dt=0.01, solver="rk4",
                      record=dn.Record(every=1.0, dtype="float64"), progress=False)
    r = run.tree["r"]["rate"].sel(channel=0, sample=0).values
    np.testing.assert_allclose(r, [1.0, -1 + 2 / np.e, 1 + 2 / np.e ** 2 - 4 / np.e], atol=1e-7)
    assert "stimulus" not in run.tree.data_vars


def test_storage_dtype_float16():
    net, stim = small_net(), pulse()
    run = dn.simulate(net, stim, t_end=4.0, dt=0.5, record=dn.Record(dtype="float16"), progress=False)
    sol = reference(net, stim, t_end=4.0, dt=0.5)
    assert run.tree["A"]["rate"].dtype == np.float16
    np.testing.assert_array_equal(run.tree["A"]["rate"].values, sol.states["A"].half().numpy())


def test_progress_bar_only_when_asked(capsys):
    net, stim = small_net(), pulse()
    dn.simulate(net, stim, t_end=4.0, dt=0.5, progress=False)
    assert capsys.readouterr().err == ""
    dn.simulate(net, stim, t_end=4.0, dt=0.5, progress=True)
    assert "step" in capsys.readouterr().err
    dn.simulate(net, stim, t_end=4.0, dt=0.5)  # default: stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""


def test_invalid_arguments():
    net, stim = small_net(), pulse()
    with pytest.raises(dn.ConfigurationError, match="chunk_steps"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, chunk_steps=0)
    with pytest.raises(dn.ConfigurationError, match="record must be a dynode.Record"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, record={"every": 1.0})
    with pytest.raises(dn.ConfigurationError, match="compression"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, compression="gzip")
    with pytest.raises(dn.ConfigurationError, match="store must be a path"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, store=123)
    with pytest.raises(dn.ConfigurationError, match="JSON-serialisable"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, attrs={"x": object()})
    with pytest.raises(dn.ConfigurationError, match=r"\['status'\] would overwrite"):
        dn.simulate(net, stim, t_end=2.0, dt=0.5, attrs={"status": "fine"})


@settings(max_examples=15, deadline=None)
@given(channels=st.integers(1, 3), side=st.integers(1, 4), units=st.integers(1, 4),
       every_steps=st.integers(1, 3), reduce=st.sampled_from([None, "mean", "std", "mean_std"]),
       chunk=st.integers(1, 5), data=st.data())
def test_recorded_values_match_integrate(channels, side, units, every_steps, reduce, chunk, data):
    net = small_net(channels=channels, side=side, units=units)
    stim = pulse(batch=2, side=side)
    select = {}
    if data.draw(st.booleans()):
        select["A"] = {"channel": data.draw(st.lists(st.integers(0, channels - 1), min_size=1,
                                                     max_size=channels, unique=True))}
    if data.draw(st.booleans()):
        select["B"] = {"channel": data.draw(st.lists(st.integers(0, units - 1), min_size=1,
                                                     max_size=units, unique=True))}
    rec = dn.Record(every=0.5 * every_steps, reduce=reduce, select=select or None)
    run = dn.simulate(net, stim, t_end=5.0, dt=0.5, record=rec, chunk_steps=chunk, progress=False)
    sol = reference(net, stim, t_end=5.0, dt=0.5, save_at=0.5 * every_steps)
    np.testing.assert_array_equal(run.tree["time"].values, sol.ts.numpy())
    for name in ("A", "B"):
        x = sol.states[name]  # (T, batch, *shape)
        if name in select:
            x = x.index_select(2, torch.tensor(select[name]["channel"]))
        units_axes = tuple(range(2, x.dim()))
        want = {None: x, "mean": x.mean(units_axes), "std": x.std(units_axes, correction=0),
                "mean_std": torch.stack(torch.std_mean(x, units_axes, correction=0)[::-1], dim=2)}[reduce]
        got = run.tree[name]["rate"]
        np.testing.assert_allclose(got.values, want.numpy(), rtol=1e-6, atol=1e-7)
        if reduce is None and name in select:
            assert list(got["channel"].values) == select[name]["channel"]
        if reduce == "mean_std":
            assert list(got["statistic"].values) == ["mean", "std"]


def test_adaptive_like_solvers_need_every():
    class AnyTime(dn.solvers.Solver):
        """A stand-in for an adaptive solver: no grid, serves any save time."""

        adaptive = True

        def solve(self, problem, dt, *, observer=None):
            return dn.solvers.RK4().solve(problem, 0.25, observer=observer)

    with pytest.raises(dn.ConfigurationError, match="no fixed step grid: give Record\\(every=...\\)"):
        dn.simulate(small_net(), pulse(), t_end=2.0, solver=AnyTime(), progress=False)
    run = dn.simulate(small_net(), pulse(), t_end=2.0, solver=AnyTime(), record=dn.Record(every=0.5),
                      progress=False)
    assert list(run.tree["time"].values) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert "dt" not in run.tree.attrs and json.loads(run.tree.attrs["config"])["solver"]["adaptive"]


def test_result_indexing_and_lazy_tree(tmp_path):
    run = dn.simulate(small_net(), pulse(), t_end=2.0, dt=0.5, store=tmp_path / "l.zarr", progress=False)
    rate = run["A"]
    assert rate.dims == ("time", "sample", "channel", "y", "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # stored trees are lazy: nothing loaded until asked
        assert not run.tree["A"]["rate"].variable._in_memory
    assert run.path == tmp_path / "l.zarr"


def test_t0_initial_state_and_batch_size_are_passed_through():
    net = small_net()
    x = torch.rand(2, 4, 4)  # one input shared by the batch
    init = {"A": torch.rand(3, 4, 4), "B": torch.rand(4, 5)}
    kw = dict(t0=5.0, t_end=9.0, dt=0.5, initial_state=init, batch_size=4)
    run = dn.simulate(net, dn.stimuli.Constant(x), progress=False, **kw)
    sol = reference(net, dn.stimuli.Constant(x), **kw)
    assert run.tree["time"].values[0] == 5.0 and run.tree.sizes["sample"] == 4
    np.testing.assert_array_equal(run.tree["B"]["rate"].values, sol.states["B"].numpy())
    np.testing.assert_array_equal(run.tree["B"]["rate"].values[0], init["B"].numpy())


def test_a_solver_that_reuses_its_state_tensors_is_caught():
    """Solvers declaring fresh_states hand over tensors that are kept by reference until
    written; one that overwrites them in place must fail loudly, not store wrong data."""

    class Reusing(dn.solvers.Solver):
        fresh_states = True
        grid = True

        def solve(self, problem, dt, *, observer=None):
            bufs = {k: v.clone() for k, v in problem.y0.items()}

            def reuse(t, state):
                for k, v in state.items():
                    bufs[k].copy_(v)
                observer(t, bufs)

            return dn.solvers.Euler().solve(problem, dt, observer=reuse)

    with pytest.raises(dn.DynodeError, match="modified a saved state in place"):
        dn.simulate(small_net(), pulse(), t_end=4.0, dt=0.5, solver=Reusing(), chunk_steps=4,
                    progress=False)
    # the same solver without the declaration is copied step by step and records correctly
    Reusing.fresh_states = False
    run = dn.simulate(small_net(), pulse(), t_end=4.0, dt=0.5, solver=Reusing(), chunk_steps=4,
                      progress=False)
    sol = reference(small_net(), pulse(), t_end=4.0, dt=0.5)
    np.testing.assert_array_equal(run.tree["A"]["rate"].values, sol.states["A"].numpy())
