"""The machinery under ercref.lm.config, for any dataclass of section dataclasses: field types with
ranges (``Annotated[int, Range(1)]``), their checks, values read from text, ``section.field=value``
overrides and config files. Every error is a ValueError naming the field (or the file and line).

Text values (--set, overrides, config-file strings) are read by the field's type: bools accept
true/false, 1/0, yes/no, on/off (any case); ``none``/``null`` is None for an optional field;
numbers, lists and dicts are JSON; strings and choices are taken as they are.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import numbers
import os
import re
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


@dataclass(frozen=True)
class Range:
    """``Annotated[int | float, Range(low, high)]``: the interval a number field must lie in."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        return (v > self.low if self.low_open else v >= self.low) and (v < self.high if self.high_open else v <= self.high)

    def __str__(self) -> str:
        lo, hi = (int(x) if float(x).is_integer() else x for x in (self.low, self.high))
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {lo}"
        return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"


Count = Annotated[int, Range(1)]                        # a number of things, at least one
Size = Annotated[int, Range(0)]                         # a number or limit where 0 means none / no limit
Seed = Annotated[int, Range(0, 2**32 - 1)]              # numpy's seed range
Positive = Annotated[float, Range(0, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Share = Annotated[float, Range(0, 1, low_open=True)]    # (0, 1]
Decay = Annotated[float, Range(0, 1, high_open=True)]   # [0, 1)
Fraction = Annotated[float, Range(0, 1)]                # [0, 1]
Seconds = Annotated[float, Range(0, 86_400, low_open=True)]  # a wall-clock budget: (0, a day]
# a sampling temperature: logits / T stays finite in fp32 / bf16 for any |logit| < 1e32 (T = 1e-4 is near-greedy)
Temperature = Annotated[float, Range(1e-6)]


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case) -> bool; ValueError otherwise."""
    key = str(text).strip().lower()
    if key not in BOOL_WORDS:
        raise ValueError(f"not a bool: {text!r} (use true/false, 1/0, yes/no or on/off)")
    return BOOL_WORDS[key]


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field: resolved type, Annotated kept} of a dataclass, in field order."""
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def sections_of(cls: type) -> dict[str, type]:
    """{name: dataclass} of the fields of cls that are dataclasses (its sections), in order."""
    return {name: tp for name, tp in field_types(cls).items() if dataclasses.is_dataclass(tp)}


def _split(tp: Any) -> tuple[Any, bool, list]:
    """A field type -> (its base type, whether None is allowed, its Range constraints)."""
    if get_origin(tp) is Annotated:
        tp, *meta = get_args(tp)
        return tp, False, [m for m in meta if isinstance(m, Range)]
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return inner[0], len(inner) < len(get_args(tp)), []
    return tp, False, []


def describe(tp: Any) -> str:
    """What a value of type tp is, for error messages: 'an integer >= 1', "one of ['a', 'b']", ..."""
    base, optional, ranges = _split(tp)
    text = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(base)
    if get_origin(base) is Literal:
        text = f"one of {list(get_args(base))}"
    return " ".join([text or "a mapping of names to values", *map(str, ranges)]) + (" or none" if optional else "")


def parse_text(name: str, tp: Any, text: str) -> Any:
    """A command-line or config-file string as a value of type tp; ValueError naming ``name``."""
    base, optional, _ = _split(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    if base is str or get_origin(base) is Literal:
        return text
    if base is bool:
        if text.strip().lower() not in BOOL_WORDS:
            raise ValueError(f"{name} must be true or false (also 1/0, yes/no, on/off), got {text!r}")
        return BOOL_WORDS[text.strip().lower()]
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{name} must be {describe(tp)}, got {text!r}") from None


def typed(name: str, tp: Any, value: Any) -> Any:
    """value if it is a tp within its Range (an int is taken as a float; NumPy scalars as the Python
    number or bool); ValueError naming ``name``."""
    base, optional, ranges = _split(tp)
    if value is None and optional:
        return None
    if base is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)            # an int, a NumPy float or int (a value from a sweep)
    elif base is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)              # a NumPy int
    elif base is bool and getattr(getattr(value, "dtype", None), "kind", None) == "b" and getattr(value, "shape", 1) == ():
        value = bool(value)             # a NumPy bool
    if get_origin(base) is Literal:
        ok = isinstance(value, str) and value in get_args(base)
    elif base is float:
        ok = isinstance(value, float) and math.isfinite(value)
    elif base in (bool, str):
        ok = isinstance(value, base)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:                               # dict[str, V]: a value may be None (a loss keyword's "off")
        ok = isinstance(value, dict) and all(isinstance(k, str) and k for k in value)
        if ok:
            value = {k: typed(f"{name}.{k}", get_args(base)[1] | None, v) for k, v in value.items()}
    if not ok or not all(value in r for r in ranges):
        raise ValueError(f"{name} must be {describe(tp)}, got {value!r}")
    return value


