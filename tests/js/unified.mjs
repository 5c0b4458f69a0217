// Code written for OpenAI, in JavaScript, with only baseURL changed: sizes, n=10, output_format and a
// dry run through the real `openai` package. Prints one JSON object for the Python test to check
// (it decodes the images with Pillow). Usage: node unified.mjs <baseURL> <apiKey>
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const model = "fal/hidream-i1-full"; // pinned: the fake fal answers fast
const out = { sizes: {}, n10: null, webp: null, dryRun: null };

for (const size of ["256x256", "512x512", "1792x1024", "1024x1536", "auto", "16:9"]) {
  const { data: result, response } = await client.images
    .generate({ model, prompt: "a lighthouse", size, response_format: "b64_json" })
    .withResponse();
  out.sizes[size] = {
    b64: result.data[0].b64_json,
    size: result.size,
    generated: response.headers.get("x-gateway-generated-size"),
  };
}

const ten = await client.images.generate({ model, prompt: "ten foxes", n: 10, size: "256x256", response_format: "b64_json" });
out.n10 = ten.data.map((d) => d.b64_json);

const webp = await client.images.generate({ model, prompt: "a harbour", output_format: "webp", output_compression: 50 });
out.webp = { b64: webp.data[0].b64_json ?? null, url: webp.data[0].url ?? null, output_format: webp.output_format };

out.dryRun = await client.images
  .generate({ model, prompt: "quote me", n: 3 }, { query: { dryRun: "true" } })
  .asResponse()
  .then((r) => r.json());

process.stdout.write(JSON.stringify(out));
