"""The ``negrec-fast`` command line: prepare, generate, train, tune, experiment, evaluate, recommend, export, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from negrec_fast.distributed import is_main_process
    from negrec_fast.evaluation import format_table
    from negrec_fast.training import train

    result = train(args.config, overrides=args.overrides, resume=args.resume)
    if not is_main_process():  # under torchrun, rank 0 reports
        return 0
    if not result.completed:
        print(f"stopped after train.max_steps; continue with: negrec-fast train --resume {result.run_dir}")
        return 0
    print(f"run folder: {result.run_dir}")
    print(f"best epoch: {result.best_epoch}" + (f" (batch {result.best_batch})" if result.best_batch else ""))
    print("test metrics:")
    print(format_table(result.test or {}))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from negrec_fast.tune import tune

    result = tune(
        args.config, args.space, trials=args.trials, overrides=args.overrides, study_name=args.study,
        study_dir=args.dir, storage=args.storage, seed=args.seed, prune_startup=args.prune_startup,
        prune_warmup=args.prune_warmup,
    )
    print((result.study_dir / "summary.md").read_text())
    print(f"study folder: {result.study_dir} (study.csv, summary.md, trial-NNNN/)")
    if result.best_config is not None:
        print(f"best config: {result.best_config} (negrec-fast train --config {result.best_config})")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from negrec_fast.experiment import default_out, load_grid, plan, run_experiment

    grid = load_grid(args.grid)
    options = {"config": args.config, "data": args.data, "overrides": args.overrides, "seeds": args.seeds}
    if args.dry_run:
        out = args.out or default_out(grid, config=args.config, overrides=args.overrides)
        runs = plan(grid, out, **options)
        for run in runs:
            print(f"{run.label} seed {run.seed}: {run.run_dir} ({run.state})")
        print(f"{len(runs)} runs ({len({r.cell for r in runs})} cells x {len({r.seed for r in runs})} seeds); nothing trained")
        return 0
    result = run_experiment(grid, args.out, plots=args.plots, **options)
    if result.written:
        print((result.out_dir / "results.md").read_text())
        print("wrote " + ", ".join(str(p) for p in result.written))
    finished = len(result.finished)
    print(
        f"{finished} of {len(result.runs)} runs finished ({len(result.trained)} trained and {len(result.resumed)} "
        f"resumed now) in {result.out_dir}"
    )
    if result.failed:
        print("failed runs:\n" + "\n".join(f"  {name}: {err}" for name, err in result.failed.items()), file=sys.stderr)
        return 1
    if finished < len(result.runs):
        print("continue with the same command", file=sys.stderr)
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
    if args.input is not None:
        return _recommend_file(rec, args)
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


def _recommend_file(rec, args: argparse.Namespace) -> int:
    from negrec_fast.batch_recommend import recommend_file
    from negrec_fast.data.prepare import MAPPING_KEYS
    from negrec_fast.errors import ConfigError

    if args.output is None:
        raise ConfigError("--input needs --output (a .parquet or .csv file)")
    options = {key: getattr(args, key) for key in MAPPING_KEYS}
    out = recommend_file(
        rec, args.input, args.output, k=args.k, exclude_seen=args.exclude_seen, exclude_skipped=args.exclude_skipped,
        batch_size=args.batch_size, progress=args.progress, format=args.format, skip_rule=args.skip_rule,
        session_gap=args.session_gap, durations=args.durations, on_bad_rows=args.on_bad_rows, **options,
    )
    print(f"wrote top-{args.k} recommendations of {out.n_sessions} sessions to {out.output} ({out.seconds:.1f}s)")
    if out.n_unknown_plays:
        examples = ", ".join(out.unknown_ids[:5]) + (", ..." if len(out.unknown_ids) > 5 else "")
        print(
            f"{out.n_unknown_plays} of {out.n_plays} plays ({len(out.unknown_ids)} distinct ids: {examples}) are not "
            "in the run's vocabulary and were ignored",
            file=sys.stderr,
        )
    if out.n_empty_sessions:
        print(f"{out.n_empty_sessions} sessions had no known play (recommended as empty sessions)", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from negrec_fast.export import export

    out = export(args.run_dir, args.output, format=args.format, checkpoint=args.checkpoint)
    print(f"wrote {args.format} export of {args.run_dir} to {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from negrec_fast.synthetic import generate_mssd

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    path = generate_mssd(
        args.output, n_sessions=args.sessions, n_items=args.items, seed=args.seed, chart_exponent=args.charts,
        chart_keep_share=args.chart_keep_share, dislike_share=args.dislike_share,
    )
    print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from negrec_fast.report import build_report, load_runs, render_markdown, write_report

    report = build_report(load_runs(args.run_dirs), base=args.base)
    written = write_report(report, args.out, plots=args.plots)
    print(render_markdown(report))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from negrec_fast import __version__
    from negrec_fast.data.cli import _session_gap, add_prepare_parser
    from negrec_fast.data.prepare import FORMATS, MAPPING_KEYS

    parser = argparse.ArgumentParser(
        prog="negrec-fast",
        description="Sequential recommendation that learns from negative feedback (skips).",
    )
    parser.add_argument("--version", action="version", version=f"negrec-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_prepare_parser(sub)

    p = sub.add_parser(
        "train", help="train a model (default: SASRec + skip-InfoNCE on the bundled synthetic data)",
        epilog="several processes or GPUs: torchrun --nproc-per-node N -m negrec_fast train ... "
               "(train.batch_size is then the global batch, split across the processes)",
    )
    p.add_argument("--config", help="TOML config file (sections data, model, loss, train, eval, run)")
    p.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue an interrupted run from its last.pt (overrides: only train.epochs, train.max_steps, ...)",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.epochs=5")
    p.set_defaults(func=_train)

    p = sub.add_parser("tune", help="hyperparameter search with Optuna (pip install 'negrec-fast[tune]')")
    p.add_argument("--config", help="base TOML config (every trial starts from it)")
    p.add_argument(
        "--space", required=True,
        help='TOML search space: one table per config key, e.g. ["train.lr"] low = 1e-4, high = 1e-2, log = true',
    )
    p.add_argument("--trials", type=_positive_int, required=True, help="finished trials the study should have")
    p.add_argument("--study", help="study name (default: the space file's stem)")
    p.add_argument("--dir", help="study folder for the trials' run folders and the summary (default: run.dir/STUDY)")
    p.add_argument(
        "--storage", help="Optuna storage: a SQLite file or an SQLAlchemy URL (default: STUDY_DIR/study.db); "
        "the same command with the same storage continues the study",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--prune-startup", type=int, default=5, metavar="N", help="trials finished before pruning starts")
    p.add_argument("--prune-warmup", type=int, default=0, metavar="EPOCHS", help="epochs of a trial never pruned")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of the base config")
    p.set_defaults(func=_tune)

    p = sub.add_parser(
        "experiment", help="a grid of runs (e.g. models x settings) over seeds, resumable, with a results table",
        epilog='grid TOML: [grid] "model.name" = ["sasrec", "bpr"] (axes; the runs are their product x seeds), '
               'optional [fixed] overrides, [when."model.name=bpr"] overrides for matching cells, seeds = 3, '
               'base = "loss.nce_weight=0". The same command continues an interrupted experiment.',
    )
    p.add_argument(
        "--grid", required=True,
        help="a built-in grid (paper-b: sasrec, bert4rec, bpr, wrmf x loss.nce_weight 0 and default) or a TOML file",
    )
    p.add_argument("--data", help="processed dataset folder (or 'synthetic') of every run: sets data.path")
    p.add_argument("--seeds", type=_positive_int, help="runs per cell, train.seed = 0..N-1 (default: the grid's, else 3)")
    p.add_argument("--out", help="experiment folder: runs/, results.csv, results.md, plots (default: run.dir/GRID)")
    p.add_argument("--config", help="base TOML config of every run")
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="section.key=value",
        help="overrides of every run, e.g. --set train.epochs=20 train.progress=false",
    )
    p.add_argument("--no-plots", dest="plots", action="store_false", help="tables only (no matplotlib needed)")
    p.add_argument("--dry-run", action="store_true", help="check the grid and list its runs; train nothing")
    p.set_defaults(func=_experiment)

    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint and print a metrics table")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "recommend", help="recommend next tracks for a session, or for every session of a file, with a trained run"
    )
    p.add_argument("run_dir")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--session", help="comma-separated original track ids, in play order")
    what.add_argument(
        "--input", metavar="SESSIONS",
        help="sessions file or folder of shards (the formats and column mapping of `prepare`); needs --output",
    )
    p.add_argument("--skipped", help="comma-separated tracks of the session that were skipped (never recommended)")
    p.add_argument("--k", type=_positive_int, default=10)
    p.add_argument(
        "--exclude-seen", action="store_true",
        help="never recommend tracks already in the session (off by default, like eval.exclude_seen)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    batch = p.add_argument_group("sessions from a file (--input)")
    batch.add_argument("--output", help="recs.parquet (a row per session, list columns) or recs.csv (a row per item)")
    batch.add_argument(
        "--exclude-skipped", action=argparse.BooleanOptionalAction, default=True,
        help="never recommend a session's skipped tracks (default: on, like --skipped)",
    )
    batch.add_argument("--batch-size", type=_positive_int, default=256, help="sessions per device batch (default 256)")
    batch.add_argument("--format", default="events", choices=FORMATS, help="input format (default events)")
    batch.add_argument("--skip-rule", default="skip_2", choices=("skip_1", "skip_2", "skip_3", "not_skipped"))
    batch.add_argument("--session-gap", type=_session_gap, default="auto", help="as for prepare")
    batch.add_argument("--durations", help="as for prepare")
    batch.add_argument("--on-bad-rows", default="error", choices=("error", "skip"))
    batch.add_argument("--no-progress", dest="progress", action="store_false")
    cols = p.add_argument_group("column mapping of --input (events, recbole; as for prepare)")
    for key in MAPPING_KEYS:
        named = key in ("session", "user", "item", "timestamp", "position")
        cols.add_argument(
            f"--{key}-column" if named else f"--{key.replace('_', '-')}", dest=key,
            type=float if key == "threshold" else str, default="s" if key == "timestamp_unit" else None,
        )
    p.set_defaults(func=_recommend)

    p = sub.add_parser(
        "export", help="export a run's encoder and query head (torch.export, ONNX or TorchScript) with its item table"
    )
    p.add_argument("run_dir")
    p.add_argument("output", metavar="OUT", help="a new (or empty) folder")
    p.add_argument("--format", choices=("export", "onnx", "torchscript"), default="export")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.set_defaults(func=_export)

    p = sub.add_parser("generate", help="write a synthetic MSSD-format log with planted skip structure")
    p.add_argument("output", help="CSV path (.gz compresses)")
    p.add_argument("--sessions", type=_positive_int, default=20_000)
    p.add_argument("--items", type=_positive_int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--charts", type=float, default=0.0, metavar="EXPONENT",
        help="off-taste plays from one global Zipf(EXPONENT) chart law, mostly skipped (0 = off, e.g. 1.2)",
    )
    p.add_argument("--chart-keep-share", type=float, default=0.0, metavar="SHARE",
                   help="share of sessions that keep chart plays like on-taste ones (chart mode)")
    p.add_argument("--dislike-share", type=float, default=0.0, metavar="SHARE",
                   help="share of its taste's items each session dislikes and skips (item-level skip signal)")
    p.set_defaults(func=_generate)

    p = sub.add_parser("report", help="table (mean ± std over seeds) and plots over finished run folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="report", help="folder for results.csv, results.md and the PNG plots")
    p.add_argument(
        "--base", metavar="section.key=value",
        help="compare each variant with the one equal to it except this value (e.g. loss.nce_weight=0)",
    )
    p.add_argument("--no-plots", dest="plots", action="store_false", help="tables only (no matplotlib needed)")
    p.set_defaults(func=_report)
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
