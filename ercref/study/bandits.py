"""Toy bandits where PPO-clip's blind spot is visible, trained with the SAME loss code as the LM
trainer (``ercref.compute_policy_loss``). Pure torch.

Each sample is a one-token response: a context c (the "prompt") and an action a ~ pi(.|c)
(the "token"), so every per-token tensor has shape (B, 1) with B = contexts_per_batch * group_size.

Environments (a fixed reward table R (C, K) with values in [0, 1]):
  * K-armed bandit:   C = 1 context, K actions (e.g. 1000), rewards i.i.d. U(0, 1).
  * contextual bandit: C contexts whose rewards share a low-rank structure
                       R[c, a] = minmax( <x_c, y_a> / sqrt(rank) ).

Policies (logits (N, K) for N contexts, pi = softmax(logits / temperature)):
  * TabularPolicy:          logits[c] = Z[c]            (one free row per context: no sharing)
  * SharedEmbeddingPolicy:  logits[c] = U[c] @ V.T + b  (V and b shared by every context)
    With shared V, an update at context c moves the probabilities of actions that were never
    sampled, at contexts that were never sampled: the LLM situation in miniature.

One *update* (one rollout batch, :func:`bandit_update`):
  1. snapshot forward (no grad): logits of the sampled contexts -> actions a ~ pi_old;
     old_logp = log pi_old(a|c) and old_entropy = H(pi_old(.|c)) from that ONE forward;
  2. rewards R[c, a] -> group advantages (ercref.group_advantages, groups = samples of one context);
  3. shuffle the B samples, split into ``minibatches`` parts, and take one optimizer step per part
     on ``ercref.compute_policy_loss`` (the first step is on-policy, the rest increasingly stale);
  4. measure the drift over ALL contexts and ALL actions, which PPO-clip never looks at:
        KL_c   = sum_a pi_old(a|c) log(pi_old(a|c) / pi_new(a|c))       (per context; mean and max)
        moved  = sum_{a not sampled at c} |pi_new(a|c) - pi_old(a|c)|   (mean over contexts)
     and whether the samples outside ERC's band sit at the contexts that drifted most (detector_counts).

Controls (control_runs, notebook 01): does ERC restrain drift PPO-clip cannot see, or only shorten
the step? Per seed, four arms: no ERC; ERC; "matched step" (no ERC at the lr whose mean parameter
step matches ERC's, matched_step_run); "random mask" (as many samples stopped as ERC's band would
clip, drawn at random: PolicyLossConfig.erc_mask="random"). No loss math here: every arm goes through
ercref.compute_policy_loss.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from ercref._checks import check_fraction, check_positive
from ercref.advantages import group_advantages
from ercref.entropy import logprobs_and_entropy
from ercref.erc import erc_masks
from ercref.metrics import metrics_to_floats
from ercref.objective import PolicyLossConfig, compute_policy_loss

Tensor = torch.Tensor
ENVS = ("k_armed", "contextual")
POLICIES = ("tabular", "shared")
OPTIMIZERS = ("sgd", "adam")


# ----------------------------------------------------------------------------- config
@dataclass
class BanditConfig:
    """Every hyper-parameter of a toy run, by name. ``seeds`` is what :func:`run_seeds` runs."""
    env: str = "contextual"            # "k_armed" (C = 1) or "contextual"
    policy: str = "shared"             # "shared" (U V^T + b) or "tabular" (free logits per context)
    n_contexts: int = 64               # C (forced to 1 for env="k_armed")
    n_actions: int = 1000              # K, the "vocabulary"
    embed_dim: int = 16                # width of U, V for policy="shared"
    reward_rank: int = 4               # rank of the contextual reward structure
    init_scale: float = 1.0            # std of the initial logits (sets the initial entropy)
    contexts_per_batch: int = 16       # prompts per rollout batch (k_armed: 1)
    group_size: int = 8                # samples per context (GRPO group)
    updates: int = 60                  # rollout batches
    minibatches: int = 4               # optimizer steps per rollout batch
    optimizer: str = "sgd"             # "sgd" or "adam" (state persists across updates)
    lr: float = 30.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    loss: str = "ppo"                  # a name in ercref.LOSSES
    eps: float = 0.2                   # eps_low = eps_high = eps for the clip-based losses
    loss_kwargs: dict = field(default_factory=dict)  # extra overrides (e.g. clip_ratio_c)
    erc: bool = False                  # wrap the loss with Entropy Ratio Clipping
    erc_mask: str = "entropy-ratio"    # "random": the random-mask control (as many samples stopped, at random)
    beta_low: float = 0.05
    beta_high: float = 0.05
    nll_coef: float = 0.0              # positive-sample NLL (rewards here are in [0, 1], rarely exactly 1)
    temperature: float = 1.0
    env_seed: int = 0                  # the reward table (the same task for every seed)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # policy init + sampling + minibatch shuffles

    def __post_init__(self):
        for name, allowed in (("env", ENVS), ("policy", POLICIES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_contexts", "n_actions", "embed_dim", "reward_rank", "contexts_per_batch",
                     "group_size", "updates", "minibatches"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.n_actions < 2:
            raise ValueError(f"n_actions must be >= 2, got {self.n_actions}")
        for name in ("lr", "temperature", "init_scale", "eps", "beta_high"):
            check_positive(name, getattr(self, name))
        check_fraction("beta_low", self.beta_low)  # the ERC band is measured even when ERC is off
        if self.env == "k_armed":
            self.n_contexts, self.contexts_per_batch = 1, 1
        if self.contexts_per_batch > self.n_contexts:
            raise ValueError(f"contexts_per_batch ({self.contexts_per_batch}) must not exceed n_contexts ({self.n_contexts})")
        if self.minibatches > self.batch_size:
            raise ValueError(f"minibatches ({self.minibatches}) must not exceed the batch size ({self.batch_size})")
        if len(self.seeds) == 0:
            raise ValueError("seeds must name at least one seed")
        self.loss_config()  # validates loss name, eps, betas

    @property
    def batch_size(self) -> int:
        return self.contexts_per_batch * self.group_size

    def loss_config(self) -> PolicyLossConfig:
        """The ercref objective this run optimises (the same dataclass the LM trainer uses)."""
        kwargs = dict(self.loss_kwargs)
        if self.loss not in ("pg",):
            kwargs.setdefault("eps_low", self.eps)
            kwargs.setdefault("eps_high", self.eps)
        return PolicyLossConfig(loss=self.loss, loss_kwargs=kwargs, erc=self.erc, erc_mask=self.erc_mask,
                                beta_low=self.beta_low, beta_high=self.beta_high, nll_coef=self.nll_coef,
                                track_zero_grad=False)


# ----------------------------------------------------------------------------- environments
@dataclass
class Bandit:
    """A fixed reward table. rewards: (C, K) float in [0, 1]."""
    rewards: Tensor

    @property
    def n_contexts(self) -> int:
        return self.rewards.shape[0]

    @property
    def n_actions(self) -> int:
        return self.rewards.shape[1]

    def reward(self, contexts: Tensor, actions: Tensor) -> Tensor:
        """R[c, a] for (N,) contexts and (N,) actions -> (N,)."""
        return self.rewards[contexts, actions]

    def expected_reward(self, probs: Tensor) -> Tensor:
        """E_{a ~ pi(.|c)} R[c, a] for probs (C, K) -> (C,)."""
        return (probs * self.rewards).sum(-1)


def make_bandit(cfg: BanditConfig) -> Bandit:
    g = torch.Generator().manual_seed(cfg.env_seed)
    C, K = cfg.n_contexts, cfg.n_actions
    if cfg.env == "k_armed":
        return Bandit(torch.rand(1, K, generator=g))
    x = torch.randn(C, cfg.reward_rank, generator=g)
    y = torch.randn(K, cfg.reward_rank, generator=g)
    s = x @ y.T / math.sqrt(cfg.reward_rank)
    lo, hi = s.min(-1, keepdim=True).values, s.max(-1, keepdim=True).values
    return Bandit((s - lo) / (hi - lo))


# ----------------------------------------------------------------------------- policies
class TabularPolicy(nn.Module):
    """logits[c] = Z[c]; Z (C, K). Contexts share nothing."""

    def __init__(self, n_contexts: int, n_actions: int, init_scale: float, generator: torch.Generator):
        super().__init__()
        self.logits = nn.Parameter(init_scale * torch.randn(n_contexts, n_actions, generator=generator))

    def forward(self, contexts: Tensor) -> Tensor:
        return self.logits[contexts]


class SharedEmbeddingPolicy(nn.Module):
    """logits[c] = U[c] @ V.T + b; U (C, d) per context, V (K, d) and b (K,) shared.

    Initialised so that the logits have std ~ init_scale.
    """

    def __init__(self, n_contexts: int, n_actions: int, embed_dim: int, init_scale: float, generator: torch.Generator):
        super().__init__()
        self.U = nn.Parameter(torch.randn(n_contexts, embed_dim, generator=generator))
        self.V = nn.Parameter(init_scale / math.sqrt(embed_dim) * torch.randn(n_actions, embed_dim, generator=generator))
        self.b = nn.Parameter(torch.zeros(n_actions))

    def forward(self, contexts: Tensor) -> Tensor:
        return self.U[contexts] @ self.V.T + self.b


def make_policy(cfg: BanditConfig, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    if cfg.policy == "tabular":
        return TabularPolicy(cfg.n_contexts, cfg.n_actions, cfg.init_scale, g)
    return SharedEmbeddingPolicy(cfg.n_contexts, cfg.n_actions, cfg.embed_dim, cfg.init_scale, g)


def make_optimizer(cfg: BanditConfig, policy: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(policy.parameters(), lr=cfg.lr)
    return torch.optim.Adam(policy.parameters(), lr=cfg.lr, betas=cfg.adam_betas)


def flat_params(policy: nn.Module) -> Tensor:
    """All parameters as one detached vector (to measure the parameter step of an update)."""
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()]).clone()


def all_probs(policy: nn.Module, n_contexts: int, temperature: float) -> Tensor:
    """pi(.|c) for every context, (C, K), no grad."""
    with torch.no_grad():
        return torch.softmax(policy(torch.arange(n_contexts)) / temperature, dim=-1)


# ----------------------------------------------------------------------------- one update
@dataclass
class Rollout:
    """One rollout batch; per-token tensors are (B, 1) (one-token responses)."""
    contexts: Tensor      # (B,) long, groups of group_size contiguous samples of one context
    actions: Tensor       # (B, 1) long
    old_logp: Tensor      # (B, 1) log pi_old(a|c)
    old_entropy: Tensor   # (B, 1) H(pi_old(.|c)), same forward as old_logp
    rewards: Tensor       # (B,)
    advantages: Tensor    # (B,) group-relative


def rollout(cfg: BanditConfig, bandit: Bandit, policy: nn.Module, gen: torch.Generator) -> Rollout:
    """Sample a batch from the current policy (the snapshot pi_old); one no-grad forward gives the
    old log-probs AND the old entropies."""
    ctx = torch.randperm(cfg.n_contexts, generator=gen)[: cfg.contexts_per_batch]
    contexts = ctx.repeat_interleave(cfg.group_size)
    with torch.no_grad():
        logits = policy(ctx) / cfg.temperature  # (contexts_per_batch, K)
        actions = torch.multinomial(torch.softmax(logits, -1), cfg.group_size, replacement=True, generator=gen)
        actions = actions.reshape(-1, 1)
        logits_b = logits.repeat_interleave(cfg.group_size, dim=0).unsqueeze(1)  # (B, 1, K)
        old_logp, old_entropy = logprobs_and_entropy(logits_b, actions)
    rewards = bandit.reward(contexts, actions.squeeze(1))
    adv = group_advantages(rewards, cfg.group_size)
    return Rollout(contexts, actions, old_logp, old_entropy, rewards, adv)


def minibatch_step(cfg: BanditConfig, loss_cfg: PolicyLossConfig, policy: nn.Module, opt: torch.optim.Optimizer,
                   ro: Rollout, idx: Tensor) -> dict[str, float]:
    """One optimizer step on the samples ``idx`` of the rollout, through ercref.compute_policy_loss."""
    logits = policy(ro.contexts[idx]).unsqueeze(1)  # (b, 1, K)
    logp, entropy = logprobs_and_entropy(logits, ro.actions[idx], temperature=cfg.temperature)
    mask = torch.ones_like(logp, dtype=torch.bool)
    loss, m = compute_policy_loss(loss_cfg, logp, ro.old_logp[idx], ro.advantages[idx], mask,
                                  entropy=entropy, old_entropy=ro.old_entropy[idx], rewards=ro.rewards[idx])
    # the band ERC uses, measured whether or not ERC is applied (with ERC on it equals erc/clip_frac)
    keep, _, _, _ = erc_masks(entropy, ro.old_entropy[idx], mask, cfg.beta_low, cfg.beta_high)
    m["erc/outside_band_frac"] = float(1.0 - keep.float().mean())
    m.setdefault("erc/clip_frac", 0.0)
    # what PPO-clip sees: the sampled ratio at the moment of this step, either side of the range
    r = torch.exp(logp.detach() - ro.old_logp[idx])
    m["ratio/outside_frac_at_step"] = float(((r < 1 - cfg.eps) | (r > 1 + cfg.eps)).float().mean())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    m = metrics_to_floats(m)
    m["_outside_band"] = ~keep.squeeze(1)  # (b,) bool, per sample: popped by bandit_update
    return m


def context_kl(p_old: Tensor, p_new: Tensor) -> Tensor:
    """KL_c = sum_a pi_old(a|c) log(pi_old(a|c) / pi_new(a|c)) per context: (C, K), (C, K) -> (C,)."""
    return (p_old * (p_old.clamp_min(1e-30).log() - p_new.clamp_min(1e-30).log())).sum(-1)


def detector_counts(kl: Tensor, contexts: Tensor, outside: Tensor, top_frac: float = 0.25) -> dict[str, float]:
    """Does ERC's entropy band flag the contexts whose full distribution drifted most in this update?

    kl (C,): KL_c over the update; contexts (B,): each sample's context; outside (B,) bool: the
    sample was outside ERC's band (1 - beta_low, 1 + beta_high) at its minibatch step (with ERC on:
    the samples ERC clipped). The top-drift contexts are the ceil(top_frac * n) batch contexts with
    the largest KL_c (n = distinct contexts in the batch). Returns counts, to be pooled over updates:
        detector/flagged       samples outside the band
        detector/flagged_top   ... of them at a top-drift context
        detector/samples       samples in the batch
        detector/samples_top   ... of them at a top-drift context (chance share = samples_top / samples)
    A band that flags at random gives flagged_top / flagged ~ samples_top / samples.
    """
    check_fraction("top_frac", top_frac)
    batch_ctx = torch.unique(contexts)
    n_top = max(1, math.ceil(top_frac * batch_ctx.numel()))
    top = batch_ctx[torch.topk(kl[batch_ctx], n_top).indices]
    at_top = torch.isin(contexts, top)
    return {"detector/flagged": float(outside.sum()), "detector/flagged_top": float((outside & at_top).sum()),
            "detector/samples": float(contexts.numel()), "detector/samples_top": float(at_top.sum())}


def drift_metrics(cfg: BanditConfig, p_old: Tensor, p_new: Tensor, ro: Rollout) -> dict[str, float]:
    """What PPO-clip does not see, over all C contexts and all K actions. p_old, p_new: (C, K)."""
    C, K = p_old.shape
    kl = context_kl(p_old, p_new)  # (C,)
    sampled = torch.zeros(C, K, dtype=torch.bool)
    sampled[ro.contexts, ro.actions.squeeze(1)] = True
    in_batch = sampled.any(-1)
    moved = (p_new - p_old).abs()
    moved_unsampled = (moved * ~sampled).sum(-1)  # (C,)
    # the ratio of the sampled actions under the final policy, the only ratio PPO-clip ever checks
    r = p_new[ro.contexts, ro.actions.squeeze(1)] / p_old[ro.contexts, ro.actions.squeeze(1)]
    out = {
        "kl/full_mean": float(kl.mean()),
        "kl/full_max": float(kl.max()),
        "kl/sampled_ctx_mean": float(kl[in_batch].mean()),
        "kl/unsampled_ctx_mean": float(kl[~in_batch].mean()) if bool((~in_batch).any()) else float("nan"),
        "mass/unsampled_moved": float(moved_unsampled.mean()),
        "mass/unsampled_frac": float(moved_unsampled.sum() / moved.sum().clamp_min(1e-30)),
        "ratio/sampled_outside_frac": float(((r < 1 - cfg.eps) | (r > 1 + cfg.eps)).float().mean()),
        "ratio/sampled_max_abs_log": float(r.log().abs().max()),
    }
    return out


def bandit_update(cfg: BanditConfig, loss_cfg: PolicyLossConfig, bandit: Bandit, policy: nn.Module,
                  opt: torch.optim.Optimizer, gen: torch.Generator) -> dict[str, float]:
    """One rollout batch and its ``cfg.minibatches`` optimizer steps. Returns the update's metrics."""
    p_old = all_probs(policy, bandit.n_contexts, cfg.temperature)
    theta_old = flat_params(policy)
    ro = rollout(cfg, bandit, policy, gen)
    perm = torch.randperm(ro.contexts.shape[0], generator=gen)
    parts = torch.tensor_split(perm, cfg.minibatches)
    steps = [minibatch_step(cfg, loss_cfg, policy, opt, ro, idx) for idx in parts]
    outside = torch.zeros(ro.contexts.shape[0], dtype=torch.bool)  # each sample is in one minibatch
    for idx, s in zip(parts, steps):
        outside[idx] = s.pop("_outside_band")
    p_new = all_probs(policy, bandit.n_contexts, cfg.temperature)
    H_new = -(p_new * p_new.clamp_min(1e-30).log()).sum(-1)
    out = {
        "reward/sampled_mean": float(ro.rewards.mean()),
        "reward/expected": float(bandit.expected_reward(p_new).mean()),
        "entropy/full_mean": float(H_new.mean()),
    }
    out.update(drift_metrics(cfg, p_old, p_new, ro))
    out.update(detector_counts(context_kl(p_old, p_new), ro.contexts, outside))
    out["param/step_norm"] = float((flat_params(policy) - theta_old).norm())
    for key in ("ppo/clip_frac_low", "ppo/clip_frac_high", "erc/clip_frac", "erc/outside_band_frac",
                "ratio/outside_frac_at_step", "erc/random_overlap"):
        if key in steps[0]:
            out[key] = sum(s[key] for s in steps) / len(steps)
    out["ppo/clip_frac"] = out["ppo/clip_frac_low"] + out["ppo/clip_frac_high"]
    # the stale steps only (k >= 1): the first step is on-policy, nothing can be clipped there
    stale = steps[1:] or steps
    out["erc/clip_frac_stale"] = sum(s["erc/clip_frac"] for s in stale) / len(stale)
    out["ppo/clip_frac_stale"] = sum(s["ppo/clip_frac_low"] + s["ppo/clip_frac_high"] for s in stale) / len(stale)
    return out


