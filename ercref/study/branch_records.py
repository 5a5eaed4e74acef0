"""A branching study's cache as one frame: every record read and checked (ercref.study.branch_record,
the record contract of the branching runner), the study definition and its pre-registered primaries.

    data/results/NAME/study.json                    the definition, with the pre-registered
                                                    ``hypotheses``, ``holm`` and ``registered_commit``
    data/results/NAME/trajS/stepT/KK/ARM.json       one record per (trajectory seed, branch step, K, arm)

``load_branch`` trusts a record only when branch_record.read_record accepts it (it parses, its own
meta_sha256 matches, it has every key and names the study, seed, step, K and arm of its path) and
its hist lists have HIST_BINS counts; anything else, and any stray file under trajS/, is reported by
file name (a warning and ``.attrs["problems"]``), never read, never moved or deleted (the runner sets
damaged records aside when it reruns them).

Per-token KL(pi_old || pi_new) histograms (hist.trained, hist.heldout) count tokens in the bins
[e_i, e_i+1) of branch_record.HIST_EDGES (0, then a log grid 1e-8 .. 100 nats) plus an overflow bin
(>= 100 nats, +inf included): HIST_BINS = 82 counts; [] where the region had no token.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .branch_record import HIST_EDGES as _EDGES
from .branch_record import read_record, required_keys
from .cache import study_dir, wall_seconds
from .preregistration import checked_hypotheses

REGIONS = ("trained", "other", "heldout")
HIST_REGIONS = ("trained", "heldout")
HIST_EDGES = np.asarray(_EDGES)        # 82 edges: 81 bins [e_i, e_i+1) and the overflow bin, one count per edge
HIST_BINS = len(HIST_EDGES)
ACC_DELTA = "heldout_acc_delta"        # heldout_acc_after - heldout_acc_before, a column of load_branch
RECORD_PATH = re.compile(r"^traj(?P<seed>0|[1-9]\d*)/step(?P<step>0|[1-9]\d*)/K(?P<K>[1-9]\d*)/(?P<arm>[^/]+)\.json$")
HYPOTHESIS_KEYS = ("id", "arm", "baseline", "region", "metric", "direction", "text")


def column(region: str | None, metric: str) -> str:
    """The load_branch column of a metric: "<region>/<metric>" (e.g. "heldout/drift/kl_old_new/p99"),
    or the metric itself for region None (a column of the record's own, e.g. update_norm)."""
    return metric if region is None else f"{region}/{metric}"


# ----------------------------------------------------------------------------- reading the cache
def _check(path: Path, rel: str, study: str, require: tuple[str, ...] = ()) -> dict:
    """One record, checked (module doc; ``require``: branch_record.required_keys of the study's accuracy
    measure); ValueError naming the file."""
    m = RECORD_PATH.match(rel)
    rec = read_record(path, {"study": study, "seed": int(m["seed"]), "branch_step": int(m["step"]), "K": int(m["K"]),
                             "arm": m["arm"]}, require)
    for region in HIST_REGIONS:
        h = (rec["hist"] or {}).get(region)
        if h is not None and (not isinstance(h, list) or len(h) not in (0, HIST_BINS)):
            raise ValueError(f"{path}: hist.{region} must be a list of {HIST_BINS} counts (the bins of "
                             f"branch_record.HIST_EDGES and the overflow bin), or [] for no token, got "
                             f"{type(h).__name__} of length {len(h) if isinstance(h, list) else '-'}")
    return rec


def read_definition(root: Path) -> dict:
    """study.json of a branching study; {} when there is none; ValueError naming it (and the line)
    when it is not a JSON object."""
    path = Path(root) / "study.json"
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_bytes().decode())
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); the study definition is damaged") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}); the study definition is damaged") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a study definition must be a JSON object, got {type(d).__name__}")
    return d


