"""Side-by-side timing (and peak-memory) harness used by ``benchmarks/run.py``."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Benchmark:
    """``setup(quick) -> {contender_name: callable}``; the first contender is the baseline.

    ``target``: ``(contender, max_ratio)`` pairs: the row passes when
    ``median(contender) / median(baseline) <= max_ratio`` (use a ratio below 1 for
    "at least x faster"). ``metric``: "time" (seconds) or a callable returning a number
    per run (e.g. peak memory); for a metric the callables return the measurement.
    """

    name: str
    setup: Callable[[bool], dict[str, Callable[[], object]]]
    target: dict[str, float] = field(default_factory=dict)
    note: str = ""
    metric: str = "time"  # "time" or "value" (the callable returns the number to compare)
    sync: Callable[[], None] | None = None  # e.g. torch.cuda.synchronize: time the device's work


def _measure(fn, metric: str, sync=None) -> float:
    if metric == "value":
        return float(fn())
    if sync is not None:
        sync()
    t = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t


def run_benchmark(bench: Benchmark, repeats: int = 5, quick: bool = False) -> list[dict]:
    contenders = bench.setup(quick)
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up
        _measure(contenders[n], bench.metric, bench.sync)
    for _ in range(repeats):
        for n in names:
            gc.collect()
            samples[n].append(_measure(contenders[n], bench.metric, bench.sync))
    base = statistics.median(samples[names[0]])
    rows = []
    for n in names:
        med = statistics.median(samples[n])
        ratio = med / base if base else float("nan")
        target = bench.target.get(n)
        rows.append(dict(benchmark=bench.name, contender=n, median=med, ratio=ratio,
                         target=target, ok=None if target is None else ratio <= target,
                         metric=bench.metric, note=bench.note if n == names[0] else ""))
    return rows


def format_table(rows: list[dict]) -> str:
    out = ["| benchmark | contender | median | ratio to first | target | met |",
           "| --- | --- | ---: | ---: | ---: | :---: |"]
    for r in rows:
        med = f"{r['median'] * 1e3:.1f} ms" if r["metric"] == "time" else f"{r['median']:.4g}"
        tgt = "" if r["target"] is None else f"<= {r['target']:.2f}"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        out.append(f"| {r['benchmark']} | {r['contender']} | {med} | {r['ratio']:.3f} | {tgt} | {ok} |")
    return "\n".join(out)