# ----------------------------------------------------------------------------- runs
def run_bandit(cfg: BanditConfig, seed: int | None = None) -> list[dict]:
    """Train for ``cfg.updates`` rollout batches. Returns one record per update (plus update 0 =
    the initial policy's reward/entropy), each tagged with ``seed`` and ``update``."""
    seed = cfg.seeds[0] if seed is None else seed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small only pay the cost of intra-op threads
    try:
        # the random-mask control draws on torch's global generator: seeded here, restored after
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000 + seed)
            return _run(cfg, seed)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BanditConfig, seed: int) -> list[dict]:
    bandit = make_bandit(cfg)
    policy = make_policy(cfg, seed)
    opt = make_optimizer(cfg, policy)
    gen = torch.Generator().manual_seed(10_000 + seed)
    loss_cfg = cfg.loss_config()
    p0 = all_probs(policy, bandit.n_contexts, cfg.temperature)
    H0 = -(p0 * p0.clamp_min(1e-30).log()).sum(-1)
    records = [{"seed": seed, "update": 0, "reward/expected": float(bandit.expected_reward(p0).mean()),
                "entropy/full_mean": float(H0.mean())}]
    for u in range(1, cfg.updates + 1):
        m = bandit_update(cfg, loss_cfg, bandit, policy, opt, gen)
        m.update(seed=seed, update=u)
        records.append(m)
    return records


