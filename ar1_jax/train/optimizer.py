"""The optimizer of the training driver: AdamW with warmup + cosine, per-module learning-rate multipliers,
frozen modules and global-norm clipping, all from a `TrainConfig`.

Parameters are addressed by dotted paths of the pure parameter dict (`vision.blocks.attn.q_kernel`,
`text.embed`, `expert.layers.mlp.up_kernel`). A module entry in `train.frozen` or
`train.lr_multipliers` is a prefix of such paths at a dot boundary; the longest matching entry wins,
so `lr_multipliers=("text=0.1", "text.embed=1")` trains the embedding at the full rate.

Frozen parameters get no optimizer state (`optax.set_to_zero`) and `frozen_mask` lets the loss put a
stop-gradient on them, so XLA drops their backward pass entirely.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ar1_jax.config import ConfigError, TrainConfig

FROZEN = "frozen"
# Decoupled weight decay applies to matrices that map features, not to norms, biases or positions.
_DECAYED_SUFFIXES = ("kernel", "embed", "lm_head")


def param_paths(params: dict) -> dict:
    """A tree like `params` whose leaves are the leaves' dotted paths."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path, simple=True, separator="."), params)


def _match(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _check_prefixes(paths: list[str], prefixes: list[str], field: str) -> None:
    for prefix in prefixes:
        if not any(_match(p, prefix) for p in paths):
            tops = sorted({p.split(".")[0] for p in paths})
            raise ConfigError(f"config field `train.{field}`: {prefix!r} matches no parameter (module paths start "
                              f"with one of {tops}, e.g. {paths[0]!r})")


def parse_multipliers(tc: TrainConfig) -> dict[str, float]:
    """`train.lr_multipliers` as {module prefix: multiplier}."""
    out = {}
    for item in tc.lr_multipliers:
        prefix, _, mult = item.partition("=")
        out[prefix.strip()] = float(mult)
    return out


def group_labels(tc: TrainConfig, params: dict) -> dict:
    """A tree like `params` of group names: `frozen` or `lr*<multiplier>`."""
    paths = jax.tree.leaves(param_paths(params))
    mults = parse_multipliers(tc)
    _check_prefixes(paths, list(tc.frozen), "frozen")
    _check_prefixes(paths, list(mults), "lr_multipliers")
    rules = [(p, FROZEN) for p in tc.frozen] + [(p, f"lr*{m:g}") for p, m in mults.items()]

    def label(path: str) -> str:
        hits = [(len(prefix), name) for prefix, name in rules if _match(path, prefix)]
        return max(hits)[1] if hits else "lr*1"

    return jax.tree.map(label, param_paths(params))


def frozen_mask(tc: TrainConfig, params: dict) -> dict:
    """A tree like `params` of bools: True where the parameter is frozen."""
    return jax.tree.map(lambda g: g == FROZEN, group_labels(tc, params))


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine to
    `learning_rate * end_lr_fraction` at `steps` (or constant)."""
    warmup = min(tc.warmup_steps, tc.steps)
    if tc.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(tc.learning_rate)
        return optax.join_schedules([optax.linear_schedule(0.0, tc.learning_rate, warmup),
                                     optax.constant_schedule(tc.learning_rate)], [warmup])
    return optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, warmup, max(tc.steps, warmup + 1),
                                              end_value=tc.learning_rate * tc.end_lr_fraction)


def _decay_mask(params: dict) -> dict:
    return jax.tree.map(lambda p: p.split(".")[-1].endswith(_DECAYED_SUFFIXES), param_paths(params))


def make_optimizer(tc: TrainConfig, params: Any) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW per multiplier group (frozen groups: zero updates, no state).

    `params` may be abstract (`jax.ShapeDtypeStruct` leaves): only its structure and paths are read.
    """
    labels = group_labels(tc, params)
    schedule = learning_rate_schedule(tc)
    mu_dtype = jnp.dtype(tc.mu_dtype) if tc.mu_dtype else None
    transforms = {}
    for group in set(jax.tree.leaves(labels)):
        if group == FROZEN:
            transforms[group] = optax.set_to_zero()
            continue
        mult = float(group[len("lr*"):])
        transforms[group] = optax.adamw(lambda step, m=mult: m * schedule(step), b1=tc.b1, b2=tc.b2, eps=tc.eps,
                                        weight_decay=tc.weight_decay, mu_dtype=mu_dtype, mask=_decay_mask)
    chain = [optax.clip_by_global_norm(tc.clip_grad_norm)] if tc.clip_grad_norm > 0 else []
    return optax.chain(*chain, optax.multi_transform(transforms, labels))


def opt_state_shardings(abstract_opt_state: Any, abstract_params: dict, param_shardings: dict,
                        replicated: jax.sharding.Sharding) -> Any:
    """Shardings for the optimizer state: a leaf whose key path ends with a parameter's path (Adam's
    mu/nu inside any wrapper, masked or not) and has its shape takes that parameter's sharding;
    counters and anything else are replicated."""
    def dict_keys(path) -> tuple:
        return tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))

    by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                      jax.tree.leaves(param_shardings)):
        by_path[dict_keys(path)] = (tuple(leaf.shape), sharding)

    def one(path, leaf):
        keys = dict_keys(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)
