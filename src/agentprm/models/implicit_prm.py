"""The implicit PRM (Yuan et al. 2024, "Free Process Rewards without Process Labels"; the PRM of PRIME).

A causal LM pi_phi, initialised to the policy, and a frozen reference pi_ref (the same policy) define

    z(s, a) = beta * [ log pi_phi(a | s) - log pi_ref(a | s) ]                    (process score of one step)

and an episode's outcome score r_phi(tau) = sum_t z(s_t, a_t), trained by cross-entropy against the outcome
(``algorithms.implicit_prm``). Yuan et al.'s process value of a prefix is the cumulative sum q_t = sum_{k<=t} z_k;
two actions at the SAME state share the prefix sum, so ranking them by q_t is ranking them by z(s, a), and the
score here is Q(s, a) = sigmoid(z(s, a)). Before training phi = ref, so every action scores exactly 0.5: the PRM
starts with no opinion, and the softmax of the LM over a state's actions couples them, so raising one action's
log-probability lowers the others' (within-state contrast without same-state pairs).

On disk (``save_pretrained``): ``agentprm_prm.json`` ({"kind": "implicit", "beta": ...}), ``policy/`` (phi) and
``reference/`` (pi_ref), both plain HF causal-LM checkpoints, so the folder is self-contained.
:func:`load_prm` opens either kind of PRM folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentprm.models.policy import Policy
from agentprm.models.prm import sigmoid

KIND = "implicit"


class ImplicitPRM:
    """Scores (prompt, response) pairs by sigmoid(beta * (log pi_phi - log pi_ref)); see the module doc."""

    def __init__(self, policy: Policy, reference: Policy, beta: float) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.policy, self.reference, self.beta = policy, reference, float(beta)
        self.tokenizer = policy.tokenizer

    @classmethod
    def from_policy(cls, path: str | Path, beta: float, device: str = "cpu", precision: str = "fp32") -> "ImplicitPRM":
        """phi and the reference both loaded from the policy checkpoint ``path`` (all scores 0.5)."""
        return cls(Policy.from_pretrained(path, device=device, precision=precision),
                   Policy.from_pretrained(path, device=device, precision=precision), beta)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> "ImplicitPRM":
        folder = Path(path)
        card = card_of_kind(folder, KIND)
        return cls(Policy.from_pretrained(folder / "policy", device=device, precision=precision),
                   Policy.from_pretrained(folder / "reference", device=device, precision=precision), card["beta"])

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(folder / "policy")
        self.reference.save_pretrained(folder / "reference")
        (folder / "agentprm_prm.json").write_text(json.dumps({"kind": KIND, "beta": self.beta, **(extra or {})},
                                                             indent=2) + "\n")

    def log_ratios(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """z / beta = log pi_phi(response | prompt) - log pi_ref(response | prompt) per pair, each distinct prompt
        run once with all of its responses (``Policy.score_pairs``)."""
        phi = self.policy.score_pairs(prompts, responses)
        return [a - b for a, b in zip(phi, self.reference.score_pairs(prompts, responses))]

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """Q(s, a) = sigmoid(beta * log ratio) in (0, 1)."""
        return [sigmoid(self.beta * r) for r in self.log_ratios(prompts, responses)]


def read_card(folder: Path) -> dict[str, Any]:
    """A PRM folder's ``agentprm_prm.json`` ({} when absent); a corrupt card is reported with the fix."""
    card = folder / "agentprm_prm.json"
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{card} is corrupt ({error}); rebuild the PRM (`agentprm train-prm RUN --iteration i "
                         f"--redo`)") from None


def card_of_kind(folder: Path, kind: str) -> dict[str, Any]:
    """``folder``'s card (:func:`read_card`); a ValueError unless it names ``kind``."""
    card = read_card(folder)
    if card.get("kind") != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"{folder} is not {article} {kind} PRM (agentprm_prm.json kind {card.get('kind')!r})")
    return card


def load_prm(path: str | Path, device: str = "cpu", precision: str = "fp32") -> Any:
    """A PRM folder of any kind: an implicit PRM, a residual PRM (``models.residual_prm``) or a scalar-head
    ``ProcessRewardModel``, scoring on ``device`` in ``precision`` (models/device.py)."""
    from agentprm.models.prm import ProcessRewardModel
    from agentprm.models.residual_prm import KIND as RESIDUAL, ResidualPRM

    folder = Path(path)
    kind = read_card(folder).get("kind") if folder.is_dir() else None
    if kind == KIND:
        return ImplicitPRM.from_pretrained(folder, device=device, precision=precision)
    if kind == RESIDUAL:
        return ResidualPRM.from_pretrained(folder, device=device, precision=precision)
    return ProcessRewardModel.from_pretrained(path, device=device, precision=precision)
