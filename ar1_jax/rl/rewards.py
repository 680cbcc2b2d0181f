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
               (Savitzky-Golay derivatives over 0.9 s, `eval.kinematics`).
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
import re
from typing import Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ar1_jax import config_rl
from ar1_jax.eval import scoring
from ar1_jax.eval.kinematics import COMFORT_BOUNDS, comfort, comfort_checks, kinematics, trajectory_headings
from ar1_jax.text import coc
from ar1_jax.text.coc_parse import ParseResult, parse
from ar1_jax.world.arrays import SceneArrays, ego0_to_world, footprint_checks

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
# Trajectory terms (jittable; kinematics and the comfort bounds are `eval.kinematics`'s).


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
