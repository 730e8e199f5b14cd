"""Load an archive written by ``dynode simulate`` / ``dynode experiment`` / ``dynode demo`` and
plot population time courses per condition: read with plain xarray (no dynode needed), drawn in
dynode's figure style (dynode.analysis.style), populations in the network's order.

    python examples/plot_archive.py dynode-demo/experiments/groen2022-duration.zarr [--out plot.png]
"""

from __future__ import annotations

import argparse

import xarray as xr


def population_course(rate: xr.DataArray) -> tuple[xr.DataArray, str]:
    """The ``(time, sample)`` course of a population and what it is, for every ``Record.reduce``
    (the ``reduction`` attribute): unit-level rates are averaged over units, ``"mean"`` and
    ``"std"`` are already reduced, and ``"mean_std"`` holds both along ``statistic``, of which the
    mean is plotted (never an average of the mean and the standard deviation)."""
    reduction = rate.attrs.get("reduction")
    if reduction == "mean_std" or "statistic" in rate.dims:
        return rate.sel(statistic="mean"), "mean firing rate over units"
    if reduction == "std":
        return rate, "std of the firing rate over units"
    units = [d for d in rate.dims if d not in ("time", "sample")]
    course = rate.mean(units) if units else rate
    if reduction not in (None, "mean"):  # a callable's output (``reduction`` names it)
        return course, f"{reduction} of the firing rate" + (", mean over its outputs" if units else "")
    return course, "mean firing rate over units"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive")
    ap.add_argument("--by", default=None, help="condition coordinate to colour by (default: the first)")
    ap.add_argument("--out", default="archive.png")
    args = ap.parse_args(argv)
    tree = xr.open_datatree(args.archive, engine="zarr")
    print(f"status: {tree.attrs.get('status')}, populations: {[g for g in tree.children]}")
    conds = [c for c in tree.ds.coords if tree.ds[c].dims == ("sample",) and c != "sample"]
    by = args.by or next((c for c in conds if len(set(tree.ds[c].values.tolist())) > 1), None)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynode.analysis.style import hierarchy_order, label, style

    # the network's order (V1, V2, V4, IT), which the archive records; zarr lists groups alphabetically
    names = hierarchy_order([g for g in tree.children if "rate" in tree[g].data_vars], tree.attrs.get("populations"))
    with style():
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), squeeze=False, layout="constrained")
        for ax, name in zip(axes[0], names):
            rate = tree[name]["rate"]
            course, what = population_course(rate)
            groups = course.groupby(tree.ds[by]) if by else [("all", course)]
            for value, group in groups:
                ax.plot(group["time"], group.mean("sample"), label=f"{value:g}" if by else value)
            ax.set(title=name, xlabel=label("time", rate["time"].attrs.get("units", "ms")),
                   ylabel=label(what, rate.attrs.get("units")))
        if by:
            axes[0][-1].legend(title=by, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.savefig(args.out)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
