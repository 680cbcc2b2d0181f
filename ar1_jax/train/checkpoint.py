"""Training checkpoints: orbax, async, keep the latest N and the best K, restorable onto any mesh.

A run directory's `checkpoints/<step>/` holds three items:
  state  the train state (params, optimizer state, EMA, step, rng), written per shard by orbax;
  data   the input pipeline's iterator state (JSON), so a resumed run sees the same batches;
  meta   the config (JSON) and a format version, checked against the restoring run.

Orbax writes each step into a temporary directory and renames it when every item is complete, so
an interrupted save (a killed process, a full disk) never becomes the latest checkpoint; leftover
temporary directories are removed when the next run opens the directory.

Restore takes a target whose leaves carry shardings (`Trainer.abstract_state`): the same files
restore onto 1 device, 4 or a pod slice. A checkpoint of another model (other shapes or tree) fails
before anything is read, naming the first differing parameter.

Resume (`Checkpointer.resume`) takes the newest step that loads. A step whose files cannot be read
(a damaged disk, a file overwritten) is not deleted: it is moved aside to `checkpoints/damaged/<step>`
with a warning naming it, and the step before is restored, so the run goes on and its later saves
never collide with the damaged one. `from_step=N` restores step N exactly; newer steps are moved
aside to `checkpoints/superseded/<step>` (kept, never deleted) for the same reason.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ar1_jax.config import Config, to_dict
from ar1_jax.errors import CheckpointMismatch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class DamagedCheckpoint(RuntimeError):
    """A checkpoint step whose files cannot be read (truncated, overwritten, half-written by hand)."""


class UnreadableMeta(CheckpointMismatch):
    """A step directory without a readable `meta` item: damaged, or not written by `ar1 train`."""


def config_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _flat_shapes(tree: Any) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="."): tuple(getattr(leaf, "shape", ()))
            for path, leaf in flat}


def check_compatible(saved: Any, target: Any, *, where: str, saved_name: str, target_name: str) -> None:
    """Raises CheckpointMismatch naming the first parameter that is missing, extra or shaped differently."""
    a, b = _flat_shapes(saved), _flat_shapes(target)
    for key in sorted(set(a) | set(b), key=lambda k: (not k.startswith("params."), k)):  # parameters first
        if key not in a:
            raise CheckpointMismatch(f"{where} (model {saved_name!r}) has no `{key}`, which config {target_name!r} "
                                     f"needs: a checkpoint of another model?")
        if key not in b:
            raise CheckpointMismatch(f"{where} (model {saved_name!r}) holds `{key}`, which config {target_name!r} "
                                     f"does not have: a checkpoint of another model?")
        if a[key] != b[key]:
            raise CheckpointMismatch(f"{where} (model {saved_name!r}): `{key}` has shape {a[key]}, config "
                                     f"{target_name!r} expects {b[key]}")


class Checkpointer:
    """Save/restore of train state + data-iterator state + config under `directory`.

    `keep`: the most recent N are kept; `keep_best`: also the K with the lowest `metrics["loss"]`.
    `async_save`: `save` returns once device arrays are copied to host; files are written in the
    background (`wait()` blocks until the last save is final).
    """

    def __init__(self, directory: str | pathlib.Path, cfg: Config, *, keep: int = 3, keep_best: int = 0,
                 async_save: bool = True, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        self.cfg = cfg
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        if keep_best > 0:
            policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["loss"], reverse=True,
                                                          n=keep_best, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only)
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # -- queries ----------------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    # -- save -------------------------------------------------------------------------------------

    def save(self, step: int, state: dict, data_state: dict, *, metrics: dict | None = None,
             force: bool = False) -> bool:
        """Saves `state` and `data_state` as step `step` (skipped if that step exists)."""
        if step in self.manager.all_steps():
            return False
        meta = {"format_version": FORMAT_VERSION, "step": int(step), "config": to_dict(self.cfg),
                "process_count": jax.process_count(), "num_devices": jax.device_count()}
        clean = None
        if metrics is not None:
            clean = {k: float(v) for k, v in metrics.items() if np.isfinite(v)} or None
        saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                               data=ocp.args.JsonSave(data_state),
                                                               meta=ocp.args.JsonSave(json.loads(json.dumps(meta)))),
                                  metrics=clean, force=force)
        if saved:
            log.info("checkpoint step %d -> %s", step, self.directory)
        return saved

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- restore ----------------------------------------------------------------------------------

    def check(self, step: int, abstract_state: dict, part: str | None = None) -> dict:
        """The step's meta, after checking its state tree (or its `part`, e.g. "params") against
        `abstract_state` (no arrays read)."""
        where = f"checkpoint {self.directory / str(step)}"
        try:
            meta = self.meta(step)
        except Exception as e:  # noqa: BLE001 - any unreadable meta is a foreign checkpoint
            raise UnreadableMeta(f"{where}: no readable `meta` item ({type(e).__name__}: {e}); not a checkpoint "
                                     f"written by `ar1 train`") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointMismatch(f"{where}: format version {meta.get('format_version')}, expected "
                                     f"{FORMAT_VERSION}")
        saved_name = meta.get("config", {}).get("name", "?")
        saved_tree = self.manager.item_metadata(step)["state"]
        if part is not None:
            saved_tree = saved_tree[part]
        check_compatible(saved_tree, abstract_state, where=where, saved_name=saved_name, target_name=self.cfg.name)
        return meta

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """(state laid out as `abstract_state`'s shardings say, data-iterator state) of `step`."""
        self.check(step, abstract_state)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 data=ocp.args.JsonRestore()))
        return out.state, out.data

    def restore_latest(self, abstract_state: dict) -> tuple[dict, dict] | None:
        step = self.latest_step()
        return None if step is None else self.restore(step, abstract_state)

    def resume(self, abstract_state: dict, from_step: int | None = None) -> tuple[dict, dict] | None:
        """(state, data state) to resume from, or None when there is no checkpoint.

        Without `from_step`: the newest step that loads; each newer step that cannot be read is set
        aside (`checkpoints/damaged/<step>`) with a warning. With `from_step`: that step (a damaged
        one raises `DamagedCheckpoint`); newer steps are set aside (`checkpoints/superseded/<step>`).
        A checkpoint of another model raises `CheckpointMismatch` at once: that is not damage.
        """
        steps = sorted(self.all_steps(), reverse=True)
        if from_step is not None:
            if from_step not in steps:
                raise CheckpointMismatch(f"--from-step {from_step}: no such checkpoint in {self.directory} "
                                         f"(steps: {sorted(steps) or 'none'})")
            try:
                out = self.restore(from_step, abstract_state)
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore/JSON errors of unreadable files
                raise DamagedCheckpoint(f"checkpoint step {from_step} in {self.directory} cannot be read "
                                        f"({type(e).__name__}: {_first_line(e)})") from e
            for newer in [s for s in steps if s > from_step]:
                self._set_aside(newer, "superseded")
                log.warning("--from-step %d: newer checkpoint step %d moved to %s (kept)", from_step, newer,
                            self.directory / "superseded" / str(newer))
            return out
        for step in steps:
            try:
                out = self.restore(step, abstract_state)
            except UnreadableMeta as e:
                err: Exception = e
            except CheckpointMismatch:  # another model's checkpoint: not damage
                raise
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore/JSON errors of unreadable files
                err = e
            else:
                return out
            self._set_aside(step, "damaged")
            log.warning("checkpoint step %d in %s is damaged and cannot be read (%s: %s); moved it to %s (kept, "
                        "not deleted) and resuming from the step before", step, self.directory, type(err).__name__,
                        _first_line(err), self.directory / "damaged" / str(step))
        if steps:
            log.warning("no checkpoint in %s could be read: starting from scratch", self.directory)
        return None

    def _set_aside(self, step: int, why: str) -> None:
        """Moves step `step` to `<directory>/<why>/<step>` (a name orbax does not list as a step)."""
        if jax.process_index() == 0:
            dest = self.directory / why / str(step)
            if dest.exists():
                dest = dest.with_name(f"{step}.{len(list(dest.parent.iterdir()))}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"ar1 checkpoint set aside {step}")
        self.manager.reload()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


# ----------------------------------------------------------------------------------------------------
# --init-from: parameters only, from another run or a converted HF checkpoint.


def _orbax_step_dir(path: pathlib.Path) -> tuple[pathlib.Path, int] | None:
    """(checkpoints dir, step) for a run dir, its `checkpoints/` dir or one step dir; None otherwise."""
    for root in (path / "checkpoints", path):
        if root.is_dir():
            steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").is_dir())
            if steps:
                return root, steps[-1]
    if path.name.isdigit() and (path / "state").is_dir():
        return path.parent, int(path.name)
    return None


def is_release_checkpoint(path: str | pathlib.Path) -> bool:
    """Whether `path` is a HF-style checkpoint directory (a config.json with a `model_type`)."""
    cfg_file = pathlib.Path(path) / "config.json"
    try:
        return cfg_file.is_file() and bool(json.loads(cfg_file.read_text()).get("model_type"))
    except (OSError, ValueError):
        return False


def run_checkpoint(path: str | pathlib.Path) -> tuple[pathlib.Path, int] | None:
    """(run directory, step) when `path` is an `ar1 train` / `ar1 rl` run directory (its latest
    checkpoint), its `checkpoints/` directory or one `checkpoints/<step>` directory; else None."""
    found = _orbax_step_dir(pathlib.Path(path))
    if found is None:
        return None
    root, step = found
    return (root.parent if root.name == "checkpoints" else root), step


def saved_run_config(path: str | pathlib.Path) -> Config:
    """The config a run saved (its config.json) for any path `run_checkpoint` accepts. FileNotFoundError
    when there is no run there or it has no config.json; ConfigError when that file does not parse."""
    from ar1_jax.config import from_dict

    found = run_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: not an `ar1 train` / `ar1 rl` run or checkpoint directory")
    cfg_file = found[0] / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: the run has no {cfg_file.name} (expected {cfg_file})")
    return from_dict(Config, json.loads(cfg_file.read_text()))


def load_params(path: str | pathlib.Path, cfg: Config, abstract_params: dict,
                what: str = "config field `train.init_from`") -> dict:
    """Parameters to start from, laid out as `abstract_params` (ShapeDtypeStructs with shardings).

    `path` is an `ar1 train` run directory (its latest checkpoint), a `checkpoints/<step>` directory,
    or a release-layout Alpamayo-R1 checkpoint (config.json + safetensors). Shapes must match `cfg`.
    Errors start with `what` (where the path came from).
    """
    path = pathlib.Path(path).absolute()  # orbax refuses relative paths ("Checkpoint path should be absolute")
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    if is_release_checkpoint(path):
        return _load_hf_params(path, cfg, abstract_params)
    found = _orbax_step_dir(path)
    if found is None:
        raise CheckpointMismatch(f"{what}: {path} is neither an `ar1 train` run/checkpoint "
                                 f"directory nor a HF checkpoint directory (config.json + safetensors)")
    root, step = found
    ckpt = Checkpointer(root, cfg, read_only=True)
    try:
        ckpt.check(step, abstract_params, part="params")
        # Only the parameters are read (partial restore): the optimizer state never leaves the disk.
        target = {"params": abstract_params}
        reader = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True),
                                       item_handlers={"state": ocp.PyTreeCheckpointHandler()})
        try:
            out = reader.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
        finally:
            reader.close()
        log.info("initialised parameters from checkpoint %s", root / str(step))
        return out.state["params"]
    finally:
        ckpt.close()


