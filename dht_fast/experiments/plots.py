"""Plots of teaching curves, drawn from stored arrays (no pyplot state, any backend)."""
from __future__ import annotations

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_LABELS = {"accuracy": "test accuracy", "distance": "||w_t - w*||",
           "direction_gap": "||w*/||w*|| - w_t/||w_t|| ||^2"}


def plot_curves(curves: dict[str, torch.Tensor], metrics, title: str, fh) -> None:
    """One panel per metric, one line per teacher: the mean over seeds and a band of +- 1 std.

    curves: teacher -> ``(S, T + 1, len(metrics))``; fh: a binary file the PNG is written to.
    """
    fig = Figure(figsize=(4.2 * len(metrics), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics))
    for teacher, runs in curves.items():
        runs = runs.double()
        mean, std = runs.mean(0), runs.std(0, unbiased=False)
        steps = torch.arange(runs.shape[1])
        for j, ax in enumerate(axes):
            line, = ax.plot(steps, mean[:, j], label=teacher)
            ax.fill_between(steps, mean[:, j] - std[:, j], mean[:, j] + std[:, j],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    for ax, metric in zip(axes, metrics):
        ax.set_xlabel("teaching iteration")
        ax.set_title(_LABELS.get(metric, metric), fontsize=10)
    axes[0].legend()
    fig.suptitle(title)
    fig.savefig(fh, format="png", dpi=100)
