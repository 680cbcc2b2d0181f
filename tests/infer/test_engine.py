"""Compiled inference: deterministic with a seed, no recompilation on a second scene, K samples in
one call, and the cached greedy decode equals a cache-free reference."""

import dataclasses

import numpy as np
import pytest

import ar1_fixtures as F
from ar1_jax.infer.engine import Engine
from ar1_jax.model import rope
from ar1_jax.model.vlm import vlm_forward


@pytest.fixture(scope="module")
def engine():
    tok = F.tiny_tokenizer()
    cfg, params = F.tiny_ar1(int(np.random.default_rng().integers(100)))
    F.check_layout(cfg, tok)
    return Engine(cfg, params, tok)


def test_deterministic_k_samples_and_no_recompilation(engine):
    cfg, tok = engine.cfg, engine.tokenizer
    rng = np.random.default_rng()
    ids, _, pv, grid = F.scene_inputs(cfg, tok, rng)
    a = engine.run(ids, pv, grid, v0=8.0, seed=3, num_samples=3)
    counts = engine.compiled_counts()
    b = engine.run(ids, pv, grid, v0=8.0, seed=3, num_samples=3)
    assert a.trajectory.shape == (1, 3, 64, 2) and a.controls.shape == (1, 3, 64, 2)
    np.testing.assert_array_equal(a.trajectory, b.trajectory)
    np.testing.assert_array_equal(a.reasoning_ids, b.reasoning_ids)
    assert a.text == b.text and len(a.text[0]) == 3
    assert not np.allclose(a.trajectory[0, 0], a.trajectory[0, 1])  # each sample has its own noise
    # A second scene of the same bucket (same prompt length and image sizes) compiles nothing new.
    ids2, _, pv2, grid2 = F.scene_inputs(cfg, tok, rng)
    assert len(ids2) == len(ids)
    c = engine.run(ids2, pv2, grid2, v0=3.0, seed=4, num_samples=3)
    assert engine.compiled_counts() == counts
    assert not np.allclose(c.trajectory, a.trajectory)
    for key in ("vision", "prefill", "decode", "decode_per_token", "denoise", "trajectory", "total"):
        assert c.timing[key] > 0
    assert np.isfinite(c.trajectory).all()
    # Every sample ends its reasoning with <|traj_future_start|> (forced at the budget if need be).
    n = c.num_reasoning_tokens
    assert np.all(c.reasoning_ids[np.arange(1)[:, None], np.arange(3)[None], n] == cfg.tokens.traj_future_start_id)


def test_greedy_decode_matches_cache_free_reference(engine):
    cfg = dataclasses.replace(engine.cfg, infer=dataclasses.replace(engine.cfg.infer, temperature=0.0,
                                                                     max_reasoning_tokens=6))
    eng = Engine(cfg, engine.params, engine.tokenizer)
    rng = np.random.default_rng()
    ids, _, pv, grid = F.scene_inputs(cfg, eng.tokenizer, rng)
    out = eng.run(ids, pv, grid, v0=5.0, seed=0, num_samples=1)
    got = out.reasoning_ids[0, 0]
    prep = eng.prepare(ids, pv, grid)
    seq = list(ids)
    offset = cfg.tokens.traj_token_offset
    for i in range(int(out.timing["decode_steps"])):
        x = np.asarray(seq, np.int32)[None]
        positions, _ = rope.get_rope_index(x, family=cfg.model.family, image_token_id=cfg.model.image_token_id,
                                           video_token_id=cfg.model.video_token_id, spatial_merge_size=2,
                                           image_grid_thw=grid)
        logits, _ = vlm_forward(eng.params, cfg.model, x, positions, media=prep["media"])
        logits = np.asarray(logits[0, -1]).copy()
        logits[offset:offset + 4000] = -np.inf
        want = int(np.argmax(logits))
        if i == cfg.infer.max_reasoning_tokens - 1 and want != cfg.tokens.traj_future_start_id and \
                cfg.tokens.traj_future_start_id not in seq[len(ids):]:
            want = cfg.tokens.traj_future_start_id  # the engine forces it at the budget
        assert got[i] == want, (i, got[: i + 1], want)
        seq.append(want)
        if want == cfg.tokens.traj_future_start_id:
            break


def test_reasoning_log_likelihood_and_the_sample_to_drive(engine):
    from ar1_jax.infer import select

    cfg, tok = engine.cfg, engine.tokenizer
    ids, _, pv, grid = F.scene_inputs(cfg, tok, np.random.default_rng())
    r = engine.run(ids, pv, grid, v0=6.0, seed=int(np.random.default_rng().integers(100)), num_samples=4)
    assert r.reasoning_logp.shape == (1, 4) and np.all(r.reasoning_logp < 0) and np.isfinite(r.reasoning_logp).all()
    chosen, consistent = r.choose(6.0)
    want = select.sample_consistency(r.decisions[0], r.trajectory[0], 6.0)
    np.testing.assert_array_equal(consistent[0], want)
    assert chosen[0] == select.pick_consistent(want, r.reasoning_logp[0])
    assert r.choose(6.0, "likely")[0][0] == int(np.argmax(r.reasoning_logp[0]))
    assert r.choose(6.0, "first")[0][0] == 0
    with pytest.raises(ValueError, match="mode"):
        r.choose(6.0, "best")
