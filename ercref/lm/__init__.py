"""ercref.lm: the language-model side (models, data, rollout, trainer) built on the ercref core.

Submodules are imported on first use, so ``import ercref.lm`` stays light (no transformers
import, nothing downloaded). Model helpers: ``from ercref.lm.models import load_model``.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "models": ("ARITH_CHARS", "SPECIAL_TOKENS", "build_char_tokenizer", "save_char_tokenizer",
               "load_char_tokenizer", "tiny_model_config", "build_tiny_model", "load_smollm2",
               "load_model", "apply_chat_template"),
}
_NAME_TO_MODULE = {name: mod for mod, names in _LAZY.items() for name in names}
__all__ = sorted(_NAME_TO_MODULE)


def __getattr__(name: str):
    mod = _NAME_TO_MODULE.get(name)
    if mod is None:
        raise AttributeError(f"module 'ercref.lm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
