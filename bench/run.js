// Classic KVM_GET_DIRTY_LOG: the WASM core against the real kernel's times on this
// machine (../shared/anchors/real-kvm.md), against writing a 1 TiB slot's bitmap once, and
// against the same algorithm in plain JavaScript (bench/js-get-dirty-log.js). One process,
// one tinybench run, so every ratio printed is a same-run ratio. Lower times are better.
//
//   node bench/run.js [--time ms] [--warmup-time ms]      (after `npm run build`)
//
// Each iteration dirties its pages with vcpu.writeStrided (fast faults on pages that are
// mapped and write-protected) in `beforeEach`, outside the timed region; only the GET is
// timed. Every returned bitmap is checked in `afterEach` (also outside the timed region).
import { Bench, hrtimeNowTimestampProvider } from "tinybench";
import { KVM_MEM_LOG_DIRTY_PAGES, createVm } from "../dist/index.js";
import {
  checkStridedBits,
  cliOptions,
  fmt,
  GIB,
  GPA,
  hostEnvironment,
  loadAverage,
  MIB,
  mdTable,
  PAGE,
  printEnvironment,
  startClock,
  targetLines,
  targetsMd,
  textTable,
  tinybenchTiming,
  writeResults,
} from "./common.js";
import { coreLayout, createJsGetDirtyLog } from "./js-get-dirty-log.js";

const option = cliOptions("node bench/run.js [--time ms (default 1000)] [--warmup-time ms (default 25)]");
const TIME = option("--time", 1000);
const WARMUP_TIME = option("--warmup-time", 25);

const TIB_GPA = 2 ** 41;
// ../shared/anchors/real-kvm.md, "Harvest times", classic GET medians (µs)
const KERNEL_US = { "1G-1": 151, "1G-10": 1215, "1G-100": 11775, "8G-1": 2168 };
const TARGET_KERNEL_FRACTION = 0.25;
const TARGET_WASM_VS_JS = 3;
const TARGET_TIB_VS_FILL = 1.5;

const { log, seconds } = startClock("bench");

// ---------------------------------------------------------------- environment
const env = {
  ...hostEnvironment(),
  sharedArrayBuffer: typeof SharedArrayBuffer === "function",
  ...tinybenchTiming(),
  loadAverageAtStart: loadAverage(),
  config: { timeMs: TIME, warmupTimeMs: WARMUP_TIME, warmupIterations: 10, minIterations: 16 },
};
if (env.loadAverageAtStart[0] > 0.5) {
  console.log(
    `note: the machine is busy (1-minute load average ${env.loadAverageAtStart[0]} on ${env.cores} cores); p99 values will be inflated`,
  );
}
printEnvironment(env, (v) => (typeof v === "object" ? JSON.stringify(v) : v));

// ---------------------------------------------------------------- bitmap checks
/** The bitmap of an npages slot has exactly the bits 0, k, 2k, … below npages. */
function checkStrided(bm, npages, k, what) {
  if (bm.length !== Math.ceil(npages / 64) * 8) throw new Error(`${what}: bitmap length ${bm.length}`);
  checkStridedBits(bm, k, Math.ceil(npages / k), what);
}

// ---------------------------------------------------------------- VMs and warm-up
const layout = coreLayout();

/** A VM with one dirty-logged slot, every page mapped (written once) and re-protected. */
async function mappedSlot(label, gpa, bytes, backed, options) {
  const vm = await createVm(options);
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: gpa, memorySize: bytes, backed });
  const vcpu = vm.createVcpu(0);
  const npages = bytes / PAGE;
  const t0 = performance.now();
  if (vcpu.writeStrided(gpa, PAGE, npages, 1) !== npages) throw new Error(`${label}: warm-up write stopped`);
  const t1 = performance.now();
  checkStrided(vm.getDirtyLog(0), npages, 1, `${label} warm-up GET`);
  log(
    `${label}: warm-up wrote ${npages} pages in ${(t1 - t0).toFixed(0)} ms, first GET ${(performance.now() - t1).toFixed(1)} ms`,
  );
  return { vm, vcpu, gpa, npages };
}

