// `dirtlog dirtyrate` end to end (the built CLI, real vCPU worker threads): exit codes, the
// JSON document's figures and how they agree, one line per bad option; then the accuracy
// the issue asks for, on uniform writes at the command's defaults (1 GiB backed, 4 vCPUs at
// 125k pages/s each, 256 sample pages per GiB) over a 2 s window: ring and bitmap within
// 1 % of the truth, page sampling within 10 %.
import { spawn, spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import type { DirtyRateResult } from "../src/dirtyrate.js";

const cli = new URL("../dist/cli.js", import.meta.url).pathname;

function run(args: string[], timeout = 120_000) {
  const r = spawnSync(process.execPath, [cli, "dirtyrate", ...args], { encoding: "utf8", timeout });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The same, without blocking: many at once. */
function runAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, "dirtyrate", ...args]);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

function json(args: string[]): DirtyRateResult {
  const r = run([...args, "--json"]);
  expect(r.stderr).not.toMatch(/\n\s+at /); // never a stack trace
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as DirtyRateResult;
}

const close = (a: number, b: number) => expect(Math.abs(a - b)).toBeLessThanOrEqual(1e-9 * Math.max(1, Math.abs(b)));

/** The figures of one result agree with each other and with their definitions. */
function consistent(r: DirtyRateResult): void {
  for (const run of r.runs) {
    const s = run.windowMs / 1000;
    expect(run.windowMs).toBeGreaterThanOrEqual(r.settings.windowMs - 1);
    expect(run.truth.pages).toBe(run.truth.perVcpu.reduce((a, v) => a + v.pages, 0));
    close(run.truth.pagesPerSec, run.truth.pages / s);
    close(run.truth.mbPerSec, run.truth.pagesPerSec / 256);
    close(run.truth.dirtyFraction, run.truth.pages / (r.settings.memoryBytes / 4096));
    // a page is written at most once per store
    for (const [i, v] of run.truth.perVcpu.entries()) expect(v.pages).toBeLessThanOrEqual(run.stores[i]);
    expect(run.inFlight).toHaveLength(r.settings.vcpus);
    for (const f of run.inFlight) expect([0, 1]).toContain(f);
  }
  for (const m of [r.sampling, r.ring, r.bitmap]) {
    if (!m) continue;
    const truth = r.runs[m.run].truth;
    expect(m.truth).toEqual({ pages: truth.pages, pagesPerSec: truth.pagesPerSec, mbPerSec: truth.mbPerSec });
    close(m.pagesPerSec, m.pages / (r.runs[m.run].windowMs / 1000));
    close(m.mbPerSec, m.pagesPerSec / 256);
    close(m.errorPct as number, ((m.pages - truth.pages) / truth.pages) * 100);
    expect(Number.isInteger(m.qemuMBps)).toBe(true);
    // QEMU truncates MiB (per vCPU for the ring) and rounds to whole ms
    const truncated = (1000 / r.runs[m.run].windowMs) * (m === r.ring ? r.settings.vcpus : 1);
    expect(Math.abs(m.qemuMBps - m.mbPerSec)).toBeLessThanOrEqual(1 + truncated + m.mbPerSec * 0.01);
  }
  if (r.sampling) {
    const x = r.sampling;
    expect(x.samples).toBe(Math.floor((r.settings.memoryBytes * r.settings.samplePagesPerGiB) / 2 ** 30));
    expect(x.changed).toBeLessThanOrEqual(x.samples);
    close(x.pages, (x.changed / x.samples) * (r.settings.memoryBytes / 4096));
    const p = r.runs[x.run].truth.dirtyFraction;
    close(x.standardErrorPct as number, Math.sqrt((1 - p) / (x.samples * p)) * 100);
  }
  if (r.ring) {
    const x = r.ring;
    expect(x.entries).toBe(x.pages);
    expect(x.perVcpu.map((v) => v.vcpu)).toEqual([...Array(r.settings.vcpus).keys()]);
    expect(x.perVcpu.reduce((a, v) => a + v.pages, 0)).toBe(x.entries);
    expect(x.perVcpu.reduce((a, v) => a + v.distinctPages, 0)).toBe(x.distinctPages);
    // the ring misses nothing and reports nothing else: its distinct pages are the truth,
    // vCPU by vCPU (each writes its own share), plus a page whose store faulted but had not
    // retired when the window closed; entries beyond them were re-dirtied after a reap
    const { truth, inFlight } = r.runs[x.run];
    for (const v of x.perVcpu) {
      expect(v.distinctPages - truth.perVcpu[v.vcpu].pages, `vCPU ${v.vcpu}`).toBeGreaterThanOrEqual(0);
      expect(v.distinctPages - truth.perVcpu[v.vcpu].pages, `vCPU ${v.vcpu}`).toBeLessThanOrEqual(inFlight[v.vcpu]);
      expect(v.truth).toEqual(truth.perVcpu[v.vcpu]);
    }
    if (x.reaps === 0) expect(x.entries).toBe(x.distinctPages);
  }
  if (r.bitmap) {
    const { truth, inFlight } = r.runs[r.bitmap.run];
    expect(r.bitmap.pages - truth.pages).toBeGreaterThanOrEqual(0);
    expect(r.bitmap.pages - truth.pages).toBeLessThanOrEqual(inFlight.reduce((a, b) => a + b, 0));
  }
}