def paired_erc_effect(cfg: BanditConfig, seed: int | None = None) -> list[dict]:
    """What the ERC mask alone changes in one update, from identical states.

    Trains ``cfg`` with ERC off. Before each update, the policy, the optimizer state and the
    sampling RNG are copied, and the same update (same rollout, same minibatch shuffle) is taken
    once more with ERC on. Per update it records, with d_on / d_off the two parameter steps:
        param/step_norm_ratio = ||d_on|| / ||d_off||   (< 1: ERC shrinks the step)
        param/step_cosine     = cos(d_on, d_off)       (< 1: ERC turns the step)
        kl/full_max_ratio     = max_c KL_c(on) / max_c KL_c(off)
    plus the ERC clip fraction of the ERC branch.
    """
    seed = cfg.seeds[0] if seed is None else seed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        off_cfg, on_cfg = replace(cfg, erc=False), replace(cfg, erc=True)
        off_loss, on_loss = off_cfg.loss_config(), on_cfg.loss_config()
        bandit = make_bandit(cfg)
        policy = make_policy(cfg, seed)
        opt = make_optimizer(cfg, policy)
        gen = torch.Generator().manual_seed(10_000 + seed)
        records = []
        for u in range(1, cfg.updates + 1):
            theta0 = flat_params(policy)
            policy_on, opt_on = copy.deepcopy((policy, opt))
            gen_on = torch.Generator().manual_seed(0)
            gen_on.set_state(gen.get_state())
            m_on = bandit_update(on_cfg, on_loss, bandit, policy_on, opt_on, gen_on)
            m_off = bandit_update(off_cfg, off_loss, bandit, policy, opt, gen)
            d_on, d_off = flat_params(policy_on) - theta0, flat_params(policy) - theta0
            same = bool(torch.equal(d_on, d_off))  # e.g. both zero: a batch whose advantages are all 0
            records.append({
                "seed": seed, "update": u,
                "param/step_norm_ratio": 1.0 if same else float(d_on.norm() / d_off.norm().clamp_min(1e-30)),
                "param/step_cosine": 1.0 if same else float(torch.nn.functional.cosine_similarity(d_on, d_off, dim=0)),
                "kl/full_max_ratio": 1.0 if same else m_on["kl/full_max"] / max(m_off["kl/full_max"], 1e-30),
                "kl/full_max_on": m_on["kl/full_max"], "kl/full_max_off": m_off["kl/full_max"],
                "erc/clip_frac": m_on["erc/clip_frac"],
            })
        return records
    finally:
        torch.set_num_threads(threads)


