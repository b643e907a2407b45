// The pvtunnel inspector page: a live list of what the agent replayed, one
// exchange's heads and bodies, and replay. It reads /inspect/api/ only, and
// draws captured bytes with textContent (never as HTML): a body is whatever a
// client sent.
"use strict";

const API = "/inspect/api";
const MASKED = new Set(["authorization", "cookie", "set-cookie"]);
const entries = new Map(); // id -> summary
const drawn = new Map(); // id -> its row, drawn for the summary it was made from
let selected = null; // id shown in the detail pane
let shown = null; // its detail document

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// Characters that reorder the text around them (Unicode bidi controls): a body
// holding them could show "exe.png" for "gnp.exe". They are drawn as a visible
// mark, not applied.
const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function plainText(tag, text, className) {
  const node = el(tag, undefined, className);
  let at = 0;
  for (const found of text.matchAll(BIDI_CONTROLS)) {
    const code = found[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    const mark = el("span", `<U+${code}>`, "control");
    mark.title = "a bidirectional-text control character, shown rather than applied";
    node.append(text.slice(at, found.index), mark);
    at = found.index + found[0].length;
  }
  node.append(text.slice(at));
  return node;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

// ---- the list

function matches(entry, words) {
  return words.every((word) => {
    if (/^[a-z]+$/i.test(word) && word === word.toUpperCase() && word.length >= 3) {
      if (entry.method === word) return true;
    }
    const status = entry.status === null ? "" : String(entry.status);
    if (/^[1-5][0-9x]{2}$/i.test(word)) {
      const pattern = new RegExp(`^${word.toLowerCase().replace(/x/g, "[0-9]")}$`);
      return pattern.test(status);
    }
    const text = `${entry.method} ${entry.target} ${entry.host}`.toLowerCase();
    return text.includes(word.toLowerCase());
  });
}

function row(entry) {
  const tr = el("tr");
  tr.dataset.id = entry.id;
  const time = new Date(entry.time);
  const millis = String(time.getMilliseconds()).padStart(3, "0");
  tr.append(el("td", `${time.toTimeString().slice(0, 8)}.${millis}`, "time"));
  tr.append(el("td", entry.method, "method"));
  const target = el("td", entry.target, "target");
  target.title = `${entry.host}${entry.target}`;
  if (entry.replay_of !== null) target.append(el("span", `replay of #${entry.replay_of}`, "badge"));
  tr.append(target);
  let status = entry.status === null ? (entry.state === "open" ? "…" : "error") : entry.status;
  const statusCell = el("td", status, entry.status === null ? (entry.state === "failed" ? "failed" : "") : `status-${String(entry.status)[0]}`);
  statusCell.classList.add("status");
  tr.append(statusCell);
  tr.append(el("td", entry.duration_ms === null ? "" : Math.round(entry.duration_ms)));
  tr.append(el("td", bytes(entry.response_bytes)));
  tr.addEventListener("click", () => select(entry.id));
  return tr;
}

// The list is redrawn at most once a frame, however many events came meanwhile,
// and only the rows whose summary changed are made anew: with thousands of rows
// and a burst of traffic, a redraw per event left the page tens of seconds behind.
let drawPending = false;

function renderSoon() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    render();
  });
}

function render() {
  const words = $("filter").value.trim().split(/\s+/).filter(Boolean);
  const body = $("requests").tBodies[0];
  const rows = [];
  const ids = [...entries.keys()].sort((a, b) => b - a);
  for (const id of ids) {
    const entry = entries.get(id);
    let made = drawn.get(id);
    if (!made || made.entry !== entry) {
      made = { entry, tr: row(entry) };
      drawn.set(id, made);
    }
    made.tr.classList.toggle("selected", id === selected);
    if (matches(entry, words)) rows.push(made.tr);
  }
  for (const id of drawn.keys()) if (!entries.has(id)) drawn.delete(id);
  body.replaceChildren(...rows);
  $("empty").hidden = entries.size > 0;
  // Counts the redraws, for whoever watches the page (its browser tests).
  document.body.dataset.draws = String(Number(document.body.dataset.draws || 0) + 1);
}

