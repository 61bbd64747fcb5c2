"""The OpenAI-compatible chat client: against a real local server (transformers serve + SmolLM2), and its failure
handling against a scripted HTTP server (429 with Retry-After, 5xx, 4xx, timeouts, malformed bodies)."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentprm.models.api_client import ApiSettings, ChatClient, EndpointError


# -- the real server -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_server_lists_its_model_and_answers_with_token_counts(chat_server):
    base_url, model = chat_server
    client = ChatClient(ApiSettings(base_url=base_url, model=model, max_tokens=12, price_input_per_mtok=2.0,
                                    price_output_per_mtok=8.0))
    assert model in client.check()
    reply = client.chat([{"role": "user", "content": "Name one colour. Answer as ACTION: <colour>"}], temperature=0.0)
    assert reply.text.strip() and reply.attempts == 1
    assert reply.prompt_tokens > 5 and 0 < reply.completion_tokens <= 12
    again = client.chat([{"role": "user", "content": "Name one colour. Answer as ACTION: <colour>"}],
                        temperature=0.0)
    assert again.text == reply.text  # greedy decoding on the server is deterministic
    usage = client.usage.as_dict(client.settings)
    assert usage["requests"] == 2 and usage["retries"] == 0
    assert usage["prompt_tokens"] == reply.prompt_tokens + again.prompt_tokens
    assert usage["cost"] == pytest.approx((usage["prompt_tokens"] * 2.0 + usage["completion_tokens"] * 8.0) / 1e6)


@pytest.mark.slow
def test_a_real_server_refuses_an_unknown_route_without_retrying(chat_server):
    base_url, model = chat_server
    client = ChatClient(ApiSettings(base_url=base_url + "/no-such-prefix", model=model, max_retries=3, backoff=0.01))
    with pytest.raises(EndpointError, match="HTTP 404.*not retried"):
        client.chat([{"role": "user", "content": "hi"}])


# -- failure handling against a scripted server ----------------------------------------------------------------------


class Script:
    """Answers for successive requests: (status, headers, body, delay seconds)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []


def scripted_server(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            script.requests.append((self.command, self.path, dict(self.headers), body))
            status, headers, text, delay = script.answers.pop(0) if script.answers else (500, {}, "exhausted", 0)
            if delay:
                threading.Event().wait(delay)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(text.encode())

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def ok(text="ACTION: look", prompt_tokens=7, completion_tokens=3):
    return (200, {}, json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}), 0)


@pytest.fixture
def serve():
    servers = []

    def start(*answers):
        script = Script(answers)
        server = scripted_server(script)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", script

    yield start
    for server in servers:
        server.shutdown()


def client_for(base_url, sleeps, **settings):
    return ChatClient(ApiSettings(base_url=base_url, model="m", **{"backoff": 1.0, "max_backoff": 30.0, **settings}),
                      sleep=sleeps.append)


