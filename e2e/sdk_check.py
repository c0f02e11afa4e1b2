"""Drives keyward with the OpenAI Python SDK, as an unmodified user script would.

Usage: sdk_check.py BASE_URL EXPECTED_TEXT [UNIX_SOCKET]
With UNIX_SOCKET, the SDK talks to keyward over that unix socket (the `uds` transport of httpx2, the SDK's HTTP library);
BASE_URL then only gives the path and the Host header.
Prints one JSON line describing what the SDK saw; exits non-zero on any surprise.
"""

import json
import sys

import httpx2
import openai

base_url, expected = sys.argv[1], sys.argv[2]
http_client = None
if len(sys.argv) > 3:
    http_client = openai.DefaultHttpxClient(transport=httpx2.HTTPTransport(uds=sys.argv[3]))
# The SDK insists on a key; keyward replaces it with the real one.
client = openai.OpenAI(
    base_url=base_url, api_key="sk-client-placeholder", max_retries=0, http_client=http_client
)

plain = client.responses.create(model="gpt-5", input="Say hello")
assert plain.output_text == expected, plain.output_text
assert plain.usage.output_tokens == 7, plain.usage

types = []
text = ""
with client.responses.create(model="gpt-5", input="Say hello", stream=True) as stream:
    for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
assert text == expected, text
assert types[0] == "response.created" and types[-1] == "response.completed", types

# keyward's own errors reach SDK users as proper API errors.
try:
    client.responses.create(model="gpt-5", input="x" * 200_000)
    raise SystemExit("an oversized request was accepted")
except openai.APIStatusError as err:
    assert err.status_code == 413, err.status_code
    assert "--max-body" in err.message, err.message
    too_large = err.message

print(json.dumps({"plain": plain.output_text, "stream_events": types, "too_large": too_large}))
