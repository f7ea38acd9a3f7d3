// stylecast page: camera -> WebRTC -> stylized video back, with a style mixer.
//
// Query options (all optional):
//   ?codec=vp8|h264   video codec put first in the offer (default: vp8)
//   ?res=320x240      initial processing resolution (or auto: the server picks the largest
//                     size it stylizes at the camera's frame rate)
//   ?bench=1          latency bench: the page draws the camera into a canvas, stamps
//                     performance.now() as a block barcode in the top-left corner, sends the
//                     canvas, and reads the stamp back from the stylized video
//                     (glass-to-glass latency, see bench/e2e.py)
//
// A small test hook lives on window.stylecast (state, last messages, frame counters,
// picture sampling); the tests still drive the real controls.

const params = new URLSearchParams(location.search);
const CODEC = (params.get("codec") || "vp8").toLowerCase();
const BENCH = params.get("bench") === "1";
const SEND_INTERVAL_MS = 50; // slider messages are throttled to one per 50 ms
const PING_INTERVAL_MS = 1000;
const ICE_GATHER_TIMEOUT_MS = 3000;
const AUTO = "auto";
const CAMERA_SIZE = [640, 480]; // what the camera is opened at; Auto chooses among sizes up to this

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  message: $("message"),
  stylized: $("stylized"),
  original: $("original"),
  placeholder: $("placeholder"),
  start: $("start"),
  stop: $("stop"),
  snapshot: $("snapshot"),
  resolution: $("resolution"),
  strength: $("strength"),
  strengthValue: $("strength-value"),
  transition: $("transition"),
  presets: $("presets"),
  styles: $("styles"),
  fps: $("fps"),
  latency: $("latency"),
  serverFps: $("server-fps"),
  infer: $("infer"),
  backend: $("backend"),
  work: $("work"),
  download: $("download"),
};

// ---------------------------------------------------------------- state + test hook

const state = {
  info: null, // /api/info
  weights: [], // one 0..1 value per style, as the sliders show them
  strength: 1,
  resolution: null,
  preset: null,
  connected: false,
};

const hook = {
  state,
  lastAck: null,
  lastStats: null,
  lastError: null,
  acks: 0,
  statsLog: [], // the server's stats messages, newest last (bounded)
  renderedFrames: 0, // stylized frames presented (requestVideoFrameCallback)
  rttMs: null,
  lastSnapshot: null,
  framesDecoded, // async () -> inbound framesDecoded from getStats
  sample, // (which, w, h) -> mean RGB over a w x h grid of the picture
  compare, // () -> mean abs difference between the original and stylized pictures
  bench: null,
};
window.stylecast = hook;

let pc = null;
let dc = null;
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
  if (kind === "error") hook.lastError = text;
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

// ---------------------------------------------------------------- server info + controls

async function loadInfo() {
  let resp;
  try {
    resp = await fetch("/api/info", { cache: "no-store" });
  } catch (err) {
    throw new ServerError(`Cannot reach the stylecast server at ${location.origin}. Is it running? (${err.message})`);
  }
  if (!resp.ok) throw new ServerError(`The server answered ${resp.status} for /api/info.`);
  const info = await resp.json();
  state.info = info;
  buildControls(info);
  ui.backend.textContent = info.backend ? info.backend.name : "–";
  if (info.backend && info.backend.reason) ui.backend.title = info.backend.reason;
  return info;
}

class ServerError extends Error {}

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
    ui.styles.append(li);
  }
  showWeights(state.weights);
  showStrength(state.strength);
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
  img.src = style.thumbnail;
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
  if (dc && dc.readyState === "open") dc.send(JSON.stringify(msg));
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
    hook.lastAck = msg;
    hook.acks += 1;
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
    if (s.auto_resolution) showAutoSize(s.auto_resolution);
  } else if (msg.type === "stats") {
    hook.lastStats = msg;
    hook.statsLog.push({ t: performance.now(), ...msg });
    if (hook.statsLog.length > 600) hook.statsLog.shift();
    const f = (x) => (typeof x === "number" ? x.toFixed(1) : "–");
    ui.serverFps.textContent = `${f(msg.fps_in)} → ${f(msg.fps_out)}`;
    ui.serverFps.title = `frames in → out per second; ${msg.dropped ?? 0} dropped`;
    ui.infer.textContent = typeof msg.infer_ms === "number" ? `${msg.infer_ms.toFixed(1)} ms` : "–";
    if (msg.resolution) showAutoSize(msg.resolution); // the size actually sent
    if (msg.backend) ui.backend.textContent = msg.backend;
    if (msg.error) {
      showMessage(`The server reports a problem: ${msg.error}`);
      ui.message.dataset.source = "stats";
    } else if (ui.message.dataset.source === "stats") {
      clearMessage();
    }
  } else if (msg.type === "pong") {
    hook.rttMs = performance.now() - msg.t;
    showLatency();
  } else if (msg.type === "error") {
    showMessage(`The server rejected a setting: ${msg.message}`, "info");
  }
}

