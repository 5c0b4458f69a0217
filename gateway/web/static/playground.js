// The playground: parameters, the live quote (a dry run), a streamed generation with elapsed time,
// partial previews when the route sends them, cancel, and the session's gallery.

import { $, ApiError, Session, TEAM_DISABLED, debounce, el, errorOf, show, teamDisabledNotice, usd } from "./common.js";
import { curl, javascript, python } from "./code.js";
import { events } from "./sse.js";

const EXTRA_SIZES = ["1536x1024", "1024x1536", "1792x1024", "1024x1792", "512x512", "256x256"];
const RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9"];
const TYPES = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };

let models = [];
let quoteSeq = 0;
let running = null; // {controller, started, timer}

const session = new Session("team", async (signedIn) => {
  if (!signedIn) {
    models = [];
    $("model").replaceChildren();
    $("quote").textContent = "Sign in to see the quote.";
    return;
  }
  const list = await session.json("/v1/models");
  models = list.data;
  fillModels();
  requestQuote();
});

function gcd(a, b) {
  return b ? gcd(b, a % b) : a;
}

function ratioOf(size) {
  const [w, h] = size.split("x").map(Number);
  const g = gcd(w, h);
  return `${w / g}:${h / g}`;
}

function fillModels() {
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(
    ...models.map((m) => {
      const label = m.alias_of ? `${m.id} (alias of ${m.alias_of})` : `${m.id} — ${usd(m.price_per_image_usd)}/image`;
      return el("option", { value: m.id, text: label });
    }),
  );
  if (models.some((m) => m.id === previous)) select.value = previous;
  fillSizes();
}

function currentModel() {
  const id = $("model").value;
  const found = models.find((m) => m.id === id);
  return found && found.alias_of ? models.find((m) => m.id === found.alias_of) || found : found;
}

function fits(size, range) {
  const [w, h] = size.split("x").map(Number);
  return w >= range.min_side && h >= range.min_side && w <= range.max_side && h <= range.max_side &&
    w * h <= range.max_pixels;
}

function fillSizes() {
  const select = $("size");
  const previous = select.value;
  const model = currentModel();
  const native = model ? model.sizes : [];
  const extra = model ? EXTRA_SIZES.filter((s) => !native.includes(s) && fits(s, model.size_range)) : [];
  select.replaceChildren(
    el("option", { value: "auto", text: "auto (the model's default)" }),
    el("optgroup", { label: "Native sizes" }, ...native.map((s) => el("option", { value: s, text: `${s} (${ratioOf(s)})` }))),
    el("optgroup", { label: "Other sizes (resized)" }, ...extra.map((s) => el("option", { value: s, text: `${s} (${ratioOf(s)})` }))),
    el("optgroup", { label: "Aspect ratios" }, ...RATIOS.map((r) => el("option", { value: r, text: r }))),
  );
  select.value = [...select.options].some((o) => o.value === previous) ? previous : native[0] || "auto";
}

function numberOf(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

// The request body, exactly as sent (and as "copy as code" shows it).
function params() {
  const body = {
    model: $("model").value,
    prompt: $("prompt").value,
    n: numberOf("n") ?? 1,
    size: $("size").value,
    output_format: $("output-format").value,
  };
  const negative = $("negative-prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  const steps = numberOf("steps");
  if (steps !== undefined) body.num_inference_steps = steps;
  const strength = numberOf("strength");
  if (strength !== undefined && editFiles()) body.strength = strength;
  const guidance = numberOf("guidance");
  if (guidance !== undefined) body.guidance_scale = guidance;
  if (!$("random-seed").checked) {
    const seed = numberOf("seed");
    if (seed !== undefined) body.seed = seed;
  }
  return body;
}

// --- edits: an image (and a mask) picked or dropped turns Generate into an edit -------------

function editFiles() {
  const image = $("edit-image").files[0];
  const mask = $("edit-mask").files[0];
  return image ? { image, mask } : null;
}

// The request as sent: JSON for a generation, multipart (as the SDKs send it) for an edit.
function requestFor(body, extra = {}) {
  const files = editFiles();
  if (!files) return { path: "/v1/images/generations", options: { method: "POST", json: { ...body, ...extra } } };
  const form = new FormData();
  for (const [name, value] of Object.entries({ ...body, ...extra })) form.append(name, String(value));
  form.append("image", files.image, files.image.name);
  if (files.mask) form.append("mask", files.mask, files.mask.name);
  return { path: "/v1/images/edits", options: { method: "POST", body: form } };
}

function showEditMode() {
  const files = editFiles();
  $("edit-mode").textContent = files
    ? `Editing ${files.image.name}${files.mask ? ` with the mask ${files.mask.name}` : ""}: Generate sends an edit.`
    : "No image: Generate makes a new one.";
  requestQuote();
}

// --- the quote ------------------------------------------------------------------------------

async function quote() {
  const seq = ++quoteSeq;
  const out = $("quote");
  if (!session.key || !models.length) return;
  const body = params();
  if (!body.prompt.trim()) {
    out.textContent = "Write a prompt to see the price.";
    return;
  }
  let answer;
  try {
    const { path, options } = requestFor(body);
    answer = await session.json(`${path}?dryRun=true`, options);
  } catch (err) {
    if (seq === quoteSeq) out.replaceChildren(el("span", { class: "error", text: `Not valid: ${err.message}` }));
    return;
  }
  if (seq !== quoteSeq) return; // a newer quote is on its way
  const route = answer.route || {};
  const adm = answer.admission || {};
  const images = body.n === 1 ? "1 image" : `${body.n} images`;
  const routeText = route.provider
    ? `${route.provider} (${route.reason}), about ${Math.round(route.expected_seconds)} s`
    : `none now: ${route.reason}`;
  const disabled = adm.refused_by === TEAM_DISABLED;
  teamDisabledNotice(disabled);
  const admitted = adm.admitted
    ? `admitted now; ${usd(adm.budget_left_usd)} of ${usd(adm.budget_usd)} budget left`
    : disabled ? "would be refused now: your team is disabled" : `would be refused now (${adm.refused_by})`;
  const parts = [
    el("strong", { id: "quote-cost", text: `${usd(answer.total_cost_micros / 1e6)} for ${images}` }),
    el("span", { id: "quote-route", text: ` · route: ${routeText}` }),
    el("span", { id: "quote-admission", class: adm.admitted ? "ok" : "error", text: ` · ${admitted}` }),
    answer.ignored_params && answer.ignored_params.length
      ? el("span", { text: ` · ignored: ${answer.ignored_params.join(", ")}` })
      : null,
  ];
  out.replaceChildren(...parts.filter(Boolean));
}

const requestQuote = debounce(quote, 250);

// --- generating -----------------------------------------------------------------------------

function imageBlob(b64, format) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: TYPES[format] || "application/octet-stream" });
}

