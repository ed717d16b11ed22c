// Helpers for the package tests: child processes with a clean npm environment, a static
// server with the cross-origin isolation headers, and a headless Chromium page runner.
import { spawn } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize, sep } from "node:path";
import type { Browser } from "playwright";

export const ISOLATION = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout and stderr, for messages. */
  output: string;
}

/**
 * Run a command to completion. The npm_* variables of an enclosing `npm test` are dropped,
 * so a nested npm sees the temporary project, not this repository.
 */
export function run(cmd: string, args: string[], cwd: string, timeoutMs = 120_000): Promise<Ran> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k) && k !== "INIT_CWD") env[k] = v;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, output: `$ ${cmd} ${args.join(" ")}\n${stdout}${stderr}` });
    });
  });
}

const MIME: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
};

/** Serve `root` (what a user deploys: a plain static server that sets the two headers). */
export function serveStatic(root: string): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const file = normalize(join(root, path.endsWith("/") ? `${path}index.html` : path));
    if (!file.startsWith(root + sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { "content-type": "text/plain", ...ISOLATION }).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": MIME[extname(file)] ?? "application/octet-stream", ...ISOLATION });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
        close: () => new Promise<void>((r) => server.close(() => r())),
      }),
    ),
  );
}

export interface PageRun {
  /** What the page wrote into #out, parsed (or { error } when it wrote nothing in time). */
  result: Record<string, unknown>;
  /** Console errors, page errors and failed requests (workers' included). */
  problems: string[];
}

/** Open `url`, wait until the page has written its result into #out, return it. */
export async function runPage(browser: Browser, url: string, timeoutMs = 60_000): Promise<PageRun> {
  const page = await browser.newPage();
  const problems: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ""}`));
  page.on("response", (r) => {
    if (r.status() >= 400 && !r.url().endsWith("/favicon.ico")) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  try {
    await page.goto(url);
    try {
      await page.waitForFunction(() => document.getElementById("out")?.textContent !== "pending", null, {
        timeout: timeoutMs,
      });
    } catch {
      return { result: { error: "the page wrote no result in time" }, problems };
    }
    const text = (await page.textContent("#out")) ?? "";
    try {
      return { result: JSON.parse(text), problems };
    } catch {
      return { result: { error: text }, problems };
    }
  } finally {
    await page.close();
  }
}

/**
 * The demo app every bundler builds: a page that runs a tiny VM (one write from the page,
 * then a vCPU thread of its own: the package's vcpu-worker) and then a Web Worker of its
 * own that imports the package and does the same; both results go into #out as JSON.
 * `options` is the module that gives createVm's extra options (none for Vite).
 */
export function webApp(options: string): Record<string, string> {
  return {
    "index.html": `<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>dirtlog package test</title></head>
<body><pre id="out">pending</pre><script type="module" src="./main.js"></script></body></html>
`,
    "options.js": options,
    "run.js": `import { KVM_EXIT_IO, KVM_MEM_LOG_DIRTY_PAGES, createVm } from "dirtlog";
import { VM_OPTIONS } from "./options.js";

function pagesOf(bitmap) {
  const pages = [];
  for (let i = 0; i < bitmap.length * 8; i++) if ((bitmap[i >> 3] >> (i & 7)) & 1) pages.push(i);
  return pages;
}

export async function runTinyVm() {
  const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20, ...VM_OPTIONS });
  try {
    vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 64 * 4096 });
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(3 * 4096, 1n);
    const direct = pagesOf(vm.getDirtyLog(0));
    vcpu.setWorkload({ pattern: "sequential", gpa: 16 * 4096, pages: 4, batch: 4 });
    await vcpu.spawn();
    const exitIo = (await vcpu.run()) === KVM_EXIT_IO;
    return { direct, exitIo, threaded: pagesOf(vm.getDirtyLog(0)) };
  } finally {
    await vm.close();
  }
}
`,
    "main.js": `import { runTinyVm } from "./run.js";

const out = document.getElementById("out");
async function main() {
  const page = await runTinyVm();
  const worker = new Worker(new URL("./user-worker.js", import.meta.url), { type: "module" });
  const inWorker = await new Promise((resolve, reject) => {
    worker.addEventListener("message", (e) => resolve(e.data));
    worker.addEventListener("error", (e) => reject(new Error(e.message || "the user's worker failed to load")));
  });
  worker.terminate();
  return { crossOriginIsolated, page, worker: inWorker };
}
main().then(
  (r) => { out.textContent = JSON.stringify(r); },
  (e) => { out.textContent = JSON.stringify({ error: String((e && e.stack) || e) }); },
);
`,
    "user-worker.js": `import { runTinyVm } from "./run.js";

runTinyVm().then(
  (r) => postMessage(r),
  (e) => postMessage({ error: String((e && e.stack) || e) }),
);
`,
  };
}

/** What runTinyVm reports when everything works, on the page and in the user's worker. */
export const TINY_VM_OK = { direct: [3], exitIo: true, threaded: [16, 17, 18, 19] };