def run_seeds(cfg: BanditConfig, label: str | None = None, **overrides) -> list[dict]:
    """run_bandit for every seed in cfg.seeds (with optional field overrides); records tagged with
    ``label`` (default: "ERC" or "no ERC")."""
    cfg = replace(cfg, **overrides) if overrides else cfg
    label = label if label is not None else ("ERC" if cfg.erc else "no ERC")
    out = []
    for s in cfg.seeds:
        for r in run_bandit(cfg, s):
            r["label"] = label
            out.append(r)
    return out


def per_seed_mean(records: list[dict], key: str, label: str | None = None, skip_initial: bool = True) -> dict[int, float]:
    """{seed: mean over updates of records[key]} (for paired comparisons across seeds)."""
    acc: dict[int, list[float]] = {}
    for r in records:
        if (label is not None and r.get("label") != label) or key not in r or (skip_initial and r["update"] == 0):
            continue
        acc.setdefault(r["seed"], []).append(r[key])
    if not acc:
        raise ValueError(f"key {key!r} (label {label!r}) not found in records")
    return {s: sum(v) / len(v) for s, v in acc.items()}


# ----------------------------------------------------------------------------- controls
CONTROL_LABELS = ("no ERC", "ERC", "matched step", "random mask")


def mean_step_norm(records: list[dict]) -> float:
    """Mean over updates (update 0 excluded) of ||theta_new - theta_old||, the parameter step of one update."""
    steps = [r["param/step_norm"] for r in records if r["update"] > 0]
    if not steps:
        raise ValueError("records hold no update (only the initial record); run at least one update")
    return sum(steps) / len(steps)


