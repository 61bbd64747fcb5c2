"""Where models run and in which precision: one rule for every stage.

A run's ``device`` (``auto | cpu | cuda``) and ``precision`` (``fp32 | bf16``) reach every model the run loads:
the rollouts' and the evaluation's policies, the PRMs that score Best-of-N candidates, and the trainers (SFT, the
PRM, online DPO, the KL step). ``auto`` is the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an
error (a ``ConfigError``) before any work starts, never a silent fall-back to a CPU run a hundred times slower.

Precision is mixed, the usual recipe for training on bf16 hardware: weights (and the optimiser's state) stay in
fp32, and each forward pass runs under ``torch.autocast(device_type, dtype=torch.bfloat16)``, so the matrix
products are bf16 while reductions, softmaxes and the losses stay fp32. Scores and log-probabilities are returned
in fp32 whatever the precision. The same code path runs on the CPU (autocast supports bf16 there), which is how the
test suite covers it without a GPU.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

from agentprm.config import ConfigError

DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``; ``cuda`` (or ``cuda:N``) only where torch sees a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} but torch sees no GPU (torch {torch.__version__}, "
                               f"CUDA build: {torch.version.cuda or 'none'}); use device: auto or cpu")
        return torch.device(name)
    raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")


def check_precision(precision: str) -> str:
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
    return precision


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The forward passes' context: bf16 autocast on ``device`` for ``precision: bf16``, else nothing."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def accelerate_precision(precision: str) -> str:
    """The same choice in accelerate's words (``Accelerator(mixed_precision=...)``)."""
    return {"fp32": "no", "bf16": "bf16"}[check_precision(precision)]
