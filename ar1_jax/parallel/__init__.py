"""ar1_jax.parallel."""
