// The HTML report of `dirtlog compare`: rendered from a fixture result, opened from disk in
// headless Chromium with the network blocked, and checked for drawn charts and full tables.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type Browser, chromium, type Page } from "playwright";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CompareResult } from "../src/compare_types.js";
import { REPORT_CHART_COUNT, renderReportHtml } from "../src/report_html.js";

const artifacts = fileURLToPath(new URL("./artifacts/", import.meta.url));
const fixture: CompareResult = JSON.parse(
  readFileSync(new URL("./fixtures/compare-result.json", import.meta.url), "utf8"),
);

interface Ink {
  chart: string;
  /** Pixels anywhere on the canvas that are neither transparent nor white. */
  nonBlank: number;
  /** Coloured (saturated) pixels inside the plot area: drawn data, not axes or grid. */
  plotInk: number;
}

/** Reads every chart canvas back in the page and counts its pixels. */
function countInk(page: Page): Promise<Ink[]> {
  return page.evaluate(() =>
    [...document.querySelectorAll<HTMLElement>("[data-chart]")].flatMap((box) =>
      [...box.querySelectorAll("canvas")].map((canvas) => {
        const ctx = canvas.getContext("2d");
        if (!ctx) throw new Error("no 2d context");
        const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
        const [l, t, w, h] = (box.dataset.bbox ?? "0,0,0,0").split(",").map(Number);
        let nonBlank = 0;
        let plotInk = 0;
        for (let y = 0; y < canvas.height; y++) {
          for (let x = 0; x < canvas.width; x++) {
            const i = (y * canvas.width + x) * 4;
            const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
            if (a === 0 || (r > 250 && g > 250 && b > 250)) continue;
            nonBlank++;
            const inPlot = x >= l && x < l + w && y >= t && y < t + h;
            if (inPlot && a > 64 && Math.max(r, g, b) - Math.min(r, g, b) > 60) plotInk++;
          }
        }
        return { chart: box.dataset.chart ?? "?", nonBlank, plotInk };
      }),
    ),
  );
}

describe("compare HTML report", () => {
  let browser: Browser;
  beforeAll(async () => {
    mkdirSync(artifacts, { recursive: true });
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu"],
    });
  });
  afterAll(async () => {
    await browser?.close();
  });

  /** Writes the report, opens it with everything but file:// blocked, waits for the charts. */
  async function open(result: CompareResult, name: string) {
    const html = await renderReportHtml(result);
    const file = `${artifacts}${name}.html`;
    writeFileSync(file, html);
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const errors: string[] = [];
    const offline: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("request", (r) => {
      if (!r.url().startsWith("file:")) offline.push(r.url());
    });
    await page.route("**/*", (route) =>
      route.request().url().startsWith("file:") ? route.continue() : route.abort("blockedbyclient"),
    );
    await page.goto(pathToFileURL(file).href);
    await page.waitForSelector("body[data-charts]", { timeout: 10_000 });
    return { page, html, errors, offline };
  }

  it("draws every chart and table from the fixture, offline, without errors", async () => {
    const { page, html, errors, offline } = await open(fixture, "report");
    try {
      expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)=["']?(https?:)?\/\//i);
      expect(await page.getAttribute("body", "data-charts")).toBe(String(REPORT_CHART_COUNT));
      expect(await page.locator("[data-chart]").count()).toBe(REPORT_CHART_COUNT);

      const ink = await countInk(page);
      // One uPlot canvas per chart, each with something drawn on it and data in its plot area.
      expect(ink.map((c) => c.chart)).toEqual(["latency", "dirty-rate", "vcpu-rate", "tracking", "ns-per-page"]);
      for (const c of ink) {
        expect(c.nonBlank, c.chart).toBeGreaterThan(0);
        expect(c.plotInk, c.chart).toBeGreaterThan(50);
      }

      // A legend entry per series: a series per mode, per mode × {written, reported}, per mode × vCPU.
      const n = fixture.modes.length;
      const legend = (chart: string) => page.locator(`[data-chart="${chart}"] .u-legend .u-series`).count();
      expect(await legend("latency")).toBe(1 + n);
      expect(await legend("dirty-rate")).toBe(1 + 2 * n);
      expect(await legend("vcpu-rate")).toBe(1 + n * fixture.scenario.vcpus);

      expect(await page.locator("table[data-table=verdict] tbody tr").count()).toBe(fixture.verdict.length);
      expect(await page.locator("table[data-table=modes] tbody tr").count()).toBe(n);
      expect(await page.locator("table[data-table=correctness] tbody tr").count()).toBe(n);
      const verdictText = await page.locator("table[data-table=verdict]").innerText();
      for (const v of fixture.verdict) expect(verdictText).toContain(v.winner);
      expect(await page.locator("h1").innerText()).toContain("bitmap vs ring:4096 vs ring:65536");
      expect(await page.locator(".sub").first().innerText()).toContain("256 MiB");

      await page.screenshot({ path: `${artifacts}report.png`, fullPage: true });
      expect(errors).toEqual([]);
      expect(offline).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it("the report of a real `dirtlog compare --out` run draws every chart without errors", async () => {
    const out = mkdtempSync(join(tmpdir(), "dirtlog-report-"));
    try {
      const cli = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
      const args = ["compare", "--memory", "64MiB", "--duration", "400ms", "--interval", "100ms", "--modes", "bitmap,ring:256"];
      const r = spawnSync(process.execPath, [cli, ...args, "--out", out], { encoding: "utf8", timeout: 60_000 });
      expect(r.status).toBe(0);
      const result: CompareResult = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
      const { page, errors, offline } = await open(result, "report-cli");
      try {
        expect(readFileSync(`${artifacts}report-cli.html`, "utf8")).toBe(readFileSync(join(out, "report.html"), "utf8"));
        for (const c of await countInk(page)) expect(c.plotInk, c.chart).toBeGreaterThan(50);
        await page.screenshot({ path: `${artifacts}report-cli.png`, fullPage: true });
        expect(errors).toEqual([]);
        expect(offline).toEqual([]);
      } finally {
        await page.close();
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("the ink check fails on a report with no timeline data (negative control)", async () => {
    const empty: CompareResult = structuredClone(fixture);
    for (const m of empty.modes) {
      m.timeline = [];
      m.vcpuStores = [];
    }
    // `</script>` in a string must not break the page out of its JSON.
    empty.verdict[0].text = "</script><script>console.error('escaped')</script>";
    const { page, errors, offline } = await open(empty, "report-empty");
    try {
      expect(await page.getAttribute("body", "data-charts")).toBe(String(REPORT_CHART_COUNT));
      const ink = Object.fromEntries((await countInk(page)).map((c) => [c.chart, c]));
      // The time-series charts have nothing to draw: both checks see them blank, and the page says so.
      for (const chart of ["latency", "dirty-rate", "vcpu-rate"]) {
        expect(ink[chart].plotInk, chart).toBe(0);
        expect(ink[chart].nonBlank, chart).toBe(0);
      }
      expect(await page.locator("[data-chart] .nodata").count()).toBe(3);
      // The per-mode bar charts do not depend on the timeline and still pass.
      expect(ink.tracking.plotInk).toBeGreaterThan(50);
      expect(ink["ns-per-page"].plotInk).toBeGreaterThan(50);
      expect(await page.locator("table[data-table=verdict] tbody tr").first().innerText()).toContain("</script>");
      expect(errors).toEqual([]);
      expect(offline).toEqual([]);
    } finally {
      await page.close();
    }
  });
});
