#!/usr/bin/env bash
# DAPO + Entropy Ratio Clipping on DeepSeek-R1-Distill-Qwen-1.5B with verl 0.9.1 and ercref's ERC losses:
# the authors' multi-GPU recipe (Kwai-Klear/ERC, recipe/dapo/1_5B_perf_run_dapo_ours_math_szp_ae_dapo_erc_1_05.sh),
# value by value as transcribed with file:line in data/recipes/erc_authors_1.5b.json.
#
#   bash scripts/verl_erc_1.5b.sh                      # 8 nodes x 8 GPUs, as the authors (start the Ray cluster first)
#   NNODES=1 bash scripts/verl_erc_1.5b.sh              # one 8-GPU node (same recipe, 8x longer per step)
#   LOSS=erc_gppo CLIP_HIGH=0.2 bash scripts/verl_erc_1.5b.sh   # the GPPO + ERC run
#   bash scripts/verl_erc_1.5b.sh trainer.total_epochs=1        # extra Hydra overrides go last
#   bash scripts/verl_erc_1.5b.sh --print-overrides             # print the overrides and exit (no verl needed)
#
# Needs, in the Python environment this runs in (on every node): verl==0.9.1 with its GPU dependencies
# (vllm, flash-attn, ray, ...; see verl's install guide), ercref (`pip install -e .` from this repository)
# and math-verify. On first use the script applies scripts/verl_0.9.1_erc.patch to the installed verl
# (keeps the old-policy entropies and hands both entropies to ERC; idempotent). Data: the training set in
# verl format (TRAIN_FILE: Kwai-Klear/KlearReasoner-MathSub-30K as parquet / JSON Lines) and the authors'
# AIME24 / AIME25 files (data/aime/, see the README).
#
# Where this differs from the authors' run (not expressible in verl 0.9.1 + ercref, stated plainly):
# - positive-sample NLL (postive_loss_coeff=0.1, their script line 106): verl's policy-loss signature carries
#   no rewards, so neither verl nor ercref's verl plug-in adds it. This run is DAPO + ERC without that term.
# - dynamic sampling: verl 0.9.1's default (v1) trainer refills filtered groups until 128 are kept
#   (max_num_gen_batches is ignored there); the authors generated 256 prompts once and trained on the
#   survivors (at most 128).
# - evaluation responses: verl 0.9.1 has no separate validation length, so they are limited to
#   data.max_response_length (16K) where the authors allowed 32K (their fork's val_kwargs.max_response_len).
# This script has not been run on GPUs from this repository (no GPU here); its overrides are checked
# against verl 0.9.1's config by tests/test_integration_verl.py.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY=${PYTHON:-python}

MODEL=${MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}
TRAIN_FILE=${TRAIN_FILE:-$HOME/data/KlearReasoner-MathSub-30K/train.parquet}
AIME24=${AIME24:-$REPO/data/aime/aime960_math_verify_uni.json}
AIME25=${AIME25:-$REPO/data/aime/aime960_math_verify25_uni.json}
NNODES=${NNODES:-8}                    # authors: 8 nodes x 8 GPUs
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
OUT=${OUT:-$HOME/ckpts/ercref/verl_erc_dapo_1.5b}
LOSS=${LOSS:-erc_dapo}                 # ercref's losses registered in verl: erc_dapo, erc_gppo, erc_cispo, ...
CLIP_HIGH=${CLIP_HIGH:-0.28}           # 0.2 for GPPO + ERC
export ERCREF_BETA_LOW=${ERCREF_BETA_LOW:-0.05}    # ERC bounds 1 - 0.05 < H/H_old < 1 + 0.05 (authors: 0.95 / 1.05)
export ERCREF_BETA_HIGH=${ERCREF_BETA_HIGH:-0.05}

max_prompt_length=4096
max_response_length=16384
sp_size=4
max_token_len=$(((max_prompt_length + max_response_length) / sp_size))   # 5120 tokens per GPU
engine_len=$((max_prompt_length + 32768))                                # vLLM context, sized for 32K evaluation

