"""ar1_jax.model."""
