"""The dependency lock: `uv.lock`, resolved by uv from pyproject.toml, and the hashed
requirements files that pip installs from it.

pyproject.toml keeps ranges (for anyone using fraudpipe as a library); `uv.lock` pins the whole
set for every platform and Python the project supports; `requirements/<set>.txt` are that lock
exported, with every version pinned and every file's hash, for the installs that must be the
same program every time: `make install` (dev), the cpu image (cpu), the gpu image (gpu) and
`make test-gpu` (dev + gpu). pip installs them with `--require-hashes`, so nothing outside the
lock can slip in. uv is needed only here, never to install.

    python scripts/lock.py            # make lock: keep every pin pyproject.toml still allows
    python scripts/lock.py --upgrade  # make lock LOCK_ARGS=--upgrade: newest allowed releases
    python scripts/lock.py --check    # exit 1 naming what is stale (tests/test_lock.py)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "# Exported from uv.lock by `make lock` (scripts/lock.py). Do not edit.\n"
# requirements/<set>.txt: the extras each install needs.
SETS: dict[str, tuple[str, ...]] = {"cpu": (), "gpu": ("gpu",), "dev": ("dev",)}


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        sys.exit("error: uv is not installed (it is in the dev extra: make install)")
    return found


def _run(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_uv(), *args], cwd=root, capture_output=True, text=True, check=False)


def exported(name: str, root: Path = ROOT) -> str:
    """requirements/<name>.txt as the lock gives it now."""
    extras = [arg for extra in SETS[name] for arg in ("--extra", extra)]
    done = _run(
        ["export", "--frozen", "--no-emit-project", "--no-header", "--quiet",
         "--format", "requirements-txt", *extras],
        root,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"error: uv export ({name}): {done.stderr.strip()}")
    return HEADER + done.stdout


def stale(root: Path = ROOT) -> list[str]:
    """What disagrees: the lock with pyproject.toml, or an exported file with the lock."""
    problems = []
    locked = _run(["lock", "--check", "--offline", "--quiet"], root)
    if locked.returncode != 0:
        problems.append(
            "uv.lock does not satisfy pyproject.toml (run `make lock`): "
            + (locked.stderr.strip().splitlines() or ["uv lock --check failed"])[-1]
        )
    for name in SETS:
        path = root / "requirements" / f"{name}.txt"
        if not path.exists() or path.read_text() != exported(name, root):
            problems.append(f"{path.relative_to(root)} is not uv.lock's export (run `make lock`)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if anything is stale")
    parser.add_argument("--upgrade", action="store_true", help="newest releases allowed")
    args = parser.parse_args()
    if args.check:
        problems = stale()
        for problem in problems:
            print(f"stale: {problem}", file=sys.stderr)
        return 1 if problems else 0
    done = _run(["lock", *(["--upgrade"] if args.upgrade else [])], ROOT)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        return done.returncode
    (ROOT / "requirements").mkdir(exist_ok=True)
    for name in SETS:
        (ROOT / "requirements" / f"{name}.txt").write_text(exported(name))
    print(f"uv.lock and requirements/{{{','.join(SETS)}}}.txt written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
