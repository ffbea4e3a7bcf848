"""Grids of training runs over seeds, resumable, with a results table (``negrec-fast experiment``).

A grid is a built-in name (:data:`BUILTIN_GRIDS`; ``paper-b``: SASRec, BERT4Rec, BPR-MF and
WRMF, each without and with the skip-InfoNCE term) or a TOML file::

    seeds = 3                          # train.seed = 0, 1, 2 (or a list: [0, 5, 7])
    base = "loss.nce_weight=0"         # compare every cell with the one equal to it but this value

    [grid]                             # axes: the cells are their cartesian product
    "model.name" = ["sasrec", "bpr"]
    "loss.nce_weight" = [0, 0.1]
    "data.path" = ["data/mssd", "data/lfm1k"]   # datasets are just another key

    [fixed]                            # applied to every cell
    "train.epochs" = 20

    [when."model.name=bpr"]            # applied to the cells where model.name is "bpr"
    "train.lr" = 0.01

Keys may also be written as TOML tables (``[fixed.train] epochs = 20``). A cell's config is the
base config (``config``), then ``[fixed]``, ``data``, the ``overrides`` (``--set``), the
matching ``[when]`` tables, then the cell's axis values; ``train.seed``, ``run.dir`` and
``run.name`` are the experiment's (a grid or ``--set`` that sets them is an error). Every cell
is checked before anything runs: an unknown key, a wrong type or a combination the config
rejects is one ConfigError that names the file and lists the bad cells; so are a missing
dataset, an existing run folder trained with another config and two cells that would train the
same thing.

Each cell runs once per seed into ``OUT/runs/<cell>-seed<k>``, an ordinary run folder named by
the cell's axis values (``model.name=bpr,loss.nce_weight=0-seed1``). The same command continues
a grid: a run with ``test_metrics.json`` is not run again, one with ``last.pt`` resumes from it,
one stopped before its first checkpoint starts over. After each run ``OUT/results.csv`` and
``OUT/results.md`` (:mod:`negrec_fast.report`: mean ± std over seeds, the change over ``base``
with a paired t-test) are rewritten from the finished runs, and at the end the plots
(with matplotlib). ``OUT/experiment.json`` records the grid and its cells.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, TextIO

from negrec_fast.config import Config, LossConfig, _parse_value, apply_overrides, load_config, read_toml
from negrec_fast.errors import ConfigError
from negrec_fast.report import IGNORED, build_report, load_runs, write_report
from negrec_fast.run_folder import dataset_path, folder_lock, resolve_device, write_json
from negrec_fast.training import RESUME_OVERRIDES, EpochCallback, _samples_negatives, train

BUILTIN_GRIDS: dict[str, dict[str, Any]] = {
    # Seshadri & Knees' comparison: four models, each without and with the skip-InfoNCE term
    # (at the default lambda), each InfoNCE variant compared with its lambda = 0 twin
    "paper-b": {
        "grid": {
            "model.name": ["sasrec", "bert4rec", "bpr", "wrmf"],
            "loss.nce_weight": [0, LossConfig().nce_weight],
        },
        "base": "loss.nce_weight=0",
    },
}
DEFAULT_SEEDS = 3
GRID_FIELDS = ("grid", "fixed", "when", "seeds", "base")
# set by the experiment itself
RESERVED = {
    "train.seed": "the seeds are the grid's `seeds` (or --seeds)",
    "run.dir": "the run folders are OUT/runs/<cell>-seed<k>",
    "run.name": "the run folders are OUT/runs/<cell>-seed<k>",
}
# may differ between invocations for one run folder: they do not change what it trains (the
# planned values are passed on when it resumes)
UNCOMPARED = frozenset(RESUME_OVERRIDES - {"train.epochs", "train.patience"}) | {"run.dir", "run.tensorboard"}
# what a run folder holds before its first checkpoint; such a folder is started over
STARTED = frozenset({"config.toml", "environment.json", "dataset.json", "metrics.jsonl", "best.pt", "tensorboard"})


@dataclass
class Grid:
    """A grid definition: axes (key -> values, in order), overrides and the comparison base."""

    source: str  # the built-in name or the TOML file, for messages
    axes: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    when: dict[str, dict[str, Any]] = field(default_factory=dict)  # "key=value" -> overrides
    seeds: list[int] | None = None
    base: str | None = None

    @property
    def name(self) -> str:
        return self.source if self.source in BUILTIN_GRIDS else Path(self.source).stem


@dataclass
class Run:
    """One run of the experiment: a cell (its axis values) and a seed."""

    values: dict[str, Any]  # axis key -> value
    seed: int
    cell: str  # the cell's name: "model.name=bpr,loss.nce_weight=0" (folder-safe)
    label: str  # for tables and progress: "model.name=bpr loss.nce_weight=0"
    config: Config
    run_dir: Path

    @property
    def state(self) -> str:
        """``new``, ``started`` (no checkpoint yet), ``interrupted`` (``last.pt``) or ``finished``."""
        d = self.run_dir
        if (d / "test_metrics.json").is_file():
            return "finished"
        if (d / "last.pt").is_file():
            return "interrupted"
        return "started" if d.is_dir() and any(d.iterdir()) else "new"


@dataclass
class ExperimentResult:
    """What a call of :func:`run_experiment` did and left in ``out_dir``."""

    out_dir: Path
    runs: list[Run]
    trained: list[Run] = field(default_factory=list)  # started from scratch here
    resumed: list[Run] = field(default_factory=list)
    unfinished: list[Run] = field(default_factory=list)  # stopped by train.max_steps
    failed: dict[str, str] = field(default_factory=dict)  # run folder name -> error
    written: list[Path] = field(default_factory=list)  # results.csv, results.md, plots

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.state == "finished"]


def load_grid(spec: str | Path) -> Grid:
    """A built-in grid by name, or a grid TOML file, checked for shape (keys are checked by :func:`plan`)."""
    if str(spec) in BUILTIN_GRIDS:
        return _parse_grid(str(spec), copy.deepcopy(BUILTIN_GRIDS[str(spec)]))
    path = Path(spec)
    if not path.is_file() and path.suffix != ".toml":
        raise ConfigError(
            f"--grid {str(spec)!r} is neither a built-in grid ({', '.join(BUILTIN_GRIDS)}) nor a TOML file"
        )
    return _parse_grid(str(path), read_toml(path, "grid file"))


def _parse_grid(source: str, raw: dict[str, Any]) -> Grid:
    unknown = sorted(set(raw) - set(GRID_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown entry {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_FIELDS)}")
    axes = _flat(source, "grid", raw.get("grid", {}))
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f'{source}: [grid] "{key}" must be a non-empty list of values, got {values!r}')
    when_raw = raw.get("when", {})
    if not isinstance(when_raw, dict):
        raise ConfigError(f'{source}: [when] must be tables such as [when."model.name=bpr"], got {when_raw!r}')
    when = {}
    for condition, table in when_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f'{source}: [when."{condition}"] must be a table of overrides, got {table!r}')
        when[condition] = _flat(source, f'when."{condition}"', table)
    seeds = raw.get("seeds")
    if seeds is not None:
        seeds = _seed_list(f"{source}: seeds", seeds)
    base = raw.get("base")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f'{source}: base must be a string "section.key=value", got {base!r}')
    return Grid(source, axes, _flat(source, "fixed", raw.get("fixed", {})), when, seeds, base)


def _flat(source: str, table: str, raw: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.01}`` from ``{"train.lr": 0.01}`` or ``{"train": {"lr": 0.01}}``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{table}] must be a table of section.key = value, got {raw!r}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = prefix + name
        if isinstance(value, dict):
            out.update(_flat(source, table, value, key + "."))
        elif key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f'{source}: [{table}] "{key}" is not a config key; write section.key, e.g. "train.lr"')
        else:
            out[key] = value
    return out


def _seed_list(where: str, seeds: Any) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"{where} must be >= 1, got {seeds}")
        return list(range(seeds))
    ok = isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not ok or len(set(seeds)) < len(seeds) or any(not 0 <= s < 2**32 for s in seeds):
        raise ConfigError(f"{where} must be a count (3 = seeds 0, 1, 2) or a list of distinct seeds, got {seeds!r}")
    return list(seeds)


def plan(
    grid: Grid,
    out: str | Path,
    *,
    config: str | Path | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
    seeds: int | None = None,
) -> list[Run]:
    """Every run of the grid (cells x seeds, cells in the axes' order), each with its checked
    config; a ConfigError lists every problem before anything runs (see the module docstring)."""
    where = grid.source
    base_raw = read_toml(config, "config file") if config is not None else {}
    if config is not None:  # its own keys checked first, so that an error names the file
        try:
            Config.from_dict(base_raw)
        except ConfigError as exc:
            raise ConfigError(f"{config}: {exc}") from None
    for item in overrides:
        _check_key("--set", item.partition("=")[0].strip(), reserved=True)
    for key in grid.axes:
        _check_key(f"{where}: [grid]", key, reserved=True)
        if key in IGNORED:
            raise ConfigError(
                f"{where}: [grid] {key!r} does not change what is trained; the report could not tell its cells apart"
            )
    for key in grid.fixed:
        _check_key(f"{where}: [fixed]", key, reserved=True)
    conditions = {}
    for condition, table in grid.when.items():
        key, sep, text = condition.partition("=")
        if not sep:
            raise ConfigError(
                f'{where}: [when."{condition}"] must name a condition section.key=value, e.g. "model.name=bpr"'
            )
        _check_key(f'{where}: [when."{condition}"]', key.strip(), reserved=False)
        conditions[condition] = (key.strip(), _parse_value(text.strip()))
        for k in table:
            _check_key(f'{where}: [when."{condition}"]', k, reserved=True)
            if k in grid.axes:
                raise ConfigError(f'{where}: [when."{condition}"] sets {k!r}, an axis of the grid')
    given = {"--set": [i.partition("=")[0].strip() for i in overrides], "[fixed]": list(grid.fixed)}
    if data is not None:
        given["--data"] = ["data.path"]
    for what, keys in given.items():
        for key in keys:
            if key in grid.axes:
                raise ConfigError(f"{what} sets {key!r}, an axis of the grid {where}; change the grid instead")
    seed_list = list(range(seeds)) if seeds is not None else grid.seeds or list(range(DEFAULT_SEEDS))

    common = _with_values(base_raw, grid.fixed)
    if data is not None:
        common = _with_values(common, {"data.path": data})
    common = apply_overrides(common, list(overrides))
    cells = [dict(zip(grid.axes, combo)) for combo in product(*grid.axes.values())] or [{}]
    out = Path(out)
    runs, bad, matched, seen = [], [], set(), {}
    names = _cell_names(cells)
    for values, name in zip(cells, names):
        raw = common
        resolved = _resolved(_with_values(common, values))
        for condition, (key, value) in conditions.items():
            if _same(values[key] if key in values else resolved(key), value):
                raw = _with_values(raw, grid.when[condition])
                matched.add(condition)
        raw = _with_values(raw, values)
        label = " ".join(f"{k}={_text(v)}" for k, v in values.items()) or "all runs"
        try:
            cfg = Config.from_dict(raw)
        except ConfigError as exc:
            bad.append(f"  {label}: {exc}")
            continue
        key = repr(sorted((k, repr(v)) for k, v in cfg.to_flat_dict().items() if k not in IGNORED))
        if key in seen:
            raise ConfigError(f"{where}: cells {seen[key]} and {label} give the same config; remove one")
        seen[key] = label
        for seed in seed_list:
            run_name = f"{name}-seed{seed}"
            run_cfg = Config.from_dict(
                _with_values(raw, {"train.seed": seed, "run.dir": str(out / "runs"), "run.name": run_name})
            )
            runs.append(Run(values, seed, name, label, run_cfg, out / "runs" / run_name))
    if bad:
        raise ConfigError(f"{where}: {len(bad)} of {len(cells)} cells are not valid configs:\n" + _listing(bad))
    unmatched = sorted(set(conditions) - matched)
    if unmatched:
        raise ConfigError(f"{where}: [when] {', '.join(map(repr, unmatched))} matches no cell of the grid")
    if grid.base is not None:
        _check_base(grid)
    for device in sorted({r.config.train.device for r in runs}):
        resolve_device(device)  # "cuda" without CUDA fails here, not in every run
    _check_datasets(runs)
    _check_run_folders(runs)
    return runs


def _check_key(where: str, key: str, *, reserved: bool) -> None:
    section, dot, name = key.partition(".")
    if not dot:
        raise ConfigError(f"{where}: {key!r} is not a config key; write section.key, e.g. train.lr")
    defaults = Config().to_dict()
    if name not in defaults.get(section, {}):
        try:  # the config's own message: unknown section or key, with the allowed ones
            Config.from_dict({section: {name: None}})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if reserved and key in RESERVED:
        raise ConfigError(f"{where}: {key} cannot be set: {RESERVED[key]}")


def _check_base(grid: Grid) -> None:
    key, sep, text = grid.base.partition("=")
    key = key.strip()
    if not sep or key not in grid.axes:
        raise ConfigError(
            f"{grid.source}: base {grid.base!r} must be section.key=value with a key of [grid] ({', '.join(grid.axes)})"
        )
    value = _parse_value(text.strip())
    if not any(_same(v, value) for v in grid.axes[key]):
        raise ConfigError(
            f"{grid.source}: base {grid.base!r}: {value!r} is not one of the values of {key!r} {grid.axes[key]!r}"
        )


def _check_datasets(runs: list[Run]) -> None:
    """Each dataset folder exists, and its catalogue is larger than the sampled negatives and candidates."""
    bad = []
    n_items: dict[str, int] = {}
    for run in runs:
        cfg = run.config
        if cfg.data.path == "synthetic":  # built on first use
            continue
        if cfg.data.path not in n_items:
            from negrec_fast.data import load_dataset

            n_items[cfg.data.path] = load_dataset(dataset_path(cfg, progress=False)).n_items
        n = n_items[cfg.data.path]
        for key, value in (("loss.n_negatives", cfg.loss.n_negatives if _samples_negatives(cfg) else 0),
                           ("eval.sampled_candidates", cfg.eval.sampled_candidates)):
            if value >= n:
                catalogue = f"the catalogue ({n} items in {cfg.data.path})"
                bad.append(f"  {run.label}: {key} ({value}) must be smaller than {catalogue}")
    if bad:
        raise ConfigError("cells that cannot run on their dataset:\n" + _listing(bad))


def _check_run_folders(runs: list[Run]) -> None:
    """An existing run folder must have been started with the run's config."""
    bad = []
    for run in runs:
        d = run.run_dir
        if run.state == "new":
            continue
        if not (d / "config.toml").is_file():
            bad.append(f"  {d}: not a run folder (no config.toml)")
            continue
        try:
            recorded = load_config(d / "config.toml").to_flat_dict()
        except ConfigError as exc:
            bad.append(f"  {d}: {exc}")
            continue
        planned = run.config.to_flat_dict()
        changed = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in planned.items()
                   if k not in UNCOMPARED and recorded.get(k) != v and not (k == "data.path" and _same_dataset(d, v))]
        if changed:
            bad.append(f"  {d}: {'; '.join(changed)}")
        elif run.state == "started" and any(p.name not in STARTED for p in d.iterdir() if not p.name.startswith(".")):
            bad.append(f"  {d}: has no checkpoint to resume from, and files a run folder does not hold")
    if bad:
        raise ConfigError(
            f"{len(bad)} run folders of this experiment do not hold its runs (started with another config? use "
            "another --out, or delete such a folder to run it again):\n" + _listing(bad)
        )


