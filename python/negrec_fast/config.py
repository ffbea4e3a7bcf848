"""Training configuration: typed sections, TOML loading, ``key=value`` overrides, validation.

Every key has a default, so ``negrec-fast train`` with no arguments trains SASRec with the
skip-InfoNCE term on the bundled synthetic data. Invalid configs fail before any work,
naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from negrec_fast.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SINE_METRICS = ("sine_AUC", "sine_GAUC", "sine_NDCG")  # eval.sine_metrics (negrec_fast.metrics)
# loss.rec of the matrix-factorisation baselines when the config does not give one
MODEL_LOSSES = {"bpr": "bpr", "wrmf": "wrmf"}
# [loss] keys whose default depends on model.name, applied when the config does not give them:
# PNFRec's objective is the paper's (its contrastive term instead of the skip penalty and InfoNCE)
MODEL_LOSS_DEFAULTS: dict[str, dict[str, Any]] = {"pnfrec": {"skip_penalty": "none", "nce_weight": 0.0}}


@dataclass
class DataConfig:
    path: str = "synthetic"  # processed dataset folder (`negrec-fast prepare`), or "synthetic"
    synthetic_sessions: int = 20_000  # size of the bundled synthetic dataset
    synthetic_items: int = 5_000
    synthetic_seed: int = 0
    max_len: int = 20  # input plays per sequence
    windows: str = "all"  # "all": every training play is a target each epoch; "last": last max_len only


@dataclass
class ModelConfig:
    name: str = "sasrec"
    d_model: int = 128
    n_heads: int = 8
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.2
    norm_first: bool = False
    # SASRec / BERT4Rec: dropout also after the feed-forward activation, as torch's
    # TransformerEncoderLayer (the papers' code); false = BERT's and RecBole's SASRec block
    ffn_inner_dropout: bool = True
    # SASRec / BERT4Rec: false = the encoder reads the kept plays only (a skipped play is masked
    # like padding); skipped plays still enter the losses (skip penalty, skip-InfoNCE)
    read_skipped: bool = True
    mask_prob: float = 0.2  # BERT4Rec masking probability
    skip_inputs: bool = False  # add a learned skip-flag embedding to each input play
    sine_interests: int = 2  # SINE: number K of sub-interest embeddings (>= 2)
    # PNFRec: how the query reads the two encoders: "none" (the paper: the kept-play encoder only)
    # or "gate" (plus a gated projection of the skipped-play encoder's state)
    pnfrec_fusion: str = "none"
    # WRMF (model.name = "wrmf"): extra confidence of an observed (kept) item and the L2 weight (> 0)
    wrmf_alpha: float = 10.0
    wrmf_l2: float = 1.0


@dataclass
class LossConfig:
    # main loss: sampled_softmax | full_softmax | bce | gbce | bpr | wrmf (model "wrmf"'s own objective);
    # when not given, model "bpr" trains with "bpr" and model "wrmf" with "wrmf" (MODEL_LOSSES)
    rec: str = "sampled_softmax"
    skipped_targets: str = "ignore"  # "ignore": only kept plays are positives; "include": all plays
    n_negatives: int = 1000  # K shared sampled negatives per batch
    sampling: str = "uniform"  # or "popularity" (count^alpha)
    alpha: float = 0.75
    # logQ correction of sampled_softmax (no effect on the other losses): each candidate's logit
    # minus the log of its expected count among the candidates (in-batch targets and negatives)
    logq: bool = True
    temperature: float = 1.0
    gbce_t: float = 0.75
    # the session's skipped plays in the main loss (negrec_fast.losses.skip_penalty): "negatives"
    # (extra candidates of the softmax / negatives of BCE), "unlikelihood" (-log(1 - p)), "none"
    skip_penalty: str = "negatives"
    skip_weight: float = 1.0  # each skipped item counts this many times (negatives) / scales the term
    nce_weight: float = 0.1  # lambda of the skip-InfoNCE term; 0 disables it
    nce_temperature: float = 0.1
    nce_context: str = "embedding"  # anchors: "embedding" (item embeddings) or "encoder" (encoder outputs)
    nce_normalize: str = "kept"  # InfoNCE mean over "kept" plays with a later kept play, or "anchors"
    backend: str = "auto"  # "auto" = Triton on GPU, reference on CPU; or "triton" / "torch"
    # SINE's own loss (negrec_fast.losses.sine; the keys above except n_negatives, sampling and
    # alpha do not apply to it): BPR against a random negative + sine_skip_weight * pairwise loss
    # against the plays skipped before each target + sine_dcor_weight * interest distance correlation
    sine_skip_weight: float = 1.0
    sine_dcor_weight: float = 1.0
    # PNFRec (negrec_fast.models.pnfrec): alpha of the skipped-play encoder's CE (next skipped play)
    # and beta of its contrastive term (next kept item vs the window's skipped plays); the
    # authors' ML-1M settings. For model "pnfrec", skip_penalty and nce_weight default to "none" and 0
    pnfrec_neg_weight: float = 0.45
    pnfrec_contrastive_weight: float = 0.25


@dataclass
class TrainConfig:
    epochs: int = 100  # a cap: early stopping (patience) ends a run once validation stops improving
    batch_size: int = 64  # sequences per optimizer step, over all processes under torchrun
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "adam": torch Adam on every parameter (dense item-table gradient and update, cost ~ catalogue);
    # "sparse_adam": the item table gets sparse row gradients and lazy row-wise Adam (only the rows a
    # step reads move; the others' moments are not decayed), the rest Adam (negrec_fast.optim)
    optimizer: str = "adam"
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    bf16: bool = True  # bf16 autocast when on GPU
    early_stopping_metric: str = "NDCG@10"  # HR@K, NDCG@K, MRR@K (higher is better) or skip_MRR@10 (lower)
    # with skip_MRR@10: an epoch is kept only if its validation HR@10 >= this fraction of the best
    # HR@10 so far (a kept epoch that falls below it is replaced), so a model whose HR@10 collapsed
    # cannot win by ranking everything low; 0 disables the guard
    early_stopping_guard: float = 0.9
    # stop once this many epochs' worth of optimizer steps passed since the best validation
    # (with validation at epoch ends only: epochs without improvement); 0 disables
    patience: int = 5
    # also validate (and keep the best checkpoint, count patience) every N batches within an
    # epoch; 0 = at epoch ends only. For large datasets whose first epoch already converges
    eval_every: int = 0
    checkpoint_every: int = 0  # also save `last.pt` every N batches mid-epoch; 0 = per epoch only
    max_steps: int = 0  # stop (resumably) after N optimizer steps in this invocation; 0 = no limit
    # time each step's phases (data, forward, loss, backward, optimizer; negrec_fast.profiling):
    # in each epoch's record and in RUN_DIR/profile.json; synchronises the device at each phase
    profile: bool = False
    prefetch: int = 4
    progress: bool = True
    # intra-op CPU threads; 0 = torch's count when the run starts. The resolved count is written
    # to config.toml and set again on resume: float sums, hence exact resume, depend on it
    threads: int = 0
    # process group backend under torchrun: "auto" (nccl on CUDA, gloo on CPU), "nccl" or "gloo"
    dist_backend: str = "auto"


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    batch_size: int = 512
    # never rank the plays before the target (a held-out track among them is a miss), as
    # Recommender.recommend(exclude_seen=True) never returns them; same default False there
    exclude_seen: bool = False
    sampled_candidates: int = 0  # 0 = full-catalogue ranking; N = N sampled negatives per target
    # also rank each kept target among its example's held-out skipped tracks (SINE's protocol,
    # Pan et al. 2023): sine_AUC (pooled), sine_GAUC (mean over examples), sine_NDCG
    sine_metrics: bool = False
    seed: int = 0


@dataclass
class RunConfig:
    dir: str = "runs"  # parent folder of run folders
    name: str = ""  # run folder name; empty = model name + timestamp
    tensorboard: bool = False  # also write TensorBoard scalars to RUN_DIR/tensorboard (needs tensorboard)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key."""
        return {f"{s}.{k}": v for s, values in self.to_dict().items() for k, v in values.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build and validate a config from nested ``{section: {key: value}}``."""
        config = cls()
        for section_name, values in raw.items():
            section = _section(config, section_name)
            if not isinstance(values, dict):
                raise ConfigError(f"[{section_name}] must be a table of keys, got {values!r}")
            for key, value in values.items():
                _set(section, f"{section_name}.{key}", key, value)
        if "rec" not in raw.get("loss", {}):
            config.loss.rec = MODEL_LOSSES.get(config.model.name, config.loss.rec)
        for key, value in MODEL_LOSS_DEFAULTS.get(config.model.name, {}).items():
            if key not in raw.get("loss", {}):
                setattr(config.loss, key, value)
        config.validate()
        return config

    def validate(self) -> None:
        """Check values that types alone cannot: ranges, choices, compatibility."""
        _choice("data.windows", self.data.windows, ("all", "last"))
        _choice("model.name", self.model.name, ("sasrec", "bert4rec", "gru4rec", "sine", "pnfrec", "bpr", "wrmf"))
        _choice("loss.rec", self.loss.rec, ("sampled_softmax", "full_softmax", "bce", "gbce", "bpr", "wrmf"))
        _choice("loss.skipped_targets", self.loss.skipped_targets, ("ignore", "include"))
        _choice("loss.sampling", self.loss.sampling, ("uniform", "popularity"))
        _choice("loss.skip_penalty", self.loss.skip_penalty, ("none", "negatives", "unlikelihood"))
        _positive("loss.skip_weight", self.loss.skip_weight)
        _choice("loss.nce_context", self.loss.nce_context, ("embedding", "encoder"))
        _choice("loss.nce_normalize", self.loss.nce_normalize, ("kept", "anchors"))
        _choice("loss.backend", self.loss.backend, ("auto", "triton", "torch"))
        _choice("train.dist_backend", self.train.dist_backend, ("auto", "nccl", "gloo"))
        _choice("train.optimizer", self.train.optimizer, ("adam", "sparse_adam"))
        if self.train.optimizer == "sparse_adam" and self.loss.rec in ("full_softmax", "wrmf"):
            raise ConfigError(
                "train.optimizer='sparse_adam' needs a loss that reads a few rows of the item table per step; "
                f"loss.rec={self.loss.rec!r} scores every item, so its gradient is dense (nothing to gain): "
                "use train.optimizer='adam', or loss.rec='sampled_softmax', 'bce', 'gbce' or 'bpr'"
            )
        _positive("data.max_len", self.data.max_len)
        _positive("data.synthetic_sessions", self.data.synthetic_sessions)
        _positive("data.synthetic_items", self.data.synthetic_items)
        for key in ("d_model", "n_heads", "n_layers", "d_ff"):
            _positive(f"model.{key}", getattr(self.model, key))
        if self.model.d_model % self.model.n_heads:
            raise ConfigError(
                f"model.d_model ({self.model.d_model}) must be divisible by model.n_heads ({self.model.n_heads})"
            )
        _unit_interval("model.dropout", self.model.dropout, closed_right=False)
        if not 0 < self.model.mask_prob <= 1:
            raise ConfigError(f"model.mask_prob must be in (0, 1], got {self.model.mask_prob!r}")
        _positive("loss.n_negatives", self.loss.n_negatives)
        _positive("loss.temperature", self.loss.temperature)
        _positive("loss.nce_temperature", self.loss.nce_temperature)
        _non_negative("loss.nce_weight", self.loss.nce_weight)
        _unit_interval("loss.gbce_t", self.loss.gbce_t, closed_right=True)
        _positive("train.epochs", self.train.epochs)
        _positive("train.batch_size", self.train.batch_size)
        _positive("train.lr", self.train.lr)
        for key in ("weight_decay", "grad_clip", "patience", "checkpoint_every", "eval_every", "max_steps", "threads"):
            _non_negative(f"train.{key}", getattr(self.train, key))
        if not 1 <= self.train.prefetch <= 64:
            raise ConfigError(f"train.prefetch must be in [1, 64], got {self.train.prefetch}")
        if not self.eval.ks or any(k < 1 for k in self.eval.ks):
            raise ConfigError(f"eval.ks must be a non-empty list of positive integers, got {self.eval.ks}")
        _positive("eval.batch_size", self.eval.batch_size)
        _non_negative("eval.sampled_candidates", self.eval.sampled_candidates)
        _unit_interval("train.early_stopping_guard", self.train.early_stopping_guard, closed_right=True)
        if self.eval.sampled_candidates and self.eval.exclude_seen:
            raise ConfigError("eval.exclude_seen applies to full-catalogue ranking; it cannot be combined with eval.sampled_candidates")
        metric, _, k = self.train.early_stopping_metric.partition("@")
        ranked = metric in ("HR", "NDCG", "MRR") and k.isdigit() and int(k) in self.eval.ks
        sine = self.eval.sine_metrics and self.train.early_stopping_metric in SINE_METRICS
        if not ranked and not sine and self.train.early_stopping_metric != "skip_MRR@10":
            raise ConfigError(
                f"train.early_stopping_metric must be HR@K, NDCG@K or MRR@K with K in eval.ks "
                f"{self.eval.ks}, or skip_MRR@10 (or, with eval.sine_metrics, one of "
                f"{', '.join(SINE_METRICS)}); got {self.train.early_stopping_metric!r}"
            )
        if not self.model.ffn_inner_dropout and self.model.name not in ("sasrec", "bert4rec"):
            raise ConfigError(
                f"model.ffn_inner_dropout = false applies to model.name = 'sasrec' or 'bert4rec', "
                f"not {self.model.name!r}"
            )
        if not self.model.read_skipped:
            if self.model.name not in ("sasrec", "bert4rec"):
                raise ConfigError(
                    f"model.read_skipped = false applies to model.name = 'sasrec' or 'bert4rec', not {self.model.name!r}"
                )
            if self.model.skip_inputs:
                raise ConfigError("model.skip_inputs flags skipped input plays, which model.read_skipped = false does not read")
        self._validate_sine()
        self._validate_pnfrec()
        self._validate_matrix_factorization()
        _seed("train.seed", self.train.seed)
        _seed("data.synthetic_seed", self.data.synthetic_seed)
        _non_negative("loss.alpha", self.loss.alpha)

    def _validate_sine(self) -> None:
        """SINE's options, and the general ones that contradict its loss."""
        if self.model.sine_interests < 2:
            raise ConfigError(f"model.sine_interests must be >= 2, got {self.model.sine_interests!r}")
        _non_negative("loss.sine_skip_weight", self.loss.sine_skip_weight)
        _non_negative("loss.sine_dcor_weight", self.loss.sine_dcor_weight)
        if self.model.name != "sine":
            return
        if self.model.skip_inputs:
            raise ConfigError("model.skip_inputs does not apply to model.name = 'sine': it reads the kept plays only")
        if self.loss.skipped_targets != "ignore":
            raise ConfigError("model.name = 'sine' predicts kept plays only: loss.skipped_targets must be 'ignore'")
        if self.loss.rec != "sampled_softmax":
            raise ConfigError(
                "model.name = 'sine' trains with its own loss (loss.sine_*) on the loader's sampled negatives: "
                f"loss.rec does not apply, leave it 'sampled_softmax'; got {self.loss.rec!r}"
            )

    def _validate_pnfrec(self) -> None:
        """PNFRec's options, and the general ones that contradict its model or loss."""
        _choice("model.pnfrec_fusion", self.model.pnfrec_fusion, ("none", "gate"))
        _non_negative("loss.pnfrec_neg_weight", self.loss.pnfrec_neg_weight)
        _non_negative("loss.pnfrec_contrastive_weight", self.loss.pnfrec_contrastive_weight)
        if self.model.name != "pnfrec":
            return
        if self.model.skip_inputs:
            raise ConfigError(
                "model.skip_inputs does not apply to model.name = 'pnfrec': it reads kept and skipped plays "
                "with separate encoders"
            )
        if self.loss.skipped_targets != "ignore":
            raise ConfigError(
                "model.name = 'pnfrec' predicts the next kept play from the kept-play encoder (skipped plays are "
                "the targets of loss.pnfrec_neg_weight's term): loss.skipped_targets must be 'ignore'"
            )
        if self.loss.pnfrec_neg_weight == 0 and self.model.pnfrec_fusion == "none":
            raise ConfigError(
                "loss.pnfrec_neg_weight = 0 with model.pnfrec_fusion = 'none' leaves the skipped-play encoder "
                "untrained and unread: set loss.pnfrec_neg_weight > 0 or model.pnfrec_fusion = 'gate'"
            )

    def _validate_matrix_factorization(self) -> None:
        """The BPR-MF and WRMF baselines' options (negrec_fast.models.matrix_factorization)."""
        _non_negative("model.wrmf_alpha", self.model.wrmf_alpha)
        _positive("model.wrmf_l2", self.model.wrmf_l2)
        name = self.model.name
        if (name == "wrmf") != (self.loss.rec == "wrmf"):
            raise ConfigError(
                f"model.name = 'wrmf' trains only with loss.rec = 'wrmf' (its fold-in is that objective's "
                f"optimum), and loss.rec = 'wrmf' needs model.name = 'wrmf'; got {name!r} with {self.loss.rec!r}"
            )
        if name in MODEL_LOSSES and self.model.skip_inputs:
            raise ConfigError(
                f"model.skip_inputs does not apply to model.name = {name!r}: it reads the skip flags itself "
                "(its query is built from the kept plays only)"
            )


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file (if any), then ``section.key=value`` overrides."""
    raw = read_toml(path, "config file") if path is not None else {}
    return Config.from_dict(apply_overrides(raw, overrides))


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; an unreadable or invalid file is a ConfigError naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of the nested ``raw`` dict with ``section.key=value`` overrides applied."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for item in overrides:
        dotted, sep, text = item.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {target!r}")
        target[key] = _parse_value(text.strip())
    return out


def to_toml(config: Config) -> str:
    """Serialise the resolved config as TOML (flat sections of scalars and lists)."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _parse_value(text: str) -> Any:
    """A TOML value (``5``, ``0.1``, ``true``, ``[1, 10]``, ``"x"``); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _section(config: Config, name: str) -> Any:
    names = [f.name for f in fields(config)]
    if name not in names:
        raise ConfigError(f"unknown config section [{name}]; allowed sections: {', '.join(names)}")
    return getattr(config, name)


def _set(section: Any, dotted: str, key: str, value: Any) -> None:
    hints = get_type_hints(type(section))
    if key not in hints:
        allowed = ", ".join(f.name for f in fields(section))
        raise ConfigError(f"unknown config key {dotted!r}; allowed keys: {allowed}")
    expected = hints[key]
    if get_origin(expected) is list:
        (item_type,) = get_args(expected)
        if not isinstance(value, list) or not all(_is_instance(v, item_type) for v in value):
            raise ConfigError(f"{dotted} must be a list of {item_type.__name__}, got {value!r}")
        value = [item_type(v) for v in value]
    elif not _is_instance(value, expected):
        raise ConfigError(f"{dotted} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    elif expected is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{dotted} must be a finite number, got {value!r}")
    setattr(section, key, value)


def _is_instance(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")


def _seed(key: str, value: int) -> None:
    if not 0 <= value < 2**32:
        raise ConfigError(f"{key} must be in [0, 2**32), got {value}")


def _unit_interval(key: str, value: float, *, closed_right: bool) -> None:
    ok = 0 <= value <= 1 if closed_right else 0 <= value < 1
    if not ok:
        raise ConfigError(f"{key} must be in [0, 1{']' if closed_right else ')'}, got {value!r}")
