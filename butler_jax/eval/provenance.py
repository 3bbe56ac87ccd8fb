"""Where a result came from: git commit (and dirty flag), package versions, device, time."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "transformers", "tokenizers", "wonderwords", "datasets")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict[str, Any]:
    """Commit, dirty flag, versions, device and UTC time of this process.

    COMMIT in the environment names the tree's commit where .git is absent or does not describe the
    tree (a copy sent to another machine, as the benchmarks take it); the dirty flag is then unknown
    (None) and `git_commit_from` says so."""
    import jax

    given = os.environ.get("COMMIT")
    status = None if given else _git("status", "--porcelain", "--untracked-files=no")
    devices = jax.devices()
    return {
        "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": given or _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
        "git_commit_from": "COMMIT environment variable" if given else "git",
        "packages": package_versions(), "python": platform.python_version(),
        "device": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)},
    }


def code_version() -> str:
    """The versions that change numbers (jax, jaxlib, flax, transformers, wonderwords) as one string."""
    v = package_versions()
    return ";".join(f"{k}={v[k]}" for k in ("jax", "jaxlib", "flax", "transformers", "wonderwords"))


def files_hash(path: str | Path) -> str | None:
    """sha256 (16 hex) over every file under `path` (names and bytes), or None when it does not exist."""
    path = Path(path)
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()) if path.exists() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of every setting that changes a result (sorted JSON)."""
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
