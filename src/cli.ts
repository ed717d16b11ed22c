#!/usr/bin/env node
// dirtlog CLI (`npm start`, or `dirtlog` when installed): the built-in harvest scenario.
// One VM, one dirty-logged 1 GiB slot at gpa 0x1_0000_0000, every page mapped by a warm-up
// pass; then, for each dirty rate, the guest writes every k-th page (fast faults) and the
// host times the classic KVM_GET_DIRTY_LOG. Progress goes to stderr, the table (or JSON)
// to stdout. Exit status 1 if a GET reports a different set of pages than was dirtied.
import { cpus } from "node:os";
import { KVM_MEM_LOG_DIRTY_PAGES } from "./constants.js";
import { createVm } from "./vm.js";

const SLOT_GPA = 0x1_0000_0000;
const SLOT_BYTES = 1 << 30;
const PAGE = 4096;
const RUNS = 5;
/** Untimed (but checked) runs per rate before the timed ones (JIT, caches): at least this many… */
const WARMUP_RUNS = 20;
/** …and at least this long. */
const WARMUP_MS = 150;
/** Dirty rate in percent → write every k-th page. */
const RATES: ReadonlyArray<[number, number]> = [
  [1, 100],
  [10, 10],
  [50, 2],
  [100, 1],
];

const USAGE = `usage: dirtlog [--backed] [--json] [--help]

Runs the built-in scenario: a VM with one dirty-logged 1 GiB slot, mapped by a warm-up
pass; for dirty rates 1 %, 10 %, 50 % and 100 % the guest writes every k-th page and the
host times the classic KVM_GET_DIRTY_LOG: the median of ${RUNS} runs, after at least
${WARMUP_RUNS} untimed runs and ${WARMUP_MS} ms per rate. Every GET's bitmap is checked.

  --backed   give the slot guest memory in the shared memory (the warm-up pass then also
             pays the OS's first-touch page faults; default: unbacked, tracking only)
  --json     print the results as JSON instead of a table
  --help     show this text

Exit status: 0 if every GET reported exactly the pages dirtied, 1 if not, 2 on bad usage.`;

interface RateResult {
  dirtyPercent: number;
  strideK: number;
  dirtyPages: number;
  getMedianUs: number;
  nsPerPage: number;
  pagesReported: number[];
  runsUs: number[];
  ok: boolean;
}

function parseArgs(argv: string[]): { backed: boolean; json: boolean; help: boolean } {
  const opts = { backed: false, json: false, help: false };
  for (const a of argv) {
    if (a === "--backed") opts.backed = true;
    else if (a === "--json") opts.json = true;
    else if (a === "--help" || a === "-h") opts.help = true;
    else {
      process.stderr.write(`dirtlog: unknown option ${a}\n\n${USAGE}\n`);
      process.exit(2);
    }
  }
  return opts;
}

const POPCOUNT = new Uint8Array(256).map((_, i) => {
  let c = 0;
  for (let x = i; x; x &= x - 1) c++;
  return c;
});

