"""The book stands on its own: the page on the paper is what everything cites, the
introduction's findings link their chapters and type no number, no page or docstring
sends a reader to a file or folder they do not have, and the book's CSS keeps captions
readable and wide tables inside the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
PAPER = BOOK / "paper.md"
INTRO = BOOK / "intro.md"

# Files a reader or a contributor reads, which are kept free of the project's private
# notes and machine paths (the chapters are checked by their own authors).
READER_FILES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", INTRO, PAPER, BOOK / "using_rsa.md",
                *sorted((ROOT / "rsa").glob("*.py"))]


def scorecard_rows(prefix: str = "P") -> list[list[str]]:
    """The rows of the scorecard's table of the paper's claims (P1, P2, ...) or, with
    ``prefix="B"``, of the book's own results."""
    text = INTRO.read_text().split("(scorecard)=", 1)[1]
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if re.match(rf"\|\s*{prefix}\d+\s*\|", line)]


def test_the_scorecard_keeps_the_papers_claims_apart_from_the_books_results():
    text = INTRO.read_text().split("(scorecard)=", 1)[1]
    claims, ours = text.index("### Claims of the paper"), text.index("### Results of this book")
    assert claims < ours
    paper_rows, book_rows = scorecard_rows("P"), scorecard_rows("B")
    assert len(paper_rows) >= 10 and len(book_rows) >= 5
    # every claim row is in the first table, every result row in the second
    assert all(text.index(f"| {r[0]} |") < ours for r in paper_rows)
    assert all(text.index(f"| {r[0]} |") > ours for r in book_rows)
    # the claims cite a section of the paper; the book's results do not pretend to
    assert all(re.search(r"§\d", r[2]) for r in paper_rows)
    assert not any("§" in cell for r in book_rows for cell in r)


def test_every_section_the_scorecard_cites_is_on_the_paper_page():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\. ", PAPER.read_text(), re.M)) | set(
        re.findall(r"^### (\d+\.\d+) ", PAPER.read_text(), re.M))
    rows = scorecard_rows()
    assert len(rows) >= 10
    cited = {s for row in rows for s in re.findall(r"§(\d+(?:\.\d+)?)", row[2])}
    assert cited and cited <= headings, f"sections not on the page: {cited - headings}"


def test_the_paper_page_links_its_sources():
    text = PAPER.read_text()
    assert "https://arxiv.org/abs/2006.09471" in text
    assert "https://github.com/" in text  # the authors' code
    assert "proceedings.neurips.cc" in text  # the proceedings page, with the reviews
    for label in ("paper-claim", "paper-models", "paper-theory", "paper-tasks",
                  "paper-settings", "paper-numbers", "paper-reviews"):
        assert f"({label})=" in text, label


@pytest.mark.parametrize("path", READER_FILES, ids=lambda p: p.name)
def test_no_reader_file_cites_the_private_notes_or_a_machine_path(path):
    text = path.read_text()
    for phrase in ("paper.md", "working notes", "project's summary", "CONVENTIONS.md",
                   "/work/", "shared by several people"):
        if phrase == "paper.md" and path == PAPER:
            continue
        hits = [line for line in text.splitlines() if phrase in line
                and "book/paper.md" not in line]
        assert not hits, f"{path.name}: {phrase!r} in {hits[:2]}"


def test_the_conventions_memo_gave_way_to_a_contributor_guide():
    assert not (ROOT / "docs" / "CONVENTIONS.md").exists()
    guide = (ROOT / "CONTRIBUTING.md").read_text()
    assert "check_parameters" in guide and "tools/relativize_paths.py" in guide


def findings() -> str:
    text = INTRO.read_text()
    start = text.index("## What this book finds")
    return text[start:text.index("\n## ", start + 1)]


def test_the_findings_come_first_and_each_links_its_chapters():
    text = INTRO.read_text()
    assert text.index("## What this book finds") < text.index("## What the paper claims")
    assert text.index("## What this book finds") < text.index("(scorecard)=")
    items = re.findall(r"^- (.*?)(?=^- |\Z)", findings(), re.M | re.S)
    assert 3 <= len(items) <= 5  # three to five findings, then the scorecard
    chapters = {p.stem for p in BOOK.glob("*.ipynb")}
    for item in items:
        linked = set(re.findall(r"\{doc\}`([\w-]+)`", item))
        assert linked & chapters or "{ref}`scorecard" in item, item[:60]


def test_the_findings_type_no_number():
    """A number in the findings comes from a chapter (a glue role), never typed."""
    text = findings()
    text = re.sub(r"\{glue(?::\w+)?\}`[^`]*`", "", text)  # glued values
    text = re.sub(r"\$[^$]*\$", "", text)  # math: symbols like 1/t, not results
    text = re.sub(r"\{\w+\}`[^`]*`", "", text)  # links
    assert not re.search(r"\d", text), re.findall(r".{20}\d.{20}", text)


def test_the_css_keeps_captions_readable_and_wide_tables_in_the_page():
    css = (BOOK / "_static" / "rsa.css").read_text()
    caption = re.search(r"figcaption[^{]*\{([^}]*)\}", css)
    assert caption and "--pst-color-text-base" in caption[1]
    assert re.search(r"table td code[^{]*\{[^}]*overflow-wrap:\s*anywhere", css)
    assert re.search(r"overflow-x:\s*auto", css)
    printed = re.search(r"\.output\.stream pre[^{]*\{([^}]*)\}", css)  # check lines wrap
    assert printed and re.search(r"white-space:\s*pre-wrap", printed[1])


def _glued_texts():
    """Every value a ``{glue:text}`` role quotes: (notebook, name) -> the stored text."""
    import json

    records = {}
    for nb in BOOK.glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            for out in cell.get("outputs", []):
                name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                if name:
                    records[(nb.name, name)] = out.get("data", {}).get(
                        "application/papermill.record/text/plain", "")
    refs = set()
    for page in [*BOOK.glob("*.md"), *BOOK.glob("*.ipynb")]:
        text = page.read_text()
        refs |= set(re.findall(r"\{glue:text\}`([\w.]+\.ipynb)::([\w-]+)", text))
        if page.suffix == ".ipynb":
            refs |= {(page.name, n) for n in re.findall(r"\{glue:text\}`([\w-]+)[:`]", text)}
    return {r: records[r] for r in refs if r in records}


def test_glued_text_carries_no_markdown_that_would_show_raw():
    """``{glue:text}`` pastes text as it is: a ``$`` or a backtick in a glued value shows
    on the page (the landing page quotes many); chapters glue it with
    ``rsa.book.glue_text``."""
    glued = _glued_texts()
    assert len(glued) >= 20  # the landing page's findings and scorecard quote them
    raw = {f"{nb}::{name}": text[:80] for (nb, name), text in glued.items()
           if re.search(r"[$`]", text)}
    assert not raw, raw


def test_plain_text_drops_markdown_marks_only():
    from rsa.book import plain_text

    assert plain_text("copy $T = 100$: the `converged` plan, **bold**, 2 * 3") == \
        "copy T = 100: the converged plan, bold, 2 * 3"
