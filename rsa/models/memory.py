"""The screened memory M = S ∪ R of relevancy screening, batched.

Derived in the chapter *Relevancy screening* (``book/relevancy_screening.ipynb``);
the rules are those of *The paper* §2:

- S, the short-term buffer, holds the ``nu`` most recent states h_{t-nu}, ..., h_{t-1}.
- A state's relevance score is the sum of the (detached) attention weights it received
  while it sat in S ({eq}`eq-relevance-score` on the book's *Notation* page). Scores
  are frozen when the state enters R.
- After h_t is computed, if S already holds ``nu`` states, the oldest, h_{t-nu}, leaves
  S. If R holds fewer than ``rho`` states it joins R; otherwise it replaces the state of
  lowest score in R (the first such slot on ties) only if its score is *strictly*
  greater.

Everything is batched: the fill levels of S and R do not depend on the data (S fills
one state per step, R one state per departure until it is full), so they are shared by
the batch and only the *replacement* decision is per example, done with ``torch.where``
on whole tensors. Per-step work is O((nu + rho) n B), independent of T. Each state's key
``W_k h`` is computed once, when the state is created, and travels with it.

With ``nu=None`` the buffer is unbounded and never evicts: that is full attention
(``MemRNN``), whose memory grows by one state per step.
"""

from __future__ import annotations

import torch

__all__ = ["ScreenedMemory"]


