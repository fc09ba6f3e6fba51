"""What a training run folder holds, and how to find where to resume it.

A run folder (``--out``) holds ``step_NNNNNN/`` and ``final/`` checkpoints (HF
folders, each with ``trainer_state.pt`` once it is resumable), ``metrics.jsonl``
(one JSON record per line: steps, evals, ``{"event": "plan"}`` records) and
``loss.png``. The trainer writes it; these helpers read and tidy it::

    from vnmini.training.rundir import find_resume_point, read_metrics
    ckpt = find_resume_point(Path("runs/tiny"))      # the newest resumable checkpoint, or None
    evals = [r for r in read_metrics("runs/tiny") if "eval_bpb" in r]
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
_STEP_DIR = re.compile(r"^step_(\d+)$")

RESUME_HINT = "Continue by rerunning the same command with --resume (`vnmini quickstart` resumes by itself)."


class Interrupted(VnminiError):
    """Ctrl-C during training: the message says what was saved; the CLI exits 130."""

    exit_code = 130


def saved_step(folder: Path) -> int:
    """The step a checkpoint folder's ``vnmini.json`` records (-1 when unreadable)."""
    try:
        return int(json.loads((folder / "vnmini.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def find_resume_point(run_dir: Path) -> Path | None:
    """The checkpoint with the highest step that holds a complete ``trainer_state.pt``."""
    best: tuple[int, Path] | None = None
    for d in run_dir.glob("*") if run_dir.is_dir() else []:
        if not (d.is_dir() and (d / STATE_FILE).is_file() and (_STEP_DIR.match(d.name) or d.name == "final")):
            continue
        step = saved_step(d)
        if step < 0:
            continue
        if best is None or step > best[0] or (step == best[0] and d.name != "final"):
            best = (step, d)
    return best[1] if best else None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a SIGKILL can cut the last line
            out.append(json.loads(line))
    return out


def clean_stale(run_dir: Path) -> None:
    """Remove the temp folders/files a killed save left (from ``atomic_dir``/``atomic_path``)."""
    for p in list(run_dir.glob(".*.tmp")) + list(run_dir.glob(".*.old-*")) + list(run_dir.glob("*/.*.tmp")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def prune_steps(run_dir: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` ``step_NNNNNN/`` checkpoints (``final/`` is never pruned)."""
    steps = sorted((d for d in run_dir.glob("step_*") if _STEP_DIR.match(d.name)), key=lambda d: d.name)
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
