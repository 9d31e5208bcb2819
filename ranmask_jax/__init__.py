"""ranmask-jax: certified robustness of text classifiers by random word masking (RanMASK), in JAX/Flax."""

from ranmask_jax.masking import UniformKeepSets
from ranmask_jax.models import ModelConfig, export_pretrained, load_pretrained
from ranmask_jax.smoothing import SmoothedClassifier

__version__ = "0.1.0"
__all__ = ["ModelConfig", "SmoothedClassifier", "UniformKeepSets", "__version__", "export_pretrained",
           "load_pretrained"]
