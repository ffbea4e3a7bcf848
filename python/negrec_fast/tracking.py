"""TensorBoard scalars of a run (``run.tensorboard = true``), under ``RUN_DIR/tensorboard``.

``metrics.jsonl`` stays the source of truth; the event file mirrors each of its epoch lines
(step = epoch) and, at the end, the test metrics (step = best epoch). Needs the optional
``tensorboard`` package (``pip install 'negrec-fast[tensorboard]'``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from negrec_fast.errors import ConfigError

TRAIN_SCALARS = ("train_loss", "rec_loss", "nce_loss", "sequences_per_s", "seconds")


def require_tensorboard() -> None:
    """Raise a ConfigError naming ``run.tensorboard`` when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"run.tensorboard = true needs the tensorboard package ({exc}); "
            "install it with pip install 'negrec-fast[tensorboard]' or set run.tensorboard=false"
        ) from None


class TensorBoardLogger:
    """Writes a run's per-epoch records as TensorBoard scalars."""

    def __init__(self, run_dir: Path):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log_epoch(self, record: dict[str, Any]) -> None:
        """``train/<name>`` for the losses, throughput and time, ``valid/<metric>`` for each
        validation metric, at step = epoch; validations within an epoch (``train.eval_every``)
        stay in metrics.jsonl only."""
        if "batch" in record:
            return
        step = record["epoch"]
        for name in TRAIN_SCALARS:
            self._scalar(f"train/{name}", record.get(name), step)
        for name, value in record["valid"].items():
            self._scalar(f"valid/{name}", value, step)
        self.writer.flush()

    def log_test(self, test: dict[str, float], step: int) -> None:
        for name, value in test.items():
            self._scalar(f"test/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.writer.add_scalar(tag, float(value), step)
