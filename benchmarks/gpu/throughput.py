"""Training and acting throughput of the library's own stages, per embedded preset, on whatever device torch sees.

For each ``--presets`` size the script builds the embedded model (tokenizer trained on the demonstrations) and
times, through the library's real entry points:

- ``sft``: ``train_sft`` for ``--steps`` optimiser steps (batch ``--batch-size``) on the demonstrations;
- ``prm``: ``train_implicit_prm`` (the configs' PRM) for ``--steps`` steps on the demonstrations' episodes;
- ``dpo``: ``train_online_dpo`` for ``--steps`` steps (16 states x 4 admissible samples per step) against the
  implicit PRM;
- ``kl``: ``train_kl_policy`` (the configs' policy step) for ``--steps`` steps, 16 states per step;
- ``agent``: ``evaluate_policy`` with the SFT policy (admissible mode, temperature 0.3) on ``--games`` unseen games,
  ``--num-envs`` at once and ``--workers`` environment processes: agent steps/s, environments included.

Tokens are counted where they are spent: a forward pre-hook on every transformer body (``*Model``, the module every
policy, PRM and trainer pass goes through once) adds the ``input_ids`` it receives (padding included), so a
stage's tokens/s is (tokens through the model in that stage, forward passes of training and scoring alike) / (the
stage's wall time). A backward pass is not counted again: it is part of the time. The first call of each stage
includes its warm-up (CUDA context, kernels), as a real run's stages do.

    PYTHONPATH=src python benchmarks/gpu/throughput.py --work /tmp/tp --presets tiny,small,base \
        --results benchmarks/results/gpu_throughput.json

On a CPU it runs the same code at toy size (the kit's test: ``--presets tiny --steps 2 --games 4``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch


class TokenCounter:
    """Sums ``input_ids.numel()`` over the forward passes of transformer bodies (not of their LM / score heads'
    wrappers, which call the body: each token is counted once per pass)."""

    def __init__(self) -> None:
        self.tokens = 0
        self._handle = None
        self._is_body: dict[type, bool] = {}

    def _hook(self, module, args, kwargs) -> None:
        kind = type(module)
        if kind not in self._is_body:
            from transformers import PreTrainedModel

            self._is_body[kind] = issubclass(kind, PreTrainedModel) and kind.__name__.endswith("Model")
        if self._is_body[kind]:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.tokens += int(ids.numel())

    def __enter__(self) -> "TokenCounter":
        self._handle = _global_kwargs_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _global_kwargs_hook(hook):
    """A forward pre-hook with kwargs on every module (torch's global hook has no kwargs form): wrap
    ``Module.__call__`` for the duration."""
    original = torch.nn.Module.__call__

    def call(module, *args, **kwargs):
        hook(module, args, kwargs)
        return original(module, *args, **kwargs)

    torch.nn.Module.__call__ = call

    class Handle:
        def remove(self) -> None:
            torch.nn.Module.__call__ = original

    return Handle()


@contextmanager
def timed(device: torch.device):
    """Wall time of the block, synchronised with the device's queue at both ends."""
    box: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    yield box
    if device.type == "cuda":
        torch.cuda.synchronize()
    box["seconds"] = time.perf_counter() - start


def prepare_data(work: Path, games: int, workers: int) -> tuple[Path, Path]:
    """Games (real ALFWorld engine, small rooms) and the expert's demonstrations of the training games."""
    from agentprm.envs.alfworld_build import generate_games
    from agentprm.envs.registry import list_games
    from agentprm.pipeline.demos import record_demos

    root, demos = work / "games", work / "demos.jsonl"
    if not (root / "json_2.1.1").is_dir():
        generate_games(root, seed=7, counts={"train": max(games, 8), "valid_seen": 0, "valid_unseen": games},
                       max_receptacles=6, workers=max(1, workers), progress=False)
    if not demos.is_file():
        record_demos("alfworld", list_games("alfworld", "train", root=str(root)), demos, progress=False)
    return root, demos


def measure_preset(preset: str, work: Path, root: Path, demos: Path, args, device: torch.device) -> dict:
    from agentprm.agents.policy_agent import PolicyAgent
    from agentprm.algorithms.dpo_trainer import DPOConfig, train_online_dpo
    from agentprm.algorithms.implicit_prm import train_implicit_prm
    from agentprm.algorithms.kl_step import KLStepConfig, prm_states, train_kl_policy
    from agentprm.algorithms.prm_training import PRMTrainConfig
    from agentprm.algorithms.sft import SFTConfig, train_sft
    from agentprm.config import load_config
    from agentprm.data import read_trajectories
    from agentprm.envs.registry import list_games
    from agentprm.models.embedded import init_embedded_model
    from agentprm.models.implicit_prm import ImplicitPRM
    from agentprm.models.policy import Policy
    from agentprm.models.prompts import PromptConfig, PromptState
    from agentprm.models.tokenizer import environment_corpus
    from agentprm.pipeline.evaluate import evaluate_policy

    folder = work / preset
    records = read_trajectories(demos)
    prompt = PromptConfig(template="action_only", history_window=2)
    init = init_embedded_model(folder / "init", environment_corpus(records), preset=preset, vocab_size=2048, seed=0)
    params = sum(p.numel() for p in Policy.from_pretrained(init).model.parameters())
    out: dict = {"preset": preset, "parameters": params}
    precision, name = args.precision, str(device)

    def stage(label: str, fn) -> None:
        with TokenCounter() as counter, timed(device) as clock:
            fn()
        out[label] = {"seconds": clock["seconds"], "tokens": counter.tokens,
                      "tokens_per_s": counter.tokens / max(clock["seconds"], 1e-9)}
        print(f"  {preset} {label}: {clock['seconds']:.1f} s, {out[label]['tokens_per_s']:,.0f} tokens/s", flush=True)

    sft_config = load_config(SFTConfig, {
        "data": str(demos), "model": str(init), "out": str(folder / "sft"), "max_steps": args.steps,
        "batch_size": args.batch_size, "lr": 0.003, "warmup_steps": 1, "val_fraction": 0.0,
        "eval_every": args.steps, "save_every": args.steps, "prompt": {"template": "action_only"},
        "mixed_precision": "bf16" if precision == "bf16" else "no", "progress": False})
    stage("sft", lambda: train_sft(sft_config, device=name))
    model = folder / "sft" / "model"

    states = [PromptState.from_step_records(r.task, r.steps, i, r.task_type)
              for r in records for i in range(len(r.steps))]
    prm_config = load_config(PRMTrainConfig, {"kind": "implicit", "beta": 0.1, "lr": 0.001, "max_steps": args.steps,
                                              "batch_size": 8, "progress": False})
    stage("prm", lambda: train_implicit_prm(prm_config, records, str(model), folder / "prm", prompt,
                                            device=name, precision=precision))
    prm = ImplicitPRM.from_policy(model, beta=0.1, device=name, precision=precision)
    dpo_config = load_config(DPOConfig, {"steps": args.steps, "states_per_step": 16, "samples_per_state": 4,
                                         "temperature": 1.0, "mode": "admissible", "progress": False})
    stage("dpo", lambda: train_online_dpo(dpo_config, model, prm, states, folder / "dpo", prompt,
                                          device=name, precision=precision))
    kl_config = load_config(KLStepConfig, {"steps": args.steps, "states_per_step": 16, "progress": False})
    stage("kl", lambda: train_kl_policy(kl_config, model, prm, prm_states(states), folder / "kl", prompt,
                                        device=name, precision=precision))

    games = list_games("alfworld", "unseen", root=str(root))[: args.games]
    policy = Policy.from_pretrained(model, device=device, precision=precision)
    agent = PolicyAgent(policy, prompt=prompt, mode="admissible", temperature=0.3, seed=0)
    with timed(device) as clock:
        evaluation = evaluate_policy("alfworld", games, agent, "pi_0", max_steps=args.max_steps,
                                     num_envs=args.num_envs, workers=args.workers, record_prompts=False)
    out["agent"] = {"seconds": clock["seconds"], "games": len(games), "steps": evaluation.agent_steps,
                    "steps_per_s": evaluation.agent_steps / max(clock["seconds"], 1e-9), "num_envs": args.num_envs,
                    "workers": args.workers}
    print(f"  {preset} agent: {out['agent']['steps_per_s']:.1f} steps/s", flush=True)
    return out


def environment(device: torch.device) -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "device": str(device), "cpu_count": _cpus()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    return info


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/agentprm-throughput", help="scratch folder (games, models)")
    parser.add_argument("--presets", default="tiny,small,base")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per training stage")
    parser.add_argument("--batch-size", type=int, default=32, help="SFT examples per step")
    parser.add_argument("--games", type=int, default=64, help="unseen games for agent steps/s")
    parser.add_argument("--max-steps", type=int, default=15, help="actions per episode in the agent timing")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="environment processes (0 = in-process)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--results", default="", help="JSON to write (e.g. benchmarks/results/gpu_throughput.json)")
    args = parser.parse_args(argv)

    from agentprm.models.device import resolve_device

    device = resolve_device(args.device)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root, demos = prepare_data(work, args.games, args.workers)
    result = {"environment": environment(device), "settings": {k: v for k, v in vars(args).items()
                                                                 if k not in ("work", "results")}, "presets": []}
    print(json.dumps(result["environment"]), flush=True)
    for preset in [p for p in args.presets.split(",") if p]:
        result["presets"].append(measure_preset(preset, work, root, demos, args, device))
        if args.results:  # after every preset: a job stopped at its time limit keeps what it measured
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0


def render(result: dict) -> str:
    env = result["environment"]
    lines = [f"device {env['device']} ({env.get('gpu', 'CPU')}), torch {env['torch']}, "
             f"precision {result['settings']['precision']}",
             "| preset | parameters | SFT tokens/s | PRM tokens/s | DPO tokens/s | KL tokens/s | agent steps/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for p in result["presets"]:
        lines.append(f"| {p['preset']} | {p['parameters'] / 1e6:.1f}M | {p['sft']['tokens_per_s']:,.0f} | "
                     f"{p['prm']['tokens_per_s']:,.0f} | {p['dpo']['tokens_per_s']:,.0f} | "
                     f"{p['kl']['tokens_per_s']:,.0f} | {p['agent']['steps_per_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
