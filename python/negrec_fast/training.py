"""The training loop: :func:`train` fills a run folder (:mod:`negrec_fast.run_folder`) with
per-epoch metrics and checkpoints. ``resume=RUN_DIR`` continues from ``last.pt``: on CPU with the
same seed and ``train.threads=1`` a resumed run ends with the same metrics as an uninterrupted one.

Under ``torchrun`` every process runs :func:`train` and each step's global batch is split
across them (:mod:`negrec_fast.distributed`); rank 0 alone validates, tests, decides early
stopping (for all ranks), runs the callbacks, shows progress and writes the run folder (its
checkpoints hold the plain model, loadable in one process); on resume every rank reads
``last.pt``.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from negrec_fast.checkpoint import load_checkpoint, save_checkpoint
from negrec_fast.config import Config, apply_overrides, load_config
from negrec_fast.distributed import join, wrap
from negrec_fast.errors import ConfigError
from negrec_fast.evaluation import evaluate_model
from negrec_fast.models import build_model_for
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.optim import build_optimizer
from negrec_fast.profiling import StepProfile, prediction_targets
from negrec_fast.progress import Progress
from negrec_fast.run_folder import (
    CHECKPOINT_FORMAT,
    dataset_path,
    new_run_dir,
    recorded_dataset,
    write_json,
    write_run_files,
)

# Config keys a resumed run may change: they do not alter what was already trained.
RESUME_OVERRIDES = frozenset(
    {"train.epochs", "train.max_steps", "train.patience", "train.progress", "train.checkpoint_every", "train.device",
     "train.prefetch", "train.threads", "train.dist_backend"}
)
# Called after each epoch is logged with (its metrics.jsonl record, the best epoch so far:
# {"epoch", "score", "metric", "valid"}); returning True ends training there, as early stopping
# does (the best checkpoint is then tested; the run folder stays valid and resumable).
EpochCallback = Callable[[dict[str, Any], dict[str, Any]], bool | None]


@dataclass
class RunResult:
    """What a call of :func:`train` produced."""

    run_dir: Path
    completed: bool  # False when stopped early by train.max_steps (resumable)
    best_epoch: int | None
    best_valid: dict[str, float] | None
    test: dict[str, float] | None
    history: list[dict[str, Any]]
    best_batch: int | None = None  # set when the best validation was taken within its epoch (train.eval_every)


def train(
    config: Config | dict | str | Path | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    resume: str | Path | None = None,
    callbacks: Sequence[EpochCallback] = (),
) -> RunResult:
    """Train a model as configured; see the module docstring for the run folder.

    ``config`` is a :class:`Config`, a nested dict, a TOML path or None (defaults);
    ``overrides`` are ``section.key=value`` strings applied on top. With ``resume``, the
    config is the run folder's own; only the keys in ``RESUME_OVERRIDES`` (more epochs,
    another step limit, ...) may be overridden, and the dataset is the one recorded in
    ``dataset.json``, whatever the current directory. ``callbacks`` see each epoch
    (:data:`EpochCallback`; under torchrun on rank 0, whose decision holds for every rank).
    """
    if resume is not None:
        if config is not None:
            raise ConfigError("resume continues a run with its own config; do not pass a config")
        run_dir = Path(resume)
        if not (run_dir / "last.pt").is_file():
            raise ConfigError(f"cannot resume {run_dir}: no last.pt checkpoint in it")
        for item in overrides:
            key = item.partition("=")[0].strip()
            if key not in RESUME_OVERRIDES:
                raise ConfigError(
                    f"{key!r} cannot change when resuming; allowed: {', '.join(sorted(RESUME_OVERRIDES))}"
                )
        cfg = load_config(run_dir / "config.toml", overrides)
        checkpoint = load_checkpoint(run_dir / "last.pt")
    else:
        cfg = _as_config(config, overrides)
        checkpoint, run_dir = None, None
    return Trainer(cfg, resume_from=checkpoint, run_dir=run_dir, callbacks=callbacks).fit()


def _as_config(config: Config | dict | str | Path | None, overrides) -> Config:
    if isinstance(config, Config):
        config = config.to_dict()
    if isinstance(config, dict):
        return Config.from_dict(apply_overrides(config, overrides))
    return load_config(config, overrides)


class Trainer:
    """One training run; ``fit()`` runs it to the end (or to ``train.max_steps``)."""

    def __init__(
        self,
        cfg: Config,
        *,
        resume_from: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        callbacks: Sequence[EpochCallback] = (),
    ):
        from negrec_fast.data import load_dataset
        from negrec_fast.sampling import BatchLoader
        from negrec_fast.tracking import TensorBoardLogger, require_tensorboard

        if cfg.run.tensorboard:
            require_tensorboard()  # before any work
        self.cfg = cfg
        self.callbacks = list(callbacks)
        if not cfg.train.threads:
            cfg.train.threads = torch.get_num_threads()
        # set even when unchanged: it also aligns the OpenMP and MKL pools, which may start apart
        torch.set_num_threads(cfg.train.threads)
        self.world, self.device = join(cfg.train)
        self.main = self.world.is_main
        if run_dir is not None:  # resuming: the dataset the run started with
            self.dataset_dir = Path(recorded_dataset(run_dir)["path"])
        else:  # a synthetic dataset is built once per node
            self.dataset_dir = self.world.local_first(lambda: dataset_path(cfg, progress=cfg.train.progress and self.main))
        self.dataset = load_dataset(self.dataset_dir)
        self._check_dataset(run_dir)
        self.loader = BatchLoader(
            self.dataset,
            batch_size=cfg.train.batch_size,
            seq_len=cfg.data.max_len + 1,
            n_negatives=cfg.loss.n_negatives if _samples_negatives(cfg) else 0,
            distribution=cfg.loss.sampling,
            alpha=cfg.loss.alpha,
            seed=cfg.train.seed,
            prefetch=cfg.train.prefetch,
            windows=cfg.data.windows,
            # skipped items can be negatives when they are never positives
            exclude="kept" if cfg.loss.skipped_targets == "ignore" else "all",
        )
        self.run_dir = run_dir or Path(self.world.broadcast(str(new_run_dir(cfg)) if self.main else None))
        _seed_everything(cfg.train.seed)
        self.model = build_model_for(cfg, self.dataset.vocab_size).to(self.device)
        if self.world.size > 1:  # the same initial model, then a dropout stream per rank
            torch.manual_seed(cfg.train.seed + self.world.rank)
        self.optimizer = build_optimizer(cfg.train, self.model, world_size=self.world.size)
        self.objective = Objective(
            cfg.loss,
            cfg.model.name,
            mask_prob=cfg.model.mask_prob,
            n_items=self.dataset.n_items,
            item_log_freq=target_log_frequency(self.dataset, cfg.loss.skipped_targets).to(self.device),
        )
        self.mask_generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 1)
        self.profile: StepProfile | None = None  # train.profile: this epoch's step phases
        self.profiles: list[dict[str, Any]] = []  # finished epochs' summaries, this invocation
        if cfg.train.profile:
            self.objective.profile = self.profile = StepProfile(self.device)
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._reset_epoch_sums()
        if resume_from is not None:
            self._restore(resume_from)
        elif self.main:
            write_run_files(self.run_dir, cfg, self.device, self.dataset_dir, self.dataset)
        self.tensorboard = TensorBoardLogger(self.run_dir) if cfg.run.tensorboard and self.main else None
        # under torchrun: the model and the objective as one DDP module; None in one process
        self.ddp = None
        if self.world.size > 1:
            self.ddp = wrap(self.model, self.objective, self.mask_generator, self.world, self.device)

    def _check_dataset(self, run_dir: Path | None) -> None:
        """Config values that depend on the dataset, checked before any work; on resume,
        the dataset must be the one the run started with."""
        n_items = self.dataset.n_items
        if self.cfg.train.batch_size < self.world.size:
            raise ConfigError(
                f"train.batch_size ({self.cfg.train.batch_size}) is the global batch: it must be at least "
                f"the number of processes ({self.world.size})"
            )
        if _samples_negatives(self.cfg) and self.cfg.loss.n_negatives >= n_items:
            raise ConfigError(
                f"loss.n_negatives ({self.cfg.loss.n_negatives}) must be smaller than the catalogue "
                f"({n_items} items in {self.dataset_dir})"
            )
        if self.cfg.eval.sampled_candidates >= n_items:
            raise ConfigError(
                f"eval.sampled_candidates ({self.cfg.eval.sampled_candidates}) must be smaller than the "
                f"catalogue ({n_items} items)"
            )
        if run_dir is not None:
            recorded = recorded_dataset(run_dir).get("checksum")
            if recorded != self.dataset.manifest.get("checksum"):
                raise ConfigError(f"cannot resume {run_dir}: the dataset at {self.dataset_dir} changed since the run started")

    # ---- checkpoints ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """The checkpoint; under torchrun, a collective (every rank's RNG state goes into it)."""
        own = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        rng: dict[str, Any] = {**own, "mask": self.mask_generator.get_state()}
        if self.world.size > 1:
            rng["ranks"] = self.world.gather(own)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "progress": {
                "epoch": self.epoch,
                "batch": self.batch,
                "step": self.step,
                "best": self.best,
                "history": self.history,
                "epoch_sums": self.epoch_sums,
                "loss_sums": self.loss_sums.cpu(),
            },
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.mask_generator.set_state(ckpt["rng"]["mask"])
        # this rank's dropout stream; a rank the checkpoint has none for (resumed with more
        # processes) starts a fresh one
        ranks = ckpt["rng"].get("ranks", [ckpt["rng"]])
        if self.world.rank < len(ranks):
            own = ranks[self.world.rank]
            torch.set_rng_state(own["torch"])
            if "cuda" in own and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda"], self.device)
        else:
            torch.manual_seed(self.cfg.train.seed + self.world.rank)
        p = ckpt["progress"]
        self.epoch, self.batch, self.step = p["epoch"], p["batch"], p["step"]
        self.best, self.history = p["best"], p["history"]
        if self.best is not None and "step" not in self.best:  # written before eval_every: best at an epoch end
            self.best["step"] = self.best["epoch"] * len(self.loader)
        sums = p["epoch_sums"]
        # checkpoints written before the loss sums moved to the device keep them as floats
        if "loss_sums" in p:
            losses = p["loss_sums"]
        else:
            losses = torch.tensor([sums.pop(k) for k in ("loss", "rec", "nce")], dtype=torch.float64)
        self.epoch_sums = sums
        self.loss_sums = losses.to(self.device, torch.float64)
        # metrics.jsonl may hold an epoch logged after the checkpoint; rewrite it from history.
        if self.main:
            (self.run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))

    def _save_last(self) -> None:
        self._mean_loss()  # never checkpoint a diverged run
        state = self._state()
        if self.main:
            save_checkpoint(self.run_dir / "last.pt", state)

    # ---- the loop ---------------------------------------------------------------------
    def fit(self) -> RunResult:
        try:
            return self._fit()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
            self.world.close()

    def _fit(self) -> RunResult:
        cfg = self.cfg.train
        steps_this_call = 0
        stopped = self._patience_spent()
        while self.epoch < cfg.epochs and not stopped:
            n_batches = len(self.loader)
            self.model.train()
            desc = f"epoch {self.epoch + 1}/{cfg.epochs}"
            with Progress(n_batches, "batch", desc, disable=not (cfg.progress and self.main)) as bar:
                bar.count = self.batch
                tic = time.perf_counter()
                if self.profile is not None:
                    self.profile.restart()
                for batch in _batches(self.loader, self.epoch, self.batch):
                    if self.profile is not None:
                        self.profile.mark("data")
                    # losses stay on the device: no host synchronisation per step
                    self.loss_sums += self._train_step(batch)
                    self.batch += 1
                    self.step += 1
                    steps_this_call += 1
                    sums = self.epoch_sums
                    sums["batches"] += 1
                    sums["sequences"] += int(batch.items.shape[0])
                    elapsed = sums["seconds"] + time.perf_counter() - tic
                    # read (a synchronisation) only when the bar redraws
                    bar.update(1, loss=self._mean_loss, seq_per_s=sums["sequences"] / elapsed)
                    if cfg.eval_every and self.batch % cfg.eval_every == 0 and self.batch < n_batches:
                        self.epoch_sums["seconds"] += time.perf_counter() - tic
                        stopped = self._mid_epoch_validation(n_batches)
                        tic = time.perf_counter()
                        if stopped:
                            break
                    if cfg.max_steps and steps_this_call >= cfg.max_steps:
                        self.epoch_sums["seconds"] += time.perf_counter() - tic
                        self._save_last()
                        self._write_profile()
                        return self._result(completed=False)
                    if cfg.checkpoint_every and self.batch % cfg.checkpoint_every == 0 and self.batch < n_batches:
                        self.epoch_sums["seconds"] += time.perf_counter() - tic
                        tic = time.perf_counter()
                        self._save_last()
                    if self.profile is not None:  # the bar, validation and checkpoints are no phase
                        self.profile.restart()
                else:  # the epoch ran to its end
                    self.epoch_sums["seconds"] += time.perf_counter() - tic
                    stopped = self._end_epoch()
        self._write_profile()
        test = self._final_test()
        return self._result(completed=True, test=test)

    def _write_profile(self) -> None:
        """``train.profile``: this invocation's epochs (and the unfinished one) to profile.json."""
        if self.profile is None or not self.main:
            return
        current = self.profile.summary() if self.profile.steps else None
        write_json(self.run_dir / "profile.json", {"epochs": self.profiles, "unfinished_epoch": current})

    def _train_step(self, batch) -> torch.Tensor:
        """One optimizer step; returns ``[total, rec, nce]`` losses (float64, on the device)."""
        dev = self.device
        tensors = BatchTensors(
            items=batch.items.to(dev, non_blocking=True),
            skips=batch.skips.to(dev, non_blocking=True),
            negatives=batch.negatives.to(dev, non_blocking=True),
            neg_logq=batch.neg_logq.to(dev, non_blocking=True),
        )
        profile = self.profile
        autocast = dev.type == "cuda" and self.cfg.train.bf16
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            if self.ddp is None:
                total, rec, nce = self.objective(self.model, tensors, self.mask_generator)
            else:  # the global batch's losses; DDP averages the ranks' gradients (negrec_fast.distributed)
                total, rec, nce = self.ddp(tensors.items, tensors.skips, tensors.negatives, tensors.neg_logq)
        if profile is not None:
            profile.mark("loss")
        self.optimizer.zero_grad(set_to_none=True)
        (total * self.world.size).backward()
        if profile is not None:
            profile.mark("backward")
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        if profile is not None:
            profile.mark("optimizer")
            profile.count(int(batch.items.shape[0]), prediction_targets(batch.items, batch.skips))
        return torch.stack([total.detach(), rec.detach(), nce.detach()]).double()

    def _reset_epoch_sums(self) -> None:
        self.epoch_sums = {"batches": 0, "sequences": 0, "seconds": 0.0}
        self.loss_sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def _mean_loss(self) -> float:
        """Mean training loss of the epoch so far; a non-finite one stops training."""
        loss = self.loss_sums[0].item() / max(self.epoch_sums["batches"], 1)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} in epoch {self.epoch + 1} (by batch {self.batch})")
        return loss

    def _end_epoch(self) -> bool:
        """Validate (rank 0), checkpoint, log; returns True when early stopping says stop (rank 0's
        decisions hold on every rank)."""
        record = self._train_record()
        if self.profile is not None:
            record["profile"] = self.profile.summary()
            self.profiles.append(record["profile"])
            self.objective.profile = self.profile = StepProfile(self.device)
        improved = self._validate(record) if self.main else None
        record, improved, self.best = self.world.broadcast((record, improved, self.best))
        self.history.append(record)
        self.epoch += 1
        self.batch = 0
        self._reset_epoch_sums()
        # checkpoint first: a run killed before the log line is rewritten from history on resume
        self._save_last()
        return self.world.broadcast(self._log_epoch(record, improved) if self.main else None)

    def _train_record(self) -> dict[str, Any]:
        """The epoch's training figures so far (mean losses, time, throughput); raises on a
        non-finite loss."""
        sums = self.epoch_sums
        self._mean_loss()
        loss, rec, nce = (self.loss_sums / max(sums["batches"], 1)).tolist()
        return {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": loss,
            "rec_loss": rec,
            "nce_loss": nce,
            "seconds": sums["seconds"],
            "sequences_per_s": sums["sequences"] / sums["seconds"] if sums["seconds"] > 0 else None,
        }

    def _mid_epoch_validation(self, n_batches: int) -> bool:
        """``train.eval_every``: validate within the epoch, checkpoint, log; returns True when
        early stopping says stop. The record carries the batch it was taken at; the epoch's
        loss sums go on."""
        record = self._train_record() | {"batch": self.batch, "epoch_progress": self.batch / n_batches}
        improved = self._validate(record) if self.main else None
        record, improved, self.best = self.world.broadcast((record, improved, self.best))
        self.history.append(record)
        self._save_last()
        return self.world.broadcast(self._log_epoch(record, improved) if self.main else None)

    def _validate(self, record: dict[str, Any]) -> bool:
        """Validation metrics into ``record``; updates the best epoch (and ``best.pt``) and the
        step of the best; returns whether the epoch improved."""
        valid = evaluate_model(self.model, self.dataset, "valid", self.cfg.eval, self.cfg.data.max_len, self.device)
        record["valid"] = valid
        metric = self.cfg.train.early_stopping_metric
        score = valid.get(metric, float("nan"))
        # Without validation targets (e.g. a temporal split with no validation share) the
        # latest epoch counts as the best.
        no_targets = valid.get("n_kept", 0) == 0
        if self.best is None or no_targets:
            improved = True
        elif metric.startswith("skip_"):  # skip down-ranking: lower is better, guarded by HR@10
            hr = "HR@10_kept"  # = HR@10, there whenever there are kept targets
            best_hr = max([h["valid"].get(hr, 0.0) for h in self.history] + [valid[hr]])
            floor = self.cfg.train.early_stopping_guard * best_hr
            kept_ok = self.best["valid"].get(hr, 0.0) >= floor
            improved = valid[hr] >= floor and (not kept_ok or (math.isfinite(score) and score < self.best["score"]))
        else:
            improved = math.isfinite(score) and score > self.best["score"]
        if improved:
            self.best = {"epoch": record["epoch"], "step": self.step, "score": score, "metric": metric, "valid": valid}
            if "batch" in record:  # taken within the epoch (train.eval_every)
                self.best["batch"] = record["batch"]
            save_checkpoint(
                self.run_dir / "best.pt",
                {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "model": self.model.state_dict(),
                 "epoch": record["epoch"], "batch": record.get("batch"), "valid": valid},
            )
        return improved

    def _log_epoch(self, record: dict[str, Any], improved: bool) -> bool:
        """The epoch's line in metrics.jsonl, on stderr and in TensorBoard; the callbacks; returns
        True when they or the patience say stop."""
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        valid = record["valid"]
        metric = self.cfg.train.early_stopping_metric
        if self.cfg.train.progress:
            where = f"epoch {record['epoch']}" + (f" (batch {record['batch']})" if "batch" in record else "")
            print(
                f"{where}: loss {record['train_loss']:.4f} (rec {record['rec_loss']:.4f}, "
                f"nce {record['nce_loss']:.4f}) | valid {metric} {valid.get(metric, float('nan')):.4f}, "
                f"HR@10 {valid.get('HR@10', float('nan')):.4f}, "
                f"skip_MRR@10 {valid.get('skip_MRR@10', float('nan')):.4f} | {record['seconds']:.1f}s"
                + (" *" if improved else ""),
                file=sys.stderr,
            )
        if self.tensorboard is not None:
            self.tensorboard.log_epoch(record)
        # every callback sees the epoch, even when an earlier one asks to stop
        stop = [bool(callback(record, self.best)) for callback in self.callbacks]
        return any(stop) or self._patience_spent()

    def _patience_spent(self) -> bool:
        """Early stopping: ``train.patience`` epochs' worth of optimizer steps since the best
        validation (with validations at epoch ends only: that many epochs without improvement)."""
        patience = self.cfg.train.patience
        return bool(patience and self.best is not None and self.step - self.best["step"] >= patience * len(self.loader))

    def _final_test(self) -> dict[str, float]:
        """Test metrics of the best checkpoint (evaluated by rank 0, returned on every rank)."""
        return self.world.broadcast(self._test() if self.main else None)

    def _test(self) -> dict[str, float]:
        best = load_checkpoint(self.run_dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["model"])
        test = evaluate_model(self.model, self.dataset, "test", self.cfg.eval, self.cfg.data.max_len, self.device)
        where = {"best_epoch": best["epoch"]} | ({"best_batch": best["batch"]} if best.get("batch") else {})
        write_json(self.run_dir / "test_metrics.json", where | {"test": test})
        if self.tensorboard is not None:
            self.tensorboard.log_test(test, best["epoch"])
        return test

    def _result(self, *, completed: bool, test: dict[str, float] | None = None) -> RunResult:
        return RunResult(
            run_dir=self.run_dir,
            completed=completed,
            best_epoch=self.best["epoch"] if self.best else None,
            best_batch=self.best.get("batch") if self.best else None,
            best_valid=self.best["valid"] if self.best else None,
            test=test,
            history=self.history,
        )


