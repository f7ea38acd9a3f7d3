// stylecast page: camera -> WebRTC -> stylized video back, with a style mixer.
//
// Query options (all optional):
//   ?codec=vp8|h264   video codec put first in the offer (default: vp8)
//   ?res=320x240      initial processing resolution (or auto: the server picks the largest
//                     size it stylizes at the camera's frame rate)
//   ?bench=1          loads bench.js: the latency bench's stamped canvas is sent instead of the
//                     camera (glass-to-glass latency, see bench/e2e.py)
//   ?hook=1           loads hook.js: window.stylecast for tests and tools (state, last messages,
//                     frame counters, picture sampling); they still drive the real controls
//   ?session=ID       watch and steer a WHIP publisher's session (OBS, a script): its stylized
//                     video through WHEP (POST /whep/ID), the controls over PATCH /api/sessions/ID;
//                     ?session=latest: whichever session started last (a new one each time OBS
//                     starts streaming)
//   ?session=ID&view=1  the same video alone, filling the window, without a click, reconnecting
//                     by itself: for an OBS Browser Source
//
// Neither extra is loaded otherwise. They see the page through what this module exports:
// `state`, `events` (an EventTarget: "info", "ack", "stats", "pong", "alert", "connected",
// "snapshot", "recording", "styles", "job"), `ui`, `framesDecoded()`, `setSendSource()` and `sendSourceInUse()`.

import { withDuration } from "./webm.js";

const params = new URLSearchParams(location.search);
const CODEC = (params.get("codec") || "vp8").toLowerCase();
const SEND_INTERVAL_MS = 50; // slider messages are throttled to one per 50 ms
const PING_INTERVAL_MS = 1000;
const ICE_GATHER_TIMEOUT_MS = 3000;
const AUTO = "auto";
const CAMERA_SIZE = [640, 480]; // what the camera is opened at; Auto chooses among sizes up to this
const SESSION = params.get("session"); // watching a WHIP session instead of sending a camera
const CLEAN = SESSION !== null && params.get("view") === "1";
const LATEST = "latest";
const RETRY_MS = 3000; // the clean view tries again this often while there is nothing to show

const $ = (id) => document.getElementById(id);
export const ui = {
  status: $("status"),
  message: $("message"),
  stylized: $("stylized"),
  original: $("original"),
  placeholder: $("placeholder"),
  start: $("start"),
  stop: $("stop"),
  snapshot: $("snapshot"),
  record: $("record"),
  recordTime: $("record-time"),
  resolution: $("resolution"),
  strength: $("strength"),
  strengthValue: $("strength-value"),
  stroke: $("stroke"),
  strokeValue: $("stroke-value"),
  transition: $("transition"),
  presets: $("presets"),
  styles: $("styles"),
  fps: $("fps"),
  latency: $("latency"),
  serverFps: $("server-fps"),
  infer: $("infer"),
  backend: $("backend"),
  download: $("download"),
  learnOff: $("learn-off"),
  learnForm: $("learn-form"),
  learnDrop: $("learn-drop"),
  learnFile: $("learn-file"),
  learnFileText: $("learn-file-text"),
  learnName: $("learn-name"),
  learnGo: $("learn-go"),
  learnJob: $("learn-job"),
  learnPreview: $("learn-preview"),
  learnText: $("learn-text"),
  learnProgress: $("learn-progress"),
  learnCancel: $("learn-cancel"),
};

// ---------------------------------------------------------------- state and extension points

export const state = {
  info: null, // /api/info
  weights: [], // one 0..1 value per style, as the sliders show them
  strength: 1,
  stroke: 1,
  resolution: null,
  preset: null,
  connected: false,
  ended: false, // the server said it is shutting down or ending this session
  session: null, // the server's id for this connection
  rttMs: null, // round trip of the last data-channel ping
};

// What happens on the page, for extras that observe it (hook.js); nothing here depends on listeners.
export const events = new EventTarget();
const emit = (type, detail) => events.dispatchEvent(new CustomEvent(type, { detail }));

// Where the sent video comes from: the camera track, unless an extra (bench.js) supplies another.
// A source is { track(cameraVideo, [w, h]) -> Promise<MediaStreamTrack>, resize(w, h), stop(),
// latencyText() -> [text, title] | null }.
let sendSource = null;
export function setSendSource(source) {
  sendSource = source;
}
export function sendSourceInUse() {
  return sendSource;
}

let pc = null;
let dc = null;
let whepResource = null; // the Location of our WHEP viewer, to DELETE when we stop watching
let camera = null; // MediaStream from getUserMedia
let pingTimer = null;
let statsTimer = null;
let sendTimer = null;
let lastSendAt = 0;
let pending = null; // fields of the next throttled "set" message
let userTouchedSliders = false;

// ---------------------------------------------------------------- messages + status

function setStatus(text, kind = "") {
  ui.status.textContent = text;
  ui.status.dataset.state = kind;
}

let messageTimer = null;

// kind "error" stays until the next action; "info" fades after a few seconds.
function showMessage(text, kind = "error") {
  clearTimeout(messageTimer);
  ui.message.textContent = text;
  ui.message.dataset.kind = kind;
  ui.message.hidden = false;
  if (kind === "error") emit("alert", text);
  else messageTimer = setTimeout(clearMessage, 6000);
}

