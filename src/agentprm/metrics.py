"""Scalar metrics: one JSON line per value in ``metrics.jsonl`` (the run directory's contract) and tensorboard.

Each line is ``{"stage", "iter", "step", "name", "value", "time"}``; lines are flushed as they are written so a
killed run keeps every metric logged before the kill. Tensorboard is optional (used when installed).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricsLogger:
    """Append scalars for one stage of one iteration; ``tensorboard_dir`` adds an event file. ``enabled=False``
    (every process but the main one of a multi-process trainer) writes nothing."""

    def __init__(self, path: str | Path, stage: str, iteration: int = 0, tensorboard_dir: str | Path | None = None,
                 enabled: bool = True):
        self.path = Path(path)
        self.stage, self.iteration = stage, iteration
        self._file = None
        self._tensorboard = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; the JSONL file is the record
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tensorboard = SummaryWriter(str(tensorboard_dir))

    def log(self, step: int, **values: float) -> None:
        if self._file is None:
            return
        now = time.time()
        for name, value in values.items():
            value = float(value)
            line = {"stage": self.stage, "iter": self.iteration, "step": int(step), "name": name,
                    "value": value if math.isfinite(value) else None, "time": now}
            self._file.write(json.dumps(line) + "\n")
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(f"{self.stage}/{name}", value, step)
        self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path, stage: str | None = None, name: str | None = None) -> list[dict]:
    """Every logged line (optionally of one stage and name), in the order written."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            if raw.strip():
                line = json.loads(raw)
                if (stage is None or line["stage"] == stage) and (name is None or line["name"] == name):
                    lines.append(line)
    return lines
