"""Every number a chapter's text states comes from the chapter's computation.

A chapter's prose quotes its measurements (a ratio, a slope, a fraction of cells, a
crossover span) with the digits it trusts. When a chapter is re-run on new data or code
and its outputs change, a number typed into its text would go stale silently. This
test reads each executed chapter and requires every decimal number, and every integer
of three digits or more, of its Markdown cells to be printed by one of its code cells
(or to be a constant of its code), up to the prose's rounding: a number with d decimals
matches a printed number that rounds to it at d decimals, and an integer ending in k
zeros one that rounds to it at its last non-zero digit (787.81) only where the text says
it is approximate ("about 790"), else at its units. Comments of code cells do not count.

The few numbers that no cell prints are derived in the text itself (a proof's
arithmetic, a closed form at one parameter, a sequence length L = T + 20), are settings
of the code, or are facts of the paper's setting (MNIST's sizes, the release's budget);
each is listed in :data:`DERIVED` with the expression that gives it, evaluated here, so
that the list cannot hide a stale number either.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.conftest import ROOT

PROSE_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w]|\.\d)")
PROSE_INTEGER = re.compile(r"(?<![\w.$^{_\-/])(?:\d{1,3}(?: \d{3})+|\d{3,})(?![\w]|\.\d)")
PRINTED_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\d])")
THOUSANDS = re.compile(r"(?<=\d)[ ,](?=\d{3}\b)")  # "113 913", "113,913"
APPROXIMATE = re.compile(r"(about|around|roughly|nearly|almost|some|~|≈)\s*$")
COMMENT = re.compile(r"#.*$", re.M)  # a code cell's comments are not its computation


def _sigma(j: int, nu: int, rho: int) -> float:
    """The score with which h_j leaves S under uniform attention (prop. in the chapter
    *Relevancy screening*)."""
    return sum(1 / min(t - 1, nu + rho) for t in range(j + 1, j + nu + 1))


def _crossover_ratio(lam: float) -> float:
    from rsa.theory import crossover_fixed_uniform, crossover_uniform
    return crossover_uniform(lam)[0] / crossover_fixed_uniform(lam)[0]


def _default_hidden(task: str) -> int:
    from rsa.train import resolve_config
    return resolve_config(model="relrnn", task=task).hidden_size


def _authors_steps() -> int:
    from rsa.experiments.campaign import AUTHORS_STEPS
    return AUTHORS_STEPS


def _source_constant(path: str, text: str, value: float) -> float | None:
    """``value`` if ``text`` is in the file ``path`` (a setting the prose quotes)."""
    return value if text in (ROOT / path).read_text(encoding="utf-8") else None


def _sequence_length(T: int) -> int:
    from rsa.tasks import sequence_length
    return sequence_length("copy", T)


# chapter -> prose number -> (how the prose uses it, why, the value). "round": the
# prose is the value rounded to its digits; "upper": a bound, at most one unit of its
# last digit above the value; "fact": a fact of the paper's setting, stated as it is.
DERIVED = {
    "accuracy_vs_cost.ipynb": {
        **{str(T + 20): ("round", f"L = T + 20 at T = {T}", lambda T=T: _sequence_length(T))
           for T in (100, 400, 600, 800)},
    },
    "bounds.ipynb": {
        "220": ("round", "the step after which lambda^(2(t-1)) < 1e-20 at lambda = 0.9",
                lambda: 1 + 20 / (2 * -math.log10(0.9))),
        "128": ("round", "the hidden size n of the stored runs (TrainConfig's default)",
                lambda: _default_hidden("copy")),
        "0.724": ("upper", "a(pi^2/6 + 5/4) at lambda = 1, a = lambda^2/4",
                  lambda: 0.25 * (math.pi ** 2 / 6 + 5 / 4)),
        "7.24": ("upper", "(1 + 4a) / (1 - a(pi^2/6 + 5/4)) at lambda = 1",
                 lambda: 2 / (1 - 0.25 * (math.pi ** 2 / 6 + 5 / 4))),
        "0.374": ("upper", "theta_11 = a (11/9)^2 at lambda = 1", lambda: 0.25 * (11 / 9) ** 2),
        "1.0025": ("round", "the ratio of the limits, 4 / (4 - lambda^2) at lambda = 0.1",
                   lambda: 4 / (4 - 0.1 ** 2)),
        "1.25": ("round", "t* independent / t* fixed at lambda = 0.5",
                 lambda: _crossover_ratio(0.5)),
        "1.001": ("round", "the attainment factor tests/test_theory_nonfrozen.py asserts",
                  lambda: _source_constant("tests/test_theory_nonfrozen.py",
                                           "ratio.min() > 1 / 1.001", 1.001)),
    },
    "digits.ipynb": {
        "70 000": ("fact", "MNIST's images, training and test", lambda: 70_000),
        "60 000": ("fact", "MNIST's training images", lambda: 60_000),
        "55 000": ("fact", "MNIST's training images less 5 000 held out for validation",
                   lambda: 55_000),
        "120 000": ("round", "200 epochs of 60 000 images at batch 100",
                    lambda: 200 * 60_000 / 100),
    },
    "kappa_d_tradeoff.ipynb": {
        "0.13": ("round", "lambda^200 at lambda = 0.99", lambda: 0.99 ** 200),
        "120": ("round", "L = T + 20 at T = 100", lambda: _sequence_length(100)),
        "220": ("round", "L = T + 20 at T = 200", lambda: _sequence_length(200)),
        "820": ("round", "L = T + 20 at T = 800", lambda: _sequence_length(800)),
    },
    "relevancy_screening.ipynb": {
        "0.501": ("round", "sigma_29 at nu = rho = 15", lambda: _sigma(29, 15, 15)),
    },
    "reproducibility.ipynb": {
        "1.5": ("round", "tools/run_chapter.py's TOLERANCE",
                lambda: _source_constant("tools/run_chapter.py", "TOLERANCE = 1.5", 1.5)),
    },
    "sab.ipynb": {
        "128": ("round", "the release's --rnn-dim, rsa.SAB's n in the copy setting",
                lambda: _source_constant("rsa/models/sab.py", "n = 128 units", 128)),
        "200 000": ("round", "the authors' and the release's updates",
                    lambda: _authors_steps()),
        "640 000": ("fact", "the fixed copy sequences the release's script trains on",
                    lambda: 640_000),
        "0.01": ("round", "the initial scale of SAB's w in rsa/models/sab.py",
                 lambda: _source_constant("rsa/models/sab.py",
                                          "torch.randn(2 * n) * 0.01", 0.01)),
    },
}

CHAPTERS = sorted(p.name for p in (ROOT / "book").glob("*.ipynb"))


def _decimals(number: str) -> int:
    """The digits after the point; for an integer minus its trailing zeros ("790": -1)."""
    if "." in number:
        return len(number.split(".")[1])
    digits = number.replace(" ", "")
    return -(len(digits) - len(digits.rstrip("0"))) if digits.strip("0") else 0


def _value(number: str) -> float:
    return float(number.replace(" ", ""))


def rounds_to(value: float, number: str, about: bool = True) -> bool:
    """``value`` rounded to the digits of ``number`` is ``number``; an integer ending in
    zeros is rounded at its last non-zero digit only when the text says it is
    approximate (``about``), else at its units."""
    d = _decimals(number) if about or "." in number else 0
    return abs(round(value, d) - _value(number)) < 0.5 * 10.0 ** -(d + 3)


def bounds_above(value: float, number: str) -> bool:
    """``number`` is at least ``value`` and at most one unit of its last digit above."""
    return value <= _value(number) <= value + 10.0 ** -_decimals(number)


def chapter_text(path) -> tuple[str, list[float]]:
    """A chapter's Markdown, and the numbers its code cells print or contain."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    prose, printed = [], []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            prose.append(source)
            continue
        if cell["cell_type"] != "code":
            continue
        texts = [COMMENT.sub("", source)]
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            texts += ["".join(v) for k, v in out.get("data", {}).items()
                      if k.startswith("text/") and k != "text/html"]
        for t in texts:
            printed += [float(m) for m in PRINTED_NUMBER.findall(THOUSANDS.sub("", t))]
    return "\n".join(prose), printed


