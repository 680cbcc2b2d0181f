"""Reward terms for RL of the AR1 model (a reasoning trace plus a trajectory), over batches of N rollouts.

Trajectories are `[N, T, 2]` metres in the ego frame at t0 (x forward, y left; T = 64 rows, one per
`dt` = 0.1 s, t0 excluded); v0 `[N]` m/s is the speed at t0. Text terms run on the host (they parse
text) and return numpy float32 `[N]`; trajectory terms are jittable jnp (`dt` and `window` static).

Terms (`score_rollouts` returns all of them, plus `total`):
  consistency  1 when the decisions parsed from the trace are compatible with the trajectory's
               meta-action on both axes (`scoring.is_consistent`), else 0; unparseable text -> 0.
  reasoning    a `Critic`'s grade of the trace against a reference in [0, 1] (`RuleCritic` by default,
               `ModelCritic` wraps a VLM's text generation with a 0-5 rubric).
  trajectory   the release's ADE-gated form (AR1_FACTS "Training stages"):
               -0.4 ADE / gate + 0.1 (comfort - 1) when ADE < gate (3 m), else -1.
  comfort      fraction of the six nuPlan comfort bounds the trajectory satisfies over the horizon
               (Savitzky-Golay derivatives over 0.9 s, `kinematics`).
  collision    1 when the ego footprint overlaps an agent's box at any step, else 0.
  offroad      1 when a footprint corner leaves the drivable area at any step, else 0.
  format       1 when the trace parses (at least one decision) and has at most the token cap, else 0.

`total = sum_k w_k term_k` with the weights of `RewardConfig`; collision and offroad enter with a
negative sign. Defaults: consistency 1, reasoning 1, trajectory 1, comfort 0 (already inside the
trajectory term), collision 1, offroad 1, format 0.1 (a small shaping term: unparseable traces already
lose consistency and reasoning). A perfect rollout scores 1 + 1 + 0 + 0.1 = 2.1.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ar1_jax import config_rl
from ar1_jax.action.unicycle import unwrap
from ar1_jax.eval import scoring
from ar1_jax.text import coc
from ar1_jax.text.coc_parse import ParseResult, parse
from ar1_jax.world.arrays import SceneArrays, ego0_to_world, footprint_checks
from ar1_jax.world.planner import STOP_SPEED

__all__ = ["RewardConfig", "TERMS", "COMFORT_BOUNDS", "consistency_reward", "Critic", "RuleCritic", "ModelCritic",
           "parse_grade", "ade_gated_reward", "kinematics", "comfort_checks", "comfort", "trajectory_headings",
           "collision_and_offroad", "format_reward", "total_reward", "score_rollouts"]

# jaxtyping shapes as aliases (pyflakes reads strings inside annotations as Python). XY: metres, ego0.
XY = Float[Array, "N T 2"]
PerSample = Float[Array, "N"]
Flags = Bool[Array, "N"]
NpXY = Float[np.ndarray, "N T 2"]
NpPerSample = Float[np.ndarray, "N"]
Headings = Float[Array, "N T"]

TERMS = ("consistency", "reasoning", "trajectory", "comfort", "collision", "offroad", "format")


RewardConfig = config_rl.RewardConfig  # `cfg.rl.reward`; defined with the config tree


# ----------------------------------------------------------------------------------------------------
# Text terms (host).


def _parse_texts(texts: Sequence[object]) -> list[ParseResult]:
    return [parse(t) for t in texts]


def consistency_reward(texts: Sequence[object], trajectories: NpXY,
                       v0: NpPerSample, dt: float = 0.1) -> NpPerSample:
    """Reasoning-action consistency, float32 `[N]` in {0, 1}.

    texts: N traces (any objects: `coc_parse.parse` reads str and bytes, never raises); trajectories
    `[N, T, 2]` metres, ego0; v0 `[N]` m/s. The meta-action is measured with
    `scoring.meta_actions_from_trajectory` (yaw None: the heading of the last displacement). A text
    with no decision, or a non-finite trajectory, scores 0.
    """
    traj = np.asarray(trajectories, np.float64)
    speeds = np.asarray(v0, np.float64).reshape(-1)
    out = np.zeros(len(texts), np.float32)
    for i, p in enumerate(_parse_texts(texts)):
        if not p.ok or not (np.all(np.isfinite(traj[i])) and np.isfinite(speeds[i])):
            continue
        meta = scoring.meta_actions_from_trajectory(traj[i], None, float(speeds[i]), dt)
        out[i] = float(scoring.is_consistent(p.longitudinal, p.lateral, p.direction, meta))
    return out


class Critic(Protocol):
    """Grades reasoning traces against references: float32 `[N]` in [0, 1]."""

    def score(self, traces: Sequence[object], references: Sequence[str | coc.Trace]) -> np.ndarray: ...


def _reference(ref: str | coc.Trace) -> tuple[ParseResult, frozenset[coc.Component]]:
    """A reference's decisions (as a ParseResult) and its cause components."""
    if isinstance(ref, coc.Trace):
        p = parse(coc.format(ref))
        got = ParseResult(ok=True, longitudinal=ref.longitudinal, lateral=ref.lateral, direction=ref.direction)
        return got, frozenset(ref.components or p.components)
    p = parse(ref)
    return p, frozenset(p.components)


