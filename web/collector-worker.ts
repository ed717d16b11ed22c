// The collector: the whole comparison runs here, off the page's main thread (which may not
// block: the core's remote-TLB-flush wait and the vCPU handshakes use Atomics.wait). This
// worker is the `dirtlog compare` process of the CLI: it calls the same compare() from the
// built package, which creates each mode's VM in this worker and starts one more Web Worker
// per vCPU (dist/vcpu-worker.js). Progress, the live samples (batched, ~20 a second) and the
// final result are posted to the page.
import { version } from "../package.json";
import { type CompareSample, compare } from "../dist/compare.js";
import { capabilities } from "../dist/index.js";
import type { FromCollector, SampleBatch, ToCollector } from "./protocol.js";

const post = (m: FromCollector, transfer: Transferable[] = []) => postMessage(m, { transfer });

// A worker of a cross-origin isolated page is isolated too; check here as well, since this
// is where the VMs are created.
post({ type: "ready", capabilities: capabilities() });

/** Smallest step of performance.now() seen in back-to-back reads, ns (browsers coarsen it). */
function timerResolutionNs(): number {
  let min = Number.POSITIVE_INFINITY;
  for (let k = 0; k < 200; k++) {
    const a = performance.now();
    let b = performance.now();
    while (b === a) b = performance.now();
    min = Math.min(min, b - a);
  }
  return Math.round(min * 1e6);
}

const FLUSH_MS = 50;
let batch: SampleBatch | undefined;
let batchHasTick = false;
let lastFlush = 0;
/** The mode's last ring harvest (the entries it collected and reset), and the mode. */
let lastRingHarvest: SampleBatch["ringHarvest"];
let ringMode = -1;

function flush(): void {
  if (!batch) return;
  const b = batch;
  batch = undefined;
  batchHasTick = false;
  lastFlush = performance.now();
  const transfer: Transferable[] = [];
  if (b.ring) transfer.push(b.ring.flags.buffer);
  if (b.bitmap) transfer.push(b.bitmap.pagesPerWord.buffer, b.bitmap.summaryTaken.buffer);
  post(b, transfer);
}

function onSample(s: CompareSample): void {
  if (batch && batch.index !== s.index) flush();
  if (s.index !== ringMode) {
    ringMode = s.index;
    lastRingHarvest = undefined;
  }
  batch ??= { type: "samples", mode: s.mode, index: s.index, points: [] };
  if (s.point) batch.points.push({ point: s.point, vcpuStores: s.vcpuStores });
  if (s.ring) {
    if (s.ring.harvested && s.counts) {
      lastRingHarvest = { tMs: s.tMs, counts: s.counts, from: s.ring.harvested.from, to: s.ring.harvested.to };
    }
    // the view shows the batch's last reading between harvests (the ring filling, with what
    // the harvest before it freed), else its last harvest (a ring just emptied)
    if (s.kind === "tick" || !batchHasTick) {
      batch.ring = s.ring;
      batch.ringHarvest = lastRingHarvest;
      batchHasTick ||= s.kind === "tick";
    }
  }
  if (s.bitmap && s.counts) {
    const prev = batch.bitmap;
    if (!prev) {
      batch.bitmap = { ...s.bitmap, harvests: 1, counts: { ...s.counts } };
    } else {
      // several harvests in one batch: every word any of them took stays lit
      for (let i = 0; i < prev.pagesPerWord.length; i++) {
        prev.pagesPerWord[i] = Math.min(255, prev.pagesPerWord[i] + s.bitmap.pagesPerWord[i]);
      }
      for (let i = 0; i < prev.summaryTaken.length; i++) prev.summaryTaken[i] |= s.bitmap.summaryTaken[i];
      for (const k of Object.keys(prev.counts) as Array<keyof typeof prev.counts>) prev.counts[k] += s.counts[k];
      prev.harvests++;
    }
  }
  if (performance.now() - lastFlush >= FLUSH_MS) flush();
}

let running = false;

self.onmessage = async (e: MessageEvent<ToCollector>) => {
  if (e.data.type !== "run" || running) return;
  running = true;
  const t0 = performance.now();
  let lastProgress = 0;
  let lastPhase = "";
  try {
    const result = await compare(e.data.scenario, {
      environment: {
        version,
        engine: "browser (Web Workers)",
        timer: "performance.now()",
        timerResolutionNs: timerResolutionNs(),
        core: "release",
      },
      onSample,
      onProgress: (p) => {
        const key = `${p.index}:${p.phase}`;
        const now = performance.now();
        if (key === lastPhase && now - lastProgress < 100) return;
        if (p.phase === "check" || p.phase === "done") flush();
        lastPhase = key;
        lastProgress = now;
        post({ type: "progress", progress: p });
      },
    });
    flush();
    post({ type: "result", result, wallMs: performance.now() - t0 });
  } catch (err) {
    flush();
    const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    post({ type: "error", message });
  } finally {
    running = false;
  }
};
