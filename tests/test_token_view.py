"""Per-token HTML views (ercref.study.token_view): escaping, state styling, length checks."""
from __future__ import annotations

import pytest
import torch

from ercref import erc_masks
from ercref.lm.models import build_char_tokenizer
from ercref.study import token_view as tv


def test_token_strings_char_tokenizer():
    tok = build_char_tokenizer()
    ids = tok("1 + 2\n")["input_ids"]
    assert tv.token_strings(tok, ids) == ["1", " ", "+", " ", "2", "\n"]


def test_erc_states_from_erc_masks():
    old = torch.ones(1, 4)
    new = torch.tensor([[0.90, 1.00, 1.10, 0.96]])
    keep, low, high, _ = erc_masks(new, old, torch.ones(1, 4, dtype=torch.bool), 0.05, 0.05)
    states = tv.erc_states(keep[0].tolist(), low[0].tolist(), high[0].tolist())
    assert states == [tv.CLIPPED_LOW, tv.KEPT, tv.CLIPPED_HIGH, tv.KEPT]
    with pytest.raises(ValueError, match="same length"):
        tv.erc_states([True], [False, False], [False])


def test_highlight_html_escapes_and_styles_each_token():
    out = tv.highlight_html(["<b>", " x", "\n"], [tv.CLIPPED_LOW, tv.KEPT, tv.CLIPPED_HIGH], ["H=0.1 \"q\"", "a", "b"], title="r<1>")
    # token, title and tooltip text are escaped
    assert "&lt;b&gt;" in out and "<b>" not in out and "r&lt;1&gt;" in out and "&quot;q&quot;" in out
    assert out.count("<span") == 3
    spans = out.split("<span")[1:]
    assert tv.STATE_STYLE[tv.CLIPPED_LOW] in spans[0] and tv.STATE_STYLE[tv.KEPT] in spans[1]
    assert tv.STATE_STYLE[tv.CLIPPED_HIGH] in spans[2] and "\u21b5" in spans[2]  # newline made visible
    assert "\u00a0x" in spans[1]                                                  # leading space kept


def test_highlight_html_rejects_bad_input():
    with pytest.raises(ValueError, match="states"):
        tv.highlight_html(["a", "b"], [0])
    with pytest.raises(ValueError, match=r"states\[0\]"):
        tv.highlight_html(["a"], [5])
    with pytest.raises(ValueError, match="tooltips"):
        tv.highlight_html(["a"], [0], ["x", "y"])


def test_token_table_html_rows_and_truncation():
    out = tv.token_table_html(["a", "b", "c"], {"H": [0.5, 1.25, 2.0]}, states=[0, -1, 1], max_rows=2)
    assert out.count("<tr") == 3  # header + 2 rows
    assert "1.25" in out and "2.0" not in out.split("</tbody>")[0].split("<tr")[-1]
    assert "1 more tokens" in out
    with pytest.raises(ValueError, match="column 'H'"):
        tv.token_table_html(["a"], {"H": [1.0, 2.0]})
