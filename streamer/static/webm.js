// A MediaRecorder WebM with its duration written in.
//
// Chromium's MediaRecorder streams WebM without a Duration element (it cannot know the length while
// it records), so players show no length and cannot seek until they have read the whole file.
// withDuration() adds the Duration to the Segment's Info element: the file's head is parsed as EBML
// (element id, then size, each a variable-length integer), Info is rebuilt with Duration appended and
// an 8-byte size, and the rest of the file is kept as it is. The Segment is left at "unknown size",
// as MediaRecorder writes it, so nothing else moves.

const EBML = 0x1a45dfa3;
const SEGMENT = 0x18538067;
const INFO = 0x1549a966;
const TIMECODE_SCALE = 0x2ad7b1;
const DURATION = 0x4489;
const HEAD_BYTES = 64 * 1024; // Info comes within the first few hundred bytes

// A variable-length integer at `pos`: [value, length]; value null for "unknown" (all ones).
function vint(bytes, pos, keepMarker = false) {
  const first = bytes[pos];
  if (first === undefined || first === 0) throw new Error("not EBML");
  let length = 1;
  while (!(first & (0x80 >> (length - 1)))) length += 1;
  let value = keepMarker ? first : first & (0xff >> length);
  let allOnes = value === (0xff >> length);
  for (let i = 1; i < length; i++) {
    const b = bytes[pos + i];
    if (b === undefined) throw new Error("truncated EBML");
    value = value * 256 + b;
    allOnes = allOnes && b === 0xff;
  }
  return [allOnes && !keepMarker ? null : value, length];
}

// The element at `pos`: { id, start (of its data), size (null: unknown), end (of its data) }.
function element(bytes, pos) {
  const [id, idLength] = vint(bytes, pos, true);
  const [size, sizeLength] = vint(bytes, pos + idLength);
  const start = pos + idLength + sizeLength;
  return { id, pos, start, size, end: size === null ? bytes.length : start + size };
}

function uint(bytes, start, end) {
  let v = 0;
  for (let i = start; i < end; i++) v = v * 256 + bytes[i];
  return v;
}

// `blob` (a WebM from MediaRecorder) with a Duration of `durationMs`; the blob unchanged if its head
// is not the layout expected, or already has one.
export async function withDuration(blob, durationMs) {
  const head = new Uint8Array(await blob.slice(0, HEAD_BYTES).arrayBuffer());
  try {
    const ebml = element(head, 0);
    if (ebml.id !== EBML) return blob;
    const segment = element(head, ebml.end);
    if (segment.id !== SEGMENT) return blob;
    let pos = segment.start;
    let info = null;
    while (pos < head.length && !info) {
      const e = element(head, pos);
      if (e.size === null) return blob; // a cluster before Info: not MediaRecorder's layout
      if (e.id === INFO) info = e;
      pos = e.end;
    }
    if (!info || info.end > head.length) return blob;
    let scale = 1_000_000; // ns per timecode unit (the default)
    for (let p = info.start; p < info.end; ) {
      const e = element(head, p);
      if (e.id === DURATION) return blob;
      if (e.id === TIMECODE_SCALE) scale = uint(head, e.start, e.end);
      p = e.end;
    }
    const duration = new Uint8Array(11); // id 0x4489, size 8 (0x88), float64 big-endian
    duration.set([0x44, 0x89, 0x88]);
    new DataView(duration.buffer).setFloat64(3, (durationMs * 1e6) / scale);
    const size = info.end - info.start + duration.length;
    const header = new Uint8Array(12); // id 0x1549a966, then the size as an 8-byte vint
    header.set([0x15, 0x49, 0xa9, 0x66, 0x01]);
    for (let i = 0, v = size; i < 7; i++, v = Math.floor(v / 256)) header[11 - i] = v % 256;
    return new Blob(
      [head.slice(0, info.pos), header, head.slice(info.start, info.end), duration, blob.slice(info.end)],
      { type: blob.type },
    );
  } catch {
    return blob; // a recording without a length is still a recording
  }
}
