"""The bad-input sweep (issue 13): whatever a user passes, dynode either runs or raises a
:class:`dynode.DynodeError` subclass that names what to change, before the first step, and
touches no file outside the path it was asked to write; the CLI exits 2 with one line.

Hypothesis draws combinations of good and bad values for ``integrate``, ``Network``
building, the solver constructors and ``Record``/``simulate``; configs and the CLI are
parametrized cases. Evaluations are counted with an operator that counts its calls, so "before
the first step" is checked, not assumed.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pydantic
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dynode as dn
from dynode.cli import main
from dynode.errors import CheckpointError, ConfigurationError, DynodeError

SWEEP = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NAN, INF = math.nan, math.inf


class Counting(nn.Module):
    """The identity that counts its calls: the field's evaluations."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def counted_net(tau: float = 50.0, delay: float = 2.0) -> tuple[dn.Network, Counting]:
    """x -> r (counted identity) with a delayed linear self-connection; slow enough (tau 50 ms)
    that no step size of the sweep diverges."""
    op = Counting()
    net = dn.Network()
    net.add_input("x", shape=(3,))
    net.add_population("r", shape=(3,), tau=tau, phi="identity")
    net.connect("x", "r", op)
    net.connect("r", "r", nn.Linear(3, 3), delay=delay)
    op.calls = 0  # building may try the operator on a sample
    return net, op


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            s = p.lstat()
            out[str(p.relative_to(root))] = (s.st_size if name in filenames else 0, s.st_mtime_ns)
    return out


def runs_or_refuses(call, counter: Counting | None = None):
    """``call()`` either returns or raises a DynodeError before the counted field ran."""
    before = counter.calls if counter is not None else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except DynodeError as exc:
            assert str(exc), "a DynodeError without a message"
            if counter is not None:
                assert counter.calls == before, f"refused only after {counter.calls - before} evaluations: {exc}"
            return exc


# -- integrate ----------------------------------------------------------------------------------
GOOD_STIMULI = [torch.ones(3), torch.ones(2, 3), {"x": torch.ones(3)}, torch.ones(3, dtype=torch.float64),
                dn.stimuli.Pulse(1.0, 2.0, torch.ones(2, 3))]
BAD_STIMULI = [torch.ones(4), torch.ones(2, 4), {"y": torch.ones(3)}, torch.tensor([1.0, NAN, 0.0]),
               torch.ones(3, dtype=torch.int64), torch.ones(3, device="meta"), "image", 3.0, None,
               lambda t: torch.ones(3), dn.stimuli.Pulse(1.0, 2.0, torch.full((3,), INF))]
# (good values, bad values) per argument: each example runs a good call with one or two arguments
# replaced by bad ones, so every bad value is tried in many contexts and good calls run too
INTEGRATE = {
    "stimulus": (GOOD_STIMULI, BAD_STIMULI),
    "dt": ([1.0, 0.5, 2.0], [0, -1.0, NAN, INF, True, "1", 0.3, 1e-300, [1.0], torch.tensor([1.0, 2.0])]),
    "t_end": ([4.0, 8.0], [0.0, -1.0, NAN, INF, "4", None, True, 3.7]),
    "t0": ([0.0, 2.0], [NAN, "a", None, INF]),
    "save_at": ([None, 2.0, [0.0, 2.0, 2.5], torch.tensor([1.0, 2.0])],
                [[], [2.0, 1.0], [NAN], [0.0, INF], INF, -1.0, [0.0, 100.0], "x", {1.0}, 0.0]),
    "batch_size": ([None, 2], [0, -1, True, 2.0, "2", 3]),
    "max_abs": ([1e6, None], [0, -1.0, NAN, True, "1"]),
    "check_every": ([50, 1], [0, True, 2.5, None]),
    "solver": (["euler", "rk4", "heun", "midpoint", dn.solvers.Euler(order="sequential"), "dopri5"],
               ["rk5", None, 3, dn.solvers.RK4, "Euler "]),
    "initial_state": ([None, {"r": torch.zeros(3)}, {"r": torch.zeros(2, 3)}, {"r": torch.zeros(3, dtype=torch.float64)},
                       {"r": 0.5}],
                      [{"q": torch.zeros(3)}, {"r": torch.zeros(5)}, {"r": torch.zeros(3, 3)},
                       {"r": torch.full((3,), NAN)}, {"r": "zero"}, "abc", 3, [torch.zeros(3)]]),
    "checkpoint": ([None, True, 2], [0, -1, 2.5, "2"]),
    "dense": ([False, True], [1, "yes", None]),
    "memory_limit": ([None, INF, 1e12], [0, -1.0, NAN, "1", 1]),
}


