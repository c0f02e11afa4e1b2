"""Drives every Responses method of the OpenAI Python SDK through keyward, as two clients would.

Usage: sdk_endpoints.py BASE_URL ALICE_TOKEN BOB_TOKEN EXPECTED_TEXT
keyward holds the key; the SDKs' keys are keyward client tokens. Alice creates; Bob may not use
Alice's responses. Prints one JSON line of what the SDK saw; exits non-zero on any surprise.
"""

import json
import sys

import openai

base_url, alice_token, bob_token, expected = sys.argv[1:5]
alice = openai.OpenAI(base_url=base_url, api_key=alice_token, max_retries=0, timeout=20)
bob = openai.OpenAI(base_url=base_url, api_key=bob_token, max_retries=0, timeout=20)
seen = {}

created = alice.responses.create(model="gpt-5", input="Say hello")
retrieved = alice.responses.retrieve(created.id)
assert retrieved.id == created.id and retrieved.output_text == expected, retrieved
items = alice.responses.input_items.list(created.id, limit=5)
seen["input_items"] = [item.type for item in items.data]
seen["input_tokens"] = alice.responses.input_tokens.count(model="gpt-5", input="Say hello").input_tokens
compacted = alice.responses.compact(model="gpt-5", input="a long conversation")
seen["compacted"] = [item.type for item in compacted.output]
seen["models"] = [model.id for model in alice.models.list()]
seen["model"] = alice.models.retrieve("gpt-5").id

# Bob knows the id, but it is not his response: the API's own 404, as for an unknown id.
refused = []
for name, call in [
    ("retrieve", lambda: bob.responses.retrieve(created.id)),
    ("input_items", lambda: bob.responses.input_items.list(created.id)),
    ("cancel", lambda: bob.responses.cancel(created.id)),
    ("delete", lambda: bob.responses.delete(created.id)),
]:
    try:
        call()
        raise SystemExit(f"bob's {name} of alice's response was served")
    except openai.NotFoundError as err:
        assert created.id in err.message, err.message
        refused.append(name)
seen["bob_refused"] = refused

# A background response: created queued, polled until it has finished, its stream resumed.
background = alice.responses.create(model="gpt-5", input="Think long", background=True)
polls = [background.status]
while polls[-1] in ("queued", "in_progress"):
    polls.append(alice.responses.retrieve(background.id).status)
seen["background_polls"] = polls
resumed = alice.responses.retrieve(background.id, stream=True, starting_after=1)
seen["resumed_events"] = [event.type for event in resumed]
# Another, cancelled while it runs.
running = alice.responses.create(model="gpt-5", input="Think longer", background=True)
seen["cancelled"] = alice.responses.cancel(running.id).status

alice.responses.delete(created.id)
try:
    alice.responses.retrieve(created.id)
    raise SystemExit("a deleted response was served")
except openai.NotFoundError:
    seen["deleted"] = True

print(json.dumps(seen))
