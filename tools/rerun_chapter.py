#!/usr/bin/env python
"""Re-run one chapter with other parameters and render it, figures included, to one
HTML page (``make chapter``). The chapter itself is not touched.

A chapter stores its figures as *glue* records (``myst_nb.glue``), which the book
places where its text names them but which no notebook viewer shows. This tool runs
the chapter with papermill into ``_build/chapters/<chapter>/<chapter>.ipynb`` and
writes ``<chapter>.html`` next to it: the chapter's text as the book renders it
(citations by author and year, references by what they point to, admonitions and
definitions by their titles; math typeset by the MathJax that the book ships, copied
into ``mathjax/`` beside the page so that the folder can be moved or sent), each figure
with its caption where the text places it, the code folded under each cell, and every
output (tables, printed numbers, errors). Any ``-p`` not accepted by the chapter stops
the run at the chapter's parameter check, with a message listing what it accepts.

Usage (from the repository root)::

    python tools/rerun_chapter.py relevancy_screening -p T 200 -p rho 8
    python tools/rerun_chapter.py book/accuracy_vs_cost.ipynb -y "cost_T: [100, 200]"
    make chapter CHAPTER=relevancy_screening PARAMS="-p T 200 -p rho 8"
"""

from __future__ import annotations

import argparse
import ast
import html
import importlib.metadata
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_chapter, beside this file

from rsa import io  # noqa: E402

BOOK = ROOT / "book"
OUT = ROOT / "_build" / "chapters"
GLUE = "application/papermill.record/"

CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1a1a1a; }
.banner { background: #eef4fb; border-left: 4px solid #2a6cb0; padding: .5rem 1rem; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; }
figcaption { color: #1a1a1a; font-size: .95rem; } figcaption .name { color: #555; }
details.code summary { color: #555; cursor: pointer; font-size: .85rem; }
pre { background: #f6f8fa; padding: .5rem; overflow-x: auto; font-size: .85rem; }
pre.error { background: #fdecec; } pre.stream { background: #fafafa; }
.output { overflow-x: auto; margin: .5rem 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; }
td, th { border: 1px solid #ccc; padding: .2rem .5rem; }
.directive { border-left: 4px solid #999; padding: .25rem 1rem; margin: 1rem 0;
             background: #fafafa; } .directive .title { font-weight: 600; }
"""


# -- running ---------------------------------------------------------------------------

def chapter_path(name: str) -> Path:
    """``relevancy_screening``, ``relevancy_screening.ipynb`` or a path -> the notebook."""
    path = Path(name)
    candidates = [path, BOOK / path, BOOK / f"{name}.ipynb"]
    for candidate in candidates:
        if candidate.suffix == ".ipynb" and candidate.is_file():
            return candidate.resolve()
    names = ", ".join(sorted(p.stem for p in BOOK.glob("*.ipynb")))
    raise SystemExit(f"no chapter {name!r}; chapters: {names}")


def parameters(opts: argparse.Namespace) -> dict:
    """The values of ``-p`` (typed as papermill types them), ``-r`` (strings) and
    ``-y`` (YAML)."""
    from papermill.cli import _resolve_type

    values: dict = {}
    for text in opts.yaml or []:
        values.update(yaml.safe_load(text) or {})
    for name, value in opts.parameters or []:
        values[name] = _resolve_type(value)
    for name, value in opts.raw or []:
        values[name] = value
    return values


def execute(path: Path, params: dict, out: Path) -> tuple[nbformat.NotebookNode, str | None]:
    """Run ``path`` with ``params`` (cwd: the chapter's folder) and save it to ``out``;
    returns the executed notebook and, if a cell failed, the error in one line."""
    import papermill as pm
    from run_chapter import execute as run

    error = None
    try:
        run(path, str(out), parameters=params)
    except pm.PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
    nb = nbformat.read(out, as_version=4)
    return nb, error


# -- rendering -------------------------------------------------------------------------

def _markdown():
    from markdown_it import MarkdownIt
    from mdit_py_plugins.amsmath import amsmath_plugin
    from mdit_py_plugins.colon_fence import colon_fence_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    md = MarkdownIt("commonmark").enable("table")
    md.use(dollarmath_plugin, double_inline=True,
           renderer=lambda content, opts: html.escape(
               f"\\[{content}\\]" if opts.get("display_mode") else f"\\({content}\\)"))
    md.use(amsmath_plugin, renderer=html.escape)
    md.use(colon_fence_plugin)
    return md


ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")


def glue_store(nb) -> dict[str, dict]:
    """Glued name -> its mime bundle (``image/png``, ``text/plain``, ...)."""
    store = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                store[name] = {k[len(GLUE):]: v for k, v in output.get("data", {}).items()
                               if k.startswith(GLUE)}
    return store


def _bib(path: Path) -> dict[str, tuple[str, str]]:
    """Citation key -> (authors as the book cites them, year), read from the book's
    bibliography (``references.bib``)."""
    if not path.is_file():
        return {}
    entries = {}
    text = path.read_text(encoding="utf-8")
    for m in re.finditer(r"@\w+\s*\{\s*([^,\s]+)\s*,(.*?)\n\}", text, flags=re.S):
        fields = dict((k.lower(), " ".join(v.split())) for k, v in re.findall(
            r"(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}", m[2]))
        names = [a.split(",")[0].strip(" {}") if "," in a else a.split()[-1].strip(" {}")
                 for a in re.split(r"\s+and\s+", fields.get("author", "")) if a.strip()]
        who = (names[0] if len(names) == 1 else f"{names[0]} and {names[1]}"
               if len(names) == 2 else f"{names[0]} et al." if names else m[1])
        entries[m[1]] = (who, fields.get("year", ""))
    return entries


def _page_markdown(cell) -> str:
    """The Markdown a cell puts on its page, in order: a Markdown cell's source, or the
    Markdown a code cell displays (figures with captions written by the code)."""
    if cell.cell_type == "markdown":
        return cell.source
    return "\n\n".join(str(o.get("data", {}).get("text/markdown", ""))
                       for o in cell.get("outputs", []) if o.get("data"))


def _labels(book: Path, nb=None) -> dict[str, str]:
    """Label -> what the book shows for a reference to it: a section's title, a
    directive's kind and title (``Definition (Additive attention)``), an equation's
    number within its page, ``(2)``, with the page named when it is another one; the
    labels of the book's pages and of ``nb``, the notebook shown (it wins)."""
    found: dict[str, str] = {}
    sources = [(p.stem, p) for p in sorted(book.glob("*.md")) + sorted(book.glob("*.ipynb"))]
    for stem, path in sources + ([(None, nb)] if nb is not None else []):
        if not isinstance(path, Path) or path.suffix == ".ipynb":
            cells = path.cells if not isinstance(path, Path) else nbformat.read(
                path, as_version=4).cells
            text = "\n\n".join(_page_markdown(c) for c in cells)
        else:
            text = path.read_text(encoding="utf-8")
        page = re.search(r"^#\s+(.+)$", text, flags=re.M)
        page = page[1].strip() if page else stem
        for m in re.finditer(r"^\(([\w:-]+)\)=\s*\n+#+\s+(.+)$", text, flags=re.M):
            found[m[1]] = m[2].strip()
        figures = 0  # numbered per page in order, as the book's numfig does ("Fig. 2")
        for m in re.finditer(r"^(?:```+|:::+)\{([\w:-]+)\}[ \t]*(.*)\n((?::[\w-]+:.*\n)*)",
                             text, flags=re.M):
            label = re.search(r"^:(?:label|name):\s*(\S+)", m[3], flags=re.M)
            if m[1].split(":")[-1] == "figure":
                figures += 1
                if label:
                    found[label[1]] = f"Fig. {figures}"
                continue
            if label:
                kind = m[1].split(":")[-1].replace("-", " ").capitalize()
                title = re.sub(r"\{[\w:-]+\}`([^`]*)`", r"\1", m[2].strip())
                title = re.sub(r"\$([^$]+)\$", r"\\(\1\\)", title)  # math for MathJax
                found[label[1]] = f"{kind} ({title})" if title else kind
        for number, m in enumerate(re.finditer(r"\$\$\s*\(([\w:-]+)\)", text), 1):
            found["eq:" + m[1]] = f"({number})"
            found["eq-page:" + m[1]] = page
        if stem:
            found["doc:" + stem] = page
    return found


def _roles(text: str, store: dict, refs: dict | None = None) -> str:
    """MyST roles as the book renders them: citations as author and year, references by
    what they point to (a section's title, a definition's name, an equation's number),
    glued text by its value."""
    refs = refs if refs is not None else {}

    def role(m):
        kind, body = m[1], m[2]
        if kind.startswith("glue"):
            key, _, fmt = body.partition(":")
            plain = str(store.get(key, {}).get("text/plain", f"[{key}]")).strip("'\"")
            with_fmt = plain
            if fmt:
                try:
                    with_fmt = format(float(plain), fmt)
                except ValueError:
                    pass
            return with_fmt
        if kind.startswith("cite"):
            bib = refs.get("_bib", {})
            cited = [bib.get(k.strip(), (k.strip(), "")) for k in body.split(",")]
            if kind in ("cite:t", "cite:ts"):
                return "; ".join(f"{who} ({year})" if year else who for who, year in cited)
            return "(" + "; ".join(f"{who}, {year}" if year else who
                                   for who, year in cited) + ")"
        explicit = re.match(r"^(.*?)\s*<([^>]*)>$", body, flags=re.S)
        if explicit and explicit[1]:
            return explicit[1]
        label = explicit[2] if explicit else body
        if kind == "eq":
            page = refs.get("eq-page:" + label)
            number = refs.get("eq:" + label, label)
            return number if page in (None, refs.get("_page")) else f"{page} {number}"
        if kind == "doc":
            return refs.get("doc:" + Path(label).stem, label)
        return refs.get(label, label)
    return ROLE.sub(role, text)


def _figure(name: str, caption_html: str, store: dict, number: str = "") -> str:
    """A glued figure with its caption, which starts with its number as in the book
    ("Fig. 2."), or ends with the glue name where it has none."""
    bundle = store.get(name, {})
    if "image/png" in bundle:
        data = bundle["image/png"]
        body = f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
    else:
        body = f"<p><em>(figure {html.escape(name)} was not produced by this run)</em></p>"
    if number:
        caption_html = re.sub(r"^(\s*<p>)?", lambda m: (m[1] or "") +
                              f'<span class="number">{number}.</span> ', caption_html, count=1)
    else:
        caption_html += f' <span class="name">({html.escape(name)})</span>'
    return (f'<figure id="{html.escape(name)}">{body}<figcaption>{caption_html}'
            f'</figcaption></figure>')


def _pyobject(path: Path, dotted: str) -> str:
    """The source of ``Class.method`` or ``function`` in ``path``."""
    source = path.read_text(encoding="utf-8")
    body = ast.parse(source).body
    node = None
    for part in dotted.split("."):
        node = next((n for n in body if getattr(n, "name", None) == part), None)
        if node is None:
            return source
        body = getattr(node, "body", [])
    lines = source.splitlines()[node.lineno - 1 - len(getattr(node, "decorator_list", [])):
                                node.end_lineno]
    return textwrap.dedent("\n".join(lines))


def _directive(info: str, content: str, store: dict, md, folder: Path,
               refs: dict | None = None) -> str:
    kind, _, argument = info.strip()[1:].partition("}")
    argument = argument.strip()
    options, lines = {}, content.splitlines()
    while lines and re.match(r"^:[\w-]+:", lines[0]):
        key, _, value = lines.pop(0)[1:].partition(":")
        options[key] = value.strip()
    body = "\n".join(lines).strip()
    if kind == "glue:figure":
        number = (refs or {}).get(options.get("name", ""), "")
        return _figure(argument, md.render(_roles(body, store, refs)), store,
                       number if number.startswith("Fig. ") else "")
    if kind == "literalinclude":
        path = (folder / argument).resolve()
        code = path.read_text(encoding="utf-8") if path.is_file() else ""
        if "pyobject" in options and path.is_file():
            code = _pyobject(path, options["pyobject"])
        title = options.get("caption", argument)
        return (f'<details class="code" open><summary>{html.escape(title)}</summary>'
                f"<pre>{html.escape(code)}</pre></details>")
    # as the book shows them: an admonition by its title, a note or a definition by its
    # kind (and its title), never the directive's name
    word = kind.split(":")[-1].replace("-", " ").capitalize()
    if kind == "admonition":
        title = md.renderInline(_roles(argument, store, refs))
    elif argument:
        title = f"{word} ({md.renderInline(_roles(argument, store, refs))})"
    else:
        title = word
    label = options.get("label") or options.get("name")
    anchor = f' id="{html.escape(label)}"' if label else ""
    css = html.escape(kind.replace(":", "-"))
    return (f'<div class="directive {css}"{anchor}><div class="title">{title}</div>'
            f"{md.render(_roles(body, store, refs))}</div>")


def render_markdown(source: str, store: dict, md, folder: Path,
                    refs: dict | None = None) -> str:
    """A markdown cell as HTML: targets ``(label)=`` as anchors, directives as boxes,
    glued figures where they are named, roles as the book renders them."""
    source = re.sub(r"^\(([\w:-]+)\)=\s*$", r'<a id="\1"></a>\n', source, flags=re.M)
    tokens = md.parse(source)
    out, plain = [], []

    def flush():
        if plain:
            out.append(md.renderer.render(plain, md.options, {}))
            plain.clear()

    for tok in tokens:
        if tok.type in ("fence", "colon_fence") and tok.info.strip().startswith("{"):
            flush()
            out.append(_directive(tok.info, tok.content, store, md, folder, refs))
        else:
            if tok.type == "inline" and tok.children:
                for child in tok.children:
                    if child.type == "text":
                        child.content = _roles(child.content, store, refs)
                # roles are split into text + code_inline by the parser: re-join them
                joined = []
                for child in tok.children:
                    if (child.type == "code_inline" and joined and joined[-1].type == "text"
                            and re.search(r"\{[\w:-]+\}$", joined[-1].content)):
                        prev = joined[-1]
                        prev.content = _roles(prev.content + f"`{child.content}`", store, refs)
                        continue
                    joined.append(child)
                tok.children = joined
            plain.append(tok)
    flush()
    return "\n".join(out)


def render_output(output, store: dict, md, folder: Path = BOOK,
                  refs: dict | None = None) -> str:
    """A code cell's output; Markdown it displays is rendered as a Markdown cell is
    (directives such as a glued figure, roles)."""
    kind = output.get("output_type")
    if output.get("metadata", {}).get("scrapbook"):
        return ""  # a glued value: shown where the text names it
    if kind == "stream":
        return f'<pre class="stream">{html.escape(output.get("text", ""))}</pre>'
    if kind == "error":
        tb = "\n".join(output.get("traceback", []))
        tb = re.sub(r"\x1b\[[0-9;]*m", "", tb)
        return f'<pre class="error">{html.escape(tb)}</pre>'
    data = output.get("data", {})
    if "image/png" in data:
        return f'<img src="data:image/png;base64,{data["image/png"]}">'
    if "text/html" in data:
        return data["text/html"]
    if "text/markdown" in data:
        return render_markdown(data["text/markdown"], store, md, folder, refs)
    if "text/plain" in data:
        return f"<pre>{html.escape(data['text/plain'])}</pre>"
    return ""


def _mathjax(out_html: Path) -> str:
    """A script tag for the MathJax the book ships (sphinx-mathjax-offline), if any,
    copied into ``mathjax/`` beside the page: the page's math works offline and wherever
    its folder is moved or sent (no path into the virtual environment)."""
    try:
        dist = importlib.metadata.distribution("sphinx-mathjax-offline")
        js = next(f for f in dist.files or [] if str(f).endswith("mathjax/tex-chtml.js"))
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        return ""
    source = Path(dist.locate_file(js)).resolve().parent
    shutil.copytree(source, out_html.parent / "mathjax", dirs_exist_ok=True)
    return ('<script>window.MathJax = {tex: {macros: {R: "\\\\mathbb{R}"}}};</script>'
            '<script defer src="mathjax/tex-chtml.js"></script>')


def render(nb, title: str, banner: str, out_html: Path, folder: Path = BOOK) -> str:
    """The whole executed chapter as one HTML page."""
    md = _markdown()
    store = glue_store(nb)
    refs = {**_labels(folder, nb), "_bib": _bib(folder / "references.bib"), "_page": None}
    heading = next((re.search(r"^#\s+(.+)$", c.source, flags=re.M) for c in nb.cells
                    if c.cell_type == "markdown" and re.search(r"^#\s", c.source, flags=re.M)),
                   None)
    refs["_page"] = heading[1].strip() if heading else None
    parts = [f'<div class="banner">{banner}</div>']
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(render_markdown(cell.source, store, md, folder, refs))
        elif cell.cell_type == "code":
            if cell.source.strip():
                tags = cell.metadata.get("tags", [])
                label = "parameters" if "parameters" in tags else (
                    "injected parameters" if "injected-parameters" in tags else "code")
                parts.append(f'<details class="code"><summary>{label}</summary>'
                             f"<pre>{html.escape(cell.source)}</pre></details>")
            outputs = "".join(render_output(o, store, md, folder, refs)
                              for o in cell.get("outputs", []))
            if outputs:
                parts.append(f'<div class="output">{outputs}</div>')
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"{_mathjax(out_html)}</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("chapter", help="chapter name (e.g. relevancy_screening) or notebook path")
    p.add_argument("-p", "--parameters", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a parameter, typed as papermill types it (number, bool, string)")
    p.add_argument("-r", "--raw", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a parameter kept as a string")
    p.add_argument("-y", "--yaml", action="append", metavar="YAML",
                   help='parameters as YAML, e.g. -y "cost_T: [100, 200]"')
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: _build/chapters/<chapter>/)")
    opts = p.parse_args(argv)
    path = chapter_path(opts.chapter)
    params = parameters(opts)
    out = (opts.out or OUT / path.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    out_nb, out_html = out / f"{path.stem}.ipynb", out / f"{path.stem}.html"
    shown = ", ".join(f"{k} = {v!r}" for k, v in params.items()) or "default parameters"
    print(f"running {io.portable_path(path)} with {shown} ...", flush=True)
    start = time.perf_counter()
    nb, error = execute(path, params, out_nb)
    seconds = time.perf_counter() - start
    banner = (f"<strong>{html.escape(path.name)}</strong> re-run with "
              f"{html.escape(shown)} in {seconds:.0f} s; "
              + (f"<strong>it stopped with an error</strong>: {html.escape(error)}"
                 if error else "every check of the chapter held."))
    io.atomic_write_text(out_html, render(nb, path.stem, banner, out_html, path.parent))
    if error:  # the verdict first, then where to look
        print(f"FAILED: {error}", file=sys.stderr, flush=True)
    print(f"  {seconds:.0f} s; notebook: {io.portable_path(out_nb)}")
    print(f"  open {io.portable_path(out_html)} in a browser to see the text, figures "
          f"and outputs" + (" (the page shows where it stopped)" if error else ""))
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