def _same_dataset(run_dir: Path, path: str) -> bool:
    """Whether ``path`` is the dataset folder the run recorded (the same folder written another way)."""
    try:
        recorded = json.loads((run_dir / "dataset.json").read_text())["path"]
    except (OSError, ValueError, KeyError):
        return False
    return path != "synthetic" and Path(path).resolve() == Path(recorded).resolve()


def default_out(grid: Grid, *, config: str | Path | None = None, overrides: Sequence[str] = ()) -> Path:
    """``run.dir/GRID_NAME``: the experiment folder when none is given (``runs/paper-b``)."""
    raw = read_toml(config, "config file") if config is not None else {}
    raw = apply_overrides(raw, [o for o in overrides if o.partition("=")[0].strip() == "run.dir"])
    return Path(str(raw.get("run", {}).get("dir", Config().run.dir))) / grid.name


def run_experiment(
    grid: Grid | str | Path,
    out: str | Path | None = None,
    *,
    config: str | Path | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
    seeds: int | None = None,
    plots: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    stream: TextIO | None = None,
) -> ExperimentResult:
    """Plan the grid (:func:`plan`), run what is not finished, write the report; progress on
    ``stream`` (stderr). ``out`` defaults to ``run.dir/GRID_NAME``. A run that fails (ConfigError,
    a diverged loss) is reported and the others still run; rerun the command to continue."""
    stream = stream or sys.stderr
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    out = Path(out) if out is not None else default_out(grid, config=config, overrides=overrides)
    runs = plan(grid, out, config=config, data=data, overrides=overrides, seeds=seeds)
    out.mkdir(parents=True, exist_ok=True)
    result = ExperimentResult(out, runs)
    with folder_lock(out, f"experiment folder {out} is in use by another negrec-fast experiment"):
        write_json(out / "experiment.json", _record(grid, runs, config, data, overrides))
        total = len(runs)
        for i, run in enumerate(runs, start=1):
            if _run_one(run, f"[{i}/{total}] {run.label} seed {run.seed}", result, callbacks, stream):
                result.written = _write_results(grid, result, plots=False)  # the tables so far
        if plots and not _has_matplotlib():
            print("plots skipped: they need matplotlib (pip install 'negrec-fast[report]')", file=stream)
            plots = False
        result.written = _write_results(grid, result, plots=plots)
    return result


