"""``agentprm eval CONFIG --out DIR``: evaluate every agent a user compares on the same fixed games and seeds.

An evaluation config (:class:`EvalConfig`, ``agentprm eval --describe``) names the games (a run directory's, or a
game folder), the splits, the step budget, and a list of agents, each one of:

* ``policy``: a policy checkpoint (a folder, or ``pi_<i>`` of ``run``) sampled at ``temperature``;
* ``bon``: Best-of-N of a policy with a PRM checkpoint (a folder, or ``Q_<j>`` of ``run``), one row per N in ``n``;
* ``random``: uniform over the admissible actions; ``expert``: the environment's expert (ALFWorld's handcoded
  expert, TextWorldExpress's gold path);
* ``api``: a model behind an OpenAI-compatible chat API with the paper's prompt (``agents.api.*``).

Every agent plays every game of every split once, with the same agent seed (``seed``), in ``num_envs`` parallel
episodes over ``workers`` environment processes. Before any game is played every checkpoint is checked and every
API endpoint is asked for its model list (bounded retries), so a typo or a dead server fails at once, by name.

The output folder::

    DIR/eval.yaml                        the resolved config
    DIR/manifest.json                    versions, seed, host, times, run-directory format
    DIR/episodes/<split>/<label>.jsonl   one trajectory record per episode (prompts, responses, PRM scores)
    DIR/rows/<split>/<label>.json        a finished row; kept on rerun, so an interrupted evaluation resumes
    DIR/summary.json                     every row (DESIGN.md schema; rows carry their ``split``)
    DIR/report.md, DIR/plots/            Table-1-style tables, Best-of-N curve, calibration, task types

``agentprm report DIR`` rebuilds the last three from ``rows/`` and ``episodes/``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agentprm.config import ConfigError, at_least, defaults_dict, load_config, to_dict
from agentprm.models.api_client import ApiSettings
from agentprm.models.device import DeviceName, Precision, resolve_device
from agentprm.models.prompts import PromptConfig
from agentprm.pipeline.run_config import (
    GamesSettings,
    RaySettings,
    RunConfig,
    Split,
    WorkerSettings,
    pool_spec,
    worker_count,
)

AGENT_KINDS = ("policy", "bon", "random", "expert", "api")
EVAL_CONFIG = "eval.yaml"


@dataclass
class AgentSpec:
    kind: Literal["policy", "bon", "random", "expert", "api"] = field(default="policy", metadata={
        "help": "policy | bon (Best-of-N with a PRM) | random (random admissible) | expert | api (chat API model)"})
    name: str = field(default="", metadata={"help": "the row's agent name (default: pi_<i>, the checkpoint folder, "
                                                    "random, expert, or the API model)"})
    policy: str = field(default="", metadata={"help": "policy checkpoint folder, or pi_<i> of `run` (policy, bon)"})
    prm: str = field(default="", metadata={"help": "PRM checkpoint folder, or Q_<j> of `run` (bon)"})
    prm_name: str = field(default="", metadata={"help": "the row's PRM name (default: Q_<j> or the folder)"})
    n: list[int] = field(default_factory=lambda: [16], metadata={
        "range": at_least(1), "help": "Best-of-N sizes, one row each (bon)"})
    temperature: float | None = field(default=None, metadata={"range": at_least(0), 
        "help": "sampling temperature (default: 0.3 for policy and api, 1.0 for Best-of-N candidates)"})
    mode: Literal["admissible", "free"] = field(default="admissible", metadata={
        "help": "admissible: sample among admissible actions; free: generate and parse"})
    max_new_tokens: int = field(default=48, metadata={"range": at_least(1), "help": "free-generation cap"})
    filter_admissible: bool = field(default=True, metadata={"help": "Best-of-N scores admissible candidates only"})
    expert: Literal["handcoded", "planner"] = field(default="handcoded", metadata={
        "help": "ALFWorld expert (kind: expert); TextWorldExpress always uses its gold path"})
    prompt: PromptConfig | None = field(default=None, metadata={
        "help": "prompt (default: the run's prompt for checkpoints; the paper's reason_action prompt for api)"})
    api: ApiSettings = field(default_factory=ApiSettings, metadata={"help": "the chat API (kind: api)"})


@dataclass
class EvalConfig:
    run: str = field(default="", metadata={"help": "a run directory: its games, env and prompt; agents may name "
                                                   "its checkpoints pi_<i> and Q_<j>"})
    games: GamesSettings = field(default_factory=GamesSettings, metadata={
        "help": "the games when there is no `run` (games.root: a game folder; games.env)"})
    splits: list[Split] = field(default_factory=lambda: ["unseen"], metadata={
        "help": "splits to evaluate on (train, seen, unseen), same games and seeds for every agent"})
    eval_games: int = field(default=0, metadata={"range": at_least(0), "help": "first N games of each split (0 = all)"})
    max_steps: int = field(default=30, metadata={"range": at_least(1), "help": "actions per episode (paper: 30)"})
    prompt: PromptConfig | None = field(default=None, metadata={
        "help": "prompt of checkpoint agents when there is no `run` (default: action_only)"})
    agents: list[AgentSpec] = field(default_factory=list, metadata={"help": "the agents to compare"})
    record_prompts: bool = field(default=True, metadata={"help": "keep every step's prompt in the episode records"})
    calibration_bins: int = field(default=10, metadata={
        "range": at_least(1), "help": "bins of the PRM calibration plot"})
    num_envs: int = field(default=16, metadata={"range": at_least(1), "help": "episodes played at once"})
    workers: int | WorkerSettings = field(default=0, metadata={"range": at_least(0), 
        "help": "environment workers: a count of local processes (0 = in-process), or {count, backend: local | ray}"})
    ray: RaySettings = field(default_factory=RaySettings, metadata={"help": "the Ray cluster (workers.backend: ray)"})
    seed: int = field(default=0, metadata={"range": at_least(0), "help": "agent seed, the same for every agent"})
    device: DeviceName = field(default="auto", metadata={
        "help": "where the policies and PRMs run: auto (the GPU when torch sees one), cpu, or cuda"})
    precision: Precision = field(default="fp32", metadata={"help": "fp32, or bf16 autocast of every forward pass"})

    def validate(self) -> None:
        if not self.agents:
            raise ValueError("agents: list at least one agent")
        if not self.splits or any(s not in ("train", "seen", "unseen") for s in self.splits):
            raise ValueError(f"splits must be a non-empty list of train, seen, unseen; got {self.splits}")
        if self.max_steps < 1 or self.num_envs < 1 or worker_count(self.workers) < 0 or self.eval_games < 0:
            raise ValueError("max_steps and num_envs must be >= 1, workers and eval_games >= 0")
        if not self.run and not self.games.root:
            raise ValueError("games.root: give a game folder (or `run`: a run directory)")
        for index, spec in enumerate(self.agents):
            where = f"agents[{index}]"
            if spec.kind in ("policy", "bon") and not spec.policy:
                raise ValueError(f"{where}.policy: a {spec.kind} agent needs a policy checkpoint")
            if spec.kind == "bon" and (not spec.prm or not spec.n or any(n < 1 for n in spec.n)):
                raise ValueError(f"{where}: a bon agent needs prm and n (sizes >= 1)")
            if spec.kind == "api":
                spec.api.check_settings(f"{where}.api")
        labels = [label for spec in self.agents for label, _ in row_specs(spec)]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"agents: two agents give the same row {duplicates}; set `name` to tell them apart")


# -- names and checkpoints -------------------------------------------------------------------------------------------


RUN_POLICY = re.compile(r"^pi_(\d+)$")
RUN_PRM = re.compile(r"^Q_(\d+)$")


def agent_name(spec: AgentSpec) -> str:
    if spec.name:
        return spec.name
    if spec.kind in ("random", "expert"):
        return spec.kind
    if spec.kind == "api":
        return spec.api.model
    return spec.policy if RUN_POLICY.match(spec.policy) else _folder_name(spec.policy)


def prm_name(spec: AgentSpec) -> str:
    if spec.prm_name:
        return spec.prm_name
    return spec.prm if RUN_PRM.match(spec.prm) else _folder_name(spec.prm)


def _folder_name(path: str) -> str:
    parts = [p for p in Path(path).parts if p not in ("model", "/")]
    return "/".join(parts[-2:]) or path


def row_specs(spec: AgentSpec) -> list[tuple[str, int]]:
    """(file-safe label, N) of each row the agent gives."""
    name = agent_name(spec)
    if spec.kind == "bon":
        return [(_safe(f"BoN({name},{prm_name(spec)},N={n})"), n) for n in spec.n]
    return [(_safe(name), 1)]


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.,=()+-]+", "_", label)


def resolve_checkpoint(value: str, run: str, pattern: re.Pattern, where: str) -> str:
    """A checkpoint folder from a folder path or a run name (pi_<i>, Q_<j>); raises ConfigError naming ``where``."""
    from agentprm.models.checkpoints import check_model_source

    match = pattern.match(value)
    if match:
        if not run:
            raise ConfigError(f"{where}: {value!r} names a checkpoint of a run, but `run` is not set")
        i = int(match.group(1))
        path = Path(run) / (f"iter_{i}/policy/model" if pattern is RUN_POLICY else f"iter_{i + 1}/prm/model")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{where}: {value} has no checkpoint in {run} (expected {path})")
        return str(path)
    if (Path(value) / "model" / "config.json").is_file():
        return str(Path(value) / "model")
    try:
        return check_model_source(value)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


# -- games -----------------------------------------------------------------------------------------------------------


def game_source(config: EvalConfig) -> tuple[RunConfig, Path]:
    """The run config whose games (and prompt) the evaluation uses, and the folder its games resolve against."""
    from agentprm.pipeline.stages import check_run_format

    if config.run:
        run = Path(config.run)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"run: {run} is not a run directory (no config.yaml)")
        check_run_format(run)
        return load_config(RunConfig, run / "config.yaml"), run
    return RunConfig(games=config.games), Path(config.games.root)


def default_prompt(config: EvalConfig, run_config: RunConfig) -> PromptConfig:
    if config.prompt is not None:
        return config.prompt
    return run_config.prompt if config.run else PromptConfig()


# -- agents ----------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One agent spec made ready: checkpoint folders resolved, endpoint checked."""

    spec: AgentSpec
    policy: str = ""
    prm: str = ""
    client: Any = None


