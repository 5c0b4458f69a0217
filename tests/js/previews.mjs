// Partial images and progress through the real `openai` package, with only baseURL changed: a
// stream with partial_images=2 from our GPU worker, and one with the x-gateway-progress opt-in,
// whose gateway.progress events the SDK hands over as they are (it does not check event types).
// Prints one JSON object for the Python test to check.
// Usage: node previews.mjs <baseURL> <apiKey>
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const model = "hidream-i1-full";
const gpu = { headers: { "x-gateway-provider": "local_gpu" } };
const out = { partials: [], progress: [] };

const previewed = await client.images.generate(
  { model, prompt: "a lighthouse", size: "256x256", stream: true, partial_images: 2, num_inference_steps: 6 },
  gpu,
);
for await (const e of previewed) out.partials.push({ type: e.type, index: e.partial_image_index ?? null, b64: e.b64_json });

const watched = await client.images.generate(
  { model, prompt: "watched", size: "256x256", stream: true, num_inference_steps: 3 },
  { headers: { ...gpu.headers, "x-gateway-progress": "true" } },
);
for await (const e of watched) out.progress.push({ type: e.type, step: e.step ?? null });

process.stdout.write(JSON.stringify(out));