def _run_one(run: Run, head: str, result: ExperimentResult, callbacks, stream: TextIO) -> bool:
    """Train, resume or skip ``run``; returns whether it finished in this call."""
    state = run.state
    metric = run.config.train.early_stopping_metric
    if state == "finished":
        test = json.loads((run.run_dir / "test_metrics.json").read_text())["test"]
        print(f"{head}: finished before, {metric} {test.get(metric, float('nan')):.4f}", file=stream, flush=True)
        return False
    verbose = run.config.train.progress
    action = {"interrupted": "resuming from last.pt", "started": "starting over (no checkpoint yet)"}.get(state)
    if verbose or action:
        print(f"{head}: {action or 'training'} ...", file=stream, flush=True)
    else:
        print(f"{head} ... ", end="", file=stream, flush=True)
    tic = time.perf_counter()
    try:
        if state == "interrupted":
            recorded = load_config(run.run_dir / "config.toml").to_flat_dict()
            changes = [  # train.threads 0 (torch's count) keeps the count the run started with
                f"{k}={_text(v)}" for k, v in run.config.to_flat_dict().items()
                if k in UNCOMPARED & RESUME_OVERRIDES and v != recorded[k] and not (k == "train.threads" and v == 0)
            ]
            out = train(resume=run.run_dir, overrides=changes, callbacks=callbacks)
        else:
            if state == "started":
                _clear(run.run_dir)
            out = train(run.config, callbacks=callbacks)
    except (ConfigError, FloatingPointError) as exc:
        result.failed[run.run_dir.name] = f"{type(exc).__name__}: {exc}"
        print(f"{head + ': ' if verbose or action else ''}failed: {exc}", file=stream, flush=True)
        return False
    (result.resumed if state == "interrupted" else result.trained).append(run)
    seconds = time.perf_counter() - tic
    prefix = f"{head}: " if verbose or action else ""
    if not out.completed:
        result.unfinished.append(run)
        print(f"{prefix}stopped by train.max_steps after {seconds:.1f}s (rerun to continue)", file=stream, flush=True)
        return False
    value = (out.test or {}).get(metric, float("nan"))
    print(f"{prefix}done in {seconds:.1f}s, {metric} {value:.4f}", file=stream, flush=True)
    return True


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _listing(lines: list[str], limit: int = 12) -> str:
    """Lines of an error message, at most ``limit`` of them (then how many more)."""
    lines = list(dict.fromkeys(lines))
    more = [f"  ... and {len(lines) - limit} more"] if len(lines) > limit else []
    return "\n".join(lines[:limit] + more)


