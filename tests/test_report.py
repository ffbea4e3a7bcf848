"""negrec-fast report: variants from real run folders, mean ± std over seeds checked against the
runs' own test_metrics.json, the paired t-test against textbook t-table values, plots, errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import statistics

import pytest

from negrec_fast.cli import main
from negrec_fast.errors import ConfigError, InputError
from negrec_fast.report import build_report, load_runs, paired_t_test, write_report
from negrec_fast.training import train
from run_folders import tiny


@pytest.fixture(scope="module")
def runs(dataset_dir, tmp_path_factory):
    """2 variants (skip-InfoNCE off / on) x 2 seeds, one epoch each."""
    root = tmp_path_factory.mktemp("report_runs")
    dirs = {}
    for weight in (0.0, 0.1):
        for seed in (0, 1):
            run = root / f"w{weight}-s{seed}"
            train(overrides=tiny(dataset_dir, run, f"loss.nce_weight={weight}", f"train.seed={seed}", "train.epochs=1",
                                 "train.threads=1"))
            dirs[(weight, seed)] = run
    return dirs


@pytest.mark.parametrize(
    "t, df, p",  # two-sided critical values of Student's t table
    [(12.706, 1, 0.05), (4.303, 2, 0.05), (9.925, 2, 0.01), (2.228, 10, 0.05), (1.812, 10, 0.10)],
)
def test_paired_t_test_matches_the_t_table(t, df, p):
    # n = df + 1 differences with mean t * sd / sqrt(n): the t statistic is t exactly
    n = df + 1
    base = [(-1) ** i * (1 + i % 2) for i in range(n)]  # any non-constant pattern
    mean, sd = statistics.mean(base), statistics.stdev(base)
    diffs = [(x - mean) + t * sd / n**0.5 for x in base]
    assert paired_t_test(diffs, [0.0] * n) == pytest.approx(p, abs=2e-4)
    assert paired_t_test([0.0] * n, diffs) == pytest.approx(p, abs=2e-4)


def test_paired_t_test_edge_cases():
    assert paired_t_test([1.0], [0.0]) != paired_t_test([1.0], [0.0])  # nan: one pair says nothing
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert paired_t_test([2.0, 3.0], [1.0, 2.0]) == 0.0


def test_report_groups_seeds_and_compares_with_the_base(runs, tmp_path):
    report = build_report(load_runs(list(runs.values())), base="loss.nce_weight=0")
    assert [r["variant"] for r in report.rows] == ["loss.nce_weight=0.0", "loss.nce_weight=0.1"]
    assert [r["seeds"] for r in report.rows] == [2, 2]
    test = {k: json.loads((d / "test_metrics.json").read_text())["test"] for k, d in runs.items()}
    for row, weight in zip(report.rows, (0.0, 0.1)):
        for m in ("HR@10", "NDCG@10", "skip_MRR@10"):
            values = [test[(weight, s)][m] for s in (0, 1)]
            assert row[f"{m}_mean"] == pytest.approx(statistics.mean(values))
            assert row[f"{m}_std"] == pytest.approx(statistics.stdev(values))
    with_nce = report.rows[1]
    assert with_nce["base"] == "loss.nce_weight=0.0" and report.rows[0]["base"] == ""
    base_mean = report.rows[0]["NDCG@10_mean"]
    assert with_nce["NDCG@10_rel"] == pytest.approx((with_nce["NDCG@10_mean"] - base_mean) / abs(base_mean))
    d = [test[(0.1, s)]["NDCG@10"] - test[(0.0, s)]["NDCG@10"] for s in (0, 1)]
    assert with_nce["NDCG@10_p"] == pytest.approx(paired_t_test(d, [0.0, 0.0]))

    written = write_report(report, tmp_path / "out", plots=importlib.util.find_spec("matplotlib") is not None)
    with open(tmp_path / "out" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[1]["HR@10_mean"]) == pytest.approx(report.rows[1]["HR@10_mean"])
    md = (tmp_path / "out" / "results.md").read_text()
    best = max(r["NDCG@10_mean"] for r in report.rows)
    assert f"**{best:.4f} ±" in md
    for path in written:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_cli_and_errors(runs, tmp_path, capsys):
    dirs = [str(d) for d in runs.values()]
    assert main(["report", *dirs, "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert "| loss.nce_weight=0.1 | 2 |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["results.csv", "results.md"]
    with pytest.raises(InputError, match="not a run folder"):
        load_runs([tmp_path])
    with pytest.raises(InputError, match="a second run of seed 0"):
        build_report(load_runs([dirs[0], dirs[0]]))
    with pytest.raises(ConfigError, match="--base must be section.key=value"):
        build_report(load_runs(dirs), base="nce_weight")


def test_long_labels_keep_the_keys_set_away_from_each_models_defaults():
    from pathlib import Path

    from negrec_fast.config import load_config
    from negrec_fast.report import LABEL_CHARS, Run, group_variants

    def run(*overrides: str) -> Run:
        return Run(Path("/none"), load_config(overrides=list(overrides)).to_flat_dict(), {}, [])

    grid = [(), ("loss.nce_weight=0",), ("model.name=bpr",), ("model.name=pnfrec", "model.pnfrec_fusion=gate"),
            ("model.skip_inputs=true", "loss.skip_penalty=none", "loss.nce_weight=0")]
    variants = group_variants([run(*o) for o in grid])
    # every key that differs somewhere: model.name, loss.rec (bpr's own loss), loss.nce_weight,
    # loss.skip_penalty, model.pnfrec_fusion, model.skip_inputs; written out, too long
    assert len(", ".join(f"{k}=x" for k in ("model.name", "loss.rec", "loss.nce_weight", "loss.skip_penalty",
                                            "model.pnfrec_fusion", "model.skip_inputs"))) > LABEL_CHARS
    assert [v.label for v in variants] == [
        "model.name=sasrec",
        "loss.nce_weight=0.0, model.name=sasrec",
        "model.name=bpr",  # its loss (bpr) is its default: not named
        "model.name=pnfrec, model.pnfrec_fusion=gate",  # pnfrec's defaults: no penalty, no InfoNCE
        "loss.nce_weight=0.0, loss.skip_penalty=none, model.name=sasrec, model.skip_inputs=True",
    ]
