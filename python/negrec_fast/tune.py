"""Hyperparameter search with Optuna over any config key (``negrec-fast tune``).

The search space is a TOML file with one table per config key::

    ["train.lr"]
    low = 1e-4
    high = 1e-2
    log = true

    ["model.name"]
    choices = ["sasrec", "gru4rec"]

    ["train.batch_size"]
    low = 64
    high = 512
    step = 64

A range is int or float as its config key is (``[train] lr = {low = 1e-4, high = 1e-2}`` is
the same as ``["train.lr"]``). Every key and value is checked against the base config before
the first trial. Each trial is an ordinary run folder ``STUDY_DIR/trial-NNNN`` trained by
:func:`negrec_fast.train`; after each epoch it reports the run's best validation score so far
(``train.early_stopping_metric``, lower is better for ``skip_MRR@10``) and the median pruner
may end it there, as early stopping would (its best checkpoint is tested). The study lives in
an Optuna storage (default: SQLite ``STUDY_DIR/study.db``): the same command continues it,
finished trials count toward ``trials`` and are not re-run, and a trial that was interrupted
is re-run with its parameters. After each trial ``study.csv``, ``summary.md`` and
``best.toml`` (the best trial's full config, for ``negrec-fast train --config``) are rewritten.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_type_hints

from negrec_fast.config import Config, read_toml, to_toml
from negrec_fast.errors import ConfigError
from negrec_fast.run_folder import dataset_path, folder_lock
from negrec_fast.training import _as_config, train

SPEC_FIELDS = ("low", "high", "step", "log", "choices")
# set by tune itself: the trial's run folder and the objective
FIXED_KEYS = {
    "run.dir": "each trial's run folder is STUDY_DIR/trial-NNNN",
    "run.name": "each trial's run folder is STUDY_DIR/trial-NNNN",
    "train.early_stopping_metric": "it is the objective of the study",
}
# may differ between invocations of one study: they do not change what a trial trains
UNCOMPARED = frozenset(
    {"train.progress", "train.prefetch", "train.device", "train.threads", "run.tensorboard", "run.dir", "run.name"}
)


@dataclass(frozen=True)
class Param:
    """One searched config key: a range (``kind`` int or float) or a list of ``choices``."""

    key: str
    kind: str  # "int", "float" or "categorical"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass
class TuneResult:
    """What a call of :func:`tune` left in the study folder."""

    study_dir: Path
    storage: str
    study_name: str
    rows: list[dict[str, Any]]  # the rows of study.csv
    best_trial: int | None  # None until a trial completes
    best_value: float | None
    best_config: Path | None  # best.toml


def tune(
    config: Config | dict | str | Path | None,
    space: str | Path,
    *,
    trials: int,
    overrides: list[str] | tuple[str, ...] = (),
    study_name: str | None = None,
    study_dir: str | Path | None = None,
    storage: str | None = None,
    seed: int = 0,
    prune_startup: int = 5,
    prune_warmup: int = 0,
) -> TuneResult:
    """Search ``space`` around the base ``config`` (+ ``overrides``) until the study has
    ``trials`` finished trials; see the module docstring.

    ``study_name`` defaults to the space file's stem, ``study_dir`` to ``run.dir/study_name``,
    ``storage`` (an SQLAlchemy URL or a SQLite file path) to ``STUDY_DIR/study.db``. The
    median pruner prunes from the ``prune_startup + 1``-th trial on, after ``prune_warmup`` epochs.
    """
    optuna = _import_optuna()
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    if prune_startup < 0 or prune_warmup < 0:
        raise ConfigError(f"prune_startup and prune_warmup must be >= 0, got {prune_startup} and {prune_warmup}")
    base = _as_config(config, overrides)
    params = load_space(space, base)
    name = study_name or Path(space).stem
    folder = Path(study_dir) if study_dir is not None else Path(base.run.dir) / name
    url = _storage_url(storage, folder)
    metric = base.train.early_stopping_metric
    direction = "minimize" if metric.startswith("skip_") else "maximize"
    if not any(p.key.startswith("data.") for p in params):
        dataset_path(base, progress=base.train.progress)  # a missing dataset fails before any trial
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, f"study folder {folder} is in use by another negrec-fast tune process"):
        study = optuna.create_study(study_name=name, storage=url, direction=direction, load_if_exists=True)
        _check_same_study(study, base, params, folder, url, direction)
        finished = _retry_interrupted(study)
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
        study.pruner = optuna.pruners.MedianPruner(n_startup_trials=prune_startup, n_warmup_steps=prune_warmup)
        objective = _Objective(base.to_dict(), params, folder, metric, optuna)
        try:
            if trials > finished:
                study.optimize(
                    objective,
                    n_trials=trials - finished,
                    catch=(ConfigError, FloatingPointError),
                    callbacks=[lambda study, _: write_outputs(study, base, params, folder, url)],
                )
        finally:
            result = write_outputs(study, base, params, folder, url)
    return result


def load_space(path: str | Path, base: Config) -> list[Param]:
    """The searched keys of a space file, each checked against ``base``: the key exists, the
    bounds or choices have its type and each one alone gives a valid config."""
    path = Path(path)
    raw = read_toml(path, "search space file")
    specs: dict[str, dict[str, Any]] = {}
    _flatten(raw, "", specs, path)
    if not specs:
        raise ConfigError(
            f'{path}: no parameters to search; add tables such as ["train.lr"] with low = 1e-4, high = 1e-2'
        )
    base_raw = base.to_dict()
    return [_param(f'{path}: ["{key}"]', key, spec, base_raw) for key, spec in specs.items()]


def _flatten(table: dict[str, Any], prefix: str, out: dict[str, dict[str, Any]], path: Path) -> None:
    for name, value in table.items():
        key = prefix + name
        if not isinstance(value, dict):
            raise ConfigError(
                f'{path}: {key!r} must be a table of low/high/step/log or choices, e.g. ["train.lr"] '
                f"low = 1e-4 high = 1e-2; got {value!r}"
            )
        if "." not in key and not value.keys() & set(SPEC_FIELDS):  # a [section] of keys
            _flatten(value, key + ".", out, path)
        elif key in out:
            raise ConfigError(f"{path}: {key!r} is given twice")
        else:
            out[key] = value


def _param(where: str, key: str, spec: dict[str, Any], base_raw: dict[str, dict[str, Any]]) -> Param:
    section, dot, name = key.partition(".")
    if not dot:
        raise ConfigError(f"{where}: a searched key is section.key, e.g. train.lr")
    if name not in base_raw.get(section, {}):
        try:  # the config's own message: unknown section or key, with the allowed ones
            Config.from_dict({section: {name: None}})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if key in FIXED_KEYS:
        raise ConfigError(f"{where}: {key} cannot be searched: {FIXED_KEYS[key]}")
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_FIELDS)}")
    if "choices" in spec:
        return _choices(where, key, spec, base_raw)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: give a range (low and high; optional step or log = true) or a list of choices")
    kind = get_type_hints(type(getattr(Config(), section)))[name]
    if kind not in (int, float):
        kind_name = getattr(kind, "__name__", kind)
        raise ConfigError(f"{where}: {key} is {kind_name}, not a number: search it with choices = [...]")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for field, value in (("low", low), ("high", high), ("step", step)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if value is not None and not (number and (kind is float or isinstance(value, int))):
            wanted = "an integer" if kind is int else "a number"
            raise ConfigError(f"{where}: {field} must be {wanted} ({key} is {kind.__name__}), got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: low ({low!r}) must be below high ({high!r})")
    if log and step is not None:
        raise ConfigError(f"{where}: step and log = true cannot be combined")
    if log and low <= 0:
        raise ConfigError(f"{where}: log = true needs low > 0, got {low!r}")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step!r}")
    for value in (low, high):
        _check_value(where, key, value, base_raw)
    if kind is float:
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Param(key, kind.__name__, low=low, high=high, step=step, log=log)


def _choices(where: str, key: str, spec: dict[str, Any], base_raw: dict[str, dict[str, Any]]) -> Param:
    extra = sorted(set(spec) - {"choices"})
    if extra:
        raise ConfigError(f"{where}: choices cannot be combined with {', '.join(extra)}")
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
    for value in choices:
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"{where}: each choice must be a number, string or boolean, got {value!r}")
        _check_value(where, key, value, base_raw)
    if len({(type(v), v) for v in choices}) < len(choices):
        raise ConfigError(f"{where}: choices has duplicates: {choices!r}")
    return Param(key, "categorical", choices=list(choices))


def _check_value(where: str, key: str, value: Any, base_raw: dict[str, dict[str, Any]]) -> None:
    try:
        Config.from_dict(_with_values(base_raw, {key: value}))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {value!r} does not give a valid config: {exc}") from None


def _with_values(base_raw: dict[str, dict[str, Any]], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    raw = copy.deepcopy(base_raw)
    for key, value in values.items():
        section, _, name = key.partition(".")
        raw[section][name] = value
    return raw


class _Objective:
    """One trial: train a run folder, report each epoch's best score so far, maybe prune."""

    def __init__(self, base_raw, params: list[Param], folder: Path, metric: str, optuna):
        self.base_raw, self.params, self.folder, self.metric, self.optuna = base_raw, params, folder, metric, optuna

    def __call__(self, trial) -> float:
        raw = _with_values(self.base_raw, {p.key: p.suggest(trial) for p in self.params})
        raw["run"].update(dir=str(self.folder), name=f"trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", str(self.folder / raw["run"]["name"]))
        pruned_after: list[int] = []

        def report(record: dict[str, Any], best: dict[str, Any]) -> bool:
            if "batch" in record or not math.isfinite(best["score"]):  # pruning looks at epoch ends
                return False
            trial.report(best["score"], record["epoch"])
            if trial.should_prune():
                pruned_after.append(record["epoch"])
                return True
            return False

        try:
            result = train(raw, callbacks=[report])
        except (ConfigError, FloatingPointError) as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("epochs", sum("batch" not in h for h in result.history))
        trial.set_user_attr("best_epoch", result.best_epoch)
        if pruned_after:
            raise self.optuna.TrialPruned(f"pruned after epoch {pruned_after[0]}")
        score = result.best_valid.get(self.metric, math.nan) if result.best_valid else math.nan
        if not math.isfinite(score):
            trial.set_user_attr("error", f"validation {self.metric} is {score} (no validation targets?)")
        return score