def one_bad(table: dict, n_bad: int = 2):
    """Good values for every argument, then up to ``n_bad`` of them replaced by bad ones."""
    @st.composite
    def draw(draw_):
        kw = {k: draw_(st.sampled_from(good)) for k, (good, _) in table.items()}
        for key in draw_(st.lists(st.sampled_from(sorted(table)), max_size=n_bad, unique=True)):
            kw[key] = draw_(st.sampled_from(table[key][1]))
        return kw
    return draw()


@SWEEP
@given(one_bad(INTEGRATE))
def test_integrate_runs_or_refuses_before_the_first_step(kwargs):
    net, op = counted_net()
    stimulus = kwargs.pop("stimulus")
    runs_or_refuses(lambda: dn.integrate(net, stimulus, **kwargs), op)


# -- building ---------------------------------------------------------------------------------
NAMES = st.sampled_from(["x", "r", "V1", "", "a b", 3, None, "r.x"])
SHAPES = st.sampled_from([(3,), (3,), (2, 4, 4), (), (0,), (-1,), "3", (2.5,), None, 3, [3]])
TAUS = st.sampled_from([5.0, 5.0, 0.0, -1.0, NAN, INF, "5", True, None, torch.tensor([5.0, 6.0, 7.0])])
PHIS = st.sampled_from(["relu", "identity", None, "rleu", 3, nn.ReLU(), nn.Linear(3, 3), lambda u: u])
DELAYS = st.sampled_from([0.0, 2.0, -1.0, NAN, INF, "1", None, True])
OPS = st.sampled_from([None, nn.Linear(3, 3), nn.Linear(4, 3), nn.Conv2d(2, 2, 3), "linear", 3])


@SWEEP
@given(NAMES, SHAPES, NAMES, SHAPES, TAUS, PHIS, NAMES, NAMES, OPS, DELAYS)
def test_network_building_runs_or_refuses(in_name, in_shape, name, shape, tau, phi, src, dst, op, delay):
    net = dn.Network()
    runs_or_refuses(lambda: net.add_input(in_name, shape=in_shape))
    runs_or_refuses(lambda: net.add_population(name, shape=shape, tau=tau, phi=phi))
    runs_or_refuses(lambda: net.connect(src, dst, op, delay=delay))


# -- solver constructors ------------------------------------------------------------------------
TOLS = st.sampled_from([1e-6, 1e-6, 0.0, -1.0, NAN, INF, "1e-6", True, None])


@SWEEP
@given(TOLS, TOLS, st.sampled_from([1e-10, 0.0, -1.0, NAN, INF, "0"]),
       st.sampled_from([INF, 1.0, 0.0, -1.0, NAN]), st.sampled_from([100_000, 0, -1, 2.5, True, INF]),
       st.sampled_from([0.9, 0.0, 1.5, NAN]), st.sampled_from(["integral", "pi", "pid", 3]))
def test_adaptive_constructors_refuse_at_construction(rtol, atol, dt_min, dt_max, max_steps, safety, controller):
    for cls in (dn.solvers.Dopri5, dn.solvers.Tsit5, dn.solvers.Bosh3):
        runs_or_refuses(lambda: cls(rtol=rtol, atol=atol, dt_min=dt_min, dt_max=dt_max, max_steps=max_steps,
                                    safety=safety, controller=controller))


@SWEEP
@given(st.sampled_from(["dopri5", "tsit5", "heun", "euler", "rk45", 3, None]), TOLS, TOLS,
       st.sampled_from([None, 10, 0, -1, 2.5, True]), st.sampled_from([None, 1e-8, -1.0, NAN]),
       st.sampled_from([16, 2, 0, "16", 3.5]), st.sampled_from([False, True, "yes"]))
