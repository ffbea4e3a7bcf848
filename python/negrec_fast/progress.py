"""A dependency-free progress bar on stderr (rate, ETA, live metrics)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Minimal progress bar: ``with Progress(total, "batch", "epoch 1") as bar: bar.update(1, loss=0.3)``.

    Redraws at most every ``min_interval`` seconds; on a non-terminal stream (CI logs) it
    prints one line per ``min_interval * 20`` seconds instead, and a final line on close. A
    postfix value may be a callable, called only when a line is drawn (e.g. a value that costs
    a device synchronisation to read).
    """

    def __init__(
        self,
        total: int | None,
        unit: str = "it",
        desc: str = "",
        *,
        disable: bool = False,
        stream: TextIO | None = None,
        min_interval: float = 0.2,
    ) -> None:
        self.total = total
        self.unit = unit
        self.desc = desc
        self.disable = disable
        self.stream = stream or sys.stderr
        self.count = 0
        self.postfix: dict[str, object] = {}
        self._start = time.perf_counter()
        self._last = 0.0
        self._drawn_count = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = min_interval if self._tty else min_interval * 20

    def update(self, n: int = 1, **postfix: object) -> None:
        self.count += n
        self.postfix.update(postfix)
        now = time.perf_counter()
        if not self.disable and now - self._last >= self._interval:
            self._last = now
            self._draw(final=False)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return self.count / elapsed if elapsed > 0 else 0.0

    def _line(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.rate()
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.count / self.total, 1.0)
            filled = int(frac * 20)
            eta = (self.total - self.count) / rate if rate > 0 else float("nan")
            parts.append(f"{frac:4.0%} |{'#' * filled}{'.' * (20 - filled)}| {self.count}/{self.total}")
            parts.append(f"[{elapsed:.0f}s<{eta:.0f}s, {rate:.1f} {self.unit}/s]")
        else:
            parts.append(f"{self.count} {self.unit} [{elapsed:.0f}s, {rate:.1f} {self.unit}/s]")
        values = {k: v() if callable(v) else v for k, v in self.postfix.items()}
        parts.extend(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        return " ".join(parts)

    def _draw(self, final: bool) -> None:
        if final and not self._tty and self._drawn_count == self.count:
            return  # the last line already shows the final state
        self._drawn_count = self.count
        line = self._line()
        if self._tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.disable:
            self._draw(final=True)
            self.disable = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
