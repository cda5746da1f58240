"""The book pipeline: parameter checks, chapter structure, nbval staleness, plotting."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

from rsa.book import check_parameters

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("*.ipynb"))
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


# -- check_parameters ------------------------------------------------------------------

SPEC = {
    "n": (int, 1, 1024),
    "lam": (float, 0.0, 1.0),
    "mode": ("quick", "full"),
    "plot": (bool,),
    "seeds": (list, int, 0, 10**6),
}


def good_namespace(**changes):
    ns = {"n": 8, "lam": 0.5, "mode": "quick", "plot": True, "seeds": [0, 1]}
    ns.update(changes)
    return ns


def test_check_parameters_accepts_defaults_and_ignores_non_parameters():
    ns = good_namespace(In=[""], Out={}, get_ipython=lambda: None, exit=object(),
                        quit=object(), _=1, _i1="x", __name__="__main__", np=np,
                        helper=lambda x: x, Klass=type("Klass", (), {}), print=print,
                        os_module=types.ModuleType("m"))
    assert check_parameters(ns, SPEC) is None


def test_check_parameters_converts_an_int_for_a_float():
    ns = good_namespace(lam=1)
    check_parameters(ns, SPEC)
    assert ns["lam"] == 1.0 and isinstance(ns["lam"], float)


@pytest.mark.parametrize("name, value, accepted", [
    ("n", 0, "int in [1, 1024]"),
    ("n", 2000, "int in [1, 1024]"),
    ("n", 3.0, "int in [1, 1024]"),
    ("n", True, "int in [1, 1024]"),
    ("n", "8", "int in [1, 1024]"),
    ("lam", 1.5, "float in [0.0, 1.0]"),
    ("lam", float("nan"), "float in [0.0, 1.0]"),
    ("mode", "fast", "one of 'quick', 'full'"),
    ("plot", 1, "a bool"),
    ("seeds", [0, -1], "a list of int in [0, 1000000]"),
    ("seeds", (0, 1), "a list of int in [0, 1000000]"),
])
def test_check_parameters_rejects_bad_values(name, value, accepted):
    with pytest.raises(ValueError) as err:
        check_parameters(good_namespace(**{name: value}), SPEC)
    msg = str(err.value)
    assert repr(name) in msg and accepted in msg


def test_check_parameters_names_unknown_parameter_and_lists_accepted():
    with pytest.raises(ValueError, match=r"unknown parameter 'lamda'.*lam, mode, n, plot, "
                                         r"seeds"):
        check_parameters(good_namespace(lamda=0.1), SPEC)


def test_check_parameters_reports_missing_and_all_errors_at_once():
    ns = good_namespace(n=-1)
    del ns["mode"]
    with pytest.raises(ValueError) as err:
        check_parameters(ns, SPEC)
    assert "'mode' is missing" in str(err.value) and "'n' = -1" in str(err.value)


def test_check_parameters_open_ranges_and_strings():
    spec = {"k": (int, 1, None), "x": (float, None, 0.0), "name": (str,)}
    check_parameters({"k": 10**9, "x": -5.0, "name": "abc"}, spec)
    with pytest.raises(ValueError, match="int >= 1"):
        check_parameters({"k": 0, "x": -5.0, "name": "abc"}, spec)
    with pytest.raises(ValueError, match="a string"):
        check_parameters({"k": 1, "x": -5.0, "name": 3}, spec)


def test_check_parameters_rejects_a_malformed_spec():
    with pytest.raises(TypeError):
        check_parameters({"a": 1}, {"a": (dict, 0, 1)})


# -- chapter structure -------------------------------------------------------------------

def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(params=CHAPTERS, ids=[p.name for p in CHAPTERS])
def chapter(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_there_are_chapters():
    assert CHAPTERS, "no book/*.ipynb"


def test_chapter_has_parameters_cell_then_check_cell(chapter):
    path, nb = chapter
    cells = code_cells(nb)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    i = tagged[0]
    assert i == 0, f"{path.name}: the parameters cell must be the first code cell"
    check = cells[i + 1].source
    assert "check_parameters(globals()," in check, \
        f"{path.name}: the cell after the parameters must call check_parameters(globals(), ...)"
    # the parameters cell: literals only, each `name: type = value  # comment`
    source = cells[i].source
    tree = ast.parse(source)
    lines = source.splitlines()
    names = []
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name), \
            f"{path.name}: parameters cell line {node.lineno} is not `name: type = value`"
        ast.literal_eval(node.value)  # raises on anything but a literal
        assert "#" in lines[node.end_lineno - 1], \
            f"{path.name}: parameter {node.target.id} has no comment"
        names.append(node.target.id)
    # every parameter is in the spec of the check cell
    for name in names:
        assert re.search(rf"[\"']{name}[\"']\s*:", check), \
            f"{path.name}: parameter {name} is not validated by check_parameters"


def test_chapter_has_outputs_and_no_run_metadata(chapter):
    path, nb = chapter
    assert "papermill" not in nb.metadata, f"{path.name}: papermill metadata left"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for c in code_cells(nb):
        assert not {"execution", "papermill", "ExecuteTime"} & set(c.metadata), \
            f"{path.name}: per-cell timing metadata in cell {c.get('id')}"
        if c.source.strip():
            assert c.execution_count is not None, f"{path.name}: unexecuted cell {c.get('id')}"
        assert not any(o.output_type == "error" for o in c.outputs), \
            f"{path.name}: committed error output"
    counts = [c.execution_count for c in code_cells(nb) if c.source.strip()]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not run top to bottom"


# -- the book's configuration ------------------------------------------------------------

def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [ch["file"] for ch in part["chapters"]]
    return files


def test_toc_symlink_and_every_page_in_the_toc():
    link = BOOK / "_toc.yml"
    assert link.is_symlink() and os.readlink(link) == "../_toc.yml"
    files = toc_files()
    on_disk = {p.stem for p in BOOK.iterdir() if p.suffix in (".md", ".ipynb")}
    assert set(files) == on_disk, f"toc {sorted(files)} vs book/ {sorted(on_disk)}"


def test_environment_yml_mirrors_the_constraints():
    """Conda users get the tested stack: every package pinned in environment.yml has the
    same version in constraints.txt (pip's pins, which CI installs)."""
    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            pins[norm(name.strip())] = version.strip()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    mirrored = [p for p in pip if "==" in p]
    assert len(mirrored) >= 10
    for pin in mirrored:
        name, version = pin.split("==")
        assert pins.get(norm(name)) == version, (pin, pins.get(norm(name)))


def test_the_book_ships_mathjax_for_offline_reading():
    """The math renders without a network: MathJax is copied into the build (sphinx-
    mathjax-offline) and the pages load it from there, not from a CDN."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    name = "sphinx-mathjax-offline"
    assert name in config["sphinx"]["extra_extensions"]
    ext = importlib.import_module(name)
    app = types.SimpleNamespace(config=types.SimpleNamespace(), connect=lambda *args: None)
    ext.setup(app)
    path = app.config.mathjax_path
    assert not path.startswith(("http:", "https:", "//")), path
    assert (Path(ext.__file__).parent / "static" / path).is_file(), path


def test_every_citation_is_in_the_bibliography():
    bib = (BOOK / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    for required in ("kerg2020untangling", "bahdanau2015neural", "hochreiter1997long",
                     "arjovsky2016unitary", "henaff2016recurrent", "ke2018sparse",
                     "vaswani2017attention", "graves2014neural", "bengio1994learning"):
        assert required in keys
    cited = set()
    for page in BOOK.iterdir():
        if page.suffix == ".md":
            text = page.read_text()
        elif page.suffix == ".ipynb":
            text = "\n".join(c.source for c in nbformat.read(page, as_version=4).cells)
        else:
            continue
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            cited |= {k.strip() for k in group.split(",")}
    assert cited <= keys, f"cited but not in references.bib: {cited - keys}"


def _page_texts() -> dict[str, str]:
    """Every page's MyST text: Markdown pages, and the cells and Markdown outputs of the
    chapters (a Markdown output is rendered as MyST too)."""
    texts = {}
    for page in BOOK.iterdir():
        if page.suffix == ".md":
            texts[page.name] = page.read_text()
        elif page.suffix == ".ipynb":
            parts = []
            for c in nbformat.read(page, as_version=4).cells:
                parts.append(c.source)
                for o in c.get("outputs", []):
                    md = o.get("data", {}).get("text/markdown")
                    if md:
                        parts.append(md if isinstance(md, str) else "".join(md))
            texts[page.name] = "\n".join(parts)
    return texts


def test_every_doc_and_ref_target_exists():
    """{doc} names a page of the book and {ref} a label it defines (``(label)=`` or a
    figure's ``:name:``): a renamed chapter leaves no dangling link (the build would
    fail with -W, minutes later)."""
    texts = _page_texts()
    pages = {Path(name).stem for name in texts}
    labels = set()
    for text in texts.values():
        labels |= set(re.findall(r"^\(([\w-]+)\)=\s*$", text, flags=re.M))
        labels |= set(re.findall(r"^:name:\s*([\w-]+)\s*$", text, flags=re.M))
    assert {"accuracy-vs-cost", "kappa-d-tradeoff", "digits"} <= labels
    bad = []
    for name, text in texts.items():
        for target in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", text):
            if target.strip() not in pages:
                bad.append(f"{name}: {{doc}} {target}")
        for target in re.findall(r"\{ref\}`(?:[^`<]*<)?([^`>]+)>?`", text):
            if target.strip() not in labels:
                bad.append(f"{name}: {{ref}} {target}")
    assert not bad, bad


# -- nbval: a chapter with stale outputs fails -------------------------------------------

def tiny_notebook(path: Path, source: str, output: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    cell = nbformat.v4.new_code_cell(source, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
    cell.id = "c0"
    nb.cells = [cell]
    nbformat.write(nb, path)
    return path


def nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
         "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE), path.name],
        cwd=path.parent, capture_output=True, text=True, timeout=300)


def test_nbval_fails_on_stale_outputs_and_passes_on_current_ones(tmp_path):
    current = nbval(tiny_notebook(tmp_path / "current.ipynb", "print(6 * 7)", "42\n"))
    assert current.returncode == 0, current.stdout + current.stderr
    stale = nbval(tiny_notebook(tmp_path / "stale.ipynb", "print(6 * 7)", "41\n"))
    assert stale.returncode != 0, stale.stdout
    assert "41" in stale.stdout and "42" in stale.stdout


def test_nbval_sanitizes_what_cannot_be_stable(tmp_path):
    # a memory address and a figure size differ from run to run; the rules hide them
    source = "print(object()); print('<Figure size 640x480 with 1 Axes>')"
    committed = "<object object at 0x7f0000000000>\n<Figure size 700x400 with 2 Axes>\n"
    result = nbval(tiny_notebook(tmp_path / "sanitized.ipynb", source, committed))
    assert result.returncode == 0, result.stdout + result.stderr


# -- make figures: re-running a chapter leaves no diff ------------------------------------

def load_run_chapter():
    spec = importlib.util.spec_from_file_location("run_chapter",
                                                  ROOT / "tools" / "run_chapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_chapter_is_idempotent_and_strips_timings(tmp_path):
    run_chapter = load_run_chapter()
    path = tmp_path / "chapter.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("k: int = 3  # a parameter")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(k ** 2)")]
    for i, c in enumerate(nb.cells):
        c.id = f"c{i}"
    nbformat.write(nb, path)
    run_chapter.run(path)
    first = path.read_bytes()
    run_chapter.run(path)
    assert path.read_bytes() == first
    out = json.loads(first)
    assert "papermill" not in out["metadata"]
    assert all(not {"execution", "papermill"} & set(c["metadata"]) for c in out["cells"])
    assert "".join(out["cells"][1]["outputs"][0]["text"]) == "9\n"
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_chapter_times_change_only_beyond_the_tolerance(tmp_path, monkeypatch):
    run_chapter = load_run_chapter()
    times = tmp_path / "chapter_times.json"
    monkeypatch.setattr(run_chapter, "TIMES", times)
    run_chapter.record_time("a.ipynb", 10.0)
    before = times.read_text()
    run_chapter.record_time("a.ipynb", 12.0)  # within a factor 1.5: kept
    assert times.read_text() == before
    run_chapter.record_time("a.ipynb", 20.0)
    assert json.loads(times.read_text())["a.ipynb"]["seconds"] == 20.0


# -- plotting ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trace():
    import torch

    from rsa import RelRNN

    torch.manual_seed(0)
    net = RelRNN(5, 8, nu=3, rho=2)
    with torch.no_grad():
        return net(torch.randn(12, 2, 5), record=True)[1]


def test_memory_raster_marks_exactly_the_stored_states(trace):
    from rsa.plotting import _step_by_state

    code = _step_by_state(trace, np.where(trace.relevant.numpy(), 2.0, 1.0), b=1)
    index = trace.index[:, 1].numpy()
    assert np.isfinite(code).sum() == (index >= 0).sum()
    for t in range(index.shape[0]):
        stored = {int(j) for j in index[t] if j >= 0}
        assert set(np.flatnonzero(np.isfinite(code[:, t]))) == stored
        relevant = trace.relevant[t, 1].numpy()
        in_R = {int(j) for j, r in zip(index[t], relevant, strict=True) if j >= 0 and r}
        assert set(np.flatnonzero(code[:, t] == 2)) == in_R


def test_plots_return_figures(trace):
    import matplotlib.pyplot as plt
    import pandas as pd

    from rsa import plotting

    plotting.set_style()
    table = pd.DataFrame({"model": ["MemRNN"] * 2 + ["RelRNN"] * 2, "T": [10, 20] * 2,
                          "ms_per_step": [1.0, 2.0, 1.0, 1.0]})
    figs = [plotting.plot_memory_contents(trace), plotting.plot_attention(trace, b=1),
            plotting.plot_cost_vs_T(table),
            plotting.plot_curves(table, x="T", y="ms_per_step", logy=True),
            plotting.plot_curves({"rnn": ([1, 2], [3, 4])})]
    for fig in figs:
        assert isinstance(fig, plt.Figure) and fig.axes
        plt.close(fig)
    with pytest.raises(ValueError, match="missing column"):
        plotting.plot_cost_vs_T(table.drop(columns="T"))


def test_every_model_has_its_own_colour():
    from rsa.plotting import PALETTE, model_color

    names = ["rnn", "lstm", "memrnn", "relrnn", "rellstm"]
    assert len({PALETTE[m] for m in names}) == len(names)
    assert model_color("RelRNN") == PALETTE["relrnn"] and model_color("other") is None


def test_a_variant_takes_its_models_colour_and_a_dotted_style():
    from rsa.plotting import PALETTE, _color, _split_variant, _variant_style

    for name in ("memrnn_unfused", "MemRNN, plain autograd"):
        assert _split_variant(name)[0].lower() == "memrnn"
        assert _color(name) == PALETTE["memrnn"]
        assert _variant_style(name) == {"ls": ":", "marker": "s"}
    assert _split_variant("RelRNN") == ("RelRNN", "")
    assert _variant_style("RelRNN") == {"ls": "-", "marker": "o"}
    assert _color("copy") is None


def test_glue_figure_closes_the_figure():
    import matplotlib.pyplot as plt

    from rsa.book import glue_figure

    fig = plt.figure()
    glue_figure("fig-test", fig)
    assert not plt.fignum_exists(fig.number)


def test_running_a_chapter_also_refreshes_the_reproducibility_page():
    run_chapter = load_run_chapter()
    order = run_chapter.chapters([str(BOOK / "relevancy_screening.ipynb")])
    assert [p.name for p in order] == ["relevancy_screening.ipynb", "reproducibility.ipynb"]
    assert run_chapter.chapters([])[-1].name == "reproducibility.ipynb"


def test_relevancy_screenings_captions_quote_its_parameters_by_glue():
    """A re-run (make chapter ... PARAMS="-p T 200 -p rho 8") says what it ran: the
    figure captions and the summary's scale take T, L, n, nu, rho from the parameters
    (glued), never as typed literals."""
    import json
    import re

    nb = json.loads((ROOT / "book" / "relevancy_screening.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    captions = re.findall(r"```\{glue:figure\}.*?```", text, re.S)
    captions += re.findall(r"Scale: small untrained.*?(?:\n\n|$)", text, re.S)
    assert len(captions) >= 3
    typed = re.compile(r"\$(T|L|n) = \d+\$|\\nu = \\rho = \d+|\\nu \+ \\rho = \d+|h_\{\d+\}")
    for caption in captions:
        assert not typed.search(caption), typed.search(caption).group(0)
    for key in ("T", "L", "nu", "rho", "n"):
        assert any(f"{{glue:text}}`param-{key}`" in t for t in captions), key
