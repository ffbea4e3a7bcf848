"""The ``negrec-fast`` command line: prepare, generate, train, evaluate, recommend."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from negrec_fast.evaluation import format_table
    from negrec_fast.training import train

    result = train(args.config, overrides=args.overrides, resume=args.resume)
    if not result.completed:
        print(f"stopped after train.max_steps; continue with: negrec-fast train --resume {result.run_dir}")
        return 0
    print(f"run folder: {result.run_dir}")
    print(f"best epoch: {result.best_epoch}")
    print("test metrics:")
    print(format_table(result.test or {}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from negrec_fast.evaluation import evaluate, format_table

    metrics = evaluate(args.run_dir, args.split, checkpoint=args.checkpoint, device=args.device)
    print(f"{args.split} metrics ({args.checkpoint}.pt), written to {Path(args.run_dir) / f'eval_{args.split}.json'}:")
    print(format_table(metrics))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from negrec_fast.recommend import Recommender

    rec = Recommender.load(args.run_dir, device=args.device)
    session = [s for s in args.session.split(",") if s]
    skipped = [s for s in (args.skipped or "").split(",") if s]
    out = rec.recommend(session, skipped=skipped, k=args.k, exclude_seen=args.exclude_seen)
    if args.json:
        print(json.dumps({"items": out.items, "scores": out.scores, "unknown": out.unknown}))
        return 0
    if out.unknown:
        print(f"unknown ids (ignored): {', '.join(out.unknown)}", file=sys.stderr)
    for rank, (item, score) in enumerate(zip(out.items, out.scores), start=1):
        print(f"{rank:>3}  {item}  {score:.4f}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from negrec_fast.synthetic import generate_mssd

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    path = generate_mssd(
        args.output, n_sessions=args.sessions, n_items=args.items, seed=args.seed, chart_exponent=args.charts
    )
    print(f"wrote {path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from negrec_fast import __version__
    from negrec_fast.data.cli import add_prepare_parser

    parser = argparse.ArgumentParser(
        prog="negrec-fast",
        description="Sequential recommendation that learns from negative feedback (skips).",
    )
    parser.add_argument("--version", action="version", version=f"negrec-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_prepare_parser(sub)

    p = sub.add_parser("train", help="train a model (default: SASRec + skip-InfoNCE on the bundled synthetic data)")
    p.add_argument("--config", help="TOML config file (sections data, model, loss, train, eval, run)")
    p.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue an interrupted run from its last.pt (overrides: only train.epochs, train.max_steps, ...)",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.epochs=5")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint and print a metrics table")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("recommend", help="recommend next tracks for a session with a trained run")
    p.add_argument("run_dir")
    p.add_argument("--session", required=True, help="comma-separated original track ids, in play order")
    p.add_argument("--skipped", help="comma-separated tracks of the session that were skipped (never recommended)")
    p.add_argument("--k", type=_positive_int, default=10)
    p.add_argument(
        "--exclude-seen", action="store_true",
        help="never recommend tracks already in the session (off by default, like eval.exclude_seen)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_recommend)

    p = sub.add_parser("generate", help="write a synthetic MSSD-format log with planted skip structure")
    p.add_argument("output", help="CSV path (.gz compresses)")
    p.add_argument("--sessions", type=_positive_int, default=20_000)
    p.add_argument("--items", type=_positive_int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--charts", type=float, default=0.0, metavar="EXPONENT",
        help="off-taste plays from one global Zipf(EXPONENT) chart law, mostly skipped (0 = off, e.g. 1.2)",
    )
    p.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from negrec_fast.errors import NegrecError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NegrecError as exc:
        print(f"negrec-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