def prepare(config: EvalConfig) -> list[Prepared]:
    """Check every agent before any game is played: checkpoints exist, endpoints answer."""
    from agentprm.models.api_client import ChatClient

    prepared = []
    for index, spec in enumerate(config.agents):
        where = f"agents[{index}]"
        item = Prepared(spec)
        if spec.kind in ("policy", "bon"):
            item.policy = resolve_checkpoint(spec.policy, config.run, RUN_POLICY, f"{where}.policy")
        if spec.kind == "bon":
            item.prm = resolve_checkpoint(spec.prm, config.run, RUN_PRM, f"{where}.prm")
        if spec.kind == "api":
            item.client = ChatClient(spec.api)
            item.client.check()
        prepared.append(item)
    return prepared


def build_agent(item: Prepared, n: int, prompt: PromptConfig, seed: int, env: str, device: Any = "cpu",
                precision: str = "fp32"):
    """(runner policy, environment options) for one row; its models on ``device`` in ``precision``."""
    from agentprm.envs.runner import expert_policy, random_admissible_policy

    spec = item.spec
    if spec.kind == "random":
        return random_admissible_policy(seed), None
    if spec.kind == "expert":
        return expert_policy, ({"expert": spec.expert, "expert_seed": seed} if env == "alfworld" else {})
    prompt = spec.prompt or prompt
    if spec.kind == "api":
        from agentprm.agents.api_agent import ApiAgent

        api_prompt = spec.prompt or PromptConfig(template="reason_action")
        temperature = 0.3 if spec.temperature is None else spec.temperature
        return ApiAgent(item.client, prompt=api_prompt, temperature=temperature, seed=seed), None
    from agentprm.models.policy import Policy

    policy = Policy.from_pretrained(item.policy, device=device, precision=precision)
    if spec.kind == "policy":
        from agentprm.agents.policy_agent import PolicyAgent

        temperature = 0.3 if spec.temperature is None else spec.temperature
        return PolicyAgent(policy, prompt=prompt, mode=spec.mode, temperature=temperature,
                           max_new_tokens=spec.max_new_tokens, seed=seed), None
    from agentprm.agents.best_of_n import BestOfNAgent
    from agentprm.models.implicit_prm import load_prm

    prm = load_prm(item.prm, device=device, precision=precision)
    temperature = 1.0 if spec.temperature is None else spec.temperature
    return BestOfNAgent(policy, prm, n=n, prompt=prompt, mode=spec.mode, filter_admissible=spec.filter_admissible,
                        temperature=temperature, max_new_tokens=spec.max_new_tokens, seed=seed), None


