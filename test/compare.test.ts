// `dirtlog compare` end to end (the built CLI, real vCPU worker threads): the JSON holds
// every figure and they agree with each other; bad options exit 2 with one line naming the
// option; the verdict points where the physics is known, measured and projected.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { CompareResult } from "../src/compare_types.js";

const cli = new URL("../dist/cli.js", import.meta.url).pathname;

function run(args: string[], timeout = 120_000) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, signal: r.signal };
}

function json(args: string[]): CompareResult {
  const r = run([...args, "--json"]);
  expect(r.stderr).not.toMatch(/\n\s+at /); // never a stack trace
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as CompareResult;
}

const verdict = (r: CompareResult, metric: string) => r.verdict.find((v) => v.metric === metric);

describe("dirtlog compare, end to end", () => {
  it("a small scenario: exit 0, one JSON document with every figure, consistent, and report files", () => {
    const out = mkdtempSync(join(tmpdir(), "dirtlog-compare-"));
    try {
      const args = ["compare", "--memory", "64MiB", "--vcpus", "2", "--dirty-rate", "50k", "--duration", "500ms"];
      const r = run([...args, "--interval", "100ms", "--modes", "bitmap,manual:64k,ring:256,ring:1024", "--json", "--out", out]);
      expect(r.status).toBe(0);
      expect(r.stderr).toContain("ring:256"); // progress, one line per step (not a TTY)
      const res = JSON.parse(r.stdout) as CompareResult;
      expect(res.ok).toBe(true);
      expect(res.scenario).toMatchObject({ memoryBytes: 64 << 20, vcpus: 2, dirtyRatePagesPerSec: 50_000, durationMs: 500 });
      expect(res.modes.map((m) => m.mode)).toEqual(["bitmap", "manual:65536", "ring:256", "ring:1024"]);
      expect(Object.keys(res.costs).length).toBeGreaterThan(10);
      expect(res.environment).toMatchObject({
        cpu: expect.any(String),
        cores: expect.any(Number),
        node: process.version,
        version: expect.any(String),
        timerResolutionNs: expect.any(Number),
        coreWasmSha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      });
      for (const m of res.modes) {
        // every figure is there and is a number
        for (const v of [
          m.collector.latencyUs.median,
          m.collector.latencyUs.p99,
          m.collector.latencyUs.max,
          m.collector.nsPerReportedPage,
          m.collector.reportedPerSec,
          m.projection.collectorMs,
          m.projection.nsPerReportedPage,
          m.projection.harvestUsPerCall,
          m.projection.guestFaultMs,
          m.guest.ringFullStallMs,
          m.trackingBytes,
        ]) {
          expect(Number.isFinite(v), m.mode).toBe(true);
        }
        expect(m.guest.storesPerSec).toHaveLength(2);
        expect(m.timeline).toHaveLength(m.collector.harvests);
        expect(m.vcpuStores).toHaveLength(m.collector.harvests);
        expect(m.vcpuStores.every((row) => row.length === 2)).toBe(true);
        expect(m.timeline.at(-1)?.cause).toBe("final");
        // consistency: every write fault is reported exactly once, nothing is lost
        expect(m.correctness).toMatchObject({ lost: 0, outside: 0, resetMismatches: 0, reportsMinusFaults: 0, ok: true });
        expect(m.collector.reported).toBe(m.guest.faults.reduce((a, b) => a + b, 0));
        expect(m.timeline.reduce((a, p) => a + p.reported, 0)).toBe(m.collector.reported);
        if (m.mode.startsWith("ring")) {
          expect(m.collector.ringEntries).toBe(m.collector.reported);
          expect(m.collector.getCalls).toBe(0);
          expect(m.collector.ringFullRetries).toBe(m.guest.ringFullExits);
          expect(m.trackingBytes).toBe(2 * Number(m.mode.slice(5)) * 16 * 2);
        } else {
          expect(m.collector.ringEntries).toBe(0);
          expect(m.collector.bitmapWords).toBe(m.collector.getCalls * 256); // 16384 pages = 256 words
          expect(m.guest.ringFullExits).toBe(0);
        }
      }
      expect(res.modes[1].collector.clearCalls).toBeGreaterThan(0);
      expect(JSON.parse(readFileSync(join(out, "report.json"), "utf8"))).toEqual(res);
      expect(existsSync(join(out, "report.html"))).toBe(true);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("--costs FILE replaces the kernel cost table: the projection follows it", () => {
    const dir = mkdtempSync(join(tmpdir(), "dirtlog-costs-"));
    try {
      const base = ["compare", "--memory", "16MiB", "--vcpus", "1", "--duration", "200ms", "--interval", "50ms", "--modes", "bitmap,ring:256"];
      const a = json(base);
      const costs = { ...a.costs, source: "a host 10× slower", getClassicNsPerDirtyPage: 450, resetNsPerEntry: 650, collectNsPerEntry: 20 };
      writeFileSync(join(dir, "costs.json"), JSON.stringify(costs));
      const b = json([...base, "--costs", join(dir, "costs.json")]);
      expect(b.costs).toEqual(costs);
      // per reported page the kernel projection is now 10× (+ the unchanged scan for bitmap)
      expect(b.modes[1].projection.nsPerReportedPage).toBeCloseTo(670, 5);
      expect(b.modes[0].projection.nsPerReportedPage).toBeGreaterThan(450);
      writeFileSync(join(dir, "bad.json"), JSON.stringify({ ...costs, resetNsPerEntry: -1 }));
      const bad = run([...base, "--costs", join(dir, "bad.json")]);
      expect(bad.status).toBe(2);
      expect(bad.stderr).toMatch(/--costs ".*bad.json": cost resetNsPerEntry must be a number ≥ 0/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the table says what is better per row and gives a verdict measured and projected", () => {
    const r = run(["compare", "--memory", "16MiB", "--vcpus", "1", "--duration", "300ms", "--interval", "100ms", "--modes", "bitmap,ring:256"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/harvest latency median, µs\s+lower/);
    expect(r.stdout).toMatch(/guest stores\/s per vCPU\s+higher/);
    expect(r.stdout).toContain("verdict, measured");
    expect(r.stdout).toContain("verdict, projected");
    expect(r.stdout).toContain("shared/anchors/real-kvm.md");
  });
});

describe("bad options: exit 2, one line naming the option and the accepted form", () => {
  const cases: Array<[string[], RegExp]> = [
    [["--memory", "8XB"], /--memory "8XB": expected a size/],
    [["--memory", "100"], /--memory "100": at least 1MiB/],
    [["--memory", "2TiB"], /--memory "2TiB": at most 1TiB/],
    [["--memory", "8GiB", "--backed"], /--memory "8GiB": --backed .* at most 3GiB/],
    [["--vcpus", "0"], /--vcpus "0": a whole number from 1 to 64/],
    [["--vcpus", "two"], /--vcpus "two"/],
    [["--workload", "random"], /--workload "random": sequential, uniform/],
    [["--workload", "hot-set:200%"], /--workload "hot-set:200%": hot-set takes percentages/],
    [["--workload", "zipf:0"], /--workload "zipf:0": zipf's exponent/],
    [["--workload", "strided:x"], /--workload "strided:x": strided's stride/],
    [["--dirty-rate", "fast"], /--dirty-rate "fast": expected pages\/s/],
    [["--dirty-rate", "0"], /--dirty-rate "0": expected a rate above 0/],
    [["--modes", "bitmap,ring:100"], /--modes "bitmap,ring:100": "ring:100": ringEntries 100 is outside \[256, 65536\]/],
    [["--modes", "bitmap,bitmap"], /--modes "bitmap,bitmap": each mode once/],
    [["--modes", "btimap"], /--modes "btimap"/],
    [["--duration", "5"], /--duration "5": expected a duration like 250ms/],
    [["--duration", "10ms"], /--duration "10ms": from 100ms to 1h/],
    [["--interval", "10s", "--duration", "1s"], /--interval "10s": from 1ms up to the --duration/],
    [["--seed", "0"], /--seed "0": a whole number from 1/],
    [["--seed", "-3"], /--seed/], // util.parseArgs: a value that looks like an option
    [["--costs", "/no/such/file.json"], /--costs "\/no\/such\/file.json": cannot be read/],
    [["--frobnicate"], /Unknown option '--frobnicate'/],
    [["--memory"], /--memory/],
  ];
  for (const [args, message] of cases) {
    it(args.join(" "), () => {
      const r = run(["compare", ...args], 30_000);
      expect(r.status).toBe(2);
      const lines = r.stderr.trim().split("\n");
      expect(lines[0]).toMatch(/^dirtlog compare: /);
      expect(lines[0]).toMatch(message);
      expect(lines.slice(1)).toEqual(["see: dirtlog compare --help"]);
      expect(r.stdout).toBe("");
    });
  }

  it("--help lists every option with its default", () => {
    const r = run(["compare", "--help"]);
    expect(r.status).toBe(0);
    for (const o of ["--memory", "--backed", "--vcpus", "--workload", "--dirty-rate", "--modes", "--duration", "--interval", "--seed", "--costs", "--json", "--out"]) {
      expect(r.stdout).toContain(o);
    }
    expect(r.stdout).toContain("[8GiB]");
    expect(r.stdout).toContain("[bitmap,manual:256k,ring:4096,ring:65536]");
  });
});

describe("the verdict points where the physics is known", () => {
  it("a large, sparsely written guest: the ring harvests for less than the bitmap's GET (measured and projected)", () => {
    const r = json(["compare", "--memory", "64GiB", "--vcpus", "1", "--dirty-rate", "2k", "--duration", "1500ms", "--interval", "250ms", "--modes", "bitmap,ring:65536"]);
    const bitmap = r.modes[0];
    const ring = r.modes[1];
    expect(ring.collector.latencyUs.median).toBeLessThan(bitmap.collector.latencyUs.median);
    expect(verdict(r, "harvest latency (median)")?.winner).toBe("ring:65536");
    expect(verdict(r, "kernel harvest time per call")?.winner).toBe("ring:65536");
    expect(ring.projection.harvestUsPerCall).toBeLessThan(bitmap.projection.harvestUsPerCall);
  });

  it("a small guest written fast enough to keep the ring full: the bitmap wins on vCPU stall and time per reported page", () => {
    // 256 MiB: each GET reports tens of thousands of pages, each ring harvest a couple of hundred
    const r = json(["compare", "--memory", "256MiB", "--vcpus", "1", "--dirty-rate", "max", "--duration", "1s", "--interval", "100ms", "--modes", "bitmap,ring:256"]);
    const [bitmap, ring] = r.modes;
    expect(ring.guest.ringFullExits).toBeGreaterThan(0);
    expect(bitmap.guest.ringFullStallMs).toBe(0);
    expect(ring.guest.ringFullStallMs).toBeGreaterThan(0);
    expect(verdict(r, "vCPU time stalled on a full ring")?.winner).toBe("bitmap");
    expect(verdict(r, "kernel vCPU stall on a full ring")?.winner).toBe("bitmap");
    expect(verdict(r, "kernel time per reported page")?.winner).toBe("bitmap");
    expect(verdict(r, "collector time per reported page")?.winner).toBe("bitmap");
  });
});
