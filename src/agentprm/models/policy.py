"""Causal-LM policy: free generation, teacher-forced scoring and admissible-constrained sampling.

Token convention (shared with :mod:`agentprm.models.prompts` and the PRM)
-----------------------------------------------------------------------
A training sequence is ``prompt_ids + response_ids`` where

* ``prompt_ids = [BOS] + tokenize(prompt)`` if the tokenizer adds a BOS token with
  ``add_special_tokens=True`` (Llama-style), else ``tokenize(prompt)`` (GPT-2/Qwen-style).
  Other special tokens the tokenizer may add (e.g. a trailing EOS) are never added.
* ``response_ids = tokenize(response) + [EOS]`` (``add_special_tokens=False``), where EOS is
  ``tokenizer.eos_token_id``.

Prompt and response are tokenised separately and concatenated as ids, never re-tokenised jointly.

Log-probability definition
--------------------------
For a prompt ``x`` and response ids ``y_1..y_T`` (EOS included when produced),

    logprob(y | x) = sum_t log softmax(logits_t)[y_t],   logits_t = model(x, y_<t) at position of y_t

i.e. the log-probability under the *unmodified* model (temperature 1, no top-p, no admissible-set
renormalisation).  This is exactly what DPO / policy-gradient trainers recompute with a
teacher-forced forward pass, and :meth:`Policy.score_responses` is that reference computation.

Padding
-------
Prompts are LEFT-padded (so every prompt ends at the last column and new tokens are appended
on the right); position ids are ``cumsum(attention_mask) - 1`` so padding never shifts positions.
Candidate actions in :meth:`Policy.score_candidates` are RIGHT-padded after the shared prompt cache.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from agentprm.models.device import autocast, check_precision

__all__ = [
    "Sample",
    "Policy",
    "tokenizer_adds_bos",
    "encode_prompts",
    "encode_responses",
    "left_pad",
    "right_pad",
    "position_ids_from_mask",
    "eval_no_grad",
]


# --------------------------------------------------------------------------- tokenisation


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True if ``tokenizer(..., add_special_tokens=True)`` prepends ``tokenizer.bos_token_id``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == bos


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt: optional BOS (see module docstring) + text tokens."""
    if not prompts:
        return []
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if tokenizer_adds_bos(tokenizer):
        ids = [[tokenizer.bos_token_id] + list(x) for x in ids]
    for text, x in zip(prompts, ids):
        if len(x) == 0:
            raise ValueError(f"prompt {text!r} encodes to zero tokens (tokenizer adds no BOS)")
    return [list(x) for x in ids]


