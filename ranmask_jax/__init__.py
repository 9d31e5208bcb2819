"""ranmask-jax: certified robustness of text classifiers by random word masking (RanMASK), in JAX/Flax."""

from ranmask_jax.models import ModelConfig, export_pretrained, load_pretrained

__version__ = "0.1.0"
__all__ = ["ModelConfig", "__version__", "export_pretrained", "load_pretrained"]
