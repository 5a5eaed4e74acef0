"""Memory-bounded by construction (ercref.lm.memory): token-budget micro-batches in generation,
evaluation, the old-log-prob pass and the update (exact, in the original row order), the paper
preset's calls under their budgets (a spy on every generate / forward call), and the planner
(its table, its refusal naming the setting, and, slow, its estimate against measured peak RSS)."""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ercref import PolicyLossConfig
from ercref.lm import memory as M
from ercref.lm.config import make_config
from ercref.lm.models import build_tiny_model
from ercref.lm.rollout import _old_logprobs, encode_prompts, eos_ids, generate_hf, response_mask_from_tokens, rollout
from ercref.lm.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
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
    batches = M.token_budget_batches(p, r, budget, max_rows)
    rows = torch.cat(batches).tolist()
    assert sorted(rows) == list(range(len(lens)))                       # every row exactly once
    for b in batches:
        cost = len(b) * int(p[b].max() + r[b].max())
        assert len(b) == 1 or not budget or cost <= budget               # only a lone row may exceed it
        assert not max_rows or len(b) <= max_rows
    whole = len(lens) * int(p.max() + r.max())
    if (not budget or whole <= budget) and (not max_rows or len(lens) <= max_rows):
        assert len(batches) == 1 and batches[0].tolist() == list(range(len(lens)))   # original order, one call
    else:                                                                # split: longest rows first
        total = (p + r)[torch.cat(batches)]
        assert (total[:-1] >= total[1:]).all()


def test_token_budget_batches_bad_input():
    with pytest.raises(ValueError, match="max_tokens"):
        M.token_budget_batches([1], [1], -1)
    with pytest.raises(ValueError, match="one entry per row"):
        M.token_budget_batches([1, 2], [1], 10)
    assert M.token_budget_batches([], [], 10) == []


