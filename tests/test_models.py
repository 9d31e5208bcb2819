"""Parity of the nnx BERT/RoBERTa with transformers' PyTorch classes, conversion round trips and error paths."""

from __future__ import annotations

import json
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.numpy import load_file, save_file

from ranmask_jax import export_pretrained, load_pretrained
from ranmask_jax.models import CheckpointError, ModelConfig, build_model
from ranmask_jax.models.pretrained import _builtin_dir
from tests.conftest import CORPUS

TOL = 1e-4
SENTENCES = CORPUS[:4]
PAIRS = (CORPUS[4:8], CORPUS[:4])  # premises, hypotheses -> token_type_ids 0/1 for BERT


def _batch(tokenizer, pairs: bool = False):
    if pairs:
        b = tokenizer(list(PAIRS[0]), list(PAIRS[1]), padding=True, return_tensors="np")
    else:
        b = tokenizer(SENTENCES, padding=True, return_tensors="np")
    assert (b["attention_mask"] == 0).any(), "the batch must contain padding"
    return b


def _run_both(model_dir, head, tokenizer, pairs=False):
    auto = {"classification": tf.AutoModelForSequenceClassification, "mlm": tf.AutoModelForMaskedLM,
            "encoder": tf.AutoModel}[head]
    tm = auto.from_pretrained(str(model_dir)).eval()
    model, _, _ = load_pretrained(model_dir, head=head)
    b = _batch(tokenizer, pairs)
    with torch.no_grad():
        out = tm(**{k: torch.tensor(v) for k, v in b.items()})
    ref = (out.last_hidden_state if head == "encoder" else out.logits).numpy()
    got = np.asarray(model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]),
                           jnp.asarray(b["token_type_ids"]) if "token_type_ids" in b else None))
    return got, ref, b["attention_mask"]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("head", ["classification", "mlm", "encoder"])
def test_parity_with_pytorch(hf_dir, arch, head, bert_tokenizer, roberta_tokenizer):
    tok = bert_tokenizer if arch == "bert" else roberta_tokenizer
    got, ref, mask = _run_both(hf_dir(arch, head), head, tok, pairs=(arch == "bert"))
    assert got.shape == ref.shape
    if head != "classification":  # per-token outputs: compare the real (non-pad) positions
        got, ref = got[mask > 0], ref[mask > 0]
    assert np.abs(got - ref).max() <= TOL


def test_parity_real_minilm_weights(bert_tokenizer):
    mdir = _builtin_dir("minilm-l6")
    got, ref, mask = _run_both(mdir, "encoder", bert_tokenizer)
    assert np.abs(got[mask > 0] - ref[mask > 0]).max() <= TOL


