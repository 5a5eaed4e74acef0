"""Run outputs: a JSONL log (one line per SFT step, minibatch, training step and evaluation, each
with a "kind"), optional TensorBoard scalars, and a PNG of the run at the end.

Log lines:  {"kind": "minibatch", "step": s, "staleness": k, ...}   k = 0..K-1 within step s
            {"kind": "step", "step": s, ...}                          per rollout batch
            {"kind": "eval", "step": s, "eval/avg@k": ..., "eval/pass@k": ...}
            {"kind": "sft", "sft_step": i, "sft/loss": ...}
"""
from __future__ import annotations

import json
import os
import warnings
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
        tmp.write_text("".join(l + "\n" for l in keep))
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
    recs = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    return [r for r in recs if kind is None or r.get("kind") == kind]


def strip_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith(TIMING_PREFIXES)}


def plot_run(log_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """2 x 2 panels per training step: reward and accuracy; old/new entropy; ERC and PPO clip
    fractions; grad norm. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = read_log(log_path, "step")
    evals = read_log(log_path, "eval")
    if not steps:
        warnings.warn(f"no step records in {log_path}; nothing to plot")
    x = [r["step"] for r in steps]

    def col(name):
        return [r.get(name, float("nan")) for r in steps]

    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    a = ax[0, 0]
    a.plot(x, col("reward/mean"), label="reward/mean")
    a.plot(x, col("reward/accuracy"), label="reward/accuracy")
    if evals:
        ks = [k for k in evals[0] if k.startswith("eval/avg@")]
        if ks:
            a.plot([e["step"] for e in evals], [e[ks[0]] for e in evals], "o--", label=ks[0])
    a.set_title("reward"); a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(x, col("entropy/old_mean"), label="entropy/old_mean")
    a.plot(x, col("entropy/new_mean"), label="entropy/new_mean")
    a.set_title("token entropy (nats)"); a.legend(fontsize=8)
    a = ax[1, 0]
    for name in ("erc/clip_frac_low", "erc/clip_frac_high", "ppo/clip_frac_low", "ppo/clip_frac_high"):
        a.plot(x, col(name), label=name)
    a.set_title("clip fractions (of response tokens)"); a.legend(fontsize=8)
    a = ax[1, 1]
    a.plot(x, col("grad/norm"), label="grad/norm")
    a.set_title("grad norm (before clipping)"); a.legend(fontsize=8)
    for a in ax.flat:
        a.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return png_path
