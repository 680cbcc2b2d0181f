import importlib.metadata
import os
import pathlib
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The repository root must not be on sys.path: its top-level `kernels/` (installed as ar1_jax.kernels)
# would shadow Hugging Face's `kernels` distribution, which transformers >= 5.25 requires and imports
# (the parity tests then fail with "cannot import name 'CUDAProperties' from 'kernels'"). `python -m
# pytest` run from the root puts it there as '' or the cwd; the installed (editable) package needs no
# path entry, so drop it whenever the package is installed.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
try:
    importlib.metadata.distribution("ar1-jax")
    sys.path[:] = [e for e in sys.path if pathlib.Path(e or os.curdir).resolve() != _ROOT]
except importlib.metadata.PackageNotFoundError:  # run from a bare checkout: the root is how ar1_jax imports
    pass

# One persistent XLA compilation cache for the whole run, shared by both xdist workers and every
# subprocess they start (the variables are inherited): dozens of tests compile the same ar1_tiny init
# and train step, and a fresh compile of it costs seconds on 2 cores. Executables are keyed by the
# program, its shardings and devices and the jaxlib version, so a hit is the same program. Set
# JAX_COMPILATION_CACHE_DIR yourself to put it elsewhere (or to an empty value to turn it off).
# XLA:CPU compile flags for the tests: no LLVM optimisation and the classic (non-MLIR) fusion
# emitters. The tiny models' run time is dominated by compiling, and these cut an ar1_tiny train
# step's compile from ~15 s to ~3 s on 2 cores (numbers stay within every test's tolerance; bitwise
# comparisons compare programs compiled the same way). Set AR1_TEST_XLA_FLAGS="" to test with XLA's
# defaults. Subprocesses inherit them (`ar1_fixtures.fake_devices_env` adds a device count).
TEST_XLA_FLAGS = os.environ.get("AR1_TEST_XLA_FLAGS",
                                "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
_present = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(_present + [f for f in TEST_XLA_FLAGS.split() if f not in _present])

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
if "jax" in sys.modules:  # imported before this conftest (a plugin): the variables came too late
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"] or None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.hookimpl(trylast=True)  # after xdist's own hook, which adds the suffix
def pytest_collection_modifyitems(config, items):
    """`make test` runs `--dist loadgroup`: each `xdist_group` (a module whose tests share one costly
    fixture, such as a multi-device subprocess run) goes to one worker, so the fixture runs once.
    xdist marks a group by suffixing node ids with `@group`, which pytest 9.2 no longer honours
    (pytest-dev/pytest-xdist#1386; pyproject pins pytest<9.2): the groups are then silently split and
    their fixtures run on every worker. Say so instead of only being slow."""
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        warnings.warn(pytest.PytestWarning(
            f"--dist loadgroup ignores xdist_group with this pytest/pytest-xdist pair ({len(lost)} tests, e.g. "
            f"{lost[0]}): shared fixtures run once per worker. pytest<9.2 keeps the groups (pytest-xdist#1386)."))
