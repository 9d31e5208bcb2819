"""Hugging Face checkpoint <-> nnx state conversion, driven by one declarative key table.

Each row of the table names an HF parameter group (without its ``.weight``/``.bias`` suffix), the nnx
module path it lands in, and its kind. ``{base}`` stands for the encoder prefix of the checkpoint
(``bert.``, ``roberta.`` or nothing for a bare encoder); ``{i}`` for the layer index.

All problems (missing, unexpected and mis-shaped keys) are collected and raised together.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flax import nnx

from ranmask_jax.files import error_line, read_json
from ranmask_jax.models.bert import Head, ModelConfig

log = logging.getLogger(__name__)

# kind: "linear" (HF weight [out, in] -> nnx kernel [in, out], plus bias), "ln" (weight/bias -> scale/bias),
# "embed" (weight -> embedding), "vector" (the tensor itself -> a Param).
ENCODER_TABLE: list[tuple[str, str, str]] = [
    ("{base}embeddings.word_embeddings", "embeddings/word_embeddings", "embed"),
    ("{base}embeddings.position_embeddings", "embeddings/position_embeddings", "embed"),
    ("{base}embeddings.token_type_embeddings", "embeddings/token_type_embeddings", "embed"),
    ("{base}embeddings.LayerNorm", "embeddings/LayerNorm", "ln"),
    ("{base}encoder.layer.{i}.attention.self.query", "layers/{i}/attention/query", "linear"),
    ("{base}encoder.layer.{i}.attention.self.key", "layers/{i}/attention/key", "linear"),
    ("{base}encoder.layer.{i}.attention.self.value", "layers/{i}/attention/value", "linear"),
    ("{base}encoder.layer.{i}.attention.output.dense", "layers/{i}/attention/output", "linear"),
    ("{base}encoder.layer.{i}.attention.output.LayerNorm", "layers/{i}/attention/LayerNorm", "ln"),
    ("{base}encoder.layer.{i}.intermediate.dense", "layers/{i}/intermediate", "linear"),
    ("{base}encoder.layer.{i}.output.dense", "layers/{i}/output", "linear"),
    ("{base}encoder.layer.{i}.output.LayerNorm", "layers/{i}/LayerNorm", "ln"),
]

HEAD_TABLES: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("bert", "classification"): [
        ("{base}pooler.dense", "head/pooler", "linear"),
        ("classifier", "head/classifier", "linear"),
    ],
    ("roberta", "classification"): [
        ("classifier.dense", "head/dense", "linear"),
        ("classifier.out_proj", "head/out_proj", "linear"),
    ],
    ("bert", "mlm"): [
        ("cls.predictions.transform.dense", "transform", "linear"),
        ("cls.predictions.transform.LayerNorm", "LayerNorm", "ln"),
        ("cls.predictions.bias", "bias", "vector"),
    ],
    ("roberta", "mlm"): [
        ("lm_head.dense", "transform", "linear"),
        ("lm_head.layer_norm", "LayerNorm", "ln"),
        ("lm_head.bias", "bias", "vector"),
    ],
    ("bert", "encoder"): [],
    ("roberta", "encoder"): [],
}

# Checkpoint keys that are understood but not used by the requested head (logged, never an error).
_KNOWN_UNUSED = re.compile(
    r"^((bert|roberta)\.)?(embeddings\.position_ids|pooler\..*)$"
    r"|^cls\..*|^lm_head\..*|^classifier\..*"
)


def _suffixes(kind: str) -> list[tuple[str, str]]:
    """(hf suffix, nnx leaf) pairs for a row kind."""
    return {
        "linear": [("weight", "kernel"), ("bias", "bias")],
        "ln": [("weight", "scale"), ("bias", "bias")],
        "embed": [("weight", "embedding")],
        "vector": [("", "")],
    }[kind]


@dataclass
class Mapping:
    """One checkpoint tensor <-> one nnx parameter."""

    hf_key: str
    nnx_path: tuple
    transpose: bool
    is_head: bool


def key_map(cfg: ModelConfig, head: Head, base: str) -> list[Mapping]:
    """Expand the tables for this config/head. nnx paths are relative to the model root."""
    enc_root: tuple = () if head == "encoder" else ("encoder",)
    rows: list[tuple[str, str, str, bool]] = []
    for hf, path, kind in ENCODER_TABLE:
        layers = range(cfg.num_hidden_layers) if "{i}" in hf else [None]
        for i in layers:
            rows.append((hf.format(base=base, i=i), path.format(i=i), kind, False))
    for hf, path, kind in HEAD_TABLES[(cfg.arch, head)]:
        rows.append((hf.format(base=base), path, kind, True))
    out = []
    for hf, path, kind, is_head in rows:
        prefix = enc_root if path.startswith(("embeddings", "layers")) else ()
        parts = tuple(int(p) if p.isdigit() else p for p in path.split("/"))
        for hf_sfx, nnx_leaf in _suffixes(kind):
            key = f"{hf}.{hf_sfx}" if hf_sfx else hf
            leaf = (nnx_leaf,) if nnx_leaf else ()
            out.append(Mapping(key, prefix + parts + leaf, kind == "linear" and hf_sfx == "weight", is_head))
    return out


# ---- reading checkpoints ----------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem at once."""


