"""ar1_jax/eval/viz.py, ar1_jax/eval/animate.py and `ar1 viz`: the plots draw what they say (pixels of the
map, agents, lights and the ego where the geometry puts them), the GIF has one frame per step, the CLI
writes its files and names what is missing."""

import json
import math
import warnings

import matplotlib.colors as mcolors
import numpy as np
import pytest
from PIL import Image

from ar1_jax.cli.main import main
from ar1_jax.config import get_config, to_dict
from ar1_jax.eval import animate, viz
from ar1_jax.world import families


@pytest.fixture(scope="module")
def cfg():
    return get_config("ar1_tiny")


@pytest.fixture(scope="module")
def light_scene(cfg):  # red_light_stop: vehicles, pedestrians and three lights at t0
    scene = families.generate(5, cfg)
    assert scene.lights and scene.agents
    return scene


def logged_track(scene, n=30, plan_every=5, plan_len=20):
    """A closed-loop track (the `load_track` dict) of the scene's own logged drive over n steps: plans are
    slices of the logged future every `plan_every` steps; a collision flagged at steps 10-12."""
    t0 = scene.t0_index
    rows = slice(t0, t0 + n + 1)
    replans = np.arange(0, n + 1, plan_every, dtype=np.int32)
    collision = np.zeros(n + 1, bool)
    collision[10:13] = True
    return dict(seed=scene.seed, family=scene.family, scene_id=scene.scene_id, policy="expert", dt=scene.dt,
                ego=scene.ego[rows].astype(np.float32),
                agents=np.stack([a.poses[rows] for a in scene.agents]).reshape(len(scene.agents), n + 1, 3),
                plans=np.stack([scene.ego[t0 + r:t0 + r + plan_len, :2] for r in replans]).astype(np.float32),
                replan_steps=replans, reasoning=np.array([scene.cot] * len(replans)), collision=collision,
                offroad=np.zeros(n + 1, bool))


def save_track(path, track):
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in track.items()})


def rgb(color) -> np.ndarray:
    return np.array(mcolors.to_rgb(color)) * 255


def saved_pixels(fig, path):
    fig.savefig(path)
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.shape[:2] == (round(fig.get_figheight() * fig.dpi), round(fig.get_figwidth() * fig.dpi))
    return img


def pixel_at(fig, img, xy_ego0) -> np.ndarray:
    """The saved figure's colour at an ego0 point of its BEV axes (plot coordinates are (-y, x))."""
    ax = fig.axes[0]
    u, v = ax.transData.transform((-xy_ego0[1], xy_ego0[0]))
    return img[int(round(img.shape[0] - v)), int(round(u))]


# ----------------------------------------------------------------------------------------------------
# Bird's-eye view.


def test_bev_draws_map_agents_lights_and_ego_where_they_are(light_scene, tmp_path):
    scene = light_scene
    fig = viz.bev_figure(scene, caption=scene.cot)
    img = saved_pixels(fig, tmp_path / "bev.png")
    # The drivable area behind the ego (off every line and the history) is grey; the field beside it is not.
    x0, y0, _ = scene.origin
    assert scene.road.on_road(np.array([x0 - 18.0, y0 + 0.9]))
    assert np.abs(pixel_at(fig, img, (-18.0, 0.9)) - rgb(viz.MAP_COLORS["drivable"])).max() < 12
    off = next((x, y) for x in (-15.0, 60.0) for y in (28.0, -28.0)
               if not scene.road.on_road(np.array([x0 + x, y0 + y]))
               and not any(r[0] <= x0 + x <= r[1] and r[2] <= y0 + y <= r[3] for r in scene.road.sidewalks))
    assert np.abs(pixel_at(fig, img, off) - rgb(viz.MAP_COLORS["ground"])).max() < 12
    # Each agent at t0 (away from other agents and lights) shows its kind's colour at its centre.
    t0 = scene.t0_index
    things = [scene.to_ego0(a.poses[t0, :2]) for a in scene.agents] + [
        scene.to_ego0(np.array(lt.position[:2])) for lt in scene.lights]
    checked = 0
    for i, ag in enumerate(scene.agents):
        p = things[i]
        alone = all(np.hypot(*(p - q)) > 3.0 for j, q in enumerate(things) if j != i)
        if alone and -18 < p[0] < 78 and abs(p[1]) < 28:
            assert np.abs(pixel_at(fig, img, p) - rgb(viz.KIND_COLORS[ag.kind])).max() < 12, (ag.kind, p)
            checked += 1
    assert checked >= 2
    for lt, state in zip(scene.lights, scene.light_states_at(0.0)):
        assert np.abs(pixel_at(fig, img, scene.to_ego0(np.array(lt.position[:2])))
                      - rgb(viz.LIGHT_COLORS[state])).max() < 12
    # The ego box: yellow beside the centre line of its path, 2.5 m ahead of the rear axle.
    assert np.abs(pixel_at(fig, img, (2.5, 0.7)) - rgb(viz.EGO_COLOR)).max() < 12
    assert scene.cot in " ".join(t.get_text().replace("\n", " ") for t in fig.texts)


