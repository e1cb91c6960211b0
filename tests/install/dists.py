"""The sdist and the wheel, built from a copy of the working tree.

setuptools writes ``build/`` and ``*.egg-info`` next to the sources, so the
build runs in a copy: the files git tracks (as they are on disk now, edits
included) plus untracked files git does not ignore.  ``python -m build``
with neither ``--sdist`` nor ``--wheel`` builds the sdist and then the wheel
*from that sdist*, so a file the sdist forgets is missing from the wheel too.

:func:`built` builds once per test run: the processes of ``pytest -n`` share
one output directory under a file lock, and the first one builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

#: seconds a build may take (it fetches setuptools into an isolated environment)
BUILD_TIMEOUT = 300

_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                      "db.sqlite3*", ".mypy_cache", ".pytest_cache")


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path
    #: the output of ``python -m build``
    log: str
    seconds: float


def source_files(root: Path = ROOT) -> list[str] | None:
    """Paths (relative to ``root``) of tracked and untracked-but-not-ignored files; None outside git."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=root, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in listed.decode().split("\0") if name and (root / name).is_file()]


def copy_sources(target: Path, root: Path = ROOT) -> Path:
    names = source_files(root)
    if names is None:
        shutil.copytree(root, target, ignore=_NOT_SOURCES, symlinks=True)
        return target
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target / name)
    return target


def build(workdir: Path) -> Dists:
    """Copy the tree into ``workdir/src`` and build into ``workdir/dist``."""
    src, out = workdir / "src", workdir / "dist"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    copy_sources(src)
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out)], cwd=src,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    seconds = time.monotonic() - began
    log = done.stdout + done.stderr
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert done.returncode == 0 and len(sdists) == 1 and len(wheels) == 1, (
        f"python -m build exited with {done.returncode} (built: {[p.name for p in out.glob('*')]}):\n"
        + "\n".join(log.splitlines()[-60:]))
    shutil.rmtree(src, ignore_errors=True)
    (out / "build.log").write_text(log)
    (out / "build.seconds").write_text(f"{seconds:.3f}")
    return Dists(sdists[0], wheels[0], log, seconds)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built(shared: Path) -> Dists:
    """The dists in ``shared/dists``, built by the first caller (across processes) and reused after."""
    done_marker = shared / "dists.done"
    with _locked(shared / "dists.lock"):
        out = shared / "dists" / "dist"
        if not done_marker.exists():
            dists = build(shared / "dists")
            done_marker.touch()
            return dists
        return Dists(next(out.glob("*.tar.gz")), next(out.glob("*.whl")), (out / "build.log").read_text(),
                     float((out / "build.seconds").read_text()))
