// A vCPU runs on one thread at a time (the kernel's vcpu->mutex, assembly/vcpu.ts): while
// its worker loop runs, every vCPU-context call from another thread gets EBUSY and
// changes nothing; a paused loop frees the vCPU. Without the mutex (a planted core) a
// main-thread caller hammering a running vCPU loses ring entries — the test can fail.
// Imports the built package: vCPU loops run in workers (dist/vcpu-worker.js).
import { describe, expect, it } from "vitest";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_EXIT_INTR,
  KVM_MEM_LOG_DIRTY_PAGES,
  KvmError,
  type Vcpu,
  type Vm,
  collectDirtyRing,
  createVm,
} from "../dist/index.js";
import { SPTE_W, pagesOf } from "./helpers.js";
import { plantedCore } from "./planted-core.js";

const PAGE = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The errno of what fn throws or rejects with, or undefined when it succeeds. */
async function errnoOf(fn: () => unknown): Promise<string | undefined> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof KvmError) return e.errno;
    throw e;
  }
  return undefined;
}

async function until(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(2)) if (await cond()) return true;
  return cond();
}

describe("vcpu->mutex: one thread drives a vCPU", () => {
  it("while the loop runs every vCPU-context call is EBUSY and changes nothing; pause frees the vCPU", async () => {
    const vm = await createVm({ maxMemoryBytes: 256 << 20 });
    try {
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 1024 * PAGE, backed: true });
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "uniform", gpa: 0, pages: 512, batch: 256 });
      vm.getDirtyLog(0);
      await v.startLoop();
      // resolved: the worker holds the vCPU now, no waiting needed
      const P = 1000 * PAGE; // outside the workload's pages
      const calls: Array<[string, () => unknown]> = [
        ["writeGuest", () => v.writeGuest(P, 1)],
        ["readGuest", () => v.readGuest(P)],
        ["writeStrided", () => v.writeStrided(P, 8, 4, 1)],
        ["kvmWriteGuest", () => v.kvmWriteGuest(P, 1)],
        ["runSync", () => v.runSync()],
        ["run", () => v.run()],
        ["setWorkload", () => v.setWorkload({ pattern: "sequential", gpa: P, pages: 1 })],
        ["smm", () => {
          v.smm = true;
        }],
        ["startLoop", () => v.startLoop()],
      ];
      for (const [name, fn] of calls) expect(await errnoOf(fn), name).toBe("EBUSY");
      await v.pause();
      // nothing of the rejected calls happened
      expect(pagesOf(vm.getDirtyLog(0)).filter((p) => p >= 512)).toEqual([]);
      expect((vm.guestMemory(0) as Uint8Array).subarray(P, P + PAGE).every((b) => b === 0)).toBe(true);
      expect(v.smm).toBe(false);
      // paused: the vCPU is free for this thread
      expect(v.writeGuest(P, 7)).toBe(0);
      expect(pagesOf(vm.getDirtyLog(0))).toContain(1000);
      // the loop's workload is still the one it had
      const before = v.workloadStores;
      v.resume();
      expect(await until(() => v.workloadStores > before, 5000)).toBe(true);
      expect(Number(v.lastGpa) / PAGE).toBeLessThan(512);
      // and it owns the vCPU again
      expect(await until(async () => (await errnoOf(() => v.writeGuest(P, 1))) === "EBUSY", 5000)).toBe(true);
    } finally {
      await vm.close();
    }
  });

  it("two startLoop calls in the same tick give one thread; the second is EBUSY", async () => {
    const vm = await createVm({ maxMemoryBytes: 256 << 20 });
    try {
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 256 * PAGE });
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "uniform", gpa: 0, pages: 256, batch: 256 });
      const a = v.startLoop();
      const b = v.startLoop();
      await expect(b).rejects.toMatchObject({ errno: "EBUSY" });
      await a;
      expect(await errnoOf(() => v.startLoop())).toBe("EBUSY");
      const end = v.loopEnd;
      await v.pause();
      // one thread, and it is parked: no store retires while paused
      const s0 = v.workloadStores;
      await sleep(50);
      expect(v.workloadStores).toBe(s0);
      await vm.close();
      expect(await end).toBe(KVM_EXIT_INTR);
    } finally {
      await vm.close();
    }
  });
});

/**
 * A ring VM whose vCPU 0 loop writes pages [0, 32768) (first writes: pushes) while this
 * thread calls kvmWriteGuest (vCPU context: a push into vCPU 0's ring) on `calls` distinct
 * pages after them, harvesting and resetting every 16 calls. Counts the calls that went
 * through, and the lost reports: this thread's pages that no harvest reported, plus the
 * loop's pages still writable after the final harvest and reset (every harvested entry
 * was reset, which write-protects its page: a writable page is one whose entry was lost).
 */
async function hammer(vm: Vm, calls: number): Promise<{ ebusy: number; done: number; lost: number }> {
  const LOOP_PAGES = 32768;
  vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [4096 * 16]);
  const pages = LOOP_PAGES + calls;
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: pages * PAGE });
  const vcpu: Vcpu = vm.createVcpu(0);
  vcpu.setWorkload({ pattern: "uniform", gpa: 0, pages: LOOP_PAGES, batch: 64 });
  const reported = new Set<number>();
  const harvest = () => {
    collectDirtyRing(vcpu, (_slot, offset) => reported.add(offset));
    vm.resetDirtyRings();
  };
  await vcpu.startLoop();
  const written: number[] = [];
  let ebusy = 0;
  for (let i = 0; i < calls; i++) {
    const page = LOOP_PAGES + i;
    try {
      vcpu.kvmWriteGuest(page * PAGE, i);
      written.push(page);
    } catch (e) {
      if (!(e instanceof KvmError) || e.errno !== "EBUSY") throw e;
      ebusy++;
    }
    if (i % 16 === 15) harvest();
  }
  await vcpu.pause();
  harvest();
  let lost = written.filter((p) => !reported.has(p)).length;
  for (let p = 0; p < LOOP_PAGES; p++) if (vm.spte(0, p * PAGE).spte & SPTE_W) lost++;
  return { ebusy, done: written.length, lost };
}

describe("a main-thread caller hammering a running vCPU", () => {
  it("gets EBUSY for every call and loses nothing", async () => {
    const vm = await createVm({ maxMemoryBytes: 256 << 20 });
    try {
      const r = await hammer(vm, 20_000);
      console.log(`hammer, real core: ${r.ebusy} EBUSY of 20000 calls, ${r.done} pages written, ${r.lost} lost`);
      expect(r.ebusy).toBe(20_000);
      expect(r.lost).toBe(0);
    } finally {
      await vm.close();
    }
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")(
    "negative control: with vcpu_load not taking the mutex (planted core) the calls go through and entries are lost",
    async () => {
      const wasm = plantedCore(
        [{ file: "vcpu.ts", from: "const old = atomic.cmpxchg<u32>(vcpu + VCPU_MUTEX, 0, tag);", to: "const old: u32 = 0;" }],
        "release",
      );
      let lost = 0;
      let done = 0;
      // the race needs the two threads to overlap; a few rounds make that certain
      for (let round = 0; round < 5 && lost === 0; round++) {
        const vm = await createVm({ maxMemoryBytes: 256 << 20, wasm });
        try {
          const r = await hammer(vm, 100_000);
          console.log(`hammer, planted core: ${r.ebusy} EBUSY, ${r.done} pages written, ${r.lost} lost`);
          lost += r.lost;
          done += r.done;
        } finally {
          await vm.close();
        }
      }
      expect(done).toBeGreaterThan(0);
      expect(lost).toBeGreaterThan(0);
    },
  );
});
