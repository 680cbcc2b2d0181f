"""eval/evaluate.py and eval/run.py: open-loop values of the baselines against hand-computed ones,
per-family summaries, dataset scenes rebuilt in their world, and `ar1 eval` for a baseline end to end
(eval.json, eval.md, tracks). The model's evaluation from a run: tests/train/test_train_cli.py."""

import json

import numpy as np
import pytest

from ar1_jax import cli
from ar1_jax.config import get_config
from ar1_jax.eval import evaluate, scoring


@pytest.fixture(scope="module")
def cfg():
    return get_config("ar1_tiny")


@pytest.fixture(scope="module")
def scenes(cfg):
    return evaluate.synthetic_scenes(cfg, 6, int(np.random.default_rng().integers(10_000, 100_000)))


def test_baselines_open_loop_against_hand_computed_values(cfg, scenes):
    cv = evaluate.open_loop(scenes, cfg, policy="constant_velocity")
    for i, s in enumerate(scenes):
        fut = np.concatenate([s.future_xy, np.zeros((len(s.future_xy), 1))], -1)
        np.testing.assert_allclose(cv["ade"][i], scoring.constant_velocity_ade(fut, s.v0), rtol=1e-4, atol=1e-4)
        assert cv["min_ade@6.4"][i] == pytest.approx(cv["ade"][i], rel=1e-5)  # K = 1: the best is the driven
    planner = evaluate.open_loop(scenes, cfg, policy="planner")
    np.testing.assert_allclose(planner["min_ade@3.0"], 0.0, atol=1e-6)
    assert np.all(planner["collision"] == 0) and np.all(planner["offroad"] == 0)
    assert np.all(np.isnan(planner["consistency"]))  # a policy without reasoning has no consistency


def test_summarize_averages_overall_and_per_family():
    per_scene = {"collision": np.array([1.0, 0.0, 0.0, np.nan]), "min_ade@3.0": np.array([1.0, 2.0, 3.0, 4.0])}
    s = evaluate.summarize(per_scene, ["a", "b", "a", "b"], prefix="cl/")
    assert s["overall"] == {"num_scenes": 4, "cl/collision_rate": pytest.approx(1 / 3), "cl/min_ade@3.0": 2.5}
    assert s["families"]["a"] == {"num_scenes": 2, "cl/collision_rate": 0.5, "cl/min_ade@3.0": 2.0}
    assert s["families"]["b"]["cl/collision_rate"] == 0.0 and s["families"]["b"]["cl/min_ade@3.0"] == 3.0
    nothing = evaluate.summarize({"collision": np.array([np.nan])}, ["a"])
    assert nothing["overall"]["collision_rate"] is None


def test_ar1_eval_of_a_baseline_writes_json_markdown_and_tracks(tmp_path, capsys):
    out = tmp_path / "eval"
    seed = int(np.random.default_rng().integers(10_000, 100_000))
    assert cli.main(["eval", "--policy", "constant_velocity", "--synthetic", "4", "--first-seed", str(seed),
                     "--closed-loop", "--seconds", "2.0", "--agents", "reactive", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "constant_velocity: min_ade@3.0" in printed and "planner: " in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["policy"] == "constant_velocity" and list(report["baselines"]) == ["planner"]
    assert report["overall"]["num_scenes"] == 4 and sum(f["num_scenes"] for f in report["families"].values()) == 4
    assert report["settings"]["sim"]["agents"] == "reactive"
    assert report["baselines"]["planner"]["overall"]["cl/offroad_rate"] == 0.0
    md = (out / "eval.md").read_text()
    assert "| cl/score |" in md and "planner (baseline)" in md
    assert len(list((out / "closed_loop").glob("synth_*.npz"))) == 4
    assert cli.main(["viz", "closed-loop", str(out), "--out", str(tmp_path / "gifs")]) == 0
    assert len(list((tmp_path / "gifs").glob("*.gif"))) == 4


def test_dataset_scenes_are_rebuilt_in_their_world(cfg, tmp_path):
    from ar1_jax.data import synthetic, tfds_builder

    seed = int(np.random.default_rng().integers(10_000, 100_000))
    records = list(synthetic.generate_records(3, seed, cfg))
    data = tfds_builder.write_dataset(tmp_path / "ds", iter(records), 3, test_fraction=0.0, progress=False)
    got = {s.scene_id: s for s in evaluate.dataset_scenes(cfg, data, "train")}
    assert sorted(got) == sorted(r["scene_id"] for r in records)
    for r in records:
        s = got[r["scene_id"]]
        np.testing.assert_array_equal(s.images, r["images"])
        np.testing.assert_allclose(s.future_xy, r["future_xyz"][:, :2])
        assert s.world is not None and s.world.scene_id == r["scene_id"] and s.family == r["family"]
    with pytest.raises(ValueError, match="another world version or config"):
        evaluate.dataset_scenes(get_config("ar1_tiny", ["synth.extra_seconds=1.0", "action.dt=0.2"]), data, "train")
