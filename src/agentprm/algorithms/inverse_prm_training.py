"""The InversePRM trainer: Eq. 9 as a transition classifier (equations in :mod:`agentprm.algorithms.inverse_prm`).

The optimiser, schedule, batching and saving are the PRM trainer's (:mod:`agentprm.algorithms.prm_training`): the
same ``PRMTrainConfig``, a PRM initialised from pi_{i-1}'s backbone, AdamW with warm-up and cosine decay, seeded
batch order, one atomic ``save_pretrained``. What differs is the loss: each item is a transition, and a micro-batch
runs the PRM on its (s, a) sequences and on the (s', a') sequences of the transitions that have a next state, in one
padded pass.

Validation on the held-out games' transitions (never an outcome): ``balanced_accuracy`` of d > 0 for expert vs
learner, ``expert_auc`` (AUC of d separating expert from learner transitions), ``val_loss`` (the balanced loss),
and the mean score sigmoid(z(s, a)) of expert and of learner actions.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from agentprm.algorithms.inverse_prm import (
    InverseTransition,
    balanced_accuracy,
    class_weights,
    inverse_prm_loss,
    logit_differences,
)
from agentprm.algorithms.prm_training import (
    PRMTrainConfig,
    PRMTrainError,
    _load_prm,
    _save_model_atomic,
    _write_json_atomic,
    auc,
    encode_sequences,
    fit_prm_module,
)
from agentprm.metrics import MetricsLogger
from agentprm.models.policy import eval_no_grad, left_pad
from agentprm.models.prompts import PromptConfig

__all__ = ["train_inverse_prm", "inverse_validation_report"]


def _encode(transitions: Sequence[InverseTransition], tokenizer: Any, prompt_config: PromptConfig,
            max_length: int) -> tuple[list[list[int]], list[list[int] | None]]:
    current = encode_sequences([t.state for t in transitions], [t.response for t in transitions], tokenizer,
                               prompt_config, max_length)
    with_next = [k for k, t in enumerate(transitions) if t.next_state is not None]
    encoded = encode_sequences([transitions[k].next_state for k in with_next],
                               [transitions[k].next_response for k in with_next], tokenizer, prompt_config,
                               max_length)
    following: list[list[int] | None] = [None] * len(transitions)
    for k, ids in zip(with_next, encoded):
        following[k] = ids
    return current, following


def _logits(module: torch.nn.Module, sequences: Sequence[list[int]], pad_id: int, device: Any,
            batch_size: int) -> list[float]:
    """Head logits z per sequence, no grad, length-sorted batches."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    with eval_no_grad(module):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, value in zip(chunk, module(*left_pad([sequences[i] for i in chunk], pad_id, device)).tolist()):
                out[i] = value
    return out


def inverse_validation_report(transitions: Sequence[InverseTransition], z: Sequence[float],
                              z_next: Sequence[float | None], gamma: float) -> dict[str, Any]:
    """Held-out metrics of Eq. 9's classifier (JSON-ready; non-finite values become None)."""
    labels = [t.label for t in transitions]
    d = logit_differences(z, z_next, gamma)
    weights = class_weights(labels)
    if d:
        loss = inverse_prm_loss(torch.tensor(d), torch.zeros(len(d)), torch.zeros(len(d)),
                                torch.tensor(labels, dtype=torch.float32), torch.tensor(weights), 0.0).item()
    else:
        loss = math.nan
    scores = [1 / (1 + math.exp(-value)) for value in z]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    report = {"num_transitions": len(transitions), "expert_transitions": sum(labels),
              "learner_transitions": len(labels) - sum(labels), "num_games": len({t.game_id for t in transitions}),
              "val_loss": loss, "balanced_accuracy": balanced_accuracy(d, labels), "expert_auc": auc(d, labels),
              "mean_score_expert": mean([s for s, y in zip(scores, labels) if y]),
              "mean_score_learner": mean([s for s, y in zip(scores, labels) if not y])}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()}