def write_outputs(study, base: Config, params: list[Param], folder: Path, url: str) -> TuneResult:
    """Rewrite ``study.csv``, ``summary.md`` and (once a trial completed) ``best.toml``."""
    from optuna.trial import TrialState

    metric = base.train.early_stopping_metric
    keys = [p.key for p in params]
    rows = [_row(t, keys) for t in study.trials]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial", "state", "value", *keys])
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(folder / "study.csv", text.getvalue())

    lower = metric.startswith("skip_")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = (min if lower else max)(complete, key=lambda t: t.value) if complete else None
    best_path = None
    if best is not None:
        best_path = folder / "best.toml"
        cfg = Config.from_dict(_with_values(base.to_dict(), best.params))
        header = f"# best trial {best.number} of study {study.study_name!r}: validation {metric} = {best.value}\n"
        _write_atomic(best_path, header + f"# run folder: {best.user_attrs.get('run_dir')}\n" + to_toml(cfg))
    _write_atomic(folder / "summary.md", _summary(study, rows, keys, metric, lower, best, url))
    return TuneResult(
        study_dir=folder,
        storage=url,
        study_name=study.study_name,
        rows=rows,
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_config=best_path,
    )


def _row(trial, keys: list[str]) -> dict[str, Any]:
    attrs = trial.user_attrs
    note = attrs.get("error", "")
    if trial.state.name == "FAIL" and not note:
        note = "interrupted"
    if "retry_of" in attrs:
        note = (note + "; " if note else "") + f"re-run of trial {attrs['retry_of']}"
    return {
        "trial": trial.number,
        "state": trial.state.name,
        "value": trial.value if trial.value is not None else "",
        **{key: trial.params.get(key, "") for key in keys},
        "epochs": attrs.get("epochs", ""),
        "best_epoch": attrs.get("best_epoch", ""),
        "run_dir": attrs.get("run_dir", ""),
        "note": note,
    }


