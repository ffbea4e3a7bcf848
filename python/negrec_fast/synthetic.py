"""Synthetic MSSD-format logs with planted structure (the default dataset of `negrec-fast train`).

Items are split into `n_tastes` tastes (item i has taste ``i % n_tastes``), Zipf-popular
within each; each session has a taste and each play is on-taste with probability
`on_taste_prob`, else an item of another taste. Off-taste plays are skipped with
probability `skip_prob_off`, on-taste ones with `skip_prob_on`, so skips tell what the
listener does not want next. ``skip_2`` is the skip flag, ``skip_1 ⊆ skip_2 ⊆ skip_3`` and
``not_skipped = not skip_3``; the other columns hold plausible values.

With ``chart_exponent > 0`` off-taste plays come from one global heavy-headed "chart" law
instead (charts, autoplay): the most played tracks are then mostly skipped ones, the pattern
where a model that ignores skips ranks what listeners skip first. A share
``chart_keep_share`` of sessions keeps chart plays as often as on-taste ones, so a session's
own skips tell whether charts suit it.

With ``dislike_share > 0`` each session also dislikes that share of its taste's items (a latent
subset per session): their plays are skipped like unwanted off-taste plays, so within a taste
skips carry item-level signal (an earlier skip of an item says the session will not keep it),
which no taste-level model can use. The output is
byte-identical for the same arguments whatever the thread count (``NEGREC_NUM_THREADS``
or `n_threads` sets it; default all cores).
"""

from __future__ import annotations

import os
from pathlib import Path

from negrec_fast import _core

__all__ = ["generate_mssd", "planted_tastes"]


def generate_mssd(
    path: str | os.PathLike[str],
    n_sessions: int = 20_000,
    n_items: int = 5_000,
    seed: int = 0,
    *,
    n_tastes: int = 20,
    on_taste_prob: float = 0.8,
    skip_prob_on: float = 0.15,
    skip_prob_off: float = 0.8,
    min_length: int = 10,
    max_length: int = 20,
    zipf_exponent: float = 1.0,
    chart_exponent: float = 0.0,
    chart_keep_share: float = 0.0,
    dislike_share: float = 0.0,
    n_threads: int | None = None,
) -> Path:
    """Writes the log as CSV to `path` (gzip when it ends in ``.gz``) and returns the path.

    Session lengths are uniform in ``[min_length, max_length]``; the expected skip rate is
    ``on_taste_prob * skip_prob_on + (1 - on_taste_prob) * skip_prob_off``.
    """
    path = Path(path)
    _core.generate_mssd(
        str(path),
        n_sessions=n_sessions,
        n_items=n_items,
        n_tastes=n_tastes,
        on_taste_prob=on_taste_prob,
        skip_prob_on=skip_prob_on,
        skip_prob_off=skip_prob_off,
        min_length=min_length,
        max_length=max_length,
        zipf_exponent=zipf_exponent,
        chart_exponent=chart_exponent,
        chart_keep_share=chart_keep_share,
        dislike_share=dislike_share,
        seed=seed,
        n_threads=n_threads or 0,
    )
    return path


def planted_tastes(n_items: int = 5_000, n_tastes: int = 20) -> dict[str, int]:
    """Track id -> taste of the generator's items (the same for every seed)."""
    return {track: i % n_tastes for i, track in enumerate(_core.synth_track_ids(n_items))}
