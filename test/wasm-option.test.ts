// createVm({ wasm }): the core as a compiled WebAssembly.Module, its bytes or its URL, for
// bundlers and CSPs that place build/dirtlog.wasm elsewhere. Each form runs a VM (and a
// vCPU worker, which gets the compiled module posted); bytes and URLs are compiled once per
// object or URL; what is not a dirtlog core is EINVAL with the reason, a missing file ENOENT,
// and a failed load is not cached.
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KVM_EXIT_IO, KVM_MEM_LOG_DIRTY_PAGES, KvmError, type VmOptions, coreModule, createVm } from "../src/index.js";
import { memoryPoolStats } from "../src/vm.js";
import { pagesOf } from "./helpers.js";

const coreUrl = new URL(
  process.env.DIRTLOG_CORE === "debug" ? "../build/dirtlog.debug.wasm" : "../build/dirtlog.wasm",
  import.meta.url,
);
const coreBytes = readFileSync(coreUrl);
const SMALL = { maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 };

/** A VM from `wasm`: a write from this thread, then a vCPU thread's; the dirty pages. */
async function tinyVm(wasm: VmOptions["wasm"]) {
  const vm = await createVm({ ...SMALL, wasm });
  try {
    vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 64 * 4096 });
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(3 * 4096, 1n);
    const direct = pagesOf(vm.getDirtyLog(0));
    vcpu.setWorkload({ pattern: "sequential", gpa: 16 * 4096, pages: 4, batch: 4 });
    await vcpu.spawn();
    const exit = await vcpu.run();
    return { module: vm.module, direct, exit, threaded: pagesOf(vm.getDirtyLog(0)) };
  } finally {
    await vm.close();
  }
}

async function rejection(p: Promise<unknown>): Promise<KvmError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(KvmError);
  return e as KvmError;
}

