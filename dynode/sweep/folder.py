"""The output folder's safety (the package docstring's "Safety of the output folder"): one
``dynode sweep`` at a time owns it (``sweep.owner.json``: :func:`acquire_folder`,
:func:`release_folder`, :class:`SweepLockedError`), and it holds one sweep (:func:`check_folder`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from dynode.archive import LEASE_ATTR, boot_id, lease_state, proc_stat
from dynode.config import load_config, run_config
from dynode.errors import ConfigurationError, DynodeError
from dynode.sweep.config import SweepConfig, point_record
from dynode.train import config_diff

OWNER_FILE = "sweep.owner.json"
"""The file in a sweep's output folder that names the ``dynode sweep`` owning it (JSON)."""


class SweepLockedError(DynodeError):
    """Another ``dynode sweep`` owns the output folder (``sweep.owner.json``).

    Attributes
    ----------
    owner : the owner file's content (pid, host, started, sweep_file, sweep, ...).
    """

    def __init__(self, message: str, *, owner: dict):
        super().__init__(message)
        self.owner = owner


# -- owning the output folder ----------------------------------------------------------------
_OWNED: set[str] = set()  # tokens of the folders this process owns now


def proc_id(pid: int) -> dict:
    """``{"pid", "pid_start"}`` of a process: what tells it apart from a later one with its pid."""
    stat = proc_stat(pid)
    return {"pid": pid, "pid_start": None if stat is None else stat[1]}


def json_field(path: Path, key: str):
    """``key`` of the JSON object in ``path``; None when the file is missing, empty, being
    written, not JSON or not an object."""
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return got.get(key) if isinstance(got, dict) else None