def _load_hf_params(path: pathlib.Path, cfg: Config, abstract_params: dict) -> dict:
    from flax import nnx

    from ar1_jax.convert import hf
    from ar1_jax.model.vla import AR1

    dtype = jax.tree.leaves(abstract_params)[0].dtype
    hf_cfg = json.loads((path / "config.json").read_text())
    if hf_cfg.get("model_type") != "alpamayo_r1":
        raise CheckpointMismatch(f"config field `train.init_from`: {path} is a {hf_cfg.get('model_type')!r} "
                                 f"checkpoint; training starts from an alpamayo_r1 (AR1) checkpoint")
    saved_cfg = hf.ar1_config_from_hf(hf_cfg, dtype=jax.numpy.dtype(dtype).name)
    saved = nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: AR1(saved_cfg, rngs=nnx.Rngs(0))), nnx.Param)[1])
    where = f"HF checkpoint {path}"
    check_compatible(saved, abstract_params, where=where, saved_name=saved_cfg.name, target_name=cfg.name)
    shardings = jax.tree.map(lambda a: a.sharding, abstract_params)
    try:
        loaded = hf.load_ar1(path, dtype=dtype, shardings=shardings)
    except CheckpointMismatch as e:
        raise CheckpointMismatch(f"config field `train.init_from`: {e}") from e
    log.info("initialised parameters from %s", where)
    return loaded.pure_params
