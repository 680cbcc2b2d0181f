"""ar1_jax.eval."""