def _iteration(spec: AgentSpec) -> int | None:
    match = RUN_POLICY.match(spec.policy) if spec.kind in ("policy", "bon") else None
    return int(match.group(1)) if match else None


# -- the evaluation --------------------------------------------------------------------------------------------------


def write_eval_config(config: EvalConfig, out: Path) -> None:
    """Write the resolved config; refuse a folder evaluated with a different one (its rows would not match)."""
    out.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(to_dict(config), sort_keys=True)
    path = out / EVAL_CONFIG
    if path.is_file() and path.read_text() != resolved:
        from agentprm.pipeline.run import config_changes

        changed = config_changes(yaml.safe_load(path.read_text()) or {}, to_dict(config),
                                 defaults=defaults_dict(EvalConfig))
        if changed:  # keys added since, at their defaults, change nothing
            raise ConfigError(f"{out} was evaluated with a different config (changed: {', '.join(changed)}); "
                              f"use a new --out folder")
    path.write_text(resolved)


def evaluate_suite(config: EvalConfig, out: str | Path, log=print) -> dict:
    """Evaluate every agent of ``config`` on every split into ``out``; return the summary (resumes finished rows)."""
    from agentprm.pipeline.evaluate import evaluate_policy
    from agentprm.pipeline.report import summary_row
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.stages import write_manifest

    out = Path(out)
    device = resolve_device(config.device)  # `device: cuda` without a GPU fails before anything is played
    run_config, games_root = game_source(config)
    prepared = prepare(config)  # every checkpoint and endpoint checked before any game is played
    write_eval_config(config, out)
    started = time.time()
    write_manifest(out, config.seed, started, None)
    context = RunContext(run_config, games_root, log)
    env = run_config.games.env
    prompt = default_prompt(config, run_config)
    for split in config.splits:
        games = context.games(split)
        games = games[: config.eval_games] if config.eval_games else games
        if not games:
            raise ConfigError(f"splits: no {split!r} games under {games_root}")
        for item in prepared:
            for label, n in row_specs(item.spec):
                row_path = out / "rows" / split / f"{label}.json"
                if row_path.is_file():
                    log(f"[skip] {split}/{label} (complete)")
                    continue
                records = out / "episodes" / split / f"{label}.jsonl"
                records.parent.mkdir(parents=True, exist_ok=True)
                records.unlink(missing_ok=True)  # an interrupted row is played again from its first game
                agent, env_options = build_agent(item, n, prompt, config.seed, env, device, config.precision)
                usage_before = _usage(item)
                evaluation = evaluate_policy(env, games, agent, label, max_steps=config.max_steps,
                                             num_envs=config.num_envs, workers=pool_spec(config.workers, config.ray),
                                             records=records,
                                             seed=config.seed, record_prompts=config.record_prompts,
                                             need_expert=item.spec.kind == "expert", env_options=env_options)
                row = _row(item, n, evaluation, summary_row)
                row.update(split=split, label=label, seconds=round(evaluation.seconds, 3),
                           agent_steps_per_s=evaluation.steps_per_second)
                if item.spec.kind == "bon":
                    row["prm_evaluations"] = agent.prm_evaluations
                if item.client is not None:
                    row["usage"] = _usage_delta(item, usage_before)
                row_path.parent.mkdir(parents=True, exist_ok=True)
                row_path.write_text(json.dumps(row, indent=2) + "\n")
                log(f"  {split}/{label}: success {row['success']:.1%} (95% CI {row['ci95'][0]:.1%}-"
                    f"{row['ci95'][1]:.1%}), mean actions {row['mean_actions']:.1f}, "
                    f"{row['agent_steps_per_s']:.1f} agent steps/s")
    summary = write_eval_report(out)
    write_manifest(out, config.seed, started, time.time())
    return summary


