"""Compiled inference: deterministic with a seed, no recompilation on a second scene, K samples in
one call, the cached greedy decode equals a cache-free reference, B scenes x K samples in one call
agree with each scene alone, weight-only int8 stays close to float, and the decode loop stops each
row at its stop token or end of text."""

import dataclasses

import jax
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
    # One compiled reference forward over a fixed length: the sequence so far, then filler text tokens
    # that causal attention keeps from the positions read.
    length = len(ids) + cfg.infer.max_reasoning_tokens + 1
    forward = jax.jit(lambda p, x, pos, media: vlm_forward(p, cfg.model, x, pos, media=media)[0])
    # Positions of the prompt, then text positions on: a random model may emit a vision token id, which
    # get_rope_index over the whole sequence would read as a media block (as the engine does not).
    prompt_pos, _ = rope.get_rope_index(np.asarray(ids, np.int32)[None], family=cfg.model.family,
                                        image_token_id=cfg.model.image_token_id,
                                        video_token_id=cfg.model.video_token_id, spatial_merge_size=2,
                                        image_grid_thw=grid)
    prompt_pos = np.asarray(prompt_pos)
    tail = prompt_pos.max() + 1 + np.arange(length - len(ids))
    positions = np.concatenate([prompt_pos, np.broadcast_to(tail, prompt_pos.shape[:-1] + tail.shape)], -1)
    for i in range(int(out.timing["decode_steps"])):
        x = np.full((1, length), cfg.tokens.traj_future_start_id, np.int32)
        x[0, :len(seq)] = seq
        logits = np.asarray(forward(eng.params, x, positions, prep["media"])[0, len(seq) - 1]).copy()
        logits[offset:offset + 4000] = -np.inf
        want = int(np.argmax(logits))
        if want in eng.end_ids() or (i == cfg.infer.max_reasoning_tokens - 1 and
                                     want != cfg.tokens.traj_future_start_id):
            want = cfg.tokens.traj_future_start_id  # the engine forces it at the budget or the end of text
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


def test_batch_of_scenes_matches_each_scene_alone_and_int8_stays_close(engine):
    """Two scenes x two samples in one call (greedy) give each scene's own result; int8 weights change
    the prefill logits by < 3% of their scale and, where the greedy reasoning agrees, the trajectory
    by centimetres (a random tiny model: the flow is sensitive, real weights are smoother)."""
    cfg = dataclasses.replace(engine.cfg, infer=dataclasses.replace(engine.cfg.infer, temperature=0.0,
                                                                     max_reasoning_tokens=5))
    eng = Engine(cfg, engine.params, engine.tokenizer)
    rng = np.random.default_rng()
    scenes = [F.scene_inputs(cfg, eng.tokenizer, rng) for _ in range(2)]
    assert len(scenes[0][0]) == len(scenes[1][0])
    ids = np.stack([s[0] for s in scenes])
    pv, grid = np.concatenate([s[2] for s in scenes]), np.concatenate([s[3] for s in scenes])
    both = eng.run(ids, pv, grid, v0=np.array([4.0, 9.0]), seed=1, num_samples=2)
    assert both.trajectory.shape == (2, 2, 64, 2) and both.token_logp.shape[:2] == (2, 2)
    for b, (one_ids, _, one_pv, one_grid) in enumerate(scenes):
        alone = eng.run(one_ids, one_pv, one_grid, v0=[4.0, 9.0][b], seed=1, num_samples=2)
        np.testing.assert_array_equal(both.reasoning_ids[b], alone.reasoning_ids[0])
        if b == 0:  # the flow noise of row i depends on (seed, i) only
            np.testing.assert_allclose(both.trajectory[0], alone.trajectory[0], atol=1e-3)

    q = Engine(cfg, F.tiny_ar1(0)[1], eng.tokenizer, int8=True)
    f = Engine(cfg, F.tiny_ar1(0)[1], eng.tokenizer)
    x = f.prepare(ids, pv, grid)
    args = (x["input_ids"], x["positions"], x["kv_valid"])
    lf, _ = f.prefill(f.params, *args, f.vision(f.params, x["media"]), x["next_position"])
    lq, _ = q.prefill(q.params, *args, q.vision(q.params, x["media"]), x["next_position"])
    assert float(np.abs(np.asarray(lq) - np.asarray(lf)).max()) < 0.03 * float(np.abs(np.asarray(lf)).max())
    rf = f.run(ids, pv, grid, v0=np.array([4.0, 9.0]), seed=1, num_samples=1)
    rq = q.run(ids, pv, grid, v0=np.array([4.0, 9.0]), seed=1, num_samples=1)
    same = (rf.reasoning_ids == rq.reasoning_ids).all(-1)
    assert same.any()
    assert np.abs(rf.trajectory - rq.trajectory)[same].max() < 0.5


def test_decode_stops_each_row_at_its_stop_token_or_end_of_text():
    """A scripted step: row 0 draws the stop token at step 2, row 1 an end-of-text id at step 1 (fed as
    the stop token, `forced`), row 2 neither (forced at the budget); the loop ends when all stopped,
    entries after a row's stop are 0, and greedy log-probs are 0 (sampled ones are real log-probs)."""
    import jax.numpy as jnp

    from ar1_jax.infer import sampling
    from ar1_jax.model.kv_cache import init_cache

    stop, end, v = 7, 9, 12
    script = jnp.array([[3, 4, stop, 5, 5, 5], [3, end, 5, 5, 5, 5], [3, 4, 5, 6, 4, 3]])

    def step(tok, cache):
        nxt = script[:, cache.length + 1]
        return jax.nn.one_hot(nxt, v) * 10.0, cache.replace(length=cache.length + 1,
                                                            next_position=cache.next_position + 1)

    import jax

    cache = init_cache(1, 3, 8, 1, 2)
    out = sampling.decode(step, cache, jax.nn.one_hot(script[:, 0], v) * 10.0, None, max_tokens=5, stop_id=stop,
                          end_ids=(end,))
    np.testing.assert_array_equal(np.asarray(out.tokens), [[3, 4, stop, 0, 0], [3, stop, 0, 0, 0], [3, 4, 5, 6, stop]])
    np.testing.assert_array_equal(np.asarray(out.stop_slot), [2, 1, 4])
    np.testing.assert_array_equal(np.asarray(out.forced), [False, True, True])
    assert int(out.steps) == 5 and np.all(np.asarray(out.logp) == 0)
    sampled = sampling.decode(step, init_cache(1, 3, 8, 1, 2), jax.nn.one_hot(script[:, 0], v) * 10.0,
                              jax.random.key(0), max_tokens=5, temperature=1.0, stop_id=stop, end_ids=(end,))
    lp = np.asarray(sampled.logp)
    assert np.all(lp[:, 0] < 0) and np.all(lp[:, 0] > -1e-3) and lp[0, 3] == 0  # drawn: log(~1); after stop: 0
