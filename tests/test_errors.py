"""The rebuild hint names the stage command of the damaged file."""

from agentprm.errors import damaged, redo_hint


def test_redo_hint_names_the_stage_command():
    assert redo_hint("runs/a/iter_2/prm/model/model.safetensors") == \
        "rebuild it with `agentprm train-prm runs/a --iteration 2 --redo`"
    assert redo_hint("runs/a/iter_1/targets/targets.parquet").endswith("`agentprm targets runs/a --iteration 1 --redo`")
    assert redo_hint("/r/iter_3/policy/metrics.jsonl").endswith("`agentprm train-policy /r --iteration 3 --redo`")
    assert redo_hint("/r/iter_0/eval/metrics.jsonl").endswith("`agentprm eval /r --iteration 0 --redo`")
    assert redo_hint("/r/iter_0/policy/model") == "delete /r/iter_0/policy and rerun `agentprm run` on /r to rebuild it"
    assert redo_hint("/r/demos/demos.jsonl") == "delete /r/demos and rerun `agentprm run` on /r to rebuild it"
    assert redo_hint("x.parquet") == "rebuild or restore it"
    message = str(damaged("/r/iter_1/rollouts/shard_000.jsonl", "torn"))
    assert message.startswith("/r/iter_1/rollouts/shard_000.jsonl: torn; ")
