"""Post-hoc rationalisation (``agentprm rationalise`` and the ``rationales`` stage of a run): exact prompts and
parsing on hand-built records, the no-future-leak guarantee through a real HTTP path, resume and torn files, the
real local model (SmolLM2-135M-Instruct), a real local server (``transformers serve``) and a scripted server for
failures."""

import json
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentprm.config import ConfigError, load_config
from agentprm.data import CorruptFileError, StepRecord, TrajectoryRecord, TrajectoryWriter, read_trajectories
from agentprm.models.api_client import ApiSettings, EndpointError
from agentprm.pipeline.rationalise import (Completion, RationaliseError, RationaliseSettings,
                                           mentioned_actions, parse_rationale, rationale_messages, rationalise_file,
                                           summary_path)
from agentprm.pipeline.run_config import RunConfig


def step(observation, actions, action):
    return StepRecord(observation=observation, admissible_actions=actions, response=action, reason="",
                      action=action, admissible=True, reward=0.0, done=False, won=False)


def episode(game="g1", markers=True, seed=0):
    """Three steps; every observation carries a marker FUTURE<i> and the final observation FUTURE_END, so a leak
    of step j > i into step i's request is visible."""
    tag = (lambda i: f" FUTURE{i}") if markers else (lambda i: "")
    steps = [step(f"You are in the middle of a room.{tag(0)}", ["go to cabinet 1", "go to sink 1", "look"],
                  "go to cabinet 1"),
             step(f"You arrive at cabinet 1. You see a mug 1.{tag(1)}",
                  ["take mug 1 from cabinet 1", "go to sink 1", "look"], "take mug 1 from cabinet 1"),
             step(f"You pick up the mug 1 from the cabinet 1.{tag(2)}", ["go to sink 1", "look"], "go to sink 1")]
    return TrajectoryRecord(env="alfworld", env_version="0.4.2", game_id=game, split="train",
                            task="put a mug in sinkbasin", task_type="pick_and_place_simple",
                            policy_id="expert:handcoded", seed=seed, steps=steps, won=True, total_reward=1.0,
                            final_observation=f"You put the mug 1 in the sink 1.{' FUTURE_END' if markers else ''}")


def write(path, records):
    with TrajectoryWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


class Scripted:
    """A fake rationaliser for the pure logic (the real backends are tested below): answers from ``answer(text)``
    and records every request; ``fail_after`` calls, it raises (an interrupted run)."""

    name = "scripted"

    def __init__(self, answer=lambda text: "REASON: it is the next step.", fail_after=None):
        self.answer, self.fail_after, self.requests, self.calls = answer, fail_after, [], 0

    def complete(self, requests):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.requests += requests
        return [Completion(self.answer(r[0]["content"]), 10, 5) for r in requests]

    def usage(self):
        return {"requests": len(self.requests)}


# -- prompts and answers: exact ---------------------------------------------------------------------------------------


def test_the_prompt_holds_the_task_the_past_the_current_state_and_the_chosen_action():
    messages = rationale_messages(episode(), 1, RationaliseSettings())
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"] == (
        "You are explaining the moves of an agent playing a text-based game.\n"
        "Task: put a mug in sinkbasin\n"
        "Previous observations and actions:\n"
        "Observation: You are in the middle of a room. FUTURE0\n"
        "ACTION: go to cabinet 1\n"
        "Current observation: You arrive at cabinet 1. You see a mug 1. FUTURE1\n"
        "Valid actions:\n"
        "- take mug 1 from cabinet 1\n"
        "- go to sink 1\n"
        "- look\n"
        "The agent chose: take mug 1 from cabinet 1\n"
        'In one short sentence, give the reason the agent had for choosing "take mug 1 from cabinet 1" now. Use only '
        "what is written above.\n"
        "Answer as:\n"
        "REASON: <the reason>")
    first = rationale_messages(episode(), 0, RationaliseSettings())[0]["content"]
    assert "Previous observations" not in first and "The agent chose: go to cabinet 1" in first
    windowed = rationale_messages(episode(), 2, RationaliseSettings(history_window=1))[0]["content"]
    assert "FUTURE0" not in windowed and "FUTURE1" in windowed


