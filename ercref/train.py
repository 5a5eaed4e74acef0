"""Command line: ``python -m ercref.train`` (or the ``ercref`` console script).

    python -m ercref.train --preset cpu-tiny                         # seconds on 2 cores
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
``--section.field`` / ``--section.no-field``; a dict: ``KEY=VALUE ...``), listed by --help with its
default; ``--set section.field=value`` does the same by name (repeatable; ``loss.loss_kwargs.eps_high=0.28``
sets one key of a dict). Precedence: --preset < --config < --set < typed flags. The command line is
read twice by tyro: first the run options, which give the config the typed flags then change.

Writes to --out: metrics.jsonl (one line per minibatch / step / eval, with a "kind"), config.json,
checkpoints/ckpt-<step>.pt, plot.png (and tb/ with train.tensorboard=true). A fresh run refuses an
--out that already holds a run unless --overwrite (or --resume) is given. With --resume and no
--preset/--config, the run's saved config.json is used (plus --set and flags).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

from ercref.lm.config import PRESETS, Config, make_config, parse_text

PROG = "python -m ercref.train"
DESCRIPTION = ("RL of a language model with any registered policy loss, with or without Entropy Ratio Clipping "
               "(ERC). Defaults shown are those of --preset / --config / --set when given.")
Flag = Annotated[bool, tyro.conf.FlagCreatePairsOff]
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
Overrides = Annotated[list[str], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="SECTION.FIELD=VALUE")]


@dataclass
class RunOptions:
    """What to run (the config sections follow as their own option groups)."""
    preset: PresetName | None = None    # start from a named preset (see --list-presets)
    config: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None  # JSON or YAML file of sections, e.g. {"loss": {"beta_low": 0.1}}
    set: Overrides = field(default_factory=list)  # override one field by name, e.g. loss.erc=off
    out: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None  # output folder; None: runs/<preset or run>
    resume: Flag = False                # continue from the last checkpoint in --out (config: its config.json unless --preset/--config)
    overwrite: Flag = False             # start a fresh run in an --out that already holds a run (deletes its files)
    list_presets: Flag = False          # list the presets and exit
    print_config: Flag = False          # print the resolved config as JSON and exit


@dataclass
class Args(RunOptions):
    cfg: Annotated[Config, tyro.conf.arg(name="")] = field(default_factory=Config)


REGISTRY = ConstructorRegistry()


@REGISTRY.primitive_rule
def _dict_as_key_value_pairs(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """A dict field (loss.loss_kwargs) is one flag of KEY=VALUE pairs that replace the whole dict
    (tyro would otherwise make one flag per key of a non-empty default)."""
    if info.type_origin is not dict:
        return None
    value_type = info.type.__args__[1] | None

    def parse(items: list[str]) -> dict:
        pairs = [item.partition("=") for item in items]
        if bad := [k + s + v for k, s, v in pairs if not (k and s)]:
            raise ValueError(f"expected KEY=VALUE pairs, got {bad[0]!r}")
        return {k: parse_text(k, value_type, v) for k, _, v in pairs}

    return PrimitiveConstructorSpec(
        nargs="*", metavar="KEY=VALUE ...", instance_from_str=parse, is_instance=lambda x: isinstance(x, dict),
        str_from_instance=lambda d: [f"{k}={v}" for k, v in d.items()])


def start_config(opts: RunOptions) -> Config:
    """--preset < --config < --set, or with --resume and neither --preset nor --config the run's
    saved config.json < --set. ValueError naming the option or file otherwise."""
    if opts.overwrite and opts.resume:
        raise ValueError("--overwrite (delete the run in --out and start again) and --resume (continue it) "
                         "contradict each other; give one")
    if not (opts.resume and not opts.preset and not opts.config):
        return make_config(opts.preset, opts.config, opts.set)
    if not opts.out:
        raise ValueError("--resume needs --out DIR (the folder of the run to continue), "
                         "or --preset/--config to rebuild its config")
    saved = Path(opts.out) / "config.json"
    if not saved.is_file():
        raise ValueError(f"--resume: {saved} does not exist, so the run's config is unknown; "
                         "pass the --out of an earlier run, or --preset/--config to rebuild the config")
    return make_config(config_file=saved, overrides=opts.set)


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    try:
        opts, _ = tyro.cli(RunOptions, args=[a for a in argv if a not in ("-h", "--help")], prog=PROG,
                           return_unknown_args=True)
        if opts.list_presets and not wants_help:
            for name, c in PRESETS.items():
                print(f"{name}: model={c.model.name}, task={c.data.task}, loss={c.loss.loss}"
                      f"{'+ERC' if c.loss.erc else ''}, steps={c.train.steps}, device={c.train.device}")
            return 0
        base = start_config(opts)
        args = tyro.cli(Args, args=argv, prog=PROG, description=DESCRIPTION, registry=REGISTRY,
                        default=Args(preset=opts.preset, config=opts.config, out=opts.out, cfg=base))
    except SystemExit as e:   # --help (0) or a bad option or value (2); tyro has printed the message
        return e.code if isinstance(e.code, int) else 2
    except ValueError as e:
        return _error(str(e))
    cfg = args.cfg
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    out = Path(args.out) if args.out else Path("runs") / (cfg.preset or "run")
    from ercref.lm import checkpoint as ckpt
    from ercref.lm.trainer import Trainer

    try:   # the machine (CUDA, vLLM, model files) and --out are checked before anything is built
        trainer = Trainer(cfg, out, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        return _error(str(e))
    try:
        history = trainer.fit()
    except ckpt.InsufficientDiskSpace as e:   # checked before a save writes anything: the run resumes from its last checkpoint
        return _error(f"{e}. Free space, then continue with --resume")
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