log("setting up: 1 GiB backed slot (first touch of backed memory is slow here), 8 GiB unbacked, 1 TiB unbacked");
const g1 = await mappedSlot("1 GiB backed", GPA, GIB, true);
const g8 = await mappedSlot("8 GiB unbacked", GPA, 8 * GIB, false, {
  maxMemoryBytes: 256 * MIB,
  mmuPoolBytes: 32 * MIB,
});
const tib = await createVm({ maxMemoryBytes: 512 * MIB, mmuPoolBytes: 1 * MIB });
tib.setUserMemoryRegion({
  slot: 0,
  flags: KVM_MEM_LOG_DIRTY_PAGES,
  guestPhysAddr: TIB_GPA,
  memorySize: 2 ** 40,
  backed: false,
});
const TIB_BITMAP = 2 ** 40 / PAGE / 8;
const jsGet = createJsGetDirtyLog(g1.vm, layout);

// ---------------------------------------------------------------- JS = WASM check
/** Copies of what a GET changes in g1's VM: the page-table pool and the slot's metadata. */
function snapshot(vm) {
  const dv = new DataView(vm.memory.buffer);
  const u8 = new Uint8Array(vm.memory.buffer);
  const pool = dv.getUint32(vm.addr + layout.VM_POOL_BASE, true);
  const poolPages = dv.getUint32(vm.addr + layout.VM_POOL_PAGES, true);
  const slot = dv.getUint32(vm.addr + layout.VM_SLOTS, true); // slot 0 of address space 0
  const meta = dv.getUint32(slot + layout.SLOT_META, true);
  const metaBytes = Number(vm.raw.memslot_meta_bytes(BigInt(g1.npages)));
  return {
    pool: Buffer.from(u8.slice(pool, pool + poolPages * PAGE)),
    meta: Buffer.from(u8.slice(meta, meta + metaBytes)),
    lock: dv.getUint32(vm.addr + layout.VM_MMU_LOCK, true),
    flushes: dv.getBigUint64(vm.addr + layout.VM_TLB_FLUSHES, true),
  };
}
function verifyJsMatchesWasm() {
  const { vm, vcpu, gpa, npages } = g1;
  const checks = [];
  for (const k of [10, 1, 7, 64, 100]) {
    const n = Math.ceil(npages / k);
    vcpu.writeStrided(gpa, k * PAGE, n, 3);
    const f0 = snapshot(vm).flushes;
    const wasm = vm.getDirtyLog(0);
    const afterWasm = snapshot(vm);
    vcpu.writeStrided(gpa, k * PAGE, n, 3);
    const js = jsGet(0);
    const afterJs = snapshot(vm);
    const same = {
      bitmap: Buffer.compare(Buffer.from(wasm), Buffer.from(js)) === 0,
      sptes: afterWasm.pool.equals(afterJs.pool),
      metadata: afterWasm.meta.equals(afterJs.meta),
      lockReleased: afterWasm.lock === 0 && afterJs.lock === 0,
      oneFlushEach: afterWasm.flushes === f0 + 1n && afterJs.flushes === f0 + 2n,
    };
    checkStrided(js, npages, k, `JS GET k=${k}`);
    checkStrided(wasm, npages, k, `WASM GET k=${k}`);
    const ok = Object.values(same).every(Boolean);
    checks.push({ strideK: k, dirtyPages: n, ...same, ok });
    if (!ok) throw new Error(`JS GET differs from WASM GET at k=${k}: ${JSON.stringify(same)}`);
  }
  // the re-protection really happened: a page written before a GET faults again after it
  const fast = g1.vcpu.stats.fastFaults;
  vcpu.writeGuest(gpa, 9n);
  if (g1.vcpu.stats.fastFaults !== fast + 1n) throw new Error("page not re-protected by the JS GET");
  jsGet(0);
  return checks;
}
const verification = verifyJsMatchesWasm();
log(
  `JS GET = WASM GET (bitmap, SPTEs, slot metadata, lock, TLB flush) at k = ${verification.map((c) => c.strideK).join(", ")}`,
);

