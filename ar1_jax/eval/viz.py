"""Plots: a bird's-eye view of predicted trajectories over the history (and ground truth)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_bev(path, trajectories: np.ndarray, history_xy: np.ndarray, future_xy: np.ndarray | None = None,
             title: str = "", labels: list[str] | None = None) -> None:
    """Writes a PNG: x forward (up), y left; `trajectories [K, T, 2]` metres in the t0 ego frame."""
    fig, ax = plt.subplots(figsize=(5, 6), dpi=110)
    ax.plot(-history_xy[:, 1], history_xy[:, 0], "k.-", lw=1.5, label="history")
    if future_xy is not None:
        ax.plot(-future_xy[:, 1], future_xy[:, 0], "g--", lw=2, label="ground truth")
    for k, traj in enumerate(trajectories):
        ax.plot(-traj[:, 1], traj[:, 0], "-", lw=1.5, alpha=0.8,
                label=(labels[k] if labels else f"sample {k}")[:40])
    ax.plot([0], [0], "r^", ms=10, label="ego at t0")
    ax.set_xlabel("lateral (m, right +)")
    ax.set_ylabel("longitudinal (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(path, rows: list[dict], title: str = "",
                         keys: tuple[str, ...] = ("loss", "ce_reasoning", "ce_trajectory", "flow")) -> None:
    """Writes a PNG of the logged loss terms against the step (`rows`: metrics.jsonl objects)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), ".-", lw=1.2, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
