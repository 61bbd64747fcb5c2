"""Model sources: local checkpoint folders are checked at once; hub ids pass through to from_pretrained."""

import pytest

from agentprm.models.checkpoints import check_model_source


def test_hub_ids_pass_through_unchanged():
    assert check_model_source("meta-llama/Llama-3.2-3B-Instruct") == "meta-llama/Llama-3.2-3B-Instruct"
    assert check_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_paths_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        check_model_source("./models/tiny")  # relative paths are never taken for hub ids
    with pytest.raises(ValueError, match="config.json"):
        check_model_source(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert check_model_source(tmp_path) == str(tmp_path)


def test_policy_reports_a_missing_checkpoint_by_name(tmp_path):
    from agentprm.models.policy import Policy

    with pytest.raises(FileNotFoundError, match="missing"):
        Policy.from_pretrained(tmp_path / "missing")
