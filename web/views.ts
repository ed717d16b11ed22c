// The two mechanisms, drawn from what the engine reported (nothing here is simulated):
//  - the ring view: vCPU 0's dirty ring as a circle of its entries, coloured by the flags read
//    from the shared memory (DIRTY: pushed by the vCPU, not yet collected; RESET: collected;
//    free), the entries the last harvest collected and KVM_RESET_DIRTY_RINGS re-armed, the
//    kernel's dirty_index and reset_index, and the soft limit (a push that brings the ring's
//    use to it exits to userspace: KVM_EXIT_DIRTY_RING_FULL);
//  - the bitmap view: the slot's dirty bitmap, one cell per u64 word (64 pages), lit by how
//    many pages the last harvest reported from it, with the summary words above.
import type { BitmapSnapshot, RingSnapshot } from "../dist/compare.js";

export const COLORS = {
  free: "#e6e9ee",
  dirty: "#e8590c",
  reset: "#1c7ed6",
  harvested: "#74c0fc",
  soft: "#c92a2a",
  text: "#1d2430",
  muted: "#5d6776",
  word: "#2b8a3e",
  wordEmpty: "#eef1f4",
};

/** A canvas sized for its CSS box at the device pixel ratio; returns its 2D context in CSS pixels. */
function prepare(canvas: HTMLCanvasElement): { ctx: CanvasRenderingContext2D; w: number; h: number } {
  const dpr = globalThis.devicePixelRatio || 1;
  const w = canvas.clientWidth || Number(canvas.getAttribute("width")) || 360;
  const h = canvas.clientHeight || Number(canvas.getAttribute("height")) || 360;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  if (!ctx) throw new Error("no 2D canvas context");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

export function drawPlaceholder(canvas: HTMLCanvasElement, text: string): void {
  const { ctx, w, h } = prepare(canvas);
  ctx.fillStyle = COLORS.muted;
  ctx.font = "13px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(text, w / 2, h / 2);
  delete canvas.dataset.drawn;
}

/**
 * Each entry's state: 0 free, 1 DIRTY, 2 RESET (flags as read), 3 collected by the last
 * harvest and since freed by the reset (those still free). A reading shows no RESET entry
 * in practice: the collector thread takes it between harvests, and a harvest marks entries
 * RESET and has KVM_RESET_DIRTY_RINGS free them in one go; state 3 is what it did.
 */
function entryStates(r: RingSnapshot, harvested: { from: number; to: number } | undefined): Uint8Array {
  const n = r.entries;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const f = r.flags[i];
    out[i] = f & 2 ? 2 : f & 1 ? 1 : 0;
  }
  if (harvested) {
    const count = Math.min(n, (harvested.to - harvested.from) >>> 0);
    for (let k = 0; k < count; k++) {
      const i = (harvested.from + k) & (n - 1);
      if (out[i] === 0) out[i] = 3;
    }
  }
  return out;
}

const STATE_COLOR = [COLORS.free, COLORS.dirty, COLORS.reset, COLORS.harvested];

/**
 * The ring as a circle: entry 0 at the top, clockwise. Arcs of consecutive entries in one
 * state are drawn as one. `harvested`: the entries the last harvest collected and reset.
 */
