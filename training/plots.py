"""Loss curves as PNG (matplotlib, headless), one line per task, smoothed over a window."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def plot_losses(metrics: Path, folder: Path, window: int = 25) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        by_task[f"{r['modality']}/{r['task']}"].append((r["step"], r["loss_total"]))
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, points in sorted(by_task.items()):
        steps, losses = np.array(points).T
        k = max(1, min(window, len(losses) // 3 or 1))
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (moving mean of {window})")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = folder / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]


def plot_scores(results: dict[str, dict], path: Path, title: str = "") -> Path:
    """Every ``task/class/metric`` score as a dot with its 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(k, v) for k, v in results.items() if isinstance(v, dict) and v.get("mean") is not None]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(items) + 1.2))
    for y, (_key, v) in enumerate(items):
        low = v["ci_low"] if v["ci_low"] is not None else v["mean"]
        high = v["ci_high"] if v["ci_high"] is not None else v["mean"]
        ax.plot([low, high], [y, y], color="tab:blue", lw=2)
        ax.plot(v["mean"], y, "o", color="tab:red")
    ax.set_yticks(range(len(items)), [f"{k} (n={v['n']})" for k, v in items], fontsize=7)
    # Most scores are 0-1; rescaled BERTScore and RadCliQ-v1 (lower is better) can leave that range.
    lows = [v["ci_low"] if v["ci_low"] is not None else v["mean"] for _, v in items]
    highs = [v["ci_high"] if v["ci_high"] is not None else v["mean"] for _, v in items]
    ax.set_xlim(min([0.0, *lows]), max([1.0, *highs]))
    ax.invert_yaxis()
    ax.set_xlabel("score with 95% bootstrap CI (RadCliQ: lower is better)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
