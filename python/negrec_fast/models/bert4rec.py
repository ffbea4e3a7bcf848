"""BERT4Rec (Sun et al. 2019): bidirectional Transformer trained by masked-item prediction."""

from __future__ import annotations

import torch
from torch import Tensor

from negrec_fast.models.base import N_RESERVED
from negrec_fast.models.transformer import TransformerModel


class BERT4Rec(TransformerModel):
    """Bidirectional Transformer; id ``mask_index`` (1) is the ``[MASK]`` token.

    Same options as :class:`~negrec_fast.models.SASRec` plus ``mask_index``. Training feeds
    ``mask_items(x)`` and predicts the original items at the masked positions.
    """

    causal = False

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
        mask_index: int = 1,
        skip_inputs: bool = False,
        ffn_inner_dropout: bool = True,
        read_skipped: bool = True,
    ) -> None:
        super().__init__(
            vocab_size, max_len, d_model, n_heads, n_layers, d_ff, dropout, norm_first, pad_index, skip_inputs,
            ffn_inner_dropout, read_skipped,
        )
        if not 0 <= mask_index < N_RESERVED or mask_index == self.pad_index:
            raise ValueError(
                f"mask_index must be the reserved id that is not pad_index={self.pad_index}, "
                f"got {mask_index!r}"
            )
        self.mask_index = mask_index

    def mask_items(
        self,
        items: Tensor,
        mask_prob: float,
        generator: torch.Generator | None = None,
        *,
        last_prob: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Replace random real plays by ``[MASK]``; return ``(masked_items, targets)``.

        Each real play is masked independently with probability ``mask_prob``; the LAST real
        play of a row with probability ``last_prob`` (default ``mask_prob``), which trains
        the next-item query that :meth:`next_query` reads. A row with real plays in which
        the draw masked nothing gets its last real play masked, so every such row has a
        target. ``targets`` holds the original id at masked positions and ``pad_index``
        elsewhere. Draws come from ``generator`` (on its own device) for reproducibility.
        """
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob!r}")
        last_prob = mask_prob if last_prob is None else last_prob
        if not 0.0 <= last_prob <= 1.0:
            raise ValueError(f"last_prob must be in [0, 1], got {last_prob!r}")
        self.check_items(items)
        device = generator.device if generator is not None else items.device
        b, length = items.shape
        draws = torch.rand(b, length + 1, generator=generator, device=device).to(items.device)
        real = items != self.pad_index
        has_real = real.any(dim=1)
        last = self.last_real_index(items)
        is_last = torch.zeros_like(real).scatter_(1, last[:, None], True) & real
        masked = real & ~is_last & (draws[:, :length] < mask_prob)
        masked |= is_last & (draws[:, length:] < last_prob)
        masked |= is_last & (has_real & ~masked.any(dim=1))[:, None]
        targets = torch.where(masked, items, self.pad_index)
        return torch.where(masked, self.mask_index, items), targets

    def append_mask(self, items: Tensor, skips: Tensor | None = None):
        """Put ``[MASK]`` right after each row's last play; return ``(items, mask_column)``, or
        ``(items, mask_column, skips)`` when ``skips`` flags are given (they follow their plays;
        the mask is flagged kept).

        Shorter than ``max_len``: a padding column is appended first, so nothing is lost.
        Otherwise a row whose last column is a real play is shifted left (its first play is
        dropped). LEFT-padded rows thus always get the mask in the last column.
        """
        columns = [items] if skips is None else [items, skips.to(items.dtype)]
        fills = (self.pad_index, 0)  # padding id for items, "kept" for flags
        if items.shape[1] < self.max_len:
            columns = [torch.cat([c, torch.full_like(c[:, :1], f)], dim=1) for c, f in zip(columns, fills)]
        items = columns[0]
        length = items.shape[1]
        real = items != self.pad_index
        last = torch.where(real.any(dim=1), self.last_real_index(items), -1)
        full = last == length - 1
        column = torch.where(full, length - 1, last + 1)
        out = []
        for c, f in zip(columns, fills):
            shifted = torch.cat([c[:, 1:], torch.full_like(c[:, :1], f)], dim=1)
            out.append(torch.where(full[:, None], shifted, c))
        items = out[0].scatter(1, column[:, None], self.mask_index)
        if skips is None:
            return items, column
        return items, column, out[1].scatter(1, column[:, None], 0).bool()

    def next_query(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, d]`` query read at a ``[MASK]`` appended after each row's last play (flagged kept)."""
        self.check_items(items)
        if skips is None:
            with_mask, column = self.append_mask(items)
        else:
            with_mask, column, skips = self.append_mask(items, skips)
        return self.project(self.encode(with_mask, skips, at=column))
