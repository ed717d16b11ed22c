// Resources: a disposed VM's memory is scrubbed back to zero and reused by a later
// createVm (V8 does not count shared WebAssembly memories as memory pressure, so memories
// left to the GC pile up: RSS grew ~2 MiB per createVm/dispose cycle under THP).
// Imports the built package: vCPU loops run in workers (dist/vcpu-worker.js), and the pool
// counters live in dist/vm.js (the same module instance dist/index.js re-exports).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_MEM_LOG_DIRTY_PAGES,
  KvmError,
  type Vm,
  type VmOptions,
  createVm,
  harvestDirtyRings,
  migrate,
} from "../dist/index.js";
import * as L from "../dist/layout.js";
import { memoryPoolStats } from "../dist/vm.js";

const MIB = 1 << 20;
const PAGE = 4096;
const GUARD = 65536;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The errno of the KvmError `fn` throws (dist's KvmError), or undefined. */
function errnoOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    return e.errno;
  }
  return undefined;
}

/** Addresses (hex) of the first non-zero word of each page from the guard up, at most 16. */
function nonZero(memory: WebAssembly.Memory): string[] {
  const w = new Int32Array(memory.buffer);
  const bad: string[] = [];
  for (let i = GUARD / 4; i < w.length && bad.length < 16; i++) {
    if (w[i] === 0) continue;
    bad.push((i * 4).toString(16));
    i = (Math.floor(i / 1024) + 1) * 1024 - 1; // next page
  }
  return bad;
}

/** Wait until the pool has recycled `n` memories in all (a dispose() with threads is async). */
async function recycled(n: number): Promise<void> {
  for (const end = Date.now() + 10_000; memoryPoolStats().recycled < n && Date.now() < end; ) await sleep(5);
  expect(memoryPoolStats().recycled).toBeGreaterThanOrEqual(n);
}

type End = "close" | "dispose" | "dispose with threads running";

/** Run `fn` on a fresh VM, end it as `fn` says, check its memory and its reuse. */
async function scenario(options: VmOptions, fn: (vm: Vm) => Promise<End> | End) {
  const vm = await createVm(options);
  const memory = vm.memory;
  const before = memoryPoolStats().recycled;
  const end = await fn(vm);
  if (end === "close") await vm.close();
  else vm.dispose();
  // only once every vCPU thread has ended: at once unless dispose() left threads running
  expect(memoryPoolStats().recycled).toBe(end === "dispose with threads running" ? before : before + 1);
  await recycled(before + 1);
  expect(nonZero(memory)).toEqual([]);
  const next = await createVm(options);
  expect(next.memory).toBe(memory); // recycled, not a new memory
  next.dispose();
}

/** The address of a slot's backing in the VM's memory, read from its slot table entry. */
function backingOf(vm: Vm, slot: number): number {
  const v = new DataView(vm.memory.buffer);
  const table = v.getUint32(vm.addr + L.VM_SLOTS, true);
  return v.getUint32(table + ((slot >>> 16) * 32768 + (slot & 0xffff)) * L.SLOT_SIZE + L.SLOT_BACKING, true);
}

