"""Generated markdown blocks (ercref.study.doc_blocks)."""
from ercref.study import doc_blocks


def test_each_block_is_rendered_from_its_args_and_the_rest_is_kept(tmp_path):
    md = tmp_path / "page.md"
    md.write_text("head\n<!-- t: a -->\nold a\n<!-- /t -->\nmiddle\n<!-- t: b c -->\nold bc\nmore\n<!-- /t -->\n"
                  "<!-- other: a -->\nkept\n<!-- /other -->\ntail\n")
    calls = []
    names = doc_blocks.refresh(md, doc_blocks.pattern("t"), lambda *args: calls.append(args) or f"new {'+'.join(args)}\n")
    assert names == ["a", "b c"] and calls == [("a",), ("b", "c")]
    assert md.read_text() == ("head\n<!-- t: a -->\nnew a\n<!-- /t -->\nmiddle\n<!-- t: b c -->\nnew b+c\n<!-- /t -->\n"
                              "<!-- other: a -->\nkept\n<!-- /other -->\ntail\n")
    assert doc_blocks.refresh(md, doc_blocks.pattern("t"), lambda *a: f"new {'+'.join(a)}\n") == names   # idempotent
    assert doc_blocks.pattern("t").search("<!-- t: a -->\nx\n<!-- /t -->").group(3) == "x\n"
