"""The trainer (dynode.train): learning, exact resume, checkpoints, log, long-run options."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import dynode as dn
from pydantic import ValidationError
from torch.nn import functional as F

from dynode import integrate
from dynode.errors import ConfigurationError
from dynode.models import dyrcnn
from dynode.models.losses import classification_loss, energy_loss
from dynode.stimuli import generated_task
from dynode.train import Trainer, TrainingConfig, evaluate, load_checkpoint, train


@pytest.fixture(scope="module")
def task():
    return generated_task(96, 48, size=16, seed=3)


def _net(task, steps=6, seed=0, **options):
    torch.manual_seed(seed)
    return dyrcnn(depth=2, width=0.25, input_shape=task.image_shape, num_classes=task.num_classes,
                  steps=steps, **options)


def _batch(task, n=8):
    return task.normalize(task.x_train[:n]), task.y_train[:n]


def _grads(net):
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _metrics(history):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


# -- learning ----------------------------------------------------------------------------------
def test_learns_the_generated_task_well_above_chance():
    data = generated_task(480, 120, size=16, seed=0)
    net = _net(data, steps=6)
    cfg = TrainingConfig(epochs=6, batch_size=32, lr=1e-2, seed=0)
    before = evaluate(copy.deepcopy(net), data, cfg)["acc"]
    result = train(net, data, cfg, val_data=data, progress=False)
    chance = 1 / data.num_classes
    assert before < 2 * chance
    assert result.final["val_acc"] > 2.5 * chance  # measured 0.93 (chance 0.17)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


# -- resume, checkpoints, log ---------------------------------------------------------------
def test_resume_continues_the_same_run(task, tmp_path):
    cfg = TrainingConfig(epochs=2, batch_size=32, lr=3e-3, schedule="cosine", idle=4.0,
                         energy_weight=0.01, seed=5)
    straight = Trainer(_net(task), cfg, progress=False)
    straight.fit(task, task)

    first = Trainer(_net(task), cfg, log=tmp_path / "log.jsonl", checkpoint_dir=tmp_path / "ckpt", progress=False)
    first.fit(task, task, until=1)
    assert first.epoch == 1
    torch.manual_seed(1234)  # the resumed run must not depend on the process's RNG state
    second = Trainer(_net(task, seed=99), cfg, log=tmp_path / "log.jsonl", checkpoint_dir=tmp_path / "ckpt",
                     progress=False)
    second.resume(tmp_path / "ckpt" / "last.pt").fit(task, task)

    assert _metrics(second.result.history) == _metrics(straight.result.history)
    for (k, a), (_, b) in zip(straight.network.state_dict().items(), second.network.state_dict().items()):
        assert torch.equal(a, b), k
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert second.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"] < 3e-3

    # the checkpoint is plain data: loads with weights_only=True
    ckpt = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and TrainingConfig.model_validate_json(ckpt["config"]) == cfg
    net = _net(task, seed=7)
    net.load_state_dict(load_checkpoint(tmp_path / "ckpt" / "last.pt")["model"])
    assert torch.equal(net.readout.linear.weight, straight.network.readout.linear.weight)

    # one JSON row per epoch, also across the resume
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert _metrics(rows) == _metrics(straight.result.history)
    assert {"train_loss", "train_acc", "lr", "time_s", "val_loss", "val_acc"} <= set(rows[0])


def test_resume_with_a_loader_reseeded_per_epoch(task, tmp_path):
    """An iterable loader with set_epoch (shuffle and augmentation) resumes exactly too."""
    from dynode.stimuli import InMemoryLoader

    def loader():
        return InMemoryLoader(task.x_train, task.y_train, batch_size=32, augment=True, pad=2,
                              mean=task.mean, std=task.std, seed=4)
    cfg = TrainingConfig(epochs=2, batch_size=32, lr=3e-3, seed=5)
    straight = Trainer(_net(task), cfg, progress=False)
    straight.fit(loader())
    first = Trainer(_net(task), cfg, checkpoint_dir=tmp_path, progress=False)
    first.fit(loader(), until=1)
    second = Trainer(_net(task), cfg, progress=False).resume(tmp_path / "last.pt")
    second.fit(loader())
    assert _metrics(second.result.history) == _metrics(straight.result.history)
    assert torch.equal(second.network.readout.linear.weight, straight.network.readout.linear.weight)
    with pytest.raises(ConfigurationError, match="batches of 32 but the config says batch_size=16"):
        Trainer(_net(task), cfg.model_copy(update={"batch_size": 16}), progress=False).fit(loader())


def test_progress_prints_one_line_per_epoch(task, capsys):
    Trainer(_net(task), TrainingConfig(epochs=1, batch_size=48), progress=True).fit(task)
    err = capsys.readouterr().err
    assert "epoch 1/1: train_loss=" in err and "train_acc=" in err


def test_world_size_without_a_rendezvous_is_a_clear_error(task, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigurationError, match="RANK is not set|MASTER_ADDR is not set"):
        Trainer(_net(task), TrainingConfig(), progress=False)


def test_resume_rejects_another_config(task, tmp_path):
    cfg = TrainingConfig(epochs=1, batch_size=48, seed=0)
    trainer = Trainer(_net(task), cfg, checkpoint_dir=tmp_path, progress=False)
    trainer.fit(task)
    other = Trainer(_net(task), cfg.model_copy(update={"lr": 0.5}), progress=False)
    with pytest.raises(ConfigurationError, match=r"differs in \['lr'\]"):
        other.resume(tmp_path / "last.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_fresh_run_starts_a_fresh_log(task, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 7}\n')
    Trainer(_net(task), TrainingConfig(epochs=1, batch_size=48), log=log, progress=False).fit(task)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]


# -- the loss -------------------------------------------------------------------------------
def test_windowed_loss_matches_the_formula(task):
    """Readout at='every' with a window, reaction window and ramp, energy: the trainer's loss
    is sum_k w_k CE_k + lambda E computed by hand on the full trajectory."""
    net = _net(task, steps=8, readout_at="every", readout_window=(4.0, 16.0))
    cfg = TrainingConfig(stimulus_onset=2.0, reaction_time=6.0, ramp=True, energy_weight=0.1, energy_p=2)
    trainer = Trainer(net, cfg, progress=False)
    x, y = _batch(task)
    loss, correct = trainer.backward(x, y)
    from dynode.stimuli import Pulse

    sol = integrate(net, Pulse(2.0, float("inf"), {"image": x}), t_end=16.0, dt=2.0)
    logits = net.decode(sol)
    ts = sol.ts[2:]  # the readout window 4..16 ms
    expected = (classification_loss(logits, y, ts, onset=2.0, reaction_time=6.0, ramp=True)
                + 0.1 * energy_loss(sol.states, p=2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert correct.item() == (logits[-1].argmax(-1) == y).sum().item()


def test_stability_penalty_adds_to_the_loss(task):
    x, y = _batch(task)
    base = TrainingConfig(stimulus_onset=2.0, stimulus_duration=6.0)
    plain, _ = Trainer(_net(task, steps=8), base, progress=False).backward(x, y)
    cfg = base.model_copy(update={"stability_weight": 10.0})
    penalised, _ = Trainer(_net(task, steps=8), cfg, progress=False).backward(x, y)
    assert penalised.item() > plain.item() > 0


def test_idle_warm_up_continues_with_the_delayed_past(task):
    net = _net(task, steps=4)
    x, y = _batch(task)
    trainer = Trainer(net, TrainingConfig(idle=10.0), progress=False)
    loss, _ = trainer.backward(x, y)
    with torch.no_grad():
        warm = integrate(net, {"image": torch.zeros_like(x)}, t0=-10.0, t_end=0.0, dt=2.0)
    sol = integrate(net, {"image": x}, t_end=8.0, dt=2.0, initial_state=warm)
    assert loss.item() == pytest.approx(F.cross_entropy(net.decode(sol), y).item(), rel=1e-6)
    cold, _ = Trainer(_net(task, steps=4), TrainingConfig(), progress=False).backward(x, y)
    assert abs(cold.item() - loss.item()) > 1e-4  # the warm-up changes the run


def test_evaluate_is_the_test_split_loss_and_accuracy(task):
    net = _net(task, steps=4)
    cfg = TrainingConfig(batch_size=20)  # 48 test images: batches 20, 20, 8
    out = evaluate(net, task, cfg)
    with torch.no_grad():
        logits = net.decode(integrate(net, {"image": task.normalize(task.x_test)}, t_end=8.0, dt=2.0))
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, task.y_test).item(), rel=1e-5)
    assert out["acc"] == pytest.approx((logits.argmax(-1) == task.y_test).float().mean().item())
    assert net.training  # evaluate restores the mode


# -- long runs: checkpointing, truncated BPTT, mixed precision -------------------------------
@pytest.mark.parametrize("segment", [True, 3])
def test_checkpointing_gives_the_gradients_of_plain_bptt(task, segment):
    net = _net(task, steps=10, recurrence_delay=4.0)
    x, y = _batch(task)
    cfg = TrainingConfig(energy_weight=0.05)
    plain = Trainer(net, cfg, progress=False)
    loss_p, _ = plain.backward(x, y)
    g_plain = _grads(net)
    net_c = copy.deepcopy(net)
    net_c.zero_grad(set_to_none=True)
    ckpt = Trainer(net_c, cfg.model_copy(update={"checkpoint": segment}), progress=False)
    loss_c, _ = ckpt.backward(x, y)
    assert loss_c.item() == loss_p.item()
    for k, g in _grads(net_c).items():
        torch.testing.assert_close(g, g_plain[k], rtol=1e-6, atol=1e-9, msg=k)


def test_tbptt_detaches_the_state_and_its_past_between_segments(task):
    net = _net(task, steps=8)  # recurrence delay 6 ms = 3 steps reaches back over the cut at 8 ms
    x, y = _batch(task)
    trainer = Trainer(net, TrainingConfig(tbptt=4), progress=False)
    loss, _ = trainer.backward(x, y)
    g_tbptt = _grads(net)

    ref = copy.deepcopy(net)
    with torch.no_grad():
        head = integrate(ref, {"image": x}, t_end=8.0, dt=2.0)
    sol = integrate(ref, {"image": x}, t0=8.0, t_end=16.0, dt=2.0, initial_state=head)
    ref_loss = F.cross_entropy(ref.decode(sol), y)
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for k, p in ref.named_parameters():
        torch.testing.assert_close(g_tbptt[k], p.grad, rtol=1e-5, atol=1e-8, msg=k)

    full = copy.deepcopy(net)
    full.zero_grad(set_to_none=True)
    Trainer(full, TrainingConfig(), progress=False).backward(x, y)
    w = "populations.V1.incoming.image.weight"
    assert not torch.allclose(dict(full.named_parameters())[w].grad, g_tbptt[w], rtol=1e-3)


def test_tbptt_loss_value_equals_the_full_run_loss(task):
    """Per-segment window weights and energy shares add up to the full loss."""
    x, y = _batch(task)
    cfg = TrainingConfig(reaction_time=4.0, ramp=True, energy_weight=0.2)
    full, _ = Trainer(_net(task, steps=9, readout_at="every"), cfg, progress=False).backward(x, y)
    cut, _ = Trainer(_net(task, steps=9, readout_at="every"), cfg.model_copy(update={"tbptt": 4}),
                     progress=False).backward(x, y)
    assert cut.item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.slow
def test_tbptt_learns():
    data = generated_task(480, 120, size=16, seed=0)
    cfg = TrainingConfig(epochs=6, batch_size=32, lr=1e-2, seed=0, tbptt=3)
    result = train(_net(data, steps=6), data, cfg, val_data=data, progress=False)
    assert result.final["val_acc"] > 2 * (1 / data.num_classes)


def test_bf16_autocast_runs_on_cpu(task):
    net = _net(task, steps=4)
    before = copy.deepcopy(net.state_dict())
    trainer = Trainer(net, TrainingConfig(amp="bf16", lr=1e-2, batch_size=8), progress=False)
    loss, acc = trainer.step(*_batch(task))
    assert 0 < loss < 10 and 0 <= acc <= 1
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not torch.equal(before["readout.linear.weight"], net.readout.linear.weight)
    assert Trainer(net, TrainingConfig(amp="auto"), progress=False).amp_dtype is None  # CPU: off


def test_step_is_deterministic_under_a_seed(task):
    cfg = TrainingConfig(epochs=1, batch_size=32, seed=11)
    a = train(_net(task), task, cfg, progress=False)
    b = train(_net(task), task, cfg, progress=False)
    assert _metrics(a.history) == _metrics(b.history)


# -- configuration errors ---------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"stability_weight": 1.0}, "needs a pre-stimulus baseline"),
    ({"stability_weight": 1.0, "stimulus_onset": 2.0}, "stimulus_duration"),
    ({"tbptt": 4, "checkpoint": True}, "choose tbptt or checkpoint"),
    ({"tbptt": 4, "stability_weight": 1.0, "stimulus_onset": 2.0, "stimulus_duration": 2.0},
     "not implemented with tbptt"),
    ({"checkpoint": 0}, "segment length >= 1"),
    ({"lr": 0}, "greater than 0"),
    ({"epoch": 3}, "Extra inputs are not permitted"),
])
def test_config_errors_are_clear(options, match):
    with pytest.raises(ValidationError, match=match):
        TrainingConfig(**options)


@pytest.mark.parametrize("options, net_options, match", [
    ({"t_end": 7.0}, {}, "not a whole number of steps"),
    ({"idle": 3.0}, {}, "idle = 3 ms is not a whole number"),
    ({"reaction_time": 4.0}, {}, "need a readout at='every'"),
    ({"amp": "fp16"}, {}, "needs a CUDA device"),
    ({"stimulus_onset": 20.0}, {}, "not before t_end"),
    ({"stability_weight": 1.0, "stimulus_onset": 2.0, "stimulus_duration": 20.0}, {}, "nothing to measure"),
    ({"tbptt": 4}, {"readout_at": "mean", "readout_window": (2.0, 12.0)}, "inside the last segment"),
    ({"tbptt": 4}, {"readout_at": "every", "readout_window": (0.0, 6.0)}, "holds no time of the loss window"),
])
def test_trainer_errors_name_the_fix(task, options, net_options, match):
    with pytest.raises(ConfigurationError, match=match):
        Trainer(_net(task, **net_options), TrainingConfig(**options), progress=False)


def test_trainer_needs_a_readout_and_a_time_grid(task):
    net = _net(task)
    net.readout = None
    with pytest.raises(ConfigurationError, match="no readout"):
        Trainer(net, TrainingConfig(), progress=False)
    net = _net(task)
    net.protocol = {}
    with pytest.raises(ConfigurationError, match="needs dt and t_end"):
        Trainer(net, TrainingConfig(), progress=False)


def test_max_spectral_radius_projects_every_recurrence():
    import dynode as dn
    from dynode.models.stability import spectral_radius
    from dynode.train import Trainer, TrainingConfig

    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=2, input_shape=(1, 8, 8), num_classes=3, width=0.25, steps=3,
                           phi="relu", recurrence_type="depthpointwise")
    for name, pop in net.populations.items():  # make every recurrence strongly unstable
        for p in pop.incoming[name].parameters():
            p.data.mul_(30.0)
    tr = Trainer(net, TrainingConfig(epochs=1, batch_size=4, max_spectral_radius=0.7), progress=False)
    before = {n: spectral_radius(p.incoming[n], p.shape) for n, p in net.populations.items()}
    assert all(r > 0.7 for r in before.values())
    tr.step(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    for name, pop in net.populations.items():
        assert spectral_radius(pop.incoming[name], pop.shape) <= 0.7 * 1.01


def test_resume_on_a_network_with_another_parameter_order_matches_the_straight_run(task, tmp_path):
    """The optimizer state is saved by position; a network rebuilt from its spec registers the
    normalization's parameters in another order. Resuming re-indexes the state by name, so
    momentum goes to the same tensors as in the uninterrupted run."""
    norm = {"tau": 100.0, "delay": 4.0, "pool": "channel", "weight": 30.0}
    cfg = TrainingConfig(epochs=2, batch_size=32, lr=3e-3, optimizer="sgd", momentum=0.9, seed=5)
    straight = Trainer(_net(task, normalization=norm), cfg, progress=False)
    straight.fit(task)
    first = Trainer(_net(task, normalization=norm), cfg, checkpoint_dir=tmp_path, progress=False)
    first.fit(task, until=1)
    rebuilt = dn.spec.build_network(dn.spec.network_spec(first.network))
    assert [n for n, _ in rebuilt.named_parameters()] != [n for n, _ in first.network.named_parameters()]
    second = Trainer(rebuilt, cfg, progress=False).resume(tmp_path / "last.pt")
    second.fit(task)
    assert _metrics(second.result.history) == _metrics(straight.result.history)
    for name, p in straight.network.named_parameters():
        assert torch.equal(dict(second.network.named_parameters())[name], p), name
