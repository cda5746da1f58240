"""Bring the committed record of the campaign (rsa.experiments.campaign) up to date, for a commit:

1. ``python -m rsa reproduce --scale paper --snapshot``: the in-flight state of every
   unfinished run into ``data/paper/inflight/``, finished runs into ``data/paper/``;
2. the campaign table of the README (between its ``campaign-table`` markers);
3. the chapters that read it (*Copy and denoise*, *Digits*, *Sparse attentive
   backtracking*, *Reproducibility*), re-executed in
   place.

Run it from the repository root, about once an hour while the campaign trains and
before work stops (``--runs-dir`` names the runs folder the campaign trains in, when
that is not ``runs/``). ``--check`` only says whether the README's table is current.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the chapters that read it
CHAPTERS = ("copy_denoise.ipynb", "digits.ipynb", "sab.ipynb", "reproducibility.ipynb")
BEGIN = "<!-- campaign-table: begin (python tools/campaign_sync.py) -->"
END = "<!-- campaign-table: end -->"


def readme_block(data: Path) -> str:
    from rsa.experiments import campaign

    table = campaign.status_table(data)
    shown = table.drop(columns=["what"])
    text = campaign.format_status(data, table=shown)
    return f"{BEGIN}\n{text}\n{END}"


def replace_block(readme: str, block: str) -> str:
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + block + readme[end:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", default=None,
                   help="where the campaign's runs train (default: runs/)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if the README's campaign table is not current")
    a = p.parse_args(argv)
    readme_path = ROOT / "README.md"
    data = ROOT / "data"
    if not a.check:
        cmd = [sys.executable, "-m", "rsa", "reproduce", "--scale", "paper", "--snapshot"]
        if a.runs_dir:
            cmd += ["--runs-dir", a.runs_dir]
        subprocess.run(cmd, cwd=ROOT, check=True)
    readme = readme_path.read_text(encoding="utf-8")
    new = replace_block(readme, readme_block(data))
    if a.check:
        if new != readme:
            print("README.md: the campaign table is not current; run "
                  "python tools/campaign_sync.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new, encoding="utf-8")
    subprocess.run([sys.executable, "tools/run_chapter.py", "--no-times",
                    *(f"book/{c}" for c in CHAPTERS)], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