def train_inverse_prm(config: PRMTrainConfig, transitions: list[InverseTransition], gamma: float,
                      init_model_path: str | Path, out_dir: str | Path, prompt_config: PromptConfig,
                      metrics: MetricsLogger | None = None, iteration: int = 0) -> dict:
    """Fit the PRM to Eq. 9 on the "train" transitions, validate on the "val" ones, save ``out_dir/model``.

    Every transition with a next state must have its ``next_response`` (``sample_next_responses``). Writes
    ``model/``, ``validation.json``, ``prm_summary.json`` and (unless ``metrics`` is given) ``metrics.jsonl``.
    """
    from accelerate import Accelerator

    config.validate()
    if not 0.0 < gamma <= 1.0:
        raise PRMTrainError(f"gamma must be in (0, 1], got {gamma}")
    missing = [t for t in transitions if t.next_state is not None and not t.next_response]
    if missing:
        raise PRMTrainError(f"{len(missing)} transitions lack a' (sample_next_responses first)")
    train = [t for t in transitions if t.split == "train"]
    val = [t for t in transitions if t.split == "val"]
    labels = [t.label for t in train]
    if not (0 < sum(labels) < len(labels)):
        raise PRMTrainError(f"InversePRM needs expert AND learner transitions to train on; got {sum(labels)} "
                            f"expert and {len(labels) - sum(labels)} learner")
    weights = class_weights(labels)
    out = Path(out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    prm = _load_prm(config, init_model_path, device)
    current, following = _encode(train, prm.tokenizer, prompt_config, config.max_length)
    lengths = [max(len(current[k]), len(following[k] or [])) for k in range(len(train))] \
        if config.group_by_length else None

    own_metrics = metrics is None
    if own_metrics:
        metrics = MetricsLogger(out / "metrics.jsonl", "prm", iteration=iteration, tensorboard_dir=out / "tensorboard",
                                enabled=accelerator.is_main_process)

    def micro_batch_loss(module: torch.nn.Module, batch: list[int]) -> torch.Tensor:
        rows = [row for row, k in enumerate(batch) if following[k] is not None]  # positions with a next state
        logits = module(*left_pad([current[k] for k in batch] + [following[batch[row]] for row in rows], prm.pad_id,
                                  device))
        z, z_next = logits[: len(batch)], torch.zeros(len(batch), device=device, dtype=logits.dtype)
        if rows:
            z_next = z_next.index_put((torch.tensor(rows, device=device),), logits[len(batch):])
        has_next = torch.tensor([following[k] is not None for k in batch], device=device)
        return inverse_prm_loss(z, z_next, has_next, torch.tensor([labels[k] for k in batch], device=device),
                                torch.tensor([weights[k] for k in batch], device=device), gamma)

    val_current, val_following = _encode(val, prm.tokenizer, prompt_config, config.max_length)

    def validate(module: torch.nn.Module) -> dict[str, Any]:
        z = _logits(module, val_current, prm.pad_id, device, config.eval_batch_size)
        present = [k for k, s in enumerate(val_following) if s is not None]
        zn = _logits(module, [val_following[k] for k in present], prm.pad_id, device, config.eval_batch_size)
        z_next: list[float | None] = [None] * len(val)
        for k, value in zip(present, zn):
            z_next[k] = value
        return inverse_validation_report(val, z, z_next, gamma)

    def logged(module: torch.nn.Module) -> dict[str, float]:
        report = validate(module)
        return {f"val_{k}" if not k.startswith("val_") else k: v for k, v in report.items()
                if k in ("val_loss", "balanced_accuracy", "expert_auc") and v is not None}

    start_time = time.perf_counter()
    try:
        module, losses, total_steps = fit_prm_module(config, prm, accelerator, len(train), lengths,
                                                     micro_batch_loss, metrics, logged if val else None,
                                                     desc="inverse prm")
    finally:
        if own_metrics:
            metrics.close()

    report = validate(module) if val else {}
    summary = {"steps": total_steps, "loss": "inverse_prm", "gamma": gamma, "train_transitions": len(train),
               "train_expert": sum(labels), "train_learner": len(labels) - sum(labels), "val_transitions": len(val),
               "first_loss": losses[0], "final_loss": losses[-1], "val_loss": report.get("val_loss"),
               "balanced_accuracy": report.get("balanced_accuracy"), "expert_auc": report.get("expert_auc"),
               "seconds": time.perf_counter() - start_time, "model": "model"}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _save_model_atomic(prm, out / "model", {"loss": "inverse_prm", "gamma": gamma, "iteration": iteration,
                                                "train_transitions": len(train)})
        _write_json_atomic(out / "validation.json", report)
        _write_json_atomic(out / "prm_summary.json", summary)
    accelerator.wait_for_everyone()
    return summary


def transitions_to_jsonl(transitions: Sequence[InverseTransition], path: Path) -> None:
    """One JSON object per transition (atomic write)."""
    from dataclasses import asdict

    from agentprm.atomic import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(asdict(t)) + "\n" for t in transitions))


def transitions_from_jsonl(path: Path) -> list[InverseTransition]:
    from agentprm.models.prompts import PromptState

    def state(data: dict | None) -> PromptState | None:
        if data is None:
            return None
        return PromptState(data["task"], data["observation"], list(data["admissible_actions"]),
                           [tuple(pair) for pair in data["history"]], data.get("task_type", ""))

    out = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            data = json.loads(line)
            out.append(InverseTransition(data["game_id"], int(data["label"]), data["split"], state(data["state"]),
                                         data["response"], state(data["next_state"]), data["next_response"],
                                         int(data["iteration"])))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not an InversePRM transition ({error})") from None
    return out
