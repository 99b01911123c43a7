"""protocols.cds without an app or a database: card summaries and the text cards carry.
(Reading draft orders and weights: tests/protocols/test_draft_orders.py; the cards, judged against stored
protocols over HTTP: tests/api/test_cds_hooks.py.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from protocols import cds


def test_summaries_keep_the_verdict_and_the_protocol_version():
    summary = cds._summary("above protocol maximum", "x" * 300, "protocol esketamine-nasal-spravato v3")
    assert len(summary) == cds.SUMMARY_LIMIT == 139  # CDS Hooks: "<140-character"
    assert summary.startswith("above protocol maximum: xxx")
    assert summary.endswith("… (protocol esketamine-nasal-spravato v3)")
    # counted as JavaScript counts: a character outside the BMP is two code units, and is never cut in half
    emoji = cds._summary("above protocol maximum", "\U0001F489" * 300, "protocol esketamine-nasal-spravato v3")
    assert cds.utf16_length(emoji) <= 139 and len(emoji.encode("utf-16-le")) // 2 <= 139
    assert emoji.endswith("… (protocol esketamine-nasal-spravato v3)") and "\U0001F489" in emoji


# ------------------------------------------------------------------------- markdown in cards


_RENDERER = MarkdownIt("commonmark").enable(["strikethrough", "table"])


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40) | st.sampled_from([
    "# h", "> q", "- l", "+ l", "1. o", "12) o", "=== ", "---", "***", "___", "    code", "[a](b)", "![i](u)",
    "<b>x</b>", "<http://a.b>", "&amp; &#x200B;", "`c`", "~~s~~", "*e* _e_", "a\\", "a  \nb", "[r]: http://a",
]))
def test_markdown_text_is_read_back_as_the_same_text(text: str) -> None:
    """Placed where a card places data (first in a list item, inside bold), the escaped text renders as
    exactly its words, whitespace collapsed: no markup of its own."""
    expected = " ".join(text.split())
    placements = [(f"- {cds.markdown_text(text)}", ("", ""))]
    if expected:  # bold around nothing is no bold; a card never bolds an empty text (titles are not blank)
        placements.append((f"x **{cds.markdown_text(text)}** y", ("x ", " y")))
    for source, (before, after) in placements:
        tokens = _RENDERER.parse(source)
        children = [c for t in tokens for c in t.children or []]
        assert {c.type for c in children} <= {"text", "strong_open", "strong_close"}, (text, source)
        rendered = "".join(c.content for c in children)
        assert rendered == before + expected + after, (text, source)



def test_the_summary_is_one_line_of_visible_text():
    """Found by an adversarial probe: the order's medication text went into the summary as it came, line
    breaks and a right-to-left override (U+202E) included."""
    summary = cds._summary("within protocol range", "keta\u202emine\n  10 mg\u200b/mL\tIV", "protocol p v1")
    assert summary == "within protocol range: ketamine 10 mg/mL IV (protocol p v1)"