// ---------------------------------------------------------------- tasks
const bench = new Bench({
  name: "classic KVM_GET_DIRTY_LOG",
  time: TIME,
  iterations: 16,
  warmupTime: WARMUP_TIME,
  warmupIterations: 10,
  timestampProvider: hrtimeNowTimestampProvider,
  throws: true,
});
const cases = []; // metadata per task, in table order
let result = null; // every task's result lands here and is checked in afterEach
let sink = 0;
let round = 0;

function getCase(id, label, s, k, get, impl) {
  const n = Math.ceil(s.npages / k);
  cases.push({ id, label, impl, dirtyPages: n, kernelUs: KERNEL_US[id.replace(/^js-/, "")] });
  bench.add(
    label,
    () => {
      result = get();
    },
    {
      beforeEach() {
        if (s.vcpu.writeStrided(s.gpa, k * PAGE, n, ++round) !== n) throw new Error(`${label}: writes stopped`);
      },
      afterEach() {
        checkStrided(result, s.npages, k, label);
        result = null;
      },
    },
  );
}

getCase("1G-1", "WASM GET 1 GiB 1 %", g1, 100, () => g1.vm.getDirtyLog(0), "wasm");
getCase("1G-10", "WASM GET 1 GiB 10 %", g1, 10, () => g1.vm.getDirtyLog(0), "wasm");
getCase("js-1G-10", "JS GET 1 GiB 10 %", g1, 10, () => jsGet(0), "js");
getCase("1G-100", "WASM GET 1 GiB 100 %", g1, 1, () => g1.vm.getDirtyLog(0), "wasm");
getCase("js-1G-100", "JS GET 1 GiB 100 %", g1, 1, () => jsGet(0), "js");
getCase("8G-1", "WASM GET 8 GiB 1 % (unbacked)", g8, 100, () => g8.vm.getDirtyLog(0), "wasm");

// 1 TiB slot, never written: the summary lets GET skip it; the host still returns 32 MiB.
let tibChecks = 0;
function checkEmptyTib(bm, full) {
  if (bm.length !== TIB_BITMAP) throw new Error(`1 TiB GET: bitmap length ${bm.length}`);
  const w = new Uint32Array(bm.buffer, bm.byteOffset, bm.length / 4);
  if (full) {
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) throw new Error(`1 TiB GET: word ${i} is not zero`);
  } else {
    for (let j = 0; j < 16; j++) sink |= w[(Math.random() * w.length) | 0];
    if (sink !== 0) throw new Error("1 TiB GET: a sampled word is not zero");
  }
}
cases.push({ id: "tib", label: "WASM GET 1 TiB empty (unbacked)", impl: "wasm", dirtyPages: 0 });
bench.add(
  "WASM GET 1 TiB empty (unbacked)",
  () => {
    result = tib.getDirtyLog(0);
  },
  {
    afterEach() {
      // every 64th result is scanned whole, the others by 16 random words (a full scan costs
      // ~100× the GET and would make this task dominate the run)
      checkEmptyTib(result, tibChecks++ % 64 === 0);
      result = null;
    },
  },
);
const fillBuf = new Uint8Array(TIB_BITMAP);
cases.push({ id: "fill", label: "Uint8Array(32 MiB).fill(0), preallocated", impl: "js", dirtyPages: 0 });
bench.add(
  "Uint8Array(32 MiB).fill(0), preallocated",
  () => {
    fillBuf.fill(0);
  },
  {
    afterEach() {
      sink |= fillBuf[(Math.random() * fillBuf.length) | 0];
    },
  },
);
// informational: the GET's result is a fresh calloc'ed buffer whose zero pages the OS maps
// lazily; this row adds the first read of each of its 4 KiB pages.
cases.push({
  id: "tib-touch",
  label: "WASM GET 1 TiB empty + read 1 byte/4 KiB of result",
  impl: "wasm",
  dirtyPages: 0,
});
bench.add(
  "WASM GET 1 TiB empty + read 1 byte/4 KiB of result",
  () => {
    const bm = tib.getDirtyLog(0);
    let x = 0;
    for (let i = 0; i < bm.length; i += PAGE) x |= bm[i];
    sink |= x;
    result = bm;
  },
  {
    afterEach() {
      checkEmptyTib(result, false);
      result = null;
    },
  },
);

