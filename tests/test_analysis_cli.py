"""`dynode analyze` on Groen archives (metrics table with footnotes, figures) and on any other
archive (time courses per population and condition)."""

import torch

import dynode as dn
from dynode.cli import main
from test_analysis_archive import PNG, two_area_net


def test_analyze_command_on_groen_and_on_plain_archives(tmp_path, capsys):
    net = two_area_net(linear=False)
    images = 0.5 + 0.5 * torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for kind in ("contrast", "duration"):
        p = dn.stimuli.groen2022(kind, images=images, onset=300.0, background="grey")
        dn.simulate(net, p, t_end=p.t_end, dt=1.0, record=dn.Record(reduce="mean"), store=tmp_path / f"{kind}.zarr",
                    progress=False)
    # one contrast, one duration: no condition that tells a Groen experiment
    plain = dn.stimuli.contrast_series(images, [0.5], onset=50.0, duration=100.0, t_end=200.0, background="grey")
    dn.simulate(net, plain, t_end=200.0, dt=1.0, store=tmp_path / "plain.zarr", progress=False)
    code = main(["analyze", str(tmp_path / "contrast.zarr"), str(tmp_path / "duration.zarr"),
                 str(tmp_path / "plain.zarr"), "--out", str(tmp_path / "figs")])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["area", "sum.", "ratio"]
    assert [line.split()[0].split("*")[0] for line in lines[1:3]] == ["V1", "V2"]  # the hierarchy
    assert "T->2T ms" in out and "17->33" in out and "no Groen 2022 conditions" in out
    for name in ("time_courses_contrast", "time_courses_duration", "summation", "contrast_response",
                 "time_courses_plain"):
        assert (tmp_path / "figs" / f"{name}.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "figs" / "recovery.png").exists()  # no repetition archive
