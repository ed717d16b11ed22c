// `dirtlog dirtyrate`: a workload's dirty rate measured the three ways QEMU's
// calc-dirty-rate does (page sampling, per vCPU from the dirty rings, from the dirty
// bitmap), printed beside the true rate. The options shared with `dirtlog compare`
// (--memory, --vcpus, --workload, --dirty-rate, --seed) are parsed by compare's own parser,
// so they accept the same forms and say the same things about bad values. A bad option is
// a UsageError naming the option, the value and the accepted form (exit 2).
import { UsageError, parseCompareArgs, parseOptions } from "./compare_cli.js";
import {
  DIRTYRATE_DEFAULTS,
  type DirtyRateMethod,
  type DirtyRateOptions,
  type DirtyRateResult,
  MAX_BACKED_BYTES,
  type Rate,
  SAMPLE_PAGES_RANGE,
  measureDirtyRate,
  sampleCount,
} from "./dirtyrate.js";
import { UnitError, formatSize, parseDuration, parseSize } from "./units.js";

export const DEFAULTS = {
  memory: "1GiB",
  vcpus: String(DIRTYRATE_DEFAULTS.vcpus),
  workload: DIRTYRATE_DEFAULTS.pattern,
  "dirty-rate": "125k",
  window: "1s",
  "sample-pages": String(DIRTYRATE_DEFAULTS.samplePagesPerGiB),
  methods: DIRTYRATE_DEFAULTS.methods.join(","),
  "ring-entries": String(DIRTYRATE_DEFAULTS.ringEntries),
  seed: DIRTYRATE_DEFAULTS.seed,
};

export const HELP = `usage: dirtlog dirtyrate [options]

Measure a running workload's dirty rate the three ways QEMU's calc-dirty-rate does, over
one window, beside the true rate:
  sampling  hash a random sample of pages at the window's start and end; dirty pages =
            changed samples / samples × pages (QEMU's page-sampling mode; needs the
            guest's bytes)
  ring      per vCPU, the dirty-ring entries collected in the window (reaped at every
            ring-full exit and at the end; a page re-dirtied after a reap counts again,
            as in QEMU)
  bitmap    the pages a dirty-log harvest (KVM_GET_DIRTY_LOG) reports at the end, after
            one at the start re-armed every page
  truth     the pages the guest first wrote in the window (a page written twice counts
            once), counted in its memory: each store writes a value new to this window
The vCPUs are paused for an instant at the window's start and end, so every method sees
the same writes. A VM has a dirty ring or a dirty bitmap, not both: ring and bitmap are
measured on two runs of the same guest (same memory, vCPUs, workload, rate and seed), each
against its own truth; sampling on the first run.

options (defaults in brackets):
  --memory SIZE        guest memory, backed (sampling and the truth read its bytes),
                       1MiB..3GiB, e.g. 1GiB, 256MiB [${DEFAULTS.memory}]
  --vcpus N            vCPU threads, 1..64, each writing its own share of memory [${DEFAULTS.vcpus}]
  --workload W         sequential | uniform | hot-set[:HOT%[:WRITES%]] | zipf[:S] |
                       strided[:PAGES], over each vCPU's share of memory [${DEFAULTS.workload}]
                       (hot-set defaults 5%:90%, zipf 1, strided 16)
  --dirty-rate R       guest writes per second per vCPU: pages/s (125000, 125k, 1.5M),
                       bytes/s (500MB/s, 64MiB/s: / 4 KiB), or max [${DEFAULTS["dirty-rate"]}]
  --window T           the measurement window (QEMU's calc-time), 50ms..60s, e.g. 500ms,
                       2s [${DEFAULTS.window}]
  --sample-pages N     page sampling: sample pages per GiB of memory, ${SAMPLE_PAGES_RANGE[0]}..${SAMPLE_PAGES_RANGE[1]} as in
                       QEMU (whose default is 512) [${DEFAULTS["sample-pages"]}]
  --methods LIST       comma-separated: sampling, ring, bitmap [${DEFAULTS.methods}]
  --ring-entries N     dirty-ring entries per vCPU, a power of two, 256..65536; a ring
                       that fills inside the window is reaped and its re-dirtied pages
                       count twice [${DEFAULTS["ring-entries"]}]
  --seed N             workload and sample RNG seed, a whole number from 1 to 2^64 - 1 [${DEFAULTS.seed}]
  --json               print one JSON document with every figure instead of the table
  -h, --help           this text

Why these defaults: 4 vCPUs writing 125k pages/s each, uniformly, dirty about 85 % of
1 GiB in a second, which each vCPU's 65536-entry ring holds without a reap; at 256
samples that is a sampling standard error of about 2.6 % (sqrt((1 - p) / (n p))). A
smaller dirty fraction p or sample n makes sampling noisier.

Rates are pages/s and MB/s as QEMU writes them (MiB/s); "QEMU MB/s" is the integer QEMU's
own arithmetic would print for the same counts. Progress goes to stderr. Exit status: 0;
2 for bad usage.`;

