"""Rollout: response masks, old log-probs / entropies against transformers' own sampling scores,
the fused and unfused heads, and the chat-template requirement."""
import pytest
import torch

from ercref import entropy_from_logits
from ercref.lm.models import build_tiny_model
from ercref.lm.rollout import encode_prompts, eos_ids, response_logprobs, response_mask_from_tokens, rollout

PROMPTS, ANSWERS = ["3+5=", "12+7=", "1+1="], ["8", "19", "2"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


def test_response_mask_keeps_eos_and_drops_what_follows():
    eos = [2, 7]
    resp = torch.tensor([[5, 6, 2, 0, 0], [5, 5, 5, 5, 5], [7, 2, 0, 0, 0], [5, 2, 2, 9, 9]])
    expect = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(response_mask_from_tokens(resp, eos), expect)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_old_logprobs_and_entropies_match_the_samplers_scores(tiny, temperature):
    """The rollout's one-forward old log-probs / entropies equal those of the distributions
    transformers sampled from (its processed scores at this temperature, top-p 1), within 1e-5."""
    model, tok = tiny
    G, R = 2, 6
    torch.manual_seed(11)
    b = rollout(model, tok, PROMPTS, ANSWERS, G, R, temperature=temperature)
    ids, am = encode_prompts(tok, [p for p in PROMPTS for _ in range(G)], 512, "cpu")
    torch.manual_seed(11)
    g = model.generate(input_ids=ids, attention_mask=am, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                       max_new_tokens=R, output_scores=True, return_dict_in_generate=True,
                       eos_token_id=eos_ids(model, tok), pad_token_id=tok.pad_token_id)
    resp = g.sequences[:, ids.shape[1]:]
    assert torch.equal(b.sequences[:, b.prompt_len:], resp)  # same seed, same samples
    scores = torch.stack(g.scores, 1).float()               # logits / temperature
    logp_ref = torch.log_softmax(scores, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    ent_ref = entropy_from_logits(scores)
    m = b.response_mask
    assert m.any() and (b.old_logp[~m] == 0).all() and (b.old_entropy[~m] == 0).all()
    assert torch.allclose(b.old_logp[m], logp_ref[m], atol=1e-5, rtol=0)
    assert torch.allclose(b.old_entropy[m], ent_ref[m], atol=1e-5, rtol=0)


def test_groups_are_contiguous_and_texts_decoded(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    b = rollout(model, tok, PROMPTS, ANSWERS, 4, 5)
    assert b.sequences.shape[0] == 12 and b.prompts == [p for p in PROMPTS for _ in range(4)]
    assert b.answers[4:8] == ["19"] * 4
    ids = b.sequences[:, b.prompt_len:]
    for i, text in enumerate(b.texts):
        kept = [t for t, keep in zip(ids[i].tolist(), b.response_mask[i].tolist()) if keep and t not in eos_ids(model, tok)]
        assert text == tok.decode(kept, skip_special_tokens=True)


def test_fused_and_unfused_heads_agree(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    b = rollout(model, tok, PROMPTS, ANSWERS, 2, 5)
    with torch.no_grad():
        lp_u, en_u = response_logprobs(model, b.sequences, b.attention_mask, b.prompt_len, 0.8, fused_head=False)
        lp_f, en_f = response_logprobs(model, b.sequences, b.attention_mask, b.prompt_len, 0.8, fused_head=True)
    m = b.response_mask
    assert torch.allclose(lp_u[m], lp_f[m], atol=1e-5) and torch.allclose(en_u[m], en_f[m], atol=1e-5)


def test_no_chat_template_is_a_clear_error(tiny):
    model, _ = tiny
    _, tok = build_tiny_model(seed=0)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        rollout(model, tok, PROMPTS, ANSWERS, 2, 4)


def test_prompts_and_answers_must_match(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="prompts"):
        rollout(model, tok, PROMPTS, ANSWERS[:2], 2, 4)
