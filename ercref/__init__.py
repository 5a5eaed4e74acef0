"""ercref: a reference implementation of Entropy Ratio Clipping (ERC, arXiv 2512.05591).

Core (pure PyTorch, no model code): entropy, the ERC mask, per-token losses behind one
registry, aggregation, auxiliary terms, group advantages, and the composed objective. Metrics are
detached 0-d tensors; ``metrics_to_floats`` turns a dict of them into floats with one host sync.
"""
from .advantages import dynamic_sampling_mask, group_advantages, overlong_reward
from .aggregation import AGG_MODES, BatchCounts, aggregate, batch_counts
from .auxiliary import kl_penalty, positive_nll
from .drift import TokenDrift, drift_summary, token_drift, token_drift_from_hidden
from .entropy import compiled_entropy_from_logits, entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from .erc import ERC_MASKS, apply_erc, entropy_ratio, erc_masks, random_like_erc_mask
from .importance import importance_accuracy
from .losses import LOSSES, get_loss, register_loss
from .metrics import metrics_to_floats
from .objective import PolicyLossConfig, compute_policy_loss

__version__ = "0.1.0"
__all__ = [
    "AGG_MODES", "BatchCounts", "ERC_MASKS", "LOSSES", "PolicyLossConfig", "aggregate", "apply_erc", "batch_counts",
    "compiled_entropy_from_logits", "compute_policy_loss", "dynamic_sampling_mask", "entropy_from_logits",
    "entropy_ratio", "erc_masks", "get_loss", "group_advantages", "importance_accuracy", "kl_penalty", "logprobs_and_entropy",
    "logprobs_from_logits", "metrics_to_floats", "overlong_reward", "positive_nll", "random_like_erc_mask",
    "register_loss", "TokenDrift", "drift_summary", "token_drift", "token_drift_from_hidden",
]