def _samples_negatives(cfg: Config) -> bool:
    """Whether the main loss uses the loader's K shared sampled negatives (full_softmax and WRMF's
    objective cover the whole catalogue, so the loader samples none)."""
    return cfg.loss.rec not in ("full_softmax", "wrmf")


def _batches(loader, epoch: int, start: int):
    """The loader's batches; a batch it cannot build (too few items left to draw the
    negatives from) becomes a ConfigError naming the settings to change."""
    iterator = iter(loader.epoch(epoch, start_batch=start))
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except ValueError as exc:
            raise ConfigError(f"{exc} (loss.n_negatives, train.batch_size)") from None
        yield batch


def target_log_frequency(dataset, skipped_targets: str) -> torch.Tensor:
    """``[V]`` log frequency of each item among the training plays that are targets (a play with a
    play before it; kept plays only unless skipped plays are targets too); 0 for items never a
    target, so the logQ term stays finite where it is masked anyway."""
    lengths = np.diff(dataset.offsets)
    position = np.arange(len(dataset.items)) - np.repeat(dataset.offsets[:-1], lengths)
    target = (position >= 1) & (position < np.repeat(dataset.train_end, lengths))
    if skipped_targets == "ignore":
        target &= dataset.skips == 0
    counts = np.bincount(dataset.items[target], minlength=dataset.vocab_size).astype(np.float64)
    freq = torch.from_numpy(counts / max(counts.sum(), 1.0))
    return torch.where(freq > 0, freq.log(), torch.zeros_like(freq)).float()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
