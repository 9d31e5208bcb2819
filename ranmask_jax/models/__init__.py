"""Flax NNX BERT/RoBERTa models, HF checkpoint conversion and the public loader."""

from ranmask_jax.models.bert import (
    Encoder,
    MaskedLM,
    ModelConfig,
    SequenceClassifier,
    bert_base,
    build_model,
    minilm_l6,
    roberta_base,
    tiny,
)
from ranmask_jax.models.params import CheckpointError
from ranmask_jax.models.pretrained import export_pretrained, load_pretrained, load_tokenizer

__all__ = [
    "CheckpointError", "Encoder", "MaskedLM", "ModelConfig", "SequenceClassifier", "bert_base",
    "build_model", "export_pretrained", "load_pretrained", "load_tokenizer", "minilm_l6", "roberta_base", "tiny",
]
