// The package as a new user gets it (issue #12, "The package"): `npm pack` once, install the
// tarball once into a fresh temporary project (no network: --prefer-offline, its
// dependencies are in npm's cache after `npm ci`), then use it every way a user would —
// Node ESM, CommonJS require(), TypeScript strict without skipLibCheck (with and without
// the DOM lib), Vite build and dev, esbuild, Rollup — and run the browser builds in headless
// Chromium, on the page and in a Web Worker of the user's that imports the package itself.
//
// Needs the package built (`npm run build`; `npm test` does it first). The tarball is packed
// with --ignore-scripts (its prepack would rebuild dist/ under the other test files);
// DIRTLOG_TARBALL=path.tgz tests a given tarball instead (e.g. an older release, to see these
// tests fail on what was broken). DIRTLOG_KEEP_TMP=1 keeps the temporary project.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { nodeResolve } from "@rollup/plugin-node-resolve";
import { build as esbuild } from "esbuild";
import { type Browser, chromium } from "playwright";
import { rollup } from "rollup";
import { createLogger, createServer as createViteServer } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Ran, ISOLATION, TINY_VM_OK, run, runPage, serveStatic, webApp } from "./harness.js";

const repo = fileURLToPath(new URL("../../", import.meta.url));
const repoPkg = JSON.parse(readFileSync(join(repo, "package.json"), "utf8"));
const bin = (name: string) => join(repo, "node_modules", ".bin", name);
/** The Node lines that can require() an ES module without a flag. */
const ENGINES = "^20.19.0 || >=22.12.0";

let tmp: string;
let app: string;
let tarball: string;
let install: Ran;
let browser: Browser | undefined;

function write(dir: string, files: Record<string, string>): string {
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

async function chromiumBrowser(): Promise<Browser> {
  browser ??= await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
    ],
  });
  return browser;
}

/** Serve a built site and run the demo app in it: on the page and in the user's Web Worker. */
async function runBuiltSite(dir: string): Promise<void> {
  const server = await serveStatic(dir);
  try {
    const { result, problems } = await runPage(await chromiumBrowser(), server.url);
    expect({ result, problems }).toEqual({
      result: { crossOriginIsolated: true, page: TINY_VM_OK, worker: TINY_VM_OK },
      problems: [],
    });
  } finally {
    await server.close();
  }
}

/** Every JS file under `dir`, with its text. */
function jsFiles(dir: string): Array<[string, string]> {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".js"))
    .map((f) => [f, readFileSync(join(dir, f), "utf8")]);
}

/** An import of a `node:` module in built code (static, dynamic, or a re-export). */
const NODE_IMPORT = /(?:from\s*|import\s*\(?\s*)["']node:/;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "dirtlog-package-"));
  if (process.env.DIRTLOG_TARBALL) {
    tarball = resolve(process.env.DIRTLOG_TARBALL);
  } else {
    const packed = await run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", tmp], repo);
    expect(packed.code, packed.output).toBe(0);
    tarball = join(tmp, JSON.parse(packed.stdout)[0].filename);
  }
  app = write(join(tmp, "app"), {
    "package.json": JSON.stringify({ name: "dirtlog-user", private: true, type: "module" }),
  });
  install = await run(
    "npm",
    [
      "install",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
      tarball,
      `@types/node@${repoPkg.devDependencies["@types/node"]}`,
    ],
    app,
  );
  expect(install.code, install.output).toBe(0);
}, 180_000);