def _clear(run_dir: Path) -> None:
    """Empty a run folder that has no checkpoint yet (only the files :data:`STARTED` names, checked by plan)."""
    import shutil

    for p in run_dir.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _write_results(grid: Grid, result: ExperimentResult, *, plots: bool) -> list[Path]:
    """results.csv / results.md (and the plots) over the finished runs, labelled by their cells."""
    finished = result.finished
    if not finished:
        return []
    report = build_report(load_runs([r.run_dir for r in finished]), base=grid.base)
    by_dir = {r.run_dir: r for r in finished}
    labels = {}
    for variant, row in zip(report.variants, report.rows):
        labels[variant.label] = variant.label = by_dir[variant.runs[0].path].label.replace(" ", ", ")
        row["variant"] = variant.label
    for row in report.rows:
        row["base"] = labels.get(row["base"], row["base"])
    return write_report(report, result.out_dir, plots=plots)


def _record(grid: Grid, runs: list[Run], config, data, overrides) -> dict[str, Any]:
    return {
        "grid": grid.source, "axes": grid.axes, "fixed": grid.fixed, "when": grid.when, "base": grid.base,
        "config": str(config) if config is not None else None, "data": data, "overrides": list(overrides),
        "seeds": sorted({r.seed for r in runs}),
        "runs": [{"cell": r.label, "seed": r.seed, "run_dir": str(r.run_dir)} for r in runs],
    }


