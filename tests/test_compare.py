"""dynode compare: variants, the table, the figure, errors before anything trains."""

import csv
import subprocess
import sys

import pytest

from dynode.cli import main
from dynode.compare import (COMPARED_RECURRENCE, comparison_rows, default_variants, format_comparison,
                            run_comparison)
from dynode.demo import demo_config
from dynode.errors import ConfigurationError


def test_default_variants_are_the_papers_recurrence_types_with_and_without_normalization():
    v = default_variants()
    assert list(v) == [f"{rt}{s}" for rt in COMPARED_RECURRENCE for s in ("+norm", "+norm+tau", "")]
    assert v["self+norm"]["recurrence_type"] == "self" and v["self+norm"]["normalization"]["tau"] == 100.0
    assert v["self+norm+tau"] == {**v["self+norm"], "train_tau": True}
    assert v["self"]["normalization"] is None
    custom = default_variants(["full"], normalization={"tau": 100.0, "weight": 3.0}, learnt_tau=False)
    assert custom == {"full+norm": {"recurrence_type": "full", "normalization": {"tau": 100.0, "weight": 3.0}},
                      "full": {"recurrence_type": "full", "normalization": None}}


def summary(ratio, isi17, ttp1, flags=None):
    return {"summation_ratio": {17.0: 0.95, 33.0: ratio, 67.0: ratio - 0.1}, "asymptote_to_peak": 0.4,
            "isi_recovery": {17.0: isi17, 533.0: 1.0}, "time_to_peak_ms": {1.0: ttp1, 0.25: ttp1 + 20},
            "c50": 0.3, "baseline_to_peak": 0.001, "flags": flags or {}}


def test_rows_and_table_from_summaries():
    results = {"full+norm": {"accuracy": 0.9, "summary": {"V1": summary(0.8, 0.7, 30.0), "IT": summary(0.7, 0.5, 50.0)}},
               "full": {"accuracy": 0.8, "summary": {"V1": summary(1.0, 1.0, 0.0, {"time_to_peak_ms[1]": "plateau"}),
                                                    "IT": summary(1.0, 1.0, 40.0)}}}
    results["full"]["summary"]["V1"]["time_to_peak_ms"] = {1.0: None, 0.25: None}
    rows = comparison_rows(results)
    assert [(r["variant"], r["area"]) for r in rows] == [("full+norm", "V1"), ("full+norm", "IT"),
                                                         ("full", "V1"), ("full", "IT")]
    r = rows[0]
    # the 17 ms pair is left out of the range (near threshold), as in the demo's table
    assert (r["summation_ratio_min"], r["summation_ratio_max"]) == pytest.approx((0.7, 0.8))
    assert r["isi_recovery_shortest"] == 0.7 and r["isi_recovery_longest"] == 1.0
    assert r["time_to_peak_c1_ms"] == 30.0 and r["time_to_peak_c025_ms"] == 50.0
    assert rows[2]["time_to_peak_c1_ms"] is None and rows[2]["flags"] == "time_to_peak_ms[1]"
    text = format_comparison(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| variant | area | acc |") and len(lines) == 2 + 4 + 1
    assert "| full | V1* | 0.80 |" in text and "n/a" in lines[4]


def test_bad_variant_options_fail_before_anything_trains(tmp_path):
    base = demo_config(quick=True)
    with pytest.raises(ConfigurationError, match="variant 'oops'.*normalization"):
        run_comparison(base, tmp_path / "c", {"full": {}, "oops": {"normalization": {"tua": 3}}})
    assert not (tmp_path / "c" / "full").exists()
    with pytest.raises(ConfigurationError, match="folder names"):
        run_comparison(base, tmp_path / "c", {"a/b": {}})
    with pytest.raises(ConfigurationError, match="at least one variant"):
        run_comparison(base, tmp_path / "c", {})


def test_cli_unknown_variant_and_quick_with_config(tmp_path, capsys):
    assert main(["compare", "--quick", "--variants", "full,nope", "--out", str(tmp_path / "c")]) == 2
    assert "unknown variants ['nope']" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("compare: {variants: {a: {recurrence_type: self}}}\n")
    assert main(["compare", str(cfg), "--quick"]) == 2
    assert "--quick applies without CONFIG" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_quick_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "dynode.cli", "compare", "--quick", "--variants",
                           "full+norm,self", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the analysis flags are the table's footnotes, not also Python warnings (issue 22)
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["area"]) for r in rows] == [(v, a) for v in ("full+norm", "self")
                                                         for a in ("V1", "V2", "V4", "IT")]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| variant | area |" in proc.stdout and (out / "full+norm" / "experiments").is_dir()