def matched_step_run(cfg: BanditConfig, seed: int, target_step_norm: float, tol: float = 0.01, max_runs: int = 8,
                     first: list[dict] | None = None) -> tuple[float, list[dict]]:
    """The matched-step control: ``cfg`` without ERC, at the learning rate whose mean parameter step
    per update (mean_step_norm, S) matches ``target_step_norm`` (ERC's, measured on the same seed).

    Rule: S(lr) grows with lr to first order (an SGD step is proportional to lr), but over a whole
    run it is not monotone everywhere (a larger lr can reach a flatter region). Run 1 is at cfg.lr;
    until the target is bracketed (one run below it, one above) the next lr is the proportional
    guess from the latest run, lr * target / S; once bracketed, the secant between the closest run
    below and the closest run above, lr = lr_a + (target - S_a) (lr_b - lr_a) / (S_b - S_a), or the
    midpoint of the two when the secant does not fall strictly between them. Stops when
    |S / target - 1| <= tol or after ``max_runs`` runs; returns (lr, records) of the run closest to
    the target. ``first``: records of the run at cfg.lr (the no-ERC arm), if already made.
    """
    check_positive("target_step_norm", target_step_norm)
    check_fraction("tol", tol)
    if not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 1:
        raise ValueError(f"max_runs must be a positive int, got {max_runs!r}")
    off = replace(cfg, erc=False, erc_mask="entropy-ratio")
    tried: list[tuple[float, float, float, list[dict]]] = []  # (gap, lr, S, records)
    lr = cfg.lr
    for k in range(max_runs):
        recs = first if (k == 0 and first is not None) else run_bandit(replace(off, lr=lr), seed)
        S = mean_step_norm(recs)
        tried.append((abs(S / target_step_norm - 1.0), lr, S, recs))
        if min(t[0] for t in tried) <= tol:
            break
        below = [t for t in tried if t[2] < target_step_norm]
        above = [t for t in tried if t[2] > target_step_norm]
        if not below or not above:
            lr = lr * target_step_norm / max(S, 1e-12)          # proportional guess from the latest run
            continue
        (_, lr_a, S_a, _), (_, lr_b, S_b, _) = min(below), min(above)
        secant = lr_a + (target_step_norm - S_a) * (lr_b - lr_a) / (S_b - S_a)
        lr = secant if min(lr_a, lr_b) < secant < max(lr_a, lr_b) else (lr_a + lr_b) / 2
    best = min(tried, key=lambda t: t[0])
    return best[1], best[3]


