"""Command line: ``python -m ercref.train`` (or the ``ercref`` console script).

    python -m ercref.train --preset cpu-tiny                         # ~30 s on 2 cores
    python -m ercref.train --preset cpu-smollm2 --out runs/smol      # minutes
    python -m ercref.train --preset cpu-tiny --set loss.erc=false --set loss.name=gppo
    python -m ercref.train --config my.json --set train.steps=50
    python -m ercref.train --out runs/smol --resume                  # continue from the last checkpoint
    python -m ercref.train --list-presets
    python -m ercref.train --preset cpu-tiny --print-config          # the resolved config as JSON

Writes to --out: metrics.jsonl (one line per minibatch / step / eval, with a "kind"),
config.json, checkpoints/ckpt-<step>.pt, plot.png (and tb/ with train.tensorboard=true).
With --resume and no --preset/--config, the run's saved config.json is used (plus --set).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ercref.train", description="RL of a language model with any "
                                 "registered policy loss, with or without Entropy Ratio Clipping (ERC).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", help="cpu-tiny | cpu-smollm2 | gpu-paper-1.5b")
    ap.add_argument("--config", help="JSON (or YAML) file of sections, e.g. {\"loss\": {\"beta_low\": 0.1}}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override one field (repeatable), e.g. --set loss.beta_low=0.1")
    ap.add_argument("--out", default=None, help="output folder (default runs/<preset or run>)")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    ap.add_argument("--list-presets", action="store_true")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ercref.lm.config import PRESETS, config_from_dict, apply_overrides, make_config, validate_config

    if args.list_presets:
        for name, values in PRESETS.items():
            print(f"{name}: model={values.get('model.name')}, task={values.get('data.task')}, "
                  f"steps={values.get('train.steps')}")
        return 0
    out = Path(args.out) if args.out else None
    saved = out / "config.json" if out is not None else None
    try:
        if args.resume and not args.preset and not args.config and saved is not None and saved.is_file():
            cfg = apply_overrides(config_from_dict(json.loads(saved.read_text())), args.overrides)
            validate_config(cfg)
        else:
            cfg = make_config(args.preset, args.config, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    out = out or Path("runs") / (cfg.preset or "run")
    from ercref.lm.trainer import run

    history = run(cfg, out, resume=args.resume)
    if history:
        first, last = history[0], history[-1]
        print(f"done: {len(history)} steps in {out}; reward/mean {first['reward/mean']:.3f} -> {last['reward/mean']:.3f}; "
              f"log {out / 'metrics.jsonl'}, plot {out / 'plot.png'}")
    else:
        print(f"nothing to do: {out} is already at train.steps={cfg.train.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
