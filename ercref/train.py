"""Command line: ``python -m ercref.train`` (or the ``ercref`` console script).

    python -m ercref.train --preset cpu-tiny                         # ~30 s on 2 cores
    python -m ercref.train --preset cpu-smollm2 --out runs/smol      # minutes
    python -m ercref.train --preset cpu-tiny --set loss.erc=off --set loss.loss=gppo
    python -m ercref.train --preset cpu-tiny --loss.beta-low 0.1 --loss.no-erc   # typed flags
    python -m ercref.train --config my.json --set train.steps=50
    python -m ercref.train --out runs/smol --resume                  # continue from the last checkpoint
    python -m ercref.train --preset cpu-tiny --out runs/x --overwrite   # start again in a used folder
    python -m ercref.train --list-presets
    python -m ercref.train --preset cpu-tiny --print-config          # the resolved config as JSON
    python -m ercref.train --preset cpu-tiny --help                  # every field, with the preset's values

Every field of every section (ercref.lm.config) is a flag ``--section.field VALUE`` (bools:
``--section.field`` / ``--section.no-field``), listed by --help with its default; ``--set
section.field=value`` does the same by name (repeatable; ``loss.loss_kwargs.eps_high=0.28`` sets one
key of a dict). Precedence: --preset < --config < --set < typed flags.

Writes to --out: metrics.jsonl (one line per minibatch / step / eval, with a "kind"),
config.json, checkpoints/ckpt-<step>.pt, plot.png (and tb/ with train.tensorboard=true). A fresh run
refuses an --out that already holds checkpoints unless --overwrite (or --resume) is given.
With --resume and no --preset/--config, the run's saved config.json is used (plus --set and flags);
without one that is an error.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

from ercref.lm.config import (
    PRESETS,
    Config,
    _check_hardware,
    apply_overrides,
    config_from_dict,
    convert,
    make_config,
    sections,
)

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]

DESCRIPTION = ("RL of a language model with any registered policy loss, with or without Entropy Ratio Clipping "
               "(ERC). Defaults shown are those of --preset / --config / --set when given. "
               "Examples: python -m ercref.train --preset cpu-tiny --set loss.erc=off; "
               "python -m ercref.train --out runs/smol --resume.")


def _bool_flag(help: str) -> object:
    return Annotated[bool, tyro.conf.FlagCreatePairsOff, tyro.conf.arg(help=help)]


@dataclass
class RunOptions:
    """What to run (the config sections follow as their own option groups)."""
    preset: Annotated[PresetName | None, tyro.conf.arg(
        help="start from a named preset (see --list-presets)")] = None
    config: Annotated[str | None, tyro.conf.arg(
        metavar="FILE", help='JSON or YAML file of sections, e.g. {"loss": {"beta_low": 0.1}}')] = None
    set: Annotated[list[str], tyro.conf.UseAppendAction, tyro.conf.arg(
        metavar="SECTION.FIELD=VALUE", help="override one field by name, e.g. loss.erc=off")] = field(default_factory=list)
    out: Annotated[str | None, tyro.conf.arg(
        metavar="DIR", help="output folder; None: runs/<preset or run>")] = None
    resume: _bool_flag("continue from the last checkpoint in --out (config: its config.json unless --preset/--config)") = False  # type: ignore[valid-type]
    overwrite: _bool_flag("start a fresh run in an --out that already holds checkpoints (deletes them)") = False  # type: ignore[valid-type]
    list_presets: _bool_flag("list the presets and exit") = False  # type: ignore[valid-type]
    print_config: _bool_flag("print the resolved config as JSON and exit") = False  # type: ignore[valid-type]


REGISTRY = ConstructorRegistry()


@REGISTRY.primitive_rule
def _dict_as_key_value_pairs(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """A dict field (loss.loss_kwargs) is one flag taking KEY=VALUE pairs that replace the whole dict,
    whatever the default holds (tyro's default would make one flag per key of a non-empty default)."""
    if info.type_origin is not dict:
        return None
    args = getattr(info.type, "__args__", ())
    value_type = args[1] if len(args) == 2 else str

    def parse(items: list[str]) -> dict:
        out = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"expected KEY=VALUE pairs, got {item!r}")
            out[key] = convert(key, value_type | None, value)
        return out

    return PrimitiveConstructorSpec(
        nargs="*", metavar="KEY=VALUE ...", instance_from_str=parse, is_instance=lambda x: isinstance(x, dict),
        str_from_instance=lambda d: [f"{k}={v}" for k, v in d.items()])


