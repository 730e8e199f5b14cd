"""Solver configs: discriminated union on kind, only the options each solver takes."""

import math

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import dynode as dn
from dynode import solvers as S
from dynode.config import Dopri5Config, solver_config
from fields import ScalarDDE


@pytest.mark.parametrize("data,cls", [
    ({"kind": "euler", "order": "sequential"}, S.Euler), ({"kind": "midpoint"}, S.Midpoint),
    ({"kind": "heun"}, S.Heun), ("rk4", S.RK4), ({"kind": "dopri5", "rtol": 1e-5}, S.Dopri5),
    ({"kind": "tsit5", "controller": "pi"}, S.Tsit5), ({"kind": "bosh3", "max_steps": 10}, S.Bosh3),
    ({"kind": "torchdiffeq", "method": "bosh3", "max_num_steps": 100}, S.TorchDiffEq),
    ({"kind": "torchdiffeq", "method": "rk4", "step_size": 0.5}, S.TorchDiffEq),
    ({"kind": "torchode", "method": "tsit5", "controller": "pid", "per_sample": True}, S.TorchODE),
])
def test_each_kind_builds_its_solver(data, cls):
    solver = solver_config(data).build()
    assert type(solver) is cls
    opts = {k: v for k, v in (data.items() if isinstance(data, dict) else []) if k not in ("kind",)}
    for k, v in opts.items():
        got = dict(solver.options).get(k) if k in ("max_num_steps", "step_size") else getattr(solver, k)
        assert got == v


@pytest.mark.parametrize("data,word", [
    ({"kind": "rk4", "rtol": 1e-6}, "rtol"),                       # fixed step takes no tolerance
    ({"kind": "euler", "controller": "pi"}, "controller"),
    ({"kind": "dopri5", "step_size": 0.1}, "step_size"),           # another solver's option
    ({"kind": "dopri5", "rtoll": 1e-6}, "rtoll"),                  # typo
    ({"kind": "dopri5", "controller": "pid"}, "controller"),       # torchode's spelling
    ({"kind": "torchode", "first_step": 0.1}, "first_step"),
    ({"kind": "torchdiffeq", "method": "rk4", "step_size": 1.0, "first_step": 0.1}, "first_step"),
    ({"kind": "torchdiffeq", "method": "dopri5", "step_size": 1.0}, "step_size"),
    ({"kind": "torchdiffeq", "method": "rk4"}, "step_size"),
    ({"kind": "dopri5", "rtol": -1.0}, "rtol"),
    ({"kind": "rk45"}, "kind"),
])
def test_foreign_or_bad_options_are_rejected(data, word):
    with pytest.raises(ValidationError, match=word):
        solver_config(data)


def test_frozen_and_yaml_round_trip():
    cfg = solver_config(yaml.safe_load("kind: dopri5\nrtol: 1.0e-8\natol: 1.0e-10\n"))
    assert isinstance(cfg, Dopri5Config) and isinstance(cfg, dn.config.Dopri5Config)
    with pytest.raises(ValidationError):
        cfg.rtol = 1e-3
    again = solver_config(yaml.safe_load(yaml.safe_dump(cfg.model_dump())))
    assert again == cfg
    sol = dn.integrate(ScalarDDE(), t_end=2.0, solver=cfg.build(),
                       initial_state={"r": torch.ones(1, 1, dtype=torch.float64)})
    assert abs(float(sol.final_state["r"]) - (1 + 2 / math.e ** 2 - 4 / math.e)) < 1e-6


@settings(max_examples=25, deadline=None)
@given(rtol=st.floats(1e-12, 1e-1), atol=st.floats(1e-14, 1e-2), kind=st.sampled_from(["dopri5", "tsit5", "bosh3"]),
       controller=st.sampled_from(["integral", "pi"]))
def test_valid_adaptive_configs_build_with_their_values(rtol, atol, kind, controller):
    solver = solver_config({"kind": kind, "rtol": rtol, "atol": atol, "controller": controller}).build()
    assert (solver.name, solver.rtol, solver.atol, solver.controller) == (kind, rtol, atol, controller)


def test_every_registered_solver_has_its_generated_config():
    """Configs, kinds and the fixed-step names come from the registry (adding a solver is its
    class and its registration): one config per solver, by name, exported by dn.config."""
    import importlib

    from dynode.train import TrainingConfig
    sc = importlib.import_module("dynode.solver_config")
    assert list(sc.CONFIGS) == list(S.SOLVERS)
    for name, cls in S.SOLVERS.items():
        assert sc.CONFIGS[name].solver is cls and getattr(dn.config, f"{cls.__name__}Config") is sc.CONFIGS[name]
        assert solver_config(name).build() == cls()
    assert sc.FIXED_STEP == ("euler", "midpoint", "heun", "rk4")
    assert TrainingConfig(solver="rk4").solver == "rk4"
    with pytest.raises(ValidationError):
        TrainingConfig(solver="dopri5")
