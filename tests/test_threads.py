"""The thread policy (issue 26): every dynode process takes the thread count it was given (an
option, Snakemake's threads, the environment, its affinity mask shared among DDP workers),
applies it to torch and says so; bad settings are one clear error naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dynode import threads
from dynode.cli import build_parser, main
from dynode.errors import ConfigurationError
from dynode.sweep.run import _snakefile, point_threads
from dynode.threads import ThreadPolicy, decide_threads, use_threads

CPUS, FOUND = threads.available_cpus()


def test_the_order_explicit_then_environment_then_the_cpus():
    env = {"DYNODE_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert decide_threads(7, environ=env) == ThreadPolicy(7, "--threads", CPUS)
    assert decide_threads(None, environ=env) == ThreadPolicy(3, "DYNODE_THREADS", CPUS)
    assert decide_threads(None, environ={"OMP_NUM_THREADS": "5,2"}) == ThreadPolicy(5, "OMP_NUM_THREADS", CPUS)
    assert decide_threads(None, environ={}) == ThreadPolicy(CPUS, FOUND, CPUS)
    assert decide_threads(None, environ={"DYNODE_THREADS": " "}).source == FOUND  # empty = not set


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity masks on this platform")
def test_the_affinity_mask_not_the_machine_decides(monkeypatch):
    """A process that taskset/cgroups/Slurm put on 1 CPU of a bigger machine uses 1 thread."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    policy = decide_threads(None, environ={})
    assert policy == ThreadPolicy(1, "affinity mask", 1)
    assert policy.describe() == "torch threads: 1 (affinity mask: 1 CPU)"


