"""Named starting points of a run (``--preset NAME``). Each preset is the changes it makes to the
defaults of ``ercref.lm.config``, in the layout of a config file (sections of fields);
``ercref.lm.config.PRESETS`` holds them built and validated as ``Config`` objects.

    cpu-tiny         seconds: the ~1M-parameter tiny model on single-digit addition. It starts random,
                     so a short supervised warm-up (sft) brings its accuracy to where rewards vary
                     within a group; 20 RL steps follow.
    cpu-smollm2      minutes: SmolLM2-135M-Instruct on 4-option multiple-choice single-digit addition
                     ("answer with the letter"); a format reward (0.2 for a bare letter) gives an early
                     signal. Run much longer and the policy collapses onto one letter.
    gpu-paper-1.5b   the paper's recipe for DeepSeek-R1-Distill-Qwen-1.5B, value by value as the authors'
                     script (data/recipes/erc_authors_1.5b.json). The authors ran it on 64 GPUs; on one
                     GPU a step takes hours (python -m ercref.study.gpu_plan prints the planner's
                     estimate). For that scale use verl (scripts/verl_erc_1.5b.sh). Needs CUDA.
    gpu-1x80gb-1.5b  the same model and recipe sized for one 80 GB GPU: vLLM colocated, 32 prompts x 8
                     samples per step, responses <= 4K tokens, 200 steps.
"""
from __future__ import annotations

# The authors' evaluation files (github.com/Kwai-Klear/ERC, data/aime960_math_verify_uni.json = AIME24,
# data/aime960_math_verify25_uni.json = AIME25; 30 records each), stored under data/aime/ (a relative path
# is looked up from the working directory, then from the repository root).
AUTHORS_EVAL_FILES = {"aime24": "data/aime/aime960_math_verify_uni.json",
                      "aime25": "data/aime/aime960_math_verify25_uni.json"}

CPU_TINY = {
    "model": {"name": "tiny"},
    "data": {"task": "arith", "level": 1, "style": "bare", "num_train": 2000, "num_eval": 32},
    "rollout": {"prompts_per_step": 16, "group_size": 8, "max_new_tokens": 4, "temperature": 1.0},
    "reward": {"judge": "exact", "scheme": "binary"},
    "loss": {"loss": "dapo", "erc": True, "beta_low": 0.05, "beta_high": 0.05, "nll_coef": 0.1},
    "optim": {"lr": 3e-4, "warmup_steps": 0, "grad_clip": 1.0},
    "sft": {"steps": 120, "batch_size": 64, "lr": 3e-3},
    # one thread: the tiny model's small GEMMs gain nothing from a second one, which only competes
    # with other work on a busy machine
    "train": {"steps": 20, "minibatch_prompts": 4, "save_every": 5, "eval_k": 4, "device": "cpu", "threads": 1},
}

CPU_SMOLLM2 = {
    "model": {"name": "smollm2-135m-instruct"},
    "data": {"task": "mc-arith", "level": 1, "style": "instruct", "num_train": 1000, "num_eval": 32,
             "system_prompt": "Answer briefly."},       # shorter than SmolLM2's default system prompt
    "rollout": {"prompts_per_step": 8, "group_size": 4, "max_new_tokens": 12, "temperature": 1.0},
    "reward": {"judge": "choice", "scheme": "format", "format_reward": 0.2},
    "loss": {"loss": "dapo", "erc": True, "beta_low": 0.05, "beta_high": 0.05, "nll_coef": 0.1},
    "optim": {"lr": 1e-5, "warmup_steps": 2, "weight_decay": 0.0, "grad_clip": 1.0},
    "train": {"steps": 16, "minibatch_prompts": 4, "save_every": 8, "keep_last": 1, "eval_k": 2, "device": "cpu"},
}

