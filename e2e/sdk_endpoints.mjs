// Drives every Responses method of the OpenAI Node SDK through keyward, as two clients would.
//
// Usage: node sdk_endpoints.mjs BASE_URL ALICE_TOKEN BOB_TOKEN EXPECTED_TEXT
// keyward holds the key; the SDKs' keys are keyward client tokens. Alice creates; Bob may not
// use Alice's responses. Prints one JSON line of what the SDK saw; exits non-zero on any surprise.
import OpenAI from "openai";

const [baseURL, aliceToken, bobToken, expected] = process.argv.slice(2);
const options = { baseURL, maxRetries: 0, timeout: 20_000 };
const alice = new OpenAI({ ...options, apiKey: aliceToken });
const bob = new OpenAI({ ...options, apiKey: bobToken });
const fail = (why) => {
  console.error(why);
  process.exit(1);
};
const seen = {};

const created = await alice.responses.create({ model: "gpt-5", input: "Say hello" });
if (created.output_text !== expected) fail(`output_text: ${created.output_text}`);
const retrieved = await alice.responses.retrieve(created.id);
if (retrieved.id !== created.id || retrieved.output_text !== expected) fail("retrieve");
const items = await alice.responses.inputItems.list(created.id, { limit: 5 });
seen.input_items = items.data.map((item) => item.type);
const count = await alice.responses.inputTokens.count({ model: "gpt-5", input: "Say hello" });
seen.input_tokens = count.input_tokens;
const compacted = await alice.responses.compact({ model: "gpt-5", input: "a long conversation" });
seen.compacted = compacted.output.map((item) => item.type);
seen.models = [];
for await (const model of alice.models.list()) seen.models.push(model.id);
seen.model = (await alice.models.retrieve("gpt-5")).id;

seen.bob_refused = [];
for (const [name, call] of [
  ["retrieve", () => bob.responses.retrieve(created.id)],
  ["input_items", () => bob.responses.inputItems.list(created.id)],
  ["cancel", () => bob.responses.cancel(created.id)],
  ["delete", () => bob.responses.delete(created.id)],
]) {
  try {
    await call();
    fail(`bob's ${name} of alice's response was served`);
  } catch (err) {
    if (!(err instanceof OpenAI.NotFoundError)) throw err;
    seen.bob_refused.push(name);
  }
}

const background = await alice.responses.create({ model: "gpt-5", input: "Think long", background: true });
const polls = [background.status];
while (["queued", "in_progress"].includes(polls.at(-1))) {
  polls.push((await alice.responses.retrieve(background.id)).status);
}
seen.background_polls = polls;
const running = await alice.responses.create({ model: "gpt-5", input: "Think longer", background: true });
seen.cancelled = (await alice.responses.cancel(running.id)).status;

await alice.responses.delete(created.id);
try {
  await alice.responses.retrieve(created.id);
  fail("a deleted response was served");
} catch (err) {
  if (!(err instanceof OpenAI.NotFoundError)) throw err;
  seen.deleted = true;
}
console.log(JSON.stringify(seen));
