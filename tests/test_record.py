"""Record: validation, recording times on the solver grid, selection and reduction maths."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dynode as dn
from dynode.record import unit_dims


def test_defaults_and_normalisation():
    r = dn.Record(populations="V1", every=2, dtype=torch.float16)
    assert r.populations == ("V1",)
    assert r.every == 2.0 and isinstance(r.every, float)
    assert r.dtype == "float16" and r.storage_dtype is torch.float16
    assert dn.Record(dtype=np.float64).dtype == "float64"


@pytest.mark.parametrize("kwargs, match", [
    (dict(reduce="median"), "reduce='median'"),
    (dict(every=0.0), "every=0.0"),
    (dict(every=-1.0), "every=-1.0"),
    (dict(every=float("nan")), "finite"),
    (dict(start=5.0, stop=1.0), "stop must not be before start"),
    (dict(dtype="int8"), "storage dtype"),
    (dict(dtype="bfloat16"), "storage dtype"),
    (dict(populations=[]), "population names"),
    (dict(populations=["A", "A"]), "repeats"),
    (dict(select=[0, 1]), "must be a mapping"),
])
def test_invalid_records_are_rejected(kwargs, match):
    with pytest.raises(dn.ConfigurationError, match=match):
        dn.Record(**kwargs)


def test_times_on_the_fixed_grid_match_the_solver_grid():
    r = dn.Record(every=0.3, start=0.3, stop=1.5)
    ts = r.times(0.0, 2.0, 0.1, on_grid=True)
    # exactly the floats the solver produces: t0 + n * dt
    assert ts == tuple(0.0 + n * 0.1 for n in (3, 6, 9, 12, 15))
    assert dn.Record().times(1.0, 3.0, 0.5, on_grid=True) == (1.0, 1.5, 2.0, 2.5, 3.0)
    # stop not on the grid: the last time is the grid point before it
    assert dn.Record(stop=2.2).times(0.0, 3.0, 1.0, on_grid=True) == (0.0, 1.0, 2.0)


def test_every_off_the_grid_is_a_clear_error():
    with pytest.raises(dn.ConfigurationError, match=r"every=0\.3.*not a multiple of dt = 0\.2.*every = 0\.2 or 0\.4"):
        dn.Record(every=0.3).times(0.0, 1.0, 0.2, on_grid=True)
    with pytest.raises(dn.ConfigurationError, match=r"start=0\.25.*grid"):
        dn.Record(start=0.25).times(0.0, 1.0, 0.1, on_grid=True)
    with pytest.raises(dn.ConfigurationError, match="within the run"):
        dn.Record(stop=5.0).times(0.0, 1.0, 0.1, on_grid=True)


def test_times_off_grid_need_every():
    assert dn.Record(every=0.25).times(0.0, 1.0, None, on_grid=False) == (0.0, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(dn.ConfigurationError, match="every"):
        dn.Record().times(0.0, 1.0, None, on_grid=False)


def test_plan_resolves_populations_and_selection():
    shapes = {"A": (4, 3, 3), "B": (5,)}
    plans = dn.Record(select={"channel": [0, 2]}).plan(shapes)
    assert [p.name for p in plans] == ["A", "B"]
    assert plans[0].index == ((0, 2), None, None) and plans[1].index == ((0, 2),)
    per_pop = dn.Record(populations=["A"], select={"A": {"y": slice(1, None), "x": -1}}).plan(shapes)
    assert per_pop[0].index == (None, (1, 2), (2,))
    # selecting everything is no selection
    assert dn.Record(select={"channel": range(4)}, populations="A").plan(shapes)[0].index == (None, None, None)


@pytest.mark.parametrize("record, match", [
    (dn.Record(populations=["C"]), r"unknown populations \['C'\]"),
    (dn.Record(select={"y": [0]}), r"'B' has the unit dimensions \['channel'\], not \['y'\]"),
    (dn.Record(select={"channel": [9]}), r"indices \[9\] are out of range"),
    (dn.Record(select={"channel": [1, 1]}), "repeats indices"),
    (dn.Record(select={"channel": []}), "keeps no unit"),
    (dn.Record(select={"channel": [0.5]}), "integers"),
    (dn.Record(select={"A": {"channel": 0}, "x": 1}), "mixes population names"),
    (dn.Record(populations=["A"], select={"B": {"channel": 0}}), "not recorded"),
])
def test_plan_errors_name_the_problem(record, match):
    with pytest.raises(dn.ConfigurationError, match=match):
        record.plan({"A": (4, 3, 3), "B": (5,)})


def test_unit_dims_names():
    assert unit_dims(1) == ("channel",)
    assert unit_dims(2) == ("channel", "x")
    assert unit_dims(3) == ("channel", "y", "x")
    assert unit_dims(4) == ("channel", "z", "y", "x")
    assert unit_dims(5) == ("channel", "dim_1", "dim_2", "dim_3", "dim_4")


def _numpy_reference(x: np.ndarray, index, reduce):
    for dim, idx in enumerate(index, start=1):
        if idx is not None:
            x = np.take(x, list(idx), axis=dim)
    axes = tuple(range(1, x.ndim))
    if reduce is None:
        return x
    if reduce == "mean":
        return x.mean(axis=axes)
    if reduce == "std":
        return x.std(axis=axes)
    return np.stack([x.mean(axis=axes), x.std(axis=axes)], axis=1)


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       reduce=st.sampled_from([None, "mean", "std", "mean_std"]), data=st.data())
def test_transform_is_select_then_reduce(shape, reduce, data):
    shape = tuple(shape)
    dims = unit_dims(len(shape))
    select = {}
    for d, n in zip(dims, shape):
        if data.draw(st.booleans()):
            select[d] = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    plan = dn.Record(reduce=reduce, select=select).plan({"P": shape})[0]
    x = torch.randn(2, *shape, dtype=torch.float64)
    out = plan.transform(x)
    want = _numpy_reference(x.numpy(), [select.get(d) for d in dims], reduce)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)
    assert plan.stored_dims(tuple(out.shape[1:])) == (
        tuple(dims) if reduce is None else () if reduce in ("mean", "std") else ("statistic",))


def test_callable_reduce_and_its_shape_check():
    spatial_mean = lambda x: x.mean(dim=(2, 3))  # noqa: E731  (keeps channels)
    plan = dn.Record(reduce=spatial_mean).plan({"P": (3, 2, 2)})[0]
    x = torch.arange(24.0).reshape(2, 3, 2, 2)
    out = plan.transform(x)
    assert torch.equal(out, x.mean(dim=(2, 3)))
    assert plan.stored_dims((3,)) == ("feature",)
    bad = dn.Record(reduce=lambda x: x.sum()).plan({"P": (3,)})[0]
    with pytest.raises(dn.ShapeError, match="must return a tensor \\(batch, ...\\)"):
        bad.transform(torch.ones(2, 3))


def test_contiguous_selection_is_a_view():
    plan = dn.Record(select={"channel": [1, 2]}).plan({"P": (4,)})[0]
    x = torch.arange(8.0).reshape(2, 4)
    assert plan.transform(x).data_ptr() == x[:, 1].data_ptr()
    assert math.isclose(float(plan.transform(x).sum()), 1 + 2 + 5 + 6)