/** Pages reported in the bitmap, and whether they are exactly pages 0, k, 2k, … */
function inspect(bitmap: Uint8Array, npages: number, k: number): { reported: number; exact: boolean } {
  let reported = 0;
  for (let i = 0; i < bitmap.length; i++) reported += POPCOUNT[bitmap[i]];
  let exact = reported === Math.ceil(npages / k);
  for (let p = 0; exact && p < npages; p += k) exact = (bitmap[p >>> 3] & (1 << (p & 7))) !== 0;
  return { reported, exact };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const progress = (msg: string) => process.stderr.write(`dirtlog: ${msg}\n`);
  const started = process.hrtime.bigint();
  const npages = SLOT_BYTES / PAGE;

  progress(`node ${process.version}, ${cpus()[0]?.model ?? "unknown CPU"} × ${cpus().length}`);
  const vm = await createVm();
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: SLOT_GPA,
    memorySize: SLOT_BYTES,
    backed: opts.backed,
  });
  const vcpu = vm.createVcpu(0);

  progress(`warm-up: writing all ${npages} pages of the ${opts.backed ? "backed" : "unbacked"} 1 GiB slot`);
  let t = process.hrtime.bigint();
  if (vcpu.writeStrided(SLOT_GPA, PAGE, npages, 1) !== npages) throw new Error("warm-up writes stopped early");
  const warm = inspect(vm.getDirtyLog(0), npages, 1);
  progress(`warm-up done in ${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(0)} ms, first GET reported ${warm.reported} pages`);
  let ok = warm.exact;
  if (!ok) progress(`MISMATCH: the warm-up GET reported ${warm.reported} of ${npages} pages`);

  const results: RateResult[] = [];
  for (const [percent, k] of RATES) {
    const n = Math.ceil(npages / k);
    const runsUs: number[] = [];
    const pagesReported: number[] = [];
    let exact = true;
    const warmUntil = process.hrtime.bigint() + BigInt(WARMUP_MS * 1e6);
    for (let run = 0; runsUs.length < RUNS; run++) {
      // the first runs warm the JIT and caches: checked, not timed
      const timed = run >= WARMUP_RUNS && process.hrtime.bigint() >= warmUntil;
      if (vcpu.writeStrided(SLOT_GPA, k * PAGE, n, run + 2) !== n) throw new Error("guest writes stopped early");
      t = process.hrtime.bigint();
      const bitmap = vm.getDirtyLog(0);
      const ns = Number(process.hrtime.bigint() - t);
      const r = inspect(bitmap, npages, k);
      exact &&= r.exact;
      if (timed) {
        runsUs.push(ns / 1000);
        pagesReported.push(r.reported);
      }
    }
    const getMedianUs = median(runsUs);
    results.push({
      dirtyPercent: percent,
      strideK: k,
      dirtyPages: n,
      getMedianUs,
      nsPerPage: (getMedianUs * 1000) / n,
      pagesReported,
      runsUs,
      ok: exact,
    });
    ok &&= exact;
    progress(
      `${percent} %: ${n} pages dirtied, GET median ${getMedianUs.toFixed(1)} µs` +
        `${exact ? "" : ` — MISMATCH: reported ${pagesReported.join(", ")}`}`,
    );
  }
  const totalMs = Number(process.hrtime.bigint() - started) / 1e6;

  if (opts.json) {
    const out = {
      scenario: "classic KVM_GET_DIRTY_LOG on one 1 GiB dirty-logged slot",
      slotGpa: SLOT_GPA,
      slotBytes: SLOT_BYTES,
      backed: opts.backed,
      runsPerRate: RUNS,
      warmup: { minRuns: WARMUP_RUNS, minMs: WARMUP_MS },
      node: process.version,
      cpu: cpus()[0]?.model ?? "unknown",
      results,
      ok,
      totalMs,
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  } else {
    const header = ["dirty %", "dirty pages", "GET median µs", "ns/page", "pages reported", "check"];
    const rows = results.map((r) => [
      `${r.dirtyPercent} %`,
      String(r.dirtyPages),
      r.getMedianUs.toFixed(1),
      r.nsPerPage.toFixed(2),
      r.pagesReported.every((p) => p === r.pagesReported[0]) ? String(r.pagesReported[0]) : r.pagesReported.join("/"),
      r.ok ? "ok" : "MISMATCH",
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
    const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i])).join("  ");
    const slot = `${opts.backed ? "backed" : "unbacked"} 1 GiB slot`;
    process.stdout.write(`classic KVM_GET_DIRTY_LOG, ${slot}, median of ${RUNS} runs (lower is better)\n`);
    process.stdout.write(`${line(header)}\n${rows.map(line).join("\n")}\n`);
    process.stdout.write(`${ok ? "all GETs reported exactly the pages dirtied" : "FAILED: a GET reported different pages"}` +
      ` (total ${(totalMs / 1000).toFixed(1)} s)\n`);
  }
  vm.dispose();
  return ok ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`dirtlog: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