def _row(item: Prepared, n: int, evaluation, summary_row) -> dict:
    spec = item.spec
    kind = spec.kind
    prm = prm_name(spec) if kind == "bon" else None
    return summary_row(agent_name(spec), _iteration(spec), kind, n if kind == "bon" else 1, prm, evaluation.table)


def _usage(item: Prepared) -> dict:
    return item.client.usage.as_dict(item.spec.api) if item.client is not None else {}


def _usage_delta(item: Prepared, before: dict) -> dict:
    after = _usage(item)
    return {key: round(after[key] - before.get(key, 0), 6) if isinstance(after[key], float)
            else after[key] - before.get(key, 0) for key in after}


# -- summary and report ----------------------------------------------------------------------------------------------


def load_eval_config(out: Path) -> EvalConfig:
    return load_config(EvalConfig, out / EVAL_CONFIG)


def collect_eval_rows(out: Path, config: EvalConfig) -> list[dict]:
    """Finished rows in config order (split, then agent, then N)."""
    rows = []
    for split in config.splits:
        for spec in config.agents:
            for label, _ in row_specs(spec):
                path = out / "rows" / split / f"{label}.json"
                if path.is_file():
                    rows.append(json.loads(path.read_text()))
    return rows


def calibration_bins(records_path: Path, bins: int) -> list[dict]:
    """PRM calibration from Best-of-N episodes: the executed candidate's PRM score at each scored step against the
    episode's observed success, in ``bins`` equal-width bins of the score."""
    from agentprm.data import read_trajectories

    counts = [0] * bins
    predicted = [0.0] * bins
    observed = [0.0] * bins
    for record in read_trajectories(records_path):
        for step in record.steps:
            candidates, chosen = step.extras.get("candidates"), step.extras.get("chosen")
            if not candidates or chosen is None or candidates[chosen].get("score") is None:
                continue
            score = float(candidates[chosen]["score"])
            b = min(bins - 1, int(score * bins))
            counts[b] += 1
            predicted[b] += score
            observed[b] += float(record.won)
    return [{"lo": b / bins, "hi": (b + 1) / bins, "count": counts[b],
             "mean_pred": predicted[b] / counts[b] if counts[b] else 0.0,
             "mean_target": observed[b] / counts[b] if counts[b] else 0.0} for b in range(bins)]


