"""Per-token views for notebooks: token strings, token capture tables, HTML tables and highlighted text.

Formatting only: every number shown (entropy, entropy ratio, the ERC clip decision) is computed
elsewhere (ercref.entropy, ercref.erc) and passed in. Rendered with IPython.display.HTML.

Highlight classes, one per token:
    KEPT (0)           ERC keeps the token (1 - beta_low < rho < 1 + beta_high)
    CLIPPED_LOW (-1)   rho <= 1 - beta_low  (entropy fell too far)
    CLIPPED_HIGH (+1)  rho >= 1 + beta_high (entropy rose too far)
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd

KEPT, CLIPPED_LOW, CLIPPED_HIGH = 0, -1, 1
STATE_STYLE = {
    KEPT: "background: transparent;",
    CLIPPED_LOW: "background: #9ecae1; border-bottom: 2px solid #3182bd;",   # blue: entropy fell
    CLIPPED_HIGH: "background: #fdae6b; border-bottom: 2px solid #e6550d;",  # orange: entropy rose
}
STATE_LABEL = {KEPT: "kept", CLIPPED_LOW: "clipped (rho <= 1 - beta_low)", CLIPPED_HIGH: "clipped (rho >= 1 + beta_high)"}


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Display string of each token id (byte-level tokens decoded one by one, e.g. 'Ġthe' -> ' the')."""
    out = []
    for i in ids:
        tok = tokenizer.convert_ids_to_tokens(int(i))
        try:
            out.append(tokenizer.convert_tokens_to_string([tok]))
        except Exception:  # tokenizers without a byte-level decoder
            out.append(tok)
    return out


def _visible(s: str) -> str:
    """HTML-escaped token text with whitespace made visible (newline shown as a return symbol)."""
    return html.escape(s).replace("\n", "\u21b5").replace(" ", "\u00a0") or "\u2205"


def erc_states(keep: Sequence[bool], clipped_low: Sequence[bool], clipped_high: Sequence[bool]) -> list[int]:
    """Combine the three boolean masks of ercref.erc_masks (one response row) into state codes."""
    if not (len(keep) == len(clipped_low) == len(clipped_high)):
        raise ValueError("keep, clipped_low and clipped_high must have the same length")
    return [CLIPPED_LOW if bool(lo) else CLIPPED_HIGH if bool(hi) else KEPT
            for lo, hi in zip(clipped_low, clipped_high)]


def highlight_html(tokens: Sequence[str], states: Sequence[int], tooltips: Sequence[str] | None = None,
                   title: str | None = None) -> str:
    """The text of one response with each token's background set by its state (KEPT / CLIPPED_*).

    tooltips[i] (optional) is shown on hover (e.g. "H=0.03 rho=0.71").
    """
    if len(tokens) != len(states):
        raise ValueError(f"tokens has {len(tokens)} entries but states has {len(states)}")
    if tooltips is not None and len(tooltips) != len(tokens):
        raise ValueError(f"tooltips has {len(tooltips)} entries but tokens has {len(tokens)}")
    spans = []
    for i, (t, s) in enumerate(zip(tokens, states)):
        if s not in STATE_STYLE:
            raise ValueError(f"states[{i}] must be one of {sorted(STATE_STYLE)}, got {s!r}")
        tip = f' title="{html.escape(tooltips[i])}"' if tooltips is not None else ""
        spans.append(f'<span style="{STATE_STYLE[s]} padding: 0 1px; margin: 0 1px 0 0;"{tip}>{_visible(t)}</span>')
    head = f"<div style='font-weight: bold; margin-top: 6px'>{html.escape(title)}</div>" if title else ""
    return f"{head}<div style='font-family: monospace; line-height: 1.9; white-space: normal'>{''.join(spans)}</div>"


def legend_html() -> str:
    """A one-line legend for highlight_html."""
    items = [f'<span style="{STATE_STYLE[s]} padding: 0 4px">{html.escape(STATE_LABEL[s])}</span>'
             for s in (KEPT, CLIPPED_LOW, CLIPPED_HIGH)]
    return "<div style='font-family: monospace; margin: 4px 0'>" + " &nbsp; ".join(items) + "</div>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def token_table_html(tokens: Sequence[str], columns: dict[str, Sequence], states: Sequence[int] | None = None,
                     max_rows: int | None = None) -> str:
    """An HTML table with one row per token: position, token text, then one column per entry of
    ``columns`` (name -> values, same length as tokens). Rows are shaded by ``states`` if given."""
    n = len(tokens)
    for name, vals in columns.items():
        if len(vals) != n:
            raise ValueError(f"column {name!r} has {len(vals)} values but there are {n} tokens")
    if states is not None and len(states) != n:
        raise ValueError(f"states has {len(states)} entries but there are {n} tokens")
    shown = n if max_rows is None else min(n, max_rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("t", "token", *columns))
    rows = []
    for i in range(shown):
        style = f' style="{STATE_STYLE[states[i]]}"' if states is not None else ""
        cells = "".join(f"<td style='text-align: right; padding: 0 6px'>{_fmt(columns[c][i])}</td>" for c in columns)
        rows.append(f"<tr{style}><td>{i}</td><td style='font-family: monospace'>{_visible(tokens[i])}</td>{cells}</tr>")
    more = f"<div>... {n - shown} more tokens</div>" if shown < n else ""
    return (f"<table style='border-collapse: collapse; font-size: 12px'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{more}")


def token_table(tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per response token of the captures: label, seed, step, staleness, old_entropy,
    entropy, rho, ratio, erc_state (-1 / 0 / +1), clipped (bool)."""
    rows = []
    for r in tokens.itertuples(index=False):
        for t in range(len(r.tokens)):
            rows.append({"label": r.label, "seed": r.seed, "step": r.step, "staleness": r.staleness,
                         "token": r.tokens[t], "old_entropy": r.old_entropy[t], "entropy": r.entropy[t],
                         "rho": r.rho[t], "ratio": r.ratio[t], "erc_state": r.erc_state[t],
                         "clipped": r.erc_state[t] != 0, "erc_applied": r.erc_applied})
    return pd.DataFrame.from_records(rows)
