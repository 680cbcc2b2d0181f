"""Consistency-checked sampling: of a scene's K samples, drive the one whose trajectory agrees with its
own reasoning.

A sample is consistent when the decisions parsed from its reasoning are compatible, on both axes,
with the meta-action of its own trajectory (`eval.scoring.meta_actions_from_trajectory` and
`is_consistent`, the check RL rewards and evaluation use). Among consistent samples the one with the
highest reasoning log-likelihood is driven; when none is consistent, the most likely sample overall
(so selection never fails, and reports that no sample agreed).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ar1_jax.eval import scoring

__all__ = ["sample_consistency", "pick_consistent", "pick_most_likely"]


def sample_consistency(decisions: Sequence, trajectory: np.ndarray, v0: float, dt: float = 0.1) -> np.ndarray:
    """bool `[K]`: each sample's parsed decisions (`text.coc_parse.parse` results, or None) against the
    meta-action of its trajectory `[K, T, 2]` (metres, ego frame at t0) driven from speed v0 (m/s).
    Unparseable text or a non-finite trajectory is inconsistent."""
    trajectory = np.asarray(trajectory, np.float64)
    if trajectory.ndim != 3 or trajectory.shape[0] != len(decisions) or trajectory.shape[-1] != 2:
        raise ValueError(f"sample_consistency: {len(decisions)} decisions for trajectories {trajectory.shape} "
                         "(expected [K, T, 2])")
    out = np.zeros(len(decisions), bool)
    for k, dec in enumerate(decisions):
        if dec is None or not dec.ok or not np.all(np.isfinite(trajectory[k])):
            continue
        meta = scoring.meta_actions_from_trajectory(trajectory[k], None, float(v0), dt)
        out[k] = scoring.is_consistent(dec.longitudinal, dec.lateral, dec.direction, meta)
    return out


def pick_most_likely(logp: np.ndarray) -> int:
    """The index of the highest log-likelihood (the first of ties)."""
    return int(np.argmax(np.asarray(logp, np.float64)))


def pick_consistent(consistent: np.ndarray, logp: np.ndarray) -> int:
    """The most likely consistent sample, else the most likely one (`consistent` bool `[K]`, `logp` `[K]`)."""
    consistent = np.asarray(consistent, bool)
    logp = np.asarray(logp, np.float64)
    if consistent.shape != logp.shape:
        raise ValueError(f"pick_consistent: consistent {consistent.shape} and logp {logp.shape} differ")
    if not consistent.any():
        return pick_most_likely(logp)
    return int(np.argmax(np.where(consistent, logp, -np.inf)))
