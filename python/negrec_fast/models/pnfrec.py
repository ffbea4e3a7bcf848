"""PNFRec (Ivanova, Frolov & Vasilev, RecSys 2025, "Benefiting from Negative yet Informative
Feedback by Contrasting Opposing Sequential Patterns", arXiv:2508.14786): two causal
Transformer encoders, one over the kept (positive) plays and one over the skipped (negative)
plays, sharing the item embedding table; trained on positive CE + alpha * negative CE +
beta * a contrastive term (:mod:`negrec_fast.losses.pnfrec`).

What was read: the paper's abstract (arxiv.org/abs/2508.14786), a third-party summary of its
method (themoonlight.io review of the paper) and the authors' code, ``Veronika-Ivanova/pnfrec``
(``src/models.py`` ``SASRecPosNegContrastive``, ``src/modules.py`` ``SeqRecPosNegContrastive``,
``src/datasets.py``, ``runs/run_pnfrec.py``, ``runs/configs/SASRec_ml.yaml``, ``README.md``).
The full text of the paper was not available here; where the summary and the code disagree the
code decided, unless said otherwise below.

What they specify:

- The history is split into the positive sequence ``S_p`` and the negative sequence ``S_n``;
  each is read by its own unidirectional (SASRec) encoder: its own self-attention and
  feed-forward layers; one item embedding table for both.
- Positive CE: the positive encoder's output at each positive play predicts the next
  positive play (full softmax over the catalogue). Negative CE (weight alpha,
  ``neg_CE_coef``): the negative encoder's output predicts the next negative play, scored
  against the same item table.
- Contrastive term (weight beta, ``contrastive_coef``): for every positive play with a next
  positive play, with ``h`` the positive encoder's output there, ``e`` item embeddings,
  ``-log( exp(h.e_next) / (exp(h.e_next) + sum_k exp(h.e_k)) )`` where ``k`` runs over the
  user's negative plays (all of them, padding excluded); raw dot products (no temperature, no
  normalisation); the mean over the positive plays (those without negatives add 0).
- Inference reads the positive encoder only: the next item is scored from the kept plays;
  the negative encoder acts through training (the shared item table and the loss).
- Their ML-1M run: alpha 0.45, beta 0.25, 2 blocks, 1 head, hidden 231, dropout 0.1, lr 1e-3,
  batch 500, at most 50 plays per sequence.

Choices made here:

- Both encoders read the session window in place (``encode`` masks the other kind of play out
  instead of moving plays): each encoder attends only to its own kind of play at or before a
  column, and its positions count its own plays from the first (as after splitting the
  sequence). Each has its own position embeddings (the summary: "independently encoded with
  their own positional embeddings"; the code shares one table) and the project's block
  (GELU feed-forward, post-norm by default).
- ``encode(items, skips)`` returns ``[B, L, 2d]``: at column ``i``, the positive encoder's
  output at the last kept play at or before ``i`` and the negative encoder's at the last
  skipped play at or before ``i`` (zeros when there is none). The query for play ``i + 1``
  (``project``) therefore reads plays ``<= i`` only, kept and skipped; its positive half is a
  SASRec-layout encoder's output over the kept plays alone (``tests/test_pnfrec.py`` checks
  both halves against SASRec over the split-out plays), and a skipped play does not move it.
- ``project`` fuses the two halves (``fusion``) and applies the project's Linear+GELU head
  (their scores are the encoder output against the item table, without a head):

  - ``"none"`` (default, the paper): the query reads the positive half only.
  - ``"gate"`` (not in the paper): ``h+ + sigmoid(W_g [h+; h-] + b_g) * (W_n h-)``, so the
    skipped history also shapes the query at inference. ``W_n`` starts at zero: training
    starts from the paper's model and learns how much of the negative state to add.

  Both satisfy ``fuse([h; 0]) = h``: ``project([h-; 0])`` is the negative encoder's query
  (``head(h-)``), the one its CE term scores.
- The losses (:mod:`negrec_fast.objective`): the positive CE is the project's main loss
  (``loss.rec``, sampled softmax with logQ by default) on the kept targets; the negative CE is
  the same loss on each skipped play's next skipped play in the window; the contrastive term
  is the one above on the project's query (``negrec_fast.losses.pnfrec``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from negrec_fast.models.base import (
    SequentialModel,
    carry_forward,
    check_transformer,
    positions_from_first_real,
)
from negrec_fast.models.transformer import TransformerBlock

FUSIONS = ("none", "gate")


class CausalEncoder(nn.Module):
    """Position embeddings + causal Transformer blocks over the plays ``real`` of a row (the
    other columns are neither attended to nor read; their output is zero). Positions count
    the row's ``real`` plays from its first one, as SASRec's over the split-out sequence."""

    def __init__(self, max_len: int, d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout: float,
                 norm_first: bool) -> None:
        super().__init__()
        self.position_embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.embedding_norm = nn.LayerNorm(d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout, norm_first) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x: Tensor, real: Tensor) -> Tensor:
        """``[B, L, d]`` outputs for input embeddings ``x [B, L, d]`` and ``real [B, L]`` bool."""
        length = real.shape[1]
        x = self.embedding_dropout(self.embedding_norm(x + self.position_embedding(positions_from_first_real(real))))
        causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
        # a column that is not read attends to itself only (no empty attention row, no NaN)
        allowed = (real[:, None, None, :] & causal) | torch.eye(length, dtype=torch.bool, device=real.device)
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x) * real[..., None]


class PNFRec(SequentialModel):
    """Positive and negative causal encoders with a shared item table (module docstring).

    ``PNFRec(vocab_size, max_len=20, d_model=128, n_heads=8, n_layers=2, d_ff=128, dropout=0.2,
    norm_first=False, pad_index=0, fusion="none")``. ``encode(items, skips)`` is ``[B, L, 2d]``
    (positive half, negative half); ``project`` fuses it into the ``[.., d]`` query.
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
        fusion: str = "none",
    ) -> None:
        if skip_inputs:
            raise ValueError("PNFRec splits the plays into kept and skipped ones: skip_inputs does not apply")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(map(repr, FUSIONS))}, got {fusion!r}")
        super().__init__(vocab_size, max_len, d_model, pad_index)
        check_transformer(d_model, n_heads, n_layers, d_ff, dropout)
        self.fusion = fusion
        self.positive = CausalEncoder(max_len, d_model, n_heads, n_layers, d_ff, dropout, norm_first)
        self.negative = CausalEncoder(max_len, d_model, n_heads, n_layers, d_ff, dropout, norm_first)
        if fusion == "gate":
            self.gate = nn.Linear(2 * d_model, d_model)
            self.negative_proj = nn.Linear(d_model, d_model, bias=False)
            nn.init.zeros_(self.negative_proj.weight)  # starts as the paper's query (module docstring)

    def encode(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, L, 2d]``: at column ``i`` the positive encoder's state after the last kept play
        ``<= i`` and the negative encoder's after the last skipped play ``<= i`` (zeros where
        there is none); ``skips`` None = every play kept."""
        self.check_items(items)
        real = items != self.pad_index
        skipped = real & skips.bool() if skips is not None else torch.zeros_like(real)
        kept = real & ~skipped
        return torch.cat([self._states(self.positive, items, kept), self._states(self.negative, items, skipped)], -1)

    def _states(self, encoder: CausalEncoder, items: Tensor, plays: Tensor) -> Tensor:
        """``encoder`` over the ``plays`` of each row, its output carried forward to the columns after each."""
        return carry_forward(encoder(self.item_embedding(items.masked_fill(~plays, self.pad_index)), plays), plays)

    def fuse(self, hidden: Tensor) -> Tensor:
        """``[..., d]`` fused state of ``[..., 2d]`` (positive half, negative half)."""
        positive, negative = hidden.split(self.d_model, dim=-1)
        if self.fusion == "none":
            return positive
        return positive + torch.sigmoid(self.gate(hidden)) * self.negative_proj(negative)

    def project(self, hidden: Tensor) -> Tensor:
        """``[..., d]`` query ``GELU(Linear(fuse(hidden)))``; scores are ``project(h) @ item_weight.T``."""
        return F.gelu(self.head(self.fuse(hidden)))
