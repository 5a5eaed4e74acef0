"""Generated blocks of a markdown file (README.md, docs/results.md): the text between

    <!-- TAG: ARG [ARG ...] -->
    ...
    <!-- /TAG -->

is rendered from the caches by the function that owns TAG, called with the ARGs (e.g. a study's name), and
tests compare each block with a fresh rendering. ``pattern(tag)``'s groups: 1 the opening line, 2 the
ARGs as written, 3 the body, 4 the closing marker."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path


def pattern(tag: str) -> re.Pattern:
    """The block regex of ``tag`` (module doc)."""
    return re.compile(rf"(<!-- {re.escape(tag)}: (\S+(?: \S+)*) -->\n)(.*?)(<!-- /{re.escape(tag)} -->)", flags=re.S)


def refresh(path, block: re.Pattern, render: Callable[..., str]) -> list[str]:
    """Replace the body of every ``block`` in the file ``path`` with ``render(*args)``; returns the
    ARGs of each block as written."""
    path = Path(path)
    text = path.read_text()
    names = [m.group(2) for m in block.finditer(text)]
    path.write_text(block.sub(lambda m: m.group(1) + render(*m.group(2).split()) + m.group(4), text))
    return names
