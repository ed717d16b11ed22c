// The built package in a real browser (headless Chromium, vitest browser mode): the page is
// cross-origin isolated, the core is fetched and compiled with compileStreaming, and the
// vCPU threads are real Web Workers (dist/vcpu-worker.js) on the VM's shared memory.
// Imports dist/ like a user's bundler would serve it, so the worker and wasm URLs
// (new URL(..., import.meta.url)) resolve from dist/ to dist/vcpu-worker.js and build/dirtlog.wasm.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { KVM_MEM_LOG_DIRTY_PAGES, type Vm, createVm, runDirtyLogTest } from "../../dist/index.js";

const GPA = 0x1_0000_0000;

function setPages(bitmap: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < bitmap.length * 8; i++) if (bitmap[i >> 3] & (1 << (i & 7))) pages.push(i);
  return pages;
}

// Count the Web Workers the library starts (the endpoint adapter calls the global Worker).
const NativeWorker = globalThis.Worker;
let workersSpawned: string[] = [];
beforeEach(() => {
  workersSpawned = [];
  globalThis.Worker = class extends NativeWorker {
    constructor(url: string | URL, options?: WorkerOptions) {
      super(url, options);
      workersSpawned.push(String(url));
    }
  };
});
afterEach(() => {
  globalThis.Worker = NativeWorker;
});

describe("dirtlog in a browser (Chromium, Web Workers)", () => {
  it("runs in a browser main thread that is cross-origin isolated", () => {
    expect(typeof process === "undefined" || typeof process.versions?.node !== "string").toBe(true);
    expect(typeof window).toBe("object");
    expect(crossOriginIsolated).toBe(true);
    expect(typeof SharedArrayBuffer).toBe("function");
  });

  it("createVm() fetches build/dirtlog.wasm (application/wasm) and compiles it in the page", async () => {
    const vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 8 << 20 });
    try {
      expect(vm.memory.buffer).toBeInstanceOf(SharedArrayBuffer);
      const wasm = performance
        .getEntriesByType("resource")
        .map((e) => new URL(e.name))
        .filter((u) => u.pathname.endsWith("/build/dirtlog.wasm"));
      expect(wasm.length).toBeGreaterThan(0);
      const res = await fetch(wasm[0]);
      expect(res.headers.get("content-type")).toMatch(/^application\/wasm/);
    } finally {
      await vm.close();
    }
  });

  describe("single-threaded writes and KVM_GET_DIRTY_LOG", () => {
    let vm: Vm;
    beforeEach(async () => {
      vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 8 << 20 });
    });
    afterEach(async () => {
      await vm.close();
    });

    it("GET reports exactly the written pages, then re-protects them", () => {
      const npages = 1000; // not a multiple of 64: a ragged bitmap end
      vm.setUserMemoryRegion({
        slot: 0,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guestPhysAddr: GPA,
        memorySize: npages * 4096,
        backed: true,
      });
      const vcpu = vm.createVcpu(0);
      const written = [0, 1, 5, 63, 64, 65, 127, 500, 998, 999];
      for (const p of written) expect(vcpu.writeGuest(GPA + p * 4096 + 8, BigInt(p) + 1n)).toBe(0);
      vcpu.writeGuest(GPA + 5 * 4096 + 16, 7n); // a second store to page 5: still one page

      const bitmap = vm.getDirtyLog(0);
      expect(bitmap.length).toBe(Math.ceil(npages / 64) * 8);
      expect(setPages(bitmap)).toEqual(written);
      const memory = vm.guestMemory(0) as Uint8Array;
      const view = new DataView(memory.buffer, memory.byteOffset, memory.byteLength);
      for (const p of written) expect(view.getBigUint64(p * 4096 + 8, true)).toBe(BigInt(p) + 1n);

      // nothing written since: empty; then only the pages written again
      expect(setPages(vm.getDirtyLog(0))).toEqual([]);
      for (const p of [64, 999]) expect(vcpu.writeGuest(GPA + p * 4096, 1n)).toBe(0);
      expect(vcpu.readGuest(GPA + 3 * 4096)).toBe(0n); // an untouched page, read: zero page, not logged
      expect(setPages(vm.getDirtyLog(0))).toEqual([64, 999]);
      expect(workersSpawned).toEqual([]);
    });
  });

  describe("no lost dirty page with real Web Workers (dirty_log_test, 2 vCPUs, 8 iterations)", () => {
    for (const [name, options] of [
      ["dirty-log (classic GET)", { mode: "dirty-log" }],
      ["clear-log (manual protect + INITIALLY_SET)", { mode: "clear-log" }],
      ["dirty-ring, 256 entries (ring-full exits, workers sleep until a reset)", { mode: "dirty-ring", ringEntries: 256 }],
      ["dirty-ring, 1024 entries", { mode: "dirty-ring", ringEntries: 1024 }],
      ["dirty-log with KVM's own writes (runstate areas from the workers, cached writes from the page)", { mode: "dirty-log", kvmWrites: true }],
      ["dirty-ring, 1024 entries, with KVM's own writes (runstate areas)", { mode: "dirty-ring", ringEntries: 1024, kvmWrites: true }],
    ] as const) {
      it(name, async () => {
        const r = await runDirtyLogTest({ ...options, vcpus: 2, iterations: 8 });
        console.log(
          `browser ${r.mode}: ${r.pagesChecked} page checks, ${r.dirtyPages} reported, ${r.writes} writes, ` +
            `${r.ringFullExits} ring-full exits, ${r.harvests} harvests, lost ${r.lost}`,
        );
        expect(workersSpawned).toHaveLength(2);
        for (const url of workersSpawned) expect(new URL(url, location.href).pathname).toMatch(/\/dist\/vcpu-worker\.js$/);
        expect(r.firstError).toBeUndefined();
        expect(r.lost).toBe(0);
        expect(r.wrongValue).toBe(0);
        expect(r.ringFullWarnings).toBe(0);
        if ("kvmWrites" in options) expect(r.kvmWrites).toBeGreaterThan(8);
        expect(r.pagesChecked).toBe(8 * ((1 << 14) + 3));
        expect(r.writes).toBeGreaterThan(8n * 0x100n);
        expect(r.dirtyPages).toBeGreaterThan(0);
        if (options.mode === "dirty-ring" && options.ringEntries === 256) expect(r.ringFullExits).toBeGreaterThan(0n);
      });
    }

    it("the harness catches lost pages: with remote TLB flushes never delivered, pages are lost", async () => {
      // the workers keep writing through stale writable translations after GET re-protects
      const r = await runDirtyLogTest({ mode: "dirty-log", vcpus: 2, iterations: 8, pages: 128 + 3, skipTlbFlush: true });
      expect(workersSpawned).toHaveLength(2);
      expect(r.lost).toBeGreaterThan(0);
    });
  });
});