async function loadList() {
  const response = await fetch(`${API}/requests`, { cache: "no-store" });
  if (!response.ok) return;
  const listed = await response.json();
  // Events that came while the list was on its way are newer than it: an exchange
  // the list does not know yet stays, and one it still shows open stays finished.
  const newest = listed.reduce((most, entry) => Math.max(most, entry.id), 0);
  const merged = new Map();
  for (const entry of listed) {
    const seen = entries.get(entry.id);
    const finished = seen && seen.state !== "open" && entry.state === "open";
    merged.set(entry.id, finished ? seen : entry);
  }
  for (const [id, entry] of entries) if (id > newest) merged.set(id, entry);
  entries.clear();
  for (const [id, entry] of merged) entries.set(id, entry);
  render();
  // Counts the lists drawn, for whoever watches the page (its browser tests).
  document.body.dataset.lists = String(Number(document.body.dataset.lists || 0) + 1);
}

let followDelay = 1000;

function follow() {
  const source = new EventSource(`${API}/events`);
  source.addEventListener("open", () => {
    followDelay = 1000;
    $("live").textContent = "live";
    $("live").classList.add("on");
    loadList(); // whatever happened while the stream was down
  });
  source.addEventListener("error", () => {
    $("live").textContent = "reconnecting…";
    $("live").classList.remove("on");
    // The browser retries a dropped stream by itself, but gives up for good on an
    // answer other than 200 (a 503 while other pages hold every place): try again.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(follow, followDelay);
      followDelay = Math.min(followDelay * 2, 30000);
    }
  });
  source.addEventListener("exchange", (event) => {
    const entry = JSON.parse(event.data);
    entries.set(entry.id, entry);
    renderSoon();
    if (entry.id === selected && entry.state !== "open" && shown && shown.state === "open") select(entry.id);
  });
  source.addEventListener("removed", (event) => {
    entries.delete(JSON.parse(event.data).id);
    renderSoon();
  });
}

// ---- one exchange

