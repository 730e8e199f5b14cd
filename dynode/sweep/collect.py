"""A sweep's summary: the points' results as a table (csv), an xarray Dataset (netCDF, one
dimension per swept key for a grid) and a figure of the metric per point."""

from __future__ import annotations

import json
from pathlib import Path


def collect(out) -> dict:
    """``sweep_summary.csv``, ``sweep_summary.nc`` and ``sweep_summary.png`` from the points'
    ``result.json`` (a point without one is ``failed`` if its log exists, else ``pending``; one
    whose fingerprint is not the point's in ``sweep.json`` is ``stale``, its metrics left out)."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    out = Path(out)
    info = json.loads((out / "sweep.json").read_text())
    keys, rows = info["keys"], []
    fingerprints = info.get("fingerprints") or {}
    for pid in info["points"]:
        d = out / "points" / pid
        meta = json.loads((d / "point.json").read_text())
        row = {"point": pid, **{k: meta["overrides"].get(k) for k in keys}}
        if (d / "result.json").is_file():
            result = json.loads((d / "result.json").read_text())
            if fingerprints.get(pid) is not None and result.get("fingerprint") == fingerprints[pid]:
                row.update(status="done", **result["metrics"])
            else:
                row["status"] = "stale"
        else:
            row["status"] = "failed" if (d / "log.txt").is_file() else "pending"
        rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(out / "sweep_summary.csv", index=False)
    metrics = [c for c in df.columns if c not in ["point", "status", *keys]]
    coords = {k: [_coord(v) for v in df[k]] for k in keys}
    if info["grid"]:
        levels = {k: list(dict.fromkeys(coords[k])) for k in keys}
        shape = tuple(len(v) for v in levels.values())
        data = {m: np.full(shape, np.nan) for m in metrics}
        status = np.full(shape, "pending", dtype=object)
        for i, row in df.iterrows():
            idx = tuple(levels[k].index(coords[k][i]) for k in keys)
            status[idx] = row["status"]
            for m in metrics:
                data[m][idx] = float(row[m]) if pd.notna(row[m]) else np.nan
        ds = xr.Dataset({m: (keys, v) for m, v in data.items()} | {"status": (keys, status.astype(str))},
                        coords=levels)
    else:
        ds = xr.Dataset({m: ("point", df[m].astype(float).to_numpy()) for m in metrics}
                        | {"status": ("point", df["status"].astype(str).to_numpy())},
                        coords={"point": df["point"].to_list(), **{k: ("point", v) for k, v in coords.items()}})
    ds.attrs.update(swept_keys=json.dumps(keys), metric=info["metric"])
    ds.to_netcdf(out / "sweep_summary.nc")
    png = plot_summary(df, keys, info["metric"], out / "sweep_summary.png")
    return {"rows": rows, "csv": out / "sweep_summary.csv", "dataset": out / "sweep_summary.nc", "figure": png}


def _coord(v):
    """A netCDF-friendly coordinate value (bools, None, containers and integers beyond int64
    become strings)."""
    if v is None or isinstance(v, (bool, list, dict)) or (isinstance(v, int) and not -2**63 <= v < 2**63):
        return str(v)
    return v


_UNITS = {"acc": "fraction correct", "loss": "cross-entropy", "time_s": "s", "lr": "learning rate"}
_MS_WORDS = ("tau", "delay", "dt", "t_end", "onset", "duration", "idle", "reaction_time")


def _label(key: str) -> str:
    last = key.split(".")[-1]
    if any(w == last or last.endswith("_" + w) or last.startswith(w + "_") for w in _MS_WORDS):
        return f"{key} (ms)"
    return key


def plot_summary(df, keys: list[str], metric: str, path) -> Path | None:
    """The metric of every point against the first swept key, one series per value of the
    others; failed points are left out (and named in the title). A numeric first key (a
    learning rate, a tau) is an axis: each series is a line through its points in order. A
    categorical one (recurrence types, names) has no order between its values, so nothing joins
    them: each series is its own markers, set a little apart within each category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in df.columns:
        return None
    x_key, rest = keys[0], keys[1:]
    xs = list(dict.fromkeys(_coord(v) for v in df[x_key]))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = list(df.groupby([df[k].map(_coord) for k in rest], sort=False)) if rest else [((), df)]
    for n, (label, g) in enumerate(groups):
        g = g[g["status"] == "done"]
        if g.empty:
            continue
        label = label if isinstance(label, tuple) else (label,)
        name = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(rest, label)) or None
        if numeric:
            pos = [float(v) for v in g[x_key].map(_coord)]
            order = sorted(range(len(pos)), key=lambda i: pos[i])
            ax.plot([pos[i] for i in order], [g[metric].iloc[i] for i in order], "o-", label=name)
        else:  # categories: markers only, the series side by side within +-0.2 of each category
            shift = 0.4 * (n / (len(groups) - 1) - 0.5) if len(groups) > 1 else 0.0
            ax.plot([xs.index(v) + shift for v in g[x_key].map(_coord)], g[metric].to_list(), "o",
                    linestyle="none", label=name)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(_label(x_key))
    unit = next((u for k, u in _UNITS.items() if metric.endswith(k)), None)
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    failed = df.loc[df["status"] != "done", "point"].tolist()
    ax.set_title(f"sweep: {metric} per point" + (f" (not finished: {', '.join(failed)})" if failed else ""),
                 fontsize=10)
    if rest:
        ax.legend(title=", ".join(k.split(".")[-1] for k in rest), fontsize=8, title_fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