def test_export_round_trip(tmp_path, bert_tokenizer, roberta_tokenizer):
    from flax import nnx

    for arch, tok in [("bert", bert_tokenizer), ("roberta", roberta_tokenizer)]:
        cfg = ModelConfig.from_hf_dict(
            {"model_type": arch, "vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 48, "num_labels": 3,
             "max_position_embeddings": 66 if arch == "roberta" else 64,
             "pad_token_id": tok.pad_token_id})
        model = build_model(cfg, "classification", rngs=nnx.Rngs(7))
        model.eval()
        out = export_pretrained(model, tok, cfg, tmp_path / arch, label_names=["neg", "neu", "pos"])
        tm = tf.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
        assert tm.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
        b = _batch(tok)
        with torch.no_grad():
            ref = tm(**{k: torch.tensor(v) for k, v in b.items()}).logits.numpy()
        got = np.asarray(model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"])))
        assert np.abs(got - ref).max() <= TOL
        # and back into JAX: identical parameters
        again, tok2, cfg2 = load_pretrained(out)
        assert cfg2 == cfg
        a = jax_leaves(model)
        for x, y in zip(a, jax_leaves(again), strict=True):
            np.testing.assert_array_equal(x, y)
        assert tok2.convert_ids_to_tokens(b["input_ids"][0]) == tok.convert_ids_to_tokens(b["input_ids"][0])


def jax_leaves(model):
    import jax
    from flax import nnx

    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_missing_head_is_initialised_from_seed(hf_dir, caplog):
    d = hf_dir("bert", "encoder")
    with caplog.at_level("INFO"):
        m1, _, _ = load_pretrained(d, head="classification", num_labels=4, seed=1)
        m2, _, _ = load_pretrained(d, head="classification", num_labels=4, seed=1)
        m3, _, _ = load_pretrained(d, head="classification", num_labels=4, seed=2)
    assert "classifier.weight" in caplog.text and "initialised from the seed" in caplog.text
    w = [np.asarray(m.head.classifier.kernel[...]) for m in (m1, m2, m3)]
    np.testing.assert_array_equal(w[0], w[1])
    assert not np.allclose(w[0], w[2])
    # the pretrained pooler of BertModel is kept, not re-initialised
    pooler = load_file(d / "model.safetensors")["pooler.dense.weight"]
    np.testing.assert_array_equal(np.asarray(m1.head.pooler.kernel[...]), pooler.T)


def test_legacy_gamma_beta_names(hf_dir, bert_tokenizer):
    d = hf_dir("bert", "classification")
    ref, _, _ = _run_both(d, "classification", bert_tokenizer)
    tensors = load_file(d / "model.safetensors")
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    assert sum("gamma" in k for k in renamed) > 0
    save_file(renamed, str(d / "model.safetensors"))
    model, _, _ = load_pretrained(d)
    b = _batch(bert_tokenizer)
    got = np.asarray(model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"])))
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_shape_mismatch_and_unexpected_are_reported_together(hf_dir):
    d = hf_dir("bert", "classification")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (d / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(d / "model.safetensors")
    tensors["bert.encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    del tensors["bert.embeddings.token_type_embeddings.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(d)
    msg = str(e.value)
    assert "missing (1): bert.embeddings.token_type_embeddings.weight" in msg
    # every intermediate/output dense of both layers: 2 layers x (intermediate weight, bias, output weight)
    assert "shape mismatch (6)" in msg and "bert.encoder.layer.1.intermediate.dense.weight" in msg
    assert "unexpected (1): bert.encoder.layer.0.attention.self.rotary.weight" in msg


def test_pickle_refused_unless_trusted(hf_dir, bert_tokenizer):
    d = hf_dir("bert", "classification")
    ref, _, _ = _run_both(d, "classification", bert_tokenizer)
    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled PyTorch checkpoint.*allow_pickle"):
        load_pretrained(d)
    model, _, _ = load_pretrained(d, allow_pickle=True)
    b = _batch(bert_tokenizer)
    got = np.asarray(model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"])))
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        load_pretrained(tmp_path / "empty")


def test_hub_id_offline_fails_fast_naming_alternatives():
    t = time.perf_counter()
    with pytest.raises(OSError, match="minilm-l6"):
        load_pretrained("ranmask-jax-tests/no-such-model")
    assert time.perf_counter() - t < 30


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig(hidden_act="swish-ish")


def test_fused_and_explicit_attention_agree():
    """Inference uses jax.nn.dot_product_attention, training the explicit einsum form (for dropout)."""
    import jax

    from ranmask_jax.models import tiny

    model = build_model(tiny(), rngs=__import__("flax").nnx.Rngs(0))
    model.eval()
    attn = model.encoder.layers[0].attention
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 7, 4, 8))
    key_mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3])[:, None, None, :] > 0
    fused = jax.nn.dot_product_attention(q, k, v, mask=key_mask)
    np.testing.assert_allclose(np.asarray(attn.explicit_attention(q, k, v, key_mask)), np.asarray(fused), atol=1e-5)


def test_dropout_active_only_in_train_mode():
    from flax import nnx

    from ranmask_jax.models import tiny

    model = build_model(tiny(), rngs=nnx.Rngs(0, dropout=1))
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 100, (2, 9)))
    model.eval()
    a, b = model(ids), model(ids)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model.train()
    c = model(ids)
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_untied_mlm_decoder_is_refused(hf_dir):
    d = hf_dir("bert", "mlm")
    tensors = load_file(d / "model.safetensors")
    emb = tensors["bert.embeddings.word_embeddings.weight"]
    tensors["cls.predictions.decoder.weight"] = emb.copy()  # tied but stored: fine
    save_file(tensors, str(d / "model.safetensors"))
    load_pretrained(d, head="mlm")
    tensors["cls.predictions.decoder.weight"] = emb + 1.0
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="untied decoders are not supported"):
        load_pretrained(d, head="mlm")
