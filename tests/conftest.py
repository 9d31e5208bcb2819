"""Shared fixtures: tokenizers and tiny random HF checkpoints built on the fly (no downloads), and the full datasets.

Every test makes or ships the small files it needs, except those that read the full datasets through the
``data_dir`` fixture (marked ``full_data``): they run whenever a data directory is there (``$RANMASK_DATA_DIR``, else
``../shared/data`` beside the repository) and are otherwise left out and listed by name at the end of the run. A
``$RANMASK_DATA_DIR`` that does not hold the datasets is an error, never a silent skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA_ENV = "RANMASK_DATA_DIR"


def _full_data_dir() -> str | None:
    d = os.environ.get(DATA_ENV)
    if d:
        if not (Path(d) / "sst2" / "train.txt").is_file():
            raise pytest.UsageError(f"${DATA_ENV}={d} does not hold the datasets (no sst2/train.txt)")
        return d
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(beside) if (beside / "sst2" / "train.txt").is_file() else None


def pytest_configure(config):
    config.addinivalue_line("markers", "full_data: reads the full datasets (the data_dir fixture)")
    config._full_data_dir = _full_data_dir()
    config._not_run = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.full_data)
    if config._full_data_dir is None:
        left = [i for i in items if i.get_closest_marker("full_data")]
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = [i for i in items if not i.get_closest_marker("full_data")]
            config._not_run = [i.nodeid for i in left]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config._not_run:
        terminalreporter.section("not run: no data directory")
        terminalreporter.write_line(f"{len(config._not_run)} tests read the full datasets; set ${DATA_ENV} to a "
                                    "directory holding them (see README) to run them:")
        for nodeid in config._not_run:
            terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture(scope="session")
def data_dir(request):
    """The directory of the full datasets (tests using it are marked full_data; see the module docstring)."""
    return request.config._full_data_dir
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CORPUS = [
    "the movie was a gripping , funny and warm ride",
    "a dull , lifeless and overlong mess of a film",
    "it 's not the worst thing , but it is n't good either",
    "unbelievably charming performances lift the thin script",
    "Season grades for every college football team this fall .",
    "Stocks rallied on Tuesday after the central bank held rates steady",
    "A worthwhile way to spend two hours .",
    "The tenderness of the piece is still intact .",
    "naïve café résumé – ünïcödé words 123 4.5 don't",
]


@pytest.fixture(scope="session")
def bert_tokenizer():
    from ranmask_jax.models import load_tokenizer
    from ranmask_jax.models.pretrained import _builtin_dir

    return load_tokenizer(_builtin_dir("minilm-l6"))


@pytest.fixture(scope="session")
def roberta_tokenizer():
    """A small byte-level BPE tokenizer with RoBERTa's special tokens, trained on CORPUS."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 5, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    bpe.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True)])
    # as in roberta-base: "<mask>" swallows the space before it
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                mask_token=AddedToken("<mask>", lstrip=True, rstrip=False))


def make_hf_dir(path: Path, arch: str, head: str, tokenizer, *, num_labels: int = 3, seed: int = 0, **cfg_kw) -> Path:
    """Save a tiny random transformers (PyTorch) model with ``save_pretrained``; returns its directory."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, num_labels=num_labels)
    if arch == "bert":
        cfg = tf.BertConfig(max_position_embeddings=64, **{**common, **cfg_kw})
        cls = {"classification": tf.BertForSequenceClassification, "mlm": tf.BertForMaskedLM,
               "encoder": tf.BertModel}[head]
    else:
        cfg = tf.RobertaConfig(max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id, type_vocab_size=1,
                               layer_norm_eps=1e-5, **{**common, **cfg_kw})
        cls = {"classification": tf.RobertaForSequenceClassification, "mlm": tf.RobertaForMaskedLM,
               "encoder": tf.RobertaModel}[head]
    model = cls(cfg).eval()
    # random init leaves LayerNorms at identity and biases at zero; perturb them so the parity test sees them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture
def hf_dir(tmp_path, bert_tokenizer, roberta_tokenizer):
    def factory(arch: str, head: str, **kw) -> Path:
        tok = bert_tokenizer if arch == "bert" else roberta_tokenizer
        return make_hf_dir(tmp_path / f"{arch}-{head}", arch, head, tok, **kw)

    return factory
