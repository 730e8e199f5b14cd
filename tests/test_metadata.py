"""Every variable and coordinate of every file dynode writes carries CF-style metadata: a
``long_name``, and ``units`` on every numeric (non-boolean) one; rates read well on a plot axis ("a.u.",
never "1")."""

import numpy as np
import pytest
import torch
import xarray as xr

import dynode as dn
from dynode.stimuli import groen2022


def _walk(obj, where: str):
    """``(path, variable)`` for every data variable and coordinate of a Dataset, DataArray or
    DataTree (every group)."""
    if isinstance(obj, xr.DataTree):
        for node in obj.subtree:
            yield from _walk(node.to_dataset(inherit=False), f"{where}{node.path}")
        return
    if isinstance(obj, xr.DataArray):
        yield f"{where}:{obj.name}", obj
        for name, c in obj.coords.items():
            yield f"{where}:{name}", c
        return
    for name, v in obj.variables.items():
        yield f"{where}:{name}", v


def check_cf(obj, where: str) -> int:
    missing = []
    n = 0
    for path, v in _walk(obj, where):
        n += 1
        if not v.attrs.get("long_name"):
            missing.append(f"{path}: long_name")
        if v.dtype.kind in "iufc" and not v.attrs.get("units"):  # a boolean flag has no units
            missing.append(f"{path}: units")
        name = path.rsplit(":", 1)[1]
        if name in ("rate", "stimulus") or name.endswith("_activations"):
            assert v.attrs.get("units") == "a.u.", (path, v.attrs.get("units"))
    assert missing == []
    return n


def _net():
    return dn.models.dyrcnn(depth=2, input_shape=(1, 8, 8), num_classes=3, width=0.25, phi="relu")


@pytest.mark.parametrize("reduce", [None, "mean", "std", "mean_std"])
def test_archives_carry_units_and_long_names(tmp_path, reduce):
    stim = groen2022("repetition", torch.rand(1, 1, 8, 8))
    dn.simulate(_net(), stim, t_end=40.0, dt=2.0, record=dn.Record(reduce=reduce), store=tmp_path / "a.zarr")
    tree = xr.open_datatree(tmp_path / "a.zarr", engine="zarr")  # plain xarray, as a user would
    assert check_cf(tree, "a.zarr") >= 12
    # the condition labels of the protocol carry their own units
    assert tree["isi"].attrs["units"] == "ms" and tree["contrast"].attrs["units"] == "1"


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_brainscore_export_carries_units(tmp_path, fmt):
    stim = groen2022("contrast", torch.rand(1, 1, 8, 8))
    dn.simulate(_net(), stim, t_end=40.0, dt=2.0, record=dn.Record(populations=["V1"]), store=tmp_path / "a.zarr")
    path = tmp_path / ("it.nc" if fmt == "netcdf" else "it.zarr")
    dn.archive.to_brainscore(dn.open_archive(tmp_path / "a.zarr"), "V1", [0, 20, 40], path, format=fmt)
    written = xr.open_dataset(path, engine="zarr" if fmt == "zarr" else None)
    assert check_cf(written, path.name) >= 10


def test_convergence_netcdf_carries_units(tmp_path):
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("A", shape=(2,), tau=5.0, phi="tanh")
    net.add_population("B", shape=(2,), tau=5.0, phi="tanh")
    net.connect("x", "A")
    net.connect("A", "B", delay=2.0)
    ds = dn.convergence(net, dn.stimuli.Constant({"x": torch.ones(1, 2)}), t_end=8.0, dts=[2.0, 1.0],
                        solvers=["euler"], tolerance=1e-2)
    ds.to_netcdf(tmp_path / "c.nc")
    written = xr.open_dataset(tmp_path / "c.nc")
    assert check_cf(written, "c.nc") >= 10
    assert written["max_abs_error"].attrs["units"] == "a.u."
    assert np.isfinite(written["max_abs_error"].values).all()


def test_experiment_archives_carry_units(tmp_path):
    from dynode.experiments import groen2022_experiments

    paths = groen2022_experiments(_net(), torch.rand(1, 1, 8, 8), tmp_path, dt=2.0, kinds=["duration"],
                                  record=dn.Record(reduce="mean"), settle_max=None)
    assert check_cf(xr.open_datatree(paths["duration"], engine="zarr"), "duration") >= 10