def test_ddp_workers_share_the_cpus_and_ignore_torchruns_omp_default(monkeypatch):
    """torchrun sets OMP_NUM_THREADS=1 itself for several workers; the workers divide the CPUs."""
    monkeypatch.setattr(threads, "available_cpus", lambda: (16, "affinity mask"))
    env = {"LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "1"}
    policy = decide_threads(None, environ=env)
    assert (policy.threads, policy.workers) == (4, 4)
    assert policy.describe() == "torch threads: 4 (affinity mask: 16 CPUs / 4 local DDP workers)"
    assert decide_threads(None, environ={**env, "LOCAL_WORLD_SIZE": "32"}).threads == 1  # at least one
    assert decide_threads(None, environ={**env, "DYNODE_THREADS": "2"}).threads == 2  # the setting wins


def test_more_threads_than_cpus_is_allowed_and_said(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: (2, "affinity mask"))
    assert decide_threads(4, environ={}).describe() == \
        "torch threads: 4 (--threads; more than the 2 CPUs this process may use)"


@pytest.mark.parametrize("value, setting", [(0, "--threads"), (-2, "--threads"), ("abc", "DYNODE_THREADS"),
                                            ("1.5", "DYNODE_THREADS"), ("0", "OMP_NUM_THREADS"),
                                            ("x", "LOCAL_WORLD_SIZE")])
def test_bad_settings_name_the_setting(value, setting):
    explicit = value if setting == "--threads" else None
    env = {} if setting == "--threads" else {setting: value}
    with pytest.raises(ConfigurationError, match=f"^{setting}={value!r}: give a whole number of threads >= 1"):
        decide_threads(explicit, environ=env)


def test_use_threads_sets_torch_and_keeps_an_earlier_count_with_once():
    before = torch.get_num_threads()
    try:
        policy = use_threads(2)
        assert torch.get_num_threads() == 2 and threads.applied() == policy
        assert policy.interop == torch.get_num_interop_threads()  # the suite's first call sized it, once
        assert use_threads(1, once=True) is policy and torch.get_num_threads() == 2
        assert use_threads(1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_suite_runs_with_its_small_count():
    """conftest: one thread (unless DYNODE_THREADS says otherwise), inherited by subprocesses."""
    assert torch.get_num_threads() == int(os.environ["DYNODE_THREADS"])
    assert os.environ["OMP_NUM_THREADS"]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("DYNODE_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**full, **env})


def test_a_fresh_process_applies_the_count_to_both_pools():
    """Before any parallel work the inter-op pool is sized too (torch refuses it later)."""
    out = _run("""
        import torch
        from dynode.threads import use_threads
        p = use_threads()
        print(p.threads, torch.get_num_threads(), torch.get_num_interop_threads(), p.interop)
    """, DYNODE_THREADS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1", "1"]


def test_the_cli_prints_the_count_first_and_refuses_bad_ones(tmp_path, capsys):
    assert main(["convergence", str(tmp_path / "none.yaml"), "--threads", "1"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == ["torch threads: 1 (--threads)"]  # first, before the config is read
    assert len(err.strip().splitlines()) == 1  # the error is still one line
    assert main(["demo", "--threads", "0", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("dynode demo: error: --threads=0: give a whole number")
    assert not (tmp_path / "d").exists()
    parser = build_parser()
    for command in ("demo", "compare", "train", "simulate", "experiment", "convergence", "analyze", "sweep"):
        positional = [] if command in ("demo", "compare") else ["x"]  # sweep: its options before the file
        assert parser.parse_args([command, "--threads", "3", *positional]).threads == 3, command


def test_cli_environment_error_is_one_line():
    out = _run("""
        import sys
        from dynode.cli import main
        sys.exit(main(["demo", "--quick", "--out", "never"]))
    """, DYNODE_THREADS="abc")
    assert out.returncode == 2
    assert out.stderr.strip() == ("dynode demo: error: DYNODE_THREADS='abc': give a whole number of threads >= 1 "
                                  "(or leave DYNODE_THREADS out to use the CPUs this process may run on)")


def test_sweep_points_get_snakemakes_threads(tmp_path):
    assert point_threads(1, 3) == (1, "--cores 1 / 3 points")
    assert point_threads(8, 2) == (4, "--cores 8 / 2 points")
    assert point_threads(2, 5)[0] == 1
    assert point_threads(2, 5, threads=2) == (2, "--threads")
    with pytest.raises(ConfigurationError, match="^--threads=0"):
        point_threads(2, 5, threads=0)
    text = _snakefile([{"id": "p0"}], tmp_path, tmp_path, threads=3)
    assert "    threads: 3\n" in text
    assert "point " in text and " --threads {threads} > " in text  # Snakemake fills in what it granted


def test_a_sweep_point_prints_and_refuses():
    ok = subprocess.run([sys.executable, "-m", "dynode.sweep", "point", "/nonexistent-point", "--threads", "1"],
                        capture_output=True, text=True, timeout=300)
    assert ok.stdout.splitlines()[0] == "torch threads: 1 (--threads)"  # printed before the point is read
    assert ok.returncode != 0 and "point.json" in ok.stderr
    bad = subprocess.run([sys.executable, "-m", "dynode.sweep", "point", "/nonexistent-point", "--threads", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("python -m dynode.sweep: error: --threads=0")


def test_a_ddp_worker_takes_its_share(tmp_path):
    """A worker in a process group (here a one-process gloo group, made by the script) under
    torchrun's variables divides the CPUs by LOCAL_WORLD_SIZE and says so (local rank 0)."""
    if not torch.distributed.is_available():
        pytest.skip("no torch.distributed")
    out = _run("""
        import torch, torch.distributed
        from dynode.train.runtime import init_distributed
        torch.distributed.init_process_group("gloo")
        dist, created = init_distributed("cpu")
        print("threads", torch.get_num_threads(), created)
        dist.destroy_process_group()
    """, WORLD_SIZE="1", LOCAL_WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr
    share = max(1, CPUS // 2)
    assert out.stdout.splitlines() == [
        f"torch threads: {share} ({FOUND}: {CPUS} CPU{'s' if CPUS != 1 else ''} / 2 local DDP workers) per DDP worker",
        f"threads {share} False"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_options_after_the_sweep_file_are_dynodes(monkeypatch, tmp_path, capsys):
    """`dynode sweep FILE --cores 4 --threads 2 -- --jobs 3`: --cores and --threads reach the
    points' threads (argparse's REMAINDER used to hand them to Snakemake); after -- is Snakemake's."""
    import dynode.sweep

    seen = {}

    def fake(path, **kw):
        seen.update(kw, path=path)
        return {"returncode": 0}

    monkeypatch.setattr(dynode.sweep, "run_sweep", fake)
    assert main(["sweep", "s.yaml", "--cores", "4", "--threads", "2", "--dry-run", "--", "--jobs", "3"]) == 0
    assert (seen["path"], seen["cores"], seen["threads"], seen["snakemake_args"]) == ("s.yaml", 4, 2, ["--jobs", "3"])
    assert main(["sweep", "--cores", "3", "s.yaml", "--dry-run"]) == 0 and seen["cores"] == 3
    assert main(["sweep", "s.yaml", "--executor", "slurm"]) == 2  # Snakemake's options go after --
    assert "unrecognized arguments: --executor" in capsys.readouterr().err


# -- a process told nothing shares the CPUs with other busy processes --------------------------
@pytest.mark.skipif(not os.path.exists(threads._PROC_STAT), reason="needs Linux /proc/stat")
def test_a_process_told_nothing_gives_up_the_cpus_others_keep_busy(monkeypatch, capsys):
    """Every SHARE_EVERY_S at most, from the computing thread: max(1, CPUs - round(CPUs the other
    processes used)), back up when they are idle; each change said on stderr; a given count is
    never changed."""
    import threading

    for var in ("DYNODE_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: (4, "affinity mask"))
    clock, busy, own = [100.0], [1000.0], [50.0]
    monkeypatch.setattr(threads, "_machine_busy_s", lambda: busy[0])
    monkeypatch.setattr(threads, "_own_busy_s", lambda: own[0])
    before, applied_before = torch.get_num_threads(), threads.applied()

    def spend(seconds: float, others: float, mine: float) -> None:
        clock[0] += seconds
        busy[0] += seconds * (others + mine)
        own[0] += seconds * mine

    try:
        policy = use_threads()
        assert policy.threads == 4 and threads._sharing is not None
        s = threads._sharing
        s.now = lambda: clock[0]
        s.next, s.last = clock[0] + threads.SHARE_EVERY_S, (clock[0], busy[0], own[0])
        spend(2.0, others=2.6, mine=4.0)
        threads.share()
        assert torch.get_num_threads() == 1 and threads.applied().threads == 1  # 4 - round(2.6)
        spend(1.0, others=0.0, mine=1.0)
        threads.share()  # within SHARE_EVERY_S of the last look: nothing
        assert torch.get_num_threads() == 1
        spend(1.5, others=1.2, mine=1.0)  # over the 2.5 s since the last look: 0.72 others -> 1
        threads.share()
        assert torch.get_num_threads() == 3
        spend(2.0, others=0.3, mine=3.0)
        worker = threading.Thread(target=threads.share)  # not the computing thread: nothing
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 3
        threads.share()
        assert torch.get_num_threads() == 4
        err = capsys.readouterr().err.splitlines()
        assert err == ["dynode: torch threads 4 -> 1: other processes kept 2.6 of this process's 4 CPUs busy",
                       "dynode: torch threads 1 -> 3: other processes kept 0.7 of this process's 4 CPUs busy",
                       "dynode: torch threads 3 -> 4: other processes kept 0.3 of this process's 4 CPUs busy"]
        use_threads(2)  # a given count: kept whatever the others do
        assert threads._sharing is None
        monkeypatch.setenv("DYNODE_THREADS", "2")
        use_threads()
        assert threads._sharing is None
    finally:
        torch.set_num_threads(before)
        threads._sharing, threads._applied = None, applied_before


def test_integrate_looks_at_the_other_processes(monkeypatch):
    """The look happens where the computing thread passes often: every dn.integrate call."""
    import dynode as dn

    looks = []
    monkeypatch.setattr(threads, "_sharing", type("S", (), {"look": lambda self: looks.append(1)})())
    net = dn.Network()
    net.add_input("x", (2,))
    net.add_population("A", (2,), tau=5.0, phi="identity")
    net.connect("x", "A")
    dn.integrate(net, dn.stimuli.Constant(torch.ones(1, 2)), t_end=2.0, dt=1.0)
    dn.integrate(net, dn.stimuli.Constant(torch.ones(1, 2)), t_end=2.0, dt=1.0)
    assert looks == [1, 1]
