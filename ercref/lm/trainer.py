"""The RL loop, in one readable file (nanoGPT / CleanRL style).

One training step (``Trainer.train_step``):

    1. take n prompts from the data stream; roll out G samples each (rollout.rollout), which also
       returns old log-probs and old entropies (and, with a KL term, the reference model's
       log-probs) from one no-grad pass over the same micro-batches
    2. score rewards (scoring.score_responses)                                       (N,) N = n*G
    3. group advantages A_i = (R_i - mean_g R) / (std_g R + 1e-6)   (ercref.group_advantages)
    4. optionally drop groups whose rewards are all equal          (ercref.dynamic_sampling_mask)
    5. split the kept groups into K minibatches of train.minibatch_prompts prompts and take K
       AdamW steps; minibatch k is k optimizer steps stale (staleness k = 0..K-1):
           logp, H = response_logprobs(policy)   (H has gradient only when the entropy bonus is on)
           loss    = ercref.compute_policy_loss(cfg.loss, logp, old_logp, A, mask, H, old_H, R, ref_logp,
                                                counts=batch_counts(minibatch))   (per micro-batch)
       gradient clipping; the LR scheduler (linear warm-up) steps once per training step, as verl.

``cfg.loss`` *is* an ``ercref.PolicyLossConfig``: the engine passes it to the core unchanged.
Metrics stay 0-d tensors through the step and are converted to numbers once per step
(``ercref.metrics_to_floats``: one host sync), then logged (metrics_log), then handed to callbacks.
Extend by callbacks, not subclasses (``Callback``).

Before RL (``start``, called by ``fit``): a fresh run refuses to overwrite a folder that holds
checkpoints unless ``overwrite=True``; ``sft.steps`` > 0 runs a supervised warm-up (sft.py: next-token
loss on correct answers, optionally stopped at an accuracy target; the cpu-tiny preset's model starts random); with ``loss.kl_coef`` > 0 the
policy at that point is frozen as the reference model. A resumed run restores all of this from
its newest loadable checkpoint and continues exactly as if it had never stopped. At the end the
policy is also written with ``save_pretrained`` (safetensors) to ``<out>/policy``.
"""
from __future__ import annotations

import json
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ercref import batch_counts, compute_policy_loss, dynamic_sampling_mask, group_advantages, metrics_to_floats

