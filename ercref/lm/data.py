"""Prompts and reference answers: seeded synthetic math tasks, and loaders for GSM8K, MATH-500
and verl-format records (local .jsonl / .json / .parquet, or the hub through ``datasets``).

Every loader returns a list of records with one shape:

    {"prompt": str | [{"role", "content"}, ...],   # a user message, or chat messages (verl)
     "answer": str,                                 # reference answer for the judge
     "source": str}                                 # task / data set name

Synthetic tasks (``make_synthetic(task, n, level, seed, style)``):
    arith      arithmetic; level 1: a+b (one digit), 2: two-digit + and -, 3: two-digit x one-digit,
               4: (a op b) op c with two-digit operands
    mc-arith   4-option multiple choice over a+b (one digit), "answer with the letter"; the answer is A-D
    word       short one-step word problems (addition / subtraction of small numbers)
    max        the larger of two different two-digit numbers, "max(47,58)=" -> "58" (8,010 distinct
               problems, two-token answers; a comparison, then a copy)
style "bare" gives the shortest prompt ("3+5=", for the tiny character model); "instruct" a
sentence for an instruct model.

Local files (``read_rows``): .jsonl (one JSON object per line), .json (one JSON array of objects,
one object, or JSON Lines saved as .json, like the authors' verl-format AIME evaluation files),
.parquet; suffixes in any case; .jsonl.gz / .json.gz are read through gzip. Text is UTF-8 (a
byte-order mark is fine; UTF-16 / UTF-32 with a byte-order mark are decoded). Records are checked
where they are read: every problem (a missing path, a directory or FIFO, an empty file, bytes that
are not UTF-8, a compressed file not named .gz, a line that is not a JSON object, a missing, null or
empty field) is a ValueError naming the file, the line (and field) and the fix.

Run ``python -m ercref.lm.data --write-fixtures`` to (re)write the small files under data/ that the
tests read: data/synthetic/*.jsonl, data/fixtures/{gsm8k,math500,verl}_sample.{jsonl,parquet} and
data/fixtures/aime_verl_sample.json (verl format, JSON Lines in a .json file, bare problems).
"""
from __future__ import annotations

import codecs
import gzip
import json
import math
import numbers
import os
import random
import stat
import zlib
from pathlib import Path
from typing import Any

from ..paths import DATA_DIR, REPO_ROOT

FIXTURE_DIR = DATA_DIR / "fixtures"
SYNTHETIC_DIR = DATA_DIR / "synthetic"

SYNTHETIC_TASKS = ("arith", "mc-arith", "word", "max")
REAL_TASKS = ("gsm8k", "math500", "verl")
HUB_DEFAULTS = {"gsm8k": ("openai/gsm8k", "main"), "math500": ("HuggingFaceH4/MATH-500", None)}
LETTERS = "ABCD"


# ----------------------------------------------------------------------------- synthetic
def _arith(rng: random.Random, level: int) -> tuple[str, int]:
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"{a}+{b}", a + b
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            return f"{a}+{b}", a + b
        a, b = max(a, b), min(a, b)
        return f"{a}-{b}", a - b
    if level == 3:
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return f"{a}*{b}", a * b
    if level == 4:
        a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+*")
        expr = f"({a}{op1}{b}){op2}{c}"
        inner = a + b if op1 == "+" else a - b
        return expr, inner + c if op2 == "+" else inner * c
    raise ValueError(f"level must be 1, 2, 3 or 4 for task 'arith', got {level!r}")


