"""rsa: relevancy-screened self-attentive recurrent networks.

The one implementation behind the book (``book/``), laid out by concept. What a reader
reads first:

- :mod:`rsa.models`: the recurrent cells RNN, LSTM, MemRNN, RelRNN, RelLSTM
  (:mod:`~rsa.models.cells`) and the screened memory S ∪ R (:mod:`~rsa.models.memory`),
  chapter *Relevancy screening*; the per-example reference every fast path is tested
  against (:mod:`~rsa.models.reference`, shown first by that chapter); the baselines SAB
  (as released) and a causal Transformer (:mod:`~rsa.models.sab`,
  :mod:`~rsa.models.transformer`); the model table every other module reads
  (:mod:`~rsa.models.registry`) and the read-out heads (:mod:`~rsa.models.heads`);
  the fused and population kernels of the models, a layer a reader can skip
  (:mod:`rsa.models.kernels`);
- :mod:`rsa.tasks`: copy, denoise, sequential digits and MNIST, generated or shipped;
- :mod:`rsa.theory`: the path expansion, the mean-square-gradient DP and the bounds
  (theory chapters).

The machinery:

- :mod:`rsa.train`: one training loop with checkpoint/resume (``python -m rsa train``),
  populations of seeds trained as one computation (:mod:`rsa.train.population`);
- :mod:`rsa.experiments`: the plans, the stored results and the stages of
  ``python -m rsa reproduce``, the campaign (the runs that decide a verdict), SLURM, the
  benchmarks (``python -m rsa bench``);
- :mod:`rsa.io`: atomic writes, manifests with provenance, loading stored runs;
- :mod:`rsa.plotting`, :mod:`rsa.book`: the figures and the chapters' helpers.

Docstrings cite the book's pages by title: *The paper* §2 is section 2 of the page *The
paper* (``book/paper.md``), what the paper states and what is known of it.
"""

from rsa.models import LSTM, RNN, MemRNN, RelLSTM, RelRNN, Trace
from rsa.models.heads import MODELS, TaskModel, build_model, build_task_model
from rsa.models.sab import SAB
from rsa.models.transformer import Transformer
from rsa.train import TrainConfig

__all__ = ["RNN", "LSTM", "MemRNN", "RelRNN", "RelLSTM", "SAB", "Transformer", "Trace",
           "MODELS", "TaskModel", "build_model", "build_task_model", "TrainConfig"]
__version__ = "0.1.0"
