"""The RL scene stream: which world seed scene k is, and what the pool keeps."""

from ar1_jax.rl import scenes as scenes_lib


def _counting(monkeypatch):
    made = []
    monkeypatch.setattr(scenes_lib, "make_scene", lambda cfg, tok, seed: made.append(seed) or f"scene {seed}")
    return made


def test_a_pool_wraps_and_prepares_each_scene_once(monkeypatch):
    made = _counting(monkeypatch)
    pool = scenes_lib.ScenePool(None, None, 100, size=3)
    assert pool.scenes(0, 7) == [f"scene {s}" for s in (100, 101, 102, 100, 101, 102, 100)]
    assert made == [100, 101, 102]


def test_without_a_pool_every_scene_is_new_and_only_recent_ones_are_kept(monkeypatch):
    made = _counting(monkeypatch)
    stream = scenes_lib.ScenePool(None, None, 7)
    stream.RECENT = 2
    assert [stream.scene(k) for k in (0, 1, 1, 2, 0)] == [f"scene {s}" for s in (7, 8, 8, 9, 7)]
    assert made == [7, 8, 9, 7]  # scene 7 was dropped when 9 came, so it is prepared again
    assert len(stream._cache) == 2
