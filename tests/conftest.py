import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache for the whole run, shared by both xdist workers and every
# subprocess they start (the variables are inherited): dozens of tests compile the same ar1_tiny init
# and train step, and a fresh compile of it costs seconds on 2 cores. Executables are keyed by the
# program, its shardings and devices and the jaxlib version, so a hit is the same program. Set
# JAX_COMPILATION_CACHE_DIR yourself to put it elsewhere (or to an empty value to turn it off).
_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
if "jax" in sys.modules:  # imported before this conftest (a plugin): the variables came too late
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"] or None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
