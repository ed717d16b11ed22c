// The demo page (web/) end to end in headless Chromium: the static site `npm run demo:build`
// produces, served by a plain node:http server that sets the two cross-origin isolation
// headers (what a user deploys), and the Vite dev server of `npm run demo`. A short
// comparison is set through the controls and run: the verdict table has a row per mode,
// every chart and both mechanism views drew, and nothing was logged as an error. Served
// without the headers (or with a CSP that forbids WebAssembly) the page says what is missing
// and how to fix it instead of failing. Screenshots go to test/artifacts/ (not committed).
// Needs the package built (`npm run build`: dist/ and build/dirtlog.wasm).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { type Server, createServer as createHttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, type Page, chromium } from "playwright";
import { createServer as createViteServer, type ViteDevServer } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const repo = fileURLToPath(new URL("../../", import.meta.url));
const site = join(repo, "web", "dist");
const artifacts = join(repo, "test", "artifacts");
const ISOLATION = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};
const MIME: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

/** A minimal static server for web/dist, with the given extra headers. */
function serveStatic(headers: Record<string, string>): Promise<{ url: string; server: Server }> {
  const server = createHttpServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const file = normalize(join(site, path.endsWith("/") ? `${path}index.html` : path));
    if (!file.startsWith(site + sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": MIME[extname(file)] ?? "application/octet-stream", ...headers });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, server });
    }),
  );
}

const close = (s: Server) => new Promise<void>((r) => s.close(() => r()));

/** Console errors, page errors and failed requests of a page (workers' console messages included). */
function watch(page: Page): string[] {
  const problems: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console.error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  return problems;
}

interface Ink {
  name: string;
  drawn: boolean;
  /** Saturated pixels (drawn data, not axes, grid or text) inside the plot area. */
  ink: number;
}

/** Reads back every chart canvas (inside its plot box) and both views. */
function readInk(page: Page): Promise<Ink[]> {
  return page.evaluate(() => {
    const count = (canvas: HTMLCanvasElement, box?: number[]) => {
      const ctx = canvas.getContext("2d");
      if (!ctx) return 0;
      const { data, width, height } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const [l, t, w, h] = box ?? [0, 0, width, height];
      let n = 0;
      for (let y = t; y < Math.min(height, t + h); y++) {
        for (let x = l; x < Math.min(width, l + w); x++) {
          const i = (y * width + x) * 4;
          const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
          if (a > 64 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
        }
      }
      return n;
    };
    const charts = [...document.querySelectorAll<HTMLElement>("[data-chart]")].map((box) => {
      const canvas = box.querySelector("canvas");
      const bbox = (box.dataset.bbox ?? "0,0,0,0").split(",").map(Number);
      return {
        name: box.dataset.chart ?? "?",
        drawn: box.dataset.drawn === "1",
        ink: canvas ? count(canvas, bbox) : 0,
      };
    });
    const views = ["ring-view", "bitmap-view"].map((id) => {
      const canvas = document.getElementById(id) as HTMLCanvasElement;
      return { name: id, drawn: canvas.dataset.drawn === "1", ink: count(canvas) };
    });
    return [...charts, ...views];
  });
}

/** Sets a short comparison through the controls, runs it and checks what the page shows. */
async function runShortComparison(page: Page, url: string, screenshot: string): Promise<void> {
  const problems = watch(page);
  await page.goto(url);
  await page.waitForSelector("body[data-state=ready]", { timeout: 15_000 });
  expect(await page.isVisible("#capabilities")).toBe(false);
  await page.selectOption("#memory", String(64 << 20));
  await page.fill("#vcpus", "2");
  await page.selectOption("#workload", "uniform");
  await page.fill("#rate", "20000");
  await page.fill("#modes", "bitmap,ring:1024");
  await page.fill("#duration", "1");
  await page.fill("#interval", "100");
  await page.click("#run");
  await page.waitForSelector("body[data-state=running]", { timeout: 5_000 });
  // live: a chart draws while the first mode runs, before the result exists
  await page.waitForSelector('[data-chart="latency"][data-drawn="1"]', { timeout: 15_000 });
  expect(await page.getAttribute("body", "data-state")).toBe("running");
  await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: 45_000 });
  expect(await page.textContent("#run-error")).toBe("");
  expect(await page.getAttribute("body", "data-state")).toBe("done");

  // the verdict table: one row per mode, in order, each correct
  const rows = await page.$$eval("#verdict tbody tr", (trs) =>
    trs.map((tr) => ({
      mode: (tr as HTMLElement).dataset.mode,
      cells: tr.querySelectorAll("td").length,
      text: tr.textContent,
    })),
  );
  expect(rows.map((r) => r.mode)).toEqual(["bitmap", "ring:1024"]);
  for (const r of rows) {
    expect(r.text).toContain("✓ ok");
    expect(r.cells).toBeGreaterThan(5);
  }
  expect(await page.$$eval("#verdict-lines li", (lis) => lis.length)).toBeGreaterThan(0);

  // every chart and both views drew, with data (saturated pixels in the plot area)
  const ink = await readInk(page);
  expect(ink.map((c) => c.name)).toEqual(["latency", "dirty-rate", "vcpu-rate", "ring-view", "bitmap-view"]);
  for (const c of ink) {
    expect(c.drawn, c.name).toBe(true);
    expect(c.ink, c.name).toBeGreaterThan(50);
  }
  expect(await page.textContent("#ring-stats")).toMatch(/dirty_index \d+ · reset_index \d+ .*soft limit 960/);
  // 64 MiB = 16384 pages = 256 bitmap words: each GET returns all of them
  const bitmapStats = (await page.textContent("#bitmap-stats")) ?? "";
  const gets = /(\d+) GET/.exec(bitmapStats);
  const words = /([\d,]+) words returned/.exec(bitmapStats);
  expect(gets && words, bitmapStats).toBeTruthy();
  expect(Number(words?.[1].replace(/,/g, ""))).toBe(256 * Number(gets?.[1]));
  await page.screenshot({ path: join(artifacts, screenshot), fullPage: true });
  expect(problems).toEqual([]);
}

