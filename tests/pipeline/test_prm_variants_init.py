"""`benchmarks/prm_variants.py --prm-init`: a variant's PRM trained from another model on the same rollouts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from prm_variants import prepare_with_init  # noqa: E402


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def finished_variant(root: Path) -> Path:
    source = root / "implicit"
    write(source / "config.yaml", "iterations: 1\n")
    for name in ("games/g.json", "demos/d.jsonl", "model_init/model/config.json", "iter_0/eval/pi_0.jsonl",
                 "iter_0/policy/model/config.json", "iter_0/policy/model/model.safetensors",
                 "iter_1/rollouts/shard_0.jsonl", "iter_1/targets/targets.json", "iter_1/prm/model/config.json"):
        write(source / name, f"base {name}")
    return source


def test_the_copy_has_the_same_rollouts_and_the_other_model_as_pi_0(tmp_path):
    source = finished_variant(tmp_path)
    init = tmp_path / "small"
    write(init / "config.json", "small config")
    write(init / "model.safetensors", "small weights")
    folder = tmp_path / "implicit@small"
    prepare_with_init(source, folder, init)
    policy = folder / "iter_0" / "policy" / "model"
    assert sorted(p.name for p in policy.iterdir()) == ["config.json", "model.safetensors"]
    assert (policy / "model.safetensors").read_text() == "small weights"
    assert (folder / "iter_1" / "rollouts" / "shard_0.jsonl").read_text() == "base iter_1/rollouts/shard_0.jsonl"
    assert (folder / "iter_1" / "targets" / "targets.json").samefile(source / "iter_1" / "targets" / "targets.json")
    assert not (folder / "iter_1" / "prm").exists()  # to be trained from the other model
    assert (folder / "config.yaml").read_text() == "iterations: 1\n"
    # the source variant is untouched
    assert (source / "iter_0/policy/model/model.safetensors").read_text() == "base iter_0/policy/model/model.safetensors"
    assert (source / "iter_1/prm/model/config.json").is_file()
    # a second call (a resumed benchmark) keeps the folder as it is
    prepare_with_init(source, folder, init)
    assert (policy / "model.safetensors").read_text() == "small weights"


def test_an_init_that_is_not_a_model_folder_is_refused(tmp_path):
    source = finished_variant(tmp_path)
    with pytest.raises(SystemExit, match="not a model folder"):
        prepare_with_init(source, tmp_path / "x", tmp_path / "missing")
    assert not (tmp_path / "x").exists()
