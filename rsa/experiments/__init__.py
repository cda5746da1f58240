"""``python -m rsa reproduce``: regenerate every stored result under ``data/``.

The experiment chapters (copy and denoise, transfer, gradient propagation, tradeoffs,
sequential digits) read what this writes. One plan per *scale*:

- ``session``: what this repository's ``data/`` holds, sized for a 2-core CPU in a few
  hours (about 45 minutes of it with ``--shard`` over two processes): T in
  {100, 200, 300, 500}, three seeds, 300 updates (models are far from trained; the
  chapters say so).
- ``full``: the authors' settings where a machine allows (the book's page *The paper*,
  section 5: up to 200 000 updates; here capped at 20 000 and 3 seeds), for a GPU or a
  long CPU run.

Stages, each resumable (training runs resume from their checkpoints under
``runs/<scale>/``; a stage whose result file exists is skipped) and each writing its
results atomically with a ``manifest.json``:

1. ``train``: copy and denoise for every model and T; the rho ablation (RelRNN and
   RelLSTM on denoise at rho in {3, 8, 18, 25}); sequential and permuted digits. The
   converged plan adds the :data:`BASELINES` (SAB, a causal Transformer) on copy and
   denoise, seed 0; ``--budget`` caps the updates where a machine cannot give the
   plan's (a run stopped by it says so and is trained further by a later call).
2. ``transfer``: copy models trained at T evaluated at 2x, 5x, 10x T and up to 5000.
3. ``gradients``: ||dL/dh_t|| over t (loss on the answer steps) at the start and end of
   training for every model, and for the rho ablation.
4. ``cost``: time per update and peak memory against T for every model (and, in
   their own rounds with two references, the baselines: converged plan).

Every stage runs on ``--device``; ``--data-dir`` and ``--runs-dir`` (or ``RSA_DATA_DIR``,
``RSA_RUNS_DIR``) move ``data/`` and ``runs/``; ``--executor slurm`` submits the plan to
a SLURM cluster and ``--dry-run`` estimates its cost (:mod:`rsa.experiments.cluster`;
the book's *Using rsa*, Running the full plan on a cluster).
"""

from rsa.experiments.cli import main  # noqa: F401
from rsa.experiments.cost import BASELINE_COST_REFS, BASELINE_COST_TS  # noqa: F401
from rsa.experiments.gradients import NO_STATES, grad_rows  # noqa: F401
from rsa.experiments.plan import (  # noqa: F401
    ALTERNATIVES,
    BASELINES,
    PLANS,
    STAGES,
    UNFUSED,
    Plan,
    converged_runs,
    models_in,
    plan_runs,
    run_name,
    select_runs,
    spec_name,
    train_runs,
)
from rsa.experiments.report import plan_status  # noqa: F401
from rsa.experiments.stages import check_device, reproduce, resolve_device, set_deterministic  # noqa: F401
from rsa.experiments.store import (  # noqa: F401
    EXPLOSION_FACTOR,
    RESULT_FILES,
    exploded_at,
    is_done,
    load_stored_runs,
    run_states,
    runs_table,
    write_stage,
)
from rsa.experiments.train_stage import stage_train  # noqa: F401
from rsa.experiments.transfer import (  # noqa: F401
    GRAD_SEED_OFFSET,
    MEMRNN_TRANSFER_MAX,
    TRANSFER_AT_MAX,
    TRANSFER_BATCH,
    TRANSFER_BATCH_BEFORE,
    TRANSFER_BATCH_BY_MODEL,
    TRANSFER_FACTORS,
    TRANSFER_KEY,
    TRANSFER_MAX,
    TRANSFER_SEED,
    TRANSFER_STREAM_BEFORE,
    chance_bar,
    check_transfer_stream,
    keeps_bar,
    point_standard_error,
    transfer_batch,
    transfer_delays,
)
