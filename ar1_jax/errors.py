"""Errors shared across packages (each names the thing that is wrong and what was expected)."""


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model it is loaded into: other parameters, shapes, tensors or
    format. Raised by the safetensors loaders (`ar1_jax.convert.hf`) and the training checkpoints
    (`ar1_jax.train.checkpoint`) alike."""