// The readout's latency: glass-to-glass in bench mode (measured from the stamp), else the
// data channel's round trip (network and server queueing, without video coding).
function showLatency() {
  if (hook.bench && hook.bench.latencies.length) {
    const l = hook.bench.latencies.slice(-30).sort((a, b) => a - b);
    ui.latency.textContent = `${Math.round(l[l.length >> 1])} ms g2g`;
    ui.latency.title = "glass to glass: stamp drawn into the sent frame, read back from the stylized one";
  } else if (hook.rttMs != null) {
    ui.latency.textContent = `${hook.rttMs.toFixed(0)} ms rtt`;
    ui.latency.title = "round trip of a data-channel ping to the server";
  } else {
    ui.latency.textContent = "–";
  }
}

// ---------------------------------------------------------------- connect / disconnect

async function start() {
  clearMessage();
  ui.start.disabled = true;
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
    await connect(BENCH ? await benchSendTrack() : camera.getVideoTracks()[0]);
  } catch (err) {
    const text = err instanceof ServerError || err.cameraText ? err.message : `Could not start: ${err.message}`;
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
  if (BENCH && hook.bench) hook.bench.resize(w, h);
}

async function connect(track) {
  pc = new RTCPeerConnection({ iceServers: [] });
  dc = pc.createDataChannel("control"); // before the offer, so it is negotiated in it
  dc.onmessage = onControlMessage;
  dc.onclose = () => {
    if (state.connected) {
      showMessage("The server closed the session. Press Start camera to reconnect.");
      stop();
    }
  };
  dc.onopen = () => {
    // Send the page's settings once, so the server and the sliders agree.
    queueSet({ weights: [...state.weights], strength: state.strength, resolution: state.resolution });
    ping();
    pingTimer = setInterval(ping, PING_INTERVAL_MS);
  };

  const stream = new MediaStream([track]);
  const tx = pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
  preferCodec(tx);
  pc.ontrack = (ev) => {
    ui.stylized.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    try {
      ev.receiver.jitterBufferTarget = 0; // lowest latency playout
    } catch {
      /* not supported */
    }
  };
  pc.onconnectionstatechange = () => {
    const s = pc && pc.connectionState;
    if (s === "connected") {
      state.connected = true;
      setStatus("Live", "live");
      ui.placeholder.hidden = true;
      ui.stop.disabled = false;
      ui.snapshot.disabled = false;
      tuneSender(tx.sender);
    } else if (s === "disconnected") {
      setStatus("Connection interrupted…"); // may recover by itself; "failed" follows if not
    } else if (s === "failed" || s === "closed") {
      if (state.connected) showMessage("The connection to the server was lost. Press Start camera to reconnect.");
      else if (s === "failed") showMessage("The video connection to the server failed (no network path between the browser and the server).");
      stop();
    }
  };

  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc);

  let resp;
  try {
    resp = await fetch("/offer", {
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
  if (resp.status === 503) throw new ServerError(`The server is busy: ${why}. Try again in a moment.`);
  if (!resp.ok) throw new ServerError(`The server refused the connection: ${why}`);
  await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
  hook.session = body.session;
  startStatsLoop();
  ui.stop.disabled = false;
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
    if (BENCH) showLatency();
  }, 1000);
}

async function framesDecoded() {
  if (!pc) return null;
  const report = await pc.getStats();
  let n = null;
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") n = (n || 0) + (r.framesDecoded || 0);
  });
  return n;
}