describe("memory pool", () => {
  it("1000 × (createVm, 1 MiB logged slot, vCPU, store, dispose) in a child process: bounded RSS, few memories", () => {
    const dir = mkdtempSync(join(tmpdir(), "dirtlog-rss-"));
    const script = join(dir, "cycle.mjs");
    writeFileSync(
      script,
      `import { createVm } from ${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)};
import { memoryPoolStats } from ${JSON.stringify(new URL("../dist/vm.js", import.meta.url).href)};
const N = 1000;
const times = [];
const rss0 = process.memoryUsage().rss;
let peak = rss0;
for (let i = 0; i < N; i++) {
  const t0 = performance.now();
  const vm = await createVm();
  vm.setUserMemoryRegion({ slot: 0, flags: 1, guestPhysAddr: 0x100000, memorySize: 1 << 20, backed: true });
  vm.createVcpu(0).writeGuest(0x100000, 1);
  vm.dispose();
  times.push(performance.now() - t0);
  if (i % 50 === 0) peak = Math.max(peak, process.memoryUsage().rss);
}
peak = Math.max(peak, process.memoryUsage().rss);
times.sort((a, b) => a - b);
console.log(JSON.stringify({ rss0, peak, median: times[N >> 1], p90: times[Math.floor(N * 0.9)], ...memoryPoolStats() }));
`,
    );
    try {
      const r = spawnSync(process.execPath, [script], { timeout: 100_000, encoding: "utf8" });
      expect(r.error).toBeUndefined();
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      const out = JSON.parse(r.stdout.trim().split("\n").at(-1) as string);
      const growth = out.peak - out.rss0;
      console.log(
        `1000 createVm/dispose cycles: RSS ${(out.rss0 / MIB).toFixed(0)} → peak ${(out.peak / MIB).toFixed(0)} MiB ` +
          `(+${(growth / MIB).toFixed(1)} MiB); per cycle median ${(out.median * 1000).toFixed(0)} µs, ` +
          `p90 ${(out.p90 * 1000).toFixed(0)} µs; memories created ${out.created}, reused ${out.reused}`,
      );
      expect(growth).toBeLessThan(1024 * MIB);
      // the mechanism itself (THP=madvise hides the RSS growth): memories are reused
      expect(out.created).toBeLessThanOrEqual(2);
      expect(out.reused).toBeGreaterThanOrEqual(998);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a recycled memory is all zero from the guard up, whatever the VM did", async () => {
    // bitmap logging, a vCPU store (page table pages, host-present map)
    await scenario({}, (vm) => {
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0x100000, memorySize: MIB, backed: true });
      vm.createVcpu(0).writeGuest(0x100000, 1);
      return "dispose";
    });
    // huge pages, SMM (address space 1), internal slots, writeUserMemory, kvm_write_guest,
    // GET_DIRTY_LOG, a deleted slot, an unbacked slot
    await scenario({ irqchip: true }, (vm) => {
      vm.setTssAddr(0xfffbd000);
      vm.setIdentityMapAddr(0xfeffc000);
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 8 * MIB, backed: true });
      vm.setUserMemoryRegion({ slot: (1 << 16) | 2, guestPhysAddr: 0x1000000, memorySize: MIB, backed: true });
      vm.setUserMemoryRegion({ slot: 5, guestPhysAddr: 0x40000000, memorySize: 1 << 30, backed: false });
      const v = vm.createVcpu(0);
      for (let i = 0; i < 8 * MIB; i += 3 * PAGE + 8) v.writeGuest(i & ~7, 0xdeadbeefn);
      v.smm = true;
      v.writeGuest(0x1000000, 7);
      v.writeGuest(0xfffbd000, 9); // the TSS's internal slot, through address space 1
      v.smm = false;
      v.writeGuest(0xfeffc000, 8); // the identity map's internal slot
      v.writeGuest(0x40000000 + PAGE * 77, 3);
      vm.writeUserMemory(0, 5 * MIB, new Uint8Array(100).fill(9));
      vm.kvmWriteGuest(0x7000, 5);
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 8 * MIB, backed: true });
      vm.getDirtyLog(0);
      v.writeGuest(0x2000, 1);
      vm.setUserMemoryRegion({ slot: 7, guestPhysAddr: 0x2000000, memorySize: PAGE, backed: true });
      vm.createVcpu(1).writeGuest(0x2000000, 4);
      vm.setUserMemoryRegion({ slot: 7, guestPhysAddr: 0x2000000, memorySize: 0 });
      return "dispose";
    });
    // dirty rings (+ bitmap), PML, manual protect with CLEAR, harvest and reset
    await scenario({ pml: true }, (vm) => {
      vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [3]);
      vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [4096 * 16]);
      vm.enableCap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP);
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 16 * MIB, backed: true });
      const vs = [0, 1, 2].map((i) => vm.createVcpu(i));
      for (const v of vs) for (let p = 0; p < 300; p++) v.writeGuest(((p * PAGE * 7) % (16 * MIB)) + 8 * v.id, p + 1);
      for (const v of vs) v.kick();
      harvestDirtyRings(vm);
      vm.resetDirtyRings();
      vm.kvmWriteGuest(0x3000, 1);
      vm.getDirtyLog(0);
      vm.clearDirtyLog(0, 0, 4096, new Uint8Array(512).fill(0xff));
      return "dispose";
    });
    // bytes written through guestMemory() (the core never sees them)
    await scenario({}, (vm) => {
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
      const m = vm.guestMemory(0) as Uint8Array;
      m[12345] = 1;
      m[4 * MIB - 1] = 2;
      return "dispose";
    });
    // vCPU worker loops (uniform and zipf workloads) disposed without close(): recycled
    // only once both workers have ended
    await scenario({}, async (vm) => {
      vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [65536 * 16]);
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 64 * MIB, backed: true });
      for (let i = 0; i < 2; i++) {
        const v = vm.createVcpu(i);
        v.setWorkload({ pattern: i ? "zipf" : "uniform", gpa: 0, pages: 16384, batch: 512 });
        await v.startLoop();
      }
      await sleep(100);
      harvestDirtyRings(vm);
      vm.resetDirtyRings();
      return "dispose with threads running";
    });
    // dispose() while close() is still ending the worker, and while a worker is spawning
    let closing: Promise<void> | undefined;
    await scenario({}, async (vm) => {
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "uniform", gpa: 0, pages: 1024, batch: 256 });
      await v.startLoop();
      closing = vm.close();
      return "dispose with threads running";
    });
    await closing;
    await scenario({}, (vm) => {
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: MIB, backed: true });
      const v = vm.createVcpu(0);
      v.writeGuest(0, 1);
      void v.spawn();
      return "dispose with threads running";
    });
    // a live migration (vCPU loop in a worker), then close()
    await scenario({}, async (vm) => {
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 32 * MIB, backed: true });
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "hot-set", gpa: 0, pages: 8192, hotPages: 100 });
      await v.startLoop({ rate: 200_000 });
      expect((await migrate(vm, { maxRounds: 5 })).equal).toBe(true);
      return "close";
    });
  });

  it("the zero check is not vacuous: bytes written outside the tracked extents are found", async () => {
    const vm = await createVm();
    const memory = vm.memory;
    vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
    vm.createVcpu(0).writeGuest(PAGE, 0x55); // page 1: host page present, scrubbed
    const v = new DataView(memory.buffer);
    const pool = v.getUint32(vm.addr + L.VM_POOL_BASE, true);
    const poolPages = v.getUint32(vm.addr + L.VM_POOL_PAGES, true);
    // planted behind the VM's back (u8() is not guestMemory()): the last pool page, never
    // handed out, and page 100 of the backing, whose host page does not exist
    const planted = [pool + (poolPages - 1) * PAGE + 8, backingOf(vm, 0) + 100 * PAGE + 16];
    const u8 = vm.u8();
    for (const a of planted) u8[a] = 0xa5;
    const before = memoryPoolStats().recycled;
    vm.dispose();
    expect(memoryPoolStats().recycled).toBe(before + 1); // no threads: recycled at once
    // the scrub left exactly the planted bytes, and the scan finds them
    expect(nonZero(memory)).toEqual(planted.map((a) => (a & ~3).toString(16)).sort((a, b) => Number.parseInt(a, 16) - Number.parseInt(b, 16)));
    for (const a of planted) new Uint8Array(memory.buffer)[a] = 0; // restore the pool's invariant
    expect(nonZero(memory)).toEqual([]);
  });
});

