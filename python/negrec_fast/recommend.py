"""Using a trained model: load a run folder and recommend next tracks for a session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from negrec_fast.config import Config
from negrec_fast.run_folder import load_run


@dataclass
class Recommendation:
    """Top-k original item ids with scores; ``unknown`` lists input ids not in the vocabulary."""

    items: list[str]
    scores: list[float]
    unknown: list[str] = field(default_factory=list)


class Recommender:
    """A trained model with its dataset's vocabulary."""

    def __init__(self, model: torch.nn.Module, dataset, config: Config, device: torch.device) -> None:
        self.model = model.eval()
        self.dataset = dataset
        self.config = config
        self.device = device

    @classmethod
    def load(cls, run_dir: str | Path, *, checkpoint: str = "best", device: str = "cpu") -> Recommender:
        """Load ``RUN_DIR/{checkpoint}.pt`` (``weights_only``) and the run's dataset vocabulary."""
        run = load_run(run_dir, checkpoint=checkpoint, device=device)
        return cls(run.model, run.dataset, run.config, run.device)

    @torch.no_grad()
    def recommend(
        self,
        session: Sequence[str],
        *,
        skips: Sequence[bool] | None = None,
        skipped: Sequence[str] = (),
        k: int = 10,
        exclude_seen: bool = False,
    ) -> Recommendation:
        """Top-``k`` next tracks after ``session`` (original ids, in play order).

        Exclusions, each explicit: ``exclude_seen`` (default False, like ``eval.exclude_seen``)
        never recommends a track of the session; with the same flag, this ranking is the one
        evaluation scores (:func:`negrec_fast.evaluation.evaluate_model`). ``skipped`` names
        tracks (e.g. the session's skipped ones) never to recommend, whatever ``exclude_seen``;
        evaluation has no such list. Unknown ids are dropped from the input and reported in
        ``unknown``.

        ``skips``: one flag per play of ``session`` (True = skipped), what a skip-aware model
        (``model.skip_inputs``, ``model.read_skipped = false``) reads; without it, a play of a
        track listed in ``skipped`` counts as skipped.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if skips is not None and len(skips) != len(session):
            raise ValueError(f"skips must hold one flag per play: {len(skips)} flags for {len(session)} plays")
        ids, unknown = self.dataset.encode(list(session))
        ids = np.asarray(ids, dtype=np.int64)
        known = ids[ids >= 2]
        skipped_ids, unknown_skipped = self.dataset.encode(list(skipped))
        unknown = list(unknown) + [s for s in unknown_skipped if s not in unknown]
        max_len = self.config.data.max_len
        inputs = np.zeros((1, max_len), dtype=np.int64)
        flags = np.zeros((1, max_len), dtype=bool)
        if skips is not None:
            missing = set(unknown)
            play_flags = np.asarray([bool(f) for key, f in zip(session, skips) if key not in missing], dtype=bool)
        else:  # a play of a skipped track is a skipped play
            play_flags = np.isin(known, np.asarray(skipped_ids, dtype=np.int64))
        tail = known[-max_len:]
        if len(tail):
            inputs[0, max_len - len(tail):] = tail
            flags[0, max_len - len(tail):] = play_flags[-max_len:]
        x = torch.from_numpy(inputs).to(self.device)
        scores = self.model.score_all(self.model.next_query(x, torch.from_numpy(flags).to(self.device)))[0].float()
        banned = [int(i) for i in np.asarray(skipped_ids) if i >= 2]
        if exclude_seen:
            banned.extend(int(i) for i in known)
        if banned:
            scores[torch.tensor(banned, device=scores.device)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        items = self.dataset.decode(top.indices.cpu().numpy())
        return Recommendation(items=list(items), scores=top.values.cpu().tolist(), unknown=unknown)