def test_bev_left_turn_curves_left_and_window_fits_predictions(cfg, tmp_path):
    scene = families.generate(1, cfg, family="turn")
    fut, _ = scene.future()
    assert fut[-1, 1] > 5.0  # a left turn in ego0 (y left)
    far = np.stack([np.linspace(0, 130, 64), np.zeros(64)], -1)
    fig = viz.bev_figure(scene, predictions=np.stack([fut[:, :2], far]), labels=["follows the expert", "long"])
    ax = fig.axes[0]
    lines = {ln.get_label(): ln.get_xydata() for ln in ax.get_lines()}
    assert lines["expert future"][-1, 0] < -5.0  # drawn to the left of the ego (plot x = -y)
    assert np.allclose(lines["follows the expert"], np.stack([-fut[:, 1], fut[:, 0]], -1))
    assert ax.get_ylim()[1] >= 130 and ax.get_ylim()[0] == -20
    xlo, xhi = ax.get_xlim()
    assert xlo == -xhi and math.isclose((xhi - xlo) / np.ptp(ax.get_ylim()), 0.6)
    with warnings.catch_warnings():  # an undertrained model's reasoning holds control bytes: no glyph warning
        warnings.simplefilter("error")
        viz.plot_scene_bev(tmp_path / "turn.png", scene, caption="turn\x1e left\x00", labels=["a\x1eb"],
                           predictions=fut[None, :, :2])
    assert Image.open(tmp_path / "turn.png").size[0] == 560


# ----------------------------------------------------------------------------------------------------
# Camera grid.


def test_camera_grid_upscales_each_image_by_nearest_neighbour(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 12, 3), dtype=np.uint8)
    size = viz.plot_camera_grid(tmp_path / "cams.png", images, "grid", cameras=["a", "b"],
                                frame_labels=["t0-0.2 s", "t0-0.1 s", "t0"])
    img = np.asarray(Image.open(tmp_path / "cams.png").convert("RGB"))
    scale = 20  # ceil(240 / 12)
    assert size == (img.shape[1], img.shape[0]) == (3 * 12 * scale + 4 * 6, 30 + 2 * (18 + 8 * scale + 6) + 6)
    # Camera 1, frame 2: its tile starts below the title, one camera row and its label.
    top, left = 30 + (18 + 8 * scale + 6) + 6 + 18, 6 + 2 * (12 * scale + 6)
    tile = img[top:top + 8 * scale, left:left + 12 * scale]
    assert np.array_equal(tile, images[1, 2].repeat(scale, 0).repeat(scale, 1))
    with pytest.raises(ValueError, match=r"\[C, F, H, W, 3\]"):
        viz.plot_camera_grid(tmp_path / "bad.png", images[0])


# ----------------------------------------------------------------------------------------------------
# Curves.

