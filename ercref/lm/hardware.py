"""Can this machine run a config? Checked where a run starts (Trainer.__init__), before anything is
built; ercref.lm.config itself only checks the values."""
from __future__ import annotations

import torch

from .config import Config, config_from_dict
from .models import check_model_name
from .vllm_backend import check_vllm_available


def check_hardware(cfg: Config) -> None:
    """ValueError naming the setting when cfg needs what this machine lacks: CUDA (train.require_cuda,
    train.device=cuda*, model.bf16_autocast), a vLLM build for train.device (rollout.backend=vllm),
    or the model's files (model.name). First the config itself: a field set to an invalid value
    after the Config was built (``cfg.train.steps = -5``) is a ValueError naming it."""
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be an ercref.lm.config.Config (make_config(...)), got {type(cfg).__name__}")
    try:
        config_from_dict(cfg.to_dict())
    except ValueError as e:
        raise ValueError(f"{e} (the config was changed after it was built; build it with make_config(..., "
                         "overrides=...) or dataclasses.replace so it is checked)") from None
    has_cuda = torch.cuda.is_available()
    label = f"preset {cfg.preset!r}" if cfg.preset else "this config"
    if (cfg.train.require_cuda or cfg.train.device.startswith("cuda")) and not has_cuda:
        raise ValueError(
            f"{label} needs a CUDA GPU (train.device={cfg.train.device!r}, train.require_cuda="
            f"{cfg.train.require_cuda}), but torch.cuda.is_available() is False on this machine; "
            "use --preset cpu-tiny or cpu-smollm2 on CPU.")
    if cfg.model.bf16_autocast and not has_cuda:
        raise ValueError("model.bf16_autocast=True needs CUDA (bf16 autocast is not used on CPU); set it to false")
    if cfg.rollout.backend == "vllm":
        check_vllm_available(cfg.train.device, cfg.rollout.vllm_sleep)
    check_model_name(cfg.model.name)


def resolve_device(cfg: Config) -> str:
    """train.device, with "auto" resolved to "cuda" when a GPU is available, else "cpu"."""
    if cfg.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.train.device
