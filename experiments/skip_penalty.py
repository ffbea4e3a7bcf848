"""Do the session's skipped plays in the main loss push skipped tracks down? A grid over seeds.

Generates an MSSD-format log whose most played tracks are mostly skipped (the generator's chart
mode: off-taste plays from one heavy-headed law, skipped with probability 0.8), prepares it,
and trains SASRec with the default config plus each variant's overrides, for every seed. Writes
test HR@10 of kept and of skipped held-out tracks, their gap (kept - skipped, higher is better),
skip_MRR@10 (lower is better) and NDCG@10 as mean ± std over seeds to ``--out`` (.json + .md).

    python experiments/skip_penalty.py --seeds 0 1 2 --out docs/results/skip_penalty_charts
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from negrec_fast.data import prepare
from negrec_fast.synthetic import generate_mssd
from negrec_fast.training import train

METRICS = ("HR@10_kept", "HR@10_skipped", "HR@10_gap", "skip_MRR@10", "NDCG@10")
VARIANTS = {
    "no skip penalty": ["loss.skip_penalty=none"],
    "negatives (default)": [],
    "negatives, weight 10": ["loss.skip_weight=10"],
    "unlikelihood": ["loss.skip_penalty=unlikelihood"],
    "unlikelihood, weight 10": ["loss.skip_penalty=unlikelihood", "loss.skip_weight=10"],
    "negatives + skip inputs": ["model.skip_inputs=true"],
    "no skip penalty + skip inputs": ["loss.skip_penalty=none", "model.skip_inputs=true"],
}
LOG = dict(n_items=4000, chart_exponent=1.2, on_taste_prob=0.5, zipf_exponent=0.6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sessions", type=int, default=8000)
    parser.add_argument("--chart-keep-share", type=float, default=0.0,
                        help="share of sessions that keep chart plays (their skips then tell sessions apart)")
    parser.add_argument("--skip-prob-off", type=float, default=0.8,
                        help="skip probability of off-taste (chart) plays in sessions that do not like the charts")
    parser.add_argument("--dislike-share", type=float, default=0.0,
                        help="share of its taste's items each session dislikes (generator's dislike mode)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value", help="extra config overrides")
    parser.add_argument("--work", default="runs/skip_penalty")
    parser.add_argument("--out", default="docs/results/skip_penalty_charts")
    args = parser.parse_args()

    work = Path(args.work)
    log = {**LOG, "chart_keep_share": args.chart_keep_share, "skip_prob_off": args.skip_prob_off,
           "dislike_share": args.dislike_share}
    tag = f"charts-{args.sessions}-keep{args.chart_keep_share:g}-off{args.skip_prob_off:g}-dislike{args.dislike_share:g}"
    data = work / tag
    if not (data / "manifest.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        raw = generate_mssd(work / f"{tag}.csv.gz", n_sessions=args.sessions, seed=0, **log)
        prepare(raw, data, format="mssd", progress=False)

    rows = []
    for variant in args.variants:
        runs = []
        for seed in args.seeds:
            name = f"{tag}-{variant.replace(' ', '_').replace(',', '').replace('+', 'and')}-seed{seed}"
            result = train(overrides=[
                f"data.path={data}", f"train.seed={seed}", f"run.dir={work / 'runs'}", f"run.name={name}",
                "train.progress=false", *VARIANTS[variant], *args.set,
            ])
            runs.append({"seed": seed, "best_epoch": result.best_epoch, **{m: result.test[m] for m in METRICS}})
            print(f"{variant} seed={seed}: " + ", ".join(f"{m} {result.test[m]:.4f}" for m in METRICS), flush=True)
        rows.append({"variant": variant, "overrides": VARIANTS[variant], "runs": runs})
        # written after each variant, so an interrupted grid keeps what it finished
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"log": {"n_sessions": args.sessions, **log}, "overrides": args.set, "seeds": args.seeds}
        out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
        out.with_suffix(".md").write_text(render(rows))


def render(rows) -> str:
    lines = ["| variant | " + " | ".join(METRICS) + " | best epochs |", "|---" * (len(METRICS) + 2) + "|"]
    for row in rows:
        cells = []
        for m in METRICS:
            values = [r[m] for r in row["runs"]]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {std:.4f}")
        epochs = ", ".join(str(r["best_epoch"]) for r in row["runs"])
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