@dataclasses.dataclass(frozen=True)
class RuleCritic:
    """Rule-based grade: `w_lon [lon equal] + w_lat [lat and direction equal] + w_causes Jaccard(components)`.

    The parsed trace's longitudinal decision, lateral decision with its direction, and cause
    components (`ParseResult.components`) are compared with the reference's (a `coc.Trace`: its
    decisions and `components`, or the components parsed from its formatted text when it lists none;
    a string: what it parses to). Absent on both sides counts as equal; two empty component sets have
    Jaccard 1. Weights 0.35 / 0.35 / 0.3: the decisions carry most of the grade (they are what the
    trajectory must carry out), and a right decision for the wrong reason still loses 0.3. An
    unparseable trace or reference scores 0.
    """

    w_lon: float = 0.35
    w_lat: float = 0.35
    w_causes: float = 0.3

    def score(self, traces: Sequence[object], references: Sequence[str | coc.Trace]) -> np.ndarray:
        if len(traces) != len(references):
            raise ValueError(f"RuleCritic.score: {len(traces)} traces but {len(references)} references")
        out = np.zeros(len(traces), np.float32)
        for i, (p, ref) in enumerate(zip(_parse_texts(traces), references)):
            r, ref_comps = _reference(ref)
            if not (p.ok and r.ok):
                continue
            comps = frozenset(p.components)
            union = comps | ref_comps
            jaccard = len(comps & ref_comps) / len(union) if union else 1.0
            out[i] = (self.w_lon * (p.longitudinal == r.longitudinal)
                      + self.w_lat * ((p.lateral, p.direction) == (r.lateral, r.direction))
                      + self.w_causes * jaccard)
        return out


RUBRIC = """You grade the reasoning of an autonomous-driving model against the ground truth.
Ground-truth reasoning: {reference}
Model reasoning: {trace}
Grade from 0 to 5: 5 = the same driving decision for the same causes; 4 = the same decision, causes
partly right; 3 = a compatible decision; 2 = a partly wrong decision; 1 = a wrong decision with some
relevant cause; 0 = wrong, unsafe or unreadable. Answer with one line: "Score: <0-5>"."""
_SCORE_RE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def parse_grade(answer: object) -> int:
    """The 0-5 grade in a critic's answer: the number after "score", else the first number in it; 0
    when that is missing, not an integer or outside 0..5."""
    if not isinstance(answer, str):
        return 0
    m = _SCORE_RE.search(answer)
    token = m.group(1) if m else next((n.group(0) for n in _NUMBER_RE.finditer(answer)), None)
    if token is None or not token.isdigit() or int(token) > 5:
        return 0
    return int(token)


@dataclasses.dataclass(frozen=True)
class ModelCritic:
    """A language model as critic: `generate(prompt) -> answer` (a loaded VLM's text generation) is
    asked `rubric` for each (trace, reference) and its grade (`parse_grade`, 0..5) is scaled to [0, 1].
    A reference `coc.Trace` is formatted to text; a trace that is not a string is graded 0 without a
    call. Errors of `generate` propagate (a broken model is not a bad trace)."""

    generate: Callable[[str], str]
    rubric: str = RUBRIC

    def score(self, traces: Sequence[object], references: Sequence[str | coc.Trace]) -> np.ndarray:
        if len(traces) != len(references):
            raise ValueError(f"ModelCritic.score: {len(traces)} traces but {len(references)} references")
        out = np.zeros(len(traces), np.float32)
        for i, (trace, ref) in enumerate(zip(traces, references)):
            if isinstance(trace, (bytes, bytearray)):
                trace = bytes(trace).decode("utf-8", errors="replace")
            if not isinstance(trace, str) or not trace.strip():
                continue
            ref_text = coc.format(ref) if isinstance(ref, coc.Trace) else str(ref)
            out[i] = parse_grade(self.generate(self.rubric.format(reference=ref_text, trace=trace))) / 5.0
        return out