def _normalise_legacy(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old TF-converted BERT names: ``LayerNorm.gamma/beta`` -> ``LayerNorm.weight/bias``."""
    out = {}
    for k, v in tensors.items():
        k2 = re.sub(r"(LayerNorm|layer_norm)\.gamma$", r"\1.weight", k)
        k2 = re.sub(r"(LayerNorm|layer_norm)\.beta$", r"\1.bias", k2)
        out[k2] = v
    return out


def read_checkpoint(model_dir: str | Path, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All tensors of an HF model directory as float32/int numpy arrays.

    Reads ``model.safetensors`` or a sharded ``model.safetensors.index.json``. Pickled ``pytorch_model.bin``
    files can execute code when loaded, so they are refused unless ``allow_pickle=True``.
    """
    from safetensors.numpy import load_file as _load

    def load_file(path: Path) -> dict[str, np.ndarray]:
        try:
            return _load(path)
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else 'damaged'})") from None

    d = Path(model_dir)
    single, index, pickled = d / "model.safetensors", d / "model.safetensors.index.json", d / "pytorch_model.bin"
    if single.exists():
        tensors = load_file(single)
    elif index.exists():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(d / shard))
    elif pickled.exists():
        if not allow_pickle:
            raise CheckpointError(
                f"{pickled}: a pickled PyTorch checkpoint can run arbitrary code when loaded, so it is refused. "
                "Convert it to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust its source."
            )
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{pickled}: reading a pickled checkpoint needs torch (pip install torch)") from None
        try:
            with warnings.catch_warnings():  # torch warns about the pickle protocol before it refuses the file
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's weights-only unpickler refuses anything but tensors: name it, one line
            raise CheckpointError(f"{pickled}: not a plain tensor checkpoint; torch refused to load it with "
                                  f"weights_only=True ({type(e).__name__}: {error_line(e)})") from None
        tensors = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    else:
        raise FileNotFoundError(
            f"{d}: no weights found (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)"
        )
    return _normalise_legacy({k: np.asarray(v) for k, v in tensors.items()})


def _detect_base(tensors: dict[str, np.ndarray], arch: str) -> str:
    if any(k.startswith(f"{arch}.") for k in tensors):
        return f"{arch}."
    return ""


def _get(tree: dict, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


@dataclass
class LoadReport:
    """What a conversion did: tensors loaded, head parameters initialised from the seed, keys left unused."""

    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def load_into(model: nnx.Module, cfg: ModelConfig, head: Head, tensors: dict[str, np.ndarray],
              source: str = "checkpoint") -> LoadReport:
    """Copy HF tensors into ``model`` (built for ``cfg``/``head``) in place.

    Encoder parameters must all be present with the right shapes. Head parameters missing from the checkpoint
    keep their (seeded) initial values and are listed in the report and the log. Raises CheckpointError naming
    every missing, unexpected and mis-shaped key.
    """
    base = _detect_base(tensors, cfg.arch)
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    report = LoadReport()
    missing, mismatched = [], []
    used: set[str] = set()
    for m in key_map(cfg, head, base):
        target = _get(pure, m.nnx_path)
        if m.hf_key not in tensors:
            if m.is_head:
                report.initialised.append(m.hf_key)
            else:
                missing.append(m.hf_key)
            continue
        used.add(m.hf_key)
        arr = tensors[m.hf_key]
        arr = arr.T if m.transpose else arr
        if tuple(arr.shape) != tuple(target.shape):
            mismatched.append(f"{m.hf_key}: checkpoint {tuple(arr.shape)} vs model {tuple(target.shape)}"
                              + (" (transposed)" if m.transpose else ""))
            continue
        _set(pure, m.nnx_path, np.asarray(arr, dtype=target.dtype))
        report.loaded.append(m.hf_key)
    if head == "mlm":  # the decoder is tied to the word embeddings; an untied one cannot be represented
        emb = tensors.get(f"{base}embeddings.word_embeddings.weight")
        for dec in ("cls.predictions.decoder.weight", "lm_head.decoder.weight"):
            if dec in tensors and emb is not None and not np.array_equal(tensors[dec], emb):
                mismatched.append(f"{dec}: differs from the word embeddings (untied decoders are not supported)")
    unexpected = []
    for k in sorted(set(tensors) - used):
        (report.unused if _KNOWN_UNUSED.match(k) else unexpected).append(k)
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): " + ", ".join(missing))
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): " + "; ".join(mismatched))
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if problems:
        raise CheckpointError(f"{source} does not fit a {cfg.arch} model with head '{head}':\n  "
                              + "\n  ".join(problems))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    if report.initialised:
        log.info("%s: %d head parameters not in the checkpoint were initialised from the seed: %s",
                 source, len(report.initialised), ", ".join(report.initialised))
    if report.unused:
        log.info("%s: %d checkpoint tensors not used by head '%s': %s", source, len(report.unused), head,
                 ", ".join(report.unused))
    return report


def to_hf_tensors(model: nnx.Module, cfg: ModelConfig, head: Head) -> dict[str, np.ndarray]:
    """The inverse of ``load_into``: HF-named float32 tensors for transformers' PyTorch classes."""
    base = "" if head == "encoder" else f"{cfg.arch}."
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for m in key_map(cfg, head, base):
        arr = np.asarray(_get(pure, m.nnx_path), dtype=np.float32)
        out[m.hf_key] = np.ascontiguousarray(arr.T if m.transpose else arr)
    return out
