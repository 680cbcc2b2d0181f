"""ar1_jax.text."""