def format_reward(texts: Sequence[object], num_tokens: NpPerSample, max_tokens: int
                  ) -> NpPerSample:
    """float32 `[N]`: 1 when the trace parses to at least one decision and `num_tokens <= max_tokens`."""
    n = np.asarray(num_tokens).reshape(-1)
    ok = np.array([p.ok for p in _parse_texts(texts)], bool).reshape(-1)
    return (ok & (n <= max_tokens)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Trajectory terms (jittable).

#: Comfort bounds (nuPlan, AR1_FACTS), name -> (low, high) in m/s^2, m/s^3, rad/s, rad/s^2.
COMFORT_BOUNDS: dict[str, tuple[float, float]] = {
    "lon_accel": (-4.05, 2.40), "lat_accel": (-4.89, 4.89), "jerk": (-np.inf, 8.37),
    "lon_jerk": (-4.13, 4.13), "yaw_rate": (-0.95, 0.95), "yaw_accel": (-1.93, 1.93),
}
#: Below this speed (m/s) the direction of travel is noise: the heading is held (the planner's stop speed).
HOLD_SPEED = STOP_SPEED
#: Savitzky-Golay window (points at `dt`) of the comfort derivatives, polynomial order SG_ORDER. Raw
#: 0.1 s differences turn centimetre noise into jerks of tens of m/s^3 and flag the expert's own braking
#: onsets (9 points: 11 of 96 generated expert drives fail a bound, against 45 with plain differences);
#: NAVSIM also smooths its comfort signals with Savitzky-Golay filters. Window 3: central differences.
COMFORT_WINDOW, SG_ORDER = 9, 2


@functools.lru_cache(maxsize=32)
def _savgol_matrix(k: int, window: int, dt: float) -> np.ndarray:
    """`[K, K]` first derivative (per second) by least-squares polynomials of order SG_ORDER over
    `window` points centred on each row; the first and last rows use the first and last full window
    (scipy's mode "interp"). Exact for polynomials up to SG_ORDER."""
    if window < SG_ORDER + 1:
        raise ValueError(f"comfort: window must be at least {SG_ORDER + 1} points, got {window}")
    window = min(window | 1, k if k % 2 else k - 1)  # odd, at most K
    half = window // 2
    out = np.zeros((k, k))
    for i in range(k):
        s = min(max(i - half, 0), k - window)
        tau = (np.arange(s, s + window) - i) * dt
        out[i, s:s + window] = np.linalg.pinv(np.vander(tau, SG_ORDER + 1, increasing=True))[1]
    return out.astype(np.float32)


def _deriv(x: Array, window: int, dt: float) -> Array:
    """Savitzky-Golay first derivative of `x` along its last axis (same length)."""
    return jnp.einsum("ij,...j->...i", jnp.asarray(_savgol_matrix(x.shape[-1], window, float(dt))), x)


def _velocities(xy: XY, v0: PerSample, dt: float) -> Array:
    """Velocities `[N, T+1, 2]` at t = 0, dt, .., T dt: (v0, 0) at t0, central differences of the positions
    (t0 at the origin) inside, a second-order one-sided difference at the end. Exact for quadratic motion."""
    xy = jnp.asarray(xy, jnp.float32)
    p = jnp.concatenate([jnp.zeros_like(xy[..., :1, :]), xy], axis=-2)
    first = jnp.stack([jnp.asarray(v0, jnp.float32), jnp.zeros(xy.shape[:-2], jnp.float32)], -1)[..., None, :]
    last = (3 * p[..., -1:, :] - 4 * p[..., -2:-1, :] + p[..., -3:-2, :]) / (2 * dt)
    return jnp.concatenate([first, (p[..., 2:, :] - p[..., :-2, :]) / (2 * dt), last], axis=-2)


def _held_heading(vel: Array) -> Array:
    """Direction of travel of velocities whose first row is the t0 velocity (heading 0 by definition);
    rows slower than HOLD_SPEED repeat the last faster row's heading. Unwrapped."""
    raw = jnp.arctan2(vel[..., 1], vel[..., 0]).at[..., 0].set(0.0)
    idx = jnp.arange(raw.shape[-1])
    moving = (jnp.linalg.norm(vel, axis=-1) >= HOLD_SPEED) | (idx == 0)
    last = jax.lax.cummax(jnp.where(moving, idx, 0), axis=raw.ndim - 1)
    return unwrap(jnp.take_along_axis(raw, last, axis=-1))


def trajectory_headings(xy: XY, dt: float = 0.1) -> Headings:
    """The heading (rad, ego0, unwrapped) at each of the T future points: the direction of travel
    (`_velocities`; v0 does not enter), held while slower than HOLD_SPEED; 0 at t0."""
    xy = jnp.asarray(xy, jnp.float32)
    return _held_heading(_velocities(xy, jnp.zeros(xy.shape[:-2]), dt))[..., 1:]


def kinematics(xy: XY, v0: PerSample, dt: float = 0.1, window: int = COMFORT_WINDOW) -> dict[str, Array]:
    """Derivatives of a trajectory started at the origin heading +x at speed v0, each `[N, T+1]` at
    t = 0, dt, .., T dt.

    V: velocities by finite differences with V_0 = (v0, 0) (`_velocities`); speed |V|; heading psi the
    direction of V (held below HOLD_SPEED). D: the Savitzky-Golay first derivative along time (`window`
    points, order 2; window 3 is central differences).
      lon_accel  m/s^2    D(speed), the rate of change of speed
      yaw_rate   rad/s    D(psi)
      lat_accel  m/s^2    speed x yaw_rate (centripetal)
      jerk       m/s^3    D(hypot(lon_accel, lat_accel)), the rate of change of the acceleration's size
      lon_jerk   m/s^3    D(lon_accel)
      yaw_accel  rad/s^2  D(yaw_rate)
    """
    vel = _velocities(xy, v0, dt)
    speed = jnp.linalg.norm(vel, axis=-1)
    lon_accel = _deriv(speed, window, dt)
    yaw_rate = _deriv(_held_heading(vel), window, dt)
    lat_accel = speed * yaw_rate
    return dict(lon_accel=lon_accel, lat_accel=lat_accel, jerk=_deriv(jnp.hypot(lon_accel, lat_accel), window, dt),
                lon_jerk=_deriv(lon_accel, window, dt), yaw_rate=yaw_rate, yaw_accel=_deriv(yaw_rate, window, dt))


def comfort_checks(xy: XY, v0: PerSample, dt: float = 0.1, window: int = COMFORT_WINDOW) -> dict[str, Flags]:
    """Per `COMFORT_BOUNDS` name, bool `[N]`: the quantity of `kinematics` stays within its bounds at
    every step; a trajectory or v0 with a NaN or inf fails every bound."""
    kin = kinematics(xy, v0, dt, window)
    finite = jnp.all(jnp.isfinite(jnp.asarray(xy)), axis=(-2, -1)) & jnp.isfinite(jnp.asarray(v0))
    return {k: finite & jnp.all((kin[k] >= lo) & (kin[k] <= hi), axis=-1) for k, (lo, hi) in COMFORT_BOUNDS.items()}


def comfort(xy: XY, v0: PerSample, dt: float = 0.1, window: int = COMFORT_WINDOW) -> PerSample:
    """Fraction of the six comfort bounds satisfied over the whole horizon, `[N]` in {0, 1/6, .., 1}."""
    checks = comfort_checks(xy, v0, dt, window)
    return jnp.mean(jnp.stack([c.astype(jnp.float32) for c in checks.values()], -1), axis=-1)


def ade_gated_reward(pred: XY, gt: XY, comfort: PerSample,
                     gate_m: float = 3.0) -> PerSample:
    """The release's trajectory reward, `[N]`: -0.4 ADE / gate_m + 0.1 (comfort - 1) when ADE < gate_m,
    else -1 (ADE: mean x-y L2 distance, m; comfort in [0, 1]).

    AR1_FACTS gives "0.1 (comfort - 1)"; another write-up has "+ 0.1 comfort". They differ by a
    constant 0.1 inside the gate, which matters once some samples of a group are gated: we keep the
    facts' form, whose in-gate values lie in [-0.5, 0] (0 = exact and comfortable), all above the gated
    -1. The ADE is scaled by the gate (3 m by default, the release's constant). A non-finite ADE is gated.
    """
    ade = jnp.mean(jnp.linalg.norm(jnp.asarray(pred, jnp.float32) - jnp.asarray(gt, jnp.float32), axis=-1), -1)
    inside = -0.4 * ade / gate_m + 0.1 * (jnp.asarray(comfort, jnp.float32) - 1.0)
    return jnp.where(ade < gate_m, inside, -1.0)


def collision_and_offroad(pred: XY, arrays: SceneArrays, dt: float = 0.1,
                          per_step: bool = False) -> tuple[Array, Array]:
    """Whether each trajectory hits an agent / leaves the road at any of its T steps (bool `[N]`, or
    `[N, T]` with `per_step`).

    pred `[N, T, 2]` metres, ego0 rear-axle positions at scene steps t0 + 1 .. t0 + T.
    The ego gets the heading of its direction of travel (`trajectory_headings`), is placed in the world
    with `arrays.ego0_pose` and checked with `world.arrays.footprint_checks`. `arrays`: one scene's
    `SceneArrays` (shared by all N, e.g. a GRPO group) or a stack with leading axis N. Jittable.
    """
    pred = jnp.asarray(pred, jnp.float32)
    shared = jnp.ndim(arrays.ego0_pose) == 1
    world = ego0_to_world(pred, trajectory_headings(pred, dt), arrays.ego0_pose)
    hit, off = jax.vmap(footprint_checks, in_axes=(0, None if shared else 0))(world, arrays)
    if per_step:
        return hit, off
    return jnp.any(hit, -1), jnp.any(off, -1)


# ----------------------------------------------------------------------------------------------------
# Totals.


def total_reward(terms: Mapping[str, Array], cfg: RewardConfig = RewardConfig()) -> Array:
    """`sum_k w_k terms[k]` `[N]`, w from `cfg`, collision and offroad subtracted. Missing terms count 0;
    a key that is not in `TERMS` (other than "total") is a ValueError."""
    unknown = set(terms) - set(TERMS) - {"total"}
    if unknown:
        raise ValueError(f"total_reward: unknown terms {sorted(unknown)}; known: {list(TERMS)}")
    total = jnp.zeros(jnp.shape(next(iter(terms.values()), 0.0)), jnp.float32)
    for name in TERMS:
        if name in terms:
            sign = -1.0 if name in ("collision", "offroad") else 1.0
            total = total + sign * getattr(cfg, name) * jnp.asarray(terms[name], jnp.float32)
    return total


def score_rollouts(texts: Sequence[object], trajectories: NpXY, v0: NpPerSample,
                   gt: NpXY, *, references: Sequence[str | coc.Trace] | None = None,
                   scenes: SceneArrays | None = None, num_tokens: NpPerSample | None = None,
                   critic: Critic | None = None, cfg: RewardConfig = RewardConfig(), dt: float = 0.1
                   ) -> dict[str, np.ndarray]:
    """Every term of N rollouts and their `total`: float32 `[N]` numpy arrays keyed by `TERMS` + "total".

    texts: the N reasoning traces; trajectories, gt `[N, T, 2]` metres (ego0); v0 `[N]` m/s.
    references: the reference traces for `critic` (default `RuleCritic()`); None: reasoning is 0.
    scenes: `SceneArrays` (one shared, or stacked `[N, ...]`); None: collision and offroad are 0.
    num_tokens: the traces' token counts for the format cap `cfg.max_reasoning_tokens`; None: no cap.
    """
    n = len(texts)
    traj = np.asarray(trajectories, np.float32)
    speeds = np.asarray(v0, np.float32).reshape(-1)
    comf = comfort(traj, speeds, dt)
    terms = {
        "consistency": consistency_reward(texts, traj, speeds, dt),
        "reasoning": (np.zeros(n, np.float32) if references is None
                      else (critic or RuleCritic()).score(texts, references)),
        "trajectory": ade_gated_reward(traj, gt, comf, cfg.ade_gate_m),
        "comfort": comf,
        "format": format_reward(texts, np.zeros(n) if num_tokens is None else num_tokens, cfg.max_reasoning_tokens),
    }
    if scenes is None:
        terms["collision"] = terms["offroad"] = np.zeros(n, np.float32)
    else:
        terms["collision"], terms["offroad"] = collision_and_offroad(traj, scenes, dt)
    out = {k: np.asarray(terms[k], np.float32) for k in TERMS}
    out["total"] = np.asarray(total_reward(out, cfg), np.float32)
    return out
