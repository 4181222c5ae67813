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
