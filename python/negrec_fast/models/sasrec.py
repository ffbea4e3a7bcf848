"""SASRec (Kang & McAuley 2018): causal self-attention, next item at every position."""

from __future__ import annotations

from negrec_fast.models.transformer import TransformerModel


class SASRec(TransformerModel):
    """Causal Transformer over LEFT-padded ``[B, L]`` item ids.

    ``SASRec(vocab_size, max_len=20, d_model=128, n_heads=8, n_layers=2, d_ff=128,
    dropout=0.2, norm_first=False, pad_index=0)``. The output at position ``i`` depends only
    on plays ``<= i``; ``project(encode(x))[:, i]`` is the query for the item after ``x[:, i]``.
    """

    causal = True
