"""ar1_jax.data."""
