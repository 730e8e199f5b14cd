"""Two-process DDP (gloo, CPU) launched with torchrun: the loss curve and the weights match
single-process training on the same global batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from dynode.models import dyrcnn
from dynode.stimuli import generated_task
from dynode.train import Trainer, TrainingConfig

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

# 61 images in batches of 16: the last batch (13) splits unevenly, 7 + 6
DATA = dict(n_train=61, n_test=24, size=16, seed=1)
CONFIGS = {
    "bptt+checkpoint": dict(epochs=3, batch_size=16, lr=5e-3, seed=2, energy_weight=0.01, grad_clip=1.0, checkpoint=2),
    "tbptt": dict(epochs=2, batch_size=16, lr=5e-3, seed=2, tbptt=2, idle=4.0, optimizer="sgd",
                  schedule="step", step_epochs=1, gamma=0.5),
}

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, os.environ["DDP_TEST_DIR"])
    from test_ddp import CONFIGS, run
    out, trainers = {}, []
    for name, options in CONFIGS.items():
        trainer, history, weights = run(options)
        assert trainer.world == 2 and trainer.dist is not None and trainer.dist.get_backend() == "gloo"
        out[name] = {"history": history, "weights": weights}
        trainers.append(trainer)
    assert trainers[0]._owns_group and not trainers[1]._owns_group  # the first one initialised it
    trainers[0].close()
    assert not torch.distributed.is_initialized()
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as fh:
        json.dump(out, fh)
""")


def run(options: dict):
    """Train under ``options``; returns the trainer, the metrics and the flat weights."""
    task = generated_task(DATA["n_train"], DATA["n_test"], size=DATA["size"], seed=DATA["seed"])
    torch.manual_seed(0)
    net = dyrcnn(depth=2, width=0.25, input_shape=task.image_shape, num_classes=task.num_classes, steps=4)
    trainer = Trainer(net, TrainingConfig(**options), progress=False)
    trainer.fit(task, task)
    weights = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
    return trainer, trainer.result.history, weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DDP_TEST_DIR=os.path.dirname(__file__), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    for name, options in CONFIGS.items():
        _, history, weights = run(options)  # one process, the same global batches
        for rank in ranks:
            ddp = rank[name]
            assert len(ddp["history"]) == options["epochs"]
            for single_row, ddp_row in zip(history, ddp["history"]):
                for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                    assert ddp_row[key] == pytest.approx(single_row[key], rel=1e-4, abs=1e-6), (name, key)
            torch.testing.assert_close(torch.tensor(ddp["weights"]), torch.tensor(weights), rtol=1e-4, atol=1e-5)
        assert ranks[0][name]["weights"] == ranks[1][name]["weights"]  # the replicas stay identical