SFT_ROW = {"step": 1, "loss": 18.1, "ce_reasoning": 8.4, "ce_trajectory": 8.4, "flow": 1.3, "grad_norm": 4.3,
           "lr": 0.0, "tokens": 3664.0, "step_time_s": 20.2, "tokens_per_s": 181.5, "step_flops": 1.4e10,
           "mfu": None, "includes_compile": True}
RL_ROW = {"step": 5, "loss": -1e-7, "token_loss": 8e-8, "expert_loss": -4e-7, "reward/total": -1.2,
          "reward/format": 0.9, "kl": 0.017, "expert_kl": 0.0, "clip_frac": 0.0, "consistency_rate": 0.06,
          "ratio": 1.0, "entropy": 0.58, "grad_norm": 9.2, "lr": 1e-4, "rollout_s": 18.0,
          "rollout_tokens_per_s": 133.4, "update_s": None, "stage": "rl", "nonfinite": ["loss"]}


def test_curve_panels_group_keys_and_skip_bookkeeping():
    panels = dict(viz.curve_panels([SFT_ROW, RL_ROW]))
    assert panels["loss"] == ["ce_reasoning", "ce_trajectory", "expert_loss", "flow", "loss", "token_loss"]
    assert panels["reward"] == ["reward/format", "reward/total"]
    assert panels["KL to the reference"] == ["expert_kl", "kl"]
    assert panels["fractions"] == ["clip_frac", "consistency_rate"]
    assert panels["grad norm"] == ["grad_norm"] and panels["learning rate"] == ["lr"]
    assert panels["entropy"] == ["entropy"]  # a key of no group: a panel of its own
    drawn = {k for keys in panels.values() for k in keys}
    for skipped in ("step", "tokens", "step_time_s", "tokens_per_s", "step_flops", "mfu", "includes_compile",
                    "rollout_s", "rollout_tokens_per_s", "update_s", "stage", "nonfinite"):
        assert skipped not in drawn


def test_plot_curves_writes_one_panel_per_group(tmp_path):
    rows = [dict(SFT_ROW, step=s, loss=18.0 - s) for s in (1, 5, 10)]
    panels = viz.plot_curves(tmp_path / "c.png", rows, title="sft")
    assert [p for p, _ in panels] == ["loss", "grad norm", "learning rate"]
    assert Image.open(tmp_path / "c.png").size == (1040, 640)  # 2 x 2 panels of 5.2 x 3.0 in (+ title), 100 dpi
    with pytest.raises(ValueError, match="no numeric"):
        viz.plot_curves(tmp_path / "none.png", [{"step": 1, "step_time_s": 2.0}])


