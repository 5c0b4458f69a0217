// "Copy as code": the request that made an image, for the Python and JavaScript OpenAI SDKs and
// for curl, with its exact parameters. The key is a placeholder read from the environment. For an
// edit (`edit`: the file names of the image and mask) the files are read from those names.

const EXTRA = ["negative_prompt", "num_inference_steps", "guidance_scale", "seed", "strength"];
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

const shell = (value) => `'${String(value).replace(/'/g, "'\\''")}'`;

export function python(base, params, edit = null) {
  const { standard, extra } = split(params);
  const files = edit ? [["image", edit.image], ...(edit.mask ? [["mask", edit.mask]] : [])] : [];
  const lines = [
    ...files.map(([k, name]) => `    ${k}=open(${lit(name)}, "rb"),`),
    ...Object.entries(standard).map(([k, v]) => `    ${k}=${lit(v)},`),
  ];
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
    `result = client.images.${edit ? "edit" : "generate"}(`,
    ...lines,
    ")",
    "print(result.data[0].url)",
  ].join("\n");
}

export function javascript(base, params, edit = null) {
  const { standard, extra } = split(params);
  const files = edit ? [["image", edit.image], ...(edit.mask ? [["mask", edit.mask]] : [])] : [];
  const fields = [
    ...files.map(([k, name]) => `  ${k}: fs.createReadStream(${lit(name)}),`),
    ...Object.entries({ ...standard, ...extra }).map(([k, v]) => `  ${k}: ${lit(v)},`),
  ];
  return [
    ...(edit ? ['import fs from "node:fs";'] : []),
    'import OpenAI from "openai";',
    "",
    `const client = new OpenAI({ baseURL: ${lit(base + "/v1")}, apiKey: process.env.GATEWAY_API_KEY });`,
    `const result = await client.images.${edit ? "edit" : "generate"}({`,
    ...fields,
    "});",
    "console.log(result.data[0].url);",
  ].join("\n");
}

export function curl(base, params, edit = null) {
  const { standard, extra } = split(params);
  if (edit) {
    const files = [["image", edit.image], ...(edit.mask ? [["mask", edit.mask]] : [])];
    return [
      `curl ${base}/v1/images/edits`,
      '  -H "Authorization: Bearer $GATEWAY_API_KEY"',
      ...files.map(([k, name]) => `  -F ${shell(`${k}=@${name}`)}`),
      ...Object.entries({ ...standard, ...extra }).map(([k, v]) => `  --form-string ${shell(`${k}=${v}`)}`),
    ].join(" \\\n");
  }
  const body = JSON.stringify({ ...standard, ...extra }, null, 2).replace(/'/g, "'\\''");
  return [
    `curl ${base}/v1/images/generations \\`,
    '  -H "Authorization: Bearer $GATEWAY_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d '${body}'`,
  ].join("\n");
}