function decode(base64) {
  const raw = atob(base64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function header(headers, name) {
  const found = headers.find(([n]) => n.toLowerCase() === name);
  return found ? found[1] : "";
}

function hexdump(data) {
  const lines = [];
  for (let offset = 0; offset < data.length; offset += 16) {
    const slice = data.slice(offset, offset + 16);
    const hex = [...slice].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = [...slice].map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join("\n");
}

function looksLikeText(data) {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(data);
  } catch {
    return false;
  }
  return !data.some((b) => b < 9 || (b > 13 && b < 32));
}

function drawHead(target, line, headers) {
  const box = $(target);
  box.replaceChildren(el("div", line, "line"));
  for (const [name, value] of headers) {
    const div = el("div");
    div.append(el("span", name, "name"), document.createTextNode(": "));
    if (MASKED.has(name.toLowerCase())) {
      const secret = el("span", "•••••• (click to reveal)", "masked");
      secret.title = "click to reveal";
      secret.addEventListener("click", () => {
        secret.textContent = value;
        secret.className = "revealed";
      }, { once: true });
      div.append(secret);
    } else {
      div.append(document.createTextNode(value));
    }
    box.append(div);
  }
}

// How much of a body is drawn until asked for all of it: a preview may hold up to
// 16 MiB (max_body_bytes), which drawn whole, as text or as a hex dump, held the
// page for seconds each time the exchange was opened.
const DRAWN_TEXT = 256 * 1024; // characters
const DRAWN_HEX = 64 * 1024; // bytes: 4,096 lines

// A body sent with one of these codings is drawn decoded (where the browser can),
// at most INFLATED bytes of it: a preview of 64 KiB may inflate to gigabytes.
const CODINGS = { gzip: "gzip", "x-gzip": "gzip", deflate: "deflate" };
const INFLATED = 4 * 1024 * 1024;

async function inflate(data, format) {
  const reader = new Blob([data]).stream().pipeThrough(new DecompressionStream(format)).getReader();
  const parts = [];
  let size = 0;
  let ended = false;
  try {
    while (size < INFLATED) {
      const { done, value } = await reader.read();
      if (done) {
        ended = true;
        break;
      }
      parts.push(value);
      size += value.length;
    }
  } catch {
    // broken off (a cut preview) or not that coding at all: what came so far
  }
  if (!ended) reader.cancel().catch(() => {});
  const out = new Uint8Array(Math.min(size, INFLATED));
  let at = 0;
  for (const part of parts) {
    if (at >= out.length) break;
    const taken = part.subarray(0, out.length - at);
    out.set(taken, at);
    at += taken.length;
  }
  return [out, ended];
}

function drawBody(target, body, headers, kind, whole = false) {
  const box = $(target);
  // Each draw has a number: a decoding that ends after another body was drawn here
  // (another exchange opened meanwhile) draws nothing.
  const draw = String(Number(box.dataset.draw || 0) + 1);
  box.dataset.draw = draw;
  box.replaceChildren();
  if (body.omitted) {
    box.append(el("p", `${bytes(body.size)} passed, not recorded (${kind} stream)`, "hint"));
    return;
  }
  if (body.size === 0) {
    box.append(el("p", "no body", "hint"));
    return;
  }
  const data = decode(body.base64);
  const type = header(headers, "content-type").toLowerCase();
  const coding = header(headers, "content-encoding").trim().toLowerCase();
  const redraw = () => drawBody(target, body, headers, kind, true);
  const cut = body.cut ? `cut: the first ${bytes(data.length)} of ${bytes(body.size)} were recorded` : null;
  if (CODINGS[coding] && typeof DecompressionStream === "function") {
    box.append(el("p", `decoding ${coding}…`, "hint decoding"));
    inflate(data, CODINGS[coding]).then(([plain, ended]) => {
      if (box.dataset.draw !== draw) return;
      box.replaceChildren();
      if (plain.length === 0 && !ended) {
        drawData(box, data, type, whole, redraw);
        box.append(el("p", `not valid ${coding}: drawn as it came`, "hint"));
      } else {
        drawData(box, plain, type, whole, redraw);
        let note = `${coding}: ${bytes(data.length)} decoded to ${bytes(plain.length)}`;
        if (plain.length >= INFLATED) note += ` (decoding stops at ${bytes(INFLATED)})`;
        else if (!ended) note += " (the rest could not be decoded)";
        box.append(el("p", note, "hint"));
      }
      if (cut) box.append(el("p", cut, "hint"));
    });
    return;
  }
  if (type.startsWith("image/") && !body.cut && !type.includes("svg") && !coding) {
    const img = el("img");
    img.alt = "image body";
    img.src = `data:${type.split(";")[0]};base64,${body.base64}`;
    box.append(img);
  } else {
    drawData(box, data, type, whole, redraw);
  }
  if (cut) box.append(el("p", cut, "hint"));
}

function drawData(box, data, type, whole, redraw) {
  let drawn = null; // [what is drawn, of how much, the unit], when not all is
  if (looksLikeText(data)) {
    let text = new TextDecoder().decode(data);
    if (type.includes("json") || /^\s*[[{]/.test(text)) {
      try {
        text = JSON.stringify(JSON.parse(text), null, 2);
      } catch {
        // not whole JSON (cut, or not JSON at all): shown as it came
      }
    }
    if (!whole && text.length > DRAWN_TEXT) {
      drawn = [DRAWN_TEXT, text.length, "characters"];
      text = text.slice(0, DRAWN_TEXT);
    }
    box.append(plainText("pre", text, "text"));
  } else {
    const some = !whole && data.length > DRAWN_HEX;
    if (some) drawn = [DRAWN_HEX, data.length, "bytes"];
    box.append(el("pre", hexdump(some ? data.subarray(0, DRAWN_HEX) : data), "hex"));
  }
  if (drawn) {
    const [count, total, unit] = drawn;
    const note = el("p", `the first ${count.toLocaleString("en")} of ${total.toLocaleString("en")} ${unit} are drawn `, "hint drawn");
    const all = el("button", "draw all", "more");
    all.type = "button";
    all.addEventListener("click", redraw);
    note.append(all);
    box.append(note);
  }
}

async function select(id) {
  selected = id;
  for (const tr of $("requests").tBodies[0].rows) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  const response = await fetch(`${API}/requests/${id}`, { cache: "no-store" });
  if (!response.ok) return;
  show(await response.json());
}

function show(entry) {
  shown = entry;
  $("detail").hidden = false;
  $("edit-form").hidden = true;
  $("replay-error").hidden = true;
  $("detail-title").textContent = `#${entry.id} ${entry.method} ${entry.target}`;
  const parts = [`${entry.time}`, `route ${entry.route}`, `host ${entry.host}`];
  if (entry.timing.response_head_ms !== null) parts.push(`response head after ${entry.timing.response_head_ms.toFixed(1)} ms`);
  if (entry.timing.duration_ms !== null) parts.push(`total ${entry.timing.duration_ms.toFixed(1)} ms`);
  if (entry.replay_of !== null) parts.push(`replay of #${entry.replay_of}`);
  if (entry.kind !== "http") parts.push(entry.kind);
  if (entry.error) parts.push(`error: ${entry.error}`);
  $("detail-meta").textContent = parts.join(" · ");
  const replayable = entry.kind === "http" || entry.kind === "streaming";
  $("replay").disabled = !replayable;
  $("edit-replay").disabled = !replayable;
  drawHead("request-head", `${entry.method} ${entry.target}`, entry.request.headers);
  drawBody("request-body", entry.request.body, entry.request.headers, entry.kind);
  const status = entry.response.status === null ? "no response" : `${entry.response.status} ${entry.response.reason}`;
  drawHead("response-head", status, entry.response.headers);
  drawBody("response-body", entry.response.body, entry.response.headers, entry.kind);
}

// ---- replay

async function replay(edits) {
  $("replay-error").hidden = true;
  const response = await fetch(`${API}/requests/${shown.id}/replay`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(edits),
  });
  const answer = await response.json();
  if (!response.ok) {
    $("replay-error").textContent = `replay refused: ${answer.error}`;
    $("replay-error").hidden = false;
    return;
  }
  entries.set(answer.id, answer);
  render();
  selected = answer.id;
  render();
  show(answer);
}

function openEditor() {
  const entry = shown;
  $("edit-method").value = entry.method;
  $("edit-target").value = entry.target;
  $("edit-headers").value = entry.request.headers
    .filter(([name]) => !["content-length", "transfer-encoding"].includes(name.toLowerCase()))
    .map(([name, value]) => `${name}: ${value}`).join("\n");
  const body = entry.request.body;
  const data = decode(body.base64);
  const editable = looksLikeText(data);
  const text = editable ? new TextDecoder().decode(data) : "";
  // A textarea keeps line breaks as LF only: a body that had CRLF gets it back.
  $("edit-body").dataset.crlf = text.includes("\r\n") ? "1" : "";
  $("edit-body").value = text;
  $("edit-body").disabled = !editable;
  $("edit-body-note").textContent = editable
    ? (body.cut ? "(cut: only the start was recorded)" : "")
    : "(binary: sent as recorded)";
  $("edit-form").hidden = false;
}

function editsFromForm() {
  const headers = $("edit-headers").value.split("\n").filter((line) => line.trim()).map((line) => {
    const at = line.indexOf(":");
    return at < 0 ? [line.trim(), ""] : [line.slice(0, at).trim(), line.slice(at + 1).trim()];
  });
  const edits = { method: $("edit-method").value.trim(), target: $("edit-target").value.trim(), headers };
  if (!$("edit-body").disabled) {
    const text = $("edit-body").value;
    edits.body = $("edit-body").dataset.crlf ? text.replace(/\r?\n/g, "\r\n") : text;
  }
  return edits;
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", render);
  $("replay").addEventListener("click", () => replay({}));
  $("edit-replay").addEventListener("click", openEditor);
  $("edit-cancel").addEventListener("click", () => { $("edit-form").hidden = true; });
  $("edit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    replay(editsFromForm());
  });
  loadList();
  follow();
});