def _flat(rec: dict, rel: str, judged: bool = False) -> dict:
    row = {k: rec[k] for k in ("seed", "branch_step", "K", "arm", "lr", "state_sha256", "git_commit", "cpu_model",
                               "heldout_acc_before", "heldout_acc_after", "update_norm")}
    row["wall_s"] = wall_seconds(rec)
    row["torch_threads"] = rec.get("torch_threads")
    row["path"] = rel
    for key, v in (rec.get("heldout_judged") or {}).items():
        row[f"judged/{key}"] = float(v)
    if judged:   # the study's held-out accuracy is the judged one (branch_study.ACCURACY_MEASURES)
        row["heldout_acc_before"], row["heldout_acc_after"] = row["judged/acc_old"], row["judged/acc_new"]
    row[ACC_DELTA] = float(row["heldout_acc_after"]) - float(row["heldout_acc_before"])
    for kind, share in (rec.get("clip") or {}).items():
        row[f"clip/{kind}"] = share
    for region in REGIONS:
        row[f"n_tokens/{region}"] = (rec["n_tokens"] or {}).get(region)
        for key, v in ((rec["drift"] or {}).get(region) or {}).items():
            row[column(region, key)] = float(v)
    for region in HIST_REGIONS:
        row[f"hist/{region}"] = (rec["hist"] or {}).get(region) or None      # [] (no token): None
    row["overrides"], row["matched"], row["tight_clip"] = rec.get("overrides"), rec.get("matched"), rec.get("tight_clip")
    return row


def load_branch(name: str, results_dir=None, warn: bool = True) -> pd.DataFrame:
    """Every record of branching study ``name`` that checks out, one row each: seed, branch_step, K, arm,
    lr, state_sha256, provenance, heldout accuracies and their change (ACC_DELTA; the judged ones,
    judged/<key> of ercref.importance_accuracy, where study.json says ``accuracy: judged``), update_norm,
    clip/<kind>, n_tokens/<region>, the drift summaries as columns ``column(region, key)``, hist/<region>
    (lists of counts) and path. ``.attrs``: "problems" (damaged records and stray files, each naming
    its file; also warned with ``warn``) and "definition" (study.json, {} without one)."""
    root = study_dir(name, results_dir)
    if not root.is_dir():
        raise ValueError(f"no cached branching study {name!r} at {root} (run the branching runner first)")
    definition = read_definition(root)
    judged = definition.get("accuracy") == "judged"
    rows, problems = [], []
    for p in sorted(root.glob("traj*/**/*")):
        if p.is_dir():
            continue
        rel = p.relative_to(root).as_posix()
        if not RECORD_PATH.match(rel):
            problems.append(f"{p}: stray file (not a record at trajN/stepT/KK/ARM.json)")
            continue
        try:
            rows.append(_flat(_check(p, rel, name, required_keys(definition.get("accuracy"))), rel, judged))
        except (OSError, ValueError) as e:
            problems.append(f"{e} (not counted)")
    if warn:
        for msg in problems:
            warnings.warn(msg, stacklevel=2)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["seed", "branch_step", "K", "arm", "state_sha256", "path"])
    df.attrs["problems"] = problems
    df.attrs["definition"] = definition
    return df


# ----------------------------------------------------------------------------- hypotheses
def hypotheses(definition: dict, where: str = "study.json") -> list[dict]:
    """The pre-registered primaries of a study definition, checked (preregistration.checked_hypotheses):
    each needs HYPOTHESIS_KEYS with region one of REGIONS (or null for a column of the record's own),
    direction "lower" / "higher" (or -1 / +1; returned as -1 / +1), optional K (int or list of ints;
    returned as a list, None = every K). ValueError naming ``where``, the hypothesis and the field."""
    def check(h: dict, tag: str) -> dict:
        if h["region"] is not None and h["region"] not in REGIONS:
            raise ValueError(f"{tag}.region is {h['region']!r}; valid: {list(REGIONS)} or null")
        ks = h.get("K")
        ks = None if ks is None else ([ks] if isinstance(ks, int) else ks)
        if ks is not None and not (isinstance(ks, list) and ks and all(isinstance(k, int) and k > 0 for k in ks)):
            raise ValueError(f"{tag}.K is {h.get('K')!r}; valid: a positive int, a list of them, or absent (every K)")
        return {"K": ks}

    return checked_hypotheses(definition, HYPOTHESIS_KEYS, where, check)