@pytest.mark.parametrize("answer, reason, flag", [
    ("REASON: The mug is here, so I take it.\nACTION: take mug 1 from cabinet 1", "The mug is here, so I take it.",
     None),
    ("REASON: **The mug is on the cabinet.**", "The mug is on the cabinet.", None),
    ("I need the mug before the sink.", "I need the mug before the sink.", None),  # no marker: the whole answer
    ('"Because the task needs a mug."', "Because the task needs a mug.", None),
    ("", "", "empty"),
    ("REASON:   \nACTION: look", "", "empty"),
    ("REASON: it is better to go to sink 1 first", "it is better to go to sink 1 first", "other_action"),
    ("REASON: " + "word " * 40, " ".join(["word"] * 30) + "...", None),
])
def test_answers_are_parsed_cut_and_flagged(answer, reason, flag):
    admissible = ["take mug 1 from cabinet 1", "go to sink 1", "look"]
    assert parse_rationale(answer, admissible, "take mug 1 from cabinet 1", 30)[:2] == (reason, flag)


def test_an_action_counts_as_named_only_when_its_whole_text_appears_and_is_not_part_of_the_chosen_one():
    admissible = ["go to cabinet 1", "go to cabinet 10", "look", "open cabinet 1", "take mug 1 from cabinet 1"]
    assert mentioned_actions("Look first, then go to cabinet 10.", admissible, "go to cabinet 1") == ["go to cabinet 10"]
    assert mentioned_actions("I will look around", admissible, "go to cabinet 1") == []  # one-word actions: words
    assert mentioned_actions("Go to Cabinet-1 and open cabinet 1.", admissible, "go to cabinet 1") == ["open cabinet 1"]
    assert mentioned_actions("take mug 1 from cabinet 1", ["cabinet 1 x", "mug 1"], "take mug 1 from cabinet 1") == []


# -- files: flags, resume, idempotence, torn files --------------------------------------------------------------------


def test_every_step_gets_a_reason_and_flagged_ones_are_counted_not_kept(tmp_path):
    data = write(tmp_path / "demos.jsonl", [episode()])
    answers = iter(["REASON: the sink is near, so go to sink 1 first.", "REASON: The mug is here.", ""])
    summary = rationalise_file(data, tmp_path / "out.jsonl", RationaliseSettings(),
                               rationaliser=Scripted(lambda text: next(answers)), progress=False)
    (record,) = list(read_trajectories(tmp_path / "out.jsonl"))
    assert [s.reason for s in record.steps] == ["", "The mug is here.", ""]
    assert [s.response for s in record.steps] == ["ACTION: go to cabinet 1",
                                                  "REASON: The mug is here.\nACTION: take mug 1 from cabinet 1",
                                                  "ACTION: go to sink 1"]
    flags = [s.extras["rationale"]["flag"] for s in record.steps]
    assert flags == ["other_action", None, "empty"]
    assert record.steps[0].extras["rationale"]["names"] == ["go to sink 1"]
    assert record.steps[0].extras["rationale"]["raw"] == "REASON: the sink is near, so go to sink 1 first."
    assert record.steps[1].extras["rationale"] == {"by": "scripted", "flag": None, "raw": "REASON: The mug is here.",
                                                   "prompt_tokens": 10, "completion_tokens": 5}
    assert [s.action for s in record.steps] == [s.action for s in episode().steps]  # nothing else changes
    assert record.final_observation == episode().final_observation and record.won
    assert record.meta["rationalised"] == {"by": "scripted", "template": "rationalise", "steps": 3, "flagged": 2}
    assert summary["steps"] == 3 and summary["ok"] == 1 and summary["flagged"] == {"empty": 1, "other_action": 1}
    assert json.loads(summary_path(tmp_path / "out.jsonl").read_text())["flagged"] == summary["flagged"]

    answers = iter(["REASON: go to sink 1 instead.", "REASON: a.", ""])
    rationalise_file(data, tmp_path / "kept.jsonl", RationaliseSettings(keep_flagged=True),
                     rationaliser=Scripted(lambda text: next(answers)), progress=False)
    (kept,) = list(read_trajectories(tmp_path / "kept.jsonl"))
    assert [s.reason for s in kept.steps] == ["go to sink 1 instead.", "a.", ""]


