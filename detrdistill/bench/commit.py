"""Commit a suite's result files to git as they are written (``detrdistill bench ... --commit``).

A run directory may not survive a change of machine; a committed per-run JSON (with its AP
table, for suites that keep them) does, and a later session reuses it instead of training
the run again. Only the named files are committed, whatever else is staged or changed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def commit_files(paths: list[Path], message: str) -> bool:
    """``git add`` and commit ``paths`` alone (files, or folders whose files git does not
    ignore); True when a commit was made. Paths git ignores (``runs/``) are skipped. A failure
    (no repository, a lock held by another git command) is printed, not raised: the run is
    saved on disk either way and the next commit takes it along."""
    existing = [str(p) for p in paths if Path(p).exists()]
    existing = [p for p in existing if subprocess.run(["git", "check-ignore", "-q", p], capture_output=True).returncode]
    if not existing:
        return False
    try:
        subprocess.run(["git", "add", "--", *existing], check=True, capture_output=True, text=True)
        unchanged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *existing], capture_output=True)
        if unchanged.returncode == 0:
            return False
        subprocess.run(["git", "commit", "--quiet", "-m", message, "--", *existing], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        print(f"[bench] WARNING: could not commit {', '.join(existing)}: {detail.strip()}")
        return False
    return True