function setRunning(on) {
  $("generate").disabled = on;
  $("cancel").hidden = !on;
  if (!on && running) {
    clearInterval(running.timer);
    running = null;
  }
}

function elapsed() {
  return ((performance.now() - running.started) / 1000).toFixed(1);
}

const jobs = (n) => (n === 1 ? "1 job" : `${n} jobs`);

// What the route says of each image while it is made (gateway.progress events): its place in the
// upstream's queue, then its denoising steps, and the time it expects to take.
function progressText() {
  const parts = [...running.progress.entries()].sort(([a], [b]) => a - b).map(([index, p]) => {
    const who = running.progress.size > 1 || index > 0 ? `image ${index + 1}: ` : "";
    const left = p.expected_s === null || p.expected_s === undefined ? "" : `, about ${Math.ceil(p.expected_s)} s to go`;
    if (p.queue_position) return `${who}in the queue, ${jobs(p.queue_position)} ahead${left}`;
    if (p.step !== null && p.step !== undefined && p.steps) return `${who}step ${p.step}/${p.steps}${left}`;
    return `${who}started${left}`;
  });
  return parts.length ? ` · ${parts.join(" · ")}` : "";
}

function showProgress() {
  $("progress").textContent = `Generating… ${elapsed()} s${progressText()}`;
}

function heard(data) {
  running.progress.set(data.image_index || 0, data);
  running.mostAhead = Math.max(running.mostAhead, data.queue_position || 0);
  showProgress();
}

async function generate(event) {
  event.preventDefault();
  if (running) return;
  show($("gen-error"), "");
  const body = params();
  if (!body.prompt.trim()) {
    show($("gen-error"), "Write a prompt first.");
    $("prompt").focus();
    return;
  }
  const controller = new AbortController();
  running = { controller, started: performance.now(), timer: 0, received: 0, progress: new Map(), mostAhead: 0 };
  running.timer = setInterval(showProgress, 100);
  showProgress();
  setRunning(true);
  const preview = $("preview");
  try {
    const { path, options } = requestFor(body, { stream: true, response_format: "b64_json", partial_images: 2 });
    // x-gateway-progress: the route's queue position and steps as gateway.progress events
    const headers = { "x-gateway-progress": "true" };
    const response = await session.fetch(path, { ...options, headers, signal: controller.signal });
    if (!response.ok) {
      const err = await errorOf(response);
      if (err.status === 401) session.rejected(err);
      if (err.code === TEAM_DISABLED) teamDisabledNotice(true);
      throw err;
    }
    for await (const { event: kind, data } of events(response)) {
      if (kind === "gateway.progress") {
        heard(data);
      } else if (kind.endsWith(".partial_image")) {
        preview.src = URL.createObjectURL(imageBlob(data.b64_json, data.output_format || body.output_format));
        preview.hidden = false;
      } else if (kind.endsWith(".completed")) {
        running.received += 1;
        addToGallery(body, data, elapsed(), editFiles());
      } else if (kind === "error") {
        throw new ApiError(500, data);
      }
    }
    const waited = running.mostAhead ? ` (waited in the queue behind ${jobs(running.mostAhead)})` : "";
    $("progress").textContent = `Done in ${elapsed()} s${waited}.`;
  } catch (err) {
    if (err.name === "AbortError") {
      $("progress").textContent = `Cancelled after ${elapsed()} s; nothing was charged.`;
    } else {
      $("progress").textContent = "";
      show($("gen-error"), err.message || String(err));
    }
  } finally {
    preview.hidden = true;
    setRunning(false);
    requestQuote();
  }
}

