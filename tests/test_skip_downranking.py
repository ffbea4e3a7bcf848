"""Issue 11, part 0: with the defaults, what listeners skip ranks below what they keep.

A generated log in the chart pattern: half of the plays are off-taste tracks from one
heavy-headed chart law, skipped 95 % of the time, so the chart head is both the most played and
(at 5 % of very many plays) among the most frequent kept tracks overall. A model on the popularity
plateau ranks the held-out skipped chart tracks first; a trained one must rank them below the
held-out kept tracks. With the old budget (batch 256, 10 epochs) this log got HR@10 gap +0.011;
with the defaults +0.090 (full-catalogue ranking, test split).
"""

from __future__ import annotations

from run_folders import generated_dataset

from negrec_fast.training import train

CHARTS = dict(n_sessions=3000, n_items=2000, n_tastes=10, zipf_exponent=0.6, chart_exponent=1.2, on_taste_prob=0.5,
              skip_prob_off=0.95, seed=0)


def test_defaults_rank_skipped_chart_tracks_below_kept_tracks(tmp_path):
    data = generated_dataset(tmp_path, **CHARTS)
    result = train(overrides=[f"data.path={data}", "train.threads=1", "train.progress=false",
                              f"run.dir={tmp_path / 'runs'}", "run.name=defaults"])
    test = result.test
    assert test["HR@10_kept"] > 0.12, test  # the tastes were learnt
    assert test["HR@10_gap"] > 0.05, test  # HR@10_kept - HR@10_skipped
