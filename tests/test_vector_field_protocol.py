"""The VectorField protocol as the README documents it: the minimal custom field of
``examples/custom_field.py`` (init_state, forward, max_delay, delays, input_names,
time_constants) runs through every solver, ``simulate`` and ``convergence`` unchanged."""

import importlib.util
from pathlib import Path

import pytest
import torch
import xarray as xr

import dynode as dn

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_field.py"


def _module():
    spec = importlib.util.spec_from_file_location("custom_field", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    field = _module().build((1, 6, 6)).double()
    stim = dn.stimuli.Pulse(2.0, 10.0, {"image": torch.rand(2, 1, 6, 6, dtype=torch.float64)})
    ref = dn.integrate(field, stim, t_end=24.0, solver=dn.solvers.Dopri5(rtol=1e-10, atol=1e-12), save_at=[24.0])
    return field, stim, ref


SOLVERS = {  # name -> (solver, max error at t = 24 ms against the tight reference, dt 0.5 ms)
    "euler": ("euler", 0.3),
    "midpoint": ("midpoint", 0.02),
    "heun": ("heun", 0.02),
    "rk4": ("rk4", 1e-4),
    "dopri5": (lambda: dn.solvers.Dopri5(rtol=1e-6, atol=1e-8), 1e-4),
    "tsit5": (lambda: dn.solvers.Tsit5(rtol=1e-6, atol=1e-8), 1e-4),
    "bosh3": (lambda: dn.solvers.Bosh3(rtol=1e-6, atol=1e-8), 1e-4),
    "torchdiffeq": (lambda: dn.solvers.TorchDiffEq("dopri5", 1e-6, 1e-8), 1e-3),
    "torchode": (lambda: dn.solvers.TorchODE("tsit5", 1e-6, 1e-8), 1e-3),
}


def _solver(name):
    s = SOLVERS[name][0]
    return s() if callable(s) else s


@pytest.mark.parametrize("name", list(SOLVERS))
def test_the_minimal_field_runs_through_every_solver(problem, name):
    field, stim, ref = problem
    sol = dn.integrate(field, stim, t_end=24.0, dt=0.5, solver=_solver(name), save_at=[24.0])
    err = max(float((sol.final_state[k] - ref.final_state[k]).abs().max()) for k in ("E", "I"))
    assert err < SOLVERS[name][1], err
    # the field responds to the pulse (the comparison is not between two resting states)
    assert float(ref.final_state["E"].abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["euler", "rk4", "dopri5", "torchode"])
def test_the_minimal_field_simulates_into_an_archive(problem, tmp_path, name):
    field, stim, _ = problem
    dn.simulate(field, stim, t_end=20.0, dt=0.5, solver=_solver(name), record=dn.Record(every=1.0, reduce="mean"),
                store=tmp_path / "f.zarr", progress=False)
    tree = xr.open_datatree(tmp_path / "f.zarr", engine="zarr")
    assert tree.attrs["status"] == "complete" and set(tree.children) == {"E", "I"}
    assert tree["E"]["rate"].sizes["time"] == 21


def test_the_minimal_field_in_a_dt_study(problem):
    field, stim, _ = problem
    ds = dn.convergence(field, stim, t_end=16.0, dts=[1.0, 0.5, 0.25], solvers=["euler", "rk4"], tolerance=1e-3)
    err = ds["max_abs_error"]
    assert float(err.sel(solver="rk4").max()) < float(err.sel(solver="euler").min())
    assert set(ds["population"].values) == {"E", "I"}