def test_trim_rows_keeps_every_real_token():
    # prompts left-padded to P=5, responses right-padded to R=4 (pad id 0)
    seq = torch.tensor([[0, 0, 7, 8, 9, 1, 2, 0, 0],
                        [0, 0, 0, 7, 8, 1, 2, 3, 0],
                        [5, 6, 7, 8, 9, 1, 0, 0, 0]])
    am = (seq != 0).long()
    rlen = torch.tensor([2, 3, 1])
    s, a, p, r = M.trim_rows(seq, am, 5, torch.tensor([0, 1]), rlen)
    assert (p, r) == (3, 3) and s.tolist() == [[7, 8, 9, 1, 2, 0], [0, 7, 8, 1, 2, 3]]
    assert a.tolist() == [[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    s, a, p, r = M.trim_rows(seq, am, 5, torch.tensor([2]), rlen)
    assert (p, r) == (5, 1) and s.tolist() == [[5, 6, 7, 8, 9, 1]]


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
    torch.testing.assert_close(full[0], b.old_logp * 0 + full[0])   # shapes (N, R)


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
    from ercref.lm.memory import token_budget_batches
    parts = token_budget_batches(b.attention_mask[:, :b.prompt_len].sum(-1), rlen.long(), 3 * W)
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


# ============================================================================= the planner
def test_known_model_shapes_count_their_parameters(tiny):
    assert M.KNOWN_MODELS["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"].n_params == 1_777_088_000
    assert M.KNOWN_MODELS["smollm2-135m-instruct"].counted_params == 134_515_008
    model, _ = tiny
    assert M.model_shape("tiny").counted_params == M.ModelShape.from_model(model).n_params == 1_062_528
    with pytest.raises(ValueError, match="does not know this model"):
        M.model_shape("someone/unknown-model-xyz")


def _paper(*overrides):
    return make_config("gpu-paper-1.5b", validate=False, overrides=list(overrides))


@pytest.mark.parametrize("device", ["H100 80GB", "H200 141GB"])
def test_paper_preset_fits_an_h100_and_an_h200(device):
    plan = M.plan_memory(_paper(), device_bytes=M.DEVICE_BYTES[device], device_name=device, eval_prompts=60)
    assert plan.fits, plan.table()
    assert plan.check() is plan
    text = plan.table()
    assert device in text and "AdamW states" in text and "KV cache" in text and "fits" in text
    assert set(plan.phases) == {"generate", "evaluate", "old log-probs", "update"}
    assert plan.total_bytes == max(plan.phase_total(p) for p in plan.phases)


def test_unbounded_paper_config_is_refused_naming_the_settings():
    plan = M.plan_memory(_paper("rollout.max_tokens_per_generate=0", "rollout.max_tokens_per_logprob=0",
                                "train.max_tokens_per_forward=0"),
                         device_bytes=M.DEVICE_BYTES["H100 80GB"], device_name="H100 80GB", eval_prompts=60)
    assert not plan.fits and plan.total_bytes > 10 * M.DEVICE_BYTES["H100 80GB"]
    with pytest.raises(ValueError) as err:
        plan.check()
    msg = str(err.value)
    for name in ("rollout.max_tokens_per_generate", "rollout.max_tokens_per_logprob", "train.max_tokens_per_forward"):
        assert name in msg
    plan = M.plan_memory(_paper("model.gradient_checkpointing=false", "train.max_tokens_per_forward=0"),
                         device_bytes=M.DEVICE_BYTES["H100 80GB"], eval_prompts=60)
    assert "turn on model.gradient_checkpointing" in plan.advice["update"]
    small = M.plan_memory(_paper(), device_bytes=20 * M.GiB, eval_prompts=60)
    assert not small.fits and "smaller model" in small.message()      # weights + AdamW alone are too much


def test_planner_is_monotone_in_its_budgets_and_checkpointing():
    dev = M.DEVICE_BYTES["H200 141GB"]
    a = M.plan_memory(_paper("train.max_tokens_per_forward=65536"), device_bytes=dev)
    b = M.plan_memory(_paper("train.max_tokens_per_forward=131072", "train.micro_batch_size=0"), device_bytes=dev)
    c = M.plan_memory(_paper("train.max_tokens_per_forward=65536", "model.gradient_checkpointing=false"), device_bytes=dev)
    assert a.phases["update"] < b.phases["update"] and a.phases["update"] < c.phases["update"]
    g1 = M.plan_memory(_paper("rollout.max_tokens_per_generate=524288"), device_bytes=dev)
    g2 = M.plan_memory(_paper("rollout.max_tokens_per_generate=1048576"), device_bytes=dev)
    assert g1.phases["generate"] < g2.phases["generate"]
    kl = M.plan_memory(_paper("loss.kl_coef=0.01"), device_bytes=dev)
    assert kl.persistent_bytes - a.persistent_bytes == M.KNOWN_MODELS["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"].n_params * 4


def test_suggest_budgets_are_the_largest_that_fit():
    dev = M.DEVICE_BYTES["H100 80GB"]
    cfg = _paper()
    got = M.suggest_budgets(cfg, dev, eval_prompts=60)
    assert got["train.max_tokens_per_forward"] >= cfg.train.max_tokens_per_forward
    over = {k: v + 1024 for k, v in got.items()}
    plan_ok = M.plan_memory(_paper(*[f"{k}={v}" for k, v in got.items()]), device_bytes=dev, eval_prompts=60)
    plan_over = M.plan_memory(_paper(*[f"{k}={v}" for k, v in over.items()]), device_bytes=dev, eval_prompts=60)
    assert plan_ok.fits and not plan_over.fits


def test_budget_must_hold_one_longest_row():
    with pytest.raises(ValueError, match=r"train\.max_tokens_per_forward=100 cannot hold one longest row"):
        make_config("cpu-tiny", overrides=["train.max_tokens_per_forward=100"])
    with pytest.raises(ValueError, match=r"rollout\.max_tokens_per_generate"):
        make_config("cpu-tiny", overrides=["data.max_prompt_tokens=32", "train.eval_max_new_tokens=64",
                                           "rollout.max_tokens_per_generate=90"])
    with pytest.raises(ValueError, match=r"train\.memory_check"):
        make_config("cpu-tiny", overrides=["train.memory_check=maybe"])


def test_trainer_refuses_a_run_that_cannot_fit(tmp_path, monkeypatch, capsys):
    """train.memory_check: refuse (ValueError naming the setting, before anything runs), warn, off;
    with train.progress the plan is printed."""
    monkeypatch.setattr(M, "detect_device", lambda device=None: ("a 64 MiB test device", 64 * 2**20))
    base = SMALL + ["train.steps=1"]
    tr = Trainer(make_config("cpu-tiny", overrides=base + ["train.memory_check=refuse", "train.progress=true"]),
                 tmp_path / "a")
    with pytest.raises(ValueError, match=r"a 64 MiB test device.*lower train\.max_tokens_per_forward"):
        tr.start()
    assert "memory plan" in capsys.readouterr().out and not (tmp_path / "a" / "config.json").exists()
    tr = Trainer(make_config("cpu-tiny", overrides=base + ["train.memory_check=warn"]), tmp_path / "b")
    with pytest.warns(UserWarning, match="64 MiB test device"):
        tr.start()
    tr = Trainer(make_config("cpu-tiny", overrides=base + ["train.memory_check=off"]), tmp_path / "c")
    tr.start()
    assert tr.memory_plan is None


def test_step_time_estimate_follows_its_assumptions():
    cfg = _paper()
    a = M.estimate_step_seconds(cfg, tflops=400)
    b = M.estimate_step_seconds(cfg, tflops=800)
    assert a.seconds["update"] == pytest.approx(2 * b.seconds["update"])
    assert a.seconds["old log-probs"] == pytest.approx(2 * b.seconds["old log-probs"])
    assert a.total > 0 and "min per step" in a.text()
    v = M.estimate_step_seconds(_paper("rollout.backend=vllm"), tflops=400)
    assert v.seconds["generate"] < a.seconds["generate"]                # HF decodes call after call
    assert a.flops["update"] == pytest.approx(a.flops["old log-probs"] * 4 / 2)   # 4 passes (checkpointing), half the rows


# ============================================================================= measured on CPU (slow)
_PROBE = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from ercref import group_advantages
    from ercref.lm.config import make_config
    from ercref.lm.memory import measure_peak_rss, plan_memory
    from ercref.lm.rollout import RolloutBatch, _old_logprobs, eos_ids
    from ercref.lm.trainer import Trainer

    preset, out, rows, P, R, *extra = sys.argv[1:]
    rows, P, R = int(rows), int(P), int(R)
    cfg = make_config(preset, overrides=[
        "train.progress=false", "sft.steps=0", "train.memory_check=off", "train.device=cpu", "loss.nll_coef=0.1",
        f"data.max_prompt_tokens={P}", f"rollout.max_new_tokens={R}", f"rollout.group_size={rows}",
        "rollout.prompts_per_step=1", "train.minibatch_prompts=1", *extra])
    tr = Trainer(cfg, out, overwrite=True)
    V = tr.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(4, V, (rows, P + R), generator=g)
    for e in eos_ids(tr.model, tr.tok):
        seq[seq == e] = 5
    am = torch.ones(rows, P + R, dtype=torch.long)
    am[0, :2] = 0                                   # one left-padded row: the padding mask is built
    seq[0, :2] = tr.tok.pad_token_id
    rmask = torch.ones(rows, R, dtype=torch.bool)
    old, ent, _ = _old_logprobs(tr.model, seq, am, P, 1.0, rmask, 0, True, None)
    batch = RolloutBatch(seq, am, rmask, old, ent, P, [""] * rows, [""] * rows, [""] * rows)
    rew = torch.tensor([1.0, 0.0] * (rows // 2))
    adv = group_advantages(rew, rows)
    tr.update_minibatch(batch, adv, rew)           # warm-up: AdamW states exist from here on
    delta, _ = measure_peak_rss(lambda: tr.update_minibatch(batch, adv, rew))
    peak = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    plan = plan_memory(cfg, device_bytes=64 * 2**30, model=tr.model)
    print(json.dumps({"measured_step": delta, "planned_step": plan.phases["update"], "measured_total": peak,
                      "planned_total": plan.phase_total("update")}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("preset,rows,P,R,extra", [
    ("cpu-tiny", 32, 16, 16, []),
    ("cpu-tiny", 32, 16, 16, ["model.gradient_checkpointing=true"]),
    ("cpu-smollm2", 32, 48, 16, []),
    ("cpu-smollm2", 32, 48, 16, ["model.gradient_checkpointing=true"]),
    ("cpu-smollm2", 32, 48, 16, ["train.max_tokens_per_forward=1024"]),
], ids=["tiny", "tiny-ckpt", "smollm2", "smollm2-ckpt", "smollm2-2-micro"])
def test_planner_matches_measured_peak_rss_of_an_update_step(tmp_path, preset, rows, P, R, extra):
    """In a fresh process: peak RSS (VmHWM) of the second update step (AdamW states allocated),
    the whole process and the rise above the RSS just before the step, against the planner's update
    phase (with and without persistent memory): within +-25 %. glibc's mmap threshold is fixed at
    64 KiB so freed tensors go back to the OS and RSS tracks live memory (with glibc's default
    heap, RSS also keeps freed heap pages: up to ~2x the live set in the checkpointed case)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, preset, str(tmp_path), str(rows), str(P), str(R), *extra],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind in ("step", "total"):
        ratio = res[f"planned_{kind}"] / res[f"measured_{kind}"]
        assert 0.75 <= ratio <= 1.25, (kind, ratio, res)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_planning_a_gpu_config_on_cpu_asks_for_the_device_size():
    with pytest.raises(ValueError, match="pass device_bytes"):
        M.plan_memory(_paper())
