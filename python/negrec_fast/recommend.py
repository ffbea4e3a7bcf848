"""Using a trained model: load a run folder and recommend next tracks for a session."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from negrec_fast.checkpoint import load_checkpoint
from negrec_fast.config import Config
from negrec_fast.errors import ConfigError, InputError


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
        from negrec_fast.data import load_dataset
        from negrec_fast.data.dataset import VOCAB_FILE
        from negrec_fast.training import CHECKPOINT_FORMAT, build_model_for, resolve_device

        run_dir = Path(run_dir)
        path = run_dir / f"{checkpoint}.pt"
        if not path.is_file():
            raise ConfigError(f"{run_dir} has no {checkpoint}.pt checkpoint (is it a finished run folder?)")
        dev = resolve_device(device)
        state = load_checkpoint(path, map_location=dev)
        version = state.get("format")
        if version != CHECKPOINT_FORMAT:
            newer = isinstance(version, int) and version > CHECKPOINT_FORMAT
            raise InputError(
                f"{path}: checkpoint format {version!r} is not supported (this negrec-fast reads format "
                f"{CHECKPOINT_FORMAT}{'; the run was written by a newer version, upgrade negrec-fast' if newer else ''})"
            )
        config = Config.from_dict(state["config"])
        info_path = run_dir / "dataset.json"
        if not info_path.is_file():
            raise InputError(f"{info_path}: not found; it names the dataset (and vocabulary) the run was trained on")
        info = json.loads(info_path.read_text())
        vocab_path = Path(info["path"]) / VOCAB_FILE
        if not vocab_path.is_file():
            raise InputError(
                f"{vocab_path}: the run's vocabulary is missing (the dataset named in {info_path} was moved or deleted)"
            )
        dataset = load_dataset(info["path"])
        if info.get("checksum") and dataset.manifest.get("checksum") != info["checksum"]:
            raise ConfigError(f"the dataset at {info['path']} changed since the run was trained (checksum differs)")
        model = build_model_for(config, dataset.vocab_size).to(dev)
        model.load_state_dict(state["model"])
        return cls(model, dataset, config, dev)

    @torch.no_grad()
    def recommend(
        self, session: Sequence[str], *, skipped: Sequence[str] = (), k: int = 10, exclude_seen: bool = False
    ) -> Recommendation:
        """Top-``k`` next tracks after ``session`` (original ids, in play order).

        Exclusions, each explicit: ``exclude_seen`` (default False, like ``eval.exclude_seen``)
        never recommends a track of the session; with the same flag, this ranking is the one
        evaluation scores (:func:`negrec_fast.evaluation.evaluate_model`). ``skipped`` names
        tracks (e.g. the session's skipped ones) never to recommend, whatever ``exclude_seen``;
        evaluation has no such list. Unknown ids are dropped from the input and reported in
        ``unknown``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ids, unknown = self.dataset.encode(list(session))
        ids = np.asarray(ids, dtype=np.int64)
        known = ids[ids >= 2]
        skipped_ids, unknown_skipped = self.dataset.encode(list(skipped))
        unknown = list(unknown) + [s for s in unknown_skipped if s not in unknown]
        max_len = self.config.data.max_len
        inputs = np.zeros((1, max_len), dtype=np.int64)
        flags = np.zeros((1, max_len), dtype=bool)  # a play of a skipped track is a skipped play
        tail = known[-max_len:]
        if len(tail):
            inputs[0, max_len - len(tail):] = tail
            flags[0, max_len - len(tail):] = np.isin(tail, np.asarray(skipped_ids, dtype=np.int64))
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
