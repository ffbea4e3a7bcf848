"""Shared pieces of the sequential models: argument checks, positions, the tied output head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_RESERVED = 2  # ids 0 = [PAD] and 1 = [MASK] are never recommended


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_dropout(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")


def check_transformer(d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout: float) -> None:
    """The shape and dropout of a Transformer encoder stack."""
    check_positive("n_heads", n_heads)
    check_positive("n_layers", n_layers)
    check_positive("d_ff", d_ff)
    check_dropout(dropout)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")


def check_vocab(vocab_size: int, pad_index: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= N_RESERVED:
        raise ValueError(
            f"vocab_size must be an integer > {N_RESERVED} (ids 0 and 1 are reserved), got {vocab_size!r}"
        )
    if not 0 <= pad_index < N_RESERVED:
        raise ValueError(f"pad_index must be a reserved id (0 or 1), got {pad_index!r}")


def positions_from_first_real(real: Tensor) -> Tensor:
    """``[B, L]`` position of each play counted from the row's first real play (padding -> 0).

    Counting from the first real play (not from column 0) makes the outputs at real
    positions independent of how much left padding a row has.
    """
    return (real.long().cumsum(dim=1) - 1).clamp(min=0)


def carry_forward(states: Tensor, plays: Tensor) -> Tensor:
    """``[B, L, d]``: at column ``i`` the ``states`` row at the last ``plays`` column ``<= i``
    (zeros where there is none), so a column that was not read holds the state after the
    last play that was."""
    columns = torch.arange(plays.shape[1], device=plays.device)
    last = torch.where(plays, columns, -1).cummax(dim=1).values  # the last play column <= i
    filled = states.gather(1, last.clamp(min=0)[..., None].expand(-1, -1, states.shape[-1]))
    return filled * (last >= 0)[..., None]


class SequentialModel(nn.Module):
    """Base class: tied item embeddings, the Linear+GELU output head and the common interface.

    Subclasses implement ``encode(items) -> hidden[B, L, d]``.
    """

    def __init__(self, vocab_size: int, max_len: int, d_model: int, pad_index: int, skip_inputs: bool = False) -> None:
        super().__init__()
        check_vocab(vocab_size, pad_index)
        check_positive("max_len", max_len)
        check_positive("d_model", d_model)
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.d_model = d_model
        self.pad_index = pad_index
        self.item_embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_index)
        self.head = nn.Linear(d_model, d_model)
        # Unit-norm item vectors on average. The table is also the output layer: BERT's 0.02
        # makes every initial logit ~0 and SASRec sat on a popularity plateau for several
        # epochs on the synthetic data before learning tastes.
        nn.init.normal_(self.item_embedding.weight, std=d_model**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[pad_index].zero_()
        # skip-aware inputs: a learned vector for "kept" (0) and "skipped" (1) added to each input play
        self.skip_embedding = nn.Embedding(2, d_model) if skip_inputs else None
        if self.skip_embedding is not None:
            nn.init.normal_(self.skip_embedding.weight, std=d_model**-0.5)

    @property
    def item_weight(self) -> Tensor:
        """``[V, d]`` item embedding table, shared by the input and the output layer."""
        return self.item_embedding.weight

    def check_items(self, items: Tensor) -> None:
        if items.dim() != 2:
            raise ValueError(f"items must be a [B, L] tensor, got shape {tuple(items.shape)}")
        if items.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"items must be int64 or int32 ids, got {items.dtype}")
        if items.shape[1] > self.max_len:
            raise ValueError(
                f"sequence length {items.shape[1]} exceeds max_len={self.max_len} of the model"
            )

    def embed(self, items: Tensor) -> Tensor:
        """``[B, L, d]`` item embeddings (no position, no dropout): the InfoNCE candidates."""
        return self.item_embedding(items)

    def input_embedding(self, items: Tensor, skips: Tensor | None) -> Tensor:
        """``[B, L, d]`` embedding of the input plays: the item's, plus its skip flag's when the
        model has skip-aware inputs (``skips`` None = every play kept)."""
        x = self.item_embedding(items)
        if self.skip_embedding is not None:
            flags = torch.zeros_like(items) if skips is None else skips.long() * (items != self.pad_index)
            x = x + self.skip_embedding(flags)
        return x

    def has_context(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, L]`` bool: whether the state at a column reads any play (padding: no); a
        target after a column without context is not trained on."""
        return items != self.pad_index

    def encode(self, items: Tensor, skips: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, L, d]`` query at every position (``project(encode(items, skips))``)."""
        return self.project(self.encode(items, skips))

    def project(self, hidden: Tensor) -> Tensor:
        """Output head ``GELU(Linear(hidden))``; scores are ``project(h) @ item_weight.T``."""
        return F.gelu(self.head(hidden))

    def last_real_index(self, items: Tensor) -> Tensor:
        """``[B]`` column of each row's last real play (0 for an all-padding row)."""
        columns = torch.arange(items.shape[1], device=items.device)
        return torch.where(items != self.pad_index, columns, 0).amax(dim=1)

    def next_query(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, d]`` query for the item after each row's last play (the query at that play);
        ``skips`` ``[B, L]`` flags the input plays that were skipped (read by skip-aware models)."""
        hidden = self.encode(items, skips)
        last = self.last_real_index(items)
        return self.project(hidden[torch.arange(items.shape[0], device=items.device), last])

    def score_all(self, query: Tensor) -> Tensor:
        """``[B, V]`` scores of every item; the reserved ids 0 and 1 get ``-inf``."""
        scores = query @ self.item_weight.T
        scores[:, :N_RESERVED] = float("-inf")
        return scores