def check_fields(section: str, obj: Any) -> None:
    """Every field of the dataclass obj has its type and range (ints in float fields become floats)."""
    for name, tp in field_types(type(obj)).items():
        setattr(obj, name, typed(f"{section}.{name}", tp, getattr(obj, name)))


class Section:
    """Mixin of a config section: __post_init__ checks every field's type and range, then the
    section's own rules (_check). ``_section`` is its name in error messages."""

    _section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self._section, self)
        self._check()

    def _check(self) -> None:
        pass


# ----------------------------------------------------------------------------- overrides and files
def override_items(overrides: Mapping[str, Any] | Iterable[str | tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """{"section.field": value} or ["section.field=value" or (name, value), ...] -> [(name, value), ...]."""
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    items = []
    for item in overrides or ():
        if isinstance(item, tuple) and len(item) == 2:
            items.append(item)
        elif isinstance(item, str) and "=" in item:
            name, value = item.split("=", 1)
            items.append((name.strip(), value.strip()))
        else:
            raise ValueError(f"override {item!r} must look like section.field=value")
    return items


def _field_type(cls: type, dotted: str) -> Any:
    """The type of ``section.field`` or ``section.dict_field.key``; ValueError listing the valid names."""
    parts, secs = dotted.split("."), sections_of(cls)
    if len(parts) < 2 or parts[0] not in secs:
        raise ValueError(f"unknown config field {dotted!r}: expected section.field with section one of {list(secs)}")
    types_ = field_types(secs[parts[0]])
    if parts[1] not in types_:
        raise ValueError(f"unknown config field {dotted!r}: {parts[0]} has fields {list(types_)}")
    tp = types_[parts[1]]
    if len(parts) == 2:
        return tp
    if get_origin(tp) is not dict or len(parts) != 3:
        raise ValueError(f"cannot set {dotted!r}: only a dict field takes a key (section.field.key)")
    return get_args(tp)[1] | None


def apply_overrides(cfg: Any, overrides: Mapping[str, Any] | Iterable[str | tuple[str, Any]]) -> Any:
    """A new config: cfg with {"section.field": value} or ["section.field=value", ...] applied
    (strings read by the field's type), validated as a whole; cfg is left as it was."""
    changes: dict[str, dict[str, Any]] = {}
    for dotted, value in override_items(overrides):
        tp = _field_type(type(cfg), dotted)
        value = typed(dotted, tp, parse_text(dotted, tp, value) if isinstance(value, str) else value)
        section, name, *key = dotted.split(".")
        sec = changes.setdefault(section, {})
        sec[name] = {**sec.get(name, getattr(getattr(cfg, section), name)), key[0]: value} if key else value
    new = {}
    for section, fields in changes.items():
        try:
            new[section] = dataclasses.replace(copy.deepcopy(getattr(cfg, section)), **fields)
        except ValueError as e:     # a section that names its fields bare: 'beta_low must be ...'
            msg = str(e)
            known = any(msg.startswith(f) for f in field_types(type(getattr(cfg, section))))
            raise ValueError(msg if msg.startswith(section + ".") else f"{section}.{msg}" if known
                             else f"{section}: {msg}") from None
    return dataclasses.replace(copy.deepcopy(cfg), **new)


def flatten(cls: type, d: Mapping) -> list[tuple[str, Any]]:
    """{"loss": {"beta_low": 0.1}, "train.steps": 5} -> [("loss.beta_low", 0.1), ("train.steps", 5)]."""
    out = []
    for k, v in d.items():
        if k in sections_of(cls):
            if not isinstance(v, Mapping):
                raise ValueError(f"config section {k!r} must be a mapping of fields, got {v!r}")
            out.extend((f"{k}.{f}", fv) for f, fv in v.items())
        else:
            out.append((k, v))
    return out


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON (or YAML, with PyYAML) file of sections -> its dict. ValueError naming the file (and
    line) when it is missing, not UTF-8, not valid JSON / YAML or not a mapping."""
    p, name = Path(path), repr(str(path))
    if not p.is_file():
        raise ValueError(f"config file {name} does not exist (or is not a file)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"config file {name}, line {line}: byte {raw[e.start]:#04x} is not UTF-8 text; "
                         "save the file as UTF-8") from None
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"config file {name} is YAML but PyYAML is not installed; use JSON") from None
        try:
            data = yaml.load(text, Loader=_unique_key_loader(yaml))
        except _DuplicateKey as e:
            raise ValueError(f"config file {name}, line {e.line}: {e.key!r} appears twice in one mapping (the "
                             "second would silently replace the first); keep one") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            where = f", line {mark.line + 1}" if mark else ""
            raise ValueError(f"config file {name}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        except ValueError as e:  # a value YAML cannot build (an integer over Python's digit limit)
            raise ValueError(f"config file {name}: a value cannot be read ({e})") from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys, parse_int=_json_int)
        except _DuplicateKey as e:
            line = _line_of_second(text, json.dumps(e.key))
            raise ValueError(f"config file {name}{f', line {line}' if line else ''}: {e.key!r} appears twice in one "
                             "object (the second would silently replace the first); keep one") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {name}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {name} must hold a mapping of sections, e.g. "
                         f"{{\"loss\": {{\"beta_low\": 0.1}}}}, got {type(data).__name__}")
    _check_keys(name, data)
    return data


def _check_keys(name: str, data: Mapping, where: str = "") -> None:
    """Every key of the file's sections is a name: YAML reads an unquoted on / off / yes / no /
    true / false / null or a number as a value, so ``on: 3`` would become the key True."""
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"config file {name}: the key {key!r} {f'in {where!r} ' if where else ''}is not a name "
                             "(YAML reads unquoted on/off/yes/no/true/false/null and numbers as values): quote it")
        if isinstance(value, Mapping):
            _check_keys(name, value, f"{where}.{key}" if where else key)


class _LongInteger:
    """An integer literal over Python's int-string limit: kept as text so that the field it is given
    to refuses it by name (an int field: "must be an integer ..., got <an integer of N digits>")."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<an integer of {len(self.text.lstrip('-'))} digits>"


def _json_int(text: str) -> int | _LongInteger:
    limit = sys.get_int_max_str_digits()
    return _LongInteger(text) if limit and len(text.lstrip("-")) > limit else int(text)


class _DuplicateKey(Exception):
    def __init__(self, key, line: int | None = None):
        super().__init__(key)
        self.key, self.line = key, line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a dict, or _DuplicateKey for a key given twice."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _line_of_second(text: str, quoted: str) -> int | None:
    """The line of the second place the JSON string ``quoted`` is used as a key in ``text``."""
    spots = [m.start() for m in re.finditer(re.escape(quoted) + r"\s*:", text)]
    return text.count("\n", 0, spots[1]) + 1 if len(spots) > 1 else None


def _unique_key_loader(yaml):
    """A yaml SafeLoader whose mappings refuse a key given twice (_DuplicateKey with its line)."""
    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:   # an unhashable (complex) key: the mapping constructor reports it
                pass
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader
