"""Transformer encoder shared by SASRec (causal) and BERT4Rec (bidirectional).

Seshadri & Knees (2023/2024) setup by default: 2 layers, d=128, 8 heads, FFN 128, dropout
0.2, learned positional embeddings. Padding keys are masked; a padding position attends
only to itself (so no attention row is empty and nothing is NaN) and its output is zeroed.

``read_skipped=False`` makes the encoder read the kept plays only: skipped keys are masked
like padding, positions count kept plays, and a skipped column carries the state of the last
kept play before it. The state at a kept play is then the one the model would compute on the
session with its skipped plays removed; the skipped plays still enter the losses (skip
penalty, skip-InfoNCE negatives).
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


class TransformerBlock(nn.Module):
    """Self-attention + GELU feed-forward, post-norm (BERT) or pre-norm."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, norm_first: bool,
                 ffn_inner_dropout: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm_first = norm_first
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ffn = nn.Sequential(
            # dropout after the activation too: torch's TransformerEncoderLayer (the papers'
            # code) has it, BERT's and RecBole's SASRec block do not (ffn_inner_dropout=False)
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout if ffn_inner_dropout else 0.0),
            nn.Linear(d_ff, d_model),
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def attention(self, x: Tensor, allowed: Tensor, source: Tensor | None = None) -> Tensor:
        """Attention of the queries ``x [B, Lq, d]`` over the keys and values of ``source``
        (``x`` itself when None) under ``allowed [B, 1, Lq, Lk]``."""
        b, length, d = x.shape
        shape = (self.n_heads, d // self.n_heads)
        if source is None:
            q, k, v = self.qkv(x).view(b, length, 3, *shape).unbind(2)
        else:  # queries of a few columns only: project them apart from the keys and values
            weight, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x, weight[:d], bias[:d]).view(b, length, *shape)
            k, v = F.linear(source, weight[d:], bias[d:]).view(b, source.shape[1], 2, *shape).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(out.transpose(1, 2).reshape(b, length, d))

    def forward(self, x: Tensor, allowed: Tensor, at: Tensor | None = None) -> Tensor:
        """``[B, L, d]``; with ``at [B]`` only that column of each row, ``[B, 1, d]`` (its queries
        read every column's keys and values: the same values, a fraction of the work)."""
        if at is None:
            if self.norm_first:
                x = x + self.drop(self.attention(self.norm1(x), allowed))
                return x + self.drop(self.ffn(self.norm2(x)))
            x = self.norm1(x + self.drop(self.attention(x, allowed)))
            return self.norm2(x + self.drop(self.ffn(x)))
        rows = torch.arange(x.shape[0], device=x.device)
        h, mask = x[rows, at][:, None], allowed[rows, :, at][:, :, None]
        if self.norm_first:
            h = h + self.drop(self.attention(self.norm1(h), mask, self.norm1(x)))
            return h + self.drop(self.ffn(self.norm2(h)))
        h = self.norm1(h + self.drop(self.attention(h, mask, x)))
        return self.norm2(h + self.drop(self.ffn(h)))


class TransformerModel(SequentialModel):
    """Item + learned position embeddings, a stack of blocks, tied Linear+GELU head."""

    causal: bool = False

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
        ffn_inner_dropout: bool = True,
        read_skipped: bool = True,
    ) -> None:
        if skip_inputs and not read_skipped:
            raise ValueError("skip_inputs flags the skipped input plays, which read_skipped=False does not read")
        super().__init__(vocab_size, max_len, d_model, pad_index, skip_inputs)
        self.read_skipped = read_skipped
        check_transformer(d_model, n_heads, n_layers, d_ff, dropout)
        self.position_embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.embedding_norm = nn.LayerNorm(d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout, norm_first, ffn_inner_dropout) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def attention_mask(self, real: Tensor) -> Tensor:
        """``[B, 1, L, L]`` bool, True where query ``i`` may attend to key ``j``."""
        length = real.shape[1]
        allowed = real[:, None, None, :].expand(-1, 1, length, -1)
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
        return allowed | torch.eye(length, dtype=torch.bool, device=real.device)

    def read_plays(self, items: Tensor, skips: Tensor | None) -> Tensor:
        """``[B, L]`` bool: the plays the encoder reads (not padding; kept only unless ``read_skipped``)."""
        real = items != self.pad_index
        if self.read_skipped or skips is None:
            return real
        return real & ~skips.bool()

    def has_context(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, L]`` bool: a play the encoder reads lies at or before the column."""
        return (self.read_plays(items, skips).long().cumsum(dim=1) > 0) & (items != self.pad_index)

    def encode(self, items: Tensor, skips: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """``[B, L, d]`` hidden state at every position (zeros at padding; module docstring
        for ``read_skipped=False``); with ``at [B]``, only ``[B, d]``, the state at that column of
        each row (the last block computes that column alone)."""
        self.check_items(items)
        read = self.read_plays(items, skips)
        if at is not None and not self.read_skipped:  # the state of the last kept play <= at
            columns = torch.arange(items.shape[1], device=items.device)
            at = torch.where(read & (columns <= at[:, None]), columns, -1).amax(dim=1).clamp(min=0)
        x = self.input_embedding(items, skips) + self.position_embedding(positions_from_first_real(read))
        x = self.embedding_dropout(self.embedding_norm(x))
        allowed = self.attention_mask(read)
        for block in self.blocks[:-1]:
            x = block(x, allowed)
        x = self.blocks[-1](x, allowed, at)
        if at is not None:
            rows = torch.arange(items.shape[0], device=items.device)
            return self.final_norm(x[:, 0]) * read[rows, at][:, None]
        hidden = self.final_norm(x) * read[..., None]
        if self.read_skipped:
            return hidden
        return carry_forward(hidden, read)

    def next_query(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, d]`` query for the item after each row's last play (the last block computes
        that column only)."""
        return self.project(self.encode(items, skips, at=self.last_real_index(items)))