def write_eval_report(out: str | Path) -> dict:
    """Rebuild ``summary.json``, plots and ``report.md`` of an evaluation folder from its finished rows."""
    from agentprm.pipeline.report import plot_calibration, write_report, write_summary
    from agentprm.pipeline.stages import check_run_format

    out = Path(out)
    check_run_format(out)
    config = load_eval_config(out)
    run_config, _ = game_source(config)
    rows = collect_eval_rows(out, config)
    games_per_split = {}
    for row in rows:
        games_per_split[row["split"]] = max(games_per_split.get(row["split"], 0), row["episodes"])
    write_summary(out / "summary.json", run_config.games.env, ",".join(config.splits),
                  sum(games_per_split.values()), config.max_steps, rows)
    bon = [row for row in rows if row["kind"] == "bon" and row["split"] == config.splits[0]]
    if bon:
        largest = max(bon, key=lambda r: r["n"])
        records = out / "episodes" / largest["split"] / f"{largest['label']}.jsonl"
        bins = calibration_bins(records, config.calibration_bins) if records.is_file() else []
        if any(b["count"] for b in bins):
            plot_calibration(bins, out / "plots" / "calibration.png",
                             title=f"PRM calibration: {largest['label']}, {largest['split']}",
                             ylabel="observed success (mean per bin)")
    usage = [row for row in rows if row.get("usage")]
    sections = {"Evaluation": (f"`agentprm eval` into `{out}`; the resolved config is `{EVAL_CONFIG}`, versions "
                               f"and seed are in `manifest.json`, every episode is in `episodes/<split>/`. "
                               f"Plots show the `{config.splits[0]}` split.")}
    if usage:
        sections["API usage"] = "\n".join(
            ["| agent | split | requests | retries | prompt tokens | completion tokens | seconds | cost |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
            + [f"| {r['agent']} | {r['split']} | {r['usage']['requests']} | {r['usage']['retries']} | "
               f"{r['usage']['prompt_tokens']} | {r['usage']['completion_tokens']} | {r['usage']['seconds']:.0f} | "
               f"{r['usage']['cost']:.4f} |" for r in usage])
    write_report(out, out / "summary.json", sections, plot_split=config.splits[0])
    return json.loads((out / "summary.json").read_text())