describe("the demo page (web/) in Chromium", () => {
  let browser: Browser;

  beforeAll(async () => {
    for (const f of ["dist/index.js", "dist/compare.js", "dist/vcpu-worker.js", "build/dirtlog.wasm"]) {
      if (!existsSync(join(repo, f))) throw new Error(`${f} is missing: run npm run build first`);
    }
    mkdirSync(artifacts, { recursive: true });
    // what `npm run demo:build` runs
    const vite = join(repo, "node_modules", "vite", "bin", "vite.js");
    const built = spawnSync(process.execPath, [vite, "build", "--config", "web/vite.config.ts", "--logLevel", "warn"], {
      cwd: repo,
      encoding: "utf8",
      timeout: 60_000,
    });
    if (built.status !== 0) throw new Error(`demo:build failed:\n${built.stdout}\n${built.stderr}`);
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu"],
    });
  });

  afterAll(async () => {
    await browser?.close();
  });

  it("the built site (npm run demo:build) from a static server with the two headers runs a short comparison", async () => {
    const { url, server } = await serveStatic(ISOLATION);
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    try {
      await runShortComparison(page, url, "demo.png");
    } finally {
      await page.close();
      await close(server);
    }
  });

  it("the dev server (npm run demo) runs the same comparison", async () => {
    const server: ViteDevServer = await createViteServer({
      configFile: join(repo, "web", "vite.config.ts"),
      server: { port: 0, host: "127.0.0.1", strictPort: false },
      logLevel: "error",
    });
    await server.listen();
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    try {
      const url = server.resolvedUrls?.local[0];
      if (!url) throw new Error("the dev server has no URL");
      await runShortComparison(page, url, "demo-dev.png");
    } finally {
      await page.close();
      await server.close();
    }
  });

  it("served without the two headers, it names both and does not start", async () => {
    const { url, server } = await serveStatic({});
    const page = await browser.newPage({ viewport: { width: 1280, height: 700 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    try {
      await page.goto(url);
      await page.waitForSelector("body[data-state=unsupported]", { timeout: 15_000 });
      expect(await page.isVisible("#capabilities")).toBe(true);
      const problems = await page.textContent("#capability-problems");
      expect(problems).toContain("not cross-origin isolated");
      expect(problems).toContain("Cross-Origin-Opener-Policy: same-origin");
      expect(problems).toContain("Cross-Origin-Embedder-Policy: require-corp");
      expect(await page.isDisabled("#run")).toBe(true);
      await page.screenshot({ path: join(artifacts, "demo-no-headers.png"), fullPage: true });
      expect(errors).toEqual([]);
    } finally {
      await page.close();
      await close(server);
    }
  });

  it("with a CSP that forbids WebAssembly, it names 'wasm-unsafe-eval' and does not start", async () => {
    const { url, server } = await serveStatic({ ...ISOLATION, "Content-Security-Policy": "script-src 'self'" });
    const page = await browser.newPage();
    try {
      await page.goto(url);
      await page.waitForSelector("body[data-state=unsupported]", { timeout: 15_000 });
      const problems = await page.textContent("#capability-problems");
      expect(problems).toContain("script-src 'wasm-unsafe-eval'");
      expect(problems).not.toContain("cross-origin isolated");
      expect(await page.isDisabled("#run")).toBe(true);
    } finally {
      await page.close();
      await close(server);
    }
  });
});
