// The i2v playground: upload or name an image, submit it, follow the request live, play the video.
//
// Everything the service or a provider wrote (prompt, title, error, callback body, ids) is put in
// the page with textContent or as an attribute, never parsed as HTML.

const API = "/api/v1/i2v";
const UPLOADS = "/api/v1/uploads";
const KEY_STORAGE = "i2v.playground.apiKey";
const POLL_MS = 1000;
const STAGES = ["captioning", "submitting", "waiting", "polling", "delivering"];
const TERMINAL = new Set(["completed", "failed", "canceled"]);
const REQUEST_ID = /^[A-Za-z0-9_.:~-]{1,128}$/;

const body = document.body;
const authRequired = body.dataset.authRequired === "true";
const development = body.dataset.development === "true";
const $ = (id) => document.getElementById(id);

const state = {
  id: null, // the request in view
  record: null, // its last status reply
  etag: null,
  etaDeadline: null, // ms since the epoch when the ETA runs out
  pollTimer: null,
  generation: 0, // bumps when the view changes, so a late reply for another request is dropped
  devAttempts: -1, // callback attempts when the dev receiver was last read
  uploading: false,
};

// -- small helpers ----------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function apiKey() {
  const field = $("api-key");
  return field ? field.value.trim() : "";
}

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  const key = apiKey();
  // The API takes keys from this header only; it never reads cookies.
  if (authRequired && key) all.Authorization = `Bearer ${key}`;
  return all;
}

async function readProblem(response) {
  let detail = `${response.status} ${response.statusText}`.trim();
  try {
    const problem = await response.json();
    if (problem && typeof problem.detail === "string") detail = problem.detail;
    else if (problem && typeof problem.message === "string") detail = problem.message;
    const errors = problem && problem.errors;
    if (errors && typeof errors === "object") {
      const parts = [];
      for (const [where, value] of Object.entries(errors)) parts.push(`${where}: ${JSON.stringify(value)}`);
      if (parts.length) detail += ` (${parts.join("; ")})`;
    }
  } catch {
    // Not JSON: the status line says enough.
  }
  return detail;
}

function newRequestId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const day = new Date().toISOString().slice(0, 10).replaceAll("-", "");
  return `pg-${day}-${hex}`;
}

function clock(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? String(iso) : at.toLocaleTimeString([], { hour12: false });
}

function since(iso, from) {
  const a = Date.parse(iso);
  const b = Date.parse(from);
  if (Number.isNaN(a) || Number.isNaN(b)) return "";
  return `+${((a - b) / 1000).toFixed(1)} s`;
}

function setMessage(id, text, kind = "") {
  const node = $(id);
  node.textContent = text;
  node.dataset.kind = kind;
}

function viewPath(id) {
  return `${API}/${encodeURIComponent(id)}`;
}

// -- the API key ------------------------------------------------------------------------------------

function setUpKey() {
  const field = $("api-key");
  if (!field) return;
  field.value = sessionStorage.getItem(KEY_STORAGE) || "";
  field.addEventListener("input", () => {
    sessionStorage.setItem(KEY_STORAGE, field.value.trim());
  });
  field.addEventListener("change", () => {
    loadRecent();
    if (state.id) openView(state.id);
  });
}

// -- choosing an image ------------------------------------------------------------------------------

let previewUrl = null;

function showPreview(file) {
  const preview = $("image-preview");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  preview.src = previewUrl;
  preview.hidden = false;
}

async function upload(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    setMessage("upload-status", `${file.name || "That file"} is not an image.`, "error");
    return;
  }
  showPreview(file);
  state.uploading = true;
  $("submit").disabled = true;
  setMessage("upload-status", `Uploading ${file.name || "the image"}…`);
  const form = new FormData();
  form.append("file", file, file.name || "image");
  try {
    const response = await fetch(UPLOADS, { method: "POST", headers: headers(), body: form, credentials: "omit" });
    if (response.status !== 201) {
      setMessage("upload-status", `Upload refused: ${await readProblem(response)}`, "error");
      return;
    }
    const reply = await response.json();
    $("image-url").value = reply.url;
    const expires = reply.expires_at ? `; kept until ${new Date(reply.expires_at).toLocaleString()}` : "";
    setMessage("upload-status", `Uploaded${expires}.`, "ok");
  } catch (error) {
    setMessage("upload-status", `Upload failed: ${error.message}`, "error");
  } finally {
    state.uploading = false;
    $("submit").disabled = false;
  }
}