def _cell_names(cells: list[dict[str, Any]]) -> list[str]:
    """Folder-safe, deterministic cell names: ``key=value`` joined by commas; a value with other
    characters keeps its readable tail plus a hash of the whole value."""
    names = []
    for values in cells:
        parts = [f"{k}={_token(_text(v))}" for k, v in values.items()]
        name = ",".join(parts) or "all"
        if len(name) > 150:
            name = name[:120] + "-" + _hash(name)
        names.append(name)
    return names


def _token(text: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._+@-]{1,40}", text):
        return text
    tail = re.sub(r"[^A-Za-z0-9._+@-]+", "_", Path(text).name if "/" in text else text).strip("_")[-24:]
    return f"{tail}~{_hash(text)}" if tail else _hash(text)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _text(value: Any) -> str:
    """A value as in ``section.key=value`` overrides (strings bare, lists as TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) if not isinstance(v, str) else json.dumps(v) for v in value) + "]"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    """Equal as config values (0 == 0.0, but true != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _resolved(raw: dict[str, Any]):
    """``key -> value`` of the config ``raw`` gives (loss.rec follows model.name as in Config), or
    of ``raw`` and the defaults where that config is not valid (yet: a [when] table may fix it)."""
    try:
        flat = Config.from_dict(raw).to_flat_dict()
        return flat.__getitem__
    except ConfigError:
        pass

    def lookup(key: str) -> Any:
        section, _, name = key.partition(".")
        values = raw.get(section, {})
        return values[name] if name in values else getattr(getattr(Config(), section), name)

    return lookup


def _with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items()}
    for key, value in values.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out