overrides=(
  # data
  "data.train_files=$TRAIN_FILE"
  "data.val_files=[$AIME24,$AIME25]"
  data.prompt_key=prompt
  data.truncation=left
  "data.max_prompt_length=$max_prompt_length"
  "data.max_response_length=$max_response_length"
  data.train_batch_size=128
  data.gen_batch_size=256
  # advantages and dynamic sampling
  algorithm.adv_estimator=grpo
  algorithm.norm_adv_by_std_in_grpo=True
  algorithm.use_kl_in_reward=False
  algorithm.kl_ctrl.kl_coef=0.0
  algorithm.filter_groups.enable=True
  algorithm.filter_groups.metric=acc
  algorithm.filter_groups.max_num_gen_batches=1
  # reward: +1 / -1 / -0.5 without </think>, math-verify (ercref's judge)
  reward.reward_manager.name=dapo
  "reward.custom_reward_function.path=$HERE/verl_erc_reward.py"
  reward.custom_reward_function.name=compute_score
  # model
  "actor_rollout_ref.model.path=$MODEL"
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.model.use_remove_padding=True
  # loss: DAPO clip-higher with dual clip + ERC (ercref), token-mean
  "actor_rollout_ref.actor.policy_loss.loss_mode=$LOSS"
  actor_rollout_ref.actor.calculate_entropy=True
  actor_rollout_ref.actor.clip_ratio_low=0.2
  "actor_rollout_ref.actor.clip_ratio_high=$CLIP_HIGH"
  actor_rollout_ref.actor.clip_ratio_c=10.0
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.actor.entropy_coeff=0
  actor_rollout_ref.actor.use_kl_loss=False
  actor_rollout_ref.actor.kl_loss_coef=0.0
  # optimiser
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.optim.lr_warmup_steps=10
  actor_rollout_ref.actor.optim.warmup_style=constant
  actor_rollout_ref.actor.optim.weight_decay=0.1
  actor_rollout_ref.actor.grad_clip=1.0
  # update: 16-prompt minibatches (8 optimizer steps per rollout), token-budget micro-batches, SP 4, offload
  actor_rollout_ref.actor.ppo_mini_batch_size=16
  actor_rollout_ref.actor.use_dynamic_bsz=True
  "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$max_token_len"
  "actor_rollout_ref.actor.ulysses_sequence_parallel_size=$sp_size"
  actor_rollout_ref.actor.fsdp_config.param_offload=True
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=True
  # rollout: vLLM, 8 samples per prompt at temperature 1
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.top_p=1.0
  actor_rollout_ref.rollout.top_k=-1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.tensor_model_parallel_size=2
  actor_rollout_ref.rollout.enable_chunked_prefill=True
  "actor_rollout_ref.rollout.max_num_batched_tokens=$engine_len"
  "actor_rollout_ref.rollout.max_model_len=$engine_len"
  actor_rollout_ref.rollout.enforce_eager=False
  actor_rollout_ref.rollout.free_cache_engine=False
  actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
  "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=$max_token_len"
  # evaluation: avg@32 at temperature 0.6, top-p 0.95, every 10 steps, none before training
  actor_rollout_ref.rollout.val_kwargs.n=32
  actor_rollout_ref.rollout.val_kwargs.temperature=0.6
  actor_rollout_ref.rollout.val_kwargs.top_p=0.95
  actor_rollout_ref.rollout.val_kwargs.top_k=-1
  actor_rollout_ref.rollout.val_kwargs.do_sample=True
  trainer.val_before_train=False
  trainer.test_freq=10
  # run
  trainer.save_freq=10
  trainer.total_epochs=10
  "trainer.nnodes=$NNODES"
  "trainer.n_gpus_per_node=$GPUS_PER_NODE"
  trainer.project_name=ercref
  "trainer.experiment_name=erc_${LOSS}_1.5b"
  "trainer.logger=[console]"
  "trainer.default_local_dir=$OUT"
)

if [[ "${1:-}" == "--print-overrides" ]]; then
  printf '%s\n' "${overrides[@]}"
  exit 0
fi

"$PY" - <<'EOF'
import importlib.metadata as md, sys
v = md.version("verl")
if v != "0.9.1":
    sys.exit(f"verl {v} is installed; this script and scripts/verl_0.9.1_erc.patch are for verl 0.9.1")
import ercref.integrations.verl  # noqa: F401  (ercref must be importable by the Ray workers too)
EOF

SITE="$("$PY" -c 'import os, verl; print(os.path.dirname(os.path.dirname(verl.__file__)))')"
if ! grep -q "ercref (ERC)" "$SITE/verl/workers/engine_workers.py"; then
  echo "applying scripts/verl_0.9.1_erc.patch to $SITE/verl"
  patch -p1 --forward -d "$SITE" < "$HERE/verl_0.9.1_erc.patch"
fi

exec "$PY" -m verl.trainer.main_ppo "${overrides[@]}" "$@"
