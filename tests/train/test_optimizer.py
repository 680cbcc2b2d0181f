"""ar1_jax/train/optimizer.py: module groups, freezing, learning-rate multipliers, the schedule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ar1_jax.config import ConfigError, TrainConfig
from ar1_jax.train import optimizer as opt


def _params(rng):
    shapes = {"vision": {"blocks": {"fc1_kernel": (3, 4, 5), "norm": (3, 4)}},
              "text": {"embed": (11, 4), "layers": {"q_kernel": (2, 4, 4), "input_norm": (2, 4)}},
              "expert": {"layers": {"up_kernel": (2, 4, 6)}, "action_out": {"bias": (2,)}}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def test_longest_prefix_wins_and_unknown_prefix_is_named():
    p = _params(np.random.default_rng(0))
    tc = TrainConfig(frozen=("vision",), lr_multipliers=("text=0.1", "text.embed=1"))
    labels = opt.group_labels(tc, p)
    assert labels["vision"]["blocks"]["fc1_kernel"] == "frozen"
    assert labels["text"]["embed"] == "lr*1"
    assert labels["text"]["layers"]["q_kernel"] == "lr*0.1"
    assert labels["expert"]["layers"]["up_kernel"] == "lr*1"
    with pytest.raises(ConfigError, match=r"train\.frozen.*'visoin' matches no parameter"):
        opt.group_labels(TrainConfig(frozen=("visoin",)), p)
    with pytest.raises(ConfigError, match=r"train\.lr_multipliers.*'text.emb'"):
        opt.group_labels(TrainConfig(lr_multipliers=("text.emb=2",)), p)  # a prefix only at a dot boundary


def test_frozen_params_do_not_move_and_hold_no_state_and_multiplier_scales_the_update():
    rng = np.random.default_rng(1)
    p = _params(rng)
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
    tc = TrainConfig(frozen=("vision",), lr_multipliers=("expert=0.1",), weight_decay=0.0, clip_grad_norm=0.0,
                     warmup_steps=0, schedule="constant", learning_rate=1e-2, eps=1e-12)
    tx = opt.make_optimizer(tc, p)
    state = tx.init(p)
    moment_sizes = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    trainable = sum(x.size for k, sub in p.items() if k != "vision" for x in jax.tree.leaves(sub))
    assert moment_sizes == 2 * trainable  # mu and nu for trainable parameters only
    updates, _ = tx.update(g, state, p)
    new = optax.apply_updates(p, updates)
    for a, b in zip(jax.tree.leaves(p["vision"]), jax.tree.leaves(new["vision"])):
        np.testing.assert_array_equal(a, b)
    # Adam's first step moves every parameter by lr * sign(g); the expert's by 0.1 of that.
    np.testing.assert_allclose(np.abs(np.asarray(new["text"]["embed"] - p["text"]["embed"])), 1e-2, rtol=1e-4)
    np.testing.assert_allclose(np.abs(np.asarray(new["expert"]["layers"]["up_kernel"]
                                              - p["expert"]["layers"]["up_kernel"])), 1e-3, rtol=1e-4)


def test_weight_decay_only_on_kernels_and_embeddings():
    p = _params(np.random.default_rng(2))
    zero = jax.tree.map(jnp.zeros_like, p)
    tc = TrainConfig(weight_decay=0.5, clip_grad_norm=0.0, warmup_steps=0, schedule="constant", learning_rate=0.1)
    tx = opt.make_optimizer(tc, p)
    updates, _ = tx.update(zero, tx.init(p), p)
    np.testing.assert_allclose(updates["text"]["layers"]["q_kernel"], -0.05 * p["text"]["layers"]["q_kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(updates["text"]["embed"], -0.05 * p["text"]["embed"], rtol=1e-6)
    np.testing.assert_array_equal(updates["text"]["layers"]["input_norm"], 0)
    np.testing.assert_array_equal(updates["expert"]["action_out"]["bias"], 0)


def test_schedule_warmup_then_cosine_to_the_end_fraction():
    tc = TrainConfig(steps=100, warmup_steps=10, learning_rate=1.0, end_lr_fraction=0.1)
    s = opt.learning_rate_schedule(tc)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    assert float(s(55)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # halfway through the cosine
    assert float(s(100)) == pytest.approx(0.1)
    const = opt.learning_rate_schedule(dataclasses.replace(tc, schedule="constant"))
    assert float(const(5)) == pytest.approx(0.5) and float(const(90)) == pytest.approx(1.0)


def test_clipping_applies_to_the_global_norm_before_adam():
    rng = np.random.default_rng(3)
    p = _params(rng)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * scale, jnp.float32), p)
             for scale in (100.0, 0.01)]
    tc = TrainConfig(clip_grad_norm=1.0, weight_decay=0.0, warmup_steps=0, schedule="constant", learning_rate=0.1)
    ours, ref = opt.make_optimizer(tc, p), optax.adam(0.1, b1=tc.b1, b2=tc.b2, eps=tc.eps)
    s_ours, s_ref = ours.init(p), ref.init(p)
    for g in grads:
        norm = optax.tree.norm(g)
        clipped = jax.tree.map(lambda x: x * jnp.minimum(1.0, 1.0 / norm), g)
        u_ours, s_ours = ours.update(g, s_ours, p)
        u_ref, s_ref = ref.update(clipped, s_ref, p)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