def test_requests_span_episodes_in_batches_of_whole_episodes(tmp_path):
    data = write(tmp_path / "demos.jsonl", [episode(f"g{i}") for i in range(5)])
    scripted = Scripted()
    rationalise_file(data, tmp_path / "out.jsonl", RationaliseSettings(batch_size=7), rationaliser=scripted,
                     progress=False)
    assert scripted.calls == 2 and len(scripted.requests) == 15  # 3 episodes (9 steps >= 7), then the last 2
    assert [r.game_id for r in read_trajectories(tmp_path / "out.jsonl")] == [f"g{i}" for i in range(5)]


def test_an_interrupted_run_resumes_and_a_rerun_writes_nothing_twice(tmp_path):
    data = write(tmp_path / "demos.jsonl", [episode("g1"), episode("g2"), episode("g1", seed=0)])
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):  # batch_size 3: one episode per request batch
        rationalise_file(data, out, RationaliseSettings(batch_size=3), rationaliser=Scripted(fail_after=2),
                         progress=False)
    assert [r.game_id for r in read_trajectories(out)] == ["g1", "g2"]  # finished episodes are kept
    again = Scripted()
    summary = rationalise_file(data, out, RationaliseSettings(), rationaliser=again, progress=False)
    assert again.calls == 1 and len(again.requests) == 3 and summary["episodes_done_before"] == 2 and summary["episodes_rationalised"] == 1
    assert [r.game_id for r in read_trajectories(out)] == ["g1", "g2", "g1"]  # the same game twice stays twice
    idle = Scripted()
    assert rationalise_file(data, out, RationaliseSettings(), rationaliser=idle, progress=False)["steps"] == 0
    assert idle.calls == 0 and len(list(read_trajectories(out))) == 3


def test_a_torn_output_file_and_an_output_of_another_input_are_refused_before_any_request(tmp_path):
    data = write(tmp_path / "demos.jsonl", [episode("g1"), episode("g2")])
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        rationalise_file(data, out, RationaliseSettings(batch_size=1), rationaliser=Scripted(fail_after=1),
                         progress=False)
    with open(out, "ab") as file:
        file.write(b'{"schema_version": 1, "env": "alfw')  # a writer killed mid-line
    never = Scripted()
    with pytest.raises(CorruptFileError, match="torn last line"):
        rationalise_file(data, out, RationaliseSettings(), rationaliser=never, progress=False)

    changed = episode("g1")
    changed.steps[0].action = "look"
    other = write(tmp_path / "changed.jsonl", [changed])
    finished = tmp_path / "done.jsonl"
    rationalise_file(write(tmp_path / "one.jsonl", [episode("g1")]), finished, RationaliseSettings(),
                     rationaliser=Scripted(), progress=False)
    with pytest.raises(RationaliseError, match="another input"):  # same game, other actions
        rationalise_file(other, finished, RationaliseSettings(), rationaliser=never, progress=False)
    with pytest.raises(RationaliseError, match="must not be the input"):
        rationalise_file(data, data, RationaliseSettings(), rationaliser=never, progress=False)
    assert never.calls == 0


# -- a scripted HTTP server: the no-future-leak test on the real request path, and failures -------------------------


class ChatScript:
    """``answer(prompt_text) -> (status, reply text)`` per chat request; every request body is kept."""

    def __init__(self, answer):
        self.answer, self.bodies, self.lock = answer, [], threading.Lock()


