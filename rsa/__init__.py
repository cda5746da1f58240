"""rsa: relevancy-screened self-attentive recurrent networks.

The one implementation behind the book (``book/``). Modules:

- :mod:`rsa.models`, :mod:`rsa.memory`: RNN, LSTM, MemRNN, RelRNN, RelLSTM and the
  screened memory S ∪ R (chapter *Relevancy screening*); :mod:`rsa.fused`,
  :mod:`rsa.fused_screened`, :mod:`rsa.fused_rellstm`: their fused sequence functions;
- :mod:`rsa.reference`: the specification, a slow per-example reference of every model
  that the fast code is tested against (shown first by *Relevancy screening*);
- :mod:`rsa.sab`, :mod:`rsa.transformer`: the baselines SAB (sparse attentive
  backtracking, as released) and a causal Transformer, registered outside
  :data:`MODELS` (the paper's five) and trained by the converged plan as its baselines,
  :data:`rsa.experiments.BASELINES` (chapter *Sparse attentive backtracking*);
- :mod:`rsa.tasks`, :mod:`rsa.heads`, :mod:`rsa.train`: tasks, read-out + loss,
  training with checkpoint/resume (``python -m rsa train``); :mod:`rsa.population`:
  several seeds of one configuration trained as one batched computation
  (``python -m rsa train --seeds ...``);
- :mod:`rsa.measure`, :mod:`rsa.bench`: gradient norms, time and memory
  (``python -m rsa bench``);
- :mod:`rsa.theory`: path expansion, the mean-square-gradient DP and the bounds
  (theory chapters);
- :mod:`rsa.experiments`: ``python -m rsa reproduce`` (regenerates ``data/``);
- :mod:`rsa.plotting`, :mod:`rsa.book`: the figures' style and chapter helpers.

Docstrings cite the book's pages by title: *The paper* §2 is section 2 of the page *The
paper* (``book/paper.md``), what the paper states and what is known of it.
"""

from rsa.heads import MODELS, TaskModel, build_model, build_task_model
from rsa.models import LSTM, RNN, MemRNN, RelLSTM, RelRNN, Trace
from rsa.sab import SAB
from rsa.train import TrainConfig
from rsa.transformer import Transformer

__all__ = ["RNN", "LSTM", "MemRNN", "RelRNN", "RelLSTM", "SAB", "Transformer", "Trace",
           "MODELS", "TaskModel", "build_model", "build_task_model", "TrainConfig"]
__version__ = "0.1.0"
