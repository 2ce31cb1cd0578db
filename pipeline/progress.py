"""Training progress for people: one line, redrawn in place on a terminal, or a plain line
every few seconds when the output is a pipe or a file (torchrun and TorchX collect the
workers' output through pipes and files, where a redrawn bar becomes one line per redraw).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("pipeline.progress")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Steps done out of `total`, with the latest loss and samples/s.

    enabled: False draws nothing (ranks other than 0: they run in lockstep with it).
    interval: seconds between plain lines when `stream` is not a terminal.
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        *,
        enabled: bool = True,
        interval: float = 15.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.step, self.initial = total, initial, initial
        self.enabled, self.interval = enabled, interval
        self.stream = stream or sys.stderr
        self.loss: float | None = None
        self.samples_per_s: float | None = None
        self.bar: tqdm | None = None
        self.started = self.last_line = time.monotonic()
        if enabled and self.stream.isatty():
            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, file=self.stream
            )

    def set_postfix(self, loss: float, samples_per_s: float) -> None:
        self.loss, self.samples_per_s = loss, samples_per_s
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:,.0f}")

    def update(self, steps: int = 1) -> None:
        self.step += steps
        if self.bar is not None:
            self.bar.update(steps)
        elif self.enabled and time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        self.last_line = now = time.monotonic()
        elapsed = now - self.started
        done = self.step - self.initial
        eta = elapsed / done * (self.total - self.step) if done else float("nan")
        parts = [f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:,.0f} samples/s")
        parts.append(f"{_clock(elapsed)} elapsed")
        if done and self.step < self.total:
            parts.append(f"eta {_clock(eta)}")
        log.info(", ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.step > self.initial:
            self._line()  # the final count, always