bench.addEventListener("warning", (e) => log(`timer warning for ${e.task?.name}: ${e.reason ?? e.error ?? ""}`));
bench.addEventListener("cycle", (e) => {
  const r = e.task.result;
  if (r.latency)
    log(`${e.task.name}: p50 ${(r.latency.p50 * 1000).toFixed(1)} µs over ${r.latency.samplesCount} samples`);
});
log(`running ${bench.tasks.length} tasks, ${TIME} ms each (+ setup outside the timed region)`);
bench.runSync();
if (sink !== 0) throw new Error("a consumed value was not zero");

// ---------------------------------------------------------------- report
const us = (ms) => ms * 1000;
const rows = cases.map((c) => {
  const task = bench.getTask(c.label);
  const r = task.result;
  if (!r.latency) throw new Error(`${c.label}: ${r.state} ${r.error ?? ""}`);
  const p50 = us(r.latency.p50);
  const row = {
    id: c.id,
    task: c.label,
    impl: c.impl,
    dirtyPages: c.dirtyPages,
    samples: r.latency.samplesCount,
    p50Us: p50,
    p99Us: us(r.latency.p99),
    meanUs: us(r.latency.mean),
    minUs: us(r.latency.min),
    maxUs: us(r.latency.max),
    madUs: us(r.latency.mad),
    rmePct: r.latency.rme,
    detectedResolutionNs: task.detectedResolution === undefined ? null : task.detectedResolution * 1e6,
  };
  if (c.dirtyPages > 0) row.nsPerDirtyPage = (p50 * 1000) / c.dirtyPages;
  if (c.kernelUs) {
    row.kernelP50Us = c.kernelUs;
    row.fractionOfKernel = p50 / c.kernelUs;
  }
  return row;
});
const byId = Object.fromEntries(rows.map((r) => [r.id, r]));
const ratios = {
  wasmVsJs10: byId["js-1G-10"].p50Us / byId["1G-10"].p50Us,
  wasmVsJs100: byId["js-1G-100"].p50Us / byId["1G-100"].p50Us,
  tibVsFill: byId.tib.p50Us / byId.fill.p50Us,
  tibTouchVsFill: byId["tib-touch"].p50Us / byId.fill.p50Us,
};
const targets = [
  ...["1G-1", "1G-10", "1G-100", "8G-1"].map((id) => ({
    target: `${byId[id].task} ≤ 25 % of kernel (${KERNEL_US[id]} µs → ≤ ${(KERNEL_US[id] * TARGET_KERNEL_FRACTION).toFixed(0)} µs)`,
    value: `${(byId[id].fractionOfKernel * 100).toFixed(1)} % (${byId[id].p50Us.toFixed(1)} µs)`,
    met: byId[id].fractionOfKernel <= TARGET_KERNEL_FRACTION,
  })),
  {
    target: "1 TiB empty GET ≤ 1.5 × fill(0) of 32 MiB",
    value: `${ratios.tibVsFill.toFixed(2)}×`,
    met: ratios.tibVsFill <= TARGET_TIB_VS_FILL,
  },
  {
    target: "WASM GET ≥ 3× faster than JS GET, 10 %",
    value: `${ratios.wasmVsJs10.toFixed(2)}×`,
    met: ratios.wasmVsJs10 >= TARGET_WASM_VS_JS,
  },
  {
    target: "WASM GET ≥ 3× faster than JS GET, 100 %",
    value: `${ratios.wasmVsJs100.toFixed(2)}×`,
    met: ratios.wasmVsJs100 >= TARGET_WASM_VS_JS,
  },
];