def test_read_metrics_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(SFT_ROW) + "\n" + '{"step": 5, "loss": 1' + "\n" + json.dumps(RL_ROW) + "\n")
    assert [r["step"] for r in viz.read_metrics(path)] == [1, 5]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        viz.read_metrics(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------------------------------------------
# Closed-loop GIF.


def test_closed_loop_gif_has_a_frame_per_step_and_flags_collisions(light_scene, tmp_path):
    save_track(tmp_path / "t.npz", logged_track(light_scene))
    track = animate.load_track(tmp_path / "t.npz")
    assert track["seed"] == 5 and track["reasoning"][0] == light_scene.cot and track["scores"] == {}
    frames = animate.animate_closed_loop(tmp_path / "t.gif", light_scene, track)
    gif = Image.open(tmp_path / "t.gif")
    assert frames == gif.n_frames == 31
    assert gif.size == (384, 512 + 92)

    def frame(k):
        gif.seek(k)
        return np.asarray(gif.convert("RGB")).astype(float)

    red = rgb("#e61414")
    assert np.abs(frame(11)[2, 2] - red).max() < 20  # a collision step: red frame
    assert np.abs(frame(0)[2, 2] - red).max() > 100
    # The ego box sits on the view's centre column (the view follows it, y of the ego drawn mid-width).
    first = frame(0)
    assert (np.abs(first[:512, 180:204] - rgb(viz.EGO_COLOR)).max(-1) < 20).sum() > 50
    assert animate.animate_closed_loop(tmp_path / "e.gif", light_scene, track, every=4) == math.ceil(31 / 4)
    assert Image.open(tmp_path / "e.gif").n_frames == 8


def test_load_track_names_missing_fields_and_bad_shapes(light_scene, tmp_path):
    track = logged_track(light_scene, n=8)
    save_track(tmp_path / "no_plans.npz", {k: v for k, v in track.items() if k != "plans"})
    with pytest.raises(ValueError, match=r"no_plans.npz: track file lacks \['plans'\]"):
        animate.load_track(tmp_path / "no_plans.npz")
    save_track(tmp_path / "short.npz", dict(track, collision=track["collision"][:-1]))
    with pytest.raises(ValueError, match="short.npz: collision has shape"):
        animate.load_track(tmp_path / "short.npz")
    save_track(tmp_path / "ok.npz", track)
    loaded = animate.load_track(tmp_path / "ok.npz")
    with pytest.raises(ValueError, match=f"the track has {len(light_scene.agents) - 1} agents"):
        animate.animate_closed_loop(tmp_path / "x.gif", light_scene, dict(loaded, agents=loaded["agents"][1:]))


# ----------------------------------------------------------------------------------------------------
# `ar1 viz`.


def test_cli_viz_scene_writes_bev_and_cameras(cfg, tmp_path, capsys):
    assert main(["viz", "scene", "--seed", "3", "--family", "turn", "--out", str(tmp_path)]) == 0
    bev, cams = Image.open(tmp_path / "scene_3_bev.png"), Image.open(tmp_path / "scene_3_cameras.png")
    assert bev.size[0] == 560
    c, f = cfg.scene.num_cameras, cfg.scene.num_frames
    scale = math.ceil(240 / cfg.scene.image_width)
    assert cams.size == (f * cfg.scene.image_width * scale + (f + 1) * 6,
                         30 + c * (18 + cfg.scene.image_height * scale + 6) + 6)
    assert "synth_000000003 (turn)" in capsys.readouterr().out
    assert main(["viz", "scene", "--seed", "3", "--family", "flying", "--out", str(tmp_path)]) == 2
    assert "--family 'flying': unknown" in capsys.readouterr().err


def test_cli_viz_curves_and_its_errors(tmp_path, capsys):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(dict(SFT_ROW, step=s)) + "\n" for s in (1, 5)))
    assert main(["viz", "curves", str(run), "--out", str(tmp_path / "plots")]) == 0
    assert Image.open(tmp_path / "plots" / "sft_curves.png").size[0] == 1040
    assert "loss, grad norm, learning rate" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["viz", "curves", str(run), str(empty), "--out", str(tmp_path / "plots")]) == 2
    assert f"{empty / 'metrics.jsonl'}: no such file" in capsys.readouterr().err
    assert main(["viz", "curves", str(tmp_path / "gone"), "--out", str(tmp_path / "plots")]) == 2
    assert "gone: no such directory" in capsys.readouterr().err


def test_cli_viz_closed_loop_one_gif_per_track(cfg, light_scene, tmp_path, capsys):
    (tmp_path / "closed_loop").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    save_track(tmp_path / "closed_loop" / f"{light_scene.scene_id}.npz", logged_track(light_scene, n=6))
    assert main(["viz", "closed-loop", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "plots" / f"{light_scene.scene_id}.gif").n_frames == 7
    assert "[1/1]" in capsys.readouterr().out
    assert main(["viz", "closed-loop", str(tmp_path), "--scene", "synth_000000099"]) == 2
    assert f"no such track in {tmp_path / 'closed_loop'}" in capsys.readouterr().err
    (tmp_path / "config.json").unlink()
    assert main(["viz", "closed-loop", str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.json'}: no such file" in capsys.readouterr().err
