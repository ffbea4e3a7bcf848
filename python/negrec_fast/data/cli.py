"""The `prepare` subcommand: `negrec-fast prepare --format mssd INPUT OUTPUT_DIR [options]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from negrec_fast.data.prepare import PREPARE_FORMATS, prepare
from negrec_fast.errors import NegrecError


def _max_length(text: str) -> int | str | None:
    """`--max-length 0` or `none` disables cutting long sessions; `auto` is the format's default."""
    if text.lower() in ("0", "none"):
        return None
    return "auto" if text.lower() == "auto" else int(text)


def _session_gap(text: str) -> int | str | None:
    """`--session-gap none` keeps each user's history one sequence; `auto` is the format's default."""
    if text.lower() == "none":
        return None
    return "auto" if text.lower() == "auto" else int(text)


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers `prepare` on an argparse subparsers object; sets ``func=run_prepare``."""
    p = subparsers.add_parser(
        "prepare",
        help="turn raw session logs into a processed dataset folder",
        description="Parse raw logs (MSSD, LFM-1K, LFM-2B, event tables, RecBole .inter, Yambda Parquet), label "
        "skips, filter, encode items and compute the evaluation split.",
    )
    p.add_argument("input", metavar="INPUT", help="a file (plain or .gz) or a folder of shards")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    p.add_argument("--format", required=True, choices=PREPARE_FORMATS)
    p.add_argument("--skip-rule", default="skip_2", choices=("skip_1", "skip_2", "skip_3", "not_skipped"), help="MSSD skip label")
    p.add_argument("--min-length", type=int, default=6, help="minimum plays of a kept session/full window (default 6)")
    p.add_argument("--max-length", type=_max_length, default="auto", help="cut longer sessions into windows (0 = no cut; default 20, no cut for recbole/yambda)")
    p.add_argument("--min-remainder", type=int, default=5, help="minimum plays of the last window of a cut session (default 5)")
    p.add_argument("--require-skip", action=argparse.BooleanOptionalAction, default=None, help="drop sessions without a skip (default: on for mssd)")
    p.add_argument("--max-sessions", type=int, default=None, help="keep a seeded uniform sample of this many sessions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--session-gap", type=_session_gap, default="auto",
        help="inactivity gap (s) cutting user histories into sessions (none = one per user; default 1800, none for recbole/yambda)",
    )
    p.add_argument("--durations", default=None, help="track durations table (track_id, duration_seconds) to derive skips")
    p.add_argument("--split", default="leave-last-out", choices=("leave-last-out", "temporal"))
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--on-bad-rows", default="error", choices=("error", "skip"))
    p.add_argument(
        "--memory-limit", metavar="SIZE",
        help="prepare in bounded memory: the ingest's data stays within SIZE (e.g. 512M, 4G; K/M/G/T = KiB/MiB/GiB/TiB; "
        "at least 1M), spilling to a temporary folder beside OUTPUT_DIR; same output, slower. The Python "
        "interpreter and libraries (~75 MB) come on top; the item vocabulary must fit in half of SIZE",
    )
    cols = p.add_argument_group("column mapping (events, recbole)")
    cols.add_argument("--session-column", dest="session")
    cols.add_argument("--user-column", dest="user")
    cols.add_argument("--item-column", dest="item")
    cols.add_argument("--timestamp-column", dest="timestamp")
    cols.add_argument("--position-column", dest="position")
    cols.add_argument("--timestamp-unit", default="s", choices=("s", "ms"))
    cols.add_argument("--skip-column")
    cols.add_argument("--ratio-column")
    cols.add_argument("--play-time-column")
    cols.add_argument("--duration-column")
    cols.add_argument("--rating-column")
    cols.add_argument("--threshold", type=float)
    cols.add_argument("--delimiter")
    yam = p.add_argument_group(
        "yambda",
        "INPUT is a Yambda flat-layout folder (flat/50m, ...): its listens.parquet and, when present, "
        "dislikes.parquet are read (a listens.parquet alone: no dislikes). One sequence per user (uid) in "
        "timestamp order, ties in file order (listens before dislikes); no cut unless "
        "--session-gap is given. A dislike flags the listen it interrupted (latest listen of the user, same track, "
        "at most the track's length + 5 s before) as skipped, else adds a skipped play at its time. Likes, "
        "unlikes, undislikes and the sequential layout are not read.",
    )
    yam.add_argument(
        "--skip-below", type=float, metavar="PCT",
        help="a listen is skipped when played_ratio_pct < PCT (default 50: Yambda's Listen+ is a listen of over half "
        "the track, and its benchmark counts played_ratio_pct >= 50 as listened)",
    )
    yam.add_argument("--organic-only", action="store_true", help="keep only events with is_organic = 1 (not recommendation-driven)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_prepare)
    return p


def run_prepare(args: argparse.Namespace) -> int:
    """Runs `prepare` from parsed arguments; prints a one-line summary. Returns the exit code."""
    options = {
        k: getattr(args, k)
        for k in (
            "skip_rule", "min_length", "max_length", "min_remainder", "require_skip", "max_sessions", "seed", "session_gap",
            "durations", "split", "valid_fraction", "test_fraction", "on_bad_rows", "progress", "overwrite",
            "skip_below", "organic_only", "memory_limit",
        )
    }
    if args.format in ("events", "recbole"):
        for k in (
            "session", "user", "item", "timestamp", "position", "timestamp_unit", "skip_column", "ratio_column",
            "play_time_column", "duration_column", "rating_column", "threshold", "delimiter",
        ):
            options[k] = getattr(args, k)
    try:
        dataset = prepare(args.input, args.output_dir, format=args.format, **options)
    except (NegrecError, ValueError, OSError) as e:
        print(f"negrec-fast prepare: error: {e}", file=sys.stderr)
        return 1
    m = dataset.manifest
    print(
        f"{args.output_dir}: {m['n_rows']} rows, {m['n_sessions']} sessions, {m['n_items']} items, "
        f"skip rate {m['skip_rate']:.1%}, {m['n_bad_rows']} bad rows"
    )
    return 0
