"""Loss-curve PNGs for training runs (matplotlib, Agg backend, written atomically).

    from vnmini.training.plots import plot_metrics
    plot_metrics(read_metrics("runs/tiny"), "runs/tiny/loss.png")

Left panel: train loss per step (raw, faint, and an exponential moving
average) with eval loss on top; right panel: eval bits per byte, the number
that compares across tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vnmini.atomic import atomic_path


def _ema(xs: Sequence[float], alpha: float = 0.1) -> list[float]:
    out, m = [], None
    for x in xs:
        m = x if m is None else (1 - alpha) * m + alpha * x
        out.append(m)
    return out


def plot_metrics(records: Sequence[dict[str, Any]], path: str | Path, title: str = "training") -> Path:
    """Draw train/eval loss and eval bpb from ``metrics.jsonl`` records into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"], r.get("eval_bpb")) for r in records if "eval_loss" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps, losses = zip(*train, strict=True)
        ax1.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train")
        ax1.plot(steps, _ema(losses), color="tab:blue", lw=1.5, label="train (EMA)")
    if evals:
        ax1.plot([e[0] for e in evals], [e[1] for e in evals], "o-", color="tab:orange", ms=3, label="eval")
        bpb = [(e[0], e[2]) for e in evals if e[2] is not None]
        if bpb:
            ax2.plot(*zip(*bpb, strict=True), "o-", color="tab:green", ms=3)
            ax2.annotate(f"{bpb[-1][1]:.3f}", bpb[-1], textcoords="offset points", xytext=(-10, 8))
    ax1.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    ax1.legend(loc="upper right")
    ax1.grid(alpha=0.3)
    ax2.set(xlabel="step", ylabel="bits per byte", title="eval bits per byte")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
