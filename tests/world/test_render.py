"""ar1_jax/world/render.py: camera sets, images from other poses and steps (closed-loop re-rendering),
cfg.synth.supersample, bad inputs, and pixel-decided families told apart only by the cameras."""

import numpy as np
import pytest

from ar1_jax.config import apply_overrides, get_config
from ar1_jax.world.families import PIXEL_PAIRS, generate
from ar1_jax.world.render import CAMERAS, camera_set, render

CFG = get_config("ar1_tiny")  # 4 cameras x 4 frames of 64 x 96
TEST_SEED = 1_000_000


@pytest.fixture(scope="module")
def scene():
    return generate(TEST_SEED + 11, CFG, family="cut_in")


def test_camera_sets():
    assert [c.name for c in camera_set(1)] == ["camera_front_wide_120fov"]
    assert [c.release_id for c in camera_set(2)] == [1, 6]  # the paper's front wide + tele
    assert camera_set(4) == CAMERAS and [c.release_id for c in CAMERAS] == [0, 1, 2, 6]
    assert [c.yaw_deg for c in camera_set(3)] == [60.0, 0.0, -60.0]
    with pytest.raises(ValueError, match="num_cameras"):
        camera_set(5)


def test_render_defaults_to_the_last_history_frames(scene):
    img = render(scene, CFG)
    assert img.shape == (4, 4, 64, 96, 3) and img.dtype == np.uint8 and img.std() > 10
    steps = np.arange(scene.t0_index - 3, scene.t0_index + 1)
    np.testing.assert_array_equal(render(scene, CFG, ego_poses=scene.ego[steps, :3], steps=steps), img)
    sky = img[1, -1, 0]  # the front camera's top row is sky: blue above grey-blue
    assert np.all(sky[:, 2] > sky[:, 0])


def test_rerender_from_other_poses_and_later_steps(scene):
    steps = np.arange(scene.t0_index - 3, scene.t0_index + 1)
    base = render(scene, CFG)
    shifted = scene.ego[steps, :3] + np.array([0.0, 1.5, 0.0])  # a simulator's ego, 1.5 m to the left
    moved = render(scene, CFG, ego_poses=shifted, steps=steps)
    assert moved.shape == base.shape and not np.array_equal(moved, base)
    later = steps + 30  # 3 s on: the cut-in car has moved, the ego is where the expert drove
    assert not np.array_equal(render(scene, CFG, steps=later), base)
    with pytest.raises(ValueError, match="steps"):
        render(scene, CFG, steps=np.array([0, 1, 2, len(scene.times)]))
    with pytest.raises(ValueError, match="steps"):
        render(scene, CFG, steps=np.arange(3))
    with pytest.raises(ValueError, match="ego_poses"):
        render(scene, CFG, ego_poses=shifted[:, :2], steps=steps)


def test_supersample_comes_from_cfg_synth(scene):
    one = render(scene, apply_overrides(CFG, ["synth.supersample=1"]))
    two = render(scene, CFG)  # the default, 2
    assert one.shape == two.shape and not np.array_equal(one, two)
    assert np.abs(one.astype(int) - two.astype(int)).mean() < 12  # the same picture, other anti-aliasing


def _colour_pixels(images, colour):
    r, g, b = (images[..., i].astype(int) for i in range(3))
    if colour == "red":
        return int(np.sum((r > 200) & (g < 110) & (b < 110)))
    return int(np.sum((g > 190) & (r < 150) & (b < 170)))


@pytest.mark.parametrize("pair", PIXEL_PAIRS, ids=lambda p: f"{p[0]}-vs-{p[1]}")
def test_pixel_decided_families_differ_in_the_front_cameras(pair):
    cue, look_alike = pair
    for seed in range(TEST_SEED, TEST_SEED + 2):
        a = render(generate(seed, CFG, family=cue), CFG)
        b = render(generate(seed, CFG, family=look_alike), CFG)
        front_t0 = (slice(1, 4, 2), -1)  # front-wide and front-tele at t0
        assert not np.array_equal(a[front_t0], b[front_t0])
        if cue == "red_light_stop":  # the light's colour is the cue: red bulbs in one, green in the other
            assert _colour_pixels(a[front_t0], "red") > _colour_pixels(b[front_t0], "red")
            assert _colour_pixels(b[front_t0], "green") > 0 and _colour_pixels(a, "green") == 0
