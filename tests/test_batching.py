"""Token-budget micro-batches (ercref.lm.batching): the packing rule, trimming, and the budgets
in generation, evaluation, the old-log-prob pass and the update (exact: the same responses, log-probs
and gradients as one batch, in the original row order), and the paper preset's calls under their
budgets (a spy on every generate / forward call)."""
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ercref import PolicyLossConfig
from ercref.lm import batching as B
from ercref.lm.config import make_config
from ercref.lm.models import build_tiny_model
from ercref.lm.rollout import _old_logprobs, encode_prompts, eos_ids, generate_hf, response_mask_from_tokens, rollout
from ercref.lm.trainer import Trainer

PROMPTS = ["3+5=", "12+7=", "1+1=", "40+2=", "9+9=", "100+23="]
ANSWERS = ["8", "19", "2", "42", "18", "123"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


# ============================================================================= micro-batches
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 60)), min_size=1, max_size=40),
       st.integers(0, 400), st.integers(0, 9))
def test_token_budget_batches_cover_every_row_once_within_budget(lens, budget, max_rows):
    p = torch.tensor([a for a, _ in lens])
    r = torch.tensor([b for _, b in lens])
    if budget and int((p + r).max()) > budget:                           # a row no micro-batch can hold: refused
        with pytest.raises(ValueError, match=rf"^max_tokens={budget} is below row \d+'s {int((p + r).max())} tokens"):
            B.token_budget_batches(p, r, budget, max_rows)
        return
    batches = B.token_budget_batches(p, r, budget, max_rows)
    rows = torch.cat(batches).tolist()
    assert sorted(rows) == list(range(len(lens)))                       # every row exactly once
    for b in batches:
        cost = len(b) * int(p[b].max() + r[b].max())
        assert not budget or cost <= budget                              # every micro-batch within the budget
        assert not max_rows or len(b) <= max_rows
    whole = len(lens) * int(p.max() + r.max())
    if (not budget or whole <= budget) and (not max_rows or len(lens) <= max_rows):
        assert len(batches) == 1 and batches[0].tolist() == list(range(len(lens)))   # original order, one call
    else:                                                                # split: longest rows first
        total = (p + r)[torch.cat(batches)]
        assert (total[:-1] >= total[1:]).all()


def test_token_budget_batches_bad_input():
    with pytest.raises(ValueError, match="max_tokens"):
        B.token_budget_batches([1], [1], -1)
    with pytest.raises(ValueError, match="one entry per row"):
        B.token_budget_batches([1, 2], [1], 10)
    assert B.token_budget_batches([], [], 10) == []
    for bad in (True, 2.5, float("nan"), float("inf"), "64", None):
        with pytest.raises(ValueError, match=r"^max_tokens must be an int >= 0"):
            B.token_budget_batches([1], [1], bad)
        with pytest.raises(ValueError, match=r"^max_rows must be an int >= 0"):
            B.token_budget_batches([1], [1], 10, bad)
    with pytest.raises(ValueError, match=r"^prompt_lens .*integer token counts.*-3"):
        B.token_budget_batches([2, -3], [1, 1], 10)
    with pytest.raises(ValueError, match=r"^resp_lens must hold integer token counts.*float32"):
        B.token_budget_batches([2, 3], torch.tensor([1.0, float("nan")]), 10)
    with pytest.raises(ValueError, match=r"^prompt_lens must hold integer token counts.*torch.bool"):
        B.token_budget_batches(torch.tensor([True, False]), [1, 1], 10)
    got = B.token_budget_batches(np.array([3, 4]), np.array([2, 2]), np.int64(6))   # numpy integers are counts
    assert [b.tolist() for b in got] == [[1], [0]]


