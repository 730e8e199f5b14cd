"""``dynode demo --quick`` says first that it shows the layout of the results only (issue 22
item 5): its one epoch of 96 images leaves the model near chance."""

from __future__ import annotations

import dynode.demo as demo


def test_quick_demo_says_it_shows_the_layout_only(tmp_path, monkeypatch):
    seen = []

    def workflow(cfg, out, **kw):
        seen.append((cfg.training.epochs, cfg.data.n_train))
        return {"summary": {}, "figures": {}}

    monkeypatch.setattr(demo, "run_workflow", workflow)
    monkeypatch.setattr(demo, "format_summary", lambda summary: "")
    for quick in (True, False):
        lines: list[str] = []
        demo.run_demo(tmp_path / str(quick), quick=quick, log=lines.append)
        assert (demo.QUICK_NOTE in lines) == quick
        assert lines.index(demo.QUICK_NOTE) == 1 if quick else True  # right after the first line
    assert seen == [(1, 96), (4, 1200)]  # the note's numbers are the quick settings'
    assert "1 epoch of 96 images" in demo.QUICK_NOTE and "layout" in demo.QUICK_NOTE