function cancel() {
  if (running) running.controller.abort();
}

// --- the gallery ----------------------------------------------------------------------------

function codeBlock(label, text) {
  const pre = el("pre", { class: "code", "data-lang": label }, el("code", { text }));
  const button = el("button", { type: "button", text: `Copy ${label}` });
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select the text to copy";
    }
    setTimeout(() => (button.textContent = `Copy ${label}`), 1500);
  });
  return el("div", { class: "code-block" }, button, pre);
}

function addToGallery(body, data, seconds, files) {
  const gateway = data.gateway || {};
  const format = data.output_format || body.output_format;
  const url = URL.createObjectURL(imageBlob(data.b64_json, format));
  // The exact request that makes this image again: its seed fixed to the one used.
  const exact = { ...body };
  if (data.seed !== undefined && data.seed !== null) exact.seed = data.seed;
  const base = window.location.origin;
  const edit = files ? { image: files.image.name, mask: files.mask ? files.mask.name : null } : null;
  const facts = [
    ...(edit ? [["Edit of", edit.mask ? `${edit.image} (mask ${edit.mask})` : edit.image]] : []),
    ["Model", body.model],
    ["Size", data.size || body.size],
    ["Steps", body.num_inference_steps ?? "model default"],
    ["Guidance", body.guidance_scale ?? "model default"],
    ["Seed", data.seed ?? "unknown"],
    ["Provider", gateway.provider ?? "unknown"],
    ["Route reason", gateway.route_reason ?? "unknown"],
    ["Time", `${seconds} s`],
    ["Cost", gateway.charged_usd === undefined ? "unknown" : `${usd(gateway.charged_usd)} (the request, ${body.n} image${body.n === 1 ? "" : "s"})`],
  ];
  const dl = el("dl", { class: "facts" });
  for (const [name, value] of facts) {
    dl.append(el("dt", { text: name }), el("dd", { "data-field": name.toLowerCase().replace(/ /g, "-"), text: String(value) }));
  }
  const item = el(
    "li",
    { class: "gallery-item" },
    el(
      "figure",
      {},
      el("img", { src: url, alt: `Generated: ${body.prompt}`, class: "result", "data-provider": gateway.provider || "" }),
      el("figcaption", { class: "prompt", text: body.prompt }),
    ),
    body.negative_prompt ? el("p", { class: "muted negative", text: `Not: ${body.negative_prompt}` }) : null,
    dl,
    el("a", { href: url, download: `image-${data.seed ?? "x"}.${format}`, class: "button", text: "Download" }),
    el(
      "details",
      { class: "code-details" },
      el("summary", { text: "Copy as code" }),
      codeBlock("Python", python(base, exact, edit)),
      codeBlock("JavaScript", javascript(base, exact, edit)),
      codeBlock("curl", curl(base, exact, edit)),
    ),
  );
  $("gallery").prepend(item);
  $("gallery-empty").hidden = true;
}

// --- wiring ---------------------------------------------------------------------------------

$("model").addEventListener("change", () => {
  fillSizes();
  requestQuote();
});
$("random-seed").addEventListener("change", () => {
  $("seed").disabled = $("random-seed").checked;
  if (!$("random-seed").checked && $("seed").value === "") $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
  requestQuote();
});
for (const id of ["edit-image", "edit-mask"]) $(id).addEventListener("change", showEditMode);
$("edit-clear").addEventListener("click", () => {
  $("edit-image").value = "";
  $("edit-mask").value = "";
  showEditMode();
});
const zone = $("edit-zone");
zone.addEventListener("dragover", (event) => {
  event.preventDefault();
  zone.classList.add("dragging");
});
zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("dragging");
  const dropped = [...event.dataTransfer.files].filter((f) => f.type.startsWith("image/"));
  if (!dropped.length) return;
  // The first image dropped is the one to edit, a second one its mask.
  const moveTo = (input, file) => {
    const list = new DataTransfer();
    list.items.add(file);
    input.files = list.files;
  };
  moveTo($("edit-image"), dropped[0]);
  if (dropped[1]) moveTo($("edit-mask"), dropped[1]);
  showEditMode();
});
for (const id of ["prompt", "negative-prompt", "size", "output-format", "steps", "guidance", "n", "seed", "strength"]) {
  $(id).addEventListener("input", requestQuote);
  $(id).addEventListener("change", requestQuote);
}
$("params").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
session.start();