def _summary(study, rows, keys, metric, lower, best, url) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    order = {"COMPLETE": 0, "PRUNED": 1}

    def rank(row):
        value = row["value"] if row["value"] != "" else math.inf * (1 if lower else -1)
        return order.get(row["state"], 2), value if lower else -value, row["trial"]

    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"- objective: validation {metric} ({'lower' if lower else 'higher'} is better)",
        f"- storage: `{url}`",
        "- trials: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())),
        f"- best: trial {best.number}, {metric} = {best.value:.4f} -> `best.toml`" if best
        else "- best: none completed yet",
        "",
        "| trial | state | " + " | ".join([metric, *keys]) + " | epochs | note |",
        "|" + "---|" * (len(keys) + 5),
    ]
    for row in sorted(rows, key=rank):
        cells = [row["trial"], row["state"], _fmt(row["value"]), *(_fmt(row[k]) for k in keys), row["epochs"],
                 row["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _check_same_study(study, base: Config, params: list[Param], folder: Path, url: str, direction: str) -> None:
    """Record the base config and space in a new study; refuse to continue one started with others."""
    flat = base.to_flat_dict()
    setup = {
        "base": {k: v for k, v in flat.items() if k not in UNCOMPARED},
        "space": [asdict(p) for p in params],
    }
    where = f"study {study.study_name!r} in {url}"
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"{where} {study.direction.name.lower()}s its objective; "
            f"{base.train.early_stopping_metric} needs {direction}"
        )
    recorded = study.user_attrs.get("negrec_fast")
    if recorded is None:
        if any(folder.glob("trial-*")):
            raise ConfigError(
                f"study folder {folder} already has trial folders, but {where} is "
                "new; continue with the storage it was run with (--storage), or use another --dir"
            )
        study.set_user_attr("negrec_fast", setup)
        return
    changed = [
        f"{k}: {recorded['base'].get(k)!r} -> {v!r}" for k, v in setup["base"].items() if recorded["base"].get(k) != v
    ]
    if changed:
        raise ConfigError(
            f"{where} was started with another base config ({'; '.join(changed)}); "
            "continue it with the same config, or start another with --study NAME"
        )
    if recorded["space"] != setup["space"]:
        before = {p["key"]: p for p in recorded["space"]}
        after = {p["key"]: p for p in setup["space"]}
        diff = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        raise ConfigError(
            f"{where} was started with another search space (differs in {', '.join(diff)}); "
            "continue it with the same space, or start another with --study NAME"
        )


def _retry_interrupted(study) -> int:
    """Fail trials left running by an interrupted process, queue each interrupted trial's
    parameters once more, and return how many trials are finished (complete, pruned, or
    failed with a recorded error)."""
    from optuna.trial import TrialState

    for trial in study.trials:
        if trial.state == TrialState.RUNNING:  # the study folder is locked: no other process runs it
            study.tell(trial.number, state=TrialState.FAIL)
    trials = study.trials
    retried = {t.user_attrs.get("retry_of") for t in trials}
    finished = 0
    for trial in trials:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            trial.state == TrialState.FAIL and "error" in trial.user_attrs
        ):
            finished += 1
        elif trial.state == TrialState.FAIL and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return finished


def _storage_url(storage: str | None, folder: Path) -> str:
    if storage is None:
        return f"sqlite:///{(folder / 'study.db').resolve()}"
    if "://" in storage:
        return storage
    return f"sqlite:///{Path(storage).resolve()}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _import_optuna():
    try:
        import optuna
    except ImportError as exc:
        raise ConfigError(
            f"negrec-fast tune needs the optuna package ({exc}); install it with pip install 'negrec-fast[tune]'"
        ) from None
    return optuna
