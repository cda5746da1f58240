"""make chapter (tools/rerun_chapter.py): a chapter re-run with other parameters is
rendered to one HTML page with its glued figures; and tools/run_chapter.py (make
figures) writes through the atomic writer, keeping files' permissions, on a kernel
that prints no encryption warning."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "rerun_chapter.py"

FIGURE_CELL = """\
import matplotlib.pyplot as plt
from myst_nb import glue
fig, ax = plt.subplots()
ax.plot(range(k))
glue("fig-line", fig, display=False)
glue("k-squared", k ** 2, display=False)
plt.close(fig)
from IPython.display import Markdown
Markdown("| k | k squared |\\n|---|---|\\n| %d | %d |" % (k, k ** 2))
"""


def tiny_chapter(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("k: int = 3  # a parameter")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("(tiny)=\n# A tiny chapter\n\nThe line has $k$ "
                                      "points; see {ref}`tiny`."),
        params,
        nbformat.v4.new_code_cell("assert k < 100, f'k = {k} is too large'\nprint(k * 11)"),
        nbformat.v4.new_code_cell(FIGURE_CELL),
        nbformat.v4.new_markdown_cell("```{glue:figure} fig-line\n:name: fig-line\n\nA "
                                      "straight line of {glue:text}`k-squared` squared "
                                      "points.\n```"),
    ]
    for i, c in enumerate(nb.cells):
        c.id = f"c{i}"
    nbformat.write(nb, path)
    return path


def rerun(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_a_rerun_chapter_shows_its_glued_figures_with_the_new_parameters(tmp_path):
    chapter = tiny_chapter(tmp_path / "tiny.ipynb")
    before = chapter.read_bytes()
    done = rerun(chapter, "-p", "k", "5", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "without encryption" not in done.stderr  # the kernel runs on local sockets
    assert chapter.read_bytes() == before  # the chapter itself is not touched
    page = (tmp_path / "out" / "tiny.html").read_text()
    assert "k = 5" in page and "every check of the chapter held" in page
    assert '<img alt="fig-line" src="data:image/png;base64,' in page  # the glued figure
    assert "A straight line of 25 squared points." in page  # its caption, glue resolved
    assert "55" in page and "<table>" in page  # printed output and a markdown table
    assert "{glue:figure}" not in page and "(tiny)=" not in page
    executed = nbformat.read(tmp_path / "out" / "tiny.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_a_failing_check_is_shown_and_exits_non_zero(tmp_path):
    chapter = tiny_chapter(tmp_path / "tiny.ipynb")
    done = rerun(chapter, "-p", "k", "500", "--out", tmp_path / "out")
    assert done.returncode == 1 and "k = 500 is too large" in done.stderr
    out = done.stdout.splitlines()
    assert done.stderr.startswith("FAILED:")  # the verdict first, then where to look
    assert out and out[-1].strip().startswith("open ") and "where it stopped" in out[-1]
    page = (tmp_path / "out" / "tiny.html").read_text()
    assert "it stopped with an error" in page and "k = 500 is too large" in page


def test_an_unknown_chapter_lists_the_chapters():
    done = rerun("no_such_chapter")
    assert done.returncode != 0 and "relevancy_screening" in done.stderr


def test_make_chapter_runs_the_tool_with_the_parameters():
    done = subprocess.run(["make", "-n", "chapter", "CHAPTER=relevancy_screening",
                           "PARAMS=-p T 200 -p rho 8"], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "tools/rerun_chapter.py relevancy_screening -p T 200 -p rho 8" in done.stdout



def load_rerun_chapter():
    spec = importlib.util.spec_from_file_location("rerun_chapter", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_renders_citations_admonitions_and_labels_as_the_book_does(tmp_path):
    """No raw citation keys, directive names ("admonition:", "prf:definition:") or bare
    labels: what the book shows (author and year, titles, what a label points to)."""
    tool = load_rerun_chapter()
    (tmp_path / "references.bib").write_text(
        "@article{smith2001x,\n  author = {Smith, Ann and Jones, Bo and Li, Cy},\n"
        "  title = {X},\n  year = {2001}\n}\n")
    (tmp_path / "other.md").write_text("(other-sec)=\n# Other\n\n$$ a = b $$ (eq-ab)\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        "# Tiny\n\nAs {cite:t}`smith2001x` and {cite}`smith2001x` show, see "
        "{ref}`other-sec`, {eq}`eq-ab` and {prf:ref}`def-thing`.\n\n"
        ":::{admonition} A claim\nIt holds.\n:::\n\n"
        "```{prf:definition} A thing with $x$\n:label: def-thing\n\nA thing.\n```\n")]
    page = tool.render(nb, "tiny", "banner", tmp_path / "out" / "tiny.html", tmp_path)
    assert "Smith et al. (2001)" in page and "(Smith et al., 2001)" in page
    assert "smith2001x" not in page
    assert "see Other, Other (1) and Definition (A thing with \\(x\\))." in page
    assert "admonition:" not in page and "prf:definition:" not in page
    assert '<div class="title">A claim</div>' in page
    assert 'id="def-thing"' in page and "Definition (A thing with \\(x\\))" in page


def test_a_figure_reference_reads_as_the_books_figure_number(tmp_path):
    """{numref} gives "Fig. N", N the figure's place on the page as the book numbers it,
    counting figures whose directive a code cell displays."""
    tool = load_rerun_chapter()
    nb = nbformat.v4.new_notebook()
    shown = nbformat.v4.new_code_cell("Markdown(...)")
    shown.outputs = [nbformat.v4.new_output(
        "display_data", data={"text/markdown": "```{glue:figure} b\n:name: fig-b\n\nB.\n```"})]
    nb.cells = [nbformat.v4.new_markdown_cell(
        "# Tiny\n\n```{glue:figure} a\n:name: fig-a\n\nA.\n```"),
                shown,
                nbformat.v4.new_markdown_cell("```{glue:figure} c\n:name: fig-c\n\nC.\n```\n\n"
                                              "As {numref}`fig-c` and {numref}`fig-a` show.")]
    page = tool.render(nb, "tiny", "banner", tmp_path / "out" / "tiny.html", tmp_path)
    assert "As Fig. 3 and Fig. 1 show." in page
    assert '<span class="number">Fig. 2.</span> B.' in page


def test_the_page_carries_its_mathjax_so_the_folder_can_be_moved(tmp_path):
    tool = load_rerun_chapter()
    out = tmp_path / "out"
    out.mkdir()
    tag = tool._mathjax(out / "tiny.html")
    if not tag:
        pytest.skip("sphinx-mathjax-offline is not installed")
    assert 'src="mathjax/tex-chtml.js"' in tag and ".venv" not in tag and ".." not in tag
    assert (out / "mathjax" / "tex-chtml.js").is_file()


# -- make figures (tools/run_chapter.py) -------------------------------------------------

def load_run_chapter():
    spec = importlib.util.spec_from_file_location("run_chapter",
                                                  ROOT / "tools" / "run_chapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_run_chapter_keeps_the_chapters_permissions(tmp_path, umask_022):
    run_chapter = load_run_chapter()
    chapter = tiny_chapter(tmp_path / "tiny.ipynb")
    os.chmod(chapter, 0o644)
    run_chapter.run(chapter)
    assert stat.S_IMODE(os.stat(chapter).st_mode) == 0o644  # not the 0600 of a temp file


def test_chapter_times_go_through_the_atomic_writer(tmp_path, monkeypatch, umask_022):
    run_chapter = load_run_chapter()
    times = tmp_path / "chapter_times.json"
    monkeypatch.setattr(run_chapter, "TIMES", times)
    written = []
    real = run_chapter.io.atomic_write_text

    def spy(path, text):
        written.append(Path(path))
        return real(path, text)

    monkeypatch.setattr(run_chapter.io, "atomic_write_text", spy)
    run_chapter.record_time("a.ipynb", 10.0)
    assert written == [times] and json.loads(times.read_text())["a.ipynb"]["seconds"] == 10.0
    assert stat.S_IMODE(os.stat(times).st_mode) == 0o644
