"""The stored example of *Reproducibility* (two instruction sets, one run): made by
``tools/isa_example.py`` from a committed tree, with the command the tool trains."""

import json

from tests.conftest import ROOT


def test_the_stored_isa_example_is_the_tools_and_holds_two_instruction_sets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("isa_example", ROOT / "tools/isa_example.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    record = json.loads((ROOT / "data" / "isa_example.json").read_text())
    assert record["command"] == tool.COMMAND
    assert record["git"]["dirty"] is False and len(record["git"]["commit"]) == 40
    assert list(record["runs"]) == list(tool.VARIANTS)
    caps = [r["cpu_capability"] for r in record["runs"].values()]
    assert len(set(caps)) == 2 and "DEFAULT" in caps
    for r in record["runs"].values():
        assert r["train_loss_first_250"] > 0 and 0 <= r["val_accuracy_1000"] <= 1
