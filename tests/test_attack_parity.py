"""The attacks' neural pieces against the PyTorch reference (transformers), on the real MiniLM-L6 weights or a tiny
random model saved with ``save_pretrained``: the sentence encoder's mean pooling, MaskPure's argmax refill, and
BERT-Attack's top-k candidates."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_hf_dir

TEXTS = ["the movie was a gripping , funny and warm ride", "a dull mess",
         " ".join(["an extraordinarily long review that rambles on"] * 30)]  # beyond 128 tokens: truncated


def test_sentence_encoder_is_mean_pooled_minilm():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from attacks.resources import SentenceEncoder
    from ranmask_jax.models.pretrained import _builtin_dir

    ours = SentenceEncoder().encode(TEXTS)
    path = str(_builtin_dir("minilm-l6"))
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-5)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, bert_tokenizer):
    import torch
    from transformers import BertForMaskedLM

    from ranmask_jax.models import load_pretrained

    path = make_hf_dir(tmp_path_factory.mktemp("mlm") / "bert-mlm", "bert", "mlm", bert_tokenizer)
    torch_model = BertForMaskedLM.from_pretrained(str(path)).eval()
    with torch.no_grad():  # the special tokens would win every argmax: the fill must skip them
        torch_model.cls.predictions.bias[bert_tokenizer.all_special_ids] += 50.0
    torch_model.save_pretrained(str(path))
    jax_model, tok, _ = load_pretrained(str(path), head="mlm")
    torch.set_grad_enabled(False)
    return jax_model, torch_model, tok


def _torch_logits(torch_model, tok, texts):

    enc = tok(texts, padding=True, return_tensors="pt")
    logits = torch_model(**enc).logits.double().numpy()
    logits[..., tok.all_special_ids] = -np.inf
    return enc, logits


def test_maskpure_argmax_fill_matches_transformers(tiny_mlm):
    import jax
    import jax.numpy as jnp

    from ranmask_jax.purify import mlm_refill

    jax_model, torch_model, tok = tiny_mlm
    texts = [f"the {tok.mask_token} was a {tok.mask_token} , funny and warm ride",
             f"{tok.mask_token} dull {tok.mask_token} {tok.mask_token}"]
    enc, logits = _torch_logits(torch_model, tok, texts)
    ids, attn = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    is_mask = (ids == tok.mask_token_id) & (attn > 0)
    for share in (None, 0.3):
        fn, params = mlm_refill(jax_model, tok, tok, mask_share=share)
        out, _, _ = fn(params, jax.random.key(0), jnp.asarray(ids), jnp.asarray(attn), jnp.zeros_like(ids))
        out = np.asarray(out)
        np.testing.assert_array_equal(out[is_mask], logits.argmax(-1)[is_mask])
        np.testing.assert_array_equal(out[~is_mask], ids[~is_mask])


def test_bert_attack_candidates_are_the_masked_lms_top_k(tiny_mlm):
    from attacks.text import AttackText
    from attacks.transformations import MLMSwap

    jax_model, torch_model, tok = tiny_mlm
    text = "the movie was gripping , funny and warm"
    swap = MLMSwap(jax_model, tok, k=8)
    enc, logits = _torch_logits(torch_model, tok, [text])
    t = AttackText.from_string(text)
    checked = 0
    for i, word in enumerate(t.words):
        pieces = tok(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1 or not word.isalpha():
            continue
        pos = enc["input_ids"][0].tolist().index(pieces[0])
        lp = logits[0, pos] - np.logaddexp.reduce(logits[0, pos][np.isfinite(logits[0, pos])])
        want = []
        for tid in np.argsort(-lp, kind="stable"):
            cand = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(int(tid))]).strip()
            if cand.isalpha() and cand.lower() != word.lower() and cand not in want:
                want.append(cand)
            if len(want) == 8:
                break
        assert swap(t, i, np.random.default_rng(0)) == want, word
        checked += 1
    assert checked >= 5
