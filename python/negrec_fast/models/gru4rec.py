"""GRU4Rec (Hidasi et al. 2016): the classic recurrent session baseline."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from negrec_fast.models.base import SequentialModel, check_dropout, check_positive


class GRU4Rec(SequentialModel):
    """GRU over item embeddings with the tied Linear+GELU head.

    Padding is skipped (the real plays of each row are packed), so the state at a real play
    does not depend on how much padding the row has. ``max_len`` only bounds input length.
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int = 20,
        d_model: int = 128,
        n_layers: int = 1,
        dropout: float = 0.2,
        pad_index: int = 0,
        skip_inputs: bool = False,
    ) -> None:
        super().__init__(vocab_size, max_len, d_model, pad_index, skip_inputs)
        check_positive("n_layers", n_layers)
        check_dropout(dropout)
        self.embedding_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            d_model, d_model, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0
        )

    def encode(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, L, d]`` GRU state after each play (zeros at padding)."""
        self.check_items(items)
        b, length = items.shape
        real = items != self.pad_index
        # real plays first, in order, then padding; run the GRU on the packed real plays
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
        flags = None if skips is None else skips.gather(1, order)
        compact = self.embedding_dropout(self.input_embedding(items.gather(1, order), flags))
        lengths = real.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(compact, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=length)
        hidden = torch.zeros_like(out).scatter(1, order[..., None].expand(-1, -1, self.d_model), out)
        return hidden * real[..., None]
