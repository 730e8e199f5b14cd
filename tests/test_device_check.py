"""benchmarks/device_check.py, the script a session runs when a GPU is lent, keeps working:
it runs end to end here on the CPU (``--quick``), writes its JSON, and fails (exit code 1)
when dynode and a plain reference disagree."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.mark.slow
def test_device_check_runs_on_the_cpu_and_writes_its_table(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--repeats", "1",
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["errors"] == []
    assert len(result["checks"]) == 6 and all(c["ok"] for c in result["checks"])
    contenders = {(r["benchmark"].split(" (")[0], r["contender"]) for r in result["timings"]}
    assert ("dyrcnn(4) train step", "dynode") in contenders
    assert ("conv4 field fwd+bwd", "hand-written loop") in contenders
    assert len(result["timings"]) == 8 and all(r["median"] > 0 for r in result["timings"])
    assert "| dyrcnn(4) logits: dynode vs plain loop |" in done.stdout


@pytest.mark.slow
def test_device_check_fails_when_dynode_and_its_reference_disagree(monkeypatch):
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    dc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dc)

    class Wrong(dc.PlainDyRCNN):
        def __call__(self, img):
            return super().__call__(img) + 1e-3

    monkeypatch.setattr(dc, "PlainDyRCNN", Wrong)
    checks = dc.correctness(torch.device("cpu"), quick=True)
    rows = {c["check"]: c for c in checks}
    assert not rows["dyrcnn(4) logits: dynode vs plain loop"]["ok"]
    assert abs(rows["dyrcnn(4) logits: dynode vs plain loop"]["value"] - 1e-3) < 1e-5
    assert sum(not c["ok"] for c in checks) == 1  # the other checks still ran and passed
    monkeypatch.setattr(dc, "correctness", lambda *a: checks)
    monkeypatch.setattr(dc, "benchmarks", lambda *a: [])  # the exit code only
    assert dc.main(["--device", "cpu", "--quick"]) == 1