function clearMessage() {
  clearTimeout(messageTimer);
  ui.message.hidden = true;
  ui.message.textContent = "";
  delete ui.message.dataset.source;
}

function cameraErrorText(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return "Camera access was denied. Allow the camera for this site (the camera icon in the address bar), then press Start camera again.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
    return "No camera was found. Connect a camera, then press Start camera again.";
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return "The camera could not be started: another application may be using it. Close it and press Start camera again.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return "This browser does not allow camera access here. Open the page over https:// or on http://localhost.";
  }
  return `The camera could not be started (${name || "error"}: ${err && err.message}).`;
}

// ---------------------------------------------------------------- access token

// The token comes once in the URL (/?token=...), is kept for this tab in sessionStorage and
// taken out of the address bar (so it is not bookmarked or shared by accident); every request
// to the API carries it in a header.
const TOKEN_KEY = "stylecast.token";
(() => {
  const fromUrl = params.get("token");
  if (fromUrl === null) return;
  sessionStorage.setItem(TOKEN_KEY, fromUrl);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
})();

function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { ...(options.headers || {}), ...(token ? { "X-Stylecast-Token": token } : {}) };
  return fetch(path, { ...options, headers });
}

class TokenError extends Error {}

// A 401: the token is missing or wrong. Say so, forget it, and ask for one.
function askForToken() {
  const had = sessionStorage.getItem(TOKEN_KEY) !== null;
  sessionStorage.removeItem(TOKEN_KEY);
  const text = had
    ? "The access token is wrong. Enter the token the server printed, or open the link with ?token=... it printed."
    : "This server needs an access token. Enter the token the server printed, or open the link with ?token=... it printed.";
  const given = window.prompt(text);
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given.trim());
    return true;
  }
  throw new TokenError(had ? "The access token is wrong: reload the page with the link the server printed." : "This server needs an access token: open the link with ?token=... that the server printed.");
}

// ---------------------------------------------------------------- server info + controls

async function loadInfo() {
  let resp;
  for (;;) {
    try {
      resp = await api("/api/info", { cache: "no-store" });
    } catch (err) {
      throw new ServerError(`Cannot reach the stylecast server at ${location.origin}. Is it running? (${err.message})`);
    }
    if (resp.status !== 401) break;
    askForToken(); // throws if the user gives none
  }
  if (!resp.ok) throw new ServerError(`The server answered ${resp.status} for /api/info.`);
  const info = await resp.json();
  state.info = info;
  buildControls(info);
  if (info.backend) showBackend(info.backend.name);
  else ui.backend.textContent = "–";
  emit("info", info);
  return info;
}

class ServerError extends Error {}

// The readout's backend: its name and precision ("openvino-cpu · bf16"); why each, in the tooltip.
function showBackend(name) {
  const b = (state.info && state.info.backend) || {};
  ui.backend.textContent = b.precision && !name.endsWith(b.precision) ? `${name} · ${b.precision}` : name;
  ui.backend.title = [b.reason, b.precision_reason && `precision ${b.precision_reason}`].filter(Boolean).join("\n");
}

function buildControls(info) {
  // Resolutions
  ui.resolution.replaceChildren();
  const wanted = params.get("res") || info.default_resolution;
  for (const r of info.resolutions || []) {
    const opt = document.createElement("option");
    opt.value = r;
    opt.textContent = r === AUTO ? "Auto" : r.replace("x", " × ");
    ui.resolution.append(opt);
  }
  if ((info.resolutions || []).includes(wanted)) ui.resolution.value = wanted;
  state.resolution = ui.resolution.value || null;
  buildStyles(info);
  showStrength(state.strength);
  showStroke(state.stroke);
  showLearn(info.new_styles || {});
}