describe("dirtlog dirtyrate, end to end", () => {
  it("--help lists every option with its default; exit 0", async () => {
    const { DEFAULTS } = await import("../dist/dirtyrate_cli.js");
    const r = run(["--help"]);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe("");
    for (const [k, v] of Object.entries(DEFAULTS)) {
      const line = r.stdout.indexOf(`  --${k} `);
      expect(line, k).toBeGreaterThan(0);
      // the default, in brackets, in the option's entry (before the next option)
      const next = r.stdout.indexOf("\n  --", line + 1);
      expect(r.stdout.slice(line, next < 0 ? undefined : next), k).toContain(`[${v}]`);
    }
    for (const o of ["--json", "--help"]) expect(r.stdout).toContain(o);
    expect(DEFAULTS).toMatchObject({
      memory: "1GiB",
      window: "1s",
      "sample-pages": "256",
      methods: "sampling,ring,bitmap",
    });
  });

  it("a small scenario: exit 0, one JSON document with every figure, consistent; a small ring re-counts", () => {
    const r = run(
      [
        "--memory",
        "64MiB",
        "--vcpus",
        "2",
        "--dirty-rate",
        "20k",
        "--window",
        "200ms",
        "--ring-entries",
        "256",
        "--sample-pages",
        "1024",
      ].concat("--json"),
    );
    expect(r.status).toBe(0);
    expect(r.stderr).toContain("dirtlog dirtyrate: [1/2] ring:256: window");
    expect(r.stderr).toContain("dirtlog dirtyrate: [2/2] bitmap: window");
    const res = JSON.parse(r.stdout) as DirtyRateResult;
    expect(res.tool).toBe("dirtlog dirtyrate");
    expect(res.settings).toMatchObject({
      memoryBytes: 64 << 20,
      vcpus: 2,
      pattern: "uniform",
      dirtyRatePagesPerSec: 20_000,
      windowMs: 200,
      samplePagesPerGiB: 1024,
      methods: ["sampling", "ring", "bitmap"],
      ringEntries: 256,
      seed: "1",
    });
    expect(res.runs.map((x) => [x.tracking, x.methods])).toEqual([
      ["ring:256", ["sampling", "ring"]],
      ["bitmap", ["bitmap"]],
    ]);
    expect(res.window.requestedMs).toBe(200);
    expect(res.window.ms).toBe(res.runs[0].windowMs);
    expect(res.truth).toEqual(res.runs[0].truth);
    expect(res.sampling?.run).toBe(0);
    expect(res.ring?.run).toBe(0);
    expect(res.bitmap?.run).toBe(1);
    expect(res.sampling?.samples).toBe(64);
    expect(res.truth.pages).toBeGreaterThan(1000);
    consistent(res);
    // 4000 stores per vCPU against a 256-entry ring: it fills and is reaped in the window, and
    // the pages written again after a reap are counted again (QEMU's cpu->dirty_pages)
    const ring = res.ring as NonNullable<DirtyRateResult["ring"]>;
    expect(ring.reaps).toBeGreaterThan(0);
    expect(ring.entries).toBeGreaterThan(ring.distinctPages);
    expect(ring.errorPct).toBeGreaterThan(1);
    expect(Math.abs(res.bitmap?.errorPct as number)).toBeLessThan(0.1);
  });

  it("the table: every method, the ring per vCPU, the errors; --methods picks the runs", () => {
    const r = run([
      "--memory",
      "64MiB",
      "--vcpus",
      "2",
      "--dirty-rate",
      "20k",
      "--window",
      "200ms",
      "--sample-pages",
      "1024",
    ]);
    expect(r.status).toBe(0);
    const out = r.stdout;
    expect(out).toMatch(
      /^dirtlog dirtyrate: 64 MiB backed, 2 vCPUs, uniform, 20000 pages\/s per vCPU, window 0\.200 s, seed 1\n/,
    );
    expect(out).toContain("run 1: dirty ring (65536 entries per vCPU, 0 ring-full reaps in the window)");
    expect(out).toContain("run 2: dirty bitmap (KVM_GET_DIRTY_LOG)");
    expect(out).toMatch(/method +pages +pages\/s +MB\/s +QEMU MB\/s +error vs truth/);
    for (const row of ["truth", "sampling", "ring", "vCPU 0", "vCPU 1", "bitmap"])
      expect(out).toMatch(new RegExp(`\\n  +${row} +\\d`));
    // ring and bitmap: exact here (the ring holds the window), but for a store in flight at the end
    expect(out).toMatch(/\n {2}ring +\d+ +[\d.]+ +[\d.]+ +\d+ +\+?0\.0\d %/);
    expect(out).toMatch(/\n {2}bitmap +\d+ +[\d.]+ +[\d.]+ +\d+ +\+?0\.0\d %/);
    expect(out).toMatch(/\d+ of 64 samples changed; expected ±[\d.]+ % \(1 SE\)/);

    const only = json([
      "--memory",
      "64MiB",
      "--vcpus",
      "1",
      "--window",
      "100ms",
      "--methods",
      "sampling",
      "--sample-pages",
      "16384",
    ]);
    expect(only.runs.map((x) => x.tracking)).toEqual(["none"]); // sampling needs no dirty logging
    expect(only.sampling?.samples).toBe(1024);
    expect(only.ring).toBeUndefined();
    expect(only.bitmap).toBeUndefined();
    consistent(only);
    const bitmap = json([
      "--memory",
      "16MiB",
      "--vcpus",
      "3",
      "--window",
      "100ms",
      "--methods",
      "bitmap",
      "--workload",
      "hot-set:10%:90%",
    ]);
    expect(bitmap.runs.map((x) => x.tracking)).toEqual(["bitmap"]);
    expect(bitmap.settings).toMatchObject({ pattern: "hot-set", hotPagesFraction: 0.1, hotFraction: 0.9 });
    expect(bitmap.sampling).toBeUndefined();
    consistent(bitmap);
  });

  it("bad options: one line naming the option, the value and the accepted form; exit 2", async () => {
    const cases: Array<[string[], RegExp]> = [
      [["--memory", "8G"], /^--memory "8G": expected a size like/],
      [["--memory", "4GiB"], /^--memory "4GiB": at most 3GiB/],
      [["--memory", "12345"], /^--memory "12345": at least 1MiB, a whole number of 4 KiB pages/],
      [["--vcpus", "0"], /^--vcpus "0": a whole number from 1 to 64/],
      [["--workload", "random"], /^--workload "random": sequential, uniform, hot-set/],
      [["--dirty-rate", "fast"], /^--dirty-rate "fast": expected pages\/s like 20000/],
      [["--window", "5"], /^--window "5": expected a duration like 250ms, 5s or 1m/],
      [["--window", "10ms"], /^--window "10ms": from 50ms to 60s/],
      [["--sample-pages", "64"], /^--sample-pages "64": a whole number of sample pages per GiB from 128 to 16384/],
      [
        ["--sample-pages", "128", "--memory", "4MiB"],
        /^--sample-pages "128": 128 per GiB of 4 MiB is no sample: raise it to 256 or more/,
      ],
      [
        ["--methods", "sampling,dirty-ring"],
        /^--methods "sampling,dirty-ring": a comma-separated list of sampling, ring, bitmap/,
      ],
      [["--methods", "ring,ring"], /^--methods "ring,ring": each method once/],
      [["--ring-entries", "1000"], /^--ring-entries "1000": a power of two from 256 to 65536/],
      [["--seed", "0"], /^--seed "0": a whole number from 1 to 2\^64 - 1/],
      [["--json=yes"], /^Option '--json' does not take an argument/],
      [["--frobnicate"], /^Unknown option '--frobnicate'/],
      [["extra"], /^Unexpected argument 'extra'/],
    ];
    const results = await Promise.all(cases.map(([args]) => runAsync(args)));
    for (const [k, [args, message]] of cases.entries()) {
      const r = results[k];
      expect(r.status, args.join(" ")).toBe(2);
      expect(r.stdout, args.join(" ")).toBe("");
      const lines = r.stderr.trimEnd().split("\n");
      expect(lines, args.join(" ")).toHaveLength(2);
      expect(lines[0].replace(/^dirtlog dirtyrate: /, ""), args.join(" ")).toMatch(message);
      expect(lines[1]).toBe("see: dirtlog dirtyrate --help");
    }
  });
});