function setUpImage() {
  const zone = $("drop-zone");
  const input = $("image-file");
  input.addEventListener("change", () => upload(input.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) upload(file);
  });
  // A pasted image file uploads too; pasted text goes into the focused field as usual.
  document.addEventListener("paste", (event) => {
    const file = Array.from(event.clipboardData ? event.clipboardData.files : []).find((f) =>
      f.type.startsWith("image/"),
    );
    if (file) {
      event.preventDefault();
      upload(file);
    }
  });
  $("image-url").addEventListener("input", () => {
    $("image-preview").hidden = true;
    setMessage("upload-status", "");
  });
}

// -- submitting -------------------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  if (state.uploading) return;
  const imageUrl = $("image-url").value.trim();
  const requestId = $("request-id").value.trim();
  if (authRequired && !apiKey()) return setMessage("form-message", "Enter an API key first.", "error");
  if (!imageUrl) return setMessage("form-message", "Drop an image, choose a file or paste an image URL.", "error");
  if (!REQUEST_ID.test(requestId) || /^\.+$/.test(requestId)) {
    return setMessage("form-message", "The request id needs 1–128 letters, digits and - _ . : ~", "error");
  }
  $("submit").disabled = true;
  setMessage("form-message", "Submitting…");
  try {
    const response = await fetch(API, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", "x-request-id": requestId }),
      body: JSON.stringify({ image_id: imageUrl }),
      credentials: "omit",
    });
    if (response.status !== 202 && response.status !== 200) {
      setMessage("form-message", `Not accepted: ${await readProblem(response)}`, "error");
      return;
    }
    const reply = await response.json();
    const again = response.status === 200 ? " (already submitted: nothing new started)" : "";
    setMessage("form-message", `${reply.message}${again}`, "ok");
    $("request-id").value = newRequestId();
    const hash = `#/requests/${encodeURIComponent(requestId)}`;
    // The same id again changes no hash, so no hashchange would open its view.
    if (location.hash === hash) openView(requestId);
    else location.hash = hash;
    loadRecent();
  } catch (error) {
    setMessage("form-message", `Could not reach the service: ${error.message}`, "error");
  } finally {
    $("submit").disabled = false;
  }
}

// -- the request view -------------------------------------------------------------------------------