@pytest.mark.parametrize("prompt_lens, phrase", [
    (torch.ones(2, 3, dtype=torch.long), r"1-D.*\(2, 3\)"),                 # would pass as 6 rows
    (torch.ones(3, dtype=torch.long, device="meta"), "meta"),
    ([2 ** 70, 1, 1, 1, 1, 1], "one per row; got"),
    (["3", "1", "1", "1", "1", "1"], "one per row; got"),
    ([[1, 2], [3]], "one per row; got"),
])
def test_token_counts_that_are_not_one_integer_per_row_are_refused_naming_them(prompt_lens, phrase):
    """A 2-D tensor is not flattened into rows (its shape would silently decide the rows); text, ragged
    lists, integers beyond int64 and meta tensors are refused naming the argument."""
    with pytest.raises(ValueError, match=r"^prompt_lens must hold integer token counts.*" + phrase):
        B.token_budget_batches(prompt_lens, torch.ones(6, dtype=torch.long), 4)


_any_number = st.one_of(st.integers(-10, 400), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none())


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60)), max_size=12), _any_number, _any_number)
def test_property_budgets_are_refused_naming_them_or_cover_every_row(lens, max_tokens, max_rows):
    """Whatever the budget arguments: a ValueError naming the first bad one (ints >= 0 only; bools,
    floats, None refused), or micro-batches covering every row once within the budget."""
    p, r = [a for a, _ in lens], [b for _, b in lens]
    def ok(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if not ok(max_tokens) or not ok(max_rows):
        with pytest.raises(ValueError, match="^max_tokens" if not ok(max_tokens) else "^max_rows"):
            B.token_budget_batches(p, r, max_tokens, max_rows)
        return
    if lens and max_tokens and max(a + b for a, b in lens) > max_tokens:   # a row no micro-batch can hold
        with pytest.raises(ValueError, match=f"^max_tokens={max_tokens} is below row"):
            B.token_budget_batches(p, r, max_tokens, max_rows)
        return
    batches = B.token_budget_batches(p, r, max_tokens, max_rows)
    assert sorted(torch.cat(batches).tolist() if batches else []) == list(range(len(lens)))
    for b in batches:
        cost = len(b) * (max(p[i] for i in b.tolist()) + max(r[i] for i in b.tolist()))
        assert not max_tokens or cost <= max_tokens
        assert not max_rows or len(b) <= max_rows


def test_trim_rows_keeps_every_real_token():
    # prompts left-padded to P=5, responses right-padded to R=4 (pad id 0)
    seq = torch.tensor([[0, 0, 7, 8, 9, 1, 2, 0, 0],
                        [0, 0, 0, 7, 8, 1, 2, 3, 0],
                        [5, 6, 7, 8, 9, 1, 0, 0, 0]])
    am = (seq != 0).long()
    rlen = torch.tensor([2, 3, 1])
    s, a, p, r = B.trim_rows(seq, am, 5, torch.tensor([0, 1]), rlen)
    assert (p, r) == (3, 3) and s.tolist() == [[7, 8, 9, 1, 2, 0], [0, 7, 8, 1, 2, 3]]
    assert a.tolist() == [[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    s, a, p, r = B.trim_rows(seq, am, 5, torch.tensor([2]), rlen)
    assert (p, r) == (5, 1) and s.tolist() == [[5, 6, 7, 8, 9, 1]]
    for bad in (-1, 10, True, 2.0):
        with pytest.raises(ValueError, match=r"^prompt_len must be an int in \[0, 9\]"):
            B.trim_rows(seq, am, bad, torch.tensor([0]), rlen)
    with pytest.raises(ValueError, match="at least one row"):
        B.trim_rows(seq, am, 5, torch.tensor([], dtype=torch.long), rlen)
    for bad in ([0], torch.tensor([[0]]), torch.tensor([0.0]), torch.tensor([True])):
        with pytest.raises(ValueError, match=r"^rows must be a 1-D int64 tensor of row indices"):
            B.trim_rows(seq, am, 5, bad, rlen)
    for bad in (torch.tensor([3]), torch.tensor([0, -1])):
        with pytest.raises(ValueError, match=r"^rows must be row indices in \[0, 3\)"):
            B.trim_rows(seq, am, 5, bad, rlen)


# ============================================================================= rollout passes
def _varied_lengths(b, model, tok):
    """The batch with an EOS put into row i's response at position i mod R (a random tiny model
    rarely stops by itself), masks recomputed: responses of every length 1..R."""
    R = b.sequences.shape[1] - b.prompt_len
    eos = eos_ids(model, tok)[0]
    for i in range(b.sequences.shape[0]):
        b.sequences[i, b.prompt_len + i % R] = eos
    b.response_mask = response_mask_from_tokens(b.sequences[:, b.prompt_len:], eos_ids(model, tok))
    b.attention_mask[:, b.prompt_len:] = b.response_mask.long()
    b.old_logp, b.old_entropy, _ = _old_logprobs(model, b.sequences, b.attention_mask, b.prompt_len, 1.0,
                                                 b.response_mask, 0, True, None)
    return b


def _spy_generate(model, calls):
    real = model.generate

    def spy(*args, **kw):
        calls.append((kw["input_ids"].shape[0], kw["input_ids"].shape[1], kw["max_new_tokens"]))
        return real(*args, **kw)
    return spy


@pytest.mark.slow
def test_generate_within_budget_is_deterministic_and_matches_one_call(tiny, monkeypatch):
    """Greedy decoding gives the same responses in budgeted calls (sorted, trimmed, scattered back)
    as in one call; every call holds rows x (its prompt width + max_new_tokens) <= the budget;
    sampling is reproducible for a seed and a batching."""
    model, tok = tiny
    rep = [p for p in PROMPTS for _ in range(3)]
    ids, am = encode_prompts(tok, rep, 64, "cpu")
    R = 6
    one = generate_hf(model, tok, ids, am, R, 1.0, 1.0, do_sample=False)
    calls = []
    monkeypatch.setattr(model, "generate", _spy_generate(model, calls))
    budget = 4 * (ids.shape[1] + R)
    split = generate_hf(model, tok, ids, am, R, 1.0, 1.0, do_sample=False, max_tokens=budget)
    assert len(calls) > 1 and sum(c[0] for c in calls) == len(rep)
    assert all(rows * (width + new) <= budget for rows, width, new in calls)
    assert min(c[1] for c in calls) < ids.shape[1]                  # short prompts ran at their own width
    assert torch.equal(split[:, : one.shape[1]], one) and (split[:, one.shape[1]:] == tok.pad_token_id).all()
    samples = []
    for _ in range(2):
        torch.manual_seed(3)
        samples.append(generate_hf(model, tok, ids, am, R, 1.0, 1.0, max_tokens=budget))
    assert torch.equal(samples[0], samples[1])


@pytest.mark.slow
def test_old_logprobs_in_budgeted_micro_batches_match_one_forward(tiny):
    """Old log-probs, entropies and the reference model's log-probs from micro-batches of <= budget
    tokens (each at its own width) equal one forward over everything, in the original row order."""
    model, tok = tiny
    torch.manual_seed(0)
    b = _varied_lengths(rollout(model, tok, PROMPTS, ANSWERS, 4, 8), model, tok)
    ref, _ = build_tiny_model(seed=1)
    assert b.response_lengths.unique().numel() > 2                  # varied lengths: real trimming
    full = _old_logprobs(model, b.sequences, b.attention_mask, b.prompt_len, 0.9, b.response_mask, 0, True, None, ref)
    small = _old_logprobs(model, b.sequences, b.attention_mask, b.prompt_len, 0.9, b.response_mask,
                          3 * b.sequences.shape[1], True, None, ref)
    for x, y in zip(full, small):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=0)
    assert all(x.shape == b.old_logp.shape for x in full)           # (N, R), rows in the original order


# ============================================================================= update: exact accumulation
SMALL = ["sft.steps=0", "rollout.prompts_per_step=4", "rollout.group_size=4", "train.minibatch_prompts=4",
         "rollout.max_new_tokens=8", "data.max_prompt_tokens=24", "train.progress=false", "train.plot=false",
         "train.memory_check=off", "data.num_eval=4", "train.eval_k=2"]


@pytest.fixture(scope="module")
def update_case(tmp_path_factory):
    """A tiny trainer and one rollout batch with varied response lengths, mixed rewards, a reference."""
    cfg = make_config("cpu-tiny", overrides=SMALL)
    tr = Trainer(cfg, tmp_path_factory.mktemp("upd"))
    torch.manual_seed(5)
    b = _varied_lengths(tr.make_rollout(tr.next_prompts(4), 4, 1.0, 1.0, 8), tr.model, tr.tok)
    g = torch.Generator().manual_seed(0)
    b.ref_logp = (b.old_logp + 0.1 * torch.randn(b.old_logp.shape, generator=g)) * b.response_mask
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    adv = torch.randn(16, generator=g)
    assert b.response_lengths.unique().numel() > 2
    return tr, b, adv, rewards


def _grads(tr, batch, adv, rewards, loss_cfg, budget):
    tr.cfg.loss = loss_cfg
    tr.cfg.train.max_tokens_per_forward = budget
    seen = {}

    def capture():
        seen["g"] = torch.cat([p.grad.flatten() for p in tr.model.parameters()])
    real = tr.opt.step
    tr.opt.step = capture                                            # the weights stay put between calls
    try:
        m = tr.update_minibatch(batch, adv, rewards)
    finally:
        tr.opt.step = real
    return seen["g"], m


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batched_gradient_equals_one_batch(update_case, agg_mode):
    """The accumulated gradient over token-budget micro-batches (sorted, trimmed) equals the one-batch
    gradient for every aggregation mode, with the positive-NLL, KL and entropy-bonus terms on."""
    tr, b, adv, rewards = update_case
    lc = PolicyLossConfig(loss="dapo", erc=True, beta_low=0.2, beta_high=0.2, nll_coef=0.3, kl_coef=0.2,
                          entropy_coef=0.05, agg_mode=agg_mode)
    W = b.sequences.shape[1]
    g_one, m_one = _grads(tr, b, adv, rewards, lc, 0)
    g_mb, m_mb = _grads(tr, b, adv, rewards, lc, 3 * W)
    assert float(m_one["batch/micro_batches"]) == 1 and float(m_mb["batch/micro_batches"]) >= 4
    assert g_one.abs().max() > 0
    torch.testing.assert_close(g_mb, g_one, rtol=1e-4, atol=1e-5 * float(g_one.abs().max()))
    # the control: these micro-batches' token shares differ from their row shares, so weighting a
    # seq-mean loss by tokens (or token-mean by rows) would have changed the gradient
    rlen = b.response_lengths.float()
    parts = B.token_budget_batches(b.attention_mask[:, :b.prompt_len].sum(-1), rlen.long(), 3 * W)
    assert max(abs(float(rlen[p].sum() / rlen.sum()) - len(p) / len(rlen)) for p in parts) > 0.02


def test_gradients_are_freed_after_the_step(update_case):
    tr, b, adv, rewards = update_case
    tr.cfg.train.max_tokens_per_forward = 0
    tr.update_minibatch(b, adv, rewards)
    assert all(p.grad is None for p in tr.model.parameters())


# ============================================================================= the paper preset: a spy
class _StandIn(torch.nn.Module):
    """A stand-in for the 1.5B model with the interface the engine uses: generate() returns
    random responses (most short, some hitting max_new_tokens) and records each call's shape; the
    decoder records each forward's (rows, width, grad enabled) and returns cheap hidden states."""

    def __init__(self, vocab: int, eos: int, pad: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 4)
        self.head = torch.nn.Linear(4, vocab, bias=False)
        self.config = types.SimpleNamespace(final_logit_softcapping=None)
        self.generation_config = types.SimpleNamespace(eos_token_id=eos, pad_token_id=pad)
        self.eos, self.pad, self.vocab = eos, pad, vocab
        self.generate_calls, self.forward_calls = [], []
        outer = self

        class Decoder(torch.nn.Module):
            def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
                outer.forward_calls.append((input_ids.shape[0], input_ids.shape[1], torch.is_grad_enabled()))
                return types.SimpleNamespace(last_hidden_state=outer.emb(input_ids))
        self.decoder = Decoder()

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.head

    def gradient_checkpointing_enable(self, **kw):
        pass

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        n, w = input_ids.shape
        self.generate_calls.append((n, w, max_new_tokens))
        long = torch.rand(n) < 0.1
        lens = torch.where(long, torch.full((n,), max_new_tokens), torch.randint(1, 200, (n,)).clamp(max=max_new_tokens))
        L = int(lens.max())
        out = torch.randint(5, self.vocab, (n, L))
        col = torch.arange(L)
        out[col == (lens - 1).unsqueeze(1)] = self.eos           # EOS ends every row shorter than the limit
        out[(lens == max_new_tokens).unsqueeze(1) & (col == L - 1)] = 7
        out[col > (lens - 1).unsqueeze(1)] = self.pad
        return torch.cat([input_ids, out], 1)


@pytest.mark.slow
def test_paper_preset_calls_stay_within_their_token_budgets(tmp_path, monkeypatch):
    """gpu-paper-1.5b's shapes (256 prompts x 8 generated, 128 x 8 trained in minibatches of 16
    prompts, 16K new tokens; evaluation 60 AIME prompts x 32 samples x 32K new tokens) through the
    real rollout / update / evaluation code with a stand-in model: no generate call holds more than
    rollout.max_tokens_per_generate (rows x (prompt width + max_new_tokens)), no no-grad forward more
    than rollout.max_tokens_per_logprob, no update forward more than train.max_tokens_per_forward
    or train.micro_batch_size rows, and the calls cover every row."""
    import ercref.lm.trainer as T

    paper = make_config("gpu-paper-1.5b", validate=False)
    cfg = make_config("gpu-paper-1.5b", validate=False, overrides=[
        "train.device=cpu", "train.require_cuda=false", "model.bf16_autocast=false", "train.memory_check=off",
        "train.progress=false", "train.plot=false", "train.save_checkpoints=false",
        "data.task=arith", "data.path=null", "data.eval_paths={}", "data.num_eval=60", "data.num_train=600",
        "data.style=bare", "reward.judge=exact", "reward.scheme=binary", "reward.require_think=false"])
    r, t = cfg.rollout, cfg.train
    assert (r.max_tokens_per_generate, r.max_tokens_per_logprob, t.max_tokens_per_forward) == (
        paper.rollout.max_tokens_per_generate, paper.rollout.max_tokens_per_logprob, paper.train.max_tokens_per_forward)
    assert r.max_new_tokens == 16384 and t.eval_max_new_tokens == 32768 and t.eval_k == 32
    _, tok = build_tiny_model(seed=0)
    model = _StandIn(len(tok), tok.eos_token_id, tok.pad_token_id)
    monkeypatch.setattr(T, "load_model", lambda *a, **k: (model, tok))
    tr = Trainer(cfg, tmp_path)
    tr.start()
    g = torch.Generator().manual_seed(1)

    def score(batch, max_new):  # varied correctness, so dynamic sampling keeps groups and the update runs
        correct = torch.rand(len(batch.texts), generator=g) < 0.4
        return correct.float(), correct
    tr.score = score
    torch.manual_seed(0)
    rec = tr.train_step()
    n_gen = cfg.advantage.gen_batch_prompts * r.group_size
    assert rec["batch/minibatches"] == cfg.num_minibatches and rec["batch/seq_width"] > 16384
    gen_calls, fwd = list(model.generate_calls), list(model.forward_calls)
    assert sum(c[0] for c in gen_calls) == n_gen
    for rows, width, new in gen_calls:
        assert new == 16384 and rows * (width + new) <= r.max_tokens_per_generate
    old = [(n, w) for n, w, grad in fwd if not grad]
    upd = [(n, w) for n, w, grad in fwd if grad]
    assert sum(n for n, _ in old) == n_gen and sum(n for n, _ in upd) == r.prompts_per_step * r.group_size
    assert all(n * w <= r.max_tokens_per_logprob for n, w in old)
    assert all(n * w <= t.max_tokens_per_forward and n <= t.micro_batch_size for n, w in upd)
    assert max(n * w for n, w in upd) > t.max_tokens_per_forward // 2   # the budget binds: long rows were there
    model.generate_calls.clear()
    tr.evaluate()
    assert sum(c[0] for c in model.generate_calls) == 60 * 32
    for rows, width, new in model.generate_calls:
        assert new == 32768 and rows * (width + new) <= r.max_tokens_per_generate