describe("dirty-rate accuracy on uniform writes", () => {
  // Ring and bitmap see exactly the window's writes (the vCPUs are paused at its edges), so
  // their only error would be a lost or invented report (or a store in flight at the end,
  // one page per vCPU at most): the bound is 1 %, they show 0.
  // Page sampling is a binomial estimate: with n samples and a true dirty fraction p its
  // relative standard error is sqrt((1 - p) / (n p)); 10 % is 3 SE when p ≥ 0.78 at n = 256.
  // The command's defaults (1 GiB backed, 4 vCPUs × 125k pages/s, 256 samples per GiB)
  // dirty p = 1 - e^(-500000/262144) ≈ 0.85 in 1 s (SE 2.6 %) when the machine keeps up.
  // Here 768 MiB (192 samples): p ≈ 0.92 in 1 s, SE ≈ 2.1 %. Each run checks the premise
  // (SE ≤ 10/3 %: 10 % is ≥ 3 SE) and the bounds; over the runs, the errors must spread as
  // the model says (z = error / SE: RMS ≤ 2, |mean| ≤ 4 / √runs).
  // Under the full suite (other test files running on the same 2 cores) the paced guest
  // falls further behind (p fell to 0.41 in 2 s once): a run whose premise fails is
  // measured again with a longer window, so the premise holds and the bounds are checked
  // where they are claimed; a machine too loaded even for 8 s still fails the test.
  // 768 MiB rather than the default 1 GiB: each vCPU's share (49152 pages) then fits its
  // 65536-entry ring even when a long window dirties all of it (1 GiB: 65536 pages, over the
  // 65472 soft limit, so a long window would reap and the ring would count pages twice)
  const RUNS = 4;
  const WINDOWS = [1000, 2000, 4000, 8000];
  const MEMORY = 768 * 2 ** 20;
  it.skipIf(process.env.DIRTLOG_CORE === "debug")(`ring and bitmap within 1 % of the truth, sampling within 10 % (${RUNS} runs, seeds 1..${RUNS})`, async () => {
    const { measureDirtyRate } = await import("../dist/dirtyrate.js");
    const errors: Record<"sampling" | "ring" | "bitmap", number[]> = { sampling: [], ring: [], bitmap: [] };
    const z: number[] = [];
    const p: number[] = [];
    for (let seed = 1; seed <= RUNS; seed++) {
      let r = await measureDirtyRate({ seed, windowMs: WINDOWS[0], memoryBytes: MEMORY });
      for (const windowMs of WINDOWS.slice(1)) {
        if ((r.sampling?.standardErrorPct ?? 0) <= 10 / 3) break;
        r = await measureDirtyRate({ seed, windowMs, memoryBytes: MEMORY });
      }
      consistent(r);
      expect(r.settings).toMatchObject({
        memoryBytes: MEMORY,
        vcpus: 4,
        pattern: "uniform",
        dirtyRatePagesPerSec: 125_000,
      });
      const sampling = r.sampling as NonNullable<DirtyRateResult["sampling"]>;
      const ring = r.ring as NonNullable<DirtyRateResult["ring"]>;
      const bitmap = r.bitmap as NonNullable<DirtyRateResult["bitmap"]>;
      expect(sampling.samples).toBe(192); // 256 per GiB
      // the premise: the guest dirtied enough of memory that 10 % is at least 3 standard errors
      const dirtied = `seed ${seed}: the guest dirtied only ${(r.truth.dirtyFraction * 100).toFixed(1)} % of memory (a machine too loaded to keep the pace?)`;
      expect(sampling.standardErrorPct, dirtied).toBeLessThanOrEqual(10 / 3);
      expect(ring.reaps, `seed ${seed}: the ring filled in the window`).toBe(0);
      expect(Math.abs(ring.errorPct as number), `seed ${seed}`).toBeLessThanOrEqual(1);
      for (const v of ring.perVcpu)
        expect(Math.abs(v.errorPct as number), `seed ${seed} vCPU ${v.vcpu}`).toBeLessThanOrEqual(1);
      expect(Math.abs(bitmap.errorPct as number), `seed ${seed}`).toBeLessThanOrEqual(1);
      expect(Math.abs(sampling.errorPct as number), `seed ${seed}`).toBeLessThanOrEqual(10);
      errors.sampling.push(sampling.errorPct as number);
      errors.ring.push(ring.errorPct as number);
      errors.bitmap.push(bitmap.errorPct as number);
      z.push((sampling.errorPct as number) / (sampling.standardErrorPct as number));
      p.push(r.truth.dirtyFraction);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(Math.sqrt(mean(z.map((x) => x * x)))).toBeLessThanOrEqual(2);
    expect(Math.abs(mean(z))).toBeLessThanOrEqual(4 / Math.sqrt(RUNS));
    const summary = Object.entries(errors).map(
      ([m, e]) => `${m}: mean ${mean(e).toFixed(3)} %, worst ${Math.max(...e.map(Math.abs)).toFixed(3)} %`,
    );
    console.log(
      `dirty-rate errors over ${RUNS} runs (dirty fraction ${Math.min(...p).toFixed(3)}..${Math.max(...p).toFixed(3)}): ${summary.join("; ")}`,
    );
  }, 240_000);
});
