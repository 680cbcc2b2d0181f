"""ar1_jax.action."""