const header = ["task", "dirty pages", "p50 µs", "p99 µs", "samples", "ns/dirty page", "kernel p50 µs", "% of kernel"];
const table = rows.map((r) => [
  r.task,
  r.dirtyPages ? String(r.dirtyPages) : "—",
  fmt(r.p50Us),
  fmt(r.p99Us),
  String(r.samples),
  fmt(r.nsPerDirtyPage, 2),
  r.kernelP50Us ? String(r.kernelP50Us) : "—",
  r.fractionOfKernel === undefined ? "—" : `${(r.fractionOfKernel * 100).toFixed(1)} %`,
]);
const summary = [
  `WASM GET is ${ratios.wasmVsJs10.toFixed(2)}× faster than JS GET (1 GiB, 10 %)`,
  `WASM GET is ${ratios.wasmVsJs100.toFixed(2)}× faster than JS GET (1 GiB, 100 %)`,
  `1 TiB empty GET = ${ratios.tibVsFill.toFixed(2)}× fill(0) of 32 MiB` +
    ` (${ratios.tibTouchVsFill.toFixed(2)}× when the caller then reads each 4 KiB page of the result)`,
  ...["1G-1", "1G-10", "1G-100", "8G-1"].map(
    (id) => `${byId[id].task}: ${(byId[id].fractionOfKernel * 100).toFixed(1)} % of kernel time`,
  ),
];

console.log("\nclassic KVM_GET_DIRTY_LOG (lower is better; p50 = median)");
console.log(textTable(header, table));
console.log("\nsame-run ratios");
for (const s of summary) console.log(`  ${s}`);
console.log("\ntargets");
for (const s of targetLines(targets)) console.log(s);
const elapsed = seconds();
env.loadAverageAtEnd = loadAverage();
console.log(
  `\ntotal run time ${elapsed.toFixed(1)} s; load average at start ${env.loadAverageAtStart.join(" ")}, at end ${env.loadAverageAtEnd.join(" ")}`,
);

const date = new Date().toISOString();
const md = [
  "# Classic KVM_GET_DIRTY_LOG",
  "",
  `${date} · ${env.cpu}, ${env.cores} cores · Node ${env.node} · tinybench ${env.tinybench}, ${TIME} ms per task,` +
    ` timer ${env.timer} (resolution ~${env.timerResolutionNs} ns). Times in µs, lower is better;` +
    " kernel = real KVM on this machine (`../shared/anchors/real-kvm.md`). Generated by `node bench/run.js`." +
    ` Load average at start ${env.loadAverageAtStart.join(" ")}, at end ${env.loadAverageAtEnd.join(" ")}.`,
  "",
  mdTable(header, table),
  "",
  ...summary.map((s) => `- ${s}`),
  "",
  ...targetsMd(targets),
  "",
  "Notes",
  "- Each iteration dirties every k-th page with `vcpu.writeStrided` (fast faults on mapped, write-protected" +
    " pages) before the timed GET; every returned bitmap is checked outside the timed region.",
  "- JS GET: the core's algorithm in plain JavaScript over the same shared memory (`bench/js-get-dirty-log.js`:" +
    " Int32Array halves, Atomics for read-modify-writes, plain loads); checked before timing to return the same" +
    " bitmap and leave the same SPTEs, slot metadata, lock and TLB-flush state as the WASM GET.",
  "- The 1 TiB GET returns a fresh zero-filled 32 MiB `Uint8Array` whose pages the OS maps lazily, so the" +
    " zeroing cost moves to the caller's first touch (the `+ read 1 byte/4 KiB` row).",
  "- Where a GET's time goes (core call vs host copy, experimental core variants): `node bench/get-breakdown.js`.",
  "",
];
const written = writeResults(
  "get-dirty-log",
  { date, environment: env, verification, rows, ratios, targets, totalSeconds: elapsed },
  md,
);
log(`wrote ${written.join(" and ")}`);
