"""ar1_jax.rl."""