# The paper's recipe (arXiv 2512.05591, section 4 and the authors' scripts), line by line.
GPU_PAPER_1_5B = {
    # fp32 master weights + bf16 autocast (bf16 weights would round away 1e-6 updates)
    "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "dtype": "float32", "bf16_autocast": True,
              "gradient_checkpointing": True},
    # evaluation: the authors' AIME24 / AIME25 files (bare problems, verl JSON Lines), see the README
    "data": {"task": "verl", "path": "Kwai-Klear/KlearReasoner-MathSub-30K", "split": "train", "eval_path": None,
             "eval_paths": dict(AUTHORS_EVAL_FILES), "max_prompt_tokens": 4096},
    "rollout": {"backend": "hf",                               # "vllm" for speed when installed
                "prompts_per_step": 128, "group_size": 8,      # 128 prompts x 8 samples
                "max_new_tokens": 16384, "temperature": 1.0, "top_p": 1.0,
                "vllm_gpu_memory_utilization": 0.6,            # the authors' share (with FSDP offload, TP 2)
                # token budgets that the memory planner (ercref.lm.memory) fits on an 80 GB GPU
                "max_tokens_per_generate": 1_048_576,          # 51 rows x 20K (training), 28 rows x 36K (eval) per call
                "max_tokens_per_logprob": 262_144},            # 12 rows x 20K per no-grad forward
    "reward": {"judge": "math", "scheme": "paper", "correct": 1.0, "wrong": -1.0, "no_think_close": -0.5,
               "require_think": True, "overlong_shaping": False, "overlong_buffer": 4096},
    # generate 256 prompts, keep the first 128 whose accuracy varies; one round (short steps train on what they kept)
    "advantage": {"scale_by_std": True, "dynamic_sampling": True, "dynamic_sampling_metric": "accuracy",
                  "gen_batch_prompts": 256, "max_gen_batches": 1},
    "loss": {"loss": "dapo", "loss_kwargs": {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 10.0},
             "erc": True, "beta_low": 0.05, "beta_high": 0.05, "nll_coef": 0.1, "agg_mode": "token-mean"},
    "optim": {"lr": 1e-6, "warmup_steps": 10, "weight_decay": 0.1, "grad_clip": 1.0,
              "warmup_from_zero": True, "decay_1d_params": True},  # the authors' verl fork (see data/recipes)
    "train": {"minibatch_prompts": 16,                         # -> 8 optimizer steps per rollout batch
              "log_update_norm": False,                        # its weight copy would cost 6 GB at 1.5B
              "micro_batch_size": 8, "max_tokens_per_forward": 65_536,  # <= 3 rows x 20K per forward/backward
              "steps": 1000, "save_every": 10, "eval_every": 10, "eval_before_training": False,
              "eval_k": 32, "eval_temperature": 0.6, "eval_top_p": 0.95, "eval_max_new_tokens": 32768,
              "device": "cuda", "require_cuda": True, "progress": True},
}

# The paper's recipe scaled to finish on one 80 GB GPU: vLLM colocated with training, 32 prompts x 8
# samples per step (the paper's 8 optimizer steps per rollout batch kept: minibatches of 4 prompts),
# responses <= 4K tokens, 200 steps. ercref.study.experiments.KNOWN_DIFFERENCES says why each value differs.
GPU_1X80GB_1_5B = {
    **GPU_PAPER_1_5B,
    "data": {**GPU_PAPER_1_5B["data"], "max_prompt_tokens": 1024},
    "rollout": {**GPU_PAPER_1_5B["rollout"], "backend": "vllm", "prompts_per_step": 32, "max_new_tokens": 4096,
                "vllm_gpu_memory_utilization": 0.35,           # ~28 GB of 80: weights + KV cache
                "vllm_sleep": True,                            # freed while the policy trains
                "max_tokens_per_generate": 65536,              # HF fallback and evaluation calls
                "max_tokens_per_logprob": 32768},
    # over-generate 2x and keep the groups whose rewards differ, as the authors' 256 -> 128
    "advantage": {**GPU_PAPER_1_5B["advantage"], "gen_batch_prompts": 64},
    "train": {**GPU_PAPER_1_5B["train"], "minibatch_prompts": 4, "max_tokens_per_forward": 16384, "steps": 200,
              "eval_every": 25, "eval_k": 8, "eval_max_new_tokens": 8192},
}

DEFINITIONS: dict[str, dict] = {"cpu-tiny": CPU_TINY, "cpu-smollm2": CPU_SMOLLM2,
                                "gpu-paper-1.5b": GPU_PAPER_1_5B, "gpu-1x80gb-1.5b": GPU_1X80GB_1_5B}
