"""Compiled and fused sequence kernels of the models (chapter *Relevancy screening*,
section on the fused forward): :mod:`~rsa.models.kernels.fused` (shared pieces and the MemRNN),
:mod:`~rsa.models.kernels.screened` (RelRNN), :mod:`~rsa.models.kernels.rellstm` (RelLSTM).
"""