export function drawRing(
  canvas: HTMLCanvasElement,
  r: RingSnapshot,
  harvested: { from: number; to: number } | undefined,
  mode: string,
): void {
  const { ctx, w, h } = prepare(canvas);
  const n = r.entries;
  const cx = w / 2;
  const cy = h / 2;
  const outer = Math.min(w, h) / 2 - 42;
  const inner = outer * 0.7;
  const angle = (i: number) => -Math.PI / 2 + (2 * Math.PI * i) / n;
  const states = entryStates(r, harvested);
  const arc = (from: number, to: number, color: string) => {
    ctx.beginPath();
    ctx.arc(cx, cy, outer, angle(from), angle(to));
    ctx.arc(cx, cy, inner, angle(to), angle(from), true);
    ctx.closePath();
    ctx.fillStyle = color;
    ctx.fill();
  };
  arc(0, n, COLORS.free);
  let start = 0;
  for (let i = 1; i <= n; i++) {
    if (i === n || states[i] !== states[start]) {
      // at least a hair's width, so a single entry of 65536 still shows
      if (states[start] !== 0) arc(start, Math.max(i, start + n / 720), STATE_COLOR[states[start]]);
      start = i;
    }
  }
  // the kernel's indices and the soft limit, as ticks across the ring
  // (reset_index labelled inside the ring, dirty_index and the soft limit outside it)
  const tick = (index: number, color: string, label: string, from: number, to: number, lineWidth: number) => {
    const a = angle(index & (n - 1));
    const at = (radius: number): [number, number] => [cx + Math.cos(a) * radius, cy + Math.sin(a) * radius];
    ctx.strokeStyle = color;
    ctx.lineWidth = lineWidth;
    ctx.beginPath();
    ctx.moveTo(...at(from));
    ctx.lineTo(...at(to));
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.font = "11px system-ui, sans-serif";
    const outward = to > from;
    const right = Math.cos(a) >= 0 === outward;
    const width = ctx.measureText(label).width;
    let [x, y] = at(outward ? to + 3 : to - 3);
    x = right ? Math.min(x, w - width - 2) : Math.max(x, width + 2);
    // the three ticks can meet (an empty ring: dirty_index = reset_index, the soft limit just
    // before them): move a label down until it overlaps none drawn before it
    const box = () => ({ x0: right ? x : x - width, x1: right ? x + width : x, y0: y - 7, y1: y + 7 });
    while (labels.some((b) => b.x0 < box().x1 && box().x0 < b.x1 && b.y0 < box().y1 && box().y0 < b.y1)) y += 13;
    labels.push(box());
    ctx.textAlign = right ? "left" : "right";
    ctx.textBaseline = "middle";
    ctx.fillText(label, x, y);
  };
  const labels: { x0: number; x1: number; y0: number; y1: number }[] = [];
  tick(r.resetIndex, COLORS.reset, "reset_index", outer + 2, inner - 8, 1.5);
  tick(r.dirtyIndex, COLORS.dirty, "dirty_index", inner - 2, outer + 10, 1.5);
  tick((r.resetIndex + r.softLimit) >>> 0, COLORS.soft, `soft limit (${r.softLimit})`, inner - 2, outer + 24, 2.5);

  const used = (r.dirtyIndex - r.resetIndex) >>> 0;
  ctx.fillStyle = COLORS.text;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.font = "600 14px system-ui, sans-serif";
  ctx.fillText(`${mode}, vCPU 0`, cx, cy - 16);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(`${used} of ${n} entries in use`, cx, cy + 2);
  ctx.fillStyle = used >= r.softLimit ? COLORS.soft : COLORS.muted;
  ctx.fillText(used >= r.softLimit ? "soft-full: vCPU exits" : `${r.softLimit - used} until soft-full`, cx, cy + 18);
  canvas.dataset.drawn = "1";
}

/**
 * The dirty bitmap: one cell per u64 word, row by row, shaded by the pages the harvest
 * reported from it (1..64); a strip of summary words (one per 64 words) on top.
 */
export function drawBitmap(canvas: HTMLCanvasElement, b: BitmapSnapshot, mode: string): void {
  const { ctx, w, h } = prepare(canvas);
  const top = 44;
  const area = { w: w - 8, h: h - top - 4 };
  const cell = Math.max(1, Math.floor(Math.sqrt((area.w * area.h) / b.words)));
  const cols = Math.max(1, Math.floor(area.w / cell));
  const rows = Math.ceil(b.words / cols);
  const x0 = Math.floor((w - cols * cell) / 2);
  const gap = cell >= 5 ? 1 : 0;
  ctx.fillStyle = COLORS.text;
  ctx.font = "600 14px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.fillText(`${mode}: ${b.words} bitmap words (${b.pages} pages)`, x0, 0);
  // summary strip: one cell per summary word
  const sw = b.summaryTaken.length;
  const scell = Math.max(1, Math.min(14, Math.floor((cols * cell) / sw)));
  for (let i = 0; i < sw; i++) {
    ctx.fillStyle = b.summaryTaken[i] ? COLORS.word : COLORS.wordEmpty;
    ctx.fillRect(x0 + i * scell, 20, Math.max(1, scell - (scell >= 5 ? 1 : 0)), 14);
  }
  for (let i = 0; i < b.words; i++) {
    const x = x0 + (i % cols) * cell;
    const y = top + Math.floor(i / cols) * cell;
    if (y > h) break;
    const p = b.pagesPerWord[i];
    if (p === 0) {
      ctx.fillStyle = COLORS.wordEmpty;
    } else {
      // 1 page: light; 64 (the whole word): dark
      const t = Math.min(1, Math.log2(1 + p) / 6);
      ctx.fillStyle = `hsl(135, 55%, ${Math.round(78 - t * 50)}%)`;
    }
    ctx.fillRect(x, y, cell - gap, cell - gap);
  }
  canvas.dataset.drawn = rows > 0 ? "1" : "";
}