function teardown() {
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
  if (hook.bench) hook.bench.stopSending();
  ui.original.srcObject = null;
  ui.stylized.srcObject = null;
  ui.placeholder.hidden = false;
  state.connected = false;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  ui.snapshot.disabled = true;
  ui.fps.textContent = "–";
}

function stop() {
  teardown();
  setStatus("Stopped");
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
window.addEventListener("pagehide", teardown);

// ---------------------------------------------------------------- frames, snapshot, sampling

function countFrames() {
  const v = ui.stylized;
  if (!v.requestVideoFrameCallback) return;
  const tick = (now, meta) => {
    hook.renderedFrames += 1;
    if (hook.bench) hook.bench.onStylizedFrame(now, meta);
    v.requestVideoFrameCallback(tick);
  };
  v.requestVideoFrameCallback(tick);
}
countFrames();

ui.snapshot.addEventListener("click", () => {
  const v = ui.stylized;
  if (!v.videoWidth) return;
  const c = document.createElement("canvas");
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  c.getContext("2d").drawImage(v, 0, 0);
  c.toBlob((blob) => {
    if (!blob) return;
    const url = URL.createObjectURL(blob);
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    ui.download.href = url;
    ui.download.download = `stylecast-${stamp}.png`;
    ui.download.click();
    hook.lastSnapshot = { width: c.width, height: c.height, bytes: blob.size };
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }, "image/png");
});

// Mean RGB of each cell of a w x h grid over the picture of one <video> ("original"|"stylized").
function sample(which = "stylized", w = 8, h = 6) {
  const v = which === "original" ? ui.original : ui.stylized;
  if (!v.videoWidth) return null;
  const c = ui.work;
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(v, 0, 0, w, h);
  const d = ctx.getImageData(0, 0, w, h).data;
  const out = [];
  for (let i = 0; i < d.length; i += 4) out.push(d[i], d[i + 1], d[i + 2]);
  return out;
}

// Mean absolute difference (0..255) between the original and the stylized pictures.
function compare() {
  const a = sample("original", 32, 24);
  const b = sample("stylized", 32, 24);
  if (!a || !b) return null;
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i] - b[i]);
  return s / a.length;
}

// ---------------------------------------------------------------- bench mode (glass-to-glass latency)

// The stamp: 16 bits of round(performance.now()) mod 65536 plus a 4-bit checksum, drawn as a
// grid of large black/white cells in the top-left corner with white/black reference cells, so
// a bit is read as "closer to the white reference or to the black one" (stylization changes
// colours, and may even swap light and dark).
const GRID_COLS = 6;
const GRID_ROWS = 4;
const GRID_W = 0.6; // fraction of the picture width the barcode covers
const GRID_H = 0.4;
const REF_WHITE = [0, 22];
const REF_BLACK = [1, 23];

function stampBits(value) {
  const v = value & 0xffff;
  const check = ((v & 0xf) + ((v >> 4) & 0xf) + ((v >> 8) & 0xf) + ((v >> 12) & 0xf)) & 0xf;
  const bits = [];
  for (let i = 0; i < 16; i++) bits.push((v >> i) & 1);
  for (let i = 0; i < 4; i++) bits.push((check >> i) & 1);
  return bits; // 20 bits in cells 2..21
}

function drawStamp(ctx, W, H, value) {
  const bits = stampBits(value);
  const cw = (W * GRID_W) / GRID_COLS;
  const ch = (H * GRID_H) / GRID_ROWS;
  for (let cell = 0; cell < GRID_COLS * GRID_ROWS; cell++) {
    let white;
    if (REF_WHITE.includes(cell)) white = true;
    else if (REF_BLACK.includes(cell)) white = false;
    else white = bits[cell - 2] === 1;
    ctx.fillStyle = white ? "#fff" : "#000";
    const x = (cell % GRID_COLS) * cw;
    const y = Math.floor(cell / GRID_COLS) * ch;
    ctx.fillRect(Math.floor(x), Math.floor(y), Math.ceil(cw), Math.ceil(ch));
  }
}