function usage(option: string, value: string, accepted: string): never {
  throw new UsageError(`--${option} ${JSON.stringify(value)}: ${accepted}`);
}

const METHODS: DirtyRateMethod[] = ["sampling", "ring", "bitmap"];

export interface ParsedDirtyRate {
  options: Omit<DirtyRateOptions, "onProgress">;
  json: boolean;
}

export function parseDirtyRateArgs(argv: string[]): ParsedDirtyRate | "help" {
  const values = parseOptions(argv, {
    memory: { type: "string" },
    vcpus: { type: "string" },
    workload: { type: "string" },
    "dirty-rate": { type: "string" },
    window: { type: "string" },
    "sample-pages": { type: "string" },
    methods: { type: "string" },
    "ring-entries": { type: "string" },
    seed: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return "help";
  const get = (k: keyof typeof DEFAULTS) => (values[k] as string | undefined) ?? DEFAULTS[k];

  const memory = get("memory");
  let memoryBytes: number;
  try {
    memoryBytes = parseSize(memory);
  } catch (e) {
    if (e instanceof UnitError) usage("memory", memory, e.message);
    throw e;
  }
  if (memoryBytes > MAX_BACKED_BYTES) {
    usage(
      "memory",
      memory,
      "at most 3GiB: the guest's bytes live in the 4 GiB shared memory (sampling and the truth read them)",
    );
  }
  // the options compare shares, checked by compare's parser (same forms, same messages)
  const shared = parseCompareArgs([
    "--memory",
    memory,
    "--backed",
    "--vcpus",
    get("vcpus"),
    "--workload",
    get("workload"),
    "--dirty-rate",
    get("dirty-rate"),
    "--seed",
    get("seed"),
  ]);
  if (shared === "help") return "help"; // cannot happen: no --help passed
  const sc = shared.scenario;

  const windowText = get("window");
  let windowMs: number;
  try {
    windowMs = parseDuration(windowText);
  } catch (e) {
    if (e instanceof UnitError) usage("window", windowText, e.message);
    throw e;
  }
  if (windowMs < 50 || windowMs > 60_000) usage("window", windowText, "from 50ms to 60s (QEMU's calc-time range)");

  const methodsText = get("methods");
  const methods = methodsText.split(",").map((m) => m.trim()) as DirtyRateMethod[];
  for (const m of methods) {
    if (!METHODS.includes(m)) usage("methods", methodsText, "a comma-separated list of sampling, ring, bitmap");
  }
  if (new Set(methods).size !== methods.length) usage("methods", methodsText, "each method once");

  const sampleText = get("sample-pages");
  const samplePagesPerGiB = Number(sampleText);
  const [lo, hi] = SAMPLE_PAGES_RANGE;
  if (!/^\d+$/.test(sampleText) || samplePagesPerGiB < lo || samplePagesPerGiB > hi) {
    usage("sample-pages", sampleText, `a whole number of sample pages per GiB from ${lo} to ${hi}`);
  }
  if (methods.includes("sampling") && sampleCount(memoryBytes, samplePagesPerGiB) < 1) {
    usage(
      "sample-pages",
      sampleText,
      `${samplePagesPerGiB} per GiB of ${formatSize(memoryBytes)} is no sample: raise it to ${Math.ceil(2 ** 30 / memoryBytes)} or more, or --memory`,
    );
  }

  const ringText = get("ring-entries");
  const ringEntries = Number(ringText);
  if (!/^\d+$/.test(ringText) || ringEntries < 256 || ringEntries > 65536 || (ringEntries & (ringEntries - 1)) !== 0) {
    usage("ring-entries", ringText, "a power of two from 256 to 65536");
  }

  return {
    options: {
      memoryBytes: sc.memoryBytes,
      vcpus: sc.vcpus,
      pattern: sc.pattern,
      ...(sc.hotPagesFraction !== undefined ? { hotPagesFraction: sc.hotPagesFraction } : {}),
      ...(sc.hotFraction !== undefined ? { hotFraction: sc.hotFraction } : {}),
      ...(sc.zipfS !== undefined ? { zipfS: sc.zipfS } : {}),
      ...(sc.stride !== undefined ? { stride: sc.stride } : {}),
      dirtyRatePagesPerSec: sc.dirtyRatePagesPerSec,
      windowMs,
      samplePagesPerGiB,
      methods,
      ringEntries,
      seed: sc.seed,
    },
    json: values.json === true,
  };
}

const fixed = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : "—");
const signed = (v: number | null) => (v === null ? "—" : `${v > 0 ? "+" : ""}${v.toFixed(2)} %`);

/** The table and the notes under it. */
export function renderDirtyRate(r: DirtyRateResult): string {
  const s = r.settings;
  const rateText = s.dirtyRatePagesPerSec
    ? `${fixed(s.dirtyRatePagesPerSec, 0)} pages/s per vCPU`
    : "as fast as it goes";
  const out = [
    `dirtlog dirtyrate: ${formatSize(s.memoryBytes)} backed, ${s.vcpus} vCPUs, ${s.pattern}, ${rateText}, ` +
      `window ${fixed(s.windowMs / 1000, s.windowMs % 1000 === 0 ? 0 : 3)} s, seed ${s.seed}`,
  ];
  type Row = [string, string, string, string, string, string, string];
  const header: Row = ["method", "pages", "pages/s", "MB/s", "QEMU MB/s", "error vs truth", ""];
  const row = (label: string, x: Rate, qemu: number | null, error: string, note = ""): Row => [
    label,
    fixed(x.pages, Number.isInteger(x.pages) ? 0 : 1),
    fixed(x.pagesPerSec, 1),
    fixed(x.mbPerSec, 1),
    qemu === null ? "—" : String(qemu),
    error,
    note,
  ];
  for (const [index, run] of r.runs.entries()) {
    const rows: Row[] = [header];
    rows.push(row("truth", run.truth, null, "—", `${fixed(run.truth.dirtyFraction * 100, 1)} % of memory`));
    if (r.sampling?.run === index) {
      const x = r.sampling;
      rows.push(
        row(
          "sampling",
          x,
          x.qemuMBps,
          signed(x.errorPct),
          `${x.changed} of ${x.samples} samples changed; expected ±${x.standardErrorPct === null ? "—" : x.standardErrorPct.toFixed(2)} % (1 SE)`,
        ),
      );
    }
    if (r.ring?.run === index) {
      const x = r.ring;
      rows.push(
        row(
          "ring",
          x,
          x.qemuMBps,
          signed(x.errorPct),
          x.entries === x.distinctPages ? "" : `${x.distinctPages} distinct pages`,
        ),
      );
      for (const v of x.perVcpu) {
        rows.push(
          row(
            `  vCPU ${v.vcpu}`,
            v,
            v.qemuMBps,
            signed(v.errorPct),
            `truth ${v.truth.pages} (${fixed(v.truth.pagesPerSec, 1)}/s)`,
          ),
        );
      }
    }
    if (r.bitmap?.run === index) rows.push(row("bitmap", r.bitmap, r.bitmap.qemuMBps, signed(r.bitmap.errorPct)));
    const tracking =
      run.tracking === "none"
        ? "no dirty logging"
        : run.tracking === "bitmap"
          ? "dirty bitmap (KVM_GET_DIRTY_LOG)"
          : `dirty ring (${s.ringEntries} entries per vCPU, ${r.ring?.reaps ?? 0} ring-full reaps in the window)`;
    out.push("", `run ${index + 1}: ${tracking}, window ${fixed(run.windowMs, 1)} ms`);
    const widths = header.map((_, k) => Math.max(...rows.map((x) => x[k].length)));
    for (const x of rows) {
      out.push(
        `  ${x
          .map((c, k) => (k === 0 || k === 6 ? c.padEnd(widths[k]) : c.padStart(widths[k])))
          .join("  ")
          .trimEnd()}`,
      );
    }
    const inFlight = run.inFlight.reduce((a, b) => a + b, 0);
    if (inFlight > 0) {
      out.push(
        `  (${inFlight} store${inFlight === 1 ? "" : "s"} had faulted but not retired when the window closed: reported dirty, not yet in memory)`,
      );
    }
  }
  out.push(
    "",
    "truth: the pages the guest first wrote in the window (each page once), counted in its memory.",
    "error: (method − truth) / truth. MB/s: MiB/s, as QEMU prints; QEMU MB/s: its integer arithmetic.",
  );
  if (r.ring && r.ring.entries !== r.ring.distinctPages) {
    out.push(
      `ring: ${r.ring.entries - r.ring.distinctPages} entries were pages re-dirtied after a ring-full reap (QEMU counts them again); a larger --ring-entries holds the window.`,
    );
  }
  return out.join("\n");
}

export async function main(args: string[]): Promise<number> {
  const parsed = parseDirtyRateArgs(args);
  if (parsed === "help") {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const result = await measureDirtyRate({
    ...parsed.options,
    onProgress: (p) => {
      if (p.phase === "done") return;
      process.stderr.write(`dirtlog dirtyrate: [${p.run + 1}/${p.of}] ${p.tracking}: ${p.phase}\n`);
    },
  });
  process.stdout.write(parsed.json ? `${JSON.stringify(result, null, 2)}\n` : `${renderDirtyRate(result)}\n`);
  return 0;
}