let server: Server;
let http: string;
let tmp: string;
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "dirtlog-wasm-"));
  server = createServer((req, res) => {
    switch (req.url) {
      case "/core.wasm":
        res.writeHead(200, { "content-type": "application/wasm" }).end(coreBytes);
        break;
      case "/core.bin": // the right bytes, a careless content type: compiled from a buffer
        res.writeHead(200, { "content-type": "application/octet-stream" }).end(coreBytes);
        break;
      case "/spa/dirtlog.wasm": // a dev server's fallback page
        res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><html></html>");
        break;
      default:
        res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  http = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
  rmSync(tmp, { recursive: true, force: true });
});

describe("createVm({ wasm }) takes the core in every form", () => {
  const expected = { direct: [3], exit: KVM_EXIT_IO, threaded: [16, 17, 18, 19] };

  it("a compiled WebAssembly.Module (as before)", async () => {
    const module = await coreModule();
    expect(await tinyVm(module)).toEqual({ module, ...expected });
  });

  it("bytes: a Buffer, a Uint8Array, an ArrayBuffer, a DataView, a view of shared memory", async () => {
    const shared = new Uint8Array(new SharedArrayBuffer(coreBytes.byteLength));
    shared.set(coreBytes);
    const copy = new Uint8Array(coreBytes);
    for (const bytes of [coreBytes, copy, copy.buffer, new DataView(copy.buffer), shared]) {
      const { module: _, ...r } = await tinyVm(bytes);
      expect(r, bytes.constructor.name).toEqual(expected);
    }
  });

  it("URLs: a file: URL, its string, a data: URL, http: (application/wasm or not)", async () => {
    const data = `data:application/wasm;base64,${coreBytes.toString("base64")}`;
    for (const url of [coreUrl, coreUrl.href, data, `${http}/core.wasm`, new URL(`${http}/core.bin`)]) {
      const { module: _, ...r } = await tinyVm(url);
      expect(r, String(url).slice(0, 40)).toEqual(expected);
    }
  });

  it("compiles once per bytes object and per URL: the same module, so disposed VMs' memories are reused", async () => {
    const bytes = new Uint8Array(coreBytes);
    const a = await createVm({ ...SMALL, wasm: bytes });
    a.dispose();
    const before = memoryPoolStats();
    const b = await createVm({ ...SMALL, wasm: bytes });
    expect(b.module).toBe(a.module);
    expect(memoryPoolStats().reused).toBe(before.reused + 1);
    b.dispose();
    const c = await createVm({ ...SMALL, wasm: `${http}/core.wasm` });
    const d = await createVm({ ...SMALL, wasm: new URL(`${http}/core.wasm`) });
    expect(d.module).toBe(c.module);
    c.dispose();
    d.dispose();
  });
});

describe("createVm({ wasm }) refuses what is not a dirtlog core, with the reason", () => {
  it("EINVAL for other types, empty bytes, a relative URL (Node has no page to resolve it against)", async () => {
    for (const [wasm, reason] of [
      [{}, /wasm must be the core as a compiled WebAssembly\.Module, its bytes .* or its URL/],
      [null, /wasm must be/],
      [42, /wasm must be/],
      [new SharedArrayBuffer(8), /wasm must be/],
      [new Uint8Array(0), /the bytes are empty/],
      ["build/dirtlog.wasm", /"build\/dirtlog\.wasm" is not a valid absolute URL/],
      ["http://[::1", /is not a valid absolute URL/],
    ] as const) {
      const e = await rejection(createVm({ ...SMALL, wasm: wasm as never }));
      expect([e.errno, e.call], String(wasm)).toEqual(["EINVAL", "KVM_CREATE_VM"]);
      expect(e.reason).toMatch(reason);
    }
  });

  it("EINVAL for bytes that are not WebAssembly, or WebAssembly that is not the core", async () => {
    const notWasm = await rejection(createVm({ ...SMALL, wasm: new TextEncoder().encode("<!doctype html>") }));
    expect([notWasm.errno, notWasm.reason]).toEqual([
      "EINVAL",
      expect.stringMatching(/^wasm: the bytes are not a WebAssembly module: /),
    ]);
    const empty = new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
    for (const wasm of [empty, new WebAssembly.Module(empty)]) {
      const e = await rejection(createVm({ ...SMALL, wasm }));
      expect([e.errno, e.reason]).toEqual([
        "EINVAL",
        "wasm is not a dirtlog core: it does not export kvm_vm_init, kvm_vcpu_init, kvm_run, memslot_commit, kvm_get_dirty_log",
      ]);
    }
  });

  it("EINVAL for a URL serving something else (a dev server's HTML fallback), naming what it was served as", async () => {
    const e = await rejection(createVm({ ...SMALL, wasm: `${http}/spa/dirtlog.wasm` }));
    expect(e.errno).toBe("EINVAL");
    expect(e.reason).toMatch(
      /^wasm: http:\/\/127\.0\.0\.1:\d+\/spa\/dirtlog\.wasm is not a WebAssembly module \(served as text\/html\)/,
    );
    const file = await rejection(createVm({ ...SMALL, wasm: new URL("../package.json", import.meta.url) }));
    expect([file.errno, file.reason]).toEqual([
      "EINVAL",
      expect.stringMatching(/package\.json is not a WebAssembly module/),
    ]);
  });

  it("ENOENT for a missing file or an HTTP 404; a failed load is not cached", async () => {
    const http404 = await rejection(createVm({ ...SMALL, wasm: `${http}/nowhere.wasm` }));
    expect([http404.errno, http404.reason]).toEqual(["ENOENT", expect.stringMatching(/nowhere\.wasm: HTTP 404/)]);
    const later = pathToFileURL(join(tmp, "later.wasm"));
    const missing = await rejection(createVm({ ...SMALL, wasm: later }));
    expect([missing.errno, missing.reason]).toEqual(["ENOENT", expect.stringMatching(/later\.wasm: Error: ENOENT/)]);
    copyFileSync(coreUrl, later);
    const vm = await createVm({ ...SMALL, wasm: later });
    vm.dispose();
  });
});
