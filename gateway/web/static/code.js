// "Copy as code": the request that made an image, for the Python and JavaScript OpenAI SDKs and
// for curl, with its exact parameters. The key is a placeholder read from the environment.

const EXTRA = ["negative_prompt", "num_inference_steps", "guidance_scale", "seed"];
const STANDARD = ["model", "prompt", "n", "size", "output_format"];

function split(params) {
  const standard = {};
  const extra = {};
  for (const name of STANDARD) if (params[name] !== undefined) standard[name] = params[name];
  for (const name of EXTRA) if (params[name] !== undefined) extra[name] = params[name];
  return { standard, extra };
}

// A JSON string or number is also a valid Python literal (no true/false/null appear here).
const lit = (value) => JSON.stringify(value);

export function python(base, params) {
  const { standard, extra } = split(params);
  const lines = Object.entries(standard).map(([k, v]) => `    ${k}=${lit(v)},`);
  if (Object.keys(extra).length) {
    const body = Object.entries(extra).map(([k, v]) => `${lit(k)}: ${lit(v)}`).join(", ");
    lines.push(`    extra_body={${body}},`);
  }
  return [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${lit(base + "/v1")}, api_key=os.environ["GATEWAY_API_KEY"])`,
    "result = client.images.generate(",
    ...lines,
    ")",
    "print(result.data[0].url)",
  ].join("\n");
}

export function javascript(base, params) {
  const { standard, extra } = split(params);
  const fields = Object.entries({ ...standard, ...extra }).map(([k, v]) => `  ${k}: ${lit(v)},`);
  return [
    'import OpenAI from "openai";',
    "",
    `const client = new OpenAI({ baseURL: ${lit(base + "/v1")}, apiKey: process.env.GATEWAY_API_KEY });`,
    "const result = await client.images.generate({",
    ...fields,
    "});",
    "console.log(result.data[0].url);",
  ].join("\n");
}

export function curl(base, params) {
  const { standard, extra } = split(params);
  const body = JSON.stringify({ ...standard, ...extra }, null, 2).replace(/'/g, "'\\''");
  return [
    `curl ${base}/v1/images/generations \\`,
    '  -H "Authorization: Bearer $GATEWAY_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d '${body}'`,
  ].join("\n");
}