describe("backing alignment", () => {
  it("4 KiB backed slots: all 32764 user slots of address space 0 fit in 512 MiB", async () => {
    const vm = await createVm({ maxMemoryBytes: 512 * MIB });
    try {
      for (let id = 0; id < 32764; id++) {
        vm.setUserMemoryRegion({ slot: id, guestPhysAddr: id * PAGE, memorySize: PAGE, backed: true });
      }
      expect(vm.memslots().length).toBe(32764);
      expect(errnoOf(() => vm.setUserMemoryRegion({ slot: 32764, guestPhysAddr: 1 << 30, memorySize: PAGE, backed: true }))).toBe(
        "EINVAL",
      );
    } finally {
      vm.dispose();
    }
  });

  it("a 4 MiB slot's backing is 2 MiB aligned (a 4 KiB one only page aligned)", async () => {
    const vm = await createVm({ maxMemoryBytes: 64 * MIB, mmuPoolBytes: MIB });
    try {
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: PAGE, backed: true });
      vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 4 * MIB, memorySize: 4 * MIB, backed: true });
      expect((vm.guestMemory(0) as Uint8Array).byteOffset % PAGE).toBe(0);
      expect((vm.guestMemory(1) as Uint8Array).byteOffset % (2 * MIB)).toBe(0);
    } finally {
      vm.dispose();
    }
  });
});

