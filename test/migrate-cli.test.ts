// `dirtlog migrate` end to end (the built CLI, real vCPU worker threads) on a tiny scenario:
// exit codes, the JSON document's fields and how they agree, the report files, one line per
// bad option; and the bandwidth parser.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright";
import { describe, expect, it } from "vitest";
import type { MigrateCliResult } from "../src/migrate_cli.js";
import { parseBandwidth } from "../src/units.js";

const cli = new URL("../dist/cli.js", import.meta.url).pathname;

function run(args: string[], timeout = 60_000) {
  const r = spawnSync(process.execPath, [cli, "migrate", ...args], { encoding: "utf8", timeout });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// 16 MiB written sequentially at 2 × 20k pages/s (156 MB/s) over a 40 MiB/s link
const TINY = [
  "--memory",
  "16MiB",
  "--vcpus",
  "2",
  "--workload",
  "sequential",
  "--dirty-rate",
  "20k",
  "--bandwidth",
  "40MiB/s",
];

describe("dirtlog migrate", () => {
  it("a tiny backed guest: JSON fields, exit 0 though it does not converge, report files (the HTML draws in Chromium)", async () => {
    const out = mkdtempSync(join(tmpdir(), "dirtlog-migrate-"));
    const r = run([...TINY, "--backed", "--max-rounds", "3", "--modes", "bitmap,ring:256", "--json", "--out", out]);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.status).toBe(0);
    const j = JSON.parse(r.stdout) as MigrateCliResult;
    expect(j.tool).toBe("dirtlog migrate");
    expect(j.ok).toBe(true);
    expect(j.settings.bandwidthBytesPerSec).toBe(40 * 2 ** 20);
    expect(j.settings.downtimeLimitMs).toBe(300);
    expect(j.modes.map((m) => m.mode)).toEqual(["bitmap", "ring:256"]);
    for (const m of j.modes) {
      expect(m.converged).toBe(false);
      expect(m.rounds).toHaveLength(4); // round 0 and 3 more
      expect(m.rounds[0].pages).toBe(4096);
      expect(m.equal).toBe(true);
      expect(m.pagesSent).toBe(m.rounds.reduce((a, x) => a + x.pages, 0) + m.finalRoundPages);
      expect(m.bytesSent).toBe(m.pagesSent * 4096);
      expect(m.downtimeMs).toBeGreaterThan(300);
      expect(m.totalMs).toBeGreaterThanOrEqual(m.rounds.reduce((a, x) => a + (x.wireMs ?? 0), 0));
      expect(m.guestStores).toBeGreaterThan(0);
    }
    const stored = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as MigrateCliResult;
    expect(stored.modes.length).toBe(2);
    const html = readFileSync(join(out, "report.html"), "utf8");
    expect(html).toContain('data-chart="rounds"');
    expect(html).toContain("uPlot");
    expect(html).not.toMatch(/<script[^>]+src=/); // self-contained
    // and it draws, offline, in headless Chromium
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu"],
    });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(m.text());
      });
      page.on("pageerror", (e) => errors.push(e.message));
      await page.route(/^(?!file:)/, (route) => route.abort());
      await page.goto(pathToFileURL(join(out, "report.html")).href);
      await page.waitForSelector('[data-chart="rounds"] canvas');
      const ink = await page.evaluate(() =>
        [...document.querySelectorAll<HTMLCanvasElement>('[data-chart="rounds"] canvas')].map((c) => {
          const d = (c.getContext("2d") as CanvasRenderingContext2D).getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) n++;
          return n;
        }),
      );
      expect(errors).toEqual([]);
      expect(ink.some((n) => n > 100)).toBe(true); // coloured series were drawn
    } finally {
      await browser.close();
    }
  }, 60_000);

  it("with dirty-limit the same guest converges; the table form", () => {
    const r = run([...TINY, "--max-rounds", "8", "--modes", "ring:256", "--convergence", "dirty-limit:1MiB/s"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/\| ring:256 \| yes \|/);
    expect(r.stdout).toContain("convergence dirty-limit (1 MB/s per vCPU)");
  }, 60_000);

  it("--help exits 0", () => {
    const r = run(["--help"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("usage: dirtlog migrate");
  });

  const bad: Array<[string[], RegExp]> = [
    [["--memory", "8G"], /--memory "8G"/],
    [["--vcpus", "0"], /--vcpus "0"/],
    [["--workload", "random"], /--workload "random"/],
    [["--dirty-rate", "fast"], /--dirty-rate "fast"/],
    [["--modes", "ring:100"], /--modes "ring:100"/],
    [["--bandwidth", "10G"], /--bandwidth "10G": expected a bandwidth/],
    [["--downtime-limit", "300"], /--downtime-limit "300"/],
    [["--max-rounds", "-1"], /max-rounds/],
    [["--convergence", "throttle"], /--convergence "throttle"/],
    [["--convergence", "dirty-limit", "--modes", "bitmap"], /dirty-limit needs a dirty ring/],
    [["--preset", "qemu-2099"], /--preset "qemu-2099"/],
    [["--out", ""], /--out ""/],
    [["--frobnicate"], /frobnicate/],
  ];
  for (const [args, message] of bad) {
    it(`bad usage: ${args.join(" ")} → exit 2, one line`, () => {
      const r = run(args);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.stdout).toBe("");
    });
  }
});

describe("parseBandwidth", () => {
  it("reads bits, Ethernet and bytes per second", () => {
    expect(parseBandwidth("10Gbit")).toBe(1.25e9);
    expect(parseBandwidth("10GbE")).toBe(1.25e9);
    expect(parseBandwidth("1GbE")).toBe(1.25e8);
    expect(parseBandwidth("800Mbit/s")).toBe(1e8);
    expect(parseBandwidth("128MB/s")).toBe(128e6);
    expect(parseBandwidth("128MiB/s")).toBe(128 * 2 ** 20);
    for (const bad of ["10G", "fast", "0Gbit", "10 GB"]) expect(() => parseBandwidth(bad)).toThrow(/bandwidth/);
  });
});
