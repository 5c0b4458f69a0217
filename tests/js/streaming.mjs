// stream=true through the real `openai` package, with only baseURL changed: a generation of two
// images and an edit iterated as completed events, and an upstream failure after the stream began
// raised while iterating. Prints one JSON object for the Python test to check.
// Usage: node streaming.mjs <baseURL> <apiKey> <fakeFalURL> <png as base64>
import OpenAI, { APIError, toFile } from "openai";

const [baseURL, apiKey, fal, pngB64] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const model = "hidream-i1-full";
const out = { generate: [], edit: [], error: null };
const seen = (e) => ({ type: e.type, b64: e.b64_json, size: e.size, output_format: e.output_format, usage: e.usage });
const falControl = (path, body) =>
  fetch(fal + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

const generated = await client.images.generate({ model, prompt: "two foxes", n: 2, size: "256x256", stream: true });
for await (const event of generated) out.generate.push(seen(event));

const image = await toFile(Buffer.from(pngB64, "base64"), "in.png", { type: "image/png" });
const edited = await client.images.edit({ model, image, prompt: "make it blue", stream: true, output_format: "webp" });
for await (const event of edited) out.edit.push(seen(event));

await falControl("/_fake/faults", { fault: "hang" });
// Resolves once the answer's headers came: the stream has begun (with its first keep-alive).
const failing = await client.images.generate({ model, prompt: "never finishes", stream: true });
out.ended = await (await falControl("/_fake/end-hung", { end: "unavailable" })).json();
try {
  for await (const event of failing) out.error = { unexpected: event.type };
} catch (err) {
  out.error = { apiError: err instanceof APIError, name: err.constructor.name, status: err.status ?? null, type: err.error?.type ?? null };
}

process.stdout.write(JSON.stringify(out));