describe("KVM's own writes in a browser", () => {
  it("a vCPU's Web Worker rewrites its Xen runstate area around every KVM_RUN (the performance clock), marked dirty; caches from the page", async () => {
    const { RUNSTATE_runnable, XEN_RUNSTATE_LAYOUT } = await import("../../dist/index.js");
    const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    try {
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: GPA, memorySize: 64 * 4096, backed: true });
      const vcpu = vm.createVcpu(0);
      vcpu.setXenRunstateArea(GPA + 8 * 4096 - 20);
      vcpu.setWorkload({ pattern: "uniform", gpa: GPA + 16 * 4096, pages: 16, batch: 64 });
      vm.getDirtyLog(0);
      await vcpu.startLoop();
      await new Promise((r) => setTimeout(r, 100));
      await vcpu.pause();
      const rs = vcpu.xenRunstate;
      expect(rs.updates).toBeGreaterThan(10);
      expect(rs.state).toBe(RUNSTATE_runnable);
      expect(rs.times[0] + rs.times[1] + rs.times[2] + rs.times[3]).toBe(rs.entryTime);
      const log = vm.getDirtyLog(0);
      expect((log[0] >> 7) & 1).toBe(1); // page 7
      expect(log[1] & 1).toBe(1); // page 8
      const mem = vm.guestMemory(0) as Uint8Array;
      const at = 8 * 4096 - 20 + XEN_RUNSTATE_LAYOUT.long.stateEntryTime;
      const entry = new DataView(mem.buffer, mem.byteOffset + at, 8).getBigUint64(0, true);
      expect(entry).toBe(rs.entryTime); // the guest's copy, flag cleared
      const ghc = vm.createGfnToHvaCache(GPA + 30 * 4096 + 4090, 12);
      ghc.writeCached(new Uint8Array(12).fill(9));
      const gpc = vm.createGfnToPfnCache();
      gpc.activate(GPA + 40 * 4096, 8);
      vm.invalidateHostRange(0, 40 * 4096, 4096);
      gpc.write(new Uint8Array(8).fill(7)); // refreshed on the browser main thread (no blocking wait)
      const log2 = vm.getDirtyLog(0);
      expect([30, 31, 40].every((p) => (log2[p >> 3] >> (p & 7)) & 1)).toBe(true);
    } finally {
      await vm.close();
    }
  });
});

