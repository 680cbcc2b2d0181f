"""ar1_jax.train."""
