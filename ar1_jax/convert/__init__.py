"""ar1_jax.convert."""
