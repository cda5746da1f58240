"""tools/relativize_paths.py: stored results lose the paths of the machine that made
them, without re-running anything, and a second pass changes nothing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsa import io

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "relativize_paths.py"
OLD = "/home/someone/rsa"  # the repository root on the machine that wrote the files


def load_tool():
    spec = importlib.util.spec_from_file_location("relativize_paths", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stored(tmp_path):
    """A data/ folder as the old code wrote it."""
    run = tmp_path / "data" / "session" / "copy" / "rnn_T100_s0"
    config = {"model": "rnn", "out_dir": f"{OLD}/runs/session/copy/rnn_T100_s0",
              "data_dir": None, "steps": 300}
    io.write_json(run / "manifest.json", {
        "command": f"python -m rsa train --model rnn --out-dir {OLD}/runs/session/copy/"
                   f"rnn_T100_s0 --no-progress",
        "argv": f"{OLD}/rsa/__main__.py reproduce --scale converged --select "
                f"'*/rnn_T[12]00_s0'",
        "parameters": config, "files": ["results.json"], "seed": 0})
    io.write_json(run / "results.json", {"config": config, "history": [{"step": 1}],
                                         "summary": {"steps_done": 300, "loss": None}})
    torch.save({"format": 1, "config": config, "model": {"w": torch.arange(3.0)}},
               run / "model.pt")
    stage = tmp_path / "data" / "session" / "cost"
    io.write_json(stage / "manifest.json", {
        "command": "python -m rsa reproduce --scale session --stages cost",
        "argv": "python -m rsa reproduce --scale 'session'", "parameters": {}})
    (stage / ".manifest.json.abc.tmp").write_text("{ half written")  # a writer's temp file
    return tmp_path / "data", run


def test_recorded_paths_become_relative_and_nothing_else_changes(stored):
    data, run = stored
    tool = load_tool()
    changed = tool.relativize([data], [OLD], log=lambda s: None)
    assert sorted(p.name for p in changed) == ["manifest.json", "model.pt", "results.json"]
    m = io.load_manifest(run)
    assert m["command"] == ("python -m rsa train --model rnn --out-dir "
                            "runs/session/copy/rnn_T100_s0 --no-progress")
    assert m["argv"] == ("python -m rsa reproduce --scale converged --select "
                         "'*/rnn_T[12]00_s0'")
    assert m["parameters"]["out_dir"] == "runs/session/copy/rnn_T100_s0"
    assert m["files"] == ["results.json"] and m["seed"] == 0
    results = io.load_json(run / "results.json")
    assert results["config"]["out_dir"] == "runs/session/copy/rnn_T100_s0"
    assert results["summary"] == {"steps_done": 300, "loss": None}
    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["config"]["out_dir"] == "runs/session/copy/rnn_T100_s0"
    assert torch.equal(saved["model"]["w"], torch.arange(3.0)) and saved["format"] == 1
    for path in data.rglob("*"):
        if path.is_file() and path.suffix == ".json" and not path.name.startswith("."):
            assert OLD not in path.read_text(), path
    # a command that names no path is left exactly as it was written
    cost = io.load_manifest(data / "session" / "cost")
    assert cost["argv"] == "python -m rsa reproduce --scale 'session'"


def test_a_second_pass_changes_nothing(stored):
    data, run = stored
    tool = load_tool()
    tool.relativize([data], [OLD], log=lambda s: None)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    assert tool.relativize([data], [OLD], log=lambda s: None) == []
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before


def test_check_mode_reports_without_writing(stored):
    data, run = stored
    before = (run / "manifest.json").read_bytes()
    cmd = [sys.executable, str(TOOL), str(data), "--old-root", OLD, "--check"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1 and "would rewrite" in done.stdout
    assert (run / "manifest.json").read_bytes() == before
    assert subprocess.run(cmd[:-1], capture_output=True).returncode == 0
    assert subprocess.run(cmd, capture_output=True).returncode == 0


def test_the_stored_results_record_no_machine_path():
    """Every committed result under data/ records paths relative to the repository root
    (absolute paths of another machine: rewrite them with tools/relativize_paths.py)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "data"],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    offending = []
    for name in listed.stdout.split():
        if not name.endswith(".json") or not (ROOT / name).is_file():
            continue

        def walk(obj, key=None):
            if isinstance(obj, dict):
                return any(walk(v, k) for k, v in obj.items())
            if isinstance(obj, list):
                return any(walk(v, key) for v in obj)
            if isinstance(obj, str):
                if key in ("command", "argv"):
                    return any(w.startswith("/") or "=/" in w for w in obj.split())
                return obj.startswith("/")
            return False

        if walk(json.loads((ROOT / name).read_text())):
            offending.append(name)
    assert not offending, (f"{len(offending)} stored files record absolute paths, e.g. "
                           f"{offending[:3]}; run: python tools/relativize_paths.py")
