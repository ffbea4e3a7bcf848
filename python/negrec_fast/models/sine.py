"""SINE (Pan et al., RecSys 2023): sub-interests of a SASRec encoding of the kept plays,
fused adaptively into the user vector that scores items.

- The encoder is SASRec over each session's *kept* plays only (``read_skipped=False``: skipped
  plays are masked out of the input, not flagged).
- ``K`` interest embeddings ``e_k`` turn the hidden state ``h`` into sub-interests
  ``h_k = h + sigmoid(h * e_k) * h``.
- Adaptive fusion, as published: weights ``w_k = softmax_k(W [h_k; v_i] + b)`` for candidate
  item ``v_i`` and user vector ``u_i = sum_k w_k h_k``, score ``u_i . v_i``. ``W [h_k; v_i] + b
  = w_h . h_k + w_v . v_i + b`` and the last two terms are the same for every ``k``: the
  softmax over ``k`` cancels them, so the weights, and ``u``, are the same for every
  candidate. Only ``w_h`` is a parameter here (``fusion``); scores are ``u @ item_weight.T``,
  so full-catalogue ranking is one matrix product (``tests/test_sine.py`` checks this against a
  loop over candidates of the published formula with its item-side weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from negrec_fast.models.sasrec import SASRec


class SINE(SASRec):
    """SASRec over the kept plays with ``n_interests`` sub-interests and adaptive fusion.

    ``SINE(vocab_size, max_len=20, d_model=128, n_heads=8, n_layers=2, d_ff=128, dropout=0.2,
    norm_first=False, pad_index=0, n_interests=2)``. ``project(hidden)`` is the fused user
    vector (it replaces the Linear+GELU head); ``encode(items, skips)`` reads the kept plays
    of each row (a skipped column holds the state after the last kept play before it).
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int = 20,
        d_model: int = 128,
        n_heads: int = 8,
        n_layers: int = 2,
        d_ff: int = 128,
        dropout: float = 0.2,
        norm_first: bool = False,
        pad_index: int = 0,
        skip_inputs: bool = False,
        n_interests: int = 2,
    ) -> None:
        if skip_inputs:
            raise ValueError("SINE reads the kept plays only: skip_inputs does not apply")
        if isinstance(n_interests, bool) or not isinstance(n_interests, int) or n_interests < 2:
            raise ValueError(f"n_interests must be an integer >= 2, got {n_interests!r}")
        # the SASRec encoder reads the kept plays only (read_skipped=False): skipped plays are
        # passive negatives of the loss, never part of the user's interests
        super().__init__(vocab_size, max_len, d_model, n_heads, n_layers, d_ff, dropout, norm_first, pad_index,
                         read_skipped=False)
        self.head = None  # the interest fusion is the output head
        self.interests = nn.Parameter(torch.randn(n_interests, d_model) * d_model**-0.5)
        self.fusion = nn.Linear(d_model, 1, bias=False)

    def sub_interests(self, hidden: Tensor) -> Tensor:
        """``[..., K, d]`` sub-interests ``h_k = h + sigmoid(h * e_k) * h`` of ``hidden [..., d]``."""
        h = hidden[..., None, :]
        return h + torch.sigmoid(h * self.interests) * h

    def fusion_weights(self, sub: Tensor) -> Tensor:
        """``[..., K]`` adaptive fusion weights of sub-interests ``[..., K, d]``."""
        return torch.softmax(self.fusion(sub)[..., 0], dim=-1)

    def project(self, hidden: Tensor) -> Tensor:
        """``[..., d]`` user vector ``sum_k w_k h_k``; scores are ``project(h) @ item_weight.T``."""
        sub = self.sub_interests(hidden)
        return (self.fusion_weights(sub)[..., None] * sub).sum(dim=-2)
