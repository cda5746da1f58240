"""The command line explains itself: every option has help and its real default, the
help text has no contradictions or reST markup, errors use the flags a user types."""

from __future__ import annotations

import argparse

import pytest

import rsa
from rsa.__main__ import cli_message, main

COMMANDS = ["train", "transfer", "bench", "reproduce"]


class _Captured(Exception):
    pass


def parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``python -m rsa COMMAND`` builds, caught as it starts parsing."""
    seen = []
    real = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        if self.prog.endswith(command):
            seen.append(self)
            raise _Captured
        return real(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    if command in ("train", "transfer"):  # subcommands of the top-level parser
        real_top = real

        def top(self, args=None, namespace=None):
            if self.prog == "python -m rsa":
                sub = next(a for a in self._actions
                           if isinstance(a, argparse._SubParsersAction))
                seen.append(sub.choices[command])
                raise _Captured
            return real_top(self, args, namespace)

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", top)
    with pytest.raises(_Captured):
        main([command])
    return seen[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_with_its_default(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        text = action.help or ""
        assert text.strip(), f"{command} {action.option_strings[0]} has no help"
        if action.required or action.dest in ("status",):
            continue
        assert "default" in text, f"{command} {action.option_strings[0]}: no default said"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_text_has_no_contradiction_or_markup(command, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["rsa"])
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text
    assert "(default: None)" not in text and "(default: True)" not in text
    assert "(default: False)" not in text
    assert text.count("(default:") <= len(text.split("\n  -")) + 1  # one per option at most
    assert ") (default:" not in text  # no "(...) (default: ...)"


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"rsa {rsa.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and all(c in text for c in COMMANDS)


def test_transfer_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    text = capsys.readouterr().out
    assert "without training" in text and "--run DIR" in text and "(default: 100)" in text


def test_reproduce_help_gives_the_default_scale_and_says_finished_work_is_skipped(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: converged" in text and "skipped" in text


def test_train_help_says_task_dependent_defaults_as_such(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "hidden units n (default: 128 for copy/denoise, 100 for pixel tasks)" in text
    assert "delay of copy/denoise" in text and "(default: 100)" in text


@pytest.mark.parametrize("args, says, not_says", [
    (["--hidden-size", "0"], "error: --hidden-size must be an int >= 1, got 0",
     "hidden_size"),
    (["--model", "rnn", "--nu", "4"], "got --nu 4 (leave them out)", "None"),
    (["--lr", "-1"], "error: --lr must be a finite number > 0", " lr must"),
    (["--task", "digits", "--stall-updates", "5"], "use --patience-updates",
     "patience_updates"),
    (["--device", "cuda:99"], "error: ", "device='cpu'"),
])
def test_errors_name_the_flags_a_user_types(args, says, not_says, capsys):
    assert main(["train", "--no-progress", "--steps", "1", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and not_says not in err.splitlines()[0]


@pytest.mark.parametrize("message, expected", [
    ("nu and rho apply to relrnn and rellstm only; model 'rnn' got nu=2, rho=None "
     "(leave them None)",
     "nu and rho apply to relrnn and rellstm only; model 'rnn' got --nu 2 (leave them out)"),
    ("task 'digits' has fixed length 64; T must be None or 64, got 50",
     "task 'digits' has fixed length 64; --T must be left out or be 64, got 50"),
    ("device 'cuda' requested but CUDA is not available; use --device cpu (device='cpu')",
     "device 'cuda' requested but CUDA is not available; use --device cpu"),
    ("resume it with --steps 4 or more (steps=4), or start over with --no-resume "
     "(resume=False), or train into another --out-dir (out_dir)",
     "resume it with --steps 4 or more, or start over with --no-resume, or train into "
     "another --out-dir"),
    ("eval_every must be an int >= 1, got 0", "--eval-every must be an int >= 1, got 0"),
])
def test_cli_message(message, expected):
    assert cli_message(message) == expected


def test_train_ends_with_a_summary_in_words_and_json_behind_a_flag(tmp_path, capsys):
    import json

    from rsa.__main__ import main

    argv = ["train", "--model", "rnn", "--T", "2", "--hidden-size", "4", "--steps", "2",
            "--eval-every", "1", "--eval-batch", "4", "--no-progress", "--out",
            str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("rnn on copy, T = 2, seed 0: not solved within 2 updates"), out
    assert f"files: {tmp_path / 'run'}" in out and "{" not in out
    assert main([*argv, "--json"]) == 0  # the finished run, loaded
    assert json.loads(capsys.readouterr().out)["steps_done"] == 2