@functools.cache
def cli_type() -> type:
    """RunOptions plus one field per config section: the type tyro builds the command line from."""
    secs = sections()
    cls = dataclasses.make_dataclass(
        "TrainArgs", [(name, sec_type, field(default_factory=sec_type)) for name, sec_type in secs.items()],
        bases=(RunOptions,))
    cls.__doc__ = RunOptions.__doc__
    return cls


def _pre_parser() -> argparse.ArgumentParser:
    """Reads the options that decide the base config (and the defaults --help shows) before tyro runs."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--preset")
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out")
    for flag in ("--resume", "--overwrite", "--list-presets", "--print-config"):
        ap.add_argument(flag, action="store_true")
    return ap


def base_config(preset: str | None, config: str | None, overrides: list[str], out: str | None,
                resume: bool) -> Config:
    """Preset < config file < --set, or on --resume without preset/config the run's saved config.json.
    ValueError with a clear message otherwise. The hardware is not checked here."""
    if resume and not preset and not config:
        if not out:
            raise ValueError("--resume needs --out DIR (the folder of the run to continue), "
                             "or --preset/--config to rebuild its config")
        saved = Path(out) / "config.json"
        if not saved.is_file():
            raise ValueError(f"--resume: {saved} does not exist, so the run's config is unknown; "
                             "pass the --out of an earlier run, or --preset/--config to rebuild the config")
        try:
            cfg = config_from_dict(json.loads(saved.read_text()))
        except ValueError as e:
            raise ValueError(f"--resume: cannot load {saved}: {e}") from None
        return apply_overrides(cfg, overrides)
    return make_config(preset, config, overrides, validate=False)


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = _pre_parser().parse_known_args(argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    if pre.list_presets and not wants_help:
        for name, c in PRESETS.items():
            print(f"{name}: model={c.model.name}, task={c.data.task}, loss={c.loss.loss}{'+ERC' if c.loss.erc else ''}, "
                  f"steps={c.train.steps}, device={c.train.device}")
        return 0
    try:
        base = base_config(pre.preset, pre.config, pre.set, pre.out, pre.resume)
    except ValueError as e:
        return _error(str(e))
    Args = cli_type()
    secs = sections()
    try:
        args = tyro.cli(Args, args=argv, prog="python -m ercref.train", description=DESCRIPTION, registry=REGISTRY,
                        default=Args(**{name: getattr(base, name) for name in secs}))
    except SystemExit as e:   # --help (0) or a bad flag (2); tyro has printed the message
        return e.code if isinstance(e.code, int) else 2
    try:
        cfg = Config(**{name: getattr(args, name) for name in secs}, preset=base.preset)
        if not args.print_config:
            _check_hardware(cfg)
    except ValueError as e:
        return _error(str(e))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    out = Path(args.out) if args.out else Path("runs") / (cfg.preset or "run")
    from ercref.lm.trainer import run

    try:
        history = run(cfg, out, resume=args.resume, overwrite=args.overwrite)
    except FileExistsError as e:   # a fresh run into a folder with checkpoints, without --overwrite
        return _error(str(e))
    if cfg.train.plot and (out / "metrics.jsonl").is_file():
        from ercref.lm.run_plot import plot_run

        erc = "+ERC" if cfg.loss.erc else ""
        plot_run(out / "metrics.jsonl", out / "plot.png", title=f"{cfg.preset or 'run'}: {cfg.model.name}, "
                 f"loss={cfg.loss.loss}{erc}")
    if history:
        first, last = history[0], history[-1]
        print(f"done: {len(history)} steps in {out}; reward/mean {first['reward/mean']:.3f} -> {last['reward/mean']:.3f}; "
              f"log {out / 'metrics.jsonl'}" + (f", plot {out / 'plot.png'}" if cfg.train.plot else ""))
    else:
        print(f"nothing to do: {out} is already at train.steps={cfg.train.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
