"""One Markdown table per dataset from the evidence grid's `report/results.csv` files, with
short variant names (the report labels a variant by every key in which the variants differ).

    python experiments/evidence/summarize.py OUT_TASTE OUT_DISLIKE ... > table.md
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from negrec_fast.config import load_config

MODELS = {"sasrec": "SASRec", "bert4rec": "BERT4Rec", "bpr": "BPR-MF", "wrmf": "WRMF", "sine": "SINE", "pnfrec": "PNFRec"}
COLUMNS = (("HR@10", "HR@10"), ("NDCG@10", "NDCG@10"), ("skip_MRR@10", "skip_MRR@10 (lower is better)"),
           ("HR@10_gap", "HR@10 kept − skipped"))


def short_name(label: str, usual_epochs: str | None = None) -> str:
    keys = dict(part.split("=", 1) for part in label.split(", ") if "=" in part)
    model = keys.setdefault("model.name", "sasrec")
    # a long label names only the keys set away from the model's defaults
    defaults = load_config(overrides=[f"model.name={model}"])
    for key in ("loss.nce_weight", "loss.skip_penalty", "model.skip_inputs", "model.pnfrec_fusion", "train.epochs"):
        section, name = key.split(".")
        keys.setdefault(key, str(getattr(getattr(defaults, section), name)))
    name = MODELS[keys["model.name"]]
    extras = []
    if keys.get("model.skip_inputs") == "True":
        extras.append("skip-flag inputs")
    if keys["model.name"] == "pnfrec":
        extras.append(f"fusion {keys.get('model.pnfrec_fusion', 'none')}")
    elif keys["model.name"] not in ("sine",):
        penalty = keys.get("loss.skip_penalty", "negatives")
        if keys["model.name"] in ("sasrec", "bert4rec") and penalty != "negatives":
            extras.append(f"skip penalty {penalty}")
        if float(keys.get("loss.nce_weight", 0.1)) > 0:
            extras.append(f"+ InfoNCE λ={float(keys['loss.nce_weight']):g}")
    if keys.get("train.epochs", usual_epochs) != usual_epochs:
        extras.append(f"at most {keys['train.epochs']} epochs")
    return name + (f" ({', '.join(extras)})" if extras else "")


def table(out: Path) -> str:
    with open(out / "report" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lines = ["| variant | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    epochs = [dict(p.split("=", 1) for p in r["variant"].split(", ") if "=" in p).get("train.epochs", "100")
              for r in rows]
    usual = max(set(epochs), key=epochs.count)  # the grid's budget; only other budgets are named
    for r in sorted(rows, key=lambda r: short_name(r["variant"], usual)):
        cells = []
        for metric, _ in COLUMNS:
            if not r.get(f"{metric}_mean"):  # e.g. no held-out skipped tracks: no skip metrics
                cells.append("n/a")
                continue
            cell = f"{float(r[f'{metric}_mean']):.4f} ± {float(r[f'{metric}_std']):.4f}"
            if r.get(f"{metric}_p"):
                cell += f" (p={float(r[f'{metric}_p']):.2g})"
            cells.append(cell)
        lines.append(f"| {short_name(r['variant'], usual)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for out in map(Path, sys.argv[1:]):
        print(f"### {out.name}\n\n{table(out)}\n")
