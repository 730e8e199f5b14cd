"""Load an archive written by ``dynode simulate`` / ``dynode experiment`` / ``dynode demo`` and
plot population time courses per condition, with plain xarray (dynode is not needed to read).

    python examples/plot_archive.py dynode-demo/experiments/groen2022-duration.zarr [--out plot.png]
"""

from __future__ import annotations

import argparse

import xarray as xr


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

    names = list(tree.children)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        rate = tree[name]["rate"]
        course = rate.mean([d for d in rate.dims if d not in ("time", "sample")])
        groups = course.groupby(tree.ds[by]) if by else [("all", course)]
        for value, group in groups:
            ax.plot(group["time"], group.mean("sample"), label=f"{by}={value:g}" if by else value)
        ax.set(title=name, xlabel=f"time ({rate['time'].attrs.get('units', 'ms')})")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