@pytest.fixture
def chat_script():
    servers = []

    def start(answer):
        script = ChatScript(answer)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "m"}]}))

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                with script.lock:
                    script.bodies.append(body)
                status, text = script.answer(json.loads(body)["messages"][0]["content"])
                self._send(status, json.dumps({
                    "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 4}}) if status == 200 else "refused")

            def _send(self, status, text):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", script

    yield start
    for server in servers:
        server.shutdown()


def api_settings(base_url, **api):
    return RationaliseSettings(backend="api", api=ApiSettings(base_url=base_url, model="m", backoff=0.0,
                                                              max_backoff=0.0, **api))


def test_no_request_ever_contains_what_came_after_its_step(tmp_path, chat_script):
    base_url, script = chat_script(lambda text: (200, "REASON: it helps with the task."))
    data = write(tmp_path / "demos.jsonl", [episode("g1"), episode("g2")])
    rationalise_file(data, tmp_path / "out.jsonl", api_settings(base_url), progress=False)
    assert len(script.bodies) == 6
    for body in script.bodies:
        prompt = json.loads(body)["messages"][0]["content"]
        current = int(prompt.split("Current observation:")[1].split("FUTURE")[1][0])
        assert f"FUTURE{current}" in prompt
        later = [f"FUTURE{j}" for j in range(current + 1, 3)] + ["FUTURE_END", "won", "reward"]
        assert not [marker for marker in later if marker in body], body
    assert sorted(int(json.loads(b)["messages"][0]["content"].split("Current observation:")[1].split("FUTURE")[1][0])
                  for b in script.bodies) == [0, 0, 1, 1, 2, 2]


def test_server_errors_are_retried_and_a_refusal_stops_the_run_losing_nothing(tmp_path, chat_script):
    calls = Counter()

    def flaky(text):
        calls["all"] += 1
        if "FUTURE0" in text and calls["busy"] < 1:  # the first request of the first episode: 503 once
            calls["busy"] += 1
            return 503, ""
        if "g2-marker" in text and not calls["fixed"]:
            return 400, ""
        return 200, "REASON: the task needs it."

    base_url, script = chat_script(flaky)
    second = episode("g2")
    second.task = "put a mug in sinkbasin g2-marker"
    data = write(tmp_path / "demos.jsonl", [episode("g1"), second])
    out = tmp_path / "out.jsonl"
    with pytest.raises(EndpointError, match="HTTP 400"):
        settings = api_settings(base_url, max_retries=2, concurrency=1)
        settings.batch_size = 3  # g1's three steps are one batch, written before g2's are asked
        rationalise_file(data, out, settings, progress=False)
    assert [r.game_id for r in read_trajectories(out)] == ["g1"]
    calls["fixed"] = 1
    summary = rationalise_file(data, out, api_settings(base_url, concurrency=2), progress=False)
    assert summary["episodes_done_before"] == 1 and summary["usage"]["requests"] == 3
    assert summary["usage"]["prompt_tokens"] == 33 and summary["usage"]["completion_tokens"] == 12
    assert [r.game_id for r in read_trajectories(out)] == ["g1", "g2"]


def test_a_dead_endpoint_fails_before_any_episode(tmp_path):
    data = write(tmp_path / "demos.jsonl", [episode()])
    settings = api_settings("http://127.0.0.1:9/v1", max_retries=0, timeout=2.0)
    with pytest.raises(EndpointError, match="unreachable"):
        rationalise_file(data, tmp_path / "out.jsonl", settings, progress=False)
    assert not list(read_trajectories(tmp_path / "out.jsonl"))


# -- the real local model and a real local server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_demo(alfworld_demos, tmp_path_factory):
    """The first session demonstration, cut to 4 steps (a real expert episode, enough for a real model)."""
    record = next(iter(read_trajectories(alfworld_demos)))
    record.steps = record.steps[:4]
    return write(tmp_path_factory.mktemp("real_demo") / "demo.jsonl", [record]), record


@pytest.mark.slow
def test_the_local_smollm2_model_writes_reasons_for_a_real_demonstration(real_demo, tmp_path):
    pytest.importorskip("gguf")
    data, source = real_demo
    summary = rationalise_file(data, tmp_path / "out.jsonl", RationaliseSettings(max_new_tokens=24), progress=False)
    (record,) = list(read_trajectories(tmp_path / "out.jsonl"))
    assert summary["rationaliser"] == "local:smollm2-135m-instruct" and summary["steps"] == 4
    assert summary["ok"] + sum(summary["flagged"].values()) == 4 and summary["steps_per_s"] > 0
    assert summary["usage"]["completion_tokens"] > 0 and summary["usage"]["prompt_tokens"] > 100
    for new, old in zip(record.steps, source.steps):
        rationale = new.extras["rationale"]
        assert new.action == old.action and rationale["by"] == "local:smollm2-135m-instruct"
        assert 0 < rationale["completion_tokens"] <= 24
        assert new.response.endswith(f"ACTION: {old.action}")
        assert (new.reason != "") == (rationale["flag"] is None)
    # greedy decoding: the same answers again
    rationalise_file(data, tmp_path / "again.jsonl", RationaliseSettings(max_new_tokens=24), progress=False)
    (again,) = list(read_trajectories(tmp_path / "again.jsonl"))
    assert [s.extras["rationale"]["raw"] for s in again.steps] == [s.extras["rationale"]["raw"] for s in record.steps]


@pytest.mark.slow
def test_a_real_local_server_rationalises_with_token_accounting(real_demo, chat_server, tmp_path):
    base_url, model = chat_server
    data, source = real_demo
    settings = RationaliseSettings(backend="api", max_new_tokens=24,
                                   api=ApiSettings(base_url=base_url, model=model, price_input_per_mtok=1.0))
    summary = rationalise_file(data, tmp_path / "out.jsonl", settings, progress=False)
    assert summary["rationaliser"] == f"api:{model}" and summary["steps"] == 4
    assert summary["usage"]["requests"] == 4 and summary["usage"]["prompt_tokens"] > 100
    assert summary["usage"]["cost"] == pytest.approx(summary["usage"]["prompt_tokens"] / 1e6)
    (record,) = list(read_trajectories(tmp_path / "out.jsonl"))
    assert all(s.extras["rationale"]["raw"] for s in record.steps)


# -- the command line and the run's switch ---------------------------------------------------------------------------


def cli(*args):
    return subprocess.run([sys.executable, "-m", "agentprm.cli", "rationalise", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_the_command_rationalises_with_a_local_checkpoint_and_names_bad_keys(tiny_model, tmp_path):
    data = write(tmp_path / "demos.jsonl", [episode()])
    done = cli(data, "--out", tmp_path / "out.jsonl", f"model={tiny_model}", "max_new_tokens=4", "--quiet",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "rationalised 1 episodes" in done.stdout and summary_path(tmp_path / "out.jsonl").is_file()
    again = cli(data, "--out", tmp_path / "out.jsonl", f"model={tiny_model}", "--quiet")
    assert again.returncode == 0 and "0 episodes (1 already" in again.stdout
    bad = cli(data, "--out", tmp_path / "x.jsonl", "max_wordz=3")
    assert bad.returncode == 2 and "max_wordz" in bad.stderr and "Traceback" not in bad.stderr
    api = cli(data, "--out", tmp_path / "x.jsonl", "backend=api")
    assert api.returncode == 2 and "rationalise.api.base_url" in api.stderr


def test_the_run_switch_needs_the_reason_action_template_and_a_valid_backend():
    with pytest.raises(ConfigError, match="rationalise.enabled needs prompt.template: reason_action"):
        load_config(RunConfig, {"rationalise": {"enabled": True}})
    with pytest.raises(ConfigError, match="base_url"):
        load_config(RunConfig, {"prompt": {"template": "reason_action"},
                                "rationalise": {"enabled": True, "backend": "api"}})
    assert not load_config(RunConfig, {}).rationalise.enabled


def test_a_run_with_the_switch_trains_pi_0_on_the_rationalised_demonstrations(alfworld_root, tiny_model,
                                                                             tmp_path):
    from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)

    root, _ = alfworld_root
    config = tiny_config(root) | {"iterations": 0, "prompt": {"template": "reason_action"},
                                  "rationalise": {"enabled": True, "model": str(tiny_model), "max_new_tokens": 6}}
    config["sft"] |= {"max_steps": 4, "eval_every": 4, "save_every": 4}
    config["eval"] |= {"max_steps": 4, "bon_curve": []}
    run = finished_run(config, tmp_path)
    rationalised = list(read_trajectories(run / "rationales" / "demos.jsonl"))
    demos = list(read_trajectories(run / "demos" / "demos.jsonl"))
    assert [r.game_id for r in rationalised] == [r.game_id for r in demos]
    assert all("rationale" in s.extras for r in rationalised for s in r.steps)
    assert json.loads((run / "rationales" / "demos.summary.json").read_text())["steps"] == sum(
        len(r.steps) for r in demos)
    assert (run / "iter_0" / "policy" / "model").is_dir()
