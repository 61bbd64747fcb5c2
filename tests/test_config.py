"""Typed config loading: every bad key or value fails before work starts, naming the key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from agentprm.config import ConfigError, describe, load_config, to_dict


@dataclass
class Optimizer:
    lr: float = field(default=3e-3, metadata={"help": "learning rate"})
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Stage:
    data: str = field(metadata={"help": "input file"})
    steps: int = 10
    lora: bool = False
    tags: list[str] = field(default_factory=list)
    resume_from: str | None = None
    optimizer: Optimizer = field(default_factory=Optimizer)

    def validate(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: demos.jsonl\noptimizer:\n  lr: 1\n")
    config = load_config(Stage, path, ["steps=5", "optimizer.schedule=constant", "tags=[a, b]"])
    assert config == Stage(data="demos.jsonl", steps=5, tags=["a", "b"],
                           optimizer=Optimizer(lr=1.0, schedule="constant"))
    assert isinstance(config.optimizer.lr, float)
    assert to_dict(config)["optimizer"] == {"lr": 1.0, "schedule": "constant"}


@pytest.mark.parametrize("data, message", [
    ({"data": "x", "stepz": 3}, "unknown key(s) stepz"),
    ({"data": "x", "optimizer": {"lr": 1e-3, "beta": 2}}, "unknown key(s) optimizer.beta"),
    ({"data": "x", "steps": "many"}, "steps: expected an integer, got 'many'"),
    ({"data": "x", "steps": True}, "steps: expected an integer"),
    ({"data": "x", "lora": "yes"}, "lora: expected true or false"),
    ({"data": "x", "optimizer": {"schedule": "linear"}}, "optimizer.schedule: expected one of 'cosine', 'constant'"),
    ({"data": "x", "tags": "a"}, "tags: expected a list"),
    ({"data": "x", "steps": 0}, "steps must be >= 1"),
    ({}, "data"),
])
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError) as error:
        load_config(Stage, data)
    assert message in str(error.value)


def test_exponent_notation_is_a_number_although_yaml_reads_it_as_a_string(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: x\noptimizer:\n  lr: 1e-3\n")  # YAML 1.1: no dot, so the string '1e-3'
    assert load_config(Stage, path, ["optimizer.lr=5E-4"]).optimizer.lr == 5e-4
    assert load_config(Stage, path).optimizer.lr == 1e-3
    with pytest.raises(ConfigError, match="optimizer.lr: expected a number, got '1e-3x'"):
        load_config(Stage, path, ["optimizer.lr=1e-3x"])


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Stage, tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Stage, {"data": "x"}, ["steps"])


def test_describe_lists_help():
    assert "lr (float, default 0.003): learning rate" in describe(Optimizer)
