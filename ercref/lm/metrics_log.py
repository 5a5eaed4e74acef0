"""Run outputs: a JSONL log (one line per SFT step, minibatch, training step and evaluation, each
with a "kind") and optional TensorBoard scalars. No plotting here: the PNG of a run is
ercref.lm.run_plot.plot_run(log_path, png_path) (matplotlib only).

Log lines:  {"kind": "minibatch", "step": s, "staleness": k, ...}   k = 0..K-1 within step s
            {"kind": "step", "step": s, ...}                          per rollout batch
            {"kind": "eval", "step": s, "eval/avg@k": ..., "eval/pass@k": ...}
            {"kind": "sft", "sft_step": i, "sft/loss": ...}
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# Metrics whose values depend on wall-clock time (everything else is deterministic given the seed).
TIMING_PREFIXES = ("time/", "perf/")


class RunLog:
    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("train.tensorboard=True needs the tensorboard package (pip install tensorboard)") from e
            self.tb = SummaryWriter(str(self.dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop step/minibatch/eval lines with step > ``step`` (written by a run killed after its
        last checkpoint), so a resumed run's log equals an uninterrupted one."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by the kill
                continue
            if rec.get("step", -1) <= step:
                keep.append(line)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:  # durable before the rename: a crash leaves the old log or the new one
            fh.write("".join(line + "\n" for line in keep))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            kind = record.get("kind", "")
            x = record["step"] * 1000 + record.get("staleness", 0) if kind == "minibatch" else record["step"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "staleness"):
                    self.tb.add_scalar(f"{kind}/{k}", v, x)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(path: str | os.PathLike, kind: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in recs if kind is None or r.get("kind") == kind]


def strip_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith(TIMING_PREFIXES)}