def test_backend_constructors_refuse_at_construction(method, rtol, atol, max_steps, dt_min, n_dense, per_sample):
    runs_or_refuses(lambda: dn.solvers.TorchODE(method, rtol, atol, max_steps=max_steps, dt_min=dt_min,
                                                n_dense=n_dense, per_sample=per_sample))
    runs_or_refuses(lambda: dn.solvers.TorchDiffEq(method, rtol, atol, n_dense=n_dense))
    runs_or_refuses(lambda: dn.solvers.TorchDiffEq("dopri5", rtol, atol, max_num_steps=max_steps, min_step=dt_min))
    runs_or_refuses(lambda: dn.solvers.Euler(order=method))


# -- Record and simulate --------------------------------------------------------------------------
RECORD = {
    "populations": ([None, ["r"], "r"], [["q"], [], [3], "x", 3]),
    "reduce": ([None, "mean", "mean_std"], ["median", 3]),
    "every": ([None, 1.0, 2.0], [0.3, 0.0, -1.0, NAN, INF, "1"]),
    "start": ([None, 0.0, 1.0], [0.5, -1.0, 100.0, NAN, "0"]),
    "stop": ([None, 4.0, 2.0], [0.0, 100.0, NAN, INF]),
    "dtype": (["float32", "float16", "float64"], ["int8", "double", None]),
}
SIMULATE = {
    "dt": ([1.0, 0.5], [NAN, INF, 0.0, None, "1", True]),
    "t_end": ([4.0], [0.0, NAN, "4", 3.7]),
    "solver": (["euler", "rk4", "dopri5"], ["rk5", 3]),
    "store": (["new", None], ["file", "under_file", "folder", 3]),
    "chunk_steps": ([None, 2], [0, True, -1]),
    "compression": (["lz4", None, "zstd"], ["gzip"]),
    "stimulus": (GOOD_STIMULI, BAD_STIMULI),
    "attrs": ([None, {"experiment": "sweep"}], [3, {"status": "x"}, {"a": object()}]),
}


@SWEEP
@given(one_bad(RECORD, 1), one_bad(SIMULATE))
def test_record_and_simulate_refuse_before_the_first_step_and_touch_no_other_file(tmp_path_factory, record, kwargs):
    root = tmp_path_factory.mktemp("sim")
    (root / "notes.txt").write_text("keep me")
    (root / "folder").mkdir()
    (root / "folder" / "data.bin").write_bytes(b"precious")
    kwargs["store"] = {"new": root / "run.zarr", "file": root / "notes.txt", "folder": root / "folder",
                       "under_file": root / "notes.txt" / "r.zarr", None: None}.get(kwargs["store"], kwargs["store"])
    before = snapshot(root)
    net, op = counted_net()
    rec = runs_or_refuses(lambda: dn.Record(**record))
    if isinstance(rec, DynodeError):
        return
    stimulus = kwargs.pop("stimulus")
    res = runs_or_refuses(lambda: dn.simulate(net, stimulus, record=rec, progress=False, overwrite=True, **kwargs), op)
    after = snapshot(root)
    if isinstance(res, DynodeError) or kwargs["store"] is None:
        assert after == before, f"a refused or in-memory run changed files: {res}"
    else:  # a run: only its store changed
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert all(k == "run.zarr" or k.startswith("run.zarr" + os.sep) for k in changed), changed
    assert (root / "notes.txt").read_text() == "keep me" and (root / "folder" / "data.bin").read_bytes() == b"precious"


# -- the named cases of issue 13 --------------------------------------------------------------------
def linear_net(dtype=torch.float32) -> dn.Network:
    net = dn.Network()
    net.add_input("x", shape=(3,))
    net.add_population("r", shape=(3,), tau=5.0)
    net.connect("x", "r", nn.Linear(3, 3).to(dtype))
    return net