afterAll(async () => {
  await browser?.close();
  if (tmp && !process.env.DIRTLOG_KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
});

describe("the tarball", () => {
  it("holds the built JS with .d.ts and declaration maps (and the sources they map to), the core, the worker, README, LICENSE, CHANGELOG; nothing else", async () => {
    const list = await run("tar", ["-tzf", tarball], tmp);
    expect(list.code, list.output).toBe(0);
    const files = list.stdout
      .split("\n")
      .filter(Boolean)
      .map((f) => f.replace(/^package\//, ""))
      .sort();
    for (const need of [
      "package.json",
      "README.md",
      "LICENSE",
      "CHANGELOG.md",
      "build/dirtlog.wasm",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/index.d.ts.map",
      "dist/vcpu-worker.js",
      "dist/platform-node.js",
      "dist/platform-browser.js",
      "dist/cli.js",
    ]) {
      expect(files, need).toContain(need);
    }
    const stray = files.filter(
      (f) =>
        !/^(package\.json|README\.md|LICENSE|CHANGELOG\.md|build\/dirtlog\.wasm|dist\/[\w-]+\.(js|d\.ts|d\.ts\.map)|src\/[\w-]+\.ts)$/.test(
          f,
        ),
    );
    expect(stray).toEqual([]);
    // the declaration maps point at the TypeScript sources: they ship too ("go to definition")
    const maps = files.filter((f) => f.endsWith(".d.ts.map"));
    const sources = maps.map((f) => `src/${f.slice("dist/".length, -".d.ts.map".length)}.ts`);
    expect(sources.filter((f) => !files.includes(f))).toEqual([]);
    const js = files.filter((f) => f.endsWith(".js"));
    const withoutTypes = js.filter(
      (f) => !files.includes(f.replace(/\.js$/, ".d.ts")) || !files.includes(f.replace(/\.js$/, ".d.ts.map")),
    );
    expect(withoutTypes).toEqual([]);
    expect(readFileSync(join(app, "node_modules/dirtlog/LICENSE"), "utf8")).toMatch(
      /^MIT License\n\nCopyright \(c\) 2026 the dirtlog authors\n/,
    );
  });

  it("installs without running a script (built in prepack, not prepare) and declares what tools read", () => {
    expect(install.output).not.toMatch(/install-scripts|allowScripts|prepare/i);
    const pkg = JSON.parse(readFileSync(join(app, "node_modules/dirtlog/package.json"), "utf8"));
    const installTime = Object.keys(pkg.scripts ?? {}).filter((s) => /^(pre|post)?(install|prepare)$/.test(s));
    expect(installTime).toEqual([]);
    expect(pkg.scripts.prepack).toMatch(/npm run build/);
    expect(pkg.sideEffects).toBe(false);
    expect(pkg.license).toBe("MIT");
    expect(pkg.repository?.url).toMatch(/^git\+https:\/\//);
    expect(pkg.keywords).toEqual(expect.arrayContaining(["kvm", "dirty-ring", "webassembly"]));
    // require(esm) is unflagged from 20.19 and 22.12: engines admits exactly those lines
    expect(pkg.engines).toEqual({ node: ENGINES });
    const [major, minor] = process.versions.node.split(".").map(Number);
    expect(major > 22 || (major === 22 && minor >= 12) || (major === 20 && minor >= 19)).toBe(true);
    // platform code by condition: the browser and default conditions never reach node:
    expect(pkg.imports["#platform"]).toEqual({
      browser: "./dist/platform-browser.js",
      node: "./dist/platform-node.js",
      default: "./dist/platform-browser.js",
    });
    for (const f of ["platform-browser.js", "index.js", "vcpu-worker.js", "core.js"]) {
      expect(readFileSync(join(app, "node_modules/dirtlog/dist", f), "utf8"), f).not.toMatch(NODE_IMPORT);
    }
  });
});

describe("Node", () => {
  const tinyVm = (imp: string) => `${imp}
function pagesOf(bitmap) {
  const pages = [];
  for (let i = 0; i < bitmap.length * 8; i++) if ((bitmap[i >> 3] >> (i & 7)) & 1) pages.push(i);
  return pages;
}
(async () => {
  const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 64 * 4096 });
  const vcpu = vm.createVcpu(0);
  vcpu.writeGuest(3 * 4096, 1n);
  const direct = pagesOf(vm.getDirtyLog(0));
  vcpu.setWorkload({ pattern: "sequential", gpa: 16 * 4096, pages: 4, batch: 4 });
  await vcpu.spawn();
  const exitIo = (await vcpu.run()) === KVM_EXIT_IO;
  const threaded = pagesOf(vm.getDirtyLog(0));
  await vm.close();
  console.log(JSON.stringify({ direct, exitIo, threaded }));
})();
`;

  it("ESM: import, a VM, a write from this thread and a vCPU worker thread, the dirty pages", async () => {
    write(app, {
      "esm.mjs": tinyVm(`import { KVM_EXIT_IO, KVM_MEM_LOG_DIRTY_PAGES, createVm } from "dirtlog";`),
    });
    const r = await run(process.execPath, ["esm.mjs"], app);
    expect(r.code, r.output).toBe(0);
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual(TINY_VM_OK);
  });

  it(`CommonJS: require("dirtlog") works on this Node (${process.version}), without a warning`, async () => {
    write(app, {
      "cjs.cjs": tinyVm(`const { KVM_EXIT_IO, KVM_MEM_LOG_DIRTY_PAGES, createVm } = require("dirtlog");`),
    });
    const r = await run(process.execPath, ["cjs.cjs"], app);
    expect(r.code, r.output).toBe(0);
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual(TINY_VM_OK);
  });

  it("the dirtlog command runs from the install", async () => {
    const r = await run(process.execPath, [join(app, "node_modules/.bin/dirtlog"), "--help"], app);
    expect(r.code, r.output).toBe(0);
    expect(r.stdout).toMatch(/usage: dirtlog compare/);
  });
});

describe("TypeScript: strict, skipLibCheck false", () => {
  const check = `import {
  type CoreSource,
  type DirtyLogTestResult,
  type Vm,
  KVM_MEM_LOG_DIRTY_PAGES,
  KvmError,
  capabilities,
  createVm,
  harvestDirtyRings,
  runDirtyLogTest,
} from "dirtlog";

const sources: CoreSource[] = [new URL("https://example.com/dirtlog.wasm"), "./dirtlog.wasm", new Uint8Array(8), new ArrayBuffer(8)];
export async function demo(): Promise<number> {
  const vm: Vm = await createVm({ maxMemoryBytes: 64 << 20, wasm: sources[0], workerUrl: new URL("https://example.com/w.js") });
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 1 << 20 });
  const bitmap: Uint8Array = vm.getDirtyLog(0);
  const offsets: Float64Array | undefined = harvestDirtyRings(vm).offsets.get(0);
  const module = vm.module;
  const memory = vm.memory;
  const r: DirtyLogTestResult = await runDirtyLogTest({ mode: "dirty-ring", wasm: module });
  const e = new KvmError("EINVAL", "demo");
  await vm.close();
  return bitmap.length + (offsets?.length ?? 0) + r.lost + e.code + (capabilities().ok ? 1 : 0) + (memory ? 1 : 0);
}
`;
  const configs: Record<string, object> = {
    // what the issue reported broken: Node types, no DOM
    "Node: lib ES2022 + @types/node, NodeNext": {
      lib: ["ES2022"],
      types: ["node"],
      module: "NodeNext",
      moduleResolution: "NodeNext",
    },
    "Node + DOM: lib ES2022 + DOM + @types/node, NodeNext": {
      lib: ["ES2022", "DOM", "DOM.Iterable"],
      types: ["node"],
      module: "NodeNext",
      moduleResolution: "NodeNext",
    },
    "browser: lib ES2022 + DOM, bundler resolution, no @types/node": {
      lib: ["ES2022", "DOM", "DOM.Iterable"],
      types: [],
      module: "ESNext",
      moduleResolution: "Bundler",
    },
    "Web Worker: lib ES2022 + WebWorker, bundler resolution": {
      lib: ["ES2022", "WebWorker"],
      types: [],
      module: "ESNext",
      moduleResolution: "Bundler",
    },
  };

  it("compiles against the published .d.ts under every config", async () => {
    const dir = write(join(app, "ts"), { "check.ts": check });
    const names = Object.keys(configs);
    names.forEach((name, i) => {
      const compilerOptions = { target: "ES2022", strict: true, skipLibCheck: false, noEmit: true, ...configs[name] };
      writeFileSync(join(dir, `tsconfig.${i}.json`), JSON.stringify({ compilerOptions, files: ["check.ts"] }));
    });
    const results = await Promise.all(names.map((_, i) => run(bin("tsc"), ["-p", `tsconfig.${i}.json`], dir)));
    const failures = names.flatMap((name, i) =>
      results[i].code === 0 ? [] : [`${name}:\n${results[i].stdout}${results[i].stderr}`],
    );
    expect(failures).toEqual([]);
  });
});

describe("bundlers, run in headless Chromium (page and a Web Worker that imports the package)", () => {
  it("Vite build, no config: no node: module externalized, the core and the worker emitted; the site runs", async () => {
    const root = write(join(app, "vite"), webApp("export const VM_OPTIONS = {};\n"));
    const r = await run(process.execPath, [join(repo, "node_modules/vite/bin/vite.js"), "build"], root);
    expect(r.code, r.output).toBe(0);
    // the issue: 'Module "node:fs/promises" has been externalized for browser compatibility'
    expect(r.output).not.toMatch(/externalized|node:|doesn't exist at build time/);
    const out = join(root, "dist");
    const assets = readdirSync(join(out, "assets"));
    expect(assets.filter((f) => /^dirtlog-[\w-]+\.wasm$/.test(f))).toHaveLength(1);
    expect(assets.filter((f) => /^vcpu-worker-[\w-]+\.js$/.test(f))).toHaveLength(1);
    expect(jsFiles(out).filter(([, text]) => NODE_IMPORT.test(text))).toEqual([]);
    await runBuiltSite(out);
  });

  it("Vite dev server, no config beyond the two headers (dependency pre-bundling on)", async () => {
    const root = write(join(app, "vite"), webApp("export const VM_OPTIONS = {};\n"));
    const logger = createLogger("warn", { allowClearScreen: false });
    const warnings: string[] = [];
    logger.warn = (msg) => warnings.push(msg);
    logger.warnOnce = (msg) => warnings.push(msg);
    logger.error = (msg) => warnings.push(msg);
    const server = await createViteServer({
      root,
      configFile: false,
      customLogger: logger,
      server: { port: 0, host: "127.0.0.1", headers: ISOLATION },
    });
    try {
      await server.listen();
      const url = server.resolvedUrls?.local[0];
      expect(url).toBeDefined();
      const { result, problems } = await runPage(await chromiumBrowser(), url as string);
      expect({ result, problems, warnings }).toEqual({
        result: { crossOriginIsolated: true, page: TINY_VM_OK, worker: TINY_VM_OK },
        problems: [],
        warnings: [],
      });
    } finally {
      await server.close();
    }
  });

  it("esbuild --bundle --format=esm --platform=browser: dirtlog/vcpu-worker as an entry, the core via createVm({ wasm })", async () => {
    const src = write(
      join(app, "esbuild-src"),
      webApp('export const VM_OPTIONS = { wasm: new URL("./dirtlog.wasm", import.meta.url) };\n'),
    );
    const out = join(app, "esbuild-out");
    // = esbuild main=./main.js user-worker=./user-worker.js vcpu-worker=dirtlog/vcpu-worker
    //     --bundle --format=esm --platform=browser --outdir=out
    const result = await esbuild({
      absWorkingDir: src,
      entryPoints: [
        { in: "./main.js", out: "main" },
        { in: "./user-worker.js", out: "user-worker" },
        { in: "dirtlog/vcpu-worker", out: "vcpu-worker" },
      ],
      bundle: true,
      format: "esm",
      platform: "browser",
      outdir: out,
      logLevel: "silent",
    });
    expect({ errors: result.errors, warnings: result.warnings }).toEqual({ errors: [], warnings: [] });
    expect(jsFiles(out).filter(([, text]) => NODE_IMPORT.test(text))).toEqual([]);
    copyFileSync(join(app, "node_modules/dirtlog/build/dirtlog.wasm"), join(out, "dirtlog.wasm"));
    copyFileSync(join(src, "index.html"), join(out, "index.html"));
    await runBuiltSite(out);
  });

  it("Rollup + @rollup/plugin-node-resolve: the worker as an entry of another name, createVm({ wasm, workerUrl })", async () => {
    const src = write(
      join(app, "rollup-src"),
      webApp(
        'export const VM_OPTIONS = { wasm: new URL("./dirtlog.wasm", import.meta.url), workerUrl: new URL("./dirtlog-vcpu.js", import.meta.url) };\n',
      ),
    );
    const out = join(app, "rollup-out");
    const warnings: string[] = [];
    const bundle = await rollup({
      input: {
        main: join(src, "main.js"),
        "user-worker": join(src, "user-worker.js"),
        "dirtlog-vcpu": "dirtlog/vcpu-worker",
      },
      plugins: [nodeResolve({ rootDir: src })],
      onwarn: (w) => warnings.push(w.message),
    });
    await bundle.write({ dir: out, format: "es", entryFileNames: "[name].js" });
    await bundle.close();
    expect(warnings).toEqual([]);
    expect(jsFiles(out).filter(([, text]) => NODE_IMPORT.test(text))).toEqual([]);
    copyFileSync(join(app, "node_modules/dirtlog/build/dirtlog.wasm"), join(out, "dirtlog.wasm"));
    copyFileSync(join(src, "index.html"), join(out, "index.html"));
    await runBuiltSite(out);
  });
});