// Presets and one slider per style; rebuilt when the server swaps in a model with another style list.
function buildStyles(info) {
  // Presets
  ui.presets.replaceChildren();
  for (const p of info.presets || []) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = p.name;
    b.setAttribute("aria-pressed", "false");
    b.dataset.preset = p.name;
    b.addEventListener("click", () => choosePreset(p));
    ui.presets.append(b);
  }

  // One slider per style, with the thumbnail of its painting.
  const styles = info.styles || [];
  const first = (info.presets || [])[0];
  state.weights = styles.map((_, i) => (first && first.weights.length === styles.length ? first.weights[i] : i === 0 ? 1 : 0));
  ui.styles.replaceChildren();
  for (const s of styles) {
    const li = document.createElement("li");
    li.className = "style";
    const thumb = makeThumb(s);
    const box = document.createElement("div");
    const id = `style-${s.index}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    const name = document.createElement("span");
    name.textContent = s.name;
    const out = document.createElement("output");
    out.id = `${id}-value`;
    label.append(name, out);
    const input = document.createElement("input");
    input.type = "range";
    input.id = id;
    input.min = "0";
    input.max = "100";
    input.step = "1";
    input.dataset.index = String(s.index);
    input.setAttribute("aria-label", `${s.name} weight`);
    input.addEventListener("input", () => {
      userTouchedSliders = true;
      state.weights[s.index] = Number(input.value) / 100;
      out.textContent = `${input.value}%`;
      markPreset(null);
      if (state.weights.some((w) => w > 0)) queueSet({ weights: [...state.weights] });
      else showMessage("Give at least one style some weight: the picture keeps the last mix until then.", "info");
    });
    box.append(label, input);
    li.append(thumb, box);
    if (s.learned && info.new_styles && info.new_styles.enabled) {
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "×";
      del.title = `Delete ${s.name} (a style learned on this server)`;
      del.setAttribute("aria-label", `Delete ${s.name}`);
      del.addEventListener("click", () => deleteStyle(s));
      label.append(del);
    }
    ui.styles.append(li);
  }
  showWeights(state.weights);
}

function makeThumb(style) {
  const placeholder = () => {
    const d = document.createElement("div");
    d.className = "thumb";
    d.setAttribute("aria-hidden", "true");
    d.textContent = (style.name || "?").slice(0, 1).toUpperCase();
    return d;
  };
  if (!style.thumbnail) return placeholder();
  const img = document.createElement("img");
  img.className = "thumb";
  img.alt = `${style.name} painting`;
  // Fetched with the token header (an <img src> cannot carry one), shown from a blob URL.
  api(style.thumbnail)
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then((blob) => {
      img.src = URL.createObjectURL(blob);
    })
    .catch(() => img.replaceWith(placeholder()));
  img.addEventListener("error", () => img.replaceWith(placeholder()), { once: true });
  return img;
}

function showWeights(weights) {
  weights.forEach((w, i) => {
    const input = $(`style-${i}`);
    if (!input) return;
    const v = Math.round(Math.max(0, Math.min(1, w)) * 100);
    input.value = String(v);
    $(`style-${i}-value`).textContent = `${v}%`;
  });
}

function showStrength(s) {
  const v = Math.round(s * 100);
  ui.strength.value = String(v);
  ui.strengthValue.textContent = `${v}%`;
}

// The brush slider moves in quarter octaves: position p (-4..4) is stroke 2^(p/4), 0.5 to 2.
function showStroke(s) {
  ui.stroke.value = String(Math.round(Math.log2(s) * 4));
  ui.strokeValue.textContent = `${s.toFixed(2).replace(/\.?0+$/, "")}×`;
}

function markPreset(name) {
  state.preset = name;
  for (const b of ui.presets.querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(b.dataset.preset === name));
  }
}

function choosePreset(preset) {
  markPreset(preset.name);
  if (preset.weights && preset.weights.length === state.weights.length) {
    state.weights = [...preset.weights];
    showWeights(state.weights);
  }
  sendNow({ type: "preset", name: preset.name });
}

ui.strength.addEventListener("input", () => {
  state.strength = Number(ui.strength.value) / 100;
  ui.strengthValue.textContent = `${ui.strength.value}%`;
  queueSet({ strength: state.strength });
});

ui.stroke.addEventListener("input", () => {
  state.stroke = Math.round(2 ** (Number(ui.stroke.value) / 4) * 10000) / 10000;
  showStroke(state.stroke);
  queueSet({ stroke: state.stroke });
});

ui.resolution.addEventListener("change", () => {
  state.resolution = ui.resolution.value;
  showAutoSize(null);
  queueSet({ resolution: state.resolution });
  fitCamera();
});

// On Auto, the select says which size the server applies now: "Auto · 640 × 480".
function showAutoSize(size) {
  const opt = [...ui.resolution.options].find((o) => o.value === AUTO);
  if (!opt) return;
  const label = state.resolution === AUTO && size ? `Auto · ${size.replace("x", " × ")}` : "Auto";
  if (opt.textContent !== label) opt.textContent = label;
}

// ---------------------------------------------------------------- data channel

function sendNow(msg) {
  if (SESSION) {
    if (pc && state.session) sendOverHttp(msg);
  } else if (dc && dc.readyState === "open") dc.send(JSON.stringify(msg));
}

// Watching a WHIP session there is no data channel: the same messages go as PATCH requests, and
// their replies are handled as the channel's would be.
async function sendOverHttp(msg) {
  let resp;
  try {
    resp = await api(`/api/sessions/${encodeURIComponent(state.session)}`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(msg),
    });
  } catch {
    return; // the connection's own state handler says when the server is gone
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (resp.status === 404 && pc) {
    state.ended = true;
    showMessage(`Session ${state.session} has ended: its publisher stopped.`);
    stop();
    retryLater();
  } else if (resp.status === 400 && body) {
    onControlMessage({ data: JSON.stringify({ type: "error", message: body.error }) });
  } else if (resp.ok && body) {
    onControlMessage({ data: JSON.stringify(body) });
  } // 429: a message over the rate limit is dropped, as on the channel
}

// Throttle: merge fields, send at most one "set" per SEND_INTERVAL_MS, always send the last.
function queueSet(fields) {
  pending = { ...(pending || {}), ...fields };
  if (sendTimer) return;
  const wait = Math.max(0, lastSendAt + SEND_INTERVAL_MS - performance.now());
  sendTimer = setTimeout(flushSet, wait);
}

function flushSet() {
  sendTimer = null;
  if (!pending) return;
  const msg = { type: "set", ...pending, transition_ms: Number(ui.transition.value) };
  pending = null;
  lastSendAt = performance.now();
  sendNow(msg);
}

function onControlMessage(ev) {
  let msg;
  try {
    msg = JSON.parse(ev.data);
  } catch {
    return;
  }
  if (msg.type === "ack") {
    emit("ack", msg);
    const s = msg.state || {};
    // The server is the source of truth for presets; while the user drags, keep the sliders.
    if (s.preset && s.weights) {
      state.weights = [...s.weights];
      showWeights(state.weights);
      markPreset(s.preset);
    } else if (!userTouchedSliders && s.weights) {
      state.weights = [...s.weights];
      showWeights(state.weights);
    }
    if (typeof s.strength === "number" && document.activeElement !== ui.strength) {
      state.strength = s.strength;
      showStrength(s.strength);
    }
    if (typeof s.stroke === "number" && document.activeElement !== ui.stroke) {
      state.stroke = s.stroke;
      showStroke(s.stroke);
    }
    if (s.auto_resolution) showAutoSize(s.auto_resolution);
  } else if (msg.type === "stats") {
    emit("stats", msg);
    const f = (x) => (typeof x === "number" ? x.toFixed(1) : "–");
    ui.serverFps.textContent = `${f(msg.fps_in)} → ${f(msg.fps_out)}`;
    ui.serverFps.title = `frames in → out per second; ${msg.dropped ?? 0} dropped`;
    ui.infer.textContent = typeof msg.infer_ms === "number" ? `${msg.infer_ms.toFixed(1)} ms` : "–";
    if (msg.resolution) showAutoSize(msg.resolution); // the size actually sent
    if (msg.backend) showBackend(msg.backend);
    if (msg.error) {
      showMessage(`The server reports a problem: ${msg.error}`);
      ui.message.dataset.source = "stats";
    } else if (ui.message.dataset.source === "stats") {
      clearMessage();
    }
  } else if (msg.type === "pong") {
    state.rttMs = performance.now() - msg.t;
    emit("pong", state.rttMs);
    showLatency();
  } else if (msg.type === "styles") {
    // The server swapped in a model with another style list (a painting learned or deleted).
    state.info = { ...state.info, styles: msg.styles, presets: msg.presets };
    buildStyles(state.info);
    const s = msg.state || {};
    if (s.weights) {
      state.weights = [...s.weights];
      showWeights(state.weights);
    }
    markPreset(s.preset || null);
    emit("styles", msg);
    showMessage(`The styles changed: ${msg.change}.`, "info");
  } else if (msg.type === "shutdown" || msg.type === "bye") {
    // The server is going away (or ended this session): say so, and keep saying it when the connection drops.
    state.connected = false;
    state.ended = true;
    showMessage(`${msg.type === "shutdown" ? "The server is shutting down" : "The session ended"}: ${msg.message}. Press Start camera to reconnect later.`);
  } else if (msg.type === "error") {
    showMessage(`The server rejected a setting: ${msg.message}`, "info");
  }
}

// The readout's latency: what the send source measures (the bench's glass-to-glass), else the
// data channel's round trip (network and server queueing, without video coding).
function showLatency() {
  const measured = sendSource && sendSource.latencyText();
  if (measured) {
    [ui.latency.textContent, ui.latency.title] = measured;
  } else if (state.rttMs != null) {
    ui.latency.textContent = `${state.rttMs.toFixed(0)} ms rtt`;
    ui.latency.title = "round trip of a data-channel ping to the server";
  } else {
    ui.latency.textContent = "–";
  }
}

// ---------------------------------------------------------------- connect / disconnect

async function start() {
  clearMessage();
  ui.start.disabled = true;
  if (SESSION) return watch();
  setStatus("Starting camera…");
  try {
    if (!state.info) await loadInfo();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw cameraError(new TypeError("no mediaDevices"));
    try {
      camera = await navigator.mediaDevices.getUserMedia({
        video: { width: CAMERA_SIZE[0], height: CAMERA_SIZE[1], frameRate: 30 },
        audio: false,
      });
    } catch (err) {
      throw cameraError(err);
    }
    ui.original.srcObject = camera;
    await fitCamera();
    setStatus("Connecting…");
    await connect(sendSource ? await sendSource.track(ui.original, cameraSize()) : camera.getVideoTracks()[0]);
  } catch (err) {
    const text = err instanceof ServerError || err instanceof TokenError || err.cameraText ? err.message : `Could not start: ${err.message}`;
    showMessage(text);
    setStatus("Stopped", "error");
    teardown();
  }
}

function cameraError(err) {
  const e = new Error(cameraErrorText(err));
  e.cameraText = true;
  return e;
}

// The camera size for a resolution choice: on Auto, the size the camera was opened at (the
// server never picks a size above the camera's), else the chosen processing size.
function cameraSize() {
  if (!state.resolution || state.resolution === AUTO) return CAMERA_SIZE;
  return state.resolution.split("x").map(Number);
}

// Ask the camera for the processing resolution, so the upstream video is no larger than needed.
async function fitCamera() {
  if (!camera || !state.resolution) return;
  const [w, h] = cameraSize();
  const track = camera.getVideoTracks()[0];
  try {
    await track.applyConstraints({ width: { ideal: w }, height: { ideal: h }, frameRate: { ideal: 30 } });
  } catch {
    // Keep whatever the camera gives: the server scales to the chosen resolution anyway.
  }
  if (sendSource) sendSource.resize(w, h);
}

async function connect(track) {
  // The server's STUN/TURN list (none by default: host candidates, enough on a LAN or for a
  // server with a public address); a TURN relay lets a browser behind a strict NAT through.
  pc = new RTCPeerConnection({ iceServers: (state.info && state.info.ice_servers) || [] });
  dc = pc.createDataChannel("control"); // before the offer, so it is negotiated in it
  dc.onmessage = onControlMessage;
  state.ended = false;
  dc.onclose = () => {
    if (state.ended) {
      stop();
    } else if (state.connected) {
      showMessage("The server closed the session. Press Start camera to reconnect.");
      stop();
    }
  };
  dc.onopen = () => {
    // Send the page's settings once, so the server and the sliders agree.
    queueSet({ weights: [...state.weights], strength: state.strength, stroke: state.stroke, resolution: state.resolution });
    ping();
    pingTimer = setInterval(ping, PING_INTERVAL_MS);
  };

  const stream = new MediaStream([track]);
  const tx = pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
  preferCodec(tx);
  pc.ontrack = playStylized;
  pc.onconnectionstatechange = () => {
    const s = pc && pc.connectionState;
    if (s === "connected") {
      videoLive("Live");
      tuneSender(tx.sender);
    } else if (s === "disconnected") {
      setStatus("Connection interrupted…"); // may recover by itself; "failed" follows if not
    } else if (s === "failed" || s === "closed") {
      if (state.ended) {
        /* the server said why already */
      } else if (state.connected) showMessage("The connection to the server was lost. Press Start camera to reconnect.");
      else if (s === "failed") showMessage("The video connection to the server failed (no network path between the browser and the server).");
      stop();
    }
  };

  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc);

  let resp;
  try {
    resp = await api("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
  } catch (err) {
    throw new ServerError(`Cannot reach the stylecast server at ${location.origin}. Is it running? (${err.message})`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  const why = (body && body.error) || resp.statusText || `HTTP ${resp.status}`;
  if (resp.status === 401) throw new TokenError("The access token is wrong: reload the page with the link the server printed.");
  if (resp.status === 503 || resp.status === 429) throw new ServerError(`The server is busy: ${why}. Try again in a moment.`);
  if (!resp.ok) throw new ServerError(`The server refused the connection: ${why}`);
  await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
  state.session = body.session;
  emit("connected", body.session);
  startStatsLoop();
  ui.stop.disabled = false;
}

// The stylized track arrives (from our own peer connection or a WHEP one): play it.
function playStylized(ev) {
  ui.stylized.srcObject = ev.streams[0] || new MediaStream([ev.track]);
  try {
    ev.receiver.jitterBufferTarget = 0; // lowest latency playout
  } catch {
    /* not supported */
  }
}

// The connection is up and the video flows: say so, and enable what needs the video.
function videoLive(status) {
  state.connected = true;
  setStatus(status, "live");
  ui.placeholder.hidden = true;
  ui.stop.disabled = false;
  ui.snapshot.disabled = false;
  ui.record.disabled = false;
}

// ?session=ID: receive that session's stylized video through WHEP (a receive-only offer, all
// candidates in it); the controls go over HTTP (sendOverHttp).
async function watch() {
  setStatus("Connecting…");
  try {
    if (!state.info) await loadInfo();
    pc = new RTCPeerConnection({ iceServers: (state.info && state.info.ice_servers) || [] });
    state.ended = false;
    const tx = pc.addTransceiver("video", { direction: "recvonly" });
    preferCodec(tx);
    pc.ontrack = playStylized;
    pc.onconnectionstatechange = () => {
      const s = pc && pc.connectionState;
      if (s === "connected") {
        videoLive("Watching");
        sendNow({ type: "set" }); // an empty set: its ack is the session's current mix
        ping();
        pingTimer = setInterval(() => {
          ping();
          sendNow({ type: "stats" }); // no data channel pushes them to a watcher: ask
        }, PING_INTERVAL_MS);
      } else if (s === "disconnected") {
        setStatus("Connection interrupted…");
      } else if (s === "failed" || s === "closed") {
        if (!state.ended) showMessage(state.connected ? `Session ${state.session} stopped sending video.` : "The video connection to the server failed (no network path between the browser and the server).");
        stop();
        retryLater();
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    let resp;
    try {
      resp = await api(SESSION === LATEST ? "/whep" : `/whep/${encodeURIComponent(SESSION)}`, {
        method: "POST",
        headers: { "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
    } catch (err) {
      throw new ServerError(`Cannot reach the stylecast server at ${location.origin}. Is it running? (${err.message})`);
    }
    const text = await resp.text();
    let why = text;
    try {
      why = JSON.parse(text).error || text;
    } catch {
      /* plain text */
    }
    if (resp.status === 401) throw new TokenError("The access token is wrong: reload the page with the link the server printed.");
    if (resp.status === 404) throw new ServerError(`There is no session to watch: ${why}. Is its publisher (OBS, a WHIP client) streaming?`);
    if (resp.status === 409 || resp.status === 503 || resp.status === 429) throw new ServerError(`Cannot watch yet: ${why}`);
    if (!resp.ok) throw new ServerError(`The server refused to play session ${SESSION}: ${why}`);
    whepResource = resp.headers.get("Location"); // /whep/{session}/{viewer}
    state.session = decodeURIComponent(whepResource.split("/")[2]);
    await pc.setRemoteDescription({ type: "answer", sdp: text });
    emit("connected", state.session);
    startStatsLoop();
    ui.stop.disabled = false;
  } catch (err) {
    showMessage(err instanceof ServerError || err instanceof TokenError ? err.message : `Could not watch: ${err.message}`);
    setStatus("Stopped", "error");
    teardown();
    if (!(err instanceof TokenError)) retryLater();
  }
}

// The clean view has no one to press Watch: it tries again until there is a stream to show.
let retryTimer = null;
function retryLater() {
  if (!CLEAN || retryTimer) return;
  retryTimer = setTimeout(() => {
    retryTimer = null;
    if (!pc) start();
  }, RETRY_MS);
}

function preferCodec(tx) {
  if (!RTCRtpReceiver.getCapabilities || !tx.setCodecPreferences) return;
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
  const mime = CODEC === "h264" ? "video/h264" : "video/vp8";
  const first = codecs.filter((c) => c.mimeType.toLowerCase() === mime);
  const rest = codecs.filter((c) => c.mimeType.toLowerCase() !== mime);
  if (first.length) tx.setCodecPreferences([...first, ...rest]);
}

async function tuneSender(sender) {
  try {
    const p = sender.getParameters();
    // Keep the chosen resolution: the server never scales up, so a resolution Chromium
    // lowered while its bandwidth estimate ramps up (tens of seconds on "maintain-framerate")
    // would silently override the user's choice. Under CPU load the frame rate gives instead.
    p.degradationPreference = "maintain-resolution";
    if (p.encodings && p.encodings[0]) p.encodings[0].maxFramerate = 30;
    await sender.setParameters(p);
  } catch {
    /* older browsers */
  }
}

function iceGatheringDone(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (conn.iceGatheringState === "complete") {
        conn.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    conn.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ICE_GATHER_TIMEOUT_MS); // send what we have
  });
}

function ping() {
  sendNow({ type: "ping", t: performance.now() });
}

function startStatsLoop() {
  let last = null;
  let lastFrameAt = performance.now();
  statsTimer = setInterval(async () => {
    const now = performance.now();
    const n = await framesDecoded();
    if (last && n != null) {
      const fps = ((n - last.n) * 1000) / (now - last.t);
      ui.fps.textContent = fps.toFixed(1);
    }
    if (n != null && (!last || n !== last.n)) {
      lastFrameAt = now;
      if (ui.message.dataset.source === "watchdog") clearMessage();
    } else if (state.connected && now - lastFrameAt > 5000 && ui.message.hidden) {
      showMessage("Connected, but no stylized video is arriving from the server. Check the server's log.");
      ui.message.dataset.source = "watchdog";
    }
    if (n != null) last = { n, t: now };
    if (sendSource) showLatency();
  }, 1000);
}

// Inbound video frames decoded so far (getStats), or null before a connection.
export async function framesDecoded() {
  if (!pc) return null;
  const report = await pc.getStats();
  let n = null;
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") n = (n || 0) + (r.framesDecoded || 0);
  });
  return n;
}

function teardown() {
  if (recorder) recorder.stop(); // what was recorded is saved
  if (whepResource) {
    api(whepResource, { method: "DELETE", keepalive: true }).catch(() => {});
    whepResource = null;
  }
  clearInterval(pingTimer);
  clearInterval(statsTimer);
  clearTimeout(sendTimer);
  pingTimer = statsTimer = sendTimer = null;
  pending = null;
  state.connected = false;
  if (dc) dc.onmessage = dc.onclose = dc.onopen = null;
  if (pc) {
    pc.onconnectionstatechange = null;
    pc.close();
  }
  pc = dc = null;
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
  if (sendSource) sendSource.stop();
  ui.original.srcObject = null;
  ui.stylized.srcObject = null;
  ui.placeholder.hidden = false;
  state.connected = false;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  ui.snapshot.disabled = true;
  ui.record.disabled = true;
  ui.fps.textContent = "–";
}

function stop() {
  teardown();
  setStatus("Stopped");
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
window.addEventListener("pagehide", teardown);

// ---------------------------------------------------------------- snapshot

ui.snapshot.addEventListener("click", () => {
  const v = ui.stylized;
  if (!v.videoWidth) return;
  const c = document.createElement("canvas");
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  c.getContext("2d").drawImage(v, 0, 0);
  c.toBlob((blob) => {
    if (!blob) return;
    download(blob, "png");
    emit("snapshot", { width: c.width, height: c.height, bytes: blob.size });
  }, "image/png");
});

function download(blob, ext) {
  const url = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  ui.download.href = url;
  ui.download.download = `stylecast-${stamp}.${ext}`;
  ui.download.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------------------------------------------------------------- record

// The stylized video as it plays here, into a WebM file (MediaRecorder), downloaded on Stop
// recording or when the connection ends. python -m streamer.video does files offline.
let recorder = null;
let recordTimer = null;

function recordType() {
  const types = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"];
  return types.find((t) => window.MediaRecorder && MediaRecorder.isTypeSupported(t)) || null;
}

function startRecording() {
  const stream = ui.stylized.srcObject;
  const type = recordType();
  if (!stream || !type) {
    showMessage(type ? "There is no video to record yet." : "This browser cannot record video (no WebM MediaRecorder).", "info");
    return;
  }
  const chunks = [];
  const began = performance.now();
  recorder = new MediaRecorder(stream, { mimeType: type, videoBitsPerSecond: 4_000_000 });
  recorder.ondataavailable = (ev) => {
    if (ev.data && ev.data.size) chunks.push(ev.data);
  };
  recorder.onstop = async () => {
    clearInterval(recordTimer);
    recordTimer = null;
    recorder = null;
    ui.record.textContent = "Record";
    ui.record.classList.remove("recording");
    ui.record.setAttribute("aria-pressed", "false");
    ui.recordTime.hidden = true;
    const seconds = (performance.now() - began) / 1000;
    if (!chunks.length) return;
    const blob = await withDuration(new Blob(chunks, { type: "video/webm" }), seconds * 1000);
    download(blob, "webm");
    emit("recording", { seconds, bytes: blob.size, type });
  };
  recorder.start(1000); // a chunk a second: a long recording is not one huge buffer at the end
  ui.record.textContent = "Stop recording";
  ui.record.classList.add("recording");
  ui.record.setAttribute("aria-pressed", "true");
  ui.recordTime.hidden = false;
  const tick = () => {
    const s = Math.floor((performance.now() - began) / 1000);
    ui.recordTime.textContent = `● ${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  };
  tick();
  recordTimer = setInterval(tick, 500);
}