function readStamp(ctx, W, H) {
  const cw = (W * GRID_W) / GRID_COLS;
  const ch = (H * GRID_H) / GRID_ROWS;
  const data = ctx.getImageData(0, 0, Math.ceil(W * GRID_W), Math.ceil(H * GRID_H));
  const stride = data.width;
  const mean = (cell) => {
    // Average the middle half of the cell (edges blur in the codec and the network).
    const x0 = Math.floor((cell % GRID_COLS) * cw + cw * 0.25);
    const y0 = Math.floor(Math.floor(cell / GRID_COLS) * ch + ch * 0.25);
    const x1 = Math.max(x0 + 1, Math.floor(x0 + cw * 0.5));
    const y1 = Math.max(y0 + 1, Math.floor(y0 + ch * 0.5));
    const m = [0, 0, 0];
    let n = 0;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const i = (y * stride + x) * 4;
        m[0] += data.data[i];
        m[1] += data.data[i + 1];
        m[2] += data.data[i + 2];
        n++;
      }
    }
    return m.map((c) => c / n);
  };
  const avg = (cells) => {
    const ms = cells.map(mean);
    return [0, 1, 2].map((k) => ms.reduce((s, m) => s + m[k], 0) / ms.length);
  };
  const white = avg(REF_WHITE);
  const black = avg(REF_BLACK);
  const dist = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  if (dist(white, black) < 30) return null; // no readable contrast
  const bits = [];
  for (let cell = 2; cell < 22; cell++) {
    const m = mean(cell);
    bits.push(dist(m, white) < dist(m, black) ? 1 : 0);
  }
  let v = 0;
  for (let i = 0; i < 16; i++) v |= bits[i] << i;
  let check = 0;
  for (let i = 0; i < 4; i++) check |= bits[16 + i] << i;
  const expect = ((v & 0xf) + ((v >> 4) & 0xf) + ((v >> 8) & 0xf) + ((v >> 12) & 0xf)) & 0xf;
  return check === expect ? v : null;
}

async function benchSendTrack() {
  const send = document.createElement("canvas");
  const read = document.createElement("canvas");
  const sctx = send.getContext("2d", { alpha: false });
  const rctx = read.getContext("2d", { willReadFrequently: true, alpha: false });
  const [w0, h0] = cameraSize();
  send.width = w0;
  send.height = h0;
  const out = send.captureStream(0);
  const track = out.getVideoTracks()[0];
  let running = true;

  const bench = {
    latencies: [], // ms, glass-to-glass per read frame
    frameTimes: [], // performance.now() of each presented stylized frame
    sent: 0,
    unreadable: 0,
    resize(w, h) {
      send.width = w;
      send.height = h;
    },
    reset() {
      this.latencies = [];
      this.frameTimes = [];
      this.sent = 0;
      this.unreadable = 0;
      this.resetAt = performance.now();
    },
    stopSending() {
      running = false;
    },
    onStylizedFrame(now, meta) {
      const shown = meta && meta.expectedDisplayTime ? meta.expectedDisplayTime : now;
      this.frameTimes.push(shown);
      const v = ui.stylized;
      if (!v.videoWidth) return;
      // Read at a fixed small size: cheap getImageData, independent of the stream size.
      read.width = 192;
      read.height = 144;
      rctx.drawImage(v, 0, 0, read.width, read.height);
      const stamp = readStamp(rctx, read.width, read.height);
      if (stamp == null) {
        this.unreadable += 1;
        return;
      }
      const lat = (((Math.round(shown) & 0xffff) - stamp) + 0x10000) & 0xffff;
      this.latencies.push(lat);
    },
  };
  bench.reset();
  hook.bench = bench;

  // Draw every camera frame into the canvas, stamp it, and push it as one video frame.
  const cam = ui.original;
  const draw = () => {
    if (!running) return;
    if (cam.videoWidth) {
      sctx.drawImage(cam, 0, 0, send.width, send.height);
      drawStamp(sctx, send.width, send.height, Math.round(performance.now()));
      track.requestFrame();
      bench.sent += 1;
    }
    cam.requestVideoFrameCallback(draw);
  };
  await cam.play().catch(() => {});
  cam.requestVideoFrameCallback(draw);
  return track;
}

// ---------------------------------------------------------------- boot

loadInfo().catch((err) => {
  showMessage(err.message);
  setStatus("Server unreachable", "error");
});
