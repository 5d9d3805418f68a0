// The playground: one form over this server's POST /v1/images/generations. No libraries, no
// build step: it must work offline, from the package's own files.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// Text chunks of a PNG (tEXt, and uncompressed iTXt as tiue-export writes), in file order.
function pngText(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1"), utf8 = new TextDecoder("utf-8");
  const text = [];
  for (let at = 8; at + 12 <= bytes.length; ) {
    const length = view.getUint32(at), type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    const nul = data.indexOf(0);
    if (type === "tEXt" && nul > 0) {
      text.push([latin1.decode(data.subarray(0, nul)), latin1.decode(data.subarray(nul + 1))]);
    } else if (type === "iTXt" && nul > 0 && data[nul + 1] === 0) {
      let rest = nul + 3;
      rest = data.indexOf(0, rest) + 1; // language tag
      rest = data.indexOf(0, rest) + 1; // translated keyword
      text.push([latin1.decode(data.subarray(0, nul)), utf8.decode(data.subarray(rest))]);
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return text;
}

function table(rows) {
  const t = document.createElement("table");
  for (const [key, value] of rows) {
    const tr = t.insertRow();
    tr.insertCell().textContent = key;
    tr.insertCell().textContent = value;
  }
  return t;
}

function card(b64, drawn) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const url = "data:image/png;base64," + b64;
  const div = document.createElement("div");
  div.className = "card";
  const img = document.createElement("img");
  img.src = url;
  img.alt = `seed ${drawn.seed}`;
  const link = document.createElement("a");
  link.href = url;
  link.download = `tiue-seed-${drawn.seed}.png`;
  link.textContent = `download PNG (seed ${drawn.seed}, ${bytes.length} bytes)`;
  const stages = Object.entries(drawn.batch.timings).map(([k, s]) => [k, `${(s * 1000).toFixed(1)} ms`]);
  const h1 = document.createElement("h3");
  h1.textContent = `Stages (batch of ${drawn.batch.size})`;
  const h2 = document.createElement("h3");
  h2.textContent = "PNG metadata";
  div.append(img, link, h1, table(stages), h2, table(pngText(bytes)));
  return div;
}

async function loadModel() {
  const r = await fetch("/v1/model");
  model = await r.json();
  if (!r.ok) {
    $("model").textContent = model.error ? model.error.message : `GET /v1/model: ${r.status}`;
    return;
  }
  const name = model.model.replace(/[/\\]+$/, "").split(/[/\\]/).pop();
  model.name = name;
  $("model").textContent = `${name}: ${model.image.width}x${model.image.height}, K=${model.k}, ` +
    `${model.backend} (${model.precision}, ${model.provider}), VAE ${model.vae}, up to ${model.max_images} images a request`;
  $("n").max = model.max_images;
  if (model.vae_variants && model.vae_variants.length > 1) {
    for (const v of model.vae_variants) $("vae").add(new Option(v, v, v === model.vae, v === model.vae));
    $("vae-label").hidden = false;
  }
}

async function generate(event) {
  event.preventDefault();
  showError("");
  $("generate").disabled = true;
  $("status").textContent = "drawing…";
  const body = { prompt: $("prompt").value, n: Number($("n").value), response_format: "b64_json" };
  if (model && model.name) {
    body.model = model.name;
    body.size = `${model.image.width}x${model.image.height}`;
  }
  if (!$("vae-label").hidden) body.vae = $("vae").value;
  const seed = $("seed").value.trim();
  // Digits go in verbatim (a JavaScript number would round seeds past 2^53); anything else is
  // sent as typed, so the server's own message says what is wrong with it.
  let json = JSON.stringify(body);
  json = json.slice(0, -1) + ',"seed":' + (/^-?\d+$/.test(seed) ? seed : JSON.stringify(seed)) + "}";
  const t0 = performance.now();
  try {
    const r = await fetch("/v1/images/generations", { method: "POST", headers: { "Content-Type": "application/json" }, body: json });
    const answer = await r.json();
    if (!r.ok) {
      showError(answer.error ? answer.error.message : `HTTP ${r.status}`);
      $("status").textContent = "";
      return;
    }
    const drawn = JSON.parse(r.headers.get("X-Tiue-Images") || "[]");
    $("results").replaceChildren(...answer.data.map((d, i) => card(d.b64_json, drawn[i])));
    $("status").textContent = `${answer.data.length} image(s) in ${((performance.now() - t0) / 1000).toFixed(2)} s (request, end to end)`;
  } catch (err) {
    showError(`the server did not answer: ${err}`);
    $("status").textContent = "";
  } finally {
    $("generate").disabled = false;
  }
}

$("form").addEventListener("submit", generate);
loadModel().catch((err) => showError(`GET /v1/model failed: ${err}`));
