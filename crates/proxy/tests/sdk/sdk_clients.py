"""The official Anthropic and OpenAI Python SDKs against a running llm-scheduler whose group `claude` is an
`anthropic/` deployment on testkit's mock upstream (Anthropic mode). Exits non-zero on the first failed check.

Environment: PROXY_URL (http://127.0.0.1:PORT), PROXY_KEY (the master key), EXPECTED (the mock's reply text).
"""

import json
import os

import anthropic
import openai

BASE = os.environ["PROXY_URL"]
KEY = os.environ["PROXY_KEY"]
EXPECTED = os.environ["EXPECTED"]
WORDS = len(EXPECTED.split())
USER = [{"role": "user", "content": "Say hello"}]
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


a = anthropic.Anthropic(base_url=BASE, api_key=KEY, timeout=20, max_retries=0)

m = a.messages.create(model="claude", max_tokens=64, system="Be brief.", messages=USER)
check(m.type == "message" and m.content[0].text == EXPECTED, f"anthropic answer: {m}")
check(m.stop_reason == "end_turn", f"anthropic stop_reason: {m.stop_reason}")
check(m.usage.output_tokens == WORDS and m.usage.input_tokens > 0, f"anthropic usage: {m.usage}")

with a.messages.stream(model="claude", max_tokens=64, messages=USER) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check(text == EXPECTED, f"anthropic stream text: {text!r}")
check(final.stop_reason == "end_turn" and final.usage.output_tokens == WORDS, f"anthropic final: {final}")

m = a.messages.create(
    model="claude", max_tokens=64, messages=USER,
    tools=[{"name": "weather", "description": "Weather of a city", "input_schema": SCHEMA}],
)
check(m.stop_reason == "tool_use", f"anthropic tool stop_reason: {m}")
block = m.content[0]
check(block.type == "tool_use" and block.name == "weather" and block.input == {"query": EXPECTED},
      f"anthropic tool_use: {m}")

try:
    a.messages.create(model="no-such-group", max_tokens=8, messages=USER)
    check(False, "an unknown model should fail")
except anthropic.BadRequestError as e:
    check(e.body["error"]["type"] == "invalid_request_error", f"anthropic error body: {e.body}")

o = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, timeout=20, max_retries=0)

r = o.chat.completions.create(model="claude", messages=USER)
check(r.choices[0].message.content == EXPECTED, f"openai answer: {r}")
check(r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == WORDS, f"openai usage: {r}")

chunks = list(o.chat.completions.create(
    model="claude", messages=USER, stream=True, stream_options={"include_usage": True}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text == EXPECTED, f"openai stream text: {text!r}")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == WORDS, f"openai stream usage: {chunks[-1]}")

r = o.chat.completions.create(
    model="claude", messages=USER,
    tools=[{"type": "function", "function": {"name": "weather", "parameters": SCHEMA}}])
call = r.choices[0].message.tool_calls[0]
check(r.choices[0].finish_reason == "tool_calls" and call.function.name == "weather", f"openai tool call: {r}")
check(json.loads(call.function.arguments) == {"query": EXPECTED}, f"openai tool arguments: {call}")

print("sdk checks passed")