ui.record.addEventListener("click", () => {
  if (recorder) recorder.stop();
  else startRecording();
});

// ---------------------------------------------------------------- add a painting

const JOB_KEY = "stylecast-job"; // the job this tab started, so a reload keeps following it
// The server gives a job's cancel token to the page that asked for the job, and to no one else.
const cancelKey = (id) => `stylecast-cancel-${id}`;
const JOB_POLL_MS = 1000;
let jobTimer = null;
let previewUrl = null;
const dropText = ui.learnFileText.cloneNode(true); // "Drop a painting here, ...", to put back after an upload

function showLearn(ns) {
  ui.learnForm.hidden = !ns.enabled;
  ui.learnOff.hidden = !!ns.enabled;
  ui.learnOff.textContent = ns.enabled ? "" : `${ns.reason || "Adding paintings is off on this server"}.`;
  const mine = sessionStorage.getItem(JOB_KEY);
  if (ns.enabled && mine && !jobTimer && (ns.jobs || []).some((j) => j.id === mine)) followJob(mine);
}

function styleNameFrom(file) {
  const stem = file.name.replace(/\.[^.]+$/, "").replace(/[_-]+/g, " ").replace(/[<>&"'`\\/]/g, "").trim();
  // at most 40 characters, cut at a word
  return stem.length <= 40 ? stem : stem.slice(0, 41).replace(/\s+\S*$/, "");
}

function chooseFile(file) {
  if (!file) return;
  ui.learnFileText.textContent = `${file.name} (${(file.size / 2 ** 20).toFixed(1)} MB)`;
  if (!ui.learnName.value.trim()) ui.learnName.value = styleNameFrom(file);
}

ui.learnFile.addEventListener("change", () => chooseFile(ui.learnFile.files[0]));
for (const type of ["dragenter", "dragover"]) {
  ui.learnDrop.addEventListener(type, (ev) => {
    ev.preventDefault();
    ui.learnDrop.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) ui.learnDrop.addEventListener(type, () => ui.learnDrop.classList.remove("over"));
ui.learnDrop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  if (!ev.dataTransfer || !ev.dataTransfer.files.length) return;
  ui.learnFile.files = ev.dataTransfer.files;
  chooseFile(ev.dataTransfer.files[0]);
});

ui.learnForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearMessage();
  const file = ui.learnFile.files[0];
  const name = ui.learnName.value.trim();
  const max = (state.info && state.info.new_styles && state.info.new_styles.max_bytes) || 20 * 2 ** 20;
  // The server checks all of this again (and more); these are the ones worth saying before the upload.
  if (!file) return showMessage("Choose a painting first (JPEG, PNG or WebP).");
  if (!file.size) return showMessage(`${file.name} is empty (0 bytes).`);
  if (file.size > max) return showMessage(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; at most ${max / 2 ** 20} MB.`);
  if (!name) return showMessage("Give the painting a name.");
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("name", name);
  ui.learnGo.disabled = true;
  ui.learnGo.textContent = "Uploading…";
  try {
    const resp = await api("/api/styles", { method: "POST", body });
    const job = await resp.json().catch(() => ({}));
    if (resp.status !== 202) return showMessage(`The painting was not accepted: ${job.error || `HTTP ${resp.status}`}`);
    sessionStorage.setItem(JOB_KEY, job.id);
    if (job.cancel_token) sessionStorage.setItem(cancelKey(job.id), job.cancel_token);
    ui.learnForm.reset();
    ui.learnFileText.replaceChildren(...dropText.cloneNode(true).childNodes);
    showJob(job);
    followJob(job.id);
  } catch (err) {
    showMessage(`Could not upload the painting: ${err.message}`);
  } finally {
    ui.learnGo.disabled = false;
    ui.learnGo.textContent = "Learn it";
  }
});

async function deleteStyle(style) {
  if (!window.confirm(`Delete “${style.name}” for everyone on this server?`)) return;
  const resp = await api(`/api/styles/${style.index}`, { method: "DELETE" });
  const job = await resp.json().catch(() => ({}));
  if (resp.status !== 202) return showMessage(`Could not delete ${style.name}: ${job.error || `HTTP ${resp.status}`}`);
  if (job.cancel_token) sessionStorage.setItem(cancelKey(job.id), job.cancel_token);
  showJob(job);
  followJob(job.id);
}

function duration(s) {
  if (s == null) return "";
  const m = Math.floor(s / 60);
  const r = Math.round(s % 60);
  return m ? `${m} min ${r} s` : `${r} s`;
}

function followJob(id) {
  clearInterval(jobTimer);
  jobTimer = setInterval(async () => {
    let job;
    try {
      const resp = await api(`/api/styles/jobs/${id}`, { cache: "no-store" });
      if (resp.status === 404) throw new Error("the server forgot the job (restarted?)");
      job = await resp.json();
    } catch (err) {
      clearInterval(jobTimer);
      jobTimer = null;
      ui.learnText.textContent = `Lost track of the painting: ${err.message}`;
      return;
    }
    showJob(job);
    if (!["queued", "learning", "exporting", "publishing"].includes(job.state)) {
      clearInterval(jobTimer);
      jobTimer = null;
      sessionStorage.removeItem(JOB_KEY);
      sessionStorage.removeItem(cancelKey(job.id));
      if (job.state === "done" && !state.connected) loadInfo(); // no channel to hear the news on
      if (job.state === "failed") showMessage(`Learning “${job.name}” failed: ${job.error}`);
    }
  }, JOB_POLL_MS);
}

function showJob(job) {
  emit("job", job);
  ui.learnJob.hidden = false;
  const verb = job.kind === "delete" ? "Deleting" : "Learning";
  const texts = {
    queued: job.queue_position ? `Waiting: ${job.queue_position} painting(s) ahead of “${job.name}”.` : `“${job.name}” is next in line.`,
    learning: job.steps
      ? `${verb} “${job.name}”: step ${job.step} of ${job.steps}${job.eta_s != null ? `, about ${duration(job.eta_s)} left` : ""}.`
      : `${verb} “${job.name}”: starting…`,
    exporting: `Checking the new model and publishing “${job.name}”…`,
    publishing: `Swapping the new model in…`,
    done: job.kind === "delete" ? `“${job.name}” was deleted.` : `“${job.name}” is ready${job.elapsed_s ? ` (${duration(job.elapsed_s)})` : ""}: it is a slider now, for every session.`,
    failed: `Learning “${job.name}” failed.`,
    cancelled: `“${job.name}” was cancelled.`,
  };
  ui.learnText.textContent = texts[job.state] || job.state;
  ui.learnProgress.value = job.steps ? job.step / job.steps : job.state === "done" ? 1 : 0;
  const cancelToken = sessionStorage.getItem(cancelKey(job.id));
  ui.learnCancel.hidden = !cancelToken || !["queued", "learning"].includes(job.state);
  ui.learnCancel.onclick = async () => {
    const resp = await api(`/api/styles/jobs/${job.id}`, { method: "DELETE", headers: { "X-Cancel-Token": cancelToken || "" } });
    const body = await resp.json().catch(() => ({}));
    if (resp.ok) showJob(body);
    else showMessage(`Could not cancel: ${body.error || `HTTP ${resp.status}`}`);
  };
  if (job.preview && job.preview !== previewUrl) {
    previewUrl = job.preview;
    api(job.preview)
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((blob) => {
        const old = ui.learnPreview.src;
        ui.learnPreview.src = URL.createObjectURL(blob);
        ui.learnPreview.hidden = false;
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      })
      .catch(() => {});
  } else if (!job.preview && job.state === "queued") {
    ui.learnPreview.hidden = true;
  }
}

// ---------------------------------------------------------------- boot

// The extras are loaded only when asked for, before the server info (so they see all of it).
async function boot() {
  if (params.get("hook") === "1") await import("./hook.js");
  if (params.get("bench") === "1") (await import("./bench.js")).install();
  if (SESSION) {
    document.body.classList.add("watching");
    if (CLEAN) document.body.classList.add("clean");
    ui.start.textContent = "Watch";
    const which = SESSION === LATEST ? "the newest session" : `session ${SESSION}`;
    ui.placeholder.querySelector("p").textContent = `Press Watch to see ${which}, stylized, and steer its styles.`;
  }
  await loadInfo();
  if (CLEAN) await start(); // a Browser Source has no one to press Watch
}

boot().catch((err) => {
  showMessage(err.message);
  setStatus(err instanceof TokenError ? "Access token needed" : "Server unreachable", "error");
});