def test_dtype_mismatches_are_named_or_converted():
    """torch's 'mat1 and mat2 must have the same dtype' becomes an error naming the parameters or
    the input; a float64 stimulus or initial state is converted to the model's dtype."""
    net = linear_net()
    net.connect("r", "r", nn.Linear(3, 3).double(), delay=1.0)
    with pytest.raises(ConfigurationError, match=r"parameters do not share one dtype.*float64.*net.to\(torch.float32\)"):
        dn.integrate(net, torch.ones(3), t_end=2.0, dt=1.0)
    with pytest.raises(ConfigurationError, match=r"stimulus input 'x' at t = 0 ms is int64 on cpu, but the model "
                                                 r"runs in float32"):
        dn.integrate(linear_net(), torch.ones(3, dtype=torch.int64), t_end=2.0, dt=1.0)
    sol = dn.integrate(linear_net(), torch.ones(3, dtype=torch.float64), t_end=2.0, dt=1.0,
                       initial_state={"r": torch.zeros(3, dtype=torch.float64)})
    assert sol.states["r"].dtype == torch.float32


def test_meta_tensors_and_absent_devices_are_named():
    with pytest.raises(ConfigurationError, match=r"parameter 'populations.r.incoming.x.weight' is on the meta device"):
        dn.integrate(linear_net().to("meta"), torch.ones(3), t_end=2.0, dt=1.0)
    with pytest.raises(ConfigurationError, match=r"the stimulus cannot be moved to the model's device"):
        dn.integrate(linear_net(), torch.ones(3, device="meta"), t_end=2.0, dt=1.0)
    from dynode.train import Trainer, TrainingConfig

    net = dn.models.dyrcnn(depth=2, input_shape=(1, 8, 8), num_classes=3, steps=2, width=0.1)
    with pytest.raises(pydantic.ValidationError, match=r"device 'gpu' is not a torch device"):
        TrainingConfig(device="gpu")
    with pytest.raises(ConfigurationError, match=r"device 'meta' holds no values"):
        Trainer(net, TrainingConfig(device="meta"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match=r"no usable CUDA device.*use device 'cpu'"):
            Trainer(net, TrainingConfig(device="cuda"), progress=False)


def test_nan_save_at_and_a_bool_batch_size_are_refused():
    net, op = counted_net()
    for kwargs, match in [(dict(save_at=[0.0, NAN, 2.0]), r"save_at holds nan"),
                          (dict(save_at=INF), r"save_at as a number .* got inf"),
                          (dict(batch_size=True), r"batch_size must be a positive int, got True"),
                          (dict(check_every=True), r"check_every must be a positive int")]:
        with pytest.raises(ConfigurationError, match=match):
            dn.integrate(net, torch.ones(3), t_end=4.0, dt=1.0, **kwargs)
    assert op.calls == 0


@pytest.mark.parametrize("solver", [dn.solvers.Dopri5(), dn.solvers.TorchDiffEq("dopri5"),
                                    dn.solvers.TorchODE("tsit5"), "rk4"])
def test_a_nan_input_or_weight_is_named_before_any_solver_runs(solver):
    """Not 'underflow in dt' nor a bare torchode status: the input or parameter, before a step."""
    net, op = counted_net()
    with pytest.raises(ConfigurationError, match=r"stimulus input 'x' has NaN or inf values at t = 0 ms"):
        dn.integrate(net, torch.tensor([1.0, NAN, 0.0]), t_end=4.0, dt=1.0, solver=solver)
    late = dn.stimuli.Pulse(2.0, 1.0, torch.tensor([1.0, INF, 0.0]))  # checked at its onset too
    with pytest.raises(ConfigurationError, match=r"stimulus input 'x' has NaN or inf values at t = 2 ms"):
        dn.integrate(net, late, t_end=4.0, dt=1.0, solver=solver)
    with torch.no_grad():
        net.populations["r"].incoming["r"].weight[0, 0] = NAN
    with pytest.raises(ConfigurationError, match=r"parameter 'populations.r.incoming.r.weight' of the field has NaN"):
        dn.integrate(net, torch.ones(3), t_end=4.0, dt=1.0, solver=solver)
    assert op.calls == 0


class _Log(nn.Module):
    def forward(self, u):
        return torch.log(u)  # NaN once u < 0: finite inputs and weights, a field that fails mid-run


@pytest.mark.parametrize("solver", [dn.solvers.TorchDiffEq("dopri5"), dn.solvers.TorchODE("tsit5")])
def test_a_backend_failure_names_the_population_and_time(solver):
    """Not only 'underflow in dt' or a torchode status: the population and the time, as Dopri5."""
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("V1", shape=(2,), tau=5.0, phi=_Log())
    net.connect("x", "V1")
    with pytest.raises(dn.SolverError, match=r"\(population 'V1' became non-finite at t = [\d.e+-]+ ms\)") as info:
        dn.integrate(net, -torch.ones(2), t_end=10.0, solver=solver)
    assert info.value.population == "V1"


def test_an_infinite_dt_is_not_blamed_on_record_start():
    net, op = counted_net()
    with pytest.raises(ConfigurationError, match=r"^dt must be a finite number > 0 ms, got inf"):
        dn.simulate(net, torch.ones(3), t_end=4.0, dt=INF, record=dn.Record(start=0.0), progress=False)
    assert op.calls == 0


def test_a_failed_convergence_row_is_flagged_and_warned():
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("r", shape=(1,), tau=1.0, phi="identity")
    net.connect("x", "r")
    with pytest.warns(dn.StabilityWarning) as rec:
        ds = dn.convergence(net, torch.ones(1, 1), t_end=300.0, dts=[3.0, 1.0], solvers=["euler"], grid=3.0)
    # Euler says why before it diverges (dt = 3 > tau = 1), then the study sums up
    assert [str(w.message).split(":")[0] for w in rec] == ["Euler", "convergence"]
    assert "1 of 2 solves failed and are recorded as inf" in str(rec[-1].message)
    assert ds["failed"].sel(solver="euler").values.tolist() == [True, False]
    assert math.isinf(float(ds["max_abs_error"].sel(solver="euler", dt=3.0).max()))


def test_malformed_steps_written_is_an_archive_error(tmp_path):
    import json

    res = dn.simulate(linear_net(), torch.ones(3), t_end=2.0, dt=1.0, store=tmp_path / "a.zarr", progress=False)
    meta_file = res.path / "zarr.json"
    for bad in ("12", -1, 2.5, None):
        meta = json.loads(meta_file.read_text())
        meta["attributes"]["steps_written"] = bad
        meta_file.write_text(json.dumps(meta))
        with pytest.raises(dn.errors.ArchiveError, match=r"'steps_written' is .*not a count of steps"):
            dn.open_archive(res.path)
    meta_file.write_bytes(b"\xff\xfe{")
    with pytest.raises(dn.errors.ArchiveError, match=r"zarr.json' is not valid JSON"):
        dn.open_archive(res.path)


# -- training: checkpoints, data, optimizer, folders ---------------------------------------------------
def tiny_model(depth: int = 2) -> dn.Network:
    torch.manual_seed(0)
    return dn.models.dyrcnn(depth=depth, input_shape=(1, 8, 8), num_classes=3, steps=2, width=0.1)


def _data(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from dynode.train import Trainer, TrainingConfig

    folder = tmp_path_factory.mktemp("ck")
    Trainer(tiny_model(), TrainingConfig(epochs=1, batch_size=4), checkpoint_dir=folder, progress=False).fit(_data())
    return folder / "last.pt"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_bad_checkpoints_say_what_the_file_is(tmp_path, checkpoint):
    from dynode.train import Trainer, TrainingConfig, load_weights

    cfg = TrainingConfig(epochs=1, batch_size=4)
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    (tmp_path / "trunc.pt").write_bytes(checkpoint.read_bytes()[:1000])
    torch.save(tiny_model().state_dict(), tmp_path / "weights.pt")
    (tmp_path / "text.pt").write_text("hello")
    cases = [(tmp_path / "evil.pt", r"holds objects other than tensors.*unsupported GLOBAL posix.system.*weights_only=True"),
             (tmp_path / "trunc.pt", r"not a readable torch checkpoint \(truncated"),
             (tmp_path / "text.pt", r"not a readable torch checkpoint"),
             (tmp_path, r"is a folder, not a checkpoint file"),
             (tmp_path / "weights.pt", r"is a plain state_dict \(weights only\), not a training checkpoint.*load_weights")]
    for path, match in cases:
        with pytest.raises(CheckpointError, match=match):
            Trainer(tiny_model(), cfg, progress=False).resume(path)
    with pytest.raises(CheckpointError, match=r"do not fit this network \(\d+ weights missing, e.g. 'populations\."):
        Trainer(tiny_model(depth=4), cfg, progress=False).resume(checkpoint)
    with pytest.raises(CheckpointError, match=r"do not fit this network"):
        load_weights(tiny_model(depth=4), tmp_path / "weights.pt")
    net = load_weights(tiny_model(), checkpoint)  # a checkpoint's weights load as weights
    assert net is not None


def test_training_data_and_labels_are_checked_before_the_first_batch(tmp_path):
    from dynode.train import Trainer, TrainingConfig

    x, y = _data()
    x_nan = x.clone()
    x_nan[5, 0, 0, 0] = NAN
    cfg = TrainingConfig(epochs=1, batch_size=4)
    for data, match in [((x_nan, y), r"training data: NaN or inf pixels"),
                        ((x, y + 3), r"labels range over 3..5, but the readout has 3 classes"),
                        ((x, y - 3), r"labels range over -3..-1"),
                        ((x, y.float()), r"labels are float32; they must be integer class indices")]:
        net = tiny_model()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(ConfigurationError, match=match):
            Trainer(net, cfg, checkpoint_dir=tmp_path, progress=False).fit(data)
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # no step taken
    assert not (tmp_path / "last.pt").exists()


def test_an_optimizer_that_blows_the_weights_up_is_named():
    from dynode.train import Trainer, TrainingConfig

    with pytest.raises(pydantic.ValidationError, match="finite"):
        TrainingConfig(lr=INF)
    with pytest.raises(DynodeError, match=r"(optimizer step 1 .* made the weights NaN/inf.*lower training.lr)|"
                                          r"(after 1 optimizer steps with sgd lr=1e\+30.*lower training.lr)"):
        Trainer(tiny_model(), TrainingConfig(epochs=1, batch_size=4, lr=1e30, optimizer="sgd"),
                progress=False).fit(_data())


def test_checkpoint_and_log_folders_are_checked_before_the_first_epoch(tmp_path):
    from dynode.train import Trainer, TrainingConfig

    (tmp_path / "file").write_text("x")
    cfg = TrainingConfig(epochs=1, batch_size=4)
    with pytest.raises(ConfigurationError, match=r"checkpoint_dir .*file' is a file, not a folder"):
        Trainer(tiny_model(), cfg, checkpoint_dir=tmp_path / "file" / "ck", progress=False)
    with pytest.raises(ConfigurationError, match=r"log's folder .*file' is a file, not a folder"):
        Trainer(tiny_model(), cfg, log=tmp_path / "file" / "log.jsonl", progress=False)
    with pytest.raises(ConfigurationError, match=r"log .* is a folder"):
        Trainer(tiny_model(), cfg, log=tmp_path, progress=False)


# -- configs and the CLI ------------------------------------------------------------------------------
SMALL = {"output": "out", "t_end": 4.0, "model": {"name": "dyrcnn", "options": {"depth": 2, "width": 0.1, "steps": 2}},
         "data": {"n_train": 8, "n_test": 4, "size": 8}, "training": {"epochs": 1, "batch_size": 4}}


def _with(**changes) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(SMALL))
    for dotted, value in changes.items():
        node, *path, key = dotted.split(".")
        d = cfg.setdefault(node, {})
        for p in path:
            d = d.setdefault(p, {})
        d[key] = value
    return cfg


BAD_CONFIGS = {
    "typo_in_options": _with(**{"model.options.depht": 2}),
    "missing_weights": _with(**{"model.weights": "nope.pt"}),
    "two_dim_input_shape": _with(**{"model.options.input_shape": [8, 8]}),
    "unknown_record_population": _with(**{"record.populations": ["V9"]}),
    "dt_inf": _with(**{"model.options.dt": 2.0}) | {"dt": INF},
    "lr_inf": _with(**{"training.lr": INF}),
    "device_gpu": _with(**{"training.device": "gpu"}),
}
BAD_FILES = {
    "invalid_utf8": b"model:\n  name: \xff\xfe dyrcnn\n",
    "deep_nesting": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "not_yaml": b"model: [unclosed\n",
    "a_list": b"- model\n- data\n",
    "duplicate_key": b"model: {name: dyrcnn}\nmodel: {name: cornet_rt}\n",
}


def _write_bad(tmp_path: Path, case: str) -> Path:
    if case in BAD_CONFIGS:
        p = tmp_path / f"{case}.yaml"
        p.write_text(yaml.safe_dump(BAD_CONFIGS[case]).replace("inf", ".inf"))
    elif case in BAD_FILES:
        p = tmp_path / f"{case}.yaml"
        p.write_bytes(BAD_FILES[case])
    elif case == "a_folder":
        p = tmp_path / "configs"
        p.mkdir()
    else:  # missing
        p = tmp_path / "missing.yaml"
    return p


ALL_CASES = list(BAD_CONFIGS) + list(BAD_FILES) + ["a_folder", "missing"]


@pytest.mark.parametrize("case", list(BAD_FILES) + ["a_folder"])
def test_config_files_that_cannot_be_read_are_dynode_errors(tmp_path, case):
    from dynode.config import load_config

    with pytest.raises((DynodeError, pydantic.ValidationError)) as info:
        load_config(_write_bad(tmp_path, case))
    assert "Traceback" not in str(info.value)


def _cli(argv, capsys) -> tuple[int, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err.splitlines()


@pytest.mark.parametrize("case", ALL_CASES)
def test_config_check_catches_what_the_run_would_in_one_line(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    path = _write_bad(tmp_path, case)
    before = snapshot(tmp_path)
    rc, lines = _cli(["config", "check", path], capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("dynode config: error: "), lines
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["train", "simulate", "convergence"])
@pytest.mark.parametrize("case", ["typo_in_options", "missing_weights", "two_dim_input_shape", "invalid_utf8",
                                  "deep_nesting", "a_folder", "lr_inf"])
def test_run_commands_exit_2_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, command, case):
    monkeypatch.chdir(tmp_path)
    path = _write_bad(tmp_path, case)
    before = snapshot(tmp_path)
    rc, lines = _cli([command, path], capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"dynode {command}: error: "), lines
    assert snapshot(tmp_path) == before


def test_cli_resume_and_weights_from_bad_checkpoints_exit_2(tmp_path, monkeypatch, capsys, checkpoint):
    monkeypatch.chdir(tmp_path)
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    torch.save(tiny_model(depth=4).state_dict(), tmp_path / "other.pt")
    for weights, match in [("evil.pt", "holds objects other than tensors"), ("other.pt", "do not fit this network")]:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(_with(**{"model.weights": weights})))
        rc, lines = _cli(["config", "check", "c.yaml"], capsys)
        assert rc == 2 and len(lines) == 1 and match in lines[0], lines
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(checkpoint.read_bytes()[:500])
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(_with()))
    rc, lines = _cli(["train", "t.yaml", "--out", out, "--resume"], capsys)
    assert rc == 2 and len(lines) == 1 and "not a readable torch checkpoint" in lines[0], lines


def test_simulate_without_weights_is_reproducible(tmp_path, monkeypatch, capsys):
    """Same config, same numbers: the model is seeded before it is built."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_with()))
    for out in ("a", "b"):
        torch.rand(3)  # whatever ran before
        assert _cli(["simulate", "s.yaml", "--out", out], capsys)[0] == 0
    a, b = dn.open_archive(tmp_path / "a" / "simulation.zarr"), dn.open_archive(tmp_path / "b" / "simulation.zarr")
    for pop in dn.archive.populations(a):
        assert (a[pop]["rate"] == b[pop]["rate"]).all()