describe("handles of a disposed VM", () => {
  it("throw EBADF and cannot write into the VM that reuses the memory", async () => {
    const options = { maxMemoryBytes: 96 * MIB }; // a pool of its own
    const setup = async () => {
      const vm = await createVm(options);
      vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: MIB, backed: true });
      return { vm, vcpu: vm.createVcpu(0) };
    };
    const old = await setup();
    old.vcpu.writeGuest(0, 1);
    old.vm.dispose();
    const next = await setup();
    expect(next.vm.memory).toBe(old.vm.memory);
    expect(next.vcpu.addr).toBe(old.vcpu.addr); // the same block, now the new VM's
    try {
      expect(errnoOf(() => old.vcpu.writeGuest(0, 0xbad))).toBe("EBADF");
      expect(errnoOf(() => old.vcpu.writeStrided(0, 8, 16, 0xbad))).toBe("EBADF");
      expect(errnoOf(() => old.vcpu.kvmWriteGuest(8, 0xbad))).toBe("EBADF");
      expect(errnoOf(() => old.vcpu.runSync())).toBe("EBADF");
      expect(errnoOf(() => old.vcpu.kick())).toBe("EBADF");
      expect(errnoOf(() => old.vcpu.requestExit())).toBe("EBADF");
      expect(errnoOf(() => old.vcpu.stats)).toBe("EBADF");
      expect(errnoOf(() => old.vm.kvmWriteGuest(0, 0xbad))).toBe("EBADF");
      expect(errnoOf(() => old.vm.writeUserMemory(0, 0, new Uint8Array([1])))).toBe("EBADF");
      expect(errnoOf(() => old.vm.u8())).toBe("EBADF");
      expect(errnoOf(() => old.vm.raw)).toBe("EBADF");
      await expect(old.vcpu.run()).rejects.toMatchObject({ errno: "EBADF" });
      await old.vcpu.terminate(); // nothing to end
      // the new VM sees none of it: its memory is as a fresh VM's
      expect(next.vcpu.readGuest(0)).toBe(0n);
      expect(next.vcpu.stats.stores).toBe(0n);
      expect(next.vcpu.dirtyRingState.dirtyIndex).toBe(0);
      expect(next.vm.getDirtyLog(0).every((b) => b === 0)).toBe(true);
      expect((next.vm.guestMemory(0) as Uint8Array).every((b) => b === 0)).toBe(true);
    } finally {
      next.vm.dispose();
    }
  });
});