def _read_owner(path: Path, *, wait_s: float = 1.0) -> dict | None:
    """The owner file's content; None when there is none. A file just created by another
    sweep may be empty for an instant: it is read again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(text)
        except ValueError:
            owner = None  # being written: read again below, then judge it
        if (isinstance(owner, dict) and isinstance(owner.get("pid"), int) and owner["pid"] > 0
                and isinstance(owner.get("host"), str)):
            return owner
        if time.monotonic() >= deadline:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return None
            if not text.strip() and age > 10 * wait_s:  # created, then killed before it was written
                return {"pid": -1, "host": socket.gethostname(), "token": None, "empty": True}
            raise SweepLockedError(f"{path} does not name a sweep (not JSON with a pid and a host); if no dynode "
                                   "sweep runs into this folder, delete it and run again", owner={})
        time.sleep(0.05)


def _gone(owner: dict) -> bool:
    """The owner is provably not running: on this host, and neither its process nor its
    Snakemake is alive (a pid now used by a later process counts as gone)."""
    if owner.get("empty"):
        return True
    if owner.get("host") != socket.gethostname():
        return False
    if owner.get("pid") == os.getpid():
        return owner.get("token") not in _OWNED
    procs = [owner] + ([owner["child"]] if isinstance(owner.get("child"), dict) else [])
    for proc in procs:
        try:
            lease = {"pid": int(proc["pid"]), "host": owner["host"], "boot_id": owner.get("boot_id"),
                     "pid_start": proc.get("pid_start"), "heartbeat": time.time()}
        except (KeyError, TypeError, ValueError):
            return False  # cannot tell
        state = lease_state({LEASE_ATTR: lease})
        if state is not None and not state.dead:
            return False
    return True


def _describe_owner(owner: dict) -> str:
    what = owner.get("sweep")
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {owner.get('started', '?')} "
            f"(sweep file {owner.get('sweep_file', '?')}{f', {_short(what)}' if what else ''})")


def _short(x, limit: int = 200) -> str:
    text = json.dumps(x, separators=(",", ":"), default=str) if not isinstance(x, str) else x
    return text if len(text) <= limit else text[:limit] + "..."


def acquire_folder(out: Path, sweep_file, what: dict | None = None) -> dict:
    """Own ``out`` for this process: create ``out/sweep.owner.json`` atomically (``O_CREAT |
    O_EXCL``) holding pid, host, start time, ``sweep_file`` and ``what`` (the grid or points).
    Returns the owner record (give it to :func:`release_folder`). A live owner is a
    :class:`SweepLockedError` naming it; a gone one (see :mod:`dynode.sweep`) is taken over."""
    path = Path(out) / OWNER_FILE
    me = {**proc_id(os.getpid()), "host": socket.gethostname(), "boot_id": boot_id(),
          "token": uuid.uuid4().hex, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "sweep_file": str(Path(sweep_file).resolve()), "sweep": what, "child": None}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_owner(path)
            if held is not None:  # None: released meanwhile
                if not _gone(held):
                    raise _busy(out, held, sweep_file)
                _break(path, held)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me, indent=1))
        _OWNED.add(me["token"])
        return me
    raise SweepLockedError(f"could not take sweep folder {out}: other sweeps keep taking it; run one sweep "
                           "into a folder at a time", owner={})


def _busy(out: Path, held: dict, sweep_file) -> SweepLockedError:
    return SweepLockedError(
        f"sweep folder {out} is in use by {_describe_owner(held)}; refusing to run {sweep_file} there (nothing "
        "was changed): wait for that sweep to end, or give this one another `output:` folder; if that sweep is "
        f"no longer running (e.g. it ran on another host), delete {Path(out) / OWNER_FILE} and run again", owner=held)


def _break(path: Path, held: dict) -> None:
    """Take a gone owner's file away (renamed first, so that a sweep that took it meanwhile
    gets it back)."""
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.gone")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if json_field(aside, "token") != held.get("token"):  # another sweep's new file: put it back
            os.link(aside, path)
            return
    finally:
        aside.unlink()
    print(f"dynode sweep: {path.parent}: taking over from a sweep that is no longer running "
          f"({_describe_owner(held)})", file=sys.stderr, flush=True)


def _still_ours(path: Path, owner: dict) -> bool:
    """Whether the owner file still names ``owner``; when not (removed or replaced by hand), says so."""
    if json_field(path, "token") == owner["token"]:
        return True
    print(f"dynode sweep: {path} no longer names this sweep (removed or replaced by hand); left as it is",
          file=sys.stderr, flush=True)
    return False


def update_owner(out: Path, owner: dict) -> None:
    """Rewrite the owner file (same owner, e.g. with its Snakemake's pid) atomically."""
    path = Path(out) / OWNER_FILE
    if _still_ours(path, owner):
        tmp = path.with_name(f"{path.name}.{owner['token']}.tmp")
        tmp.write_text(json.dumps(owner, indent=1))
        os.replace(tmp, path)


def release_folder(out: Path, owner: dict) -> None:
    """Give ``out`` up: remove the owner file if it is still ``owner``'s."""
    _OWNED.discard(owner["token"])
    path = Path(out) / OWNER_FILE
    if _still_ours(path, owner):
        path.unlink()


def claim_folder(out: Path, sweep_file, sweep: SweepConfig, points: list[dict]) -> dict:
    """Own ``out`` for ``sweep`` (:func:`acquire_folder`), checked before anything in it is
    changed: no live owner (:class:`SweepLockedError`) and no other sweep in it
    (:func:`check_folder`, checked again once owned: another sweep may have run meanwhile)."""
    held = _read_owner(out / OWNER_FILE)
    if held is not None and not _gone(held):  # the common refusal, before anything is created
        raise _busy(out, held, sweep_file)
    check_folder(out, Path(sweep_file), sweep, points)
    out.mkdir(parents=True, exist_ok=True)
    owner = acquire_folder(out, sweep_file, sweep.definition)
    try:
        check_folder(out, Path(sweep_file), sweep, points)
    except BaseException:
        release_folder(out, owner)
        raise
    return owner


def check_unowned(out: Path, sweep_file, sweep: SweepConfig, points: list[dict]) -> None:
    """:func:`claim_folder`'s checks without taking the folder (a dry run writes nothing): no
    live owner (:class:`SweepLockedError`), no other sweep in it."""
    held = _read_owner(out / OWNER_FILE)
    if held is not None and not _gone(held):
        raise _busy(out, held, sweep_file)
    check_folder(out, Path(sweep_file), sweep, points)


# -- one sweep per folder --------------------------------------------------------------------
def check_folder(out: Path, path: Path, sweep: SweepConfig, points: list[dict]) -> None:
    """Refuse an output folder that holds anything but this sweep (see :mod:`dynode.sweep`)."""
    info_path = out / "sweep.json"
    if not info_path.is_file():
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith(OWNER_FILE)) if out.is_dir() else []
        if others:
            raise ConfigurationError(f"output folder {out} is not empty ({', '.join(others[:5])}"
                                     f"{', ...' if len(others) > 5 else ''}) and holds no sweep.json: it is not a "
                                     f"sweep's folder; give the sweep a folder of its own (`output:` in {path})")
        return
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{info_path} does not read as JSON ({exc}); move {out} aside, or give the sweep "
                                 f"another `output:` folder") from None
    old = info.get("fingerprints") if isinstance(info, dict) else None
    if not isinstance(old, dict):
        raise ConfigurationError(f"output folder {out} holds a sweep written by an older dynode, which did not "
                                 "record its points' configs, so its results cannot be shown to belong to this "
                                 f"sweep; move {out} aside (or give {path} another `output:` folder) and run again")
    new = {p["id"]: p["fingerprint"] for p in points}
    steps = list(sweep.steps)
    if old == new and info.get("steps") == steps:
        return
    what = []
    if info.get("steps") != steps:
        what.append(f"steps {info.get('steps')} -> {steps}")
    added, gone = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if added or gone:
        what.append(f"{len(old)} -> {len(new)} points")
    changed = [p for p in points if p["id"] in old and old[p["id"]] != p["fingerprint"]]
    if changed:
        first = changed[0]
        try:
            before = point_record(load_config(out / "points" / first["id"] / "config.yaml"))
            diff = config_diff(before, point_record(run_config(first["config"])))
        except (DynodeError, OSError):
            diff = []
        what.append(f"{len(changed)} point(s) have another config (first {first['id']}"
                    f"{': ' + '; '.join(diff[:3]) if diff else ''})")
    raise ConfigurationError(
        f"output folder {out} holds another sweep (sweep file {info.get('sweep_file', '?')}, "
        f"{_short(info.get('definition', '?'))}) than {path} ({_short(sweep.definition)}): {', '.join(what)}; "
        "a folder holds one sweep, so nothing was changed: give this sweep its own `output:` folder, or move "
        f"{out} aside to run it there")
