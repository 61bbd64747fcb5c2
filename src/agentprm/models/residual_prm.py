"""A PRM that starts at the policy's ranking and learns a correction: the policy's log-probability as a feature.

The scalar PRM (:mod:`agentprm.models.prm`) must learn from the Monte Carlo targets alone which of a state's actions
is better, and measured against ground-truth Q it ranks them worse than the policy's own log-probability does
(``benchmarks/README.md``, "PRMs against ground-truth Q"). This PRM gives its head the reference policy's opinion
as an input:

    z(s, a) = h_theta(s, a) + w * ell(s, a),        ell(s, a) = log pi_ref(a | s),        Q(s, a) = sigmoid(z)

with h_theta the scalar PRM's head on its backbone (initialised from the policy, head zero: h = 0), pi_ref the
frozen policy the PRM was initialised from (``ell`` is the log-probability of ``response + EOS`` under the LM, as
``Policy.score_candidates`` computes it, so the ranking of a state's actions by ell is the policy's own), and w a
learnt scalar starting at ``prm.policy_weight``. Before training, two actions at one state are ordered exactly as
the policy orders them (for w > 0); the soft BCE on Q_hat (``algorithms.prm_training``, any of its losses) then fits
h_theta to what the policy's log-probability does not explain, and w to how much of it to keep. The difference to
adding w * log pi to a trained scalar PRM after the fact (``prm_oracle.py grade --mix``): there, h_theta was fit to
the whole of Q_hat, including what the policy already knows, and the sum counts that part twice.

On disk (``save_pretrained``): the scalar PRM's files at the top level, ``reference/`` (pi_ref, a plain causal-LM
checkpoint) and ``agentprm_prm.json`` ({"kind": "residual", "policy_weight": w, ...}); ``implicit_prm.load_prm``
opens it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from agentprm.models.implicit_prm import card_of_kind
from agentprm.models.policy import Policy
from agentprm.models.prm import ProcessRewardModel, sigmoid

KIND = "residual"


class ResidualPRM:
    """Q(s, a) = sigmoid(h_theta(s, a) + w log pi_ref(a | s)); see the module doc."""

    def __init__(self, prm: ProcessRewardModel, reference: Policy, policy_weight: float) -> None:
        self.prm, self.reference, self.policy_weight = prm, reference, float(policy_weight)
        self.tokenizer = prm.tokenizer

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> "ResidualPRM":
        folder = Path(path)
        card = card_of_kind(folder, KIND)
        if not (folder / "reference").is_dir():
            raise FileNotFoundError(f"residual PRM {folder} has no reference/ policy: rebuild it (`agentprm "
                                    f"train-prm RUN --iteration i --redo`)")
        return cls(ProcessRewardModel.from_pretrained(folder, device=device, precision=precision),
                   Policy.from_pretrained(folder / "reference", device=device, precision=precision),
                   card["policy_weight"])

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        folder = Path(path)
        self.prm.save_pretrained(folder)
        self.reference.save_pretrained(folder / "reference")
        card = {**(extra or {}), "kind": KIND, "policy_weight": self.policy_weight}
        (folder / "agentprm_prm.json").write_text(json.dumps(card, indent=2) + "\n")

    def logits(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """z = h_theta + w * ell per pair (no grad)."""
        head = self.prm.head_logits(prompts, responses, batch_size)
        ell = self.reference.score_pairs(prompts, responses)
        return [h + self.policy_weight * e for h, e in zip(head, ell)]

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """Q(s, a) = sigmoid(z) in [0, 1] per pair."""
        return [sigmoid(z) for z in self.logits(prompts, responses, batch_size)]

