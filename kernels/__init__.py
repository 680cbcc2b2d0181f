"""Pallas kernels (imported as ar1_jax.kernels); each module holds a kernel and its jnp reference."""