def test_rate_limits_and_server_errors_are_retried_with_backoff_and_retry_after(serve, monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", "sk-test")
    base_url, script = serve((429, {"Retry-After": "7"}, "slow down", 0), (503, {}, "busy", 0), (500, {}, "oops", 0),
                             ok())
    sleeps = []
    client = client_for(base_url, sleeps, max_retries=3, api_key_env="TEST_API_KEY")
    reply = client.chat([{"role": "user", "content": "x"}], temperature=0.5, seed=3)
    assert reply.text == "ACTION: look" and reply.attempts == 4
    assert sleeps == [7.0, 2.0, 4.0]  # Retry-After, then backoff * 2**k for attempts 2 and 3
    method, path, headers, body = script.requests[-1]
    assert (method, path, headers["Authorization"]) == ("POST", "/v1/chat/completions", "Bearer sk-test")
    assert json.loads(body) == {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.5,
                                "max_tokens": 128, "seed": 3}
    assert client.usage.as_dict(client.settings) == {"requests": 1, "retries": 3, "prompt_tokens": 7,
                                                     "completion_tokens": 3, "seconds": pytest.approx(
                                                         reply.seconds, abs=1e-3), "cost": 0.0}


def test_retries_are_bounded_and_the_error_names_the_url(serve):
    base_url, script = serve(*[(502, {}, "bad gateway", 0)] * 5)
    sleeps = []
    with pytest.raises(EndpointError, match=r"/v1/chat/completions unreachable after 3 attempts .*HTTP 502"):
        client_for(base_url, sleeps, max_retries=2, max_backoff=1.5).chat([{"role": "user", "content": "x"}])
    assert sleeps == [1.0, 1.5] and len(script.requests) == 3  # capped at max_backoff


def test_client_errors_are_not_retried(serve):
    base_url, script = serve((401, {}, '{"error": "bad key"}', 0), ok())
    with pytest.raises(EndpointError, match="HTTP 401.*bad key.*not retried"):
        client_for(base_url, [], max_retries=3).chat([{"role": "user", "content": "x"}])
    assert len(script.requests) == 1


def test_a_timeout_is_retried_then_reported(serve):
    base_url, script = serve((200, {}, "{}", 1.0), (200, {}, "{}", 1.0))
    sleeps = []
    with pytest.raises(EndpointError, match="unreachable after 2 attempts .timeout 0.2 s each"):
        client_for(base_url, sleeps, max_retries=1, timeout=0.2).chat([{"role": "user", "content": "x"}])
    assert sleeps == [1.0]


def test_a_closed_port_is_unreachable(serve):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = []
    client = client_for(f"http://127.0.0.1:{port}/v1", sleeps, max_retries=2, backoff=0.5)
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}/v1/models unreachable after 3 attempts"):
        client.check()
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"choices": []}', '{"choices": [{"message": {"content":'
                                                                           ' null}}]}'])
def test_malformed_replies_give_empty_text_not_a_crash(serve, body):
    base_url, _ = serve((200, {}, body, 0))
    reply = client_for(base_url, []).chat([{"role": "user", "content": "x"}])
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("", 0, 0)


def test_requests_per_minute_spaces_request_starts(serve):
    base_url, _ = serve(ok(), ok(), ok())
    sleeps = []
    client = client_for(base_url, sleeps, requests_per_minute=600)  # one request every 0.1 s
    for _ in range(3):
        client.chat([{"role": "user", "content": "x"}])
    # Starts are scheduled at t0, t0 + 0.1, t0 + 0.2 (the fake sleep does not advance the clock).
    assert len(sleeps) == 2 and 0.05 < sleeps[0] <= 0.1 and 0.15 < sleeps[1] <= 0.2


def test_settings_are_checked_by_name():
    with pytest.raises(ValueError, match="api.base_url must start with http"):
        ApiSettings(base_url="127.0.0.1:8000", model="m").check_settings()
    with pytest.raises(ValueError, match="api.model is required"):
        ApiSettings(base_url="http://127.0.0.1:8000/v1").check_settings()


# -- the policy's sampling on a server -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_served_policy_plays_in_free_mode_and_the_server_switches_checkpoints(model_server, sft_model, tiny_model,
                                                                                 alfworld_root):
    import math

    from agentprm.agents.policy_agent import PolicyAgent
    from agentprm.envs.registry import list_games
    from agentprm.envs.runner import EnvPool, run_episodes
    from agentprm.models.policy import Policy, encode_prompts
    from agentprm.models.server_policy import ServerPolicy

    root, _ = alfworld_root
    games = list_games("alfworld", "unseen", root=str(root))[:2]
    served = ServerPolicy.for_checkpoint(model_server, str(sft_model), max_tokens=16, concurrency=2)
    local = Policy.from_pretrained(sft_model)
    agent = PolicyAgent(served, mode="free", temperature=1.0, max_new_tokens=12, seed=0)
    seen = []

    def policy(batch):
        actions = agent(batch)
        seen.extend((agent.last_prompts[item.slot], agent.last_samples[item.slot]) for item in batch)
        return actions

    with EnvPool("alfworld", 2) as pool:
        results = run_episodes(pool, games, policy, max_steps=3)
    assert [r.steps for r in results] == [3, 3] and len(seen) == 6
    for prompt, sample in seen:  # ids from the tokenizer, log-prob from the local teacher-forced pass
        ids = served.tokenizer(sample.text, add_special_tokens=False)["input_ids"]
        assert sample.token_ids == ids + ([served.eos_id] if sample.finished else [])
        expected = local.sequence_logprobs([(encode_prompts(local.tokenizer, [prompt])[0], sample.token_ids)])[0]
        assert math.isfinite(sample.logprob) and sample.logprob == pytest.approx(expected, abs=1e-4)
    # The next iteration's checkpoint is another folder: the server loads it on first use.
    other = ServerPolicy.for_checkpoint(model_server, str(tiny_model), score_locally=False, max_tokens=4)
    (samples,) = other.generate(["Task: look around.\nACTION:\n"], n=2, temperature=1.0, max_new_tokens=4, seed=1)
    assert len(samples) == 2 and all(math.isnan(s.logprob) for s in samples)  # no scorer, no server log-probs
    assert {str(sft_model), str(tiny_model)} <= set(served.client.check())


def test_server_token_ids_and_log_probabilities_are_used_when_returned(serve, tiny_model):
    from transformers import AutoTokenizer

    from agentprm.models.server_policy import ServerPolicy

    choice = {"text": "go to desk 1", "finish_reason": "stop",
              "logprobs": {"tokens": ["token_id:5", "token_id:9", "token_id:2"], "token_logprobs": [-0.5, -1.0, -0.25]}}
    base_url, script = serve((200, {}, json.dumps({"choices": [choice, {**choice, "finish_reason": "length"}]}), 0))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    served = ServerPolicy(ApiSettings(base_url=base_url, model="pi_1"), tokenizer, token_ids=True)
    (samples,) = served.generate(["prompt"], n=2, temperature=0.7, top_p=0.9, max_new_tokens=8, seed=4)
    assert [(s.text, s.token_ids, s.logprob, s.finished) for s in samples] == [
        ("go to desk 1", [5, 9, 2], -1.75, True), ("go to desk 1", [5, 9, 2], -1.75, False)]
    method, path, _, body = script.requests[0]
    assert (method, path) == ("POST", "/v1/completions")
    assert json.loads(body) == {"model": "pi_1", "prompt": "prompt", "n": 2, "temperature": 0.7, "top_p": 0.9,
                                "max_tokens": 8, "seed": 4, "logprobs": 0, "return_tokens_as_token_ids": True}
    with pytest.raises(NotImplementedError, match="policy.mode: free"):
        served.sample_admissible(["prompt"], [["look"]])
