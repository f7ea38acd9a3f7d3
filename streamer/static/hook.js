// window.stylecast for tests and tools (loaded by app.js only with ?hook=1).
//
// It reads what the page does (app.js's state and events) and samples the pictures; the
// tests still click and drag the real controls. Nothing in the page depends on it.

import { events, framesDecoded, sendSourceInUse, state, ui } from "./app.js";

const hook = {
  state,
  lastAck: null,
  lastStats: null,
  lastError: null,
  lastSnapshot: null,
  acks: 0,
  statsLog: [], // the server's stats messages with the page's time t, newest last (bounded)
  renderedFrames: 0, // stylized frames presented (requestVideoFrameCallback)
  get rttMs() {
    return state.rttMs;
  },
  get bench() {
    return sendSourceInUse(); // the latency bench's measurements, with ?bench=1
  },
  framesDecoded, // async () -> inbound framesDecoded from getStats
  sample, // (which, w, h) -> mean RGB over a w x h grid of the picture
  compare, // () -> mean abs difference between the original and stylized pictures
};

events.addEventListener("ack", (e) => {
  hook.lastAck = e.detail;
  hook.acks += 1;
});
events.addEventListener("stats", (e) => {
  hook.lastStats = e.detail;
  hook.statsLog.push({ t: performance.now(), ...e.detail });
  if (hook.statsLog.length > 600) hook.statsLog.shift();
});
events.addEventListener("alert", (e) => {
  hook.lastError = e.detail;
});
events.addEventListener("snapshot", (e) => {
  hook.lastSnapshot = e.detail;
});

const v = ui.stylized;
if (v.requestVideoFrameCallback) {
  const tick = () => {
    hook.renderedFrames += 1;
    v.requestVideoFrameCallback(tick);
  };
  v.requestVideoFrameCallback(tick);
}

const work = document.createElement("canvas");

// Mean RGB of each cell of a w x h grid over the picture of one <video> ("original"|"stylized").
function sample(which = "stylized", w = 8, h = 6) {
  const video = which === "original" ? ui.original : ui.stylized;
  if (!video.videoWidth) return null;
  work.width = w;
  work.height = h;
  const ctx = work.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(video, 0, 0, w, h);
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

window.stylecast = hook;
