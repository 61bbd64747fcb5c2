"""Process reward model Q(s, a) and value model V(s): a transformer with a scalar head.

Input
-----
The PRM reads exactly the policy's training sequence (see :mod:`agentprm.models.policy`):

    ids = prompt_ids + tokenize(response) + [EOS]

with ``prompt_ids`` = optional BOS + prompt tokens.  The **value model** V(s) is the same class
with ``response = ""``, i.e. ``ids = prompt_ids + [EOS]`` ("state followed by an empty action");
:meth:`ProcessRewardModel.value` is that shortcut.

Pooling
-------
Batches are LEFT-padded and position ids are ``cumsum(attention_mask) - 1``, so the last column
of every row holds its final EOS.  The scalar logit is ``score_head(h[:, -1])`` where ``h`` is
the backbone's last hidden state, shape ``(B, L, H)``.

We pool ourselves instead of calling ``*ForSequenceClassification.forward``: in transformers
5.24, ``GenericForSequenceClassification`` pools "the rightmost token != config.pad_token_id",
which silently picks the token *before* the final EOS whenever ``pad_token_id == eos_token_id``
(a common setup), and it does not derive position ids from the attention mask.  With a dedicated
pad token both agree (this is tested).

Outputs
-------
:meth:`ProcessRewardModel.logits` returns the raw head output ``(B,)`` with grad (train with
``BCEWithLogitsLoss``); :meth:`ProcessRewardModel.score` returns ``Q = sigmoid(logit)`` in [0, 1]
without grad.

Initialisation
--------------
:meth:`ProcessRewardModel.from_policy` copies the backbone (embeddings + transformer blocks) of a
causal-LM checkpoint, as in AgentPRM, and adds a NEW linear head, zero-initialised by default so
that every initial score is exactly 0.5 (``head_init="normal"`` draws N(0, initializer_range)).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from agentprm.models.device import autocast, check_precision
from agentprm.models.policy import (
    Policy,
    encode_prompts,
    encode_responses,
    eval_no_grad,
    fork_cache,
    left_pad,
    length_groups,
    position_ids_from_mask,
    right_pad,
)

__all__ = ["ProcessRewardModel", "sigmoid"]


def sigmoid(z: float) -> float:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _check_folder(path: str | Path, what: str) -> str:
    """A local checkpoint folder or a hub id (see ``models.checkpoints``); errors name the ``what`` and path."""
    from agentprm.models.checkpoints import check_model_source

    try:
        return check_model_source(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} checkpoint not found: {path}") from None


def _unwrap(model: Any) -> Any:
    """The underlying transformers model (unwraps PEFT wrappers; LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _init_head(model: Any, head_init: str) -> None:
    head = _unwrap(model).score
    with torch.no_grad():
        if head_init == "zero":
            head.weight.zero_()
        elif head_init == "normal":
            std = getattr(model.config, "initializer_range", 0.02)
            head.weight.normal_(0.0, std)
        else:
            raise ValueError(f"head_init must be 'zero' or 'normal', got {head_init!r}")
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


class ProcessRewardModel:
    """Scalar-head transformer scoring (prompt, response) pairs; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        inner = _unwrap(model)
        if not isinstance(getattr(inner, "score", None), torch.nn.Module):
            raise ValueError(f"{type(inner).__name__} has no `score` head; use an AutoModelForSequenceClassification")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer must define an eos_token")
        if getattr(inner.config, "num_labels", 1) != 1:
            raise ValueError(f"PRM needs num_labels=1, got {inner.config.num_labels}")
        self.device = torch.device(device)
        self.precision = check_precision(precision)  # bf16: scoring passes under autocast (models/device.py)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else int(tokenizer.eos_token_id)
        if inner.config.pad_token_id is None:  # lets HF's own forward handle batches too
            inner.config.pad_token_id = self.pad_id

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        precision: str = "fp32",
    ) -> "ProcessRewardModel":
        """Load a PRM saved by :meth:`save_pretrained` (``precision: bf16``: scoring under bf16 autocast)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from agentprm.models.checkpoints import LOAD_ERRORS, load_error

        folder = _check_folder(path, "PRM")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except LOAD_ERRORS as error:
            raise load_error(str(folder), error) from None
        return cls(model, tokenizer, device=device, precision=precision)

    @classmethod
    def from_policy(
        cls,
        policy: "str | Path | Policy | Any",
        tokenizer: Any = None,
        device: str | torch.device = "cpu",
        head_init: str = "zero",
        dtype: torch.dtype = torch.float32,
        precision: str = "fp32",
    ) -> "ProcessRewardModel":
        """Backbone copied from a causal LM (folder path, :class:`Policy` or model object), new head.

        A bare model object needs ``tokenizer``; a path or Policy brings its own.  The head is
        zero-initialised by default (all initial scores 0.5).
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if isinstance(policy, (str, Path)):
            folder = _check_folder(policy, "policy")
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(folder)
        else:
            if isinstance(policy, Policy):
                tokenizer = tokenizer if tokenizer is not None else policy.tokenizer
                policy = policy.model
            if tokenizer is None:
                raise ValueError("from_policy(model_object) needs tokenizer=")
            causal = _unwrap(policy)
            model = _seq_cls_from_config(causal.config, tokenizer)
            model.base_model.load_state_dict(causal.base_model.state_dict())
            model = model.to(dtype=next(causal.parameters()).dtype)
        _init_head(model, head_init)
        return cls(model, tokenizer, device=device, precision=precision)

    @classmethod
    def from_scratch(
        cls, tokenizer: Any, config: Any, device: str | torch.device = "cpu", head_init: str = "zero",
        precision: str = "fp32",
    ) -> "ProcessRewardModel":
        """Randomly initialised backbone from a transformers config (e.g. ``LlamaConfig``)."""
        model = _seq_cls_from_config(config, tokenizer)
        _init_head(model, head_init)
        return cls(model, tokenizer, device=device, precision=precision)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model weights/config and tokenizer files into ``path`` (created if missing)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ scoring

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Left-padded ``(ids, mask)``, both ``(B, L)``: prompt_ids + response tokens + EOS."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if len(prompts) == 0:
            raise ValueError("empty batch")
        seqs = [
            p + r
            for p, r in zip(encode_prompts(self.tokenizer, prompts), encode_responses(self.tokenizer, responses))
        ]
        return left_pad(seqs, self.pad_id, self.device)

    def forward_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Head logit at the last column of LEFT-padded ``ids``/``mask`` (B, L) -> (B,) float32."""
        inner = _unwrap(self.model)
        with autocast(self.device, self.precision):
            out = inner.base_model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
            )
            hidden = out.last_hidden_state[:, -1]  # (B, H): final EOS of every row
            return inner.score(hidden).squeeze(-1).float()  # (B,)

    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """Raw head logits ``(B,)`` with grad (train/eval mode left as the caller set it)."""
        ids, mask = self.encode(prompts, responses)
        return self.forward_ids(ids, mask)

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """``Q = sigmoid(logit)`` in [0, 1] per pair, no grad, eval mode.

        Pairs are grouped by prompt: each distinct prompt runs once and all of its responses run as a batch on its
        KV cache (:meth:`_shared_prompt_logits`), the way ``Policy.score_candidates`` scores actions. Best-of-N and
        DPO score several responses per state, which this makes about as cheap as scoring one. The result equals
        :meth:`logits` on the full sequences up to float error (tested).
        """
        return [sigmoid(z) for z in self.head_logits(prompts, responses, batch_size)]

    def head_logits(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """The head's raw logit per pair, no grad, eval mode, by the shared-prompt pass of :meth:`score`."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        distinct: dict[str, int] = {}
        owner = [distinct.setdefault(prompt, len(distinct)) for prompt in prompts]
        prompt_ids = encode_prompts(self.tokenizer, list(distinct))
        response_ids = encode_responses(self.tokenizer, list(responses))
        rows_of: list[list[int]] = [[] for _ in distinct]
        for row, b in enumerate(owner):
            rows_of[b].append(row)
        result = [0.0] * len(prompts)
        with eval_no_grad(self.model):
            for group in length_groups([len(ids) for ids in prompt_ids], batch_size):
                position = {b: k for k, b in enumerate(group)}
                rows = [row for b in group for row in rows_of[b]]
                logits = self._shared_prompt_logits([prompt_ids[b] for b in group],
                                                    [(position[owner[row]], response_ids[row]) for row in rows],
                                                    batch_size)
                for row, value in zip(rows, logits.tolist()):
                    result[row] = value
        return result

    def _shared_prompt_logits(self, prompt_ids: list[list[int]], rows: list[tuple[int, list[int]]],
                              batch_size: int) -> Tensor:
        """Head logits for (prompt index, response ids incl. EOS) rows: one pass over the left-padded prompts with
        a KV cache, then the responses, right-padded, in chunks of ``batch_size`` rows on copies of that cache;
        each row is read at its own last response token (its EOS). -> (len(rows),)"""
        with autocast(self.device, self.precision):
            return self._shared_prompt_pass(prompt_ids, rows, batch_size)

    def _shared_prompt_pass(self, prompt_ids: list[list[int]], rows: list[tuple[int, list[int]]],
                            batch_size: int) -> Tensor:
        inner = _unwrap(self.model)
        ids, mask = left_pad(prompt_ids, self.pad_id, self.device)  # (B, P)
        cache = inner.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                                 use_cache=True).cache
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            last = start + batch_size >= len(rows)
            row_cache = cache if last else fork_cache(cache)
            owner = torch.tensor([b for b, _ in chunk], device=self.device)  # (C,)
            resp, rmask = right_pad([r for _, r in chunk], self.pad_id, self.device)  # (C, R)
            row_cache.batch_select_indices(owner)
            pmask = mask[owner]  # (C, P)
            pos = pmask.sum(-1, keepdim=True) + torch.arange(resp.shape[1], device=self.device)  # (C, R)
            hidden = inner.base_model(input_ids=resp, attention_mask=torch.cat([pmask, rmask], 1), position_ids=pos,
                                      cache=row_cache, use_cache=True).last_hidden_state  # (C, R, H)
            ends = rmask.sum(-1) - 1  # (C,) column of each row's EOS
            out.append(inner.score(hidden[torch.arange(len(chunk)), ends]).squeeze(-1).float())
        return torch.cat(out)

    def value(self, states: Sequence[str], batch_size: int = 32) -> list[float]:
        """Value model V(s) = score(s, "") (state followed by an empty action + EOS)."""
        return self.score(states, [""] * len(states), batch_size=batch_size)


def _seq_cls_from_config(config: Any, tokenizer: Any) -> Any:
    """``AutoModelForSequenceClassification`` with ``num_labels=1`` and the tokenizer's special ids."""
    from transformers import AutoModelForSequenceClassification

    cfg = copy.deepcopy(config)
    cfg.num_labels = 1
    cfg.architectures = None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg.pad_token_id = pad
    cfg.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        cfg.bos_token_id = tokenizer.bos_token_id
    return AutoModelForSequenceClassification.from_config(cfg)