class ScreenedMemory:
    """Per-sequence state of the memory S ∪ R for a batch of B sequences.

    Each state is stored together with its key as one row ``[h_j | W_k h_j]`` of
    width 2n, so that moving a state (into S, from S to R) is one tensor operation.
    Tensors kept (B batch, n hidden size, nS = |S|, nR = |R|):

    - ``S`` (B, nS, 2n): states and keys in the buffer, oldest first;
      ``S_score`` (B, nS): relevance scores accumulated so far (no gradient).
    - ``R`` (B, nR, 2n), ``R_score`` (B, nR), ``R_index`` (B, nR): the relevant set,
      slot by slot, with frozen scores and 0-based time indices.

    ``S`` and ``R`` keep their autograd graph: gradients flow back through the
    attention skip connections to old states (the point of the mechanism). Scores and
    the selection never carry gradient.
    """

    def __init__(self, nu: int | None, rho: int, batch: int, hidden: int,
                 device: torch.device, dtype: torch.dtype):
        if nu is not None and nu < 1:
            raise ValueError(f"nu must be an int >= 1 (or None for unbounded), got {nu!r}")
        if rho < 0:
            raise ValueError(f"rho must be an int >= 0, got {rho!r}")
        self.nu, self.rho, self.n = nu, rho, hidden
        self.S = self.R = torch.zeros(batch, 0, 2 * hidden, device=device, dtype=dtype)
        self.S_score = torch.zeros(batch, 0, device=device, dtype=dtype)
        self.R_score = torch.zeros(batch, 0, device=device, dtype=dtype)
        self.R_index = torch.zeros(batch, 0, device=device, dtype=torch.long)
        self.S_start = 0  # time index of the oldest state in S (S is contiguous in time)
        self._slots = torch.arange(rho, device=device).expand(batch, -1)

    # -- reading -------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of states in memory, |S| + |R| (shared by the batch)."""
        return self.S.shape[1] + self.R.shape[1]

    def memory(self) -> torch.Tensor:
        """All states with their keys, R slots first then S: (B, nR + nS, 2n).
        Values are ``[..., :n]`` (the h_j), keys ``[..., n:]`` (the W_k h_j)."""
        if self.R.shape[1] == 0:
            return self.S
        return torch.cat([self.R, self.S], dim=1)

    @property
    def R_h(self) -> torch.Tensor:
        """The states held in R: (B, nR, n)."""
        return self.R[..., :self.n]

    def S_index(self) -> torch.Tensor:
        """Time indices of the states in S, oldest first: (nS,) (shared by the batch)."""
        nS = self.S.shape[1]
        return torch.arange(self.S_start, self.S_start + nS, device=self.S.device)

    # -- writing -------------------------------------------------------------------
    @torch.no_grad()
    def add_attention(self, alpha: torch.Tensor) -> None:
        """Credit the attention weights ``alpha`` (B, nR + nS) to the states in S.

        States in R do not accumulate: their scores are frozen.
        """
        nR = self.R.shape[1]
        self.S_score = self.S_score + alpha[:, nR:].detach()

    def push(self, h: torch.Tensor, k: torch.Tensor) -> None:
        """Append the new state h_t (B, n) with its key k_t = W_k h_t; evict if S is full."""
        hk = torch.cat([h, k], dim=1)[:, None]  # (B, 1, 2n)
        if self.nu is not None and self.S.shape[1] == self.nu:
            leaving = (self.S[:, 0], self.S_score[:, 0], self.S_start)
            self.S, self.S_score = self.S[:, 1:], self.S_score[:, 1:]
            self.S_start += 1
            self._consolidate(*leaving)
        self.S = torch.cat([self.S, hk], dim=1)
        self.S_score = torch.cat([self.S_score, self.S_score.new_zeros(h.shape[0], 1)], dim=1)

    def _consolidate(self, hk, score, index: int) -> None:
        """The state that left S enters R, or replaces R's least relevant state."""
        if self.rho == 0:
            return
        if self.R.shape[1] < self.rho:  # R not full yet: the same for every example
            self.R = torch.cat([self.R, hk[:, None]], dim=1)
            self.R_score = torch.cat([self.R_score, score[:, None]], dim=1)
            self.R_index = torch.cat(
                [self.R_index, self.R_index.new_full((hk.shape[0], 1), index)], dim=1)
            return
        with torch.no_grad():
            low = self.R_score.min(dim=1, keepdim=True).values  # (B, 1)
            # first slot holding the minimum (ties -> lowest slot)
            j = torch.where(self.R_score == low, self._slots, self.rho).min(dim=1).values
            replace = (self._slots == j[:, None]) & (score[:, None] > low)  # strict >
            if not replace.any():  # common once R holds relevant states: nothing to move
                return
            self.R_score = torch.where(replace, score[:, None], self.R_score)
            self.R_index = torch.where(replace, index, self.R_index)
        self.R = torch.where(replace[:, :, None], hk[:, None], self.R)

    # -- recording -----------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self, slots_R: int, slots_S: int):
        """(index, score, relevant) over a fixed slot layout [R slots | S slots].

        index (B, slots_R + slots_S) long with -1 for empty slots; score likewise (0 on
        empty); relevant (slots_R + slots_S,) bool marking the R slots.
        """
        B = self.S.shape[0]
        dev = self.S.device
        K = slots_R + slots_S
        index = torch.full((B, K), -1, dtype=torch.long, device=dev)
        score = torch.zeros(B, K, dtype=self.S_score.dtype, device=dev)
        nR, nS = self.R.shape[1], self.S.shape[1]
        index[:, :nR] = self.R_index
        score[:, :nR] = self.R_score
        index[:, slots_R:slots_R + nS] = self.S_index()
        score[:, slots_R:slots_R + nS] = self.S_score
        relevant = torch.zeros(K, dtype=torch.bool, device=dev)
        relevant[:slots_R] = True
        return index, score, relevant

    def scatter_alpha(self, alpha: torch.Tensor, slots_R: int, slots_S: int) -> torch.Tensor:
        """Place alpha (B, nR + nS) into the fixed slot layout (B, slots_R + slots_S)."""
        B = alpha.shape[0]
        out = alpha.new_zeros(B, slots_R + slots_S)
        nR, nS = self.R.shape[1], self.S.shape[1]
        out[:, :nR] = alpha[:, :nR]
        out[:, slots_R:slots_R + nS] = alpha[:, nR:]
        return out
