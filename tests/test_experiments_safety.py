"""Safe by default (issue 20): the experiments refuse bad arguments before the first evaluation
and before anything is written, and a run whose state cannot fit in memory is refused before
``init_state`` allocates it (:func:`dynode.integrate.require_memory`)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError, DynodeError, ShapeError
from dynode.experiments import groen2022_experiments, settle
from dynode.integrate import require_memory
from test_bad_input import INF, NAN, SWEEP, Counting, one_bad, runs_or_refuses, snapshot


def tiny_net() -> tuple[dn.Network, Counting]:
    """image (2, 2, 2) -> V1 (counted identity), with a 10 ms delayed self-connection of gain 0.5."""
    op = Counting()
    net = dn.Network()
    net.add_input("image", shape=(2, 2, 2))
    net.add_population("V1", shape=(2, 2, 2), tau=20.0, phi="relu")
    net.connect("image", "V1", op)
    rec = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        rec.weight.copy_(0.5 * torch.eye(2).reshape(2, 2, 1, 1))
    net.connect("V1", "V1", rec, delay=10.0)
    op.calls = 0
    return net, op


IMAGES = torch.rand(1, 2, 2, 2)


# -- finding 1: a background tensor of the wrong shape -------------------------------------------
def test_groen_background_of_the_wrong_shape_is_refused_before_anything_runs_or_is_written(tmp_path):
    net, op = tiny_net()
    before = snapshot(tmp_path)
    with pytest.raises(ShapeError, match=r"groen2022_experiments: background has shape \(5,\), expected one of "
                                         r"\['mean', 'blank', 'grey', 'gray'\].*broadcasts to one image "
                                         r"\(2, 2, 2\)"):
        groen2022_experiments(net, IMAGES, tmp_path / "out", dt=5.0, kinds=["contrast"],
                              background=torch.zeros(5))
    assert op.calls == 0 and snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    # the accepted shapes run: one value per channel, one image
    for i, bg in enumerate((torch.full((2, 1, 1), 0.2), torch.full((1, 2, 2, 2), 0.2))):
        out = tmp_path / f"ok{i}"
        paths = groen2022_experiments(net, IMAGES, out, dt=10.0, kinds=["contrast"], background=bg,
                                      settle_max=None, progress=False)
        assert paths["contrast"].exists()


# -- finding 2: settle's arguments ------------------------------------------------------------------
SETTLE_BAD = [
    (dict(dt=0), ConfigurationError, r"settle: dt must be a positive number of ms \(finite, > 0\), got 0"),
    (dict(dt=NAN), ConfigurationError, r"settle: dt must be a positive number"),
    (dict(dt="5"), ConfigurationError, r"settle: dt must be a positive number"),
    (dict(rtol=-1.0), ConfigurationError, r"settle: rtol must be a finite number >= 0"),
    (dict(rtol=INF), ConfigurationError, r"settle: rtol must be a finite number >= 0"),
    (dict(atol=0.0), ConfigurationError, r"settle: atol must be a positive number"),
    (dict(window=NAN), ConfigurationError, r"settle: window must be a positive number of ms"),
    (dict(window=200.0, max_time=100.0), ConfigurationError, r"max_time=100 ms is shorter than one window of 200 ms"),
    (dict(dt=3.0), ConfigurationError, r"window=100 ms is not a whole number of steps of dt=3 ms"),
    (dict(dt=1e-300), ConfigurationError, r"window=100 ms is 1e\+302 steps of dt=1e-300 ms, more than 1e\+07"),
    (dict(solver="rk5"), ConfigurationError, r"unknown solver 'rk5'"),
    (dict(background=torch.ones(5)), ShapeError,
     r"settle: background has shape \(5,\) for the input 'image'; expected \(batch, \*\(2, 2, 2\)\) or \(2, 2, 2\)"),
    (dict(background="mean"), ConfigurationError, r"settle: background .mean. is the screen around images: pass images="),
]


@pytest.mark.parametrize("bad, error, match", SETTLE_BAD)
def test_settle_checks_every_argument_before_the_first_evaluation(bad, error, match):
    net, op = tiny_net()
    kwargs = dict(background=torch.ones(1, 2, 2, 2), dt=5.0, max_time=200.0) | bad
    with pytest.raises(error, match=match):
        settle(net, **kwargs)
    assert op.calls == 0


# -- groen2022_experiments' other arguments ---------------------------------------------------------
GROEN_BAD = [
    (dict(dt=0), r"groen2022_experiments: dt must be a positive number"),
    (dict(kinds="contrast"), r"kinds must be a non-empty list .* e.g. kinds=\['contrast'\]"),
    (dict(kinds=[]), r"kinds must be a non-empty list"),
    (dict(kinds=["contrast", "contrast"]), r"names an experiment twice"),
    (dict(onset=-5.0), r"onset must be a positive number of ms \(the baseline before the stimulus\)"),
    (dict(onset=150.0, dt=20.0), r"the epoch \(onset \+ 1200 ms\)=1350 ms is not a whole number of steps of dt=20"),
    (dict(settle_max=50.0), r"settle_max=50 ms is shorter than one settling window \(100 ms\)"),
    (dict(settle_max=0.0), r"settle_max must be a positive number"),
    (dict(dt=8.0, onset=104.0), r"the settling window=100 ms is not a whole number of steps of dt=8"),
    (dict(overwrite="yes"), r"overwrite must be True or False"),
    (dict(images=torch.rand(1, 3, 2, 2)), r"images have shape \(1, 3, 2, 2\); the network's input 'image' "
                                          r"takes \(N, \*\(2, 2, 2\)\)"),
    (dict(background="meen"), r"background must be one of \['mean', 'blank', 'grey', 'gray'\].*got 'meen'"),
    (dict(background=torch.full((2, 1, 1), NAN)), r"background has NaN"),
    (dict(record=dn.Record(populations=["IT"])), r"unknown populations \['IT'\]"),
    (dict(record="mean"), r"record must be a dynode.Record"),
    (dict(solver="dopri5"), r"Record\(every=...\)"),
]


@pytest.mark.parametrize("bad, match", GROEN_BAD)
def test_groen_checks_its_arguments_before_anything_runs_or_is_written(tmp_path, bad, match):
    net, op = tiny_net()
    before = snapshot(tmp_path)
    kwargs = dict(images=IMAGES, dt=5.0, kinds=["contrast"], settle_max=200.0, progress=False) | bad
    with pytest.raises(DynodeError, match=match):
        groen2022_experiments(net, out_dir=tmp_path / "out", **kwargs)
    assert op.calls == 0 and snapshot(tmp_path) == before


def test_groen_refuses_an_existing_archive_of_a_later_kind_before_the_first_runs(tmp_path):
    net, op = tiny_net()
    (tmp_path / "groen2022-duration.zarr").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(ConfigurationError, match=r"groen2022-duration.zarr' already exists; pass overwrite=True"):
        groen2022_experiments(net, IMAGES, tmp_path, dt=5.0, kinds=["contrast", "duration"], settle_max=None)
    assert op.calls == 0 and snapshot(tmp_path) == before


# -- finding 3: a state that does not fit -------------------------------------------------------------
def watched_net() -> tuple[dn.Network, list]:
    """A tiny delayed net whose init_state calls on a real device are recorded."""
    net, _ = tiny_net()
    calls, init = [], net.init_state

    def init_state(batch_size, *, device=None, dtype=None):
        if str(device) != "meta":
            calls.append(batch_size)
        return init(batch_size, device=device, dtype=dtype)

    net.init_state = init_state
    return net, calls


PER_SAMPLE = 8 * 4  # (2, 2, 2) float32


@pytest.mark.parametrize("solver, copies, counted", [
    ("euler", 4, r"4 copies: the state, 1 stage\(s\) of Euler, 2 past states of the delay history "
                 r"\(max_delay 10 ms / dt 5 ms\)"),
    ("rk4", 10, r"10 copies: the state, 4 stage\(s\) of RK4, 2 past states and their derivatives"),
    ("dopri5", 8, r"8 copies: the state, 7 stage\(s\) of Dopri5; a lower bound\)"),
])
def test_a_batch_whose_state_cannot_fit_is_refused_before_init_state_allocates(solver, copies, counted):
    net, calls = watched_net()
    batch = 1000
    need = batch * PER_SAMPLE * copies
    x = torch.ones(2, 2, 2)  # one sample, expanded to the batch
    with pytest.raises(ConfigurationError, match=rf"the working state of batch 1000 \(3.05e-05 MiB per sample, "
                                                 rf"{counted}.* needs .* GiB but .* GiB are available on cpu "
                                                 r"\(the memory_limit given\); use a smaller batch"):
        dn.integrate(net, x, t_end=10.0, dt=5.0, solver=solver, batch_size=batch, save_at=[10.0],
                     memory_limit=need - 1)
    assert calls == []
    dn.integrate(net, x, t_end=10.0, dt=5.0, solver=solver, batch_size=batch, save_at=[10.0], memory_limit=need)
    assert calls == [batch]


def test_the_default_budget_is_the_free_memory_and_math_inf_turns_the_check_off():
    net, calls = watched_net()
    x = torch.ones(2, 2, 2)
    # 10^11 samples of 32 bytes x 4 copies: 12 TB, more than any machine running the tests has free
    with pytest.raises(ConfigurationError, match=r"batch 100000000000 .* GiB are available on cpu; use a smaller "
                                                 r"batch .*a larger dt .*memory_limit=math.inf"):
        dn.integrate(net, x, t_end=10.0, dt=5.0, batch_size=10 ** 11, save_at=[10.0])
    assert calls == []
    dn.integrate(net, x, t_end=10.0, dt=5.0, batch_size=3, save_at=[10.0], memory_limit=math.inf)


def test_require_memory_states_what_needs_how_much_and_the_remedy():
    gib = 1024 ** 3
    require_memory(gib, "cpu", "a thing", "do less", memory_limit=gib)  # fits exactly
    require_memory(10 ** 18, torch.device("cpu"), "a thing", "do less", memory_limit=math.inf)
    with pytest.raises(ConfigurationError) as info:
        require_memory(3 * gib, "cpu", "building the model", "use fewer channels", memory_limit=2 * gib)
    assert str(info.value) == ("building the model needs 3 GiB but 2 GiB are available on cpu (the memory_limit "
                               "given); use fewer channels")
    with pytest.raises(ConfigurationError, match=r"^a thing needs 9313 GiB but .* GiB are available on cpu; do less$"):
        require_memory(10 ** 13, "cpu", "a thing", "do less")
    for bad in (0, -1.0, NAN, "1", True):
        with pytest.raises(ConfigurationError, match="memory_limit must be a positive number of bytes"):
            require_memory(1, "cpu", "a thing", "do less", memory_limit=bad)


# -- the sweeps -----------------------------------------------------------------------------------------
SETTLE = {
    "background": ([torch.ones(1, 2, 2, 2), torch.ones(2, 2, 2), {"image": torch.ones(2, 2, 2)}],
                   [torch.ones(5), torch.ones(1, 3, 2, 2), "mean", 0.5, None, {"nope": torch.ones(2, 2, 2)},
                    torch.full((2, 2, 2), NAN)]),
    "dt": ([5.0, 10.0], [0, -1.0, NAN, INF, "5", True, 3.0, 1e-300, 1e300, torch.ones(2)]),
    "solver": (["euler", "rk4"], ["rk5", None, 3, dn.solvers.RK4]),
    "window": ([100.0, 50.0], [0.0, -1.0, NAN, INF, "100", 33.0]),
    "max_time": ([200.0, 100.0], [0.0, NAN, INF, "1", 20.0]),
    "rtol": ([1e-3, 0.0], [-1.0, NAN, INF, "1e-3", None]),
    "atol": ([1e-6, 1.0], [0.0, -1.0, NAN, INF, True]),
}


@SWEEP
@given(one_bad(SETTLE))
def test_settle_runs_or_refuses_before_the_first_evaluation(kwargs):
    net, op = tiny_net()
    res = runs_or_refuses(lambda: settle(net, **kwargs), op)
    if not isinstance(res, DynodeError):
        assert res.time <= kwargs["max_time"] and torch.isfinite(res.state["V1"]).all()


GROEN = {
    "images": ([IMAGES, torch.rand(2, 2, 2, 2)],
               [torch.rand(1, 3, 2, 2), torch.rand(2, 8), torch.rand(0, 2, 2, 2), "images", None]),
    "background": (["mean", "blank", 0.5, torch.zeros(2, 1, 1), torch.tensor(0.1)],
                   [torch.zeros(5), torch.zeros(3, 1, 1), torch.zeros(2, 2, 2, 2), "meen", NAN, None, True,
                    torch.full((2, 1, 1), INF)]),
    "dt": ([5.0, 10.0], [0, -1.0, NAN, INF, "5", True, 3.0, 20.0, 1e-300]),
    "onset": ([100.0, 50.0], [0.0, -5.0, NAN, INF, "100", 105.0]),
    "kinds": ([["contrast"]], ["contrast", [], ["contrast", "contrast"], ["color"], None]),
    "settle_max": ([None, 200.0], [0.0, -1.0, NAN, 50.0, "200"]),
    "record": ([None], ["mean", dn.Record(populations=["IT"]), dn.Record(every=3.0)]),
    "overwrite": ([False], ["yes", None, 1]),
    "progress": ([False], ["no", 1]),
    "solver": (["euler"], ["rk5", None, "dopri5"]),
    "out_dir": (["new"], ["file", "under_file", 3, None]),
}


@settings(SWEEP, max_examples=25)  # a good call writes an archive (~0.5 s)
@given(one_bad(GROEN))
def test_groen_runs_or_refuses_before_the_first_evaluation_and_writes_only_its_archives(tmp_path_factory, kwargs):
    root = tmp_path_factory.mktemp("groen")
    (root / "notes.txt").write_text("keep me")
    kwargs["out_dir"] = {"new": root / "out", "file": root / "notes.txt",
                         "under_file": root / "notes.txt" / "out"}.get(kwargs["out_dir"], kwargs["out_dir"])
    before = snapshot(root)
    net, op = tiny_net()
    res = runs_or_refuses(lambda: groen2022_experiments(net, **kwargs), op)
    after = snapshot(root)
    if isinstance(res, DynodeError):
        assert after == before, f"a refused run changed files: {res}"
    else:
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert all(k == "out" or k.startswith("out/") for k in changed), changed
        assert res["contrast"].exists()
    assert (root / "notes.txt").read_text() == "keep me"


def test_the_free_memory_of_a_gpu_counts_what_the_caching_allocator_holds_for_reuse(monkeypatch):
    # torch keeps freed blocks reserved; mem_get_info does not count them, the next run reuses them
    from dynode.integrate import available_memory

    gib = 1024 ** 3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * gib)
    assert available_memory(torch.device("cuda", 0)) == 21 * gib
    require_memory(20 * gib, torch.device("cuda", 0), "a run", "do less")
    with pytest.raises(ConfigurationError, match=r"a run needs 22 GiB but 21 GiB are available on cuda:0; do less"):
        require_memory(22 * gib, torch.device("cuda", 0), "a run", "do less")


def test_run_protocol_refuses_attrs_that_are_not_a_dict_before_the_first_evaluation(tmp_path):
    net, op = tiny_net()
    protocol = dn.stimuli.groen2022("contrast", IMAGES, background="mean")
    with pytest.raises(ConfigurationError, match="run_protocol: attrs must be a dict"):
        dn.experiments.run_protocol(net, protocol, dt=10.0, attrs=3, store=tmp_path / "run.zarr")
    assert op.calls == 0 and not (tmp_path / "run.zarr").exists()


@pytest.mark.parametrize("bad, match", [
    (dict(tail=-1.0), r"recovery_after_offset: tail must be a positive number of ms"),
    (dict(onset=NAN), r"recovery_after_offset: onset must be a positive number of ms \(the rest level"),
    (dict(dt=0.0), r"recovery_after_offset: dt must be a positive number"),
    (dict(t_end=612.0), r"t_end=612 ms is not a whole number of steps of dt=5 ms"),
    (dict(background=torch.zeros(5)), r"background has shape \(5,\), expected"),
    (dict(images=torch.rand(1, 2, 3, 3)), r"images have shape \(1, 2, 3, 3\)"),
])
def test_recovery_after_offset_checks_its_arguments_before_the_first_evaluation(bad, match):
    net, op = tiny_net()
    kwargs = dict(images=IMAGES, dt=5.0, onset=100.0, duration=100.0, t_end=615.0, tail=5.0) | bad
    with pytest.raises(DynodeError, match=match):
        dn.experiments.recovery_after_offset(net, **kwargs)
    assert op.calls == 0


def test_recovery_after_offset_reads_its_tail_when_t_end_is_between_two_saves():
    net, _ = tiny_net()  # saves every 10 ms; t_end = 615 ms: the last 5 ms hold only t_end
    out = dn.experiments.recovery_after_offset(net, IMAGES, dt=5.0, onset=100.0, duration=100.0, t_end=615.0,
                                               tail=5.0)
    assert math.isfinite(out["V1"]["final"]) and out["V1"]["peak"] > 0
