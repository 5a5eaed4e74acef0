"""Pre-registration: the commit that fixed a study's primary hypotheses before its runs, and whether
each run was made after it.

A confirmatory study's hypotheses live in a data file (data/preregistration/*.json) so that git can
say when they were first committed exactly as they are (``registered_commit``); the runner refuses a
real run without that commit and saves it in the study's study.json; the report checks every run's
commit against it (``registration_text``: runs made at commits that do not contain it are named).

    c = registered_commit(path)                  # first commit holding path's current JSON, or None
    after_registration(c, ["abc123", ...])       # {commit: True / False / None (git cannot tell)}
    registration_text(c, commits, "runs")        # the report's sentence
    checked_hypotheses(definition, keys, where, check)   # a hypotheses list, checked (each kind adds
                                                         # its own fields' checks)
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from ercref.paths import REPO_ROOT

DIRECTIONS = {"lower": -1, "higher": 1, -1: -1, 1: 1}     # a hypothesis' direction: arm - baseline < 0 / > 0


def checked_hypotheses(definition: dict, keys: tuple[str, ...], where: str = "study.json",
                       check: Callable[[dict, str], dict | None] | None = None, required: bool = False) -> list[dict]:
    """``definition``'s "hypotheses", checked: a list (non-empty when ``required``) of objects, each
    with ``keys``, a direction "lower" / "higher" (or -1 / +1; returned as -1 / +1) and a unique id;
    ``check(h, tag)`` checks a kind's own fields and may return fields to replace. ValueError naming
    ``where``, the hypothesis and the field."""
    hs = definition.get("hypotheses", [])
    if not isinstance(hs, list) or (required and not hs):
        raise ValueError(f"{where}: hypotheses must be a {'non-empty ' if required else ''}list of objects, "
                         f"got {hs if isinstance(hs, list) else type(hs).__name__!r}")
    out, ids = [], set()
    for i, h in enumerate(hs):
        tag = f"{where}: hypotheses[{i}]"
        if not isinstance(h, dict):
            raise ValueError(f"{tag} must be an object with keys {list(keys)}")
        missing = [k for k in keys if k not in h]
        if missing:
            raise ValueError(f"{tag} lacks {missing} (a hypothesis needs {list(keys)})")
        extra = check(h, tag) if check is not None else None
        d = h["direction"]
        if isinstance(d, bool) or not isinstance(d, (str, int)) or d not in DIRECTIONS:
            raise ValueError(f"{tag}.direction is {d!r}; valid: 'lower' or -1 (arm - baseline < 0), 'higher' or 1 (> 0)")
        if h["id"] in ids:
            raise ValueError(f"{tag}.id {h['id']!r} is used twice")
        ids.add(h["id"])
        out.append({**h, **(extra or {}), "direction": DIRECTIONS[d]})
    return out


def registered_commit(path: Path) -> str | None:
    """The first commit that holds ``path`` with exactly its current content (as JSON); None when the
    current content is not committed (or outside a git checkout)."""
    try:
        want = json.loads(Path(path).read_text())
        rel = Path(path).resolve().relative_to(REPO_ROOT)
        commits = subprocess.run(["git", "log", "--reverse", "--format=%H", "--", str(rel)], cwd=REPO_ROOT,
                                 capture_output=True, text=True, timeout=30, check=True).stdout.split()
        for c in commits:
            shown = subprocess.run(["git", "show", f"{c}:{rel}"], cwd=REPO_ROOT, capture_output=True, text=True,
                                   timeout=30)
            if shown.returncode == 0 and json.loads(shown.stdout) == want:
                return c
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return None


def after_registration(registered: str, commits: Iterable) -> dict[str, bool | None]:
    """{commit: True when ``registered`` is an ancestor of it (or it itself), False when not, None when
    git cannot tell (a commit unknown to this repository, no git)}; a "-dirty" suffix is ignored."""
    out: dict[str, bool | None] = {}
    for c in sorted(set(commits)):
        try:
            rc = subprocess.run(["git", "merge-base", "--is-ancestor", registered, str(c).removesuffix("-dirty")],
                                cwd=REPO_ROOT, capture_output=True, timeout=30).returncode
        except (OSError, subprocess.SubprocessError):
            rc = None
        out[c] = {0: True, 1: False}.get(rc)
    return out


def registration_text(reg: str | None, commits: list, unit: str = "records") -> str:
    """The report's sentence: the registered commit and how many of the ``unit`` (one commit each in
    ``commits``; None for unknown) were made at commits that contain it."""
    if not reg:
        return "**no registered_commit in study.json: the hypotheses are not shown to precede the runs**"
    txt = f"primary hypotheses registered at commit `{reg}`"
    if not commits:
        return txt
    commits = ["unknown" if c is None else c for c in commits]
    found = after_registration(reg, commits)
    n = {state: sum(found[c] is state for c in commits) for state in (True, False, None)}
    parts = [f"{n[True]} {unit} made at commits that contain it"]
    if n[False]:
        parts.append(f"**{n[False]} {unit} made at commits that do not contain it**")
    if n[None]:
        parts.append(f"{n[None]} at commits git cannot place")
    return txt + " (" + ", ".join(parts) + ")"
