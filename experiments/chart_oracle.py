"""What can any model reach on a generated log? The Bayes-optimal next-kept-play ranker,
computed from the generator's own law (`negrec_fast.synthetic.generate_mssd`).

It knows the generator's parameters but not a session's hidden state: it infers the session's
taste, whether the session likes the charts (``chart_keep_share``) and which of its taste's
items it dislikes (``dislike_share``) from the input plays and their skip flags (exact
posterior), then ranks every item by its probability of being the next kept play (with a
disliked subset, per taste and likes-charts state: the posterior mean of P(play, kept) over
subsets divided by its total, a close approximation for tastes of many items; checked against
brute-force enumeration in tests/test_generator_oracle.py). No model
ranks held-out kept tracks better in expectation; its HR@10 of the held-out *skipped* tracks
shows how high skipped tracks rank when recommendations are as good as they can be.

    python experiments/chart_oracle.py DATASET_DIR --n-items 4000 --chart-exponent 1.2 \
        --on-taste-prob 0.5 --zipf-exponent 0.6 --chart-keep-share 0.3 [--dislike-share 0.3]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from negrec_fast._core import synth_track_ids
from negrec_fast.config import EvalConfig
from negrec_fast.data import load_dataset
from negrec_fast.evaluation import evaluate_model

METRICS = ("HR@10_kept", "HR@10_skipped", "HR@10_gap", "skip_MRR@10", "NDCG@10")


class GeneratorOracle(torch.nn.Module):
    """``score_all(next_query(items, skips))`` = P(next kept play = item | input plays)."""

    def __init__(self, vocab_index: np.ndarray, *, n_items: int, n_tastes: int = 20, on_taste_prob: float = 0.8,
                 skip_prob_on: float = 0.15, skip_prob_off: float = 0.8, zipf_exponent: float = 1.0,
                 chart_exponent: float = 0.0, chart_keep_share: float = 0.0, dislike_share: float = 0.0,
                 use_skips: bool = True) -> None:
        super().__init__()
        t, n = n_tastes, n_items
        item = np.arange(n)
        taste_of = item % t
        # within-taste law: rank i // t has weight (rank + 1)^-zipf, normalised per taste
        within = (item // t + 1.0) ** -zipf_exponent
        within /= np.bincount(taste_of, weights=within)[taste_of]
        on_mask = taste_of[None, :] == np.arange(t)[:, None]  # [t, n]
        if chart_exponent > 0:  # item n-1-r has weight (r + 1)^-chart, redrawn while on the taste
            chart = (n - item.astype(np.float64)) ** -chart_exponent
            chart /= chart.sum()
            off_law = np.where(on_mask, 0.0, chart[None, :])
            off_law /= off_law.sum(axis=1, keepdims=True)
        else:  # a uniformly chosen other taste, then its within-taste law
            off_law = np.where(on_mask, 0.0, within[None, :] / (t - 1))
        q, s_on, s_off, share = on_taste_prob, skip_prob_on, skip_prob_off, dislike_share
        cols = np.where(vocab_index >= 0, vocab_index, 0)
        real = vocab_index >= 0  # padding / unknown ids: never drawn
        as_vocab = lambda a: torch.from_numpy(np.where(real, a[..., cols], 0.0))  # noqa: E731
        self.on_mask = as_vocab(on_mask.astype(np.float64))  # [t, V]
        self.on_draw = as_vocab(q * within[None, :] * on_mask)  # [t, V] p(play v, on-taste | taste)
        self.off_draw = as_vocab((1 - q) * off_law)  # [t, V]
        self.keep_off = torch.tensor([1 - s_off, 1 - s_on], dtype=torch.float64)  # by likes-charts L = 0, 1
        self.s_on, self.s_off, self.share = s_on, s_off, share
        prior_l = [1 - chart_keep_share, chart_keep_share] if chart_exponent > 0 else [1.0, 0.0]
        self.log_prior = torch.log(torch.tensor(prior_l, dtype=torch.float64) + 1e-300)[:, None] - np.log(t)  # [2, t]
        self.use_skips = use_skips

    def _dislike_posterior(self, kept: torch.Tensor, skipped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(skip flags of an on-taste item's plays) and P(disliked | them), per (row, item)."""
        s_on, s_off, share = self.s_on, self.s_off, self.share
        liked = np.log1p(-share) + kept * np.log1p(-s_on) + skipped * np.log(s_on)
        disliked = (np.log(share) + kept * np.log1p(-s_off) + skipped * np.log(s_off)) if share > 0 else torch.full_like(liked, -np.inf)
        log_mix = torch.logaddexp(liked, disliked)
        return log_mix, torch.exp(disliked - log_mix)

    def next_query(self, items: torch.Tensor, skips: torch.Tensor | None = None) -> torch.Tensor:
        b, v = items.shape[0], self.on_draw.shape[1]
        skips = torch.zeros_like(items, dtype=torch.bool) if skips is None or not self.use_skips else skips
        real = (items > 0).double()
        kept = torch.zeros(b, v, dtype=torch.float64).scatter_add_(1, items, real * (~skips).double())
        skipped = torch.zeros(b, v, dtype=torch.float64).scatter_add_(1, items, real * skips.double())
        kept[:, 0] = skipped[:, 0] = 0
        plays = kept + skipped
        log_mix, p_dis = self._dislike_posterior(kept, skipped)
        if not self.use_skips:  # flags unseen: no evidence about likes-charts or dislikes
            log_mix, p_dis = torch.zeros_like(log_mix), torch.full_like(p_dis, self.share)
        safe_log = lambda a: torch.log(a.clamp_min(1e-300))  # noqa: E731
        on_ll = (plays * safe_log(self.on_draw.sum(0, keepdim=True)) + log_mix) @ self.on_mask.T  # [b, t]
        off_plays = plays @ (safe_log(self.off_draw) * (self.off_draw > 0)).T  # [b, t]
        off_mask = 1 - self.on_mask
        off_kept, off_skipped = kept @ off_mask.T, skipped @ off_mask.T  # [b, t]
        if self.use_skips:
            flags = off_kept[:, None] * torch.log(self.keep_off)[None, :, None] \
                + off_skipped[:, None] * torch.log1p(-self.keep_off)[None, :, None]  # [b, 2, t]
        else:
            flags = torch.zeros(b, 2, off_kept.shape[1], dtype=torch.float64)
        log_post = self.log_prior[None] + (on_ll + off_plays)[:, None, :] + flags  # [b, 2, t]
        post = torch.softmax(log_post.reshape(b, -1), dim=1).reshape(log_post.shape)
        # next kept play under each state, normalised by P(a play is kept | state)
        keep_on = (1 - self.s_on) * (1 - p_dis) + (1 - self.s_off) * p_dis  # [b, V]
        on_kept = self.on_draw[None] * keep_on[:, None, :]  # [b, t, V]
        scores = torch.zeros(b, v, dtype=torch.float64)
        for lik in (0, 1):
            state_kept = on_kept + self.off_draw[None] * self.keep_off[lik]
            state_kept = state_kept / state_kept.sum(-1, keepdim=True)
            scores += torch.einsum("bt,btv->bv", post[:, lik], state_kept)
        return scores.float()

    def score_all(self, scores: torch.Tensor) -> torch.Tensor:
        return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="prepared dataset folder of a generate_mssd log")
    parser.add_argument("--n-items", type=int, required=True)
    parser.add_argument("--n-tastes", type=int, default=20)
    parser.add_argument("--on-taste-prob", type=float, default=0.8)
    parser.add_argument("--skip-prob-on", type=float, default=0.15)
    parser.add_argument("--skip-prob-off", type=float, default=0.8)
    parser.add_argument("--zipf-exponent", type=float, default=1.0)
    parser.add_argument("--chart-exponent", type=float, default=0.0)
    parser.add_argument("--chart-keep-share", type=float, default=0.0)
    parser.add_argument("--dislike-share", type=float, default=0.0)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--ignore-skips", action="store_true", help="infer the session state from the items alone")
    args = parser.parse_args()
    print(json.dumps(oracle_metrics(args.dataset, max_len=args.max_len, use_skips=not args.ignore_skips, **{
        k: getattr(args, k) for k in ("n_items", "n_tastes", "on_taste_prob", "skip_prob_on", "skip_prob_off",
                                      "zipf_exponent", "chart_exponent", "chart_keep_share", "dislike_share")})))


def oracle_metrics(dataset_dir, *, max_len: int = 20, use_skips: bool = True, **law) -> dict[str, float]:
    """Test metrics of the oracle for a dataset prepared from a log generated with ``law``."""
    ds = load_dataset(dataset_dir)
    index = {track: i for i, track in enumerate(synth_track_ids(law["n_items"]))}
    vocab_index = np.array([-1, -1] + [index.get(t, -1) for t in ds.decode(np.arange(2, ds.vocab_size))])
    oracle = GeneratorOracle(vocab_index, use_skips=use_skips, **law)
    metrics = evaluate_model(oracle, ds, "test", EvalConfig(ks=[1, 10], batch_size=64), max_len=max_len,
                             device=torch.device("cpu"))
    return {k: round(metrics[k], 4) for k in METRICS}


if __name__ == "__main__":
    main()
