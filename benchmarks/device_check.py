"""The device check: dynode on an accelerator, side by side with plain PyTorch, in one run.

Usage::

    python benchmarks/device_check.py --device cuda --out results   # the full check
    python benchmarks/device_check.py --device cpu --quick          # smoke test of this script

**Correctness** (a max |difference| each, computed on the device; exit code 1 if one fails):

* dyrcnn(depth=4) and CORnet-RT: dynode's logits against their plain PyTorch references
  (``bench_models``: a hand-written loop with the same modules, the unrolled CORnet-RT);
* a delayed conv field under Euler, RK4 and Dopri5 in float64: the device's trajectory
  against the CPU's (relative to the largest rate);
* bf16 autocast: CORnet-RT's logits against its float32 logits (relative).

**Timings** (medians of interleaved runs, the device synchronised around each; ratio to the
first contender of each row, as in ``benchmarks/run.py``):

* dyrcnn(4) train step (forward, cross-entropy, backward, SGD): plain loop vs dynode;
* CORnet-RT train step in float32: plain unrolled vs dynode; with bf16 autocast and
  channels-last: plain with those options vs dynode's :func:`dynode.models.prepare_for_speed`;
* the conv4 field (``nets.conv4_network``, 20 Euler steps) forward + backward: hand loop vs
  dynode, dynode with every operator compiled (``torch.compile``), and compiled with
  ``mode="reduce-overhead"`` (CUDA graphs). Compiling runs on CUDA only unless ``--compile``.

A part that raises is reported with its error and the others still run. Nothing here is a
test; ``tests/test_device_check.py`` runs ``--device cpu --quick`` so that the script keeps
working until a device is lent.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import dynode as dn  # noqa: E402
from bench_core import hand_loop  # noqa: E402
from bench_models import PlainCORnetRT, PlainDyRCNN, train_step  # noqa: E402
from dynode.models import Classifier, prepare_for_speed, zoo  # noqa: E402
from harness import Benchmark, format_table, run_benchmark  # noqa: E402
from nets import conv4_network  # noqa: E402

AMP = torch.bfloat16


def _sizes(device: torch.device, quick: bool) -> dict:
    if quick:
        return dict(dyrcnn=4, cornet=2, cornet_hw=64, conv=4, conv_steps=5)
    if device.type == "cuda":  # enough work per step for a large GPU
        return dict(dyrcnn=128, cornet=64, cornet_hw=224, conv=128, conv_steps=20)
    return dict(dyrcnn=32, cornet=16, cornet_hw=224, conv=32, conv_steps=20)


def _cornet(device: torch.device, hw: int) -> dn.Network:
    torch.manual_seed(0)
    return zoo.cornet_rt(1000, 5, input_shape=(3, hw, hw)).to(device)


# -- correctness -------------------------------------------------------------------------------
def _max_diff(a: torch.Tensor, b: torch.Tensor, relative: bool = False) -> float:
    d = (a.double() - b.double().to(a.device)).abs().max().item()
    return d / max(b.double().abs().max().item(), 1e-30) if relative else d


def correctness(device: torch.device, quick: bool) -> list[dict]:
    """``[{check, value, tol, ok}]``; a check that raises is a row with its error."""
    checks = []

    def dyrcnn():
        torch.manual_seed(0)
        net = zoo.dyrcnn(4).to(device)
        x = torch.rand(4, 3, 32, 32, device=device)
        with torch.no_grad():
            return _max_diff(Classifier(net)(x), PlainDyRCNN(net)(x))
    checks.append(("dyrcnn(4) logits: dynode vs plain loop", dyrcnn, 1e-4))

    hw = 64 if quick else 224

    def cornet():
        net = _cornet(device, hw)
        x = torch.rand(2, 3, hw, hw, device=device)
        with torch.no_grad():
            return _max_diff(Classifier(net)(x), PlainCORnetRT(net, 5).to(device)(x))
    checks.append(("CORnet-RT logits: dynode vs plain unrolled", cornet, 1e-4))

    def amp():
        model = Classifier(_cornet(device, hw))
        x = torch.rand(2, 3, hw, hw, device=device)
        with torch.no_grad():
            ref = model(x)
            with torch.autocast(device.type, dtype=AMP):
                low = model(x)
        return _max_diff(low.float(), ref, relative=True)
    checks.append(("CORnet-RT logits: bf16 autocast vs float32 (relative)", amp, 0.05))

    for solver, tol in (("euler", 1e-9), ("rk4", 1e-9), ("dopri5", 1e-4)):
        def solve(solver=solver):
            net = conv4_network(in_shape=(3, 16, 16)).double()
            x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
            cpu = dn.integrate(net, x, t_end=20.0, dt=0.5, solver=solver, save_at=[5.0, 10.0, 20.0])
            dev = dn.integrate(net.to(device), x.to(device), t_end=20.0, dt=0.5, solver=solver,
                               save_at=[5.0, 10.0, 20.0])
            return max(_max_diff(dev.states[p], cpu.states[p], relative=True) for p in cpu.states)
        checks.append((f"delayed conv field, {solver}, float64: device vs CPU (relative)", solve, tol))

    rows = []
    for name, fn, tol in checks:
        try:
            value = fn()
            rows.append(dict(check=name, value=value, tol=tol, ok=value <= tol))
        except Exception as exc:  # reported in the table, the other checks still run
            rows.append(dict(check=name, value=None, tol=tol, ok=False, error=f"{type(exc).__name__}: {exc}"))
    return rows


# -- timings -------------------------------------------------------------------------------------
def benchmarks(device: torch.device, quick: bool, compile_ops: bool, errors: list[str]) -> list[Benchmark]:
    size = _sizes(device, quick)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def dyrcnn(q):
        torch.manual_seed(0)
        net = zoo.dyrcnn(4).to(device)
        x = torch.rand(size["dyrcnn"], 3, 32, 32, device=device)
        y = torch.randint(0, 100, (size["dyrcnn"],), device=device)
        model = Classifier(net)
        return {"plain loop": train_step(PlainDyRCNN(net), net.parameters(), x, y),
                "dynode": train_step(model, model.parameters(), x, y)}

    hw, b = size["cornet_hw"], size["cornet"]

    def cornet_data():
        torch.manual_seed(1)
        return torch.rand(b, 3, hw, hw, device=device), torch.randint(0, 1000, (b,), device=device)

    def cornet(q):
        x, y = cornet_data()
        model, plain = Classifier(_cornet(device, hw)), PlainCORnetRT(_cornet(device, hw), 5).to(device)
        return {"plain unrolled": train_step(plain, plain.parameters(), x, y),
                "dynode": train_step(model, model.parameters(), x, y)}

    def cornet_fast(q):
        x, y = cornet_data()
        plain = PlainCORnetRT(_cornet(device, hw), 5).to(device).to(memory_format=torch.channels_last)
        plain.memory_format = torch.channels_last
        fast = prepare_for_speed(Classifier(_cornet(device, hw)), channels_last=True, autocast=AMP,
                                 low_precision_states=True)  # dt == tau: r = Phi(u), exact in bf16
        cl = lambda v: v.contiguous(memory_format=torch.channels_last)  # noqa: E731
        return {"plain, bf16 autocast + channels-last": train_step(plain, plain.parameters(), x, y, cl, AMP),
                "dynode, prepare_for_speed (same options)": train_step(fast, fast.parameters(), x, y)}

    def conv4(q):
        torch.manual_seed(0)
        x = torch.randn(size["conv"], 3, 32, 32, device=device)
        steps = size["conv_steps"]

        def run(fn, last):
            def go():
                last(fn()).sum().backward()
            return go

        def dynode_run(net):
            return run(lambda: dn.integrate(net, x, t_end=steps * 2.0, dt=2.0),
                       lambda s: s.states[list(s.states)[-1]])

        net = conv4_network().to(device)
        out = {"hand-written loop": run(lambda: hand_loop(net, x, steps, 2.0), lambda o: o[-1]),
               "dynode Euler": dynode_run(net)}
        if compile_ops:
            variants = {"dynode, operators compiled": {}}
            if device.type == "cuda":
                variants["dynode, compiled, CUDA graphs (reduce-overhead)"] = {"mode": "reduce-overhead"}
            for label, options in variants.items():
                try:
                    compiled = prepare_for_speed(conv4_network().to(device), channels_last=False, compile=True,
                                                 compile_options=options)
                    trial = dynode_run(compiled)
                    trial()  # compiles now; a failure drops this contender and is reported
                    out[label] = trial
                except Exception as exc:  # reported below the table, the other contenders still run
                    errors.append(f"conv4 field, {label}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return out

    return [
        Benchmark(f"dyrcnn(4) train step (batch {size['dyrcnn']}, 3x32x32, 20 steps)", dyrcnn,
                  target={"dynode": 1.1}, sync=sync),
        Benchmark(f"CORnet-RT train step, float32 (batch {b}, 3x{hw}x{hw}, times 5)", cornet,
                  target={"dynode": 1.05}, sync=sync),
        Benchmark(f"CORnet-RT train step, bf16 + channels-last (batch {b}, 3x{hw}x{hw})", cornet_fast,
                  target={"dynode, prepare_for_speed (same options)": 1.05}, sync=sync),
        Benchmark(f"conv4 field fwd+bwd (batch {size['conv']}, {size['conv_steps']} Euler steps, delay 6 ms)",
                  conv4, target={"dynode Euler": 1.05}, sync=sync),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small problems, 2 repeats (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="timing rounds (default 5; 2 with --quick)")
    ap.add_argument("--compile", action="store_true", help="also compile off CUDA (minutes on a CPU)")
    ap.add_argument("--out", default=None, help="folder for device_check.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {device} ({name}), dynode {dn.__version__}", flush=True)
    t_start = time.perf_counter()

    checks = correctness(device, args.quick)
    print("\n| check | max difference | tolerance | met |\n| --- | ---: | ---: | :---: |")
    for c in checks:
        value = "error" if c["value"] is None else f"{c['value']:.2e}"
        print(f"| {c['check']} | {value} | {c['tol']:.0e} | {'yes' if c['ok'] else 'NO'} |")
        if "error" in c:
            print(f"|  error: {c['error']} | | | |")

    errors: list[str] = []
    rows = []
    repeats = args.repeats or (2 if args.quick else 5)
    for bench in benchmarks(device, args.quick, args.compile or device.type == "cuda", errors):
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(run_benchmark(bench, repeats=repeats, quick=args.quick))
        except Exception as exc:  # reported below the table, the other rows still run
            errors.append(f"{bench.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    print(f"\n{format_table(rows)}")
    for e in errors:
        print(f"error: {e}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "device_check.json").write_text(json.dumps(
            dict(device=str(device), name=name, torch=torch.__version__, checks=checks, timings=rows,
                 errors=errors), indent=1, default=str))
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
