"""Docs as tests: every fenced Python block and shell block of README.md and docs/*.md runs as
written.

* Python blocks (```python) of one file run in order in one namespace (as a reader follows the
  page), in a fresh temporary folder (the page's working directory).
* Shell blocks (```bash, ```sh, ```shell, ```console) run with ``bash -e`` in that folder, with
  the repository's ``examples/`` etc. reachable at the same relative paths (the folder holds
  links to them), so ``dynode simulate examples/configs/...`` works as written.
* A block that cannot run here (a cluster, a download, the test suite itself) is preceded by
  ``<!-- skip-test: <reason> -->``; it is reported as skipped with that reason, and
  :func:`test_skipped_blocks_are_few_and_explained` counts them.
Other text-only blocks (```text, ```yaml, tables) are not code and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell", "console"}
SKIP = re.compile(r"<!--\s*skip-test:\s*(.*?)\s*-->")
MAX_SKIPPED = 6
"""At most this many blocks may be exempt (each with a reason)."""


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file (``lang`` lower-cased, ``""`` if none), each
    with the reason of a ``skip-test`` comment on one of the two lines above its fence."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        above = "\n".join(lines[max(0, start - 2):start])
        skip = SKIP.search(above)
        blocks.append(Block(path, start + 1, lang, "\n".join(body) + "\n", skip.group(1) if skip else None))
    return blocks


ALL = [b for p in DOCS if p.exists() for b in extract(p)]
CODE = [b for b in ALL if b.lang in PYTHON | SHELL]


def test_the_readme_has_runnable_blocks():
    readme = [b for b in CODE if b.file.name == "README.md" and b.skip is None]
    assert sum(b.lang in PYTHON for b in readme) >= 3 and sum(b.lang in SHELL for b in readme) >= 1


def test_skipped_blocks_are_few_and_explained():
    skipped = [b for b in CODE if b.skip is not None]
    for b in skipped:
        assert len(b.skip) >= 10, f"{b.id}: say why the block cannot run here"
    assert len(skipped) <= MAX_SKIPPED, [f"{b.id}: {b.skip}" for b in skipped]


def test_no_unlabelled_code_blocks():
    """A fence without a language is neither run nor declared text: label it (```text for output)."""
    assert [b.id for b in ALL if b.lang == ""] == []


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    for name in ("examples", "benchmarks", "docs"):
        if (ROOT / name).exists():
            (d / name).symlink_to(ROOT / name)
    return d


_NAMESPACES: dict[Path, tuple[dict, list[int]]] = {}


def _run_python(block: Block, workdir: Path) -> None:
    """Run ``block`` in its file's namespace, first running the file's earlier blocks that have
    not run yet (so that one block can be run alone with ``-k``)."""
    ns, done = _NAMESPACES.setdefault(block.file, ({"__name__": "__docs__"}, []))
    before = [b for b in CODE if b.file == block.file and b.lang in PYTHON and b.skip is None
              and b.line < block.line and b.line not in done]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        import matplotlib

        matplotlib.use("Agg")
        for b in [*before, block]:
            done.append(b.line)
            exec(compile(b.code, b.id, "exec"), ns)
    finally:
        os.chdir(cwd)


def _run_shell(block: Block, workdir: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    code = "\n".join(line.removeprefix("$ ") for line in block.code.splitlines()
                     if not (block.lang == "console" and line and not line.startswith("$ ")))
    res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{block.id} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.lang in SHELL else [])
                                   for b in CODE])
def test_block_runs_as_written(block: Block, workdir):
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    if block.lang in PYTHON:
        _run_python(block, workdir)
    else:
        _run_shell(block, workdir)
