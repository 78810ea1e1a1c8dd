// rankserve playground: POST /v1/ranking from a form and draw the answer, best first, with score bars.
// Plain DOM code and same-origin requests only (the page's Content-Security-Policy allows nothing else).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "rankserve-api-key";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function errorMessage(response) {
  // rankserve's error body: {"error": {"message", "type", "code", "param"}, "detail"}
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      return `${response.status}: ${body.error.message}` + (body.error.param ? ` (${body.error.param})` : "");
    }
  } catch (_) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`;
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-row").hidden = false;
    $("model-note").textContent = "enter the API key to list models";
    return;
  }
  if (!response.ok) { showError(await errorMessage(response)); return; }
  const models = (await response.json()).data.map((m) => m.id);
  const select = $("model");
  select.replaceChildren(...models.map((id) => new Option(id, id)));
  select.disabled = models.length < 2;
  $("model-note").textContent = models.length > 1 ? `${models.length} models served` : "";
}

function render(passages, rankings, usage, millis) {
  const logits = rankings.map((r) => r.logit);
  const lo = Math.min(...logits), hi = Math.max(...logits);
  const items = rankings.map((r) => {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.index = String(r.index);
    li.dataset.logit = String(r.logit);
    const text = document.createElement("div");
    text.className = "passage";
    text.textContent = passages[r.index];
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    // Bars scale the logits of this answer from the lowest (5 %) to the highest (100 %).
    fill.style.width = (hi > lo ? 5 + 95 * (r.logit - lo) / (hi - lo) : 100).toFixed(1) + "%";
    bar.append(fill);
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `passage ${r.index + 1} · logit ${r.logit.toFixed(4)}`;
    li.append(text, bar, meta);
    return li;
  });
  $("results").replaceChildren(...items);
  const tokens = usage && usage.total_tokens ? `, ${usage.total_tokens} tokens` : "";
  $("summary").textContent = `${rankings.length} of ${passages.length} passages in ${millis} ms${tokens}`;
  $("output").hidden = false;
}

async function rank(event) {
  event.preventDefault();
  $("error").hidden = true;
  const passages = $("passages").value.split("\n").map((p) => p.trim()).filter((p) => p.length > 0);
  if (passages.length === 0) { showError("Give at least one passage (one per line)."); return; }
  const body = { query: { text: $("query").value }, passages: passages.map((text) => ({ text })) };
  if ($("model").value) body.model = $("model").value;
  if ($("truncate").value) body.truncate = $("truncate").value;
  if ($("top-n").value) body.top_n = Number($("top-n").value);
  $("rank").disabled = true;
  const started = performance.now();
  try {
    const response = await fetch("/v1/ranking", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (response.status === 401) $("key-row").hidden = false;
    if (!response.ok) { showError(await errorMessage(response)); return; }
    const answer = await response.json();
    render(passages, answer.rankings, answer.usage, Math.round(performance.now() - started));
  } catch (err) {
    showError("Request failed: " + err);
  } finally {
    $("rank").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    loadModels();
  });
  $("rank-form").addEventListener("submit", rank);
  loadModels().catch((err) => showError("Could not list models: " + err));
});
