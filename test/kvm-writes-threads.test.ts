// KVM's own writes with vCPU threads running. vCPU context needs the vCPU: a cached write
// made for a vCPU whose loop drives it is EBUSY and writes nothing.
// The Xen runstate area under concurrency: a vCPU's worker loop rewrites it around every
// KVM_RUN (running, then runnable in atomic context) while a guest-side reader on another
// thread re-reads it with Xen's protocol, thousands of times: no copy it keeps is torn. A
// core that drops the XEN_RUNSTATE_UPDATE protocol shows torn copies (negative control).
// Imports the built package: vCPU workers are dist/vcpu-worker.js.
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { KVM_CAP_DIRTY_LOG_RING, KVM_MEM_LOG_DIRTY_PAGES, createVm } from "../dist/index.js";
import { plantedCore } from "./planted-core.js";

const PAGE = 4096;
const BASE = 0x1_0000_0000;

interface ReaderResult {
  ok: number;
  torn: number;
  retries: number;
  first?: string;
}

async function race(ms: number, wasm?: WebAssembly.Module): Promise<ReaderResult & { updates: number }> {
  const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20, ...(wasm ? { wasm } : {}) });
  try {
    vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE, memorySize: 64 * PAGE, backed: true });
    const vcpu = vm.createVcpu(0);
    const gpa = BASE + 8 * PAGE - 21; // across pages 7 and 8, the flag byte in page 7
    vcpu.setXenRunstateArea(gpa);
    vcpu.setWorkload({ pattern: "uniform", gpa: BASE + 16 * PAGE, pages: 32, batch: 32 });
    const info = vm.memslots().find((s) => s.slot === 0);
    if (!info) throw new Error("no slot");
    const at = Number(info.userspaceAddr) + 8 * PAGE - 21; // the backing: the guest's bytes
    await vcpu.startLoop();
    const reader = new Worker(new URL("./fixtures/runstate-reader.mjs", import.meta.url), {
      workerData: { buffer: vm.memory.buffer, at, ms, stopOnTorn: wasm !== undefined },
    });
    const result = await new Promise<ReaderResult>((resolve, reject) => {
      reader.once("message", resolve);
      reader.once("error", reject);
    });
    await reader.terminate();
    await vcpu.pause();
    return { ...result, updates: vcpu.xenRunstate.updates };
  } finally {
    await vm.close();
  }
}

describe("Xen runstate area: a guest reader on another thread never sees a torn structure", () => {
  it("thousands of updates from the vCPU's loop, the structure across a page boundary", async () => {
    const r = await race(1500);
    console.log(`runstate: ${r.updates} updates, reader kept ${r.ok} copies, retried ${r.retries}, torn ${r.torn} (${r.first})`);
    expect(r.updates).toBeGreaterThan(2000);
    expect(r.ok).toBeGreaterThan(1000);
    expect(r.torn).toBe(0);
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")("without the XEN_RUNSTATE_UPDATE protocol the reader sees torn copies (planted core)", async () => {
    const wasm = plantedCore(
      [
        {
          file: "xen.ts",
          from: "  if (update_bit != 0) atomic.store<u8>(update_bit, <u8>((entry | XEN_RUNSTATE_UPDATE) >> 56));",
          to: "",
        },
        { file: "xen.ts", from: "  store<u64>(rs + <usize>ofs, entry | XEN_RUNSTATE_UPDATE);", to: "  store<u64>(rs + <usize>ofs, entry);" },
      ],
      "release",
    );
    const r = await race(8000, wasm); // until the first torn copy (usually well under a second)
    console.log(`planted: ${r.updates} updates, reader kept ${r.ok} copies, torn ${r.torn} (${r.first})`);
    expect(r.torn).toBeGreaterThan(0);
  });
});

describe("vCPU context from another thread", () => {
  it("a cached write for a vCPU whose loop runs is EBUSY and writes nothing; once paused it goes to its ring", async () => {
    const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    try {
      vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [1024 * 16]);
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE, memorySize: 64 * PAGE, backed: true });
      const vcpu = vm.createVcpu(0);
      const ghc = vm.createGfnToHvaCache(BASE + 60 * PAGE, 8);
      const gpc = vcpu.createGfnToPfnCache(BASE + 61 * PAGE, 8);
      vcpu.setWorkload({ pattern: "sequential", gpa: BASE, pages: 32 });
      await vcpu.startLoop({ rate: 1000 });
      const ebusy = expect.objectContaining({ errno: "EBUSY" });
      expect(() => ghc.writeCached(new Uint8Array(8).fill(1), { vcpu })).toThrow(ebusy);
      expect(() => gpc.write(new Uint8Array(8).fill(1))).toThrow(ebusy);
      expect(() => vcpu.setXenRunstateArea(BASE + 62 * PAGE)).toThrow(ebusy);
      const mem = vm.guestMemory(0) as Uint8Array;
      expect(mem[60 * PAGE] + mem[61 * PAGE]).toBe(0);
      await vcpu.pause();
      const pushes = vcpu.stats.ringPushes;
      ghc.writeCached(new Uint8Array(8).fill(1), { vcpu });
      gpc.write(new Uint8Array(8).fill(1));
      expect(vcpu.stats.ringPushes - pushes).toBe(2n);
    } finally {
      await vm.close();
    }
  });
});