from . import checkpoint as ckpt
from .config import Config
from .config_rules import judge_task_caveat
from .data import load_task
from .evaluate import evaluate_policy
from .hardware import check_hardware, resolve_device
from .judge_pool import judge_pool
from .metrics_log import RunLog
from .models import frozen_copy, load_model
from .rollout import autocast_context, eos_ids, response_logprobs, rollout
from .rollout_batch import RolloutBatch, concat_rollouts
from .scoring import score_responses
from .sft import sft_warmup
from .step_metrics import rollout_metrics

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Callback:
    """Hooks the Trainer calls; override the ones you need (each defaults to doing nothing)."""

    def on_fit_start(self, trainer: Trainer) -> None: ...   # after start(), before the first step of fit()
    def on_sft_end(self, trainer: Trainer) -> None: ...     # after the supervised warm-up of a fresh run
    def on_minibatch_start(self, trainer: Trainer, minibatch: RolloutBatch, advantages: torch.Tensor,
                           staleness: int) -> None: ...     # before each optimizer step
    def on_minibatch(self, trainer: Trainer, record: dict) -> None: ...  # after each optimizer step; record
    #   ["staleness"] = k, metric values are 0-d tensors (no host sync until the step ends)
    def on_step_metrics(self, trainer: Trainer, record: dict) -> None: ...  # before the step's record is logged:
    #   a callback may add 0-d tensor metrics to it (converted in the step's one host sync)
    def on_step(self, trainer: Trainer, record: dict) -> None: ...  # after each training step, logged numbers
    def on_eval(self, trainer: Trainer, record: dict) -> None: ...  # after each evaluation
    def on_save(self, trainer: Trainer, path: Path) -> None: ...    # after each checkpoint is written


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_adamw(model: torch.nn.Module, o) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters as the OptimConfig ``o`` says: weight decay on the
    matrices (and on 1-D parameters too with ``o.decay_1d_params``), torch's default kernel for the
    device (CPU: a loop over tensors; CUDA: foreach) or, with ``o.fused``, the fused one (its speed
    against the others: benchmarks/bench_adamw.py)."""
    decayed = (lambda p: True) if o.decay_1d_params else (lambda p: p.dim() >= 2)
    decay = [p for p in model.parameters() if p.requires_grad and decayed(p)]
    no_decay = [p for p in model.parameters() if p.requires_grad and not decayed(p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=o.lr, betas=(o.beta1, o.beta2), eps=o.adam_eps,
                             fused=True if o.fused else None)


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 callbacks: list[Callback] | tuple = ()):
        check_hardware(cfg)   # before anything is built: CUDA, vLLM, the model's files
        self.cfg = cfg
        self.out = Path(out_dir)
        self.lock = ckpt.RunDirLock(self.out)   # one Trainer per folder; released when fit() ends
        self.ckpt_dir = self.out / "checkpoints"
        self.callbacks = list(callbacks)
        found = ckpt.list_checkpoints(self.ckpt_dir)
        if found and not resume and not overwrite:  # never delete someone's run without being told to
            raise FileExistsError(
                f"{self.out} already holds {len(found)} checkpoint(s) of a run (newest: step {found[-1][0]}). "
                "Continue it with --resume, or start over with --overwrite (deletes them), or pick another --out.")
        self.overwrite = overwrite
        if (caveat := judge_task_caveat(cfg)) is not None:
            warnings.warn(caveat, UserWarning, stacklevel=2)
        if cfg.reward.judge == "math":  # the judge's worker processes start in the background while the model loads
            judge_pool(cfg.reward.judge_workers).start()
        self.device = resolve_device(cfg)
        self._threads_before = torch.get_num_threads()
        if cfg.train.threads:  # restored at the end of fit()
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        self.model, self.tok = load_model(cfg.model.name, dtype=DTYPES[cfg.model.dtype],
                                          trust_remote_code=cfg.model.trust_remote_code, device=self.device,
                                          seed=cfg.model.init_seed)
        if cfg.model.gradient_checkpointing:  # recent transformers call it activation checkpointing
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.autocast = torch.bfloat16 if cfg.model.bf16_autocast else None
        self.train_set, self.eval_set = load_task(cfg.data)
        if not self.train_set:
            raise ValueError("the training set is empty")
        o = cfg.optim
        self.opt = build_adamw(self.model, o)
        warm = o.warmup_steps
        shift = 0 if o.warmup_from_zero else 1
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + shift) / warm) if warm else 1.0)
        self.step = 0            # completed training steps
        self.cursor = 0          # prompts consumed from the training stream
        self.ref_model = None    # frozen reference policy (loss.kl_coef > 0), set by start() / restore
        self.sft_done = cfg.sft.steps == 0   # a callback may load warm-up weights and set this
        self.started = False
        self.judge_stats: dict = {}
        self.vllm = None
        if cfg.rollout.backend == "vllm":  # in-process engine (ercref.lm.vllm_backend), synced below / in start()
            from .vllm_backend import VLLMGenerator
            self.vllm = VLLMGenerator.from_config(cfg, self.model, self.tok, self.device)
        self.resumed_from = None
        if resume:
            if overwrite:
                raise ValueError("resume=True (--resume: continue the run in the folder) and overwrite=True "
                                 "(--overwrite: delete it and start over) contradict each other; give one")
            # checkpoints that exist but none loads: NoLoadableCheckpoint naming each, nothing deleted
            loaded = ckpt.load_latest_valid(self.ckpt_dir, required=("step", "rng", "model", "optimizer",
                                                                     "scheduler", "cursor"))
            if loaded is None:
                if files := ckpt.run_files(self.out, cfg.to_dict()):
                    raise FileExistsError(
                        f"--resume: {self.ckpt_dir} holds no checkpoint to continue from, but {self.out} holds a "
                        f"run's files ({', '.join(p.name for p in files)}): a run stopped before its first "
                        "checkpoint, or one with train.save_checkpoints=false. Nothing was deleted. Start over "
                        "with --overwrite (deletes them), move them away, or pick another --out.")
                warnings.warn(f"--resume: no loadable checkpoint in {self.ckpt_dir}; starting from scratch", stacklevel=2)
            else:
                self.resumed_from = loaded[0]
                self._restore(loaded[1])
                if self.vllm is not None:  # the engine loaded the model folder: serve the resumed weights
                    self.vllm.sync_weights(self.model)
        elif not overwrite and (files := ckpt.run_files(self.out, cfg.to_dict())):  # a log, policy or other config.json
            raise FileExistsError(
                f"{self.out} already holds a run's files ({', '.join(p.name for p in files)}). Continue it with "
                "--resume, start over with --overwrite (deletes them), or pick another --out.")
        self.log = RunLog(self.out, cfg.train.tensorboard)

    def _emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook, lambda *a: None)(self, *args)

    # ------------------------------------------------------------------ before the first step
    def start(self) -> None:
        """Prepare the run folder and the policy (idempotent; ``fit`` calls it). Fresh run: delete
        an old run's checkpoints and log (only with overwrite=True: without it __init__ refused a
        folder holding them), write config.json, run the SFT warm-up, freeze the reference model.
        Resumed run: drop the log lines after the checkpoint's step."""
        if self.started:
            return
        self.check_memory()
        self.started = True
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        if self.resumed_from is not None:
            self.log.truncate_after(self.step)
            return
        if self.overwrite:  # the only place a run's files are deleted
            ckpt.delete_checkpoints(self.ckpt_dir)
            self.log.path.unlink(missing_ok=True)
        if not self.sft_done:
            sft_warmup(self)
            self.sft_done = True
            self._emit("on_sft_end")
        if self.cfg.loss.kl_coef > 0:
            self.ref_model = frozen_copy(self.model)
        if self.vllm is not None:  # serve the policy as training starts (after SFT / a callback's load), not the folder's
            self.vllm.sync_weights(self.model)

    # ------------------------------------------------------------------ memory
    def check_memory(self) -> None:
        """train.memory_check: the planner's estimate for this run (ercref.lm.memory.plan_run), printed
        with train.progress; "refuse" / "warn" when it does not fit the device; "off": no plan."""
        from .memory import enforce_plan, plan_run

        self.memory_plan = None
        if self.cfg.train.memory_check != "off":
            self.memory_plan = plan_run(self.cfg, self.model, self.tok, self.train_set, self.eval_set, self.device)
            enforce_plan(self.memory_plan, self.cfg.train.memory_check, self.cfg.train.progress)

    # ------------------------------------------------------------------ data
    def next_prompts(self, n: int) -> list[dict]:
        """The next n records of an endless stream: each epoch is a permutation seeded by (seed, epoch)."""
        N = len(self.train_set)
        out = []
        for _ in range(n):
            epoch, i = divmod(self.cursor, N)
            perm = np.random.RandomState([self.cfg.data.seed, epoch]).permutation(N)
            out.append(self.train_set[perm[i]])
            self.cursor += 1
        return out

    # ------------------------------------------------------------------ rollout + rewards
    def make_rollout(self, records: list[dict], group_size: int, temperature: float, top_p: float,
                     max_new_tokens: int) -> RolloutBatch:
        gen_fn = None
        if self.vllm is not None:
            gen_fn = lambda ids, am: self.vllm(ids, am, max_new_tokens, temperature, top_p)  # noqa: E731
        return rollout(self.model, self.tok, [r["prompt"] for r in records], [r["answer"] for r in records],
                       group_size, max_new_tokens, temperature, top_p, self.cfg.data.max_prompt_tokens,
                       self.cfg.rollout.generation_batch_size, self.cfg.model.fused_head, self.autocast, gen_fn,
                       ref_model=self.ref_model, max_tokens_per_generate=self.cfg.rollout.max_tokens_per_generate,
                       max_tokens_per_logprob=self.cfg.rollout.max_tokens_per_logprob or self.cfg.train.max_tokens_per_forward)

    def sample_responses(self, records: list[dict], n: int, seed: int, temperature: float | None = None,
                         top_p: float | None = None, max_new_tokens: int | None = None,
                         generator_fn=None) -> RolloutBatch:
        """``n`` responses per record from the current policy, without log-probs (evaluation, the drift
        probe's held-out contexts, the warm-up's accuracy checks), under a torch RNG forked and seeded
        with ``seed``: the training steps draw the same random numbers with or without this call.
        Sampling settings default to the rollout's (cfg.rollout)."""
        r = self.cfg.rollout
        with torch.random.fork_rng(devices=[] if not torch.cuda.is_available() else None):
            torch.manual_seed(seed)
            return rollout(self.model, self.tok, [x["prompt"] for x in records], [x["answer"] for x in records], n,
                           r.max_new_tokens if max_new_tokens is None else max_new_tokens,
                           r.temperature if temperature is None else temperature, r.top_p if top_p is None else top_p,
                           self.cfg.data.max_prompt_tokens, r.generation_batch_size, self.cfg.model.fused_head,
                           self.autocast, generator_fn, with_logprobs=False,
                           max_tokens_per_generate=r.max_tokens_per_generate)

    def score(self, batch: RolloutBatch, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, correct); the judge's counters (judge/timeouts, ...) accumulate until the next log line."""
        stats: dict = {}
        out = score_responses(batch.texts, batch.answers, self.cfg.reward, batch.response_lengths.cpu(), max_new_tokens,
                              stats=stats)
        for k, v in stats.items():
            self.judge_stats[k] = self.judge_stats.get(k, 0) + v
        return out

    def drain_judge_stats(self, prefix: str = "") -> dict:
        """The judge's counters since the last call; its wall time goes under time/ (not reproducible)."""
        out, self.judge_stats = self.judge_stats, {}
        return {("time/judge_s" if k == "judge/seconds" else prefix + k): v for k, v in out.items()}

    # ------------------------------------------------------------------ dynamic sampling
    def sample_batch(self) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Roll out one step's prompts -> (batch, rewards, correct, keep, {"prompts", "rounds"}).

        Without dynamic sampling: rollout.prompts_per_step prompts, every group trained (keep all True).
        With it (DAPO, as the authors' verl: generate advantage.gen_batch_prompts, keep the groups whose
        rewards (or accuracy) vary, up to rollout.prompts_per_step): rounds of gen_batch_prompts prompts
        are generated until prompts_per_step groups are kept or advantage.max_gen_batches rounds are
        done; then the step trains on what it kept (``keep`` marks those groups: the first kept groups in
        stream order, capped at prompts_per_step). ``batch`` holds every generated sequence (rounds
        concatenated), so the step's reward / length / entropy metrics cover everything generated.
        Every round advances the data cursor and the RNG as part of the step, so a resumed run (from
        the step's checkpoint) regenerates the same rounds."""
        r, a = self.cfg.rollout, self.cfg.advantage
        G, target = r.group_size, r.prompts_per_step
        n_gen = (a.gen_batch_prompts or target) if a.dynamic_sampling else target
        parts, kept, rounds = [], 0, 0
        while True:
            records = self.next_prompts(n_gen)
            batch = self.make_rollout(records, G, r.temperature, r.top_p, r.max_new_tokens)
            rewards, correct = self.score(batch, r.max_new_tokens)
            rounds += 1
            if not a.dynamic_sampling:
                parts.append((batch, rewards, correct, torch.ones_like(correct)))
                break
            signal = correct.float() if a.dynamic_sampling_metric == "accuracy" else rewards
            varied = dynamic_sampling_mask(signal, G).view(-1, G)[:, 0]
            take = varied & (varied.long().cumsum(0) <= target - kept)  # the first kept groups, up to the target
            kept += int(take.sum())
            parts.append((batch, rewards, correct, take.repeat_interleave(G)))
            if kept >= target or rounds >= a.max_gen_batches:
                break
        batch = parts[0][0] if len(parts) == 1 else concat_rollouts([p[0] for p in parts], self.tok.pad_token_id)
        # every per-row tensor of the step on the policy's device, moved once
        rewards, correct, keep = (torch.cat([p[i] for p in parts]).to(self.device) for i in (1, 2, 3))
        return batch, rewards, correct, keep, {"prompts": rounds * n_gen, "rounds": rounds}

    # ------------------------------------------------------------------ one training step
    def minibatches(self, keep: torch.Tensor) -> list[torch.Tensor]:
        """Row indices of each minibatch: kept groups in order, minibatch_prompts groups each."""
        G = self.cfg.rollout.group_size
        groups = keep.view(-1, G)[:, 0].nonzero().flatten()
        mp = self.cfg.train.minibatch_prompts
        out = []
        for i in range(0, len(groups), mp):
            g = groups[i : i + mp]
            out.append((g.unsqueeze(-1) * G + torch.arange(G, device=g.device)).flatten())
        return out

    def update_minibatch(self, mb: RolloutBatch, adv: torch.Tensor, rewards: torch.Tensor,
                         staleness: int = 1) -> dict[str, torch.Tensor]:
        """One optimizer step on one minibatch. Its gradient is accumulated over micro-batches of at
        most train.max_tokens_per_forward tokens and train.micro_batch_size rows (ercref.lm.batching);
        the objective weights each micro-batch by the minibatch's global counts (ercref.batch_counts),
        so the summed gradient is that of one backward over the whole minibatch.

        At staleness 0 the policy is still the rollout snapshot, so log pi_old and H(pi_old) are this
        forward's own values (detached): the ratio and the entropy ratio are exactly 1 whatever the
        dtype and kernels. ``logp/old_path_max_abs_diff`` logs how far the rollout pass's values were
        from them (a numerical difference between two forwards of the same weights).
        Gradients are freed after the step. Returns metrics as 0-d tensors (no host sync)."""
        from .batching import token_budget_batches, trim_rows

        dev, lc = self.device, self.cfg.loss
        P = mb.prompt_len
        rlen = mb.response_mask.sum(-1)
        counts = batch_counts(mb.response_mask, rewards)
        entropy_grad = lc.entropy_coef > 0   # the bonus differentiates H; otherwise H only builds the ERC mask
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        acc: dict[str, torch.Tensor] = {}
        max_diff = torch.zeros((), device=dev)
        path_diff = torch.zeros((), device=dev)
        micro = token_budget_batches(mb.attention_mask[:, :P].sum(-1), rlen, self.cfg.train.max_tokens_per_forward,
                                     self.cfg.train.micro_batch_size)
        for rows in micro:
            s, a, p, r = trim_rows(mb.sequences, mb.attention_mask, P, rows, rlen)
            idx = rows.to(dev)
            with autocast_context(dev, self.autocast):
                logp, ent = response_logprobs(self.model, s, a, p, self.cfg.rollout.temperature,
                                              self.cfg.model.fused_head, entropy_grad=entropy_grad)
            logp, ent = logp.float(), ent.float()
            rmask = mb.response_mask[idx, :r]    # columns past r are padding in every row of this micro-batch
            old, old_ent = mb.old_logp[idx, :r], mb.old_entropy[idx, :r]
            if staleness == 0:
                path_diff = torch.maximum(path_diff, ((logp.detach() - old).abs() * rmask).max())
                old, old_ent = logp.detach(), ent.detach()
            ref = mb.ref_logp[idx, :r] if mb.ref_logp is not None else None
            loss, m = compute_policy_loss(lc, logp, old, adv[idx], rmask, entropy=ent, old_entropy=old_ent,
                                          rewards=rewards[idx], ref_logp=ref, counts=counts)
            loss.backward()
            w_tok = rlen[idx].sum() / counts.tokens   # metrics: token-weighted means over micro-batches
            for k, v in m.items():
                acc[k] = acc.get(k, 0.0) + w_tok * v
            max_diff = torch.maximum(max_diff, ((logp.detach() - old).abs() * rmask).max())
        clip = self.cfg.optim.grad_clip
        params = [p for p in self.model.parameters() if p.requires_grad]
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        # ||theta_after - theta_before||_2, on device (no sync); train.log_update_norm: one weight copy
        before = [p.detach().clone() for p in params] if self.cfg.train.log_update_norm else None
        self.opt.step()
        if before is not None:
            for b, p in zip(before, params):
                b.sub_(p.detach())
            acc["optim/update_norm"] = torch.nn.utils.get_total_norm(before).float()
            del before
        self.opt.zero_grad(set_to_none=True)   # free the gradients: the rollout and evaluation do not need them
        self.model.eval()
        acc["grad/norm"] = gnorm.detach()
        acc["logp/max_abs_diff_old"] = max_diff
        if staleness == 0:
            acc["logp/old_path_max_abs_diff"] = path_diff
        acc["lr"] = torch.tensor(self.opt.param_groups[0]["lr"])
        acc["tokens"] = counts.tokens
        acc["batch/micro_batches"] = torch.tensor(float(len(micro)))
        return acc

    def train_step(self) -> dict:
        self.start()
        cfg, r = self.cfg, self.cfg.rollout
        step = self.step + 1
        t0 = time.perf_counter()
        batch, rewards, correct, keep, gen = self.sample_batch()
        adv = group_advantages(rewards, r.group_size, scale_by_std=cfg.advantage.scale_by_std)
        t_upd = time.perf_counter()
        mb_metrics = []
        for k, idx in enumerate(self.minibatches(keep)):
            mb = batch.select(idx)
            self._emit("on_minibatch_start", mb, adv[idx], k)
            m = self.update_minibatch(mb, adv[idx], rewards[idx], staleness=k)
            mb_metrics.append(m)
            self._emit("on_minibatch", {"kind": "minibatch", "step": step, "staleness": k, **m})
        if self.vllm is not None and mb_metrics:
            self.vllm.sync_weights(self.model)  # the next rollout samples from the updated policy (prefix cache reset)
        with warnings.catch_warnings():  # a step with no kept group takes no optimizer step
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.sched.step()
        t_end = time.perf_counter()
        rm = batch.response_mask
        out = {"kind": "step", "step": step, **rollout_metrics(batch, rewards, correct, keep, r.group_size,
                                                               eos_ids(self.model, self.tok)),
               "batch/minibatches": len(mb_metrics), "batch/gen_prompts": gen["prompts"], "batch/gen_rounds": gen["rounds"]}
        if mb_metrics:  # means over minibatches; entropy/old_mean above is over the whole batch
            for key in mb_metrics[0]:
                if key not in ("tokens", "entropy/old_mean"):
                    vals = [m[key] for m in mb_metrics if key in m]   # (staleness-0 metrics: the first only)
                    out[key] = sum(vals) / len(vals)
            out["lr"] = mb_metrics[-1]["lr"]
        self._emit("on_step_metrics", out)
        # the one host sync of the step: every minibatch record and the step record at once
        flat = metrics_to_floats({(j, k): v for j, m in enumerate(mb_metrics + [out]) for k, v in m.items() if k not in ("kind", "step")})
        rows: list[dict] = [{} for _ in range(len(mb_metrics) + 1)]
        for (j, k), v in flat.items():
            rows[j][k] = v
        for k, row in enumerate(rows[:-1]):
            self.log.write({"kind": "minibatch", "step": step, "staleness": k, **row})
        out = {"kind": "step", "step": step, **rows[-1]}
        for name in ("batch/seq_width", "batch/tokens", "batch/kept_groups", "batch/minibatches", "batch/gen_prompts",
                     "batch/gen_rounds"):
            out[name] = int(out[name])
        out.update(self.drain_judge_stats())
        out["time/generate_s"] = batch.time_generate_s
        out["time/old_logprob_s"] = batch.time_old_logprob_s
        out["time/update_s"] = t_end - t_upd
        out["time/step_s"] = t_end - t0
        out["perf/tokens_per_s"] = float(rm.sum()) / max(t_end - t0, 1e-9)
        out["perf/update_tokens_per_s"] = sum(row["tokens"] for row in rows[:-1]) / max(t_end - t_upd, 1e-9)
        self.step = step
        self.log.write(out)
        self._emit("on_step", out)
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """avg@k and pass@k on the eval set (ercref.lm.evaluate.evaluate_policy: HF generate, or the vLLM
        engine with rollout.backend=vllm); evaluating never changes the training trajectory."""
        return evaluate_policy(self)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "cursor": self.cursor, "config": self.cfg.to_dict()}
        if self.ref_model is not None:
            state["ref_model"] = self.ref_model.state_dict()
        path = ckpt.save_checkpoint(self.ckpt_dir, self.step, state, self.cfg.train.keep_last)
        self._emit("on_save", path)
        return path

    def _restore(self, state: dict) -> None:
        ckpt.load_model_state(self.model, state, self.resumed_from, self.cfg.model.name)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.cursor = state["cursor"]
        self.step = state["step"]
        self.sft_done = True
        if self.cfg.loss.kl_coef > 0:
            if "ref_model" not in state:
                raise ValueError("loss.kl_coef > 0 but the checkpoint has no reference model (the run was "
                                 "started without a KL term); resume with the run's own config")
            self.ref_model = frozen_copy(self.model)
            self.ref_model.load_state_dict(state["ref_model"])
        ckpt.set_rng_state(state["rng"])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict]:
        """Train to cfg.train.steps. However it ends (done, an error, a KeyboardInterrupt in a notebook), the
        run folder's lock is released and torch's thread count restored, so the same cell can run again."""
        try:
            return self._fit()
        finally:
            self.lock.release()
            torch.set_num_threads(self._threads_before)

    def _fit(self) -> list[dict]:
        t = self.cfg.train
        self.start()
        self._emit("on_fit_start")
        history = []
        if self.step == 0 and t.eval_before_training:
            self.evaluate()
        bar = None
        if t.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=t.steps, initial=self.step, desc="ercref", dynamic_ncols=True)
        while self.step < t.steps:
            rec = self.train_step()
            history.append(rec)
            last = self.step == t.steps
            if (t.eval_every and self.step % t.eval_every == 0) or last:
                self.evaluate()
            if t.save_checkpoints and ((t.save_every and self.step % t.save_every == 0) or last):
                self.save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{rec['reward/mean']:.3f}", acc=f"{rec['reward/accuracy']:.2f}",
                                erc=f"{rec.get('erc/clip_frac', 0):.3f}")
        if bar is not None:
            bar.close()
        if t.save_policy:
            ckpt.save_policy(self.model, self.tok, self.out)
        self.log.close()
        return history


def run(cfg: Config, out_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False,
        callbacks: list[Callback] | tuple = ()) -> list[dict]:
    return Trainer(cfg, out_dir, resume, overwrite, callbacks).fit()
