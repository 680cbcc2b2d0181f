"""Named configs: each module defines `get_config() -> ar1_jax.config.Config`."""
