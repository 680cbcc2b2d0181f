"""ar1_jax/data/pipeline.py: TFDS directory -> grain -> global SFT batches; sharding, resume, bad input."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import ar1_fixtures as F
from ar1_jax.action import tokens as traj_tokens
from ar1_jax.action import unicycle
from ar1_jax.config import get_config
from ar1_jax.data import images as image_lib
from ar1_jax.data import pipeline as pl
from ar1_jax.data import tfds_builder as tb
from ar1_jax.data import sft_batch
from ar1_jax.model import vla
from ar1_jax.parallel.mesh import make_mesh
from ar1_jax.text import corpus
from ar1_jax.text import prompt as prompt_lib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "pipeline_worker.py"
NUM = 16  # scenes in the shared dataset (all in train)
# `--dist loadgroup` keeps this module on one worker, so the module's datasets are written once.
pytestmark = pytest.mark.xdist_group("test_pipeline")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cfg = get_config("ar1_tiny")
    tok = corpus.default_tokenizer(512, root / "tokenizer")
    records = list(tb.random_records(NUM + 2, 0, cfg))
    data = tb.write_dataset(root / "ds", iter(records[:NUM]), NUM, test_fraction=0.0, progress=False)
    return dict(root=root, cfg=cfg, tok=tok, tok_dir=root / "tokenizer", records=records, data=data)


def _cfg(env, *overrides, data=None):
    return get_config("ar1_tiny", [f"data.dataset_dir={data or env['data']}", *overrides])


def _one_device_mesh(cfg):
    return make_mesh(cfg.mesh, jax.devices()[:1])


def _take(it, n):
    out = []
    for _ in range(n):
        batch = next(it)
        out.append((list(it.last_scene_ids), np.asarray(batch["input_ids"])))
    return out


def _reference_example(cfg, tok, r):
    """One record through the documented steps, by hand (no pipeline code)."""
    s, v, a = cfg.scene, cfg.model.vision, cfg.action
    frames = list(r["images"].reshape(-1, *r["images"].shape[2:]))
    pv, grid = image_lib.preprocess_images(frames, patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                           temporal_patch_size=v.temporal_patch_size,
                                           size=(s.image_height, s.image_width), mean=s.image_mean, std=s.image_std)
    hist = np.asarray(traj_tokens.encode_history(r["history_xyz"], a, -a.future_bins))
    fut = np.asarray(traj_tokens.encode_future(r["controls"], a, 0))
    ids, seg = prompt_lib.build_prompt(tok, num_images=len(frames),
                                       image_token_counts=[image_lib.image_token_count(g, 2) for g in grid],
                                       history_token_ids=hist.tolist(), cot=r["cot"], include_future_start=True,
                                       future_token_ids=fut.tolist())
    return dict(input_ids=ids, segments=seg.kind, pixel_values=pv, image_grid_thw=grid,
                controls=np.asarray(unicycle.normalize(r["controls"], a)))


def test_batch_is_build_sft_batch_of_the_records(env):
    cfg = _cfg(env, "data.batch_size=4", "data.shuffle=false")
    it = pl.make_pipeline(cfg, env["tok"], _one_device_mesh(cfg))
    batch = next(it)
    ids = it.last_scene_ids
    it.close()
    by_id = {r["scene_id"]: r for r in env["records"]}
    t = batch["input_ids"].shape[1]
    assert t in it.buckets and t % 64 == 0
    want = sft_batch.build_sft_batch(cfg, [_reference_example(cfg, env["tok"], by_id[i]) for i in ids], length=t)
    got = jax.tree.map(np.asarray, batch)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got)):
        assert g.dtype == w.dtype, path
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=str(path))
    # The loss takes it as is (traced abstractly: build_sft_batch's batches are trained in test_vla).
    from flax import nnx

    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: vla.AR1(cfg, rngs=nnx.Rngs(0))), nnx.Param))
    loss, terms = jax.eval_shape(lambda p, b: vla.sft_loss(p, cfg, b, jax.random.key(0)), params, batch)
    assert loss.shape == () and set(terms) == {"loss", "ce_reasoning", "ce_trajectory", "flow"}


def test_buckets_and_padding(env):
    cfg, tok = env["cfg"], env["tok"]
    buckets = pl.default_buckets(cfg, tok)
    fixed = pl.default_buckets(cfg, tok, reasoning_allowance=(0,), multiple=1)[0]
    assert len(buckets) == 3 and all(b % 64 == 0 for b in buckets)
    assert buckets[0] >= fixed + 64 and buckets[-1] >= fixed + 256
    examples = [_reference_example(cfg, tok, r) for r in env["records"][:3]]
    short = sft_batch.build_sft_batch(cfg, examples)
    short.pop("media")
    longer = sft_batch.build_sft_batch(cfg, examples, length=short["input_ids"].shape[1] + 37)
    longer.pop("media")
    padded = pl.pad_batch(short, short["input_ids"].shape[1] + 37, cfg.tokens.pad_id)
    for key in longer:
        np.testing.assert_array_equal(padded[key], longer[key], err_msg=key)
    with pytest.raises(ValueError, match="cannot pad"):
        pl.pad_batch(longer, 10, 0)


def test_resume_from_saved_state_continues_exactly(env):
    cfg = _cfg(env, "data.batch_size=4", "data.shuffle_seed=3")
    mesh = _one_device_mesh(cfg)
    whole = pl.make_pipeline(cfg, env["tok"], mesh)
    expected = _take(whole, 9)  # 4 batches per epoch: crosses two epoch boundaries
    whole.close()
    first = pl.make_pipeline(cfg, env["tok"], mesh)
    head = _take(first, 3)
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
    first.close()
    resumed = pl.make_pipeline(cfg, env["tok"], mesh)
    resumed.set_state(state)
    tail = _take(resumed, 6)
    resumed.close()
    assert [ids for ids, _ in head + tail] == [ids for ids, _ in expected]
    for (_, a), (_, b) in zip(head + tail, expected):
        np.testing.assert_array_equal(a, b)
    epochs = [sum((ids for ids, _ in expected[k:k + 4]), []) for k in (0, 4)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == NUM
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_worker_processes_give_the_same_batches_and_resume(env):
    mesh = _one_device_mesh(env["cfg"])
    inline = pl.make_pipeline(_cfg(env, "data.batch_size=4"), env["tok"], mesh)
    expected = _take(inline, 4)
    inline.close()
    cfg = _cfg(env, "data.batch_size=4", "data.worker_count=1")
    first = pl.make_pipeline(cfg, env["tok"], mesh)
    head = _take(first, 2)
    state = first.get_state()
    first.close()
    resumed = pl.make_pipeline(cfg, env["tok"], mesh)
    resumed.set_state(state)
    tail = _take(resumed, 2)
    resumed.close()
    assert [ids for ids, _ in head + tail] == [ids for ids, _ in expected]


def test_global_batches_on_8_devices_are_sharded_by_batch(env, tmp_path):
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(WORKER), "sharded", str(env["data"]), str(env["tok_dir"]), str(out)],
                       capture_output=True, text=True, timeout=F.HANG_GUARD_S,
                       env=F.fake_devices_env(8), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads(out.read_text())
    assert rep["device_count"] == 8 and rep["rows_match"] and len(set(rep["scene_ids"])) == 8
    assert rep["shardings_match"]  # pipeline.batch_shardings describes the batches
    batch_spec = ["data", "fsdp"]  # activation_spec(("batch", "seq")) on a data=4 x fsdp=2 mesh
    for b in rep["batches"]:
        t = b["input_ids"]["shape"][1]
        for key in ("input_ids", "targets", "kv_valid", "reasoning_mask", "traj_mask"):
            assert b[key] == {"shape": [8, t], "spec": [batch_spec, None], "addressable": 8,
                              "fully_addressable": True}, key
        assert b["positions"]["shape"] == [3, 8, t] and b["positions"]["spec"] == [None, batch_spec, None]
        for key in ("future_start_slot", "action_position", "controls_valid"):
            assert b[key]["shape"] == [8] and b[key]["spec"] == [batch_spec], key
        assert b["controls"]["shape"] == [8, 64, 2] and b["controls"]["spec"] == [batch_spec, None, None]
        # Per scene: 16 frames of 64x96 at patch 16, 24 patches of 3*2*16*16 values each.
        assert b["media/image/pixel_values"] == {"shape": [8, 16 * 24, 1536], "spec": [batch_spec, None, None],
                                                 "addressable": 8, "fully_addressable": True}
        layout = [k for k in b if k.startswith("media/image/layout/")]
        assert layout and all(b[k]["spec"] == [] for k in layout)  # replicated
        assert b["media/image/layout/rope_hw"]["shape"] == [16 * 24, 2]  # one scene's: shared by all


def test_two_processes_read_disjoint_halves(env, tmp_path):
    port = F.free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), "distributed", str(env["data"]), str(env["tok_dir"]),
                               str(tmp_path / f"p{i}.json"), str(port), str(i), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
             for i in range(2)]
    logs = F.communicate_all(procs, timeout=F.HANG_GUARD_S)
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(x[-3000:] for x in logs)
    reps = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert [r["process_index"] for r in reps] == [0, 1] and reps[0]["device_count"] == 2
    seen = [[s for batch in r["scene_ids"] for s in batch] for r in reps]
    assert len(reps[0]["scene_ids"]) == len(reps[1]["scene_ids"]) == NUM // 4  # one epoch, 2 per process
    assert len(seen[0]) == len(seen[1]) == NUM // 2
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {r["scene_id"] for r in env["records"][:NUM]}
    b = reps[0]["batches"][0]
    assert b["input_ids"]["shape"][0] == 4 and b["input_ids"]["spec"] == ["data", None]
    assert not b["input_ids"]["fully_addressable"] and b["input_ids"]["addressable"] == 1
    # Both processes padded every batch to the same length, also when their own examples needed less.
    for k in range(len(reps[0]["lengths"])):
        assert reps[0]["lengths"][k][1] == reps[1]["lengths"][k][1] == max(reps[0]["lengths"][k][0],
                                                                            reps[1]["lengths"][k][0])


# ----------------------------------------------------------------------------------------------------
# Bad input.


def _png_frames(images, truncate=None):
    frames = [[tb.encode_png(f) for f in cam] for cam in images]
    if truncate is not None:
        c, f = truncate
        frames[c][f] = frames[c][f][: len(frames[c][f]) // 2]
    return frames


def _bad_record(kind, r):
    r = dict(r, scene_id=f"bad-{kind}")
    if kind == "nan_poses":
        xyz = r["history_xyz"].copy()
        xyz[5, 1] = np.nan
        return r | {"history_xyz": xyz}, "`history_xyz`", "non-finite"
    if kind == "missing_camera":
        return r | {"images": r["images"][:3], "camera_ids": r["camera_ids"][:3]}, "`camera_ids`", "missing camera"
    if kind == "overlong_trace":
        return r | {"cot": "Slow down for the pedestrian crossing ahead and keep lane. " * 30}, "`cot`", "over-long"
    if kind == "truncated_png":
        return (r | {"images": _png_frames(r["images"], truncate=(2, 1))}, "`images[camera 2 (id 2), frame 1]`",
                "corrupt or truncated PNG")
    raise ValueError(kind)


def _corrupt_one_record(data_dir: pathlib.Path, index: int) -> None:
    """Rewrites the train file with record `index`'s serialized bytes cut in half."""
    from array_record.python import array_record_module as ar

    (path,) = data_dir.glob("ar1_scenes-train.array_record-*")
    reader = ar.ArrayRecordReader(str(path))
    raw = reader.read_all()
    reader.close()
    writer = ar.ArrayRecordWriter(str(path), "group_size:1")
    for i, x in enumerate(raw):
        writer.write(x[: len(x) // 2] if i == index else x)
    writer.close()


@pytest.fixture(scope="module")
def bad_datasets(env):
    good = env["records"][:8]
    out = {}
    for kind in ("nan_poses", "missing_camera", "overlong_trace", "truncated_png"):
        bad, field, what = _bad_record(kind, env["records"][NUM])
        path = tb.write_dataset(env["root"] / f"bad_{kind}", iter(good + [bad]), 9, test_fraction=0.0,
                                progress=False, strict=False)
        out[kind] = (path, bad["scene_id"], field, what)
    path = tb.write_dataset(env["root"] / "bad_corrupt_record", iter(env["records"][:9]), 9, test_fraction=0.0,
                            progress=False)
    _corrupt_one_record(path, 4)
    out["corrupt_record"] = (path, "train[4]", "`record`", "corrupt serialized example")
    return out


KINDS = ("nan_poses", "missing_camera", "overlong_trace", "truncated_png", "corrupt_record")


@pytest.mark.parametrize("kind", KINDS)
def test_bad_record_fails_naming_record_and_field(env, bad_datasets, kind):
    path, record, field, what = bad_datasets[kind]
    cfg = _cfg(env, "data.batch_size=2", "data.num_epochs=1", data=path)
    it = pl.make_pipeline(cfg, env["tok"], _one_device_mesh(cfg))
    with pytest.raises(pl.BadRecordError) as e:
        for _ in it:
            pass
    it.close()
    msg = str(e.value)
    assert f"bad record {record!r}" in msg and f"field {field}" in msg and what in msg, msg


def test_skip_mode_drops_and_counts_every_kind_of_bad_record(env, bad_datasets):
    for kind in KINDS:
        path, record, field, _ = bad_datasets[kind]
        cfg = _cfg(env, "data.batch_size=2", "data.num_epochs=1", "data.skip_bad_records=true", data=path)
        it = pl.make_pipeline(cfg, env["tok"], _one_device_mesh(cfg))
        seen = []
        for batch in it:
            assert batch["input_ids"].shape[0] == 2
            seen += it.last_scene_ids
        it.close()
        assert it.num_skipped == 1 and it.get_state()["num_skipped"] == 1, kind
        assert it.skipped[0][0] == record and f"`{it.skipped[0][1]}`" == field, (kind, it.skipped)
        assert len(seen) == 8 and record not in seen, kind  # the 8 good scenes, all in full batches


def test_bad_setup_is_named(env, tmp_path):
    mesh = _one_device_mesh(env["cfg"])
    with pytest.raises(FileNotFoundError, match="no dataset_info.json"):
        pl.make_pipeline(_cfg(env, data=tmp_path), env["tok"], mesh)
    with pytest.raises(ValueError, match="no split 'test'"):
        pl.make_pipeline(_cfg(env, "data.split=test"), env["tok"], mesh)
    with pytest.raises(ValueError, match="data.dataset_dir"):
        pl.make_pipeline(get_config("ar1_tiny"), env["tok"], mesh)
    with pytest.raises(ValueError, match="fewer than one batch"):
        pl.make_pipeline(_cfg(env, "data.batch_size=32"), env["tok"], mesh)
    with pytest.raises(Exception, match="data.bucket_lengths"):
        pl.make_pipeline(_cfg(env, "data.bucket_lengths=512,256"), env["tok"], mesh)