function stopPolling() {
  if (state.pollTimer) clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

function settled(record) {
  return TERMINAL.has(record.status) && record.callback && record.callback.status !== "pending";
}

function openView(id) {
  stopPolling();
  state.generation += 1;
  state.id = id;
  state.record = null;
  state.etag = null;
  state.etaDeadline = null;
  state.devAttempts = -1;
  $("view").hidden = false;
  $("view-id").textContent = id;
  $("video-holder").replaceChildren();
  $("callback-body").textContent = "";
  $("callback-body-source").textContent = "";
  setMessage("view-message", "Loading…");
  poll();
}

async function poll() {
  const generation = state.generation;
  const id = state.id;
  let again = true;
  try {
    const extra = state.etag ? { "If-None-Match": state.etag } : {};
    const response = await fetch(viewPath(id), { headers: headers(extra), cache: "no-store", credentials: "omit" });
    if (generation !== state.generation) return;
    if (response.status === 304) {
      setMessage("view-message", "");
    } else if (response.ok) {
      state.etag = response.headers.get("ETag");
      const record = await response.json();
      if (generation !== state.generation) return;
      render(record);
      setMessage("view-message", "");
    } else {
      setMessage("view-message", await readProblem(response), "error");
      again = response.status >= 500 || response.status === 429;
    }
  } catch (error) {
    setMessage("view-message", `Could not reach the service: ${error.message}`, "error");
  }
  if (generation !== state.generation) return;
  if (state.record && settled(state.record)) again = false;
  if (again) state.pollTimer = setTimeout(poll, POLL_MS);
}

function render(record) {
  const previous = state.record;
  state.record = record;
  const status = $("view-status");
  status.textContent = record.stage ? `${record.status} · ${record.stage}` : record.status;
  status.dataset.status = record.status;

  state.etaDeadline = record.eta_seconds == null ? null : Date.now() + record.eta_seconds * 1000;
  tickEta();
  renderTimeline(record);
  renderProvider(record);

  $("prompt-block").hidden = !record.prompt;
  $("prompt").textContent = record.prompt || "";

  renderResult(record, previous);
  const failed = record.error && record.status !== "completed";
  $("failure").hidden = !failed;
  $("error-code").textContent = failed ? record.error.code : "";
  $("error-message").textContent = failed ? record.error.message : "";

  $("cancel").hidden = TERMINAL.has(record.status);
  renderCallback(record);
  // The list shows this request's status too: keep it in step.
  if (previous && previous.status !== record.status) loadRecent();
}

function tickEta() {
  const node = $("view-eta");
  if (state.etaDeadline == null || !state.record || TERMINAL.has(state.record.status)) {
    node.textContent = "";
    return;
  }
  const left = Math.max(0, Math.round((state.etaDeadline - Date.now()) / 1000));
  const minutes = Math.floor(left / 60);
  const seconds = String(left % 60).padStart(2, "0");
  node.textContent = left > 0 ? `callback expected in ${minutes}:${seconds}` : "callback expected any moment";
}

function renderTimeline(record) {
  const stages = record.stages || {};
  const items = [{ name: "queued", at: record.created_at }];
  for (const name of STAGES) items.push({ name, at: stages[name] || null });
  if (TERMINAL.has(record.status)) {
    items.push({ name: record.status, at: stages[record.status] || record.updated_at });
  }
  const current = record.stage || (record.status === "queued" ? "queued" : null);
  const list = $("timeline");
  list.replaceChildren(
    ...items.map((item) => {
      let phase = item.at ? "done" : "pending";
      if (item.name === current) phase = "current";
      const li = el("li", { dataset: { stage: item.name, phase } });
      li.append(el("span", { class: "stage-name", text: item.name }));
      if (item.at) {
        const time = el("time", { datetime: item.at, text: clock(item.at) });
        li.append(" ", time, " ", el("span", { class: "since", text: since(item.at, record.created_at) }));
      }
      return li;
    }),
  );
}

function renderProvider(record) {
  const provider = record.provider || {};
  const name = provider.name ? `Provider: ${provider.name}` : "";
  const job = provider.job_id ? ` (job ${provider.job_id})` : "";
  $("provider-name").textContent = name + job;
  const bar = $("provider-progress");
  const progress = provider.progress;
  const show = typeof progress === "number" && !TERMINAL.has(record.status);
  bar.hidden = !show;
  if (show) bar.value = Math.max(0, Math.min(100, progress));
  $("provider-progress-text").textContent = show ? `${Math.round(progress)} %` : "";
}

function renderResult(record, previous) {
  const done = record.status === "completed" && record.video_url;
  $("result").hidden = !done;
  if (!done) return;
  $("result-title").textContent = record.title || "";
  const link = $("download");
  link.href = record.video_url;
  const holder = $("video-holder");
  if (previous && previous.video_url === record.video_url && holder.firstChild) return;
  const video = el("video", {
    id: "video",
    src: record.video_url,
    "aria-label": record.title ? `Video: ${record.title}` : "The video",
  });
  // Muted and inline, so browsers allow it to start on its own.
  video.muted = true;
  video.loop = true;
  video.controls = true;
  video.autoplay = true;
  video.playsInline = true;
  for (const name of ["muted", "loop", "controls", "autoplay", "playsinline"]) video.setAttribute(name, "");
  holder.replaceChildren(video);
  video.play().catch(() => {
    // Autoplay can be refused; the controls still play it.
  });
}

function renderCallback(record) {
  const callback = record.callback || {};
  const status = $("callback-status");
  status.textContent = callback.status || "";
  status.dataset.status = callback.status || "";
  const next = callback.status === "pending" && callback.next_attempt_at;
  $("callback-next").textContent = next ? `next attempt at ${clock(callback.next_attempt_at)}` : "";

  const list = $("callback-attempts");
  if (Array.isArray(callback.history)) {
    list.replaceChildren(
      ...callback.history.map((attempt) => {
        const outcome = attempt.status_code != null ? `HTTP ${attempt.status_code}` : attempt.error || "no answer";
        const li = el("li", { dataset: { statusCode: attempt.status_code ?? "" } });
        li.append(
          el("time", { datetime: attempt.at, text: clock(attempt.at) }),
          el("span", { text: ` ${outcome}` }),
        );
        if (attempt.error && attempt.status_code != null) li.append(el("span", { text: ` (${attempt.error})` }));
        return li;
      }),
    );
  } else {
    // A service without the attempt history shows only the count and the last answer.
    const last = callback.last_status_code != null ? `, last answer HTTP ${callback.last_status_code}` : "";
    list.replaceChildren(
      ...(callback.attempts ? [el("li", { text: `${callback.attempts} attempt(s)${last}` })] : []),
    );
  }
  $("redeliver").hidden = callback.status !== "failed";
  showCallbackBody(record);
}

async function showCallbackBody(record) {
  const callback = record.callback || {};
  const source = $("callback-body-source");
  const pre = $("callback-body");
  if (callback.body !== undefined && callback.body !== null) {
    source.textContent = "As the status reply gives it.";
    pre.textContent = typeof callback.body === "string" ? callback.body : JSON.stringify(callback.body, null, 2);
    return;
  }
  if (!development) {
    source.textContent = "Not shown: this service does not report the body it sent.";
    pre.textContent = "";
    return;
  }
  if (!callback.attempts || callback.attempts === state.devAttempts) {
    if (!callback.attempts) source.textContent = "Nothing sent yet.";
    return;
  }
  state.devAttempts = callback.attempts;
  const generation = state.generation;
  try {
    const response = await fetch("/dev/callbacks", { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok || generation !== state.generation) return;
    const entries = (await response.json()).filter((entry) => entry.request_id === record.request_id);
    const last = entries[entries.length - 1];
    if (!last) {
      source.textContent = "The development receiver has not received it (it went to another callback URL).";
      return;
    }
    source.textContent = `As the development receiver got it at ${clock(last.received_at)} (GET /dev/callbacks).`;
    pre.textContent = typeof last.body === "string" ? last.body : JSON.stringify(last.body, null, 2);
  } catch {
    state.devAttempts = -1; // try again on the next reply
  }
}

async function act(method, path, doing) {
  setMessage("view-message", doing);
  try {
    const response = await fetch(path, { method, headers: headers(), credentials: "omit" });
    if (response.status !== 202) {
      setMessage("view-message", await readProblem(response), "error");
      return;
    }
    const id = state.id;
    openView(id);
    loadRecent();
  } catch (error) {
    setMessage("view-message", `Could not reach the service: ${error.message}`, "error");
  }
}

// -- recent requests --------------------------------------------------------------------------------

function thumbnail(url) {
  let parsed;
  try {
    parsed = new URL(url, location.href);
  } catch {
    return el("span", { class: "thumb placeholder", "aria-hidden": "true" });
  }
  // The browser loads the picture, never the web process; no referrer tells the host where from.
  const local = parsed.origin === location.origin;
  if (!local && parsed.protocol !== "https:") return el("span", { class: "thumb placeholder", "aria-hidden": "true" });
  const img = el("img", { class: "thumb", alt: "", loading: "lazy", referrerpolicy: "no-referrer" });
  img.referrerPolicy = "no-referrer";
  img.src = parsed.href;
  return img;
}

let recentCalls = 0;

async function loadRecent() {
  // Replies can cross: only the latest call may fill the list.
  const call = ++recentCalls;
  if (authRequired && !apiKey()) {
    setMessage("recent-message", "Enter an API key to see its requests.");
    $("recent").replaceChildren();
    return;
  }
  try {
    const response = await fetch(`${API}?limit=20`, { headers: headers(), cache: "no-store", credentials: "omit" });
    if (response.status === 404 || response.status === 405) {
      setMessage("recent-message", "This service does not list requests.");
      return;
    }
    if (!response.ok) {
      setMessage("recent-message", await readProblem(response), "error");
      return;
    }
    const { requests } = await response.json();
    if (call !== recentCalls) return;
    setMessage("recent-message", requests.length ? "" : "No requests yet.");
    $("recent").replaceChildren(
      ...requests.map((record) => {
        const button = el("button", {
          type: "button",
          class: "recent-item",
          "aria-label": `Open request ${record.request_id} (${record.status})`,
          dataset: { requestId: record.request_id },
        });
        button.append(
          thumbnail(record.image_url),
          el("span", { class: "recent-id", text: record.request_id }),
          el("span", { class: "badge", dataset: { status: record.status }, text: record.status }),
        );
        button.addEventListener("click", () => {
          location.hash = `#/requests/${encodeURIComponent(record.request_id)}`;
        });
        return el("li", {}, button);
      }),
    );
  } catch (error) {
    setMessage("recent-message", `Could not reach the service: ${error.message}`, "error");
  }
}

// -- routing ----------------------------------------------------------------------------------------

function route() {
  const match = /^#\/requests\/(.+)$/.exec(location.hash);
  if (!match) return;
  const id = decodeURIComponent(match[1]);
  if (id !== state.id || !state.record) openView(id);
  $("view").scrollIntoView({ block: "start" });
}

function start() {
  setUpKey();
  setUpImage();
  $("request-id").value = newRequestId();
  $("new-id").addEventListener("click", () => {
    $("request-id").value = newRequestId();
  });
  $("submit-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", () => act("DELETE", viewPath(state.id), "Canceling…"));
  $("redeliver").addEventListener("click", () =>
    act("POST", `${viewPath(state.id)}/callback`, "Sending the callback again…"),
  );
  $("refresh-recent").addEventListener("click", loadRecent);
  window.addEventListener("hashchange", route);
  setInterval(tickEta, 1000);
  route();
  loadRecent();
}

start();
