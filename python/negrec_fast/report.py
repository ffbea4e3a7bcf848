"""Tables and plots over finished run folders (``negrec-fast report RUN_DIR...``).

Runs whose configs differ only in ``train.seed`` (and in keys that do not change what is
trained: run folder, device, threads, progress) are one *variant*; a variant is named by the
config keys in which it differs from the others (when that gets long, by those it sets away from
its model's defaults: ``defaults`` if none). ``results.csv`` / ``results.md`` hold each test
metric's mean ± std over seeds, the best value of each column marked (lower is better for
``skip_MRR@K``), and with ``base="key=value"`` the relative change of every variant over its
base (the variant equal to it except ``key = value``) with a two-sided paired t-test over the
seeds both ran. Plots (matplotlib, optional): test HR@K and NDCG@K per variant, skip_MRR@10 per
variant, and the early-stopping validation metric per epoch.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negrec_fast.config import apply_overrides, load_config
from negrec_fast.errors import ConfigError, InputError

# keys that say nothing about what a run trained
IGNORED = frozenset({"train.seed", "train.progress", "train.threads", "train.device", "train.prefetch",
                     "train.checkpoint_every", "train.max_steps", "run.dir", "run.name", "run.tensorboard"})


LABEL_CHARS = 60  # longer variant labels keep only the keys set away from the model's defaults


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flat "section.key" -> value
    test: dict[str, float]
    history: list[dict[str, Any]]

    @property
    def seed(self) -> int:
        return int(self.config["train.seed"])


@dataclass
class Variant:
    label: str
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> dict[int, float]:
        return {r.seed: r.test[metric] for r in self.runs if metric in r.test}


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Finished run folders (with ``test_metrics.json``); anything else is a clear error."""
    runs = []
    for d in map(Path, run_dirs):
        test_path = d / "test_metrics.json"
        if not (d / "config.toml").is_file():
            raise InputError(f"{d}: not a run folder (no config.toml)")
        if not test_path.is_file():
            raise InputError(f"{test_path}: not found; the run has not finished (resume it with negrec-fast train --resume {d})")
        flat = load_config(d / "config.toml").to_flat_dict()
        history = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        runs.append(Run(d, flat, json.loads(test_path.read_text())["test"], history))
    if not runs:
        raise ConfigError("report needs at least one run folder")
    return runs


def group_variants(runs: list[Run]) -> list[Variant]:
    """Runs grouped by config (seeds together), in first-seen order, labelled by what differs."""
    groups: dict[tuple, Variant] = {}
    for run in runs:
        key = tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in IGNORED))
        variant = groups.setdefault(key, Variant("", {k: v for k, v in run.config.items() if k not in IGNORED}))
        if run.seed in {r.seed for r in variant.runs}:
            raise InputError(f"{run.path}: a second run of seed {run.seed} with the config of {variant.runs[0].path}")
        variant.runs.append(run)
    variants = list(groups.values())
    differing = sorted(k for k in variants[0].config if len({repr(v.config.get(k)) for v in variants}) > 1)
    if not differing:
        variants[0].label = "all runs"
        return variants
    full = [", ".join(f"{k}={v.config.get(k)}" for k in differing) for v in variants]
    for v, label in zip(variants, full):
        if max(map(len, full)) <= LABEL_CHARS:
            v.label = label
            continue
        # long: the model when models differ, and each differing key this variant sets away from
        # its model's default (unique: two variants default on every differing key are one config)
        defaults = _model_defaults(v.config.get("model.name"))
        shown = [k for k in differing if k == "model.name" or v.config.get(k) != defaults.get(k)]
        v.label = ", ".join(f"{k}={v.config.get(k)}" for k in shown) or "defaults"
    return variants


@functools.lru_cache(maxsize=None)
def _model_defaults(model: str | None) -> dict[str, Any]:
    """The flat default config of ``model`` (model-specific defaults resolved, e.g. its loss)."""
    return load_config(overrides=[f"model.name={model}"] if model else []).to_flat_dict()