def unbacked(prose: str, printed: list[float], derived: dict) -> list[str]:
    """The prose's decimal numbers that no printed number rounds to and that
    ``derived`` does not give."""
    values = set(printed)
    missing = []
    found = [(m.group(), True) for m in PROSE_NUMBER.finditer(prose)] + [
        (m.group(), bool(APPROXIMATE.search(prose[max(0, m.start() - 12):m.start()])))
        for m in PROSE_INTEGER.finditer(prose)]
    for number, about in found:
        if number in derived or any(rounds_to(v, number, about) for v in values):
            continue
        missing.append(number)
    return missing


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_decimal_number_of_the_prose_is_computed(chapter):
    prose, printed = chapter_text(ROOT / "book" / chapter)
    missing = unbacked(prose, printed, DERIVED.get(chapter, {}))
    assert not missing, (
        f"book/{chapter}: the text states {sorted(set(missing))}, which no cell prints "
        f"(to the text's digits): print it, glue it, or derive it in DERIVED")


@pytest.mark.parametrize("chapter,number", [(c, n) for c, d in DERIVED.items() for n in d])
def test_every_derived_number_is_what_its_expression_gives_and_is_still_quoted(chapter, number):
    how, why, value = DERIVED[chapter][number]
    v = value()
    assert v is not None, f"{chapter}: {number} ({why}): its source no longer says it"
    check = {"round": rounds_to, "upper": bounds_above,
             "fact": lambda v, n: v == _value(n)}[how]
    assert check(v, number), f"{chapter}: {number} is not {why} = {v!r} ({how})"
    prose, _ = chapter_text(ROOT / "book" / chapter)
    assert number in PROSE_NUMBER.findall(prose) + PROSE_INTEGER.findall(prose), (
        f"{chapter} no longer states {number}")


def test_the_check_finds_a_typed_number_and_accepts_rounding():
    assert unbacked("slope 1.21 and 0.5", [1.2071, 0.4999], {}) == []
    assert unbacked("accuracy 0.910", [0.931, 0.9104], {}) == []
    assert unbacked("accuracy 0.910", [0.931, 0.9094], {}) == ["0.910"]
    assert unbacked("within 3.2 standard errors", [3.26], {}) == ["3.2"]
    assert unbacked("at 0.374", [], {"0.374": None}) == []
    assert bounds_above(0.37346, "0.374") and not rounds_to(0.37346, "0.374")
    assert not bounds_above(0.3746, "0.374") and not bounds_above(0.3720, "0.374")
    # integers: "about 790" is 787.81 at its last non-zero digit; 113 913 printed grouped
    assert unbacked("about 790 times", [787.81], {}) == []
    assert unbacked("after 790 updates", [787.81], {}) == ["790"]  # not said to be rounded
    assert unbacked("T = 1000", [1499.0, 500.0], {}) == ["1000"]
    assert unbacked("about 240 steps", [219.5], {}) == ["240"]
    assert unbacked("loss 113 913", [113913.0], {}) == []
    assert unbacked("loss 113 913", [113912.0], {}) == ["113 913"]
    assert unbacked("T = 100, L = 120", [100.0], {}) == ["120"]
