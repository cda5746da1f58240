"""rsa: relevancy-screened self-attentive recurrent networks.

The one implementation behind the book (``book/``): models (:mod:`rsa.models`), the
screened memory (:mod:`rsa.memory`), tasks, training, measurement and theory.
"""

from rsa.models import LSTM, RNN, MemRNN, RelLSTM, RelRNN, Trace

__all__ = ["RNN", "LSTM", "MemRNN", "RelRNN", "RelLSTM", "Trace"]
__version__ = "0.1.0"
