"""Supervised fine-tuning (behaviour cloning) of a policy on trajectory records: pi_0 of AgentPRM.

Loss: the token-level mean NLL of the response tokens (``sft_data.response_nll``), averaged over every micro-batch
of an optimiser step (gradient accumulation divides by the window's token count, so accumulating k micro-batches is
the same update as one k-times larger batch). AdamW, linear warm-up then cosine decay to ``min_lr_ratio * lr``,
gradient clipping.

Resumable: every ``save_every`` optimiser steps the model, optimiser and scheduler are saved to ``OUT/checkpoint``
(written to a temporary folder, then renamed). The batch order is a pure function of (seed, epoch), so a resumed run
continues from the saved step with exactly the batches it would have seen. The final model (LoRA merged) is saved
with ``save_pretrained`` to ``OUT/model`` and reloads with ``AutoModelForCausalLM.from_pretrained``.

The loop runs on ``accelerate`` (CPU here; one GPU, DDP, FSDP or DeepSpeed under ``accelerate launch``): each process
takes every ``num_processes``-th micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agentprm.algorithms.sft_data import Example, build_examples, collate, in_validation, response_nll
from agentprm.atomic import atomic_directory
from agentprm.config import above, at_least, between
from agentprm.data import read_trajectories
from agentprm.metrics import MetricsLogger
from agentprm.models.checkpoints import check_model_source
from agentprm.models.device import autocast, resolve_device
from agentprm.models.prompts import PromptConfig


@dataclass
class LoraSettings:
    enabled: bool = field(default=False, metadata={"help": "train LoRA adapters (peft) instead of all weights"})
    r: int = field(default=8, metadata={"range": at_least(1), "help": "LoRA rank"})
    alpha: int = field(default=16, metadata={
        "range": at_least(1), "help": "LoRA scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={
        "range": between(0, 1, high_open=True), "help": "dropout on the LoRA path"})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      metadata={"help": "module names that get adapters"})


@dataclass
class SFTConfig:
    data: str = field(default="", metadata={"help": "trajectory JSONL file(s) of demonstrations, comma-separated "
                                                    "(filled in by `agentprm run`)"})
    model: str = field(default="", metadata={"help": "initial model: a local HF checkpoint folder (or a hub id on a "
                                                     "machine that can download); filled in by `agentprm run`"})
    out: str = field(default="", metadata={"help": "output folder: model/, checkpoint/, metrics.jsonl, "
                                                   "tensorboard/ (filled in by `agentprm run`)"})
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata={"help": "prompt rendering"})
    only_successful: bool = field(default=True, metadata={"help": "train only on episodes that were won"})
    max_episodes: int = field(default=0, metadata={
        "range": at_least(0), "help": "use at most this many episodes (0 = all)"})
    val_fraction: float = field(default=0.1, metadata={
        "range": between(0, 1, high_open=True), "help": "fraction of GAMES held out for validation loss"})
    epochs: float = field(default=3.0, metadata={"range": above(0), "help": "passes over the training examples"})
    max_steps: int = field(default=0, metadata={"range": at_least(0), "help": "optimiser steps (0 = from epochs)"})
    batch_size: int = field(default=16, metadata={"range": at_least(1), "help": "examples per micro-batch"})
    grad_accum: int = field(default=1, metadata={"range": at_least(1), "help": "micro-batches per optimiser step"})
    lr: float = field(default=3e-3, metadata={
        "range": above(0), "help": "peak learning rate (small from-scratch models like 3e-3; pretrained ones ~2e-5)"})
    min_lr_ratio: float = field(default=0.1, metadata={
        "range": between(0, 1), "help": "final lr as a fraction of the peak"})
    warmup_steps: int = field(default=10, metadata={"range": at_least(0), "help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"range": at_least(0), "help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"range": at_least(0), "help": "gradient clipping (0 = off)"})
    max_length: int = field(default=512, metadata={
        "range": at_least(1), "help": "tokens per example; longer prompts show fewer of the oldest history steps"})
    group_by_length: bool = field(default=True, metadata={"help": "batches of examples of similar length (less "
                                                                  "padding; see sft.batch_order)"})
    eval_every: int = field(default=50, metadata={
        "range": at_least(1), "help": "validation loss every N steps (and at the end)"})
    save_every: int = field(default=50, metadata={
        "range": at_least(1), "help": "checkpoint every N steps (and at the end)"})
    seed: int = field(default=0, metadata={
        "range": at_least(0), "help": "seeds model init of new heads, data order and dropout"})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision: no | bf16 | fp16"})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA options"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.epochs <= 0:
            raise ValueError("lr and epochs must be > 0")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")


class SFTError(ValueError):
    """Bad input detected before training starts (missing model, empty or unusable data)."""


def check_model_path(model: str) -> None:
    try:
        check_model_source(model)
    except (FileNotFoundError, ValueError) as error:
        raise SFTError(str(error)) from None


def load_examples(config: SFTConfig, tokenizer) -> tuple[list[Example], list[Example]]:
    records = []
    for path in (p.strip() for p in config.data.split(",")):
        if not Path(path).is_file():
            raise SFTError(f"demonstration file not found: {path} (record some with `agentprm demos`)")
        records += list(read_trajectories(path))  # a torn or malformed line raises, naming file and line
    if config.max_episodes:
        records = records[: config.max_episodes]
    if not records:
        raise SFTError(f"no episodes in {config.data}")
    examples = build_examples(records, tokenizer, config.prompt, config.max_length, config.only_successful)
    if not examples:
        raise SFTError(f"no training examples in {config.data} (only_successful={config.only_successful})")
    train = [e for e in examples if not in_validation(e.game_id, config.val_fraction)]
    val = [e for e in examples if in_validation(e.game_id, config.val_fraction)]
    if not train:
        raise SFTError("every game fell into validation: lower val_fraction or add games")
    return train, val


def batch_order(num_examples: int, batch_size: int, seed: int, epoch: int,
                lengths: Sequence[int] | None = None, group_batches: int = 50) -> list[list[int]]:
    """The micro-batches of one epoch: a permutation seeded by (seed, epoch), cut into ``batch_size`` chunks.

    With ``lengths`` (grouping by length, as Hugging Face's ``group_by_length``): the permutation is cut into
    windows of ``group_batches * batch_size`` examples, each window is sorted by length (longest first) and cut into
    batches, and the batches are shuffled with the same generator. Every example is still used once per epoch, but a
    batch holds examples of similar length, so little of it is padding.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    if lengths is None:
        return [order[i: i + batch_size] for i in range(0, num_examples, batch_size)]
    if len(lengths) != num_examples:
        raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
    window = max(1, group_batches) * batch_size
    batches = []
    for start in range(0, num_examples, window):
        chunk = sorted(order[start: start + window], key=lambda i: -lengths[i])
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine from 1 down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _load_model(config: SFTConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path(config.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model)
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
    except OSError as error:
        raise SFTError(f"cannot load model {config.model!r}: {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, tokenizer


@torch.no_grad()
def evaluate(model, examples: list[Example], batch_size: int, pad_id: int) -> float:
    """Token-level mean response NLL over ``examples``."""
    if not examples:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start: start + batch_size], pad_id)
        device = next(model.parameters()).device
        logits = model(input_ids=batch["input_ids"].to(device)).logits
        nll, tokens = response_nll(logits, batch["labels"].to(device))
        total, count = total + nll.item(), count + tokens.item()
    model.train()
    return total / max(count, 1)


def _save_atomic(folder: Path, write) -> None:
    with atomic_directory(folder, overwrite=True) as staging:
        write(staging)


def train_sft(config: SFTConfig, stop_after: int | None = None, device: str = "auto") -> dict:
    """Train on ``device`` (models/device.py); return a summary. ``stop_after`` stops (with a checkpoint) after that
    many optimiser steps in this call, as an interruption would; a later call with the same config resumes from the
    checkpoint. ``mixed_precision: bf16`` is this project's autocast (models/device.py), which leaves accelerate's
    process-wide state alone so that later stages in the same process keep their own precision; fp16 (which needs
    a loss scaler) is accelerate's."""
    from accelerate import Accelerator
    from tqdm import tqdm

    missing = [name for name in ("data", "model", "out") if not getattr(config, name)]
    if missing:
        raise SFTError(f"missing required key(s): {', '.join(missing)}")
    torch.manual_seed(config.seed)
    out = Path(config.out)
    model, tokenizer = _load_model(config)
    train, val = load_examples(config, tokenizer)
    lengths = [len(example) for example in train] if config.group_by_length else None
    bf16 = config.mixed_precision == "bf16"
    accelerator = Accelerator(mixed_precision=None if bf16 else config.mixed_precision,
                              cpu=resolve_device(device).type == "cpu")

    # -- schedule ----------------------------------------------------------------------------------------------------
    micro_per_epoch = math.ceil(len(train) / config.batch_size)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, config.warmup_steps, total_steps, config.min_lr_ratio))
    # The scheduler stays outside accelerate, which would step it once per process: one step per optimiser step.
    model, optimizer = accelerator.prepare(model, optimizer)

    # -- resume ------------------------------------------------------------------------------------------------------
    step = _resume(out / "checkpoint", accelerator, model, optimizer, scheduler)
    pad_id = tokenizer.pad_token_id
    metrics = MetricsLogger(out / "metrics.jsonl", "sft", tensorboard_dir=out / "tensorboard",
                            enabled=accelerator.is_main_process)
    bar = tqdm(total=total_steps, initial=step, desc="sft", disable=not config.progress)
    start_time, tokens_seen, steps_this_call = time.perf_counter(), 0, 0
    model.train()
    while step < total_steps:
        # -- one optimiser step: the micro-batches are a pure function of (seed, step) --------------------------------
        epoch, within = divmod(step, steps_per_epoch)
        batches = batch_order(len(train), config.batch_size, config.seed, epoch, lengths)
        window = batches[within * config.grad_accum: (within + 1) * config.grad_accum]
        # The loss is the window's token mean however the window is split over processes: each process scales its
        # summed NLL by P / (the whole window's response tokens) and DDP averages the P gradients.
        window_tokens = sum(len(train[i].response_ids) for ids in window for i in ids)
        share, factor = process_share(window, accelerator)
        collated = [collate([train[i] for i in ids], pad_id) for ids in share]
        loss_sum = torch.zeros((), device=accelerator.device)
        for index, batch in enumerate(collated):
            sync = index == len(collated) - 1
            context = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with context, accelerator.autocast(), autocast(accelerator.device, "bf16" if bf16 else "fp32"):
                logits = model(input_ids=batch["input_ids"].to(accelerator.device)).logits
                nll, _ = response_nll(logits, batch["labels"].to(accelerator.device))
                loss = nll * factor * accelerator.num_processes / window_tokens
                accelerator.backward(loss)
            loss_sum += nll.detach() * factor
            tokens_seen += int(batch["input_ids"].numel())
        if accelerator.num_processes > 1:
            loss_sum = accelerator.reduce(loss_sum, reduction="sum")
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_call += 1
        bar.update(1)

        # -- logging, validation, checkpoints ------------------------------------------------------------------------
        metrics.log(step, loss=float(loss_sum) / max(window_tokens, 1), lr=scheduler.get_last_lr()[0],
                    tokens_per_s=tokens_seen / max(time.perf_counter() - start_time, 1e-9))
        if step % config.eval_every == 0 or step == total_steps:
            metrics.log(step, val_loss=evaluate(model, val, config.batch_size, pad_id))
        stopping = stop_after is not None and steps_this_call >= stop_after
        if step % config.save_every == 0 or step == total_steps or stopping:
            _save_checkpoint(out / "checkpoint", accelerator, model, optimizer, scheduler, step)
        if stopping:
            break
    bar.close()
    metrics.close()
    summary = {"step": step, "total_steps": total_steps, "train_examples": len(train), "val_examples": len(val),
               "train_loss": evaluate(model, train[:256], config.batch_size, pad_id),
               "val_loss": evaluate(model, val, config.batch_size, pad_id),
               "tokens_per_s": tokens_seen / max(time.perf_counter() - start_time, 1e-9)}
    if step >= total_steps and accelerator.is_main_process:
        _save_final(out / "model", accelerator.unwrap_model(model), tokenizer, config)
        (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return summary


def process_share(window: list, accelerator) -> tuple[list, float]:
    """This process's micro-batches of an optimiser step's ``window`` (every ``num_processes``-th one) and the factor
    its summed loss is multiplied by. A process left without a micro-batch (a short last window) still runs one with
    factor 0, so every process takes part in the gradient all-reduce."""
    share = window[accelerator.process_index:: accelerator.num_processes]
    return (share, 1.0) if share else (window[:1], 0.0)


def _save_checkpoint(folder: Path, accelerator, model, optimizer, scheduler, step: int) -> None:
    def write(tmp: Path) -> None:
        accelerator.unwrap_model(model).save_pretrained(tmp / "weights")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")

    if accelerator.is_main_process:
        _save_atomic(folder, write)
    accelerator.wait_for_everyone()


def _resume(folder: Path, accelerator, model, optimizer, scheduler) -> int:
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return 0
    from safetensors.torch import load_file

    unwrapped = accelerator.unwrap_model(model)
    weights = folder / "weights"
    if (weights / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(unwrapped, load_file(weights / "adapter_model.safetensors"))
    else:
        state = load_file(weights / "model.safetensors")
        missing, unexpected = unwrapped.load_state_dict(state, strict=False)
        if unexpected or any("embed" not in name and "lm_head" not in name for name in missing):
            raise SFTError(f"checkpoint {folder} does not match the model (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}); delete it to start over")
    saved = torch.load(folder / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return int(json.loads(state_file.read_text())["step"])


def _save_final(folder: Path, model, tokenizer, config: SFTConfig) -> None:
    if config.lora.enabled:
        model = model.merge_and_unload()  # a plain checkpoint: loads anywhere without peft

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "agentprm_sft.json").write_text(json.dumps({"data": config.data, "seed": config.seed,
                                                           "lora": config.lora.enabled}, indent=2) + "\n")

    _save_atomic(folder, write)
