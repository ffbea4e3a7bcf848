"""Per-step time breakdown of training (``train.profile = true``).

Each step is cut into phases at marks: ``data`` (waiting for the loader), ``forward`` (the
model's encoder and head), ``loss`` (the rest of the objective), ``backward`` and ``optimizer``
(clipping and the update). A mark first waits for the device (``torch.cuda.synchronize``), so
the phases add up to the step's wall time; that synchronisation is the flag's cost, which is
why it is off by default.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

PHASES = ("data", "forward", "loss", "backward", "optimizer")


class StepProfile:
    """Accumulates phase times, steps, sequences and targets."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = self.sequences = self.targets = 0
        self._last = time.perf_counter()

    def restart(self) -> None:
        """Starts the clock (at the top of the loop: what came before is no phase)."""
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Ends ``phase`` now: the time since the previous mark goes to it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now

    def count(self, sequences: int, targets: int) -> None:
        self.steps += 1
        self.sequences += sequences
        self.targets += targets

    def summary(self) -> dict[str, Any]:
        """Mean milliseconds per step of each phase, throughput and peak memory."""
        total = sum(self.seconds.values())
        steps = max(self.steps, 1)
        out: dict[str, Any] = {f"{p}_ms": 1000 * s / steps for p, s in self.seconds.items()}
        out.update(
            steps=self.steps,
            step_ms=1000 * total / steps,
            sequences_per_s=self.sequences / total if total else None,
            targets_per_s=self.targets / total if total else None,
        )
        if sys.platform != "win32":
            import resource

            # the process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out["peak_rss_mib"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
        if self.device.type == "cuda":
            out["peak_device_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def prediction_targets(items: torch.Tensor, skips: torch.Tensor) -> int:
    """Kept plays after the first of each row: the next-play targets of a causal model."""
    return int(((items[:, 1:] != 0) & ~skips[:, 1:].bool() & (items[:, :-1] != 0)).sum())