def control_runs(cfg: BanditConfig, seeds: tuple[int, ...] | None = None, tol: float = 0.01,
                 max_runs: int = 8) -> list[dict]:
    """The four arms that separate "ERC restrains drift PPO-clip cannot see" from "ERC shortens the
    step", per seed (same seed: same initial policy, reward table and first rollout):

        "no ERC"        cfg without ERC, at cfg.lr
        "ERC"           cfg with ERC (entropy-ratio mask)
        "matched step"  without ERC, lr matched per seed to ERC's mean parameter step (matched_step_run)
        "random mask"   ERC's band replaced by a random mask stopping as many samples as ERC's band
                        would clip in that minibatch (PolicyLossConfig.erc_mask="random")

    Every record carries ``label``, ``seed`` and ``lr`` (the matched lr for "matched step")."""
    out = []
    for seed in (cfg.seeds if seeds is None else seeds):
        off = run_bandit(replace(cfg, erc=False, erc_mask="entropy-ratio"), seed)
        on = run_bandit(replace(cfg, erc=True, erc_mask="entropy-ratio"), seed)
        lr_m, matched = matched_step_run(cfg, seed, mean_step_norm(on), tol, max_runs, first=off)
        rnd = run_bandit(replace(cfg, erc=True, erc_mask="random"), seed)
        for label, recs, lr in zip(CONTROL_LABELS, (off, on, matched, rnd), (cfg.lr, cfg.lr, lr_m, cfg.lr)):
            out.extend({**r, "label": label, "lr": lr} for r in recs)
    return out


def detector_share(records: list[dict], label: str | None = None) -> tuple[dict[int, float], dict[int, float]]:
    """Per seed, pooled over updates: ({seed: share of out-of-band samples at top-drift contexts},
    {seed: that share under random flagging}) from detector_counts' records. Seeds that never
    flagged a sample are left out."""
    acc: dict[int, list[float]] = {}
    for r in records:
        if (label is not None and r.get("label") != label) or r["update"] == 0:
            continue
        a = acc.setdefault(r["seed"], [0.0, 0.0, 0.0, 0.0])
        for i, k in enumerate(("detector/flagged_top", "detector/flagged", "detector/samples_top", "detector/samples")):
            a[i] += r[k]
    if not acc:
        raise ValueError(f"no update records with label {label!r}")
    share = {s: a[0] / a[1] for s, a in acc.items() if a[1] > 0}
    chance = {s: a[2] / a[3] for s, a in acc.items() if a[1] > 0}
    return share, chance


def config_dict(cfg: BanditConfig) -> dict:
    return asdict(cfg)
