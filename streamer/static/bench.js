// Latency bench (loaded by app.js only with ?bench=1; see bench/e2e.py).
//
// Instead of the camera track, the page sends a canvas: each camera frame is drawn into it
// and stamped with performance.now() (ms, 16 bits, plus a 4-bit checksum) as a grid of large
// black/white cells in the top-left corner, with white/black reference cells. On every
// stylized frame presented, the stamp is read back (each cell compared with the references,
// so colour changes from the style do not matter) and expectedDisplayTime - stamp is one
// glass-to-glass latency. Frames whose stamp cannot be read are counted, not guessed.

import { setSendSource, ui } from "./app.js";

const GRID_COLS = 6;
const GRID_ROWS = 4;
const GRID_W = 0.6; // fraction of the picture width the barcode covers
const GRID_H = 0.4;
const REF_WHITE = [0, 22];
const REF_BLACK = [1, 23];

function checksum(v) {
  return ((v & 0xf) + ((v >> 4) & 0xf) + ((v >> 8) & 0xf) + ((v >> 12) & 0xf)) & 0xf;
}

function stampBits(value) {
  const v = value & 0xffff;
  const check = checksum(v);
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
  return check === checksum(v) ? v : null;
}

// The send source app.js uses in bench mode, with the measurements on it.
function createBench() {
  const send = document.createElement("canvas");
  const read = document.createElement("canvas");
  const sctx = send.getContext("2d", { alpha: false });
  const rctx = read.getContext("2d", { willReadFrequently: true, alpha: false });
  let running = false;

  const bench = {
    latencies: [], // ms, glass-to-glass per read frame
    frameTimes: [], // performance.now() of each presented stylized frame
    sent: 0,
    unreadable: 0,
    async track(cam, [w, h]) {
      send.width = w;
      send.height = h;
      const out = send.captureStream(0);
      const track = out.getVideoTracks()[0];
      running = true;
      // Draw every camera frame into the canvas, stamp it, and push it as one video frame.
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
    },
    resize(w, h) {
      send.width = w;
      send.height = h;
    },
    stop() {
      running = false;
    },
    reset() {
      this.latencies = [];
      this.frameTimes = [];
      this.sent = 0;
      this.unreadable = 0;
    },
    latencyText() {
      if (!this.latencies.length) return null;
      const l = this.latencies.slice(-30).sort((a, b) => a - b);
      return [
        `${Math.round(l[l.length >> 1])} ms g2g`,
        "glass to glass: stamp drawn into the sent frame, read back from the stylized one",
      ];
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
      this.latencies.push((((Math.round(shown) & 0xffff) - stamp) + 0x10000) & 0xffff);
    },
  };
  return bench;
}

export function install() {
  const bench = createBench();
  const v = ui.stylized;
  if (v.requestVideoFrameCallback) {
    const tick = (now, meta) => {
      bench.onStylizedFrame(now, meta);
      v.requestVideoFrameCallback(tick);
    };
    v.requestVideoFrameCallback(tick);
  }
  setSendSource(bench);
  return bench;
}