def _mc_arith(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    s = a + b
    wrong = set()
    while len(wrong) < 3:
        w = s + rng.choice([-3, -2, -1, 1, 2, 3])
        if w >= 0:
            wrong.add(w)
    options = [s] + sorted(wrong)
    rng.shuffle(options)
    letter = LETTERS[options.index(s)]
    lines = "\n".join(f"{LETTERS[i]}) {v}" for i, v in enumerate(options))
    return f"What is {a} + {b}?\n{lines}\nAnswer with the letter only.", letter


_NAMES = ("Tom", "Ann", "Sam", "Mia", "Leo", "Eva")
_ITEMS = ("apples", "pens", "cards", "books", "coins", "shells")


def _word(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?", a + b
    a = a + b
    return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b


def _max2(rng: random.Random) -> tuple[int, int]:
    a = rng.randint(10, 99)
    b = rng.randint(10, 98)
    return a, b + (b >= a)          # b uniform over the two-digit numbers other than a


def make_synthetic(task: str, n: int, level: int = 1, seed: int = 0, style: str = "bare") -> list[dict]:
    """n seeded records of a synthetic task (see module docstring). Deterministic in (task, n, level, seed, style)."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"task must be one of {SYNTHETIC_TASKS}, got {task!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if style not in ("bare", "instruct"):
        raise ValueError(f"style must be 'bare' or 'instruct', got {style!r}")
    rng = random.Random(f"{task}-{level}-{seed}")
    out = []
    for _ in range(n):
        if task == "arith":
            expr, ans = _arith(rng, level)
            prompt = f"{expr}=" if style == "bare" else f"What is {expr}? Answer with just the number."
            out.append({"prompt": prompt, "answer": str(ans), "source": f"arith-{level}"})
        elif task == "max":
            a, b = _max2(rng)
            prompt = f"max({a},{b})=" if style == "bare" else f"Which is larger, {a} or {b}? Answer with just the number."
            out.append({"prompt": prompt, "answer": str(max(a, b)), "source": "max"})
        elif task == "mc-arith":
            prompt, letter = _mc_arith(rng)
            out.append({"prompt": prompt, "answer": letter, "source": "mc-arith"})
        else:
            prompt, ans = _word(rng)
            if style == "instruct":
                prompt += " Answer with just the number."
            out.append({"prompt": prompt, "answer": str(ans), "source": "word"})
    return out


def train_eval_split(task: str, num_train: int, num_eval: int, level: int = 1, seed: int = 0,
                     style: str = "bare") -> tuple[list[dict], list[dict]]:
    """Disjoint train and eval sets (eval prompts never appear in train, when the task has enough
    distinct prompts; single-digit tasks have only 100 sums, so they overlap by construction)."""
    train = make_synthetic(task, num_train, level, seed, style)
    eval_ = make_synthetic(task, num_eval, level, seed + 10_000, style)
    seen = {r["prompt"] for r in train}
    disjoint = [r for r in eval_ if r["prompt"] not in seen]
    return train, (disjoint if len(disjoint) >= max(1, num_eval // 2) else eval_)


# ----------------------------------------------------------------------------- files
def write_jsonl(records: list[dict], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return path


def _split_lines(text: str) -> list[str]:
    """Lines split at '\\n' only (a trailing '\\r' dropped): JSON strings may hold U+2028, U+0085 and
    other characters that ``str.splitlines`` would treat as line breaks; editors count '\\n'."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _json_lines(p: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for i, line in enumerate(_split_lines(text), 1):
        line = line.lstrip("\ufeff")  # a byte-order mark inside: files concatenated with `cat`
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError as e:
            raise ValueError(f"data file {str(p)!r} line {i}: JSON nested too deeply to be a record") from e
        except ValueError as e:
            raise ValueError(f"data file {str(p)!r} line {i}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"data file {str(p)!r} line {i}: a record must be a JSON object, got a JSON "
                             f"{_json_type(row)}")
        rows.append((i, row))
    return rows


def _json_type(value: Any) -> str:
    return {list: "array", dict: "object", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _json_document(p: Path, text: str) -> list[tuple[int, dict]]:
    """A .json file: one JSON array of objects, one object (a single record), or JSON Lines."""
    try:
        data = json.loads(text)
    except RecursionError as e:
        raise ValueError(f"data file {str(p)!r}: JSON nested too deeply to hold records") from e
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a complete first value, then more: one object per line (JSON Lines)
            return _json_lines(p, text)
        raise ValueError(f"data file {str(p)!r} line {e.lineno}: not valid JSON ({e.msg})") from e
    if isinstance(data, dict):
        return [(1, data)]
    if not isinstance(data, list):
        raise ValueError(f"data file {str(p)!r}: a .json data file must hold a list of records, one record, "
                         f"or one record per line (JSON Lines), got a JSON {_json_type(data)}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"data file {str(p)!r} record {i + 1}: a record must be a JSON object, got a JSON "
                             f"{_json_type(row)}")
    return [(i + 1, row) for i, row in enumerate(data)]


# leading bytes of compressed and binary formats that a text reader must not try to decode
_MAGIC = ((b"\x1f\x8b", "gzip-compressed"), (b"BZh", "bzip2-compressed"), (b"\xfd7zXZ\x00", "xz-compressed"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"PK\x03\x04", "a zip archive"), (b"PAR1", "a parquet file"))
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE first: it starts like UTF-16 LE
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


def _regular_file(p: Path) -> None:
    """ValueError naming ``p`` unless it is a readable regular file (following links)."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"data file {str(p)!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"data file {str(p)!r} cannot be read ({e.strerror or e})") from e
    if stat.S_ISDIR(mode):
        raise ValueError(f"data file {str(p)!r} is a directory, not a data file: name a "
                         f"{', '.join(DATA_SUFFIXES)} file inside it")
    if stat.S_ISFIFO(mode):
        raise ValueError(f"data file {str(p)!r} is a FIFO (named pipe), not a data file: reading it could block "
                         "forever; write the data to a regular file first")
    if not stat.S_ISREG(mode):
        raise ValueError(f"data file {str(p)!r} is not a regular file (a socket or device): name a "
                         f"{', '.join(DATA_SUFFIXES)} file")


def _decode(p: Path, raw: bytes) -> str:
    """The text of a JSON data file: UTF-8 (a leading byte-order mark is fine), or UTF-16 / UTF-32
    with a byte-order mark. Anything else is a ValueError naming the file, the line and the fix."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as e:
                raise ValueError(f"data file {str(p)!r}: starts with a {codec.upper()} byte-order mark but is not "
                                 f"valid {codec.upper()} ({e.reason} at byte {e.start}); re-save it as UTF-8") from e
    if b"\x00" in raw:  # JSON text never holds a raw NUL byte; UTF-16 / UTF-32 text is full of them
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise ValueError(f"data file {str(p)!r} line {line}: holds NUL bytes, which JSON text never has (UTF-16 or "
                         "UTF-32 without a byte-order mark?): re-save it as UTF-8, e.g. `iconv -f utf-16le -t utf-8 IN > OUT`")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"data file {str(p)!r} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte "
                         f"offset {e.start}; Latin-1 / Windows-1252?): re-save it as UTF-8, e.g. "
                         "`iconv -f latin1 -t utf-8 IN > OUT`") from None
    return text


def _format_of(p: Path) -> tuple[str, bool]:
    """('parquet' | 'json' | 'jsonl', gzip-compressed?) from the file name, suffixes in any case:
    x.parquet, x.json, x.json.gz, anything else (x.jsonl, x.jsonl.gz, no suffix) is JSON Lines."""
    suffixes = [s.lower() for s in p.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet":
        return "parquet", gz
    return ("json" if last == ".json" else "jsonl"), gz


def read_rows(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line_number, row) pairs of a data file, by its suffix (in any case: .JSON is .json):

        .parquet           rows (number: row index + 1)
        .json              a JSON array of objects (number: index + 1), one object (one record), or
                           JSON Lines saved as .json (number: the line)
        otherwise          JSON Lines (.jsonl): one object per line, blank lines skipped
        .jsonl.gz, .json.gz   the same, gzip-compressed (read transparently)

    Text is UTF-8; a byte-order mark (UTF-8, or UTF-16 / UTF-32, which are then decoded) is accepted.
    Numbers are 1-based. Every problem is a ValueError naming the file (and the line where there is
    one) and the fix: a missing file, a directory or FIFO, an empty file, bytes that are not UTF-8, a
    compressed file without .gz in its name (or another compression / binary format), a line that is
    not a JSON object."""
    p = Path(path).expanduser()
    _regular_file(p)
    fmt, gz = _format_of(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ValueError(f"data file {str(p)!r} cannot be read ({e.strerror or e})") from e
    if gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"data file {str(p)!r} is named .gz but is not valid gzip data ({e}): "
                             "check it with `gzip -t`, or drop the .gz suffix if it is plain text") from e
    for magic, what in _MAGIC:
        if raw.startswith(magic) and not (fmt == "parquet" and what == "a parquet file"):
            if what == "gzip-compressed":
                fix = (f"decompress it (`gunzip`) or name it {p.name}.gz to read it as is" if fmt != "parquet"
                       else "decompress it (`gunzip`); parquet files are read uncompressed")
            elif what == "a parquet file":
                fix = "name it .parquet"
            else:
                fix = "decompress it to a .jsonl, .json or .parquet file"
            raise ValueError(f"data file {str(p)!r} is {what}, not {fmt.upper()} text: {fix}")
    if not raw.strip():
        raise ValueError(f"data file {str(p)!r} is empty: it holds no records (write one JSON object per line, "
                         "or a JSON array of objects)")
    if fmt == "parquet":
        return _parquet_rows(p, raw)
    text = _decode(p, raw)
    if not text.strip(" \t\r\n\ufeff"):
        raise ValueError(f"data file {str(p)!r} is empty: it holds no records (write one JSON object per line, "
                         "or a JSON array of objects)")
    return _json_document(p, text) if fmt == "json" else _json_lines(p, text)


def _parquet_rows(p: Path, raw: bytes) -> list[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(pa.BufferReader(raw)).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ValueError(f"data file {str(p)!r} is not a readable parquet file ({e}); if it is JSON, name it "
                         ".jsonl or .json") from e
    return [(i + 1, row) for i, row in enumerate(rows)]


def _field(row: dict, dotted: str, where: str) -> Any:
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            raise ValueError(f"{where}: malformed record, missing field {dotted!r} (every record needs it; "
                             "fill it in or drop the record)")
        cur = cur[part]
    return cur


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any, name: str, where: str, numbers_ok: bool = False) -> str:
    """``value`` as a non-empty string (a finite number too when ``numbers_ok``); ValueError naming
    the record (file and line) and the field otherwise."""
    kind = "a string or a number" if numbers_ok else "a string"
    if isinstance(value, str):
        text = value
    elif numbers_ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{where}: malformed record, field {name!r} must be {kind}, got {value!r}")
        text = str(value)
    else:
        got = "null" if value is None else f"{_json_type(value)} {_short(value)}"
        raise ValueError(f"{where}: malformed record, field {name!r} must be {kind}, got {got}")
    if not text.strip():
        raise ValueError(f"{where}: malformed record, field {name!r} is empty: fill it in or drop the record")
    return text


# ----------------------------------------------------------------------------- record formats
# Records are checked here, where they are read: each converter gets ``where`` ("data file 'x'
# line 3") and every field it keeps is a non-empty string, or it raises a ValueError naming the
# file, the line and the field. Nothing downstream (rollout, judges) re-checks them.
def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after '####', without commas."""
    if "####" not in solution:
        raise ValueError("GSM8K answer has no '#### <number>' line")
    return solution.split("####")[-1].strip().replace(",", "")


GSM8K_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def from_gsm8k(row: dict, where: str) -> dict:
    q = _text(_field(row, "question", where), "question", where)
    a = _text(_field(row, "answer", where), "answer", where, numbers_ok=True)
    try:
        ans = gsm8k_answer(a)
    except ValueError as e:
        raise ValueError(f"{where}: malformed record, field 'answer' has no '#### <number>' line") from e
    if not ans:
        raise ValueError(f"{where}: malformed record, field 'answer' has nothing after '####': end the solution "
                         "with '#### <final answer>'")
    return {"prompt": f"{q} {GSM8K_INSTRUCTION}", "answer": ans, "source": "gsm8k"}


def from_math500(row: dict, where: str) -> dict:
    problem = _text(_field(row, "problem", where), "problem", where)
    answer = _text(_field(row, "answer", where), "answer", where, numbers_ok=True)
    return {"prompt": f"{problem} {GSM8K_INSTRUCTION}", "answer": answer.strip(), "source": "math500"}


def from_verl(row: dict, where: str) -> dict:
    """verl RL format: prompt = list of chat messages, answer = reward_model.ground_truth (a string
    or number, or a list of them: the first is the reference)."""
    prompt = _field(row, "prompt", where)
    if hasattr(prompt, "tolist"):  # numpy array from parquet via pandas
        prompt = prompt.tolist()
    if not (isinstance(prompt, list) and prompt):
        raise ValueError(f"{where}: malformed record, field 'prompt' must be a non-empty list of "
                         "{'role', 'content'} messages")
    messages = []
    for j, m in enumerate(prompt):
        if not (isinstance(m, dict) and "role" in m and "content" in m):
            raise ValueError(f"{where}: malformed record, field 'prompt' must be a non-empty list of "
                             f"{{'role', 'content'}} messages; message {j} is {_short(m)}")
        messages.append({"role": _text(m["role"], f"prompt[{j}].role", where),
                         "content": _text(m["content"], f"prompt[{j}].content", where)})
    gt = _field(row, "reward_model.ground_truth", where)
    name = "reward_model.ground_truth"
    if hasattr(gt, "tolist"):
        gt = gt.tolist()
    if isinstance(gt, (list, tuple)):
        if not gt:
            raise ValueError(f"{where}: malformed record, field {name!r} is an empty list: give the reference "
                             "answer (a string, or a list whose first item is the answer)")
        gt, name = gt[0], name + "[0]"
    answer = _text(gt, name, where, numbers_ok=True)
    source = row.get("data_source")
    return {"prompt": messages, "answer": answer.strip(),
            "source": "verl" if source is None else _text(source, "data_source", where, numbers_ok=True)}


CONVERTERS = {"gsm8k": from_gsm8k, "math500": from_math500, "verl": from_verl}


def _looks_local(name: str) -> bool:
    """A name that is a path (exists, or starts with . / ~) or ends with a data-file suffix (any
    case): it is read from disk, never sent to the hub."""
    return (name.startswith((".", "/", "~")) or name.lower().endswith(DATA_SUFFIXES + (".gz",))
            or os.path.lexists(Path(name).expanduser()))


def load_dataset_records(kind: str, path: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """Records of a real data set. ``path`` is a local .jsonl/.json/.parquet (or .jsonl.gz / .json.gz)
    file, or (when nothing exists at that path and it does not look like a file) a hub dataset id
    loaded with ``datasets.load_dataset``.

    ValueError: unknown kind, a local file that cannot be read as data (see ``read_rows``), a
    malformed record (file, line, field and the fix: a missing, null or empty field, a message
    whose role or content is not a non-empty string, an empty ground_truth list).
    """
    if kind not in CONVERTERS:
        raise ValueError(f"kind must be one of {sorted(CONVERTERS)}, got {kind!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a file path or hub dataset id, got {path!r}")
    name = str(path)
    if _looks_local(name):
        rows = read_rows(name)
    else:
        rows = _hub_rows(kind, name, split)
    conv = CONVERTERS[kind]
    out = [conv(row, f"data file {name!r} line {i}") for i, row in rows[: limit if limit else None]]
    if not out:
        raise ValueError(f"data file {name!r} holds no records")
    return out


def _hub_rows(kind: str, name: str, split: str) -> list[tuple[int, dict]]:
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"{name!r} is not a local file, and loading it from the hub needs `datasets`") from e
    config = HUB_DEFAULTS.get(kind, (None, None))[1] if name == HUB_DEFAULTS.get(kind, (None,))[0] else None
    ds = datasets.load_dataset(name, config, split=split)
    return [(i + 1, dict(row)) for i, row in enumerate(ds)]


def with_system_prompt(record: dict, system_prompt: str | None) -> dict:
    """Prepend a system message (a string prompt becomes [system, user] messages); a record whose
    messages already start with a system message is left as is."""
    if not system_prompt:
        return record
    p = record["prompt"]
    msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
    if msgs and msgs[0]["role"] == "system":
        return record
    return dict(record, prompt=[{"role": "system", "content": system_prompt}] + msgs)


def load_task(cfg_data) -> tuple[list[dict], list[dict]]:
    """(train, eval) records for a DataConfig (system prompt applied).

    The eval records are never training prompts: a synthetic task generates a held-out set; a
    real task reads ``data.eval_path`` (the default, unnamed set) and every ``data.eval_paths``
    entry (a named set: its records carry ``"eval_set": name``), each limited to ``num_eval``
    records and read in the format of ``data.task``; with neither, its first ``num_eval`` records
    are held out of training. A relative eval path that is not in the working directory is looked
    up in the repository root. A verl record's prompt is used as it is (the authors' AIME files:
    the bare problem, no instruction appended)."""
    d = cfg_data
    if d.task in SYNTHETIC_TASKS:
        train, eval_ = train_eval_split(d.task, d.num_train, d.num_eval, d.level, d.seed, d.style)
    else:
        train = load_dataset_records(d.task, d.path, d.split)
        eval_paths = dict(getattr(d, "eval_paths", None) or {})
        if d.eval_path:
            eval_ = load_dataset_records(d.task, _eval_file(d.eval_path, "data.eval_path"), d.eval_split,
                                         limit=d.num_eval)
        elif eval_paths:
            eval_ = []
        else:  # hold the first num_eval records out of training
            if len(train) <= d.num_eval:
                raise ValueError(f"data.path {d.path!r} holds {len(train)} records, not more than data.num_eval="
                                 f"{d.num_eval} to hold out for evaluation: set data.eval_path (or data.eval_paths), "
                                 "or lower data.num_eval")
            train, eval_ = train[d.num_eval:], train[: d.num_eval]
        for name, path in eval_paths.items():
            recs = load_dataset_records(d.task, _eval_file(path, f"data.eval_paths.{name}"), d.eval_split,
                                        limit=d.num_eval)
            eval_ += [dict(r, eval_set=name) for r in recs]
    return [with_system_prompt(r, d.system_prompt) for r in train], [with_system_prompt(r, d.system_prompt) for r in eval_]


AUTHORS_EVAL_HINT = ("The authors' AIME24 / AIME25 files are data/aime960_math_verify_uni.json and "
                     "data/aime960_math_verify25_uni.json in https://github.com/Kwai-Klear/ERC (verl JSON Lines, 30 "
                     "records each): download them into data/aime/ (see the README), or point the field at your own "
                     "files.")


def _eval_file(path: str, field: str) -> str:
    """An eval file as given, else (relative and missing) the same path under the repository root;
    a local-looking path found in neither is a ValueError naming the config field."""
    p = Path(path).expanduser()
    if p.is_file():
        return str(p)
    if not p.is_absolute() and (REPO_ROOT / p).is_file():
        return str(REPO_ROOT / p)
    if _looks_local(str(path)):
        raise ValueError(f"{field}: eval file {str(path)!r} does not exist (looked in {os.getcwd()} and {REPO_ROOT}). "
                         + AUTHORS_EVAL_HINT)
    return path  # a hub id


# ----------------------------------------------------------------------------- fixtures
GSM8K_SAMPLE = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
    {"question": "A shop sells 1,250 pencils a week. How many pencils does it sell in 4 weeks?",
     "answer": "It sells 1,250 x 4 = <<1250*4=5000>>5,000 pencils.\n#### 5,000"},
]
MATH500_SAMPLE = [
    {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer "
                "in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
     "solution": "We have that $r = \\sqrt{0^2 + 3^2} = 3.$  ... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/807.json"},
    {"problem": "What is the value of $\\frac{1}{2} + \\frac{1}{4}$?",
     "solution": "$\\frac{1}{2} + \\frac{1}{4} = \\frac{3}{4}$, so the answer is $\\boxed{\\frac{3}{4}}$.",
     "answer": "\\frac{3}{4}", "subject": "Prealgebra", "level": 1, "unique_id": "fixture/1.json"},
]
VERL_SAMPLE = [
    {"data_source": "KlearReasoner-MathSub-30K",
     "prompt": [{"role": "user", "content": "Compute $7 \\times 8$. Please reason step by step, and put your "
                                            "final answer within \\boxed{}."}],
     "ability": "math", "reward_model": {"style": "rule", "ground_truth": "56"},
     "extra_info": {"index": 0, "split": "train"}},
    {"data_source": "KlearReasoner-MathSub-30K",
     "prompt": [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Simplify $\\frac{6}{8}$. Put your final answer within \\boxed{}."}],
     "ability": "math", "reward_model": {"style": "rule", "ground_truth": "\\frac{3}{4}"},
     "extra_info": {"index": 1, "split": "train"}},
]


# verl format as in the authors' evaluation files (data/aime960_math_verify*_uni.json in
# Kwai-Klear/ERC): JSON Lines saved as .json, the bare problem as the only user message, no
# instruction. Three short AIME-style problems written for this fixture.
AIME_VERL_SAMPLE = [
    {"data_source": "math_longcot_math_verify",
     "prompt": [{"content": problem, "role": "user"}], "ability": "MATH",
     "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"}, "__index_level_0__": float(i)}
    for i, (problem, answer) in enumerate([
        ("Find the remainder when $3^{7}$ is divided by $100$.", "87"),
        ("How many positive divisors does $360$ have?", "24"),
        ("The sum of three consecutive odd integers is $111$. Find the largest of the three integers.", "39"),
    ])
]


def write_parquet(rows: list[dict], path: str | os.PathLike) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
    return path


def write_fixtures(out_dir: str | os.PathLike | None = None, synthetic_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write small sample files in the GSM8K, MATH-500 and verl formats (JSONL and parquet) and the
    synthetic task files. Returns the paths written."""
    out = Path(out_dir) if out_dir else FIXTURE_DIR
    syn = Path(synthetic_dir) if synthetic_dir else SYNTHETIC_DIR
    paths = []
    for name, rows in (("gsm8k", GSM8K_SAMPLE), ("math500", MATH500_SAMPLE), ("verl", VERL_SAMPLE)):
        paths.append(write_jsonl(rows, out / f"{name}_sample.jsonl"))
        paths.append(write_parquet(rows, out / f"{name}_sample.parquet"))
    paths.append(write_jsonl(AIME_VERL_SAMPLE, out / "aime_verl_sample.json"))  # JSON Lines named .json
    for task, level, style in (("arith", 1, "bare"), ("arith", 2, "instruct"), ("arith", 4, "instruct"),
                               ("mc-arith", 1, "instruct"), ("word", 1, "instruct")):
        name = f"{task}-L{level}-{style}.jsonl"
        paths.append(write_jsonl(make_synthetic(task, 50, level, seed=0, style=style), syn / name))
    return paths


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-fixtures", action="store_true", help="write data/fixtures and data/synthetic")
    args = ap.parse_args(argv)
    if args.write_fixtures:
        for p in write_fixtures():
            print(p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p)
    else:
        ap.print_help()


if __name__ == "__main__":
    main()