def encode_responses(tokenizer: Any, responses: Sequence[str]) -> list[list[int]]:
    """Token ids of each response: text tokens (no special tokens) + EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; responses must end with EOS")
    if not responses:
        return []
    ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [list(x) + [eos] for x in ids]


# --------------------------------------------------------------------------- padding


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[Tensor, Tensor]:
    """Left-pad to ``(ids, mask)``, both ``(B, L)`` long tensors."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, length - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, length - len(s):] = 1
    return ids.to(device), mask.to(device)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[Tensor, Tensor]:
    """Right-pad to ``(ids, mask)``, both ``(B, L)`` long tensors."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """``(B, L)`` positions that count only real tokens (pad positions get 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# --------------------------------------------------------------------------- small helpers


@contextmanager
def eval_no_grad(model: torch.nn.Module) -> Iterator[None]:
    """eval() + no_grad for the duration, restoring the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[targets] without materialising the full log-softmax.

    logits: (..., V); targets: (...) -> (...) float32.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)


def _top_p_filter(scaled: Tensor, top_p: float) -> Tensor:
    """Mask (to -inf) tokens outside the nucleus of mass ``top_p``. scaled: (N, V)."""
    sorted_logits, order = scaled.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    remove = (probs.cumsum(-1) - probs) > top_p  # mass strictly before the token already > top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)


def _pick_tokens(logits: Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> Tensor:
    """Next token per row from raw logits (N, V) -> (N,). Greedy when temperature == 0."""
    if temperature == 0:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        scaled = _top_p_filter(scaled, top_p)
    return torch.multinomial(scaled.softmax(-1), 1, generator=gen).squeeze(-1)


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def _check_sampling(temperature: float, top_p: float = 1.0) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _chunks(n_items: int, size: int) -> Iterator[range]:
    for start in range(0, n_items, size):
        yield range(start, min(start + size, n_items))


def length_groups(lengths: Sequence[int], max_size: int, max_padding: float = 0.25) -> list[list[int]]:
    """Indices of sequences grouped for left-padded batches: sorted by length, a group closes at ``max_size``
    items or before an item that would make the padded area exceed ``(1 + max_padding)`` x the real tokens,

        len(group) * max(length) > (1 + max_padding) * sum(length).

    Sorting alone does not bound padding in a large group (the longest item sets the width of all of them).
    """
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        width = lengths[i]  # sorted: the newcomer is the longest
        if group and (len(group) == max_size or (len(group) + 1) * width > (1 + max_padding) * (total + width)):
            groups.append(group)
            group, total = [], 0
        group.append(i)
        total += width
    if group:
        groups.append(group)
    return groups


def fork_cache(cache: Any) -> Any:
    """A copy of a Hugging Face KV cache whose batch selection and appends leave ``cache`` intact.

    A ``DynamicCache`` of plain ``DynamicLayer`` s replaces its key/value tensors on ``batch_select_indices`` and
    ``update`` (``x[idx]``, ``torch.cat``) rather than writing into them, so copying the layer objects (not the
    tensors) is enough and costs nothing; any other cache (sliding windows, static or quantised caches, other
    library versions) gets a deep copy.
    """
    layers = getattr(cache, "layers", None)
    plain = isinstance(layers, list) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)
    if type(cache).__name__ != "DynamicCache" or not plain:
        return copy.deepcopy(cache)
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in layers]
    return fork


# --------------------------------------------------------------------------- public API


@dataclass
class Sample:
    """One sampled response.

    Attributes:
        text: decoded response without special tokens (for admissible sampling: the candidate string).
        token_ids: generated ids INCLUDING the final EOS when produced; exactly the ids a trainer uses
            (never re-tokenise ``text``).
        logprob: ``sum_t log pi(token_ids[t] | prompt, token_ids[:t])`` under the unmodified model
            (raw logits, log_softmax, temperature 1, no top-p, no renormalisation over candidates).
            This is what DPO / trainers recompute with a teacher-forced pass.
        finished: True if the response ended with EOS (always True for admissible sampling),
            False if ``max_new_tokens`` was hit first.
    """

    text: str
    token_ids: list[int]
    logprob: float
    finished: bool


class Policy:
    """A Hugging Face decoder-only causal LM + tokenizer used as an agent policy."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer must define an eos_token (responses end with EOS)")
        self.device = torch.device(device)
        self.precision = check_precision(precision)  # bf16: every forward pass under autocast (models/device.py)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.eos_id: int = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.eos_id  # pad ids are always masked
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._has_logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters

    # ------------------------------------------------------------------ persistence

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        precision: str = "fp32",
    ) -> "Policy":
        """Load model + tokenizer from a checkpoint folder (any HF causal LM) or a hub id where downloads work;
        ``precision: bf16`` runs the forward passes under bf16 autocast on fp32 weights."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agentprm.models.checkpoints import LOAD_ERRORS, check_model_source, load_error

        source = check_model_source(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except LOAD_ERRORS as error:
            raise load_error(source, error) from None
        return cls(model, tokenizer, device=device, precision=precision)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model weights/config and tokenizer files into ``path`` (created if missing)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ forward helpers

    def _forward(
        self, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any = None, keep: int = 0
    ) -> tuple[Tensor, Any]:
        """One forward pass -> (logits (B, keep or L, V), cache). Appends to ``cache`` in place."""
        kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        if cache is not None:
            kwargs["cache"] = cache
        if keep and self._has_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        with autocast(self.device, self.precision):
            out = self.model(**kwargs)
        logits = out.logits[:, -keep:] if keep else out.logits
        return logits.float(), out.cache

    def _prefill(self, prompt_ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Any]:
        """Run left-padded prompts once -> (next-token logits (B, V), mask (B, P), cache)."""
        ids, mask = left_pad(prompt_ids, self.pad_id, self.device)  # (B, P)
        logits, cache = self._forward(ids, mask, position_ids_from_mask(mask), keep=1)
        return logits[:, -1].float(), mask, cache

    # ------------------------------------------------------------------ free generation

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 32,
        seed: int | None = None,
        batch_size: int = 64,
    ) -> list[list[Sample]]:
        """Sample ``n`` responses per prompt (greedy if temperature == 0), stopping at EOS.

        Prompts are batched (``batch_size`` rows = prompts x n per pass); each prompt is run once and
        its KV cache repeated ``n`` times.  ``Sample.logprob`` is the unmodified model's log-prob
        (see module docstring), not the temperature/top-p warped one.
        """
        _check_sampling(temperature, top_p)
        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1, got n={n}, max_new_tokens={max_new_tokens}")
        gen = _make_generator(seed, self.device)
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        results: list[list[Sample]] = []
        with eval_no_grad(self.model):
            for idx in _chunks(len(prompts), max(1, batch_size // n)):
                logits, mask, cache = self._prefill([prompt_ids[i] for i in idx])
                cache.batch_repeat_interleave(n)  # (B*n, heads, P, d): row b*n + j = sample j of prompt b
                tokens, logps = self._decode(
                    logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), cache,
                    temperature, top_p, max_new_tokens, gen,
                )
                results.extend(self._to_samples(tokens, logps, n))
        return results

    def _decode(
        self, logits: Tensor, mask: Tensor, cache: Any,
        temperature: float, top_p: float, max_new_tokens: int, gen: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """Cached sampling loop. logits (N, V), mask (N, P) -> tokens (N, T), logprobs (N, T).

        After a row emits EOS it is fed pad tokens (masked out) and its log-probs are 0.
        """
        next_pos = mask.sum(-1, keepdim=True)  # (N, 1) position of the first new token
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=self.device)
        tokens: list[Tensor] = []
        logps: list[Tensor] = []
        for step in range(max_new_tokens):
            tok = _pick_tokens(logits, temperature, top_p, gen)  # (N,)
            lp = _token_logprobs(logits, tok)  # (N,) raw-logit log-prob
            live = ~done
            tokens.append(torch.where(live, tok, torch.full_like(tok, self.pad_id)))
            logps.append(torch.where(live, lp, torch.zeros_like(lp)))
            done = done | (live & (tok == self.eos_id))
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, live.long().unsqueeze(1)], dim=1)  # (N, P + step + 1)
            step_logits, cache = self._forward(tokens[-1].unsqueeze(1), mask, next_pos + step, cache, keep=1)
            logits = step_logits[:, -1].float()
        return torch.stack(tokens, 1), torch.stack(logps, 1)

    def _to_samples(self, tokens: Tensor, logps: Tensor, n: int) -> list[list[Sample]]:
        """(B*n, T) generated tokens/log-probs -> B lists of n Samples (cut after the first EOS)."""
        out: list[list[Sample]] = []
        for row, (toks, lps) in enumerate(zip(tokens.tolist(), logps.tolist())):
            finished = self.eos_id in toks
            length = toks.index(self.eos_id) + 1 if finished else len(toks)
            ids = toks[:length]
            sample = Sample(
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=ids,
                logprob=float(sum(lps[:length])),
                finished=finished,
            )
            if row % n == 0:
                out.append([])
            out[-1].append(sample)
        return out

    # ------------------------------------------------------------------ teacher-forced scoring

    def score_responses(
        self, prompts: list[str], responses: list[list[str]], batch_size: int = 16
    ) -> list[list[float]]:
        """Teacher-forced ``logprob(response + EOS | prompt)`` for every response of every prompt.

        This is the reference computation (one full forward pass per sequence, left-padded,
        length-sorted batches of ``batch_size``).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        pairs = [(p, r) for p, rs in zip(prompt_ids, responses) for r in encode_responses(self.tokenizer, rs)]
        flat = self.sequence_logprobs(pairs, batch_size=batch_size)
        out: list[list[float]] = []
        for rs in responses:
            out.append(flat[: len(rs)])
            flat = flat[len(rs):]
        return out

    def sequence_logprobs(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16
    ) -> list[float]:
        """Sum log-prob of ``response_ids`` given ``prompt_ids`` for each (prompt_ids, response_ids) pair."""
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        result = [0.0] * len(pairs)
        with eval_no_grad(self.model):
            for idx in _chunks(len(order), batch_size):
                chunk = [pairs[order[i]] for i in idx]
                for i, value in zip(idx, self._pairs_logprob(chunk)):
                    result[order[i]] = value
        return result

    def _pairs_logprob(self, chunk: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
        resp_len = torch.tensor([len(r) for _, r in chunk], device=self.device)  # (B,)
        if int(resp_len.min()) < 1:
            raise ValueError("every response must contain at least one token (EOS)")
        ids, mask = left_pad([list(p) + list(r) for p, r in chunk], self.pad_id, self.device)  # (B, L)
        max_r = int(resp_len.max())
        logits, _ = self._forward(ids, mask, position_ids_from_mask(mask), keep=max_r + 1)
        tok_lp = _token_logprobs(logits[:, :-1], ids[:, -max_r:])  # (B, R): predicts the last R tokens
        k = torch.arange(max_r, device=self.device).unsqueeze(0)  # (1, R)
        in_response = k >= (max_r - resp_len).unsqueeze(1)  # (B, R)
        return (tok_lp * in_response).sum(-1).tolist()

    # ------------------------------------------------------------------ admissible-constrained decoding

    def score_candidates(
        self, prompts: list[str], candidates: list[list[str]], batch_size: int = 64
    ) -> list[list[float]]:
        """``logprob(candidate + EOS | prompt)`` for every candidate, sharing one prompt pass per prompt.

        Equal (up to float error) to :meth:`score_responses` on the same inputs.
        """
        prompt_ids, cand_ids = self._encode_candidates(prompts, candidates)
        return self._score_candidate_ids(prompt_ids, cand_ids, batch_size)

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> list[float]:
        """``logprob(response + EOS | prompt)`` per (prompt, response) pair: the pairs grouped by prompt, each
        distinct prompt scored once with all of its responses (:meth:`score_candidates`)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        distinct: dict[str, list[int]] = {}
        for row, prompt in enumerate(prompts):
            distinct.setdefault(prompt, []).append(row)
        out = [0.0] * len(prompts)
        if not distinct:
            return out
        keys = list(distinct)
        scores = self.score_candidates(keys, [[responses[row] for row in distinct[key]] for key in keys], batch_size)
        for key, values in zip(keys, scores):
            for row, value in zip(distinct[key], values):
                out[row] = float(value)
        return out

    def _encode_candidates(
        self, prompts: list[str], candidates: list[list[str]]
    ) -> tuple[list[list[int]], list[list[list[int]]]]:
        if len(prompts) != len(candidates):
            raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
        for i, cands in enumerate(candidates):
            if len(cands) == 0:
                raise ValueError(f"prompt {i} has no candidate actions (admissible list is empty)")
        return (
            encode_prompts(self.tokenizer, prompts),
            [encode_responses(self.tokenizer, c) for c in candidates],
        )

    def _score_candidate_ids(
        self, prompt_ids: list[list[int]], cand_ids: list[list[list[int]]], batch_size: int
    ) -> list[list[float]]:
        """Score every prompt's candidates, prompts grouped by length (:func:`length_groups`) so that a group's
        left padding, which every candidate row of the group also attends over, stays small."""
        out: list[list[float] | None] = [None] * len(prompt_ids)
        with eval_no_grad(self.model):
            for group in length_groups([len(p) for p in prompt_ids], batch_size):
                scores = self._score_group([prompt_ids[i] for i in group], [cand_ids[i] for i in group], batch_size)
                for i, value in zip(group, scores):
                    out[i] = value
        return out  # type: ignore[return-value]

    def _score_group(
        self, prompt_ids: list[list[int]], cand_ids: list[list[list[int]]], batch_size: int
    ) -> list[list[float]]:
        """One prompt pass for the group, then candidate passes of <= batch_size rows on the cache."""
        logits, mask, cache = self._prefill(prompt_ids)  # (B, V), (B, P)
        first_lp = logits.log_softmax(-1)  # (B, V) log-prob of each candidate's first token
        rows = [(b, ids) for b, cands in enumerate(cand_ids) for ids in cands]
        flat: list[float] = []
        for idx in _chunks(len(rows), batch_size):
            last = idx.stop == len(rows)
            row_cache = cache if last else fork_cache(cache)  # expansion replaces the cache's tensors
            flat.extend(self._score_rows([rows[i] for i in idx], first_lp, mask, row_cache))
        out: list[list[float]] = []
        for cands in cand_ids:
            out.append(flat[: len(cands)])
            flat = flat[len(cands):]
        return out

    def _score_rows(
        self, rows: list[tuple[int, list[int]]], first_lp: Tensor, mask: Tensor, cache: Any
    ) -> list[float]:
        """Score C candidate rows (owner prompt index, ids incl. EOS) against the prompt cache."""
        owner = torch.tensor([b for b, _ in rows], device=self.device)  # (C,)
        cand, cmask = right_pad([ids for _, ids in rows], self.pad_id, self.device)  # (C, Lc)
        lp = first_lp[owner].gather(1, cand[:, :1]).squeeze(1)  # (C,)
        if cand.shape[1] == 1:
            return lp.tolist()
        cache.batch_select_indices(owner)  # (B, h, P, d) -> (C, h, P, d)
        pmask = mask[owner]  # (C, P)
        full_mask = torch.cat([pmask, cmask[:, :-1]], dim=1)  # (C, P + Lc - 1)
        pos = pmask.sum(-1, keepdim=True) + torch.arange(cand.shape[1] - 1, device=self.device)  # (C, Lc-1)
        logits, _ = self._forward(cand[:, :-1], full_mask, pos, cache)  # (C, Lc-1, V)
        tok_lp = _token_logprobs(logits, cand[:, 1:])  # (C, Lc-1)
        return (lp + (tok_lp * cmask[:, 1:]).sum(-1)).tolist()

    def sample_admissible(
        self,
        prompts: list[str],
        candidates: list[list[str]],
        n: int = 1,
        temperature: float = 1.0,
        seed: int | None = None,
        batch_size: int = 64,
        replacement: bool = True,
    ) -> list[list[Sample]]:
        """Sample ``n`` actions per prompt from its admissible ``candidates``.

        Each candidate is scored as a response (tokens + EOS) with :meth:`score_candidates`; then
        indices are drawn with replacement with probability ``softmax(logprob / temperature)``
        (argmax, first on ties, when temperature == 0).  ``replacement=False`` draws min(n, candidates)
        DISTINCT ones from the same distribution without replacement (Gumbel top-k; the most likely ones at
        temperature 0).  ``Sample.logprob`` is the candidate's unconstrained model log-prob, ``finished`` is True.
        """
        _check_sampling(temperature)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        prompt_ids, cand_ids = self._encode_candidates(prompts, candidates)
        scores = self._score_candidate_ids(prompt_ids, cand_ids, batch_size)
        gen = _make_generator(seed, torch.device("cpu"))
        out: list[list[Sample]] = []
        for texts, ids, lps in zip(candidates, cand_ids, scores):
            logprobs = torch.tensor(lps, dtype=torch.float64)
            picks = _sample_indices(logprobs, n, temperature, gen) if replacement else \
                _sample_distinct(logprobs, n, temperature, gen)
            out.append([Sample(text=texts[i], token_ids=list(ids[i]), logprob=lps[i], finished=True) for i in picks])
        return out


def _sample_indices(logprobs: Tensor, n: int, temperature: float, gen: torch.Generator | None) -> list[int]:
    """n indices drawn from softmax(logprobs / temperature) with replacement; argmax if temperature == 0."""
    if temperature == 0:
        return [int(logprobs.argmax())] * n
    probs = (logprobs / temperature).softmax(-1)
    return torch.multinomial(probs, n, replacement=True, generator=gen).tolist()


def _sample_distinct(logprobs: Tensor, n: int, temperature: float, gen: torch.Generator | None) -> list[int]:
    """min(n, len) distinct indices drawn from softmax(logprobs / temperature) without replacement, in draw order:
    the top of logprobs / T + Gumbel noise (Gumbel top-k); the most likely ones (first on ties) at T == 0."""
    k = min(n, logprobs.numel())
    if temperature == 0:
        keys = logprobs
    else:
        uniform = torch.rand(logprobs.shape, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        keys = logprobs / temperature - torch.log(-torch.log(uniform))
    order = sorted(range(keys.numel()), key=lambda i: (-float(keys[i]), i))
    return order[:k]
