"""The device mesh from a `MeshConfig`, and multi-process start-up.

Mesh axes are always ("data", "fsdp", "tensor") with Auto axis types, so shardings set by
`in_shardings`/`out_shardings` and `rules.constrain` propagate through the compiler.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax
from jax.sharding import AbstractMesh, AxisType, Mesh

from ar1_jax.config import MeshConfig

AXES = MeshConfig().axis_names  # ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
    """The axis sizes with a -1 (at most one) replaced by the remaining devices; checks the product."""
    names = mesh_cfg.axis_names
    sizes = tuple(getattr(mesh_cfg, n) for n in names)
    desc = " x ".join(f"{n}={s}" for n, s in zip(names, sizes))
    for n, s in zip(names, sizes):
        if not isinstance(s, int) or (s < 1 and s != -1):
            raise ValueError(f"mesh axis {n}={s!r}: expected a positive int or -1")
    free = [n for n, s in zip(names, sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh {desc}: at most one axis may be -1, got {', '.join(free)}")
    known = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % known:
            raise ValueError(f"mesh {desc}: {num_devices} devices are not divisible by the fixed axes "
                             f"(product {known}), so {free[0]}=-1 cannot be resolved")
        sizes = tuple(num_devices // known if s == -1 else s for s in sizes)
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {desc} = {math.prod(sizes)} devices, but {num_devices} are available")
    return sizes


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices), Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(shape, mesh_cfg.axis_names, axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices)


def abstract_mesh(sizes: Mapping[str, int]) -> AbstractMesh:
    """A device-free mesh with `make_mesh`'s axes and axis types, of these sizes (missing axes are 1):
    for shapes and shardings of a mesh this host does not have (`jax.eval_shape`, memory estimates)."""
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} are not among {AXES}")
    return AbstractMesh(tuple(int(sizes.get(a, 1)) for a in AXES), AXES, axis_types=(AxisType.Auto,) * len(AXES))


# ----------------------------------------------------------------------------------------------------
# Multi-process start-up.


def slurm_first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-004,010],cpu1' -> 'gpu003'."""
    cut = min((i for i in (nodelist.find(","), nodelist.find("[")) if i >= 0), default=len(nodelist))
    if cut == len(nodelist) or nodelist[cut] == ",":
        return nodelist[:cut]
    rest = nodelist[cut + 1:]
    end = min((i for i in (rest.find(","), rest.find("-"), rest.find("]")) if i >= 0), default=len(rest))
    return nodelist[:cut] + rest[:end]


def distributed_args(env: Mapping[str, str] | None = None) -> tuple[str, dict]:
    """Decides how to start multi-process JAX from the environment; pure (no side effects).

    Returns (mode, kwargs for `jax.distributed.initialize`), checked in this order:
      * "env":    `AR1_COORDINATOR` or `JAX_COORDINATOR_ADDRESS` (host:port), with
                  `AR1_NUM_PROCESSES`/`JAX_NUM_PROCESSES` and `AR1_PROCESS_ID`/`JAX_PROCESS_ID`;
      * "slurm":  `SLURM_NTASKS` > 1 and `SLURM_PROCID`: coordinator is the first host of
                  `SLURM_STEP_NODELIST` (or `SLURM_JOB_NODELIST`) on `AR1_COORDINATOR_PORT`
                  (default: derived from `SLURM_JOB_ID`, as JAX's own SLURM detection does);
      * "auto":   `AR1_DISTRIBUTED=auto`, or a multi-host Cloud TPU (`TPU_WORKER_HOSTNAMES` lists
                  several hosts): JAX detects everything itself (TPU pods, k8s, MPI);
      * "single": nothing to do, one process.
    """
    env = os.environ if env is None else env

    def pick(*keys: str) -> str | None:
        return next((env[k] for k in keys if env.get(k)), None)

    coord = pick("AR1_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
    if coord:
        n, pid = pick("AR1_NUM_PROCESSES", "JAX_NUM_PROCESSES"), pick("AR1_PROCESS_ID", "JAX_PROCESS_ID")
        if n is None or pid is None:
            raise ValueError(f"coordinator {coord} is set, but AR1_NUM_PROCESSES/JAX_NUM_PROCESSES "
                             f"({n}) and AR1_PROCESS_ID/JAX_PROCESS_ID ({pid}) must be set too")
        return "env", dict(coordinator_address=coord, num_processes=int(n), process_id=int(pid))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        nodes = pick("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
        if nodes is None:
            raise ValueError("SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set")
        port = pick("AR1_COORDINATOR_PORT") or str(int(env.get("SLURM_JOB_ID", "0")) % 4096 + 61440)
        return "slurm", dict(coordinator_address=f"{slurm_first_host(nodes)}:{port}",
                             num_processes=int(env["SLURM_NTASKS"]), process_id=int(env["SLURM_PROCID"]))
    if env.get("AR1_DISTRIBUTED") == "auto" or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "auto", {}
    return "single", {}


def initialize_distributed(env: Mapping[str, str] | None = None) -> str:
    """Starts multi-process JAX if the environment asks for it (see `distributed_args`); returns the mode.

    Call once at program start, before anything touches devices. A no-op when already initialised.
    """
    if jax.distributed.is_initialized():
        return "initialized"
    mode, kwargs = distributed_args(env)
    if mode != "single":
        # Cross-process collectives of CPU devices (a CPU-only cluster, or the tests) need gloo; the
        # setting does not touch GPU or TPU devices.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**kwargs)
    return mode