describe("vCPU threads in a browser: start, failures", () => {
  it("the README's ring example: after await startLoop() and 50 ms, a harvest finds entries", async () => {
    const { KVM_CAP_DIRTY_LOG_RING, harvestDirtyRings } = await import("../../dist/index.js");
    const vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 8 << 20 });
    try {
      vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [4096 * 16]);
      vm.setUserMemoryRegion({ slot: 1, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: GPA, memorySize: 64 << 20 });
      const vcpu = vm.createVcpu(0);
      vcpu.setWorkload({ pattern: "uniform", gpa: GPA, pages: 16384 });
      await vcpu.startLoop();
      await new Promise((r) => setTimeout(r, 50));
      const { entries, reset } = harvestDirtyRings(vm);
      expect(entries).toBeGreaterThan(0);
      expect(reset).toBe(entries);
    } finally {
      await vm.close();
    }
  });

  it("a worker script that 404s rejects startLoop with EIO instead of hanging the page", async () => {
    const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20, workerUrl: "/no-such-vcpu-worker.js" });
    try {
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 64 * 4096 });
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "uniform", gpa: 0, pages: 64 });
      await expect(v.startLoop()).rejects.toMatchObject({ errno: "EIO" });
      await expect(v.loopEnd).rejects.toMatchObject({ errno: "EIO" });
    } finally {
      await vm.close();
    }
  });

  it("a trap in a worker's KVM_RUN rejects run() with EIO naming the vCPU", async () => {
    const { VCPU_WL_ZIPF } = await import("../../dist/layout.js");
    const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    try {
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 64 * 4096, backed: true });
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "zipf", gpa: 0, pages: 64 });
      await v.spawn();
      new DataView(vm.memory.buffer).setUint32(v.addr + VCPU_WL_ZIPF, 0xffff_f000, true);
      await expect(v.run()).rejects.toThrow(/vCPU 0: KVM_RUN.*out of bounds/);
    } finally {
      await vm.close();
    }
  });

  it("page-track notifiers run on the page's thread while Web Worker vCPUs emulate writes; the queue fills and nothing is lost", async () => {
    const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    try {
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 512 * 4096, backed: true });
      const seen = new Map<bigint, number>();
      vm.registerPageTrackNotifier({
        trackWrite(gpa) {
          seen.set(gpa, (seen.get(gpa) ?? 0) + 1);
        },
      });
      for (let g = 0; g < 512; g += 2) vm.writeTrackAddGfn(g);
      const vcpus = [0, 1].map((id) => vm.createVcpu(id));
      const limit = 3000;
      for (const [i, v] of vcpus.entries()) v.setWorkload({ pattern: "sequential", gpa: i * 256 * 4096, pages: 256, batch: 500, limit });
      await Promise.all(vcpus.map((v) => v.startLoop()));
      await Promise.all(vcpus.map((v) => v.loopEnd));
      let total = 0;
      for (const c of seen.values()) total += c;
      // each vCPU's tracked (even) pages, written in order: 3000 stores over 256 pages
      const perVcpu = 128 * Math.floor(limit / 256) + Math.ceil((limit % 256) / 2);
      expect(total).toBe(2 * perVcpu);
      expect(Number(vm.stats.emulatedWrites)).toBe(2 * perVcpu);
      for (const gpa of seen.keys()) expect(Number(gpa / 4096n) % 2).toBe(0);
    } finally {
      await vm.close();
    }
  });

  it("the no-loss test with the shadow MMU (rmaps) and Web Workers", async () => {
    const r = await runDirtyLogTest({ mode: "dirty-ring", ringEntries: 1024, vcpus: 2, iterations: 8, mmu: "shadow" });
    expect(r.firstError).toBeUndefined();
    expect(r.lost).toBe(0);
    expect(r.wrongValue).toBe(0);
  });

  it("the no-loss test with a slot deleted at every step (shadow MMU, paged guest): the zap's batches on a thread that may not block", async () => {
    const r = await runDirtyLogTest({
      mode: "dirty-log",
      vcpus: 2,
      iterations: 8,
      mmu: "shadow",
      paging: true,
      memslotChurn: true,
    });
    expect(r.firstError).toBeUndefined();
    expect(r.lost).toBe(0);
    expect(r.wrongValue).toBe(0);
    expect(r.memslotDeletes).toBeGreaterThanOrEqual(8);
  });
});