def paired_t_test(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` (nan with < 2 pairs;
    1 or 0 when the differences are all equal)."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n < 2:
        return float("nan")
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    df = n - 1
    return _regularized_beta(df / (df + t * t), df / 2, 0.5)  # P(|T| >= |t|)


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz), with the symmetry for fast convergence."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _regularized_beta(1 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * (f - 1.0)


def lower_is_better(metric: str) -> bool:
    return metric.startswith("skip_MRR") or metric.startswith("HR@10_skipped")


@dataclass
class Report:
    variants: list[Variant]
    metrics: list[str]
    rows: list[dict[str, Any]]  # one per variant: label, seeds, METRIC_mean/_std (+ _rel/_p with a base)


def build_report(runs: list[Run], base: str | None = None) -> Report:
    variants = group_variants(runs)
    metrics = [m for m in runs[0].test if not m.startswith("n_") and all(m in r.test for r in runs)]
    base_key, base_value = _parse_base(base) if base else (None, None)
    rows = []
    for v in variants:
        row: dict[str, Any] = {"variant": v.label, "seeds": len(v.runs)}
        ref = _base_of(v, variants, base_key, base_value) if base_key else None
        for m in metrics:
            values = list(v.values(m).values())
            row[f"{m}_mean"] = statistics.mean(values)
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            if ref is not None:
                ours, theirs = v.values(m), ref.values(m)
                seeds = sorted(set(ours) & set(theirs))
                base_mean = statistics.mean(theirs.values())
                row[f"{m}_rel"] = (row[f"{m}_mean"] - base_mean) / abs(base_mean) if base_mean else float("nan")
                row[f"{m}_p"] = paired_t_test([ours[s] for s in seeds], [theirs[s] for s in seeds])
        row["base"] = ref.label if ref is not None else ""
        rows.append(row)
    return Report(variants, metrics, rows)


def _parse_base(base: str) -> tuple[str, Any]:
    key, sep, raw = base.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--base must be section.key=value, got {base!r}")
    section, name = key.split(".", 1)
    return key.strip(), apply_overrides({}, [base])[section][name]


def _base_of(v: Variant, variants: list[Variant], key: str, value: Any) -> Variant | None:
    if key not in v.config:
        raise ConfigError(f"--base names {key!r}, which is not a config key")
    if v.config[key] == value:
        return None
    want = {**v.config, key: value}
    return next((o for o in variants if o.config == want), None)


def write_report(report: Report, out: str | Path, *, plots: bool = True) -> list[Path]:
    """results.csv, results.md and (with matplotlib) PNG plots under ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.csv", out / "results.md"]
    columns = list(dict.fromkeys(k for row in report.rows for k in row))  # a base row has no _rel / _p
    with open(written[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(report.rows)
    written[1].write_text(render_markdown(report))
    if plots:
        written += _plots(report, out)
    return written


def render_markdown(report: Report) -> str:
    has_base = any(r["base"] for r in report.rows)
    lines = ["| variant | seeds | " + " | ".join(report.metrics) + " |", "|---" * (len(report.metrics) + 2) + "|"]
    best = {}
    for m in report.metrics:
        means = [r[f"{m}_mean"] for r in report.rows]
        best[m] = min(means) if lower_is_better(m) else max(means)
    for r in report.rows:
        cells = []
        for m in report.metrics:
            cell = f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f}"
            if len(report.rows) > 1 and r[f"{m}_mean"] == best[m]:
                cell = f"**{cell}**"
            if r["base"]:
                cell += f" ({r[f'{m}_rel']:+.1%}, p={r[f'{m}_p']:.2g})"
            cells.append(cell)
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
    notes = ["", "Mean ± std over seeds (test split); **bold** = best in the column (lowest for skip_MRR and HR@10_skipped)."]
    if has_base:
        notes.append("In parentheses: change over the variant's base relative to the base's magnitude, and the "
                     "two-sided paired t-test p-value over the seeds both ran.")
    return "\n".join(lines + notes) + "\n"


def _plots(report: Report, out: Path) -> list[Path]:
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("plots need matplotlib: pip install 'negrec-fast[report]' (or pass --no-plots)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["variant"] for r in report.rows]
    written = []
    ranked = [m for m in report.metrics if m.split("@")[0] in ("HR", "NDCG") and m.count("@") == 1
              and m.split("@")[1].isdigit()]
    # variant labels can be long: they go on the y axis of horizontal bars, and legends below
    height = 1.2 + 0.3 * len(labels)
    label_width = 0.07 * max(map(len, labels))  # inches the y-axis labels take at "small" size
    if ranked:
        fig, axes = plt.subplots(1, len(ranked), figsize=(label_width + 2.2 * len(ranked), height), sharey=True, squeeze=False,
                                 layout="constrained")
        for ax, m in zip(axes[0], ranked):
            ax.barh(range(len(labels)), [r[f"{m}_mean"] for r in report.rows],
                    xerr=[r[f"{m}_std"] for r in report.rows], color="tab:blue")
            ax.set_title(m, fontsize="medium")
            ax.invert_yaxis()
        axes[0][0].set_yticks(range(len(labels)), labels, fontsize="small")
        fig.supxlabel("test (mean ± std over seeds)", fontsize="small")
        written.append(_save(fig, out / "ranking_metrics.png"))
    if "skip_MRR@10" in report.metrics:
        fig, ax = plt.subplots(figsize=(label_width + 5, height), layout="constrained")
        ax.barh(range(len(labels)), [r["skip_MRR@10_mean"] for r in report.rows],
                xerr=[r["skip_MRR@10_std"] for r in report.rows], color="tab:red")
        ax.set_yticks(range(len(labels)), labels, fontsize="small")
        ax.invert_yaxis()
        ax.set_xlabel("test skip_MRR@10 of held-out skipped tracks (lower is better)")
        written.append(_save(fig, out / "skip_mrr.png"))
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    if len(labels) > 10:  # the default cycle repeats after 10
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    metrics = {v.config.get("train.early_stopping_metric", "NDCG@10") for v in report.variants}
    for v in report.variants:
        metric = v.config.get("train.early_stopping_metric", "NDCG@10")
        # x = epochs trained: a validation within an epoch (train.eval_every) sits at its fraction
        by_x: dict[float, list[float]] = {}
        for r in v.runs:
            for h in r.history:
                if metric in h["valid"]:
                    x = round(h["epoch"] - 1 + h.get("epoch_progress", 1.0), 4)
                    by_x.setdefault(x, []).append(h["valid"][metric])
        xs = sorted(by_x)
        label = v.label if len(metrics) == 1 else f"{v.label} ({metric})"
        ax.plot(xs, [statistics.mean(by_x[x]) for x in xs], marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metrics.pop() if len(metrics) == 1 else 'metric'} (mean over seeds)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    written.append(_save(fig, out / "validation_curves.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight": long labels and outside legends fit
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
