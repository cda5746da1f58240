"""Time one training update of SAB with its two score forms, side by side.

``rsa.SAB(score_form="released")`` computes the attention scores as the release does
(the tanh of the (B, m, 2n) state-slot concatenation at every step);
``score_form="separable"`` computes the same scores in O(m + n) a step (the module
docstring of ``rsa.models.sab``, quirk 5). This times a whole training update (forward,
backward, clipping, Adam step) of the release's copy setting, the two forms in
interleaved rounds on one thread, and prints the median of each and their ratio.

    python tools/bench_sab.py                 # T = 100, batch 64, n = 128, 7 rounds
    python tools/bench_sab.py --T 20 100 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[100], help="delays (default: 100)")
    p.add_argument("--batch", type=int, default=64, help="sequences per update (default: 64)")
    p.add_argument("--hidden-size", type=int, default=128, help="n (default: 128)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (default: 7)")
    a = p.parse_args(argv)
    for name in ("batch", "hidden_size", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if min(a.T) < 1:
        p.error(f"--T must be >= 1, got {min(a.T)}")
    import torch

    from rsa import io
    from rsa.models.heads import build_task_model
    from rsa.tasks import make_generator, synthetic_batch
    from rsa.train.loop import make_optimizer, train_step

    torch.set_num_threads(1)
    forms = ("released", "separable")
    print(f"SAB, copy, batch {a.batch}, n = {a.hidden_size}, Adam, one thread, "
          f"{io._cpu_model()}; ms per update, median of {a.rounds} interleaved rounds")
    for T in a.T:
        setups = {}
        for form in forms:
            torch.manual_seed(0)
            model = build_task_model("sab", "copy", a.hidden_size, score_form=form)
            opt = make_optimizer("adam", model.parameters(), 1e-3)
            x, y = synthetic_batch("copy", T, a.batch, make_generator(0))
            train_step(model, opt, x, y, 1.0)  # warm-up
            setups[form] = (model, opt, x, y)
        times = {f: [] for f in forms}
        for _ in range(a.rounds):
            for form in forms:
                model, opt, x, y = setups[form]
                t0 = time.perf_counter()
                train_step(model, opt, x, y, 1.0)
                times[form].append(1000 * (time.perf_counter() - t0))
        med = {f: statistics.median(v) for f, v in times.items()}
        print(f"T = {T}: released {med['released']:.0f}, separable {med['separable']:.0f} "
              f"({med['released'] / med['separable']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
