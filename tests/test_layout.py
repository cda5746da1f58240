"""The package's layout rules (the closing note of the layout issue lists them): no
import circle among rsa's modules, function-local imports included; at most 8 modules
at the top level besides ``__init__`` and ``__main__``; no module over 600 lines; no
private name imported across rsa's top-level packages; no chapter imports a private
name of rsa. Each rule is checked on a planted violation too, so that it can fail."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_TOP_LEVEL = 8
MAX_LINES = 600


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module of ``root/rsa`` (a package is its __init__)."""
    out = {}
    for p in sorted((root / "rsa").rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imported(module: str, path: Path, known) -> set[tuple[str, str]]:
    """(module imported, name) for every import of rsa in ``path``, at any depth (inside
    functions too). ``from a import b`` imports module ``a.b`` when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {(a.name, "") for a in node.names if a.name.split(".")[0] == "rsa"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "rsa":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add((sub, "") if sub in known else (node.module, a.name))
    return found


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the rsa modules it makes Python import (``a.b.c`` imports ``a``,
    ``a.b`` and ``a.b.c``); a module's own parent packages are not edges (Python has
    them imported before the module starts)."""
    graph = {}
    for m, p in mods.items():
        edges = set()
        for target, _ in imported(m, p, mods):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                q = ".".join(parts[:i])
                if q in mods and q != m and not m.startswith(q + "."):
                    edges.add(q)
        graph[m] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def top_level(mods) -> list[str]:
    return sorted({m.split(".")[1] for m in mods if m.count(".") >= 1} - {"__main__"})


def private_imports_across_packages(mods) -> list[str]:
    """``from rsa.X... import _name`` in a module of another top-level package Y."""
    bad = []
    for m, p in mods.items():
        home = m.split(".")[:2]
        for target, name in imported(m, p, mods):
            if name.startswith("_") and target.split(".")[:2] != home:
                bad.append(f"{m} imports {target}.{name}")
    return bad


def chapter_private_names(book: Path = ROOT / "book") -> list[str]:
    """Private names of rsa a chapter's code cells import or read as attributes."""
    bad = []
    for nb in sorted(book.glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            try:
                tree = ast.parse("".join(cell["source"]))
            except SyntaxError:  # IPython magics
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rsa"):
                    bad += [f"{nb.name}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_")]
                elif isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                        and not node.attr.startswith("__") \
                        and ast.unparse(node.value).split(".")[0] in ("rsa", "plotting",
                                                                      "experiments"):
                    bad.append(f"{nb.name}: {ast.unparse(node)}")
    return bad


def test_no_import_circle():
    assert cycles(import_graph(modules())) == []


def test_at_most_eight_top_level_modules():
    top = top_level(modules())
    assert len(top) <= MAX_TOP_LEVEL, top


def test_no_module_over_600_lines():
    long = {m: n for m, p in modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_name_across_packages():
    assert private_imports_across_packages(modules()) == []


def test_no_chapter_imports_a_private_name():
    assert chapter_private_names() == []


def _plant(tmp_path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        p = tmp_path / "rsa" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return modules(tmp_path)


def test_the_rules_catch_planted_violations(tmp_path):
    mods = _plant(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/x.py": "def f():\n    from rsa.b import y\n",  # function-local
        "b/__init__.py": "",
        "b/y.py": "from rsa.a.x import _helper\n",
        **{f"m{i}.py": "" for i in range(MAX_TOP_LEVEL)},
        "long.py": "x = 1\n" * (MAX_LINES + 1),
    })
    assert cycles(import_graph(mods)) == [["rsa.a.x", "rsa.b.y"]]
    assert len(top_level(mods)) > MAX_TOP_LEVEL
    assert private_imports_across_packages(mods) == ["rsa.b.y imports rsa.a.x._helper"]
    book = tmp_path / "book"
    book.mkdir()
    cell = {"cell_type": "code", "source": ["from rsa.plotting import _fig_ax\n",
                                            "rsa.experiments._grad_rows\n"]}
    (book / "c.ipynb").write_text(json.dumps({"cells": [cell]}))
    assert chapter_private_names(book) == ["c.ipynb: rsa.plotting._fig_ax",
                                           "c.ipynb: rsa.experiments._grad_rows"]


@pytest.mark.parametrize("name", ["rsa.RelRNN", "rsa.models.RelRNN", "rsa.theory.path_sum",
                                  "rsa.experiments.PLANS", "rsa.train.train",
                                  "rsa.tasks.copy_batch", "rsa.io.load_run",
                                  "rsa.book.glue_figure", "rsa.plotting.set_style"])
def test_the_import_paths_readers_use_still_work(name):
    import importlib

    module, attr = name.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), attr)


def test_every_file_the_book_includes_exists_with_the_objects_it_shows():
    import re

    found = []
    for page in sorted((ROOT / "book").glob("*.*")):
        if page.suffix not in (".md", ".ipynb"):
            continue
        text = page.read_text()
        if page.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        for m in re.finditer(r"```\{literalinclude\} (\S+)\n((?::\w+:.*\n)*)", text):
            path = (page.parent / m.group(1)).resolve()
            found.append(path)
            assert path.is_file(), f"{page.name} includes {m.group(1)}, which does not exist"
            obj = re.search(r":pyobject: (\S+)", m.group(2))
            if obj:
                names = {n.name for n in ast.walk(ast.parse(path.read_text()))
                         if isinstance(n, ast.FunctionDef | ast.ClassDef)}
                assert obj.group(1).split(".")[-1] in names, (page.name, obj.group(1))
    assert found  # the chapters do include code
