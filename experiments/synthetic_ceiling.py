"""How far can any model go on the bundled synthetic data? A near-oracle that knows the
generator's planted tastes: it infers the session's taste from the input plays (majority
vote) and ranks that taste's items by training popularity. Its test HR@10 and skip_MRR@10
bound what a learned model can reach when skips only carry taste information.

    python experiments/synthetic_ceiling.py [--sessions 20000 --items 5000 --seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from negrec_fast.bundled import synthetic_dataset_path
from negrec_fast.config import DataConfig, EvalConfig
from negrec_fast.data import load_dataset
from negrec_fast.evaluation import evaluate_model
from negrec_fast.synthetic import planted_tastes


class TasteOracle(torch.nn.Module):
    """Scores = training popularity within the majority taste of the input plays."""

    def __init__(self, taste: np.ndarray, popularity: np.ndarray, n_tastes: int) -> None:
        super().__init__()
        self.taste = torch.from_numpy(taste)
        self.n_tastes = n_tastes
        self.log_pop = torch.from_numpy(np.log1p(popularity))

    def next_query(self, items: torch.Tensor, skips: torch.Tensor | None = None) -> torch.Tensor:
        tastes = self.taste[items]
        votes = torch.zeros(items.shape[0], self.n_tastes).scatter_add_(
            1, tastes.clamp(min=0), (tastes >= 0).float()
        )
        return votes.argmax(dim=1)

    def score_all(self, session_taste: torch.Tensor) -> torch.Tensor:
        on_taste = (self.taste[None, :] == session_taste[:, None]).float()
        scores = 100.0 * on_taste + self.log_pop[None, :]
        scores[:, :2] = float("-inf")
        return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=DataConfig.synthetic_sessions)
    parser.add_argument("--items", type=int, default=DataConfig.synthetic_items)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tastes", type=int, default=20)
    args = parser.parse_args()
    data = DataConfig(synthetic_sessions=args.sessions, synthetic_items=args.items, synthetic_seed=args.seed)
    ds = load_dataset(synthetic_dataset_path(data))
    planted = planted_tastes(args.items, args.tastes)
    taste = np.array([-1, -1] + [planted[t] for t in ds.decode(np.arange(2, ds.vocab_size))], dtype=np.int64)
    pos = np.arange(len(ds.items)) - np.repeat(ds.offsets[:-1], np.diff(ds.offsets))
    train = pos < np.repeat(ds.train_end, np.diff(ds.offsets))
    popularity = np.bincount(ds.items[train], minlength=ds.vocab_size).astype(np.float64)
    oracle = TasteOracle(taste, popularity, args.tastes)
    metrics = evaluate_model(oracle, ds, "test", EvalConfig(ks=[1, 10]), max_len=20, device=torch.device("cpu"))
    for key in ("HR@1", "HR@10", "NDCG@10", "skip_MRR@10", "HR@10_skipped"):
        print(f"{key:14s} {metrics[key]:.4f}")


if __name__ == "__main__":
    main()
