"""Rollout: response masks, old log-probs / entropies against transformers' own sampling scores,
the fused and unfused heads, the chat-template requirement, and shared prompts (one prompt
forward per group) against one forward per full row, in value and gradient."""
import pytest
import torch

from ercref import entropy_from_logits
from ercref.lm.models import build_tiny_model
from ercref.lm.rollout import (
    encode_prompts,
    eos_ids,
    generate_hf,
    prompt_groups,
    response_logprobs,
    response_mask_from_tokens,
    rollout,
)

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


# ----------------------------------------------------------------------------- shared prompts
def test_prompt_groups_map_every_row_to_its_prompt():
    ids = torch.tensor([[0, 5, 6, 9], [0, 5, 6, 8], [4, 5, 6, 9], [0, 5, 6, 7]])
    am = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    u_ids, u_am, inv = prompt_groups(ids, am, 3)             # rows 0, 1, 3 share "<pad> 5 6"; row 2 differs
    assert u_ids.shape[0] == 2 and torch.equal(u_ids[inv], ids[:, :3]) and torch.equal(u_am[inv], am[:, :3])
    assert inv[0] == inv[1] == inv[3] != inv[2]
    # the same tokens with a different mask are different prompts; all distinct -> None (nothing to share)
    assert prompt_groups(ids[:2], torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), 3) is None
    assert prompt_groups(ids, am, 4) is None


@pytest.fixture(scope="module")
def tiny64():
    model, tok = build_tiny_model(seed=3)
    return model.double(), tok


def _grouped_batch(model, tok, G=3, R=6, seed=5):
    prompts = ["3+5=", "12+17=", "1+1="]                      # different lengths: left padding differs by group
    torch.manual_seed(seed)
    return rollout(model, tok, prompts, ["8", "29", "2"], G, R)


def test_shared_prompt_forward_equals_one_forward_per_row_in_value_and_gradient(tiny64):
    """Log-probs, entropies and every parameter's gradient of a weighted masked log-prob sum agree
    between the shared-prompt forward and one forward of every full row. The model is float64 but
    transformers' RMSNorm computes in float32 whatever the dtype, so the bound is float32 rounding:
    1e-6 on values, 1e-5 of each parameter's largest gradient entry (measured ~1e-7 relative)."""
    model, tok = tiny64
    b = _grouped_batch(model, tok)
    P, eos = b.prompt_len, eos_ids(model, tok)
    b.sequences[[1, 5], P + 2] = eos[0]                      # two responses end early: padded response columns
    b.response_mask = response_mask_from_tokens(b.sequences[:, P:], eos)
    b.attention_mask[:, P:] = b.response_mask.long()
    assert prompt_groups(b.sequences, b.attention_mask, P)[0].shape[0] == 3
    m = b.response_mask
    assert (b.response_lengths > 1).any() and (~m).any()     # responses of several lengths, some padding
    out = {}
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        lp, ent = response_logprobs(model, b.sequences, b.attention_mask, b.prompt_len, 0.7, share_prompts=share)
        (lp * m * torch.linspace(0.5, 1.5, lp.shape[1], dtype=lp.dtype)).sum().backward()
        out[share] = (lp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()})
    (lp0, en0, g0), (lp1, en1, g1) = out[False], out[True]
    assert torch.allclose(lp0[m], lp1[m], atol=1e-6, rtol=0) and torch.allclose(en0[m], en1[m], atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys()
    for n in g0:
        scale = float(g0[n].abs().max())
        assert scale > 0 and float((g0[n] - g1[n]).abs().max()) <= 1e-5 * scale, n   # every parameter gets gradient


def test_rollout_old_logprobs_do_not_depend_on_sharing(tiny64):
    """The rollout's samples (same seed) and its old log-probs / entropies are the same with and
    without shared prompts (to float32 rounding: see above)."""
    import ercref.lm.rollout as R

    model, tok = tiny64
    got = []
    for share in (False, True):
        R.SHARE_PROMPTS = share
        try:
            got.append(_grouped_batch(model, tok, seed=9))
        finally:
            R.SHARE_PROMPTS = True
    a, b = got
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.response_mask, b.response_mask)
    m = a.response_mask
    assert torch.allclose(a.old_logp[m], b.old_logp[m], atol=1e-6, rtol=0)
    assert torch.allclose(a.old_entropy[m], b.old_entropy[m], atol=1e-6, rtol=0)


def test_generate_with_shared_prompts_draws_the_same_samples_under_budgets(tiny64):
    """generate_hf with shared prompts equals plain generation (same seed) also when a token budget
    splits the rows into several calls (groups may be cut between calls)."""
    model, tok = tiny64
    ids, am = encode_prompts(tok, [p for p in ["3+5=", "12+17=", "1+1="] for _ in range(4)], 512, "cpu")
    outs = []
    for share in (False, True):
        for budget in (0, 5 * (ids.shape[1] + 5)):
            torch.manual_seed(4)
            outs.append(generate_hf(model, tok, ids, am, 5, 1.0, 1.0, max_tokens=budget, share_prompts=share))
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])


def test_shared_prompts_fall_back_to_full_rows_under_activation_checkpointing(tiny64):
    """transformers turns the KV cache off when activation checkpointing is on in training, so the
    shared path would lose the prompt: the forward must then run full rows (same values)."""
    import copy

    model, tok = tiny64
    b = _grouped_batch(model, tok, seed=2)
    ckpt = copy.deepcopy(model)
    ckpt.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ckpt.train()
    lp_c, _ = response_logprobs(ckpt, b.sequences, b.attention_mask, b.prompt_len, 1.0, share_prompts=True)
    lp_c.sum().backward()
    with torch.no_grad():
        lp, _ = response_logprobs(model, b.sequences, b.attention_mask, b.prompt_len, 1.0, share_prompts=False)
    m = b.response_mask
    assert torch.allclose(lp_c.detach()[m], lp[m], atol=1e-6, rtol=0)
