"""ar1_jax.infer."""
