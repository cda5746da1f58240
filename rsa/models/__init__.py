"""The models: the recurrent cells (:mod:`~rsa.models.cells`), the screened memory
(:mod:`~rsa.models.memory`), the read-out heads and the model table
(:mod:`~rsa.models.heads`, :mod:`~rsa.models.registry`), the per-example reference every
fast path is tested against (:mod:`~rsa.models.reference`), and the baselines SAB and a
Transformer (:mod:`~rsa.models.sab`, :mod:`~rsa.models.transformer`).

Chapter *Relevancy screening* derives the cells and the memory.
"""

from rsa.models.cells import LSTM, RNN, MemRNN, ModReLU, RelLSTM, RelRNN, Trace, henaff_skew

__all__ = ["RNN", "LSTM", "MemRNN", "RelRNN", "RelLSTM", "Trace", "ModReLU", "henaff_skew"]
