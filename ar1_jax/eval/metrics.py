"""Open-loop trajectory metrics over batches: minADE_k / minFDE_k at several horizons, L2 at fixed
times, comfort, and decision accuracy / reasoning-action consistency rates.

Trajectories are x-y metres in the ego frame at t0 (x forward, y left), one row per `dt` seconds with
t0 excluded: row i is the position at (i + 1) dt. A horizon of h seconds covers rows [0, round(h/dt)).
The trajectory functions are jnp and jittable (`dt` and the horizons static); decision metrics take
parsed decisions and run on the host.

    from ar1_jax.eval import metrics
    m = metrics.min_ade_fde(pred, gt, dt=0.1, horizons_s=(0.5, 1.0, 3.0, 5.0, 6.4))
    # pred [B, K, T, 2], gt [B, T, 2] -> {"min_ade@3.0": [B], "min_fde@3.0": [B], ...}
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ar1_jax.eval.kinematics import COMFORT_BOUNDS, COMFORT_WINDOW, kinematics

__all__ = ["HORIZONS_S", "L2_TIMES_S", "horizon_steps", "min_ade_fde", "l2_at", "comfort_shares",
           "decision_accuracy"]

# jaxtyping shapes as aliases (pyflakes reads strings inside annotations as Python). Metres, ego0.
Samples = Float[Array, "B K T 2"]
XY = Float[Array, "B T 2"]
PerScene = Float[Array, "B"]

#: The paper's minADE horizons (s; AR1_FACTS: 0.5, 1, 3, 5 and the full 6.4).
HORIZONS_S = (0.5, 1.0, 3.0, 5.0, 6.4)
#: L2 at fixed times (s), the nuScenes-style open-loop planning columns.
L2_TIMES_S = (1.0, 2.0, 3.0)


def horizon_steps(horizon_s: float, dt: float, num_steps: int) -> int:
    """Rows covered by `horizon_s` seconds at `dt`: round(h / dt), which must lie in [1, num_steps]."""
    n = int(round(horizon_s / dt))
    if not 1 <= n <= num_steps:
        raise ValueError(f"horizon {horizon_s} s at dt {dt} s is {n} steps; the trajectories have {num_steps}")
    return n


def min_ade_fde(pred: Samples, gt: XY, dt: float = 0.1,
                horizons_s: Sequence[float] = HORIZONS_S) -> dict[str, PerScene]:
    """minADE_k / minFDE_k: of the K samples, the one with the lowest ADE over the full horizon (the
    first on ties); then that sample's ADE (mean L2 over rows [0, n)) and FDE (L2 at row n - 1) for
    each horizon of n = round(h / dt) rows. Keys `min_ade@{h}` and `min_fde@{h}` (h as given, e.g.
    "min_ade@3.0"), each `[B]` metres; plus `best` `[B]` int32, the chosen sample."""
    pred = jnp.asarray(pred, jnp.float32)
    gt = jnp.asarray(gt, jnp.float32)
    if pred.ndim != 4 or gt.ndim != 3 or pred.shape[-1] != 2 or pred.shape[0] != gt.shape[0] \
            or pred.shape[2] != gt.shape[1] or gt.shape[-1] != 2:
        raise ValueError(f"min_ade_fde: expected pred [B, K, T, 2] and gt [B, T, 2], got {pred.shape} and {gt.shape}")
    dist = jnp.linalg.norm(pred - gt[:, None], axis=-1)  # [B, K, T]
    best = jnp.argmin(jnp.mean(dist, axis=-1), axis=-1)  # argmin takes the first of equal values
    chosen = jnp.take_along_axis(dist, best[:, None, None], axis=1)[:, 0]  # [B, T]
    out = {"best": best.astype(jnp.int32)}
    for h in horizons_s:
        n = horizon_steps(h, dt, gt.shape[1])
        out[f"min_ade@{h}"] = jnp.mean(chosen[:, :n], axis=-1)
        out[f"min_fde@{h}"] = chosen[:, n - 1]
    return out


def l2_at(pred: XY, gt: XY, dt: float = 0.1, times_s: Sequence[float] = L2_TIMES_S) -> dict[str, PerScene]:
    """L2 distance (m) between `pred` and `gt` at each time t (row round(t / dt) - 1), keys `l2@{t}`."""
    pred = jnp.asarray(pred, jnp.float32)
    gt = jnp.asarray(gt, jnp.float32)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"l2_at: expected pred and gt [B, T, 2], got {pred.shape} and {gt.shape}")
    dist = jnp.linalg.norm(pred - gt, axis=-1)
    return {f"l2@{t}": dist[:, horizon_steps(t, dt, gt.shape[1]) - 1] for t in times_s}


def comfort_shares(xy: XY, v0: PerScene, dt: float = 0.1, window: int = COMFORT_WINDOW) -> dict[str, PerScene]:
    """Per nuPlan comfort bound (lon_accel, lat_accel, jerk, lon_jerk, yaw_rate, yaw_accel: the
    quantities of `eval.kinematics.kinematics` at t0 and every row), the share of those T + 1 time points
    within the bound, `comfort/<name>` `[B]` in [0, 1]; and `comfortable` `[B]` 1.0 when every bound
    holds at every point, else 0.0 (NaN or inf anywhere: 0 everywhere)."""
    xy = jnp.asarray(xy, jnp.float32)
    v0 = jnp.asarray(v0, jnp.float32)
    kin = kinematics(xy, v0, dt, window)
    finite = (jnp.all(jnp.isfinite(xy), axis=(-2, -1)) & jnp.isfinite(v0))[:, None]
    inside = {k: finite & (kin[k] >= lo) & (kin[k] <= hi) for k, (lo, hi) in COMFORT_BOUNDS.items()}
    out = {f"comfort/{k}": jnp.mean(v.astype(jnp.float32), axis=-1) for k, v in inside.items()}
    out["comfortable"] = jnp.all(jnp.stack([jnp.all(v, axis=-1) for v in inside.values()]), axis=0).astype(jnp.float32)
    return out


def decision_accuracy(pred: Sequence, gt: Sequence) -> dict[str, float]:
    """Share of scenes whose predicted decision equals the reference's, per axis, from parsed decisions
    (`text.coc_parse.parse` results: `.ok`, `.longitudinal`, `.lateral`; a None or not-ok prediction
    counts as wrong). An axis counts only the scenes whose reference states a decision on it; `both`
    only those stating both. Returns {"longitudinal", "lateral", "both"} (NaN where nothing counts);
    ValueError when the lengths differ."""
    if len(pred) != len(gt):
        raise ValueError(f"decision_accuracy: {len(pred)} predictions for {len(gt)} references")
    hits: dict[str, list[bool]] = {"longitudinal": [], "lateral": [], "both": []}
    for p, g in zip(pred, gt):
        if g is None or not g.ok:
            continue
        ok = p is not None and p.ok
        lon = ok and p.longitudinal == g.longitudinal
        lat = ok and p.lateral == g.lateral
        if g.longitudinal is not None:
            hits["longitudinal"].append(lon)
        if g.lateral is not None:
            hits["lateral"].append(lat)
        if g.longitudinal is not None and g.lateral is not None:
            hits["both"].append(lon and lat)
    return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
