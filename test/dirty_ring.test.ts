// The dirty ring (spec §3 of kvm-tracking.md, with PML from §5.10) against the behaviour
// measured on the real kernel (anchors/real-kvm.md): enabling and its errnos, the
// WITH_BITMAP backup, the entry layout, push order, the soft-full exit, the reset and its
// coalescing, untrusted collector data, trace replays compared entry for entry with an
// independent model (test/ring-trace.ts), and a fuzzed collector.
//
// dirtlog's documented differences for scribbling collectors (assembly/dirty_ring.ts
// header) are tested as documented: the reset uses the (slot, offset) recorded at push time
// and treats any flags value other than exactly DIRTY as harvested.
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
  KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_EXIT_DIRTY_RING_FULL,
  KVM_EXIT_SHUTDOWN,
  KVM_MEM_LOG_DIRTY_PAGES,
  KvmError,
  type Vcpu,
  type Vm,
  type VmOptions,
  collectDirtyRing,
  createVm,
  harvestDirtyRings,
} from "../src/index.js";
import { type TraceWrite, entryKey, expectedReplay, prng } from "./ring-trace.js";

/** Byte-equal (no Node Buffer: this file runs in Chromium too). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

const PAGE = 4096;
const MIB = 1 << 20;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const RING = KVM_CAP_DIRTY_LOG_RING;
const ACQ_REL = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
const WITH_BITMAP = KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP;
const FULL = KVM_EXIT_DIRTY_RING_FULL; // 31
const DIRTY = KVM_DIRTY_GFN_F_DIRTY; // 1
const RESET = KVM_DIRTY_GFN_F_RESET; // 2
const AS1 = 1 << 16;
const BASE = 0x1_0000_0000; // 4 GiB: gpa of the main test slot
const BASE2 = 0x2_0000_0000;
const BASE3 = 0x3_0000_0000;
const MAX_RING_BYTES = 65536 * 16; // 1 MiB
// EPT SPTE bits (spec §5.1)
const W_BIT = 1n << 1n;
const D_BIT = 1n << 9n;

// ---------------------------------------------------------------------------------------
// helpers

const vms: Vm[] = [];
afterEach(() => {
  for (const vm of vms.splice(0)) vm.dispose();
});

async function newVm(opts: VmOptions = {}): Promise<Vm> {
  const vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 8 * MIB, ...opts });
  vms.push(vm);
  return vm;
}

/** A VM with a dirty ring of `entries` entries (not yet any vCPU). */
async function ringVm(entries: number, opts: VmOptions = {}, cap = RING): Promise<Vm> {
  const vm = await newVm(opts);
  vm.enableCap(cap, [entries * 16]);
  return vm;
}

function addSlot(vm: Vm, slot: number, gpa: number, npages: number, flags = LOG, backed = false): void {
  vm.setUserMemoryRegion({ slot, flags, guestPhysAddr: gpa, memorySize: npages * PAGE, backed });
}

function deleteSlot(vm: Vm, slot: number, gpa: number): void {
  vm.setUserMemoryRegion({ slot, flags: 0, guestPhysAddr: gpa, memorySize: 0 });
}

function errnoOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof KvmError) return e.errno;
    throw e;
  }
  return undefined;
}

function ringView(vcpu: Vcpu): DataView {
  const r = vcpu.dirtyRing;
  return new DataView(r.buffer, r.byteOffset, r.byteLength);
}

interface RawEntry {
  flags: number;
  slot: number;
  offset: bigint;
}

/** The entry at ring position `pos` (0 ≤ pos < entries), read as userspace sees it. */
function entryAt(vcpu: Vcpu, pos: number): RawEntry {
  const v = ringView(vcpu);
  return { flags: v.getUint32(pos * 16, true), slot: v.getUint32(pos * 16 + 4, true), offset: v.getBigUint64(pos * 16 + 8, true) };
}

function poke(vcpu: Vcpu, pos: number, e: Partial<RawEntry>): void {
  const v = ringView(vcpu);
  if (e.flags !== undefined) v.setUint32(pos * 16, e.flags >>> 0, true);
  if (e.slot !== undefined) v.setUint32(pos * 16 + 4, e.slot >>> 0, true);
  if (e.offset !== undefined) v.setBigUint64(pos * 16 + 8, BigInt.asUintN(64, e.offset), true);
}

function spteOf(vm: Vm, gpa: number, as = 0): bigint {
  const { spte, level } = vm.spte(as, gpa);
  expect(level, `gpa ${gpa.toString(16)} as ${as} should be mapped 4K`).toBe(1);
  return spte;
}
const isW = (vm: Vm, gpa: number, as = 0): boolean => (spteOf(vm, gpa, as) & W_BIT) !== 0n;

function pagesOf(bm: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < bm.length * 8; i++) if ((bm[i >> 3] >> (i & 7)) & 1) out.push(i);
  return out;
}

function le64(bytes: Uint8Array, off: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset + off, 8).getBigUint64(0, true);
}

function u64bytes(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

const faults = (vcpu: Vcpu): bigint => vcpu.stats.fastFaults + vcpu.stats.slowFaults;

interface Harvested {
  vcpu: Vcpu;
  pos: number;
  slot: number;
  offset: number;
}

/**
 * A QEMU-style collector (spec §3.9) with its own fetch index per vCPU: harvest while the
 * flags are exactly DIRTY, record, store RESET. `max` harvests only a prefix.
 */
class Collector {
  private readonly fetch = new Map<Vcpu, number>();

  fetchIndex(vcpu: Vcpu): number {
    return this.fetch.get(vcpu) ?? 0;
  }

  harvest(vcpu: Vcpu, max = Number.POSITIVE_INFINITY): Harvested[] {
    const v = ringView(vcpu);
    const mask = vcpu.dirtyRing.byteLength / 16 - 1;
    let f = this.fetchIndex(vcpu);
    const out: Harvested[] = [];
    while (out.length < max) {
      const pos = f & mask;
      if (v.getUint32(pos * 16, true) !== DIRTY) break;
      out.push({ vcpu, pos, slot: v.getUint32(pos * 16 + 4, true), offset: Number(v.getBigUint64(pos * 16 + 8, true)) });
      v.setUint32(pos * 16, RESET, true);
      f = (f + 1) >>> 0;
    }
    this.fetch.set(vcpu, f);
    return out;
  }

  /** Kick (drain PML) and harvest every vCPU's ring, in creation order. */
  harvestAll(vm: Vm, kick = true): Harvested[] {
    if (kick) for (const v of vm.vcpuList) v.kick();
    return vm.vcpuList.flatMap((v) => this.harvest(v));
  }
}

const keysOf = (h: Harvested[]): string[] => h.map((e) => entryKey(e.slot, e.offset));

/** Write pages of a slot (page list) in order; every store must retire. */
function writePages(vcpu: Vcpu, base: number, pages: number[], value = 0x77n): void {
  for (const p of pages) expect(vcpu.writeGuest(base + p * PAGE, value), `write page ${p}`).toBe(0);
}

// ---------------------------------------------------------------------------------------
describe("§3.3 capabilities", () => {
  it("CHECK_EXTENSION: RING and ACQ_REL return 65536·16 = 1048576; WITH_BITMAP returns 1 (dirtlog offers it on x86)", async () => {
    for (const pml of [false, true]) {
      const vm = await newVm({ pml });
      expect(vm.checkExtension(RING)).toBe(1048576);
      expect(vm.checkExtension(ACQ_REL)).toBe(1048576);
      expect(vm.checkExtension(WITH_BITMAP)).toBe(1);
    }
  });
});

describe("§3.3 enabling the ring (KVM_ENABLE_CAP)", () => {
  it.each([
    ["RING", RING],
    ["ACQ_REL", ACQ_REL],
  ])("%s: smallest accepted ring is 256 entries (4096 B); 64 and 128 entries → EINVAL", async (_n, cap) => {
    for (const entries of [64, 128]) {
      const vm = await newVm();
      expect(errnoOf(() => vm.enableCap(cap, [entries * 16]))).toBe("EINVAL");
      expect(vm.dirtyRingSize).toBe(0);
    }
    const vm = await newVm();
    vm.enableCap(cap, [4096]);
    expect(vm.dirtyRingSize).toBe(4096);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.dirtyRing.byteLength).toBe(4096);
    expect(vcpu.dirtyRingState).toEqual({ entries: 256, softLimit: 192, dirtyIndex: 0, resetIndex: 0 });
    expect(vcpu.dirtyRing.every((b) => b === 0)).toBe(true);
  });

  it.each([
    ["RING", RING],
    ["ACQ_REL", ACQ_REL],
  ])("%s: largest is 65536 entries (1 MiB); 2 MiB and beyond → E2BIG", async (_n, cap) => {
    for (const bytes of [2 * MIB, 4 * MIB, 2 ** 31]) {
      const vm = await newVm();
      expect(errnoOf(() => vm.enableCap(cap, [bytes]))).toBe("E2BIG");
      expect(vm.dirtyRingSize).toBe(0);
    }
    const vm = await newVm();
    vm.enableCap(cap, [MAX_RING_BYTES]);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.dirtyRing.byteLength).toBe(MAX_RING_BYTES);
    expect(vcpu.dirtyRingState.entries).toBe(65536);
    expect(vcpu.dirtyRingState.softLimit).toBe(65536 - 64);
  });

  it("size 0, non powers of two and powers of two below 4096 → EINVAL", async () => {
    for (const bytes of [0, 3, 16, 1024, 2048, 4096 + 16, 12288, 4095, MAX_RING_BYTES - 16, 3 * MIB]) {
      const vm = await newVm();
      expect(errnoOf(() => vm.enableCap(RING, [bytes])), `bytes ${bytes}`).toBe("EINVAL");
      expect(vm.dirtyRingSize).toBe(0);
    }
    // no args at all: args[0] = 0
    const vm = await newVm();
    expect(errnoOf(() => vm.enableCap(RING, []))).toBe("EINVAL");
  });

  it("every power of two from 4096 to 1 MiB is accepted; soft limit = entries − 64", async () => {
    for (let bytes = 4096; bytes <= MAX_RING_BYTES; bytes *= 2) {
      const vm = await newVm();
      vm.enableCap(RING, [bytes]);
      const st = vm.createVcpu(0).dirtyRingState;
      expect(st.entries).toBe(bytes / 16);
      expect(st.softLimit).toBe(bytes / 16 - 64);
      vm.dispose();
    }
  });

  it("only once: a second enable (same cap, other cap, other size) → EINVAL, the first size stays", async () => {
    const vm = await ringVm(512);
    expect(errnoOf(() => vm.enableCap(RING, [512 * 16]))).toBe("EINVAL");
    expect(errnoOf(() => vm.enableCap(ACQ_REL, [4096]))).toBe("EINVAL");
    expect(errnoOf(() => vm.enableCap(RING, [65536]))).toBe("EINVAL");
    expect(vm.dirtyRingSize).toBe(512 * 16);
    const vm2 = await ringVm(256, {}, ACQ_REL);
    expect(errnoOf(() => vm2.enableCap(RING, [4096]))).toBe("EINVAL");
  });

  it("not after a vCPU exists → EINVAL (size errors are checked first: E2BIG wins)", async () => {
    const vm = await newVm();
    vm.createVcpu(0);
    expect(errnoOf(() => vm.enableCap(RING, [4096]))).toBe("EINVAL");
    expect(errnoOf(() => vm.enableCap(ACQ_REL, [4096]))).toBe("EINVAL");
    expect(vm.dirtyRingSize).toBe(0);
    // kernel order: power of two, minimum, E2BIG, once, vCPUs
    expect(errnoOf(() => vm.enableCap(RING, [2 * MIB]))).toBe("E2BIG");
    const vm2 = await ringVm(256);
    expect(errnoOf(() => vm2.enableCap(RING, [2 * MIB]))).toBe("E2BIG");
  });

  it("args[0] is truncated to the kernel's u32 size: 2^32 + 4096 is accepted as 4096", async () => {
    const vm = await newVm();
    vm.enableCap(RING, [2 ** 32 + 4096]);
    expect(vm.dirtyRingSize).toBe(4096);
    expect(vm.createVcpu(0).dirtyRingState.entries).toBe(256);

    const vm2 = await newVm();
    vm2.enableCap(ACQ_REL, [(1n << 40n) + 16384n]);
    expect(vm2.dirtyRingSize).toBe(16384);

    const cases: Array<[number | bigint, string]> = [
      [2 ** 32, "EINVAL"], // truncates to 0
      [2 ** 32 + 2 * MIB, "E2BIG"], // truncates to 2 MiB
      [-1, "EINVAL"], // 0xffffffff: not a power of two
      [-4096, "EINVAL"], // 0xfffff000
      [(1n << 63n) | 2048n, "EINVAL"], // 2048: too small
    ];
    for (const [arg, errno] of cases) {
      const v = await newVm();
      expect(errnoOf(() => v.enableCap(RING, [arg])), `arg ${arg}`).toBe(errno);
      expect(v.dirtyRingSize).toBe(0);
    }
  });

  it("with PML the reserve is 64 + 512 = 576 entries: smallest ring 1024 entries (16384 B), 8192 B → EINVAL, soft limit entries − 576", async () => {
    for (const bytes of [4096, 8192]) {
      const vm = await newVm({ pml: true });
      expect(errnoOf(() => vm.enableCap(RING, [bytes])), `bytes ${bytes}`).toBe("EINVAL");
      expect(vm.dirtyRingSize).toBe(0);
    }
    for (const [bytes, soft] of [
      [16384, 1024 - 576],
      [65536, 4096 - 576],
      [MAX_RING_BYTES, 65536 - 576],
    ]) {
      const vm = await newVm({ pml: true });
      vm.enableCap(ACQ_REL, [bytes]);
      const st = vm.createVcpu(0).dirtyRingState;
      expect(st.entries).toBe(bytes / 16);
      expect(st.softLimit).toBe(soft);
    }
    const vm = await newVm({ pml: true });
    expect(errnoOf(() => vm.enableCap(RING, [2 * MIB]))).toBe("E2BIG");
  });

  it("a rejected enable leaves the VM in bitmap mode", async () => {
    for (const [opts, bytes] of [
      [{}, 2048],
      [{}, 2 * MIB],
      [{}, 6000],
      [{ pml: true }, 8192],
    ] as Array<[VmOptions, number]>) {
      const vm = await newVm(opts);
      expect(errnoOf(() => vm.enableCap(RING, [bytes]))).toBeDefined();
      expect(vm.dirtyRingSize).toBe(0);
      addSlot(vm, 0, BASE, 64);
      const vcpu = vm.createVcpu(0);
      expect(vcpu.dirtyRing.byteLength).toBe(0);
      writePages(vcpu, BASE, [3, 9]);
      expect(vcpu.stats.ringPushes).toBe(0n);
      expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 9]);
      expect(errnoOf(() => vm.resetDirtyRings())).toBe("EINVAL");
    }
    // and a later valid enable still works (no vCPU yet)
    const vm = await newVm();
    expect(errnoOf(() => vm.enableCap(RING, [100]))).toBe("EINVAL");
    vm.enableCap(RING, [4096]);
    expect(vm.dirtyRingSize).toBe(4096);
  });

  it("KVM_RESET_DIRTY_RINGS on a VM without a ring → EINVAL", async () => {
    const vm = await newVm();
    expect(errnoOf(() => vm.resetDirtyRings())).toBe("EINVAL");
    vm.createVcpu(0);
    expect(errnoOf(() => vm.resetDirtyRings())).toBe("EINVAL");
  });
});

// ---------------------------------------------------------------------------------------
describe("§3.3/§3.8 KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP", () => {
  it("EINVAL without a ring", async () => {
    const vm = await newVm();
    expect(errnoOf(() => vm.enableCap(WITH_BITMAP, [0]))).toBe("EINVAL");
    // still in plain bitmap mode
    addSlot(vm, 0, BASE, 64);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });

  it("EINVAL with flags ≠ 0", async () => {
    for (const flags of [1, 2, 0x8000_0000]) {
      const vm = await ringVm(256);
      expect(errnoOf(() => vm.enableCap(WITH_BITMAP, [0], flags)), `flags ${flags}`).toBe("EINVAL");
      addSlot(vm, 0, BASE, 64);
      expect(errnoOf(() => vm.getDirtyLog(0))).toBe("ENXIO"); // not enabled
    }
  });

  it("EINVAL once any memslot exists, in address space 0 or 1 (logged or not); OK again when all are deleted", async () => {
    for (const slot of [0, 7, AS1 | 0, AS1 | 3]) {
      for (const flags of [0, LOG]) {
        const vm = await ringVm(256);
        addSlot(vm, slot, BASE, 16, flags);
        expect(errnoOf(() => vm.enableCap(WITH_BITMAP, [])), `slot ${slot} flags ${flags}`).toBe("EINVAL");
        deleteSlot(vm, slot, BASE);
        vm.enableCap(WITH_BITMAP, []);
      }
    }
    const vm = await ringVm(256);
    vm.setTssAddr(0xfffbd000); // internal slots count too (they live in every address space)
    expect(errnoOf(() => vm.enableCap(WITH_BITMAP, []))).toBe("EINVAL");
  });

  it("OK on a ring VM without memslots, even with vCPUs", async () => {
    const vm = await ringVm(256);
    vm.createVcpu(0);
    vm.enableCap(WITH_BITMAP, [], 0);
    addSlot(vm, 0, BASE, 64);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });

  it("GET and CLEAR on a ring VM without it → ENXIO (checked before the slot)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [1]);
    expect(errnoOf(() => vm.getDirtyLog(0))).toBe("ENXIO");
    expect(errnoOf(() => vm.getDirtyLog(5))).toBe("ENXIO"); // no such slot: ENXIO still first
    expect(errnoOf(() => vm.getDirtyLog(40000))).toBe("ENXIO"); // bad id: ENXIO still first
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 64, new Uint8Array(8)))).toBe("ENXIO");
    expect(errnoOf(() => vm.clearDirtyLog(0, 1, 64, new Uint8Array(8)))).toBe("ENXIO"); // before the alignment check
  });

  it("with it: GET works; vCPU writes go to the ring only; vm.kvmWriteGuest (no running vCPU) lands in the bitmap", async () => {
    const vm = await ringVm(256);
    vm.enableCap(WITH_BITMAP, []);
    addSlot(vm, 0, BASE, 64);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [3, 4]);
    expect(vcpu.stats.ringPushes).toBe(2n);
    vm.kvmWriteGuest(BASE + 9 * PAGE + 8, 5n);
    vm.kvmWriteGuest(BASE + 40 * PAGE, 5n);
    expect(vcpu.stats.ringPushes).toBe(2n); // no vCPU context: not pushed
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([9, 40]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]); // classic GET moved the bits out
    expect(vm.stats.noVcpuWarnings).toBe(0); // nothing was lost
    const h = harvestDirtyRings(vm);
    expect([...(h.offsets.get(0) ?? [])]).toEqual([3, 4]);
    expect(h.reset).toBe(2);
    // CLEAR works too
    vm.kvmWriteGuest(BASE + 10 * PAGE, 1n);
    const bm = new Uint8Array(8);
    bm[1] = 1 << 2; // page 10
    vm.clearDirtyLog(0, 0, 64, bm);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });

  it("without it: a write with no running vCPU on a ring VM is lost and counted in noVcpuWarnings", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    const vcpu = vm.createVcpu(0);
    vm.kvmWriteGuest(BASE + 9 * PAGE, 5n);
    vm.kvmWriteGuest(BASE + 11 * PAGE, 5n);
    expect(vm.stats.noVcpuWarnings).toBe(2);
    expect(vcpu.stats.ringPushes).toBe(0n);
    expect(vcpu.dirtyRing.every((b) => b === 0)).toBe(true);
    expect(harvestDirtyRings(vm).entries).toBe(0);
    // an unlogged slot loses nothing: no warning
    addSlot(vm, 1, BASE2, 16, 0);
    vm.kvmWriteGuest(BASE2, 1n);
    expect(vm.stats.noVcpuWarnings).toBe(2);
    // the vCPU-context variant pushes into that vCPU's ring
    vcpu.kvmWriteGuest(BASE + 9 * PAGE, 6n);
    expect(keysOf(new Collector().harvest(vcpu))).toEqual(["0:9"]);
  });

  it("bitmap VM (control): vm.kvmWriteGuest lands in the bitmap without warning", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 64);
    vm.createVcpu(0);
    vm.kvmWriteGuest(BASE + 9 * PAGE, 5n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([9]);
    expect(vm.stats.noVcpuWarnings).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------
describe("§0.1/§3.2 entry layout and state machine", () => {
  it("push publishes flags = DIRTY (u32 @0), slot (u32 @4), slot-relative offset (u64 @8); harvest → RESET; reset → 0 with slot/offset kept", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 3, BASE, 512);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [5, 300]);
    const bytes = vcpu.dirtyRing;
    // raw little-endian bytes of entry 0: 01 00 00 00 | 03 00 00 00 | 05 00 .. 00
    expect([...bytes.subarray(0, 16)]).toEqual([1, 0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    expect(entryAt(vcpu, 1)).toEqual({ flags: DIRTY, slot: 3, offset: 300n });
    expect(entryAt(vcpu, 2)).toEqual({ flags: 0, slot: 0, offset: 0n });
    expect(bytes.subarray(32).every((b) => b === 0)).toBe(true);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 2, resetIndex: 0 });

    const seen: Array<[number, number]> = [];
    expect(collectDirtyRing(vcpu, (s, o) => seen.push([s, o]))).toBe(2);
    expect(seen).toEqual([
      [3, 5],
      [3, 300],
    ]);
    expect(entryAt(vcpu, 0).flags).toBe(RESET);
    expect(entryAt(vcpu, 1).flags).toBe(RESET);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 2, resetIndex: 0 }); // harvest alone resets nothing

    expect(vm.resetDirtyRings()).toBe(2);
    expect(entryAt(vcpu, 0)).toEqual({ flags: 0, slot: 3, offset: 5n });
    expect(entryAt(vcpu, 1)).toEqual({ flags: 0, slot: 3, offset: 300n });
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 2, resetIndex: 2 });
  });

  it("dirtyRing views exactly entries × 16 bytes; the ring wraps at `entries` (entry for counter c is c & (entries − 1))", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 1024);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.dirtyRing.byteLength).toBe(256 * 16);
    const c = new Collector();
    // 3 epochs of 100 distinct pages: counters 0..299, positions wrap after 255
    for (let round = 0; round < 3; round++) {
      writePages(
        vcpu,
        BASE,
        Array.from({ length: 100 }, (_, i) => round * 100 + i),
      );
      const h = c.harvest(vcpu);
      expect(h.map((e) => e.offset)).toEqual(Array.from({ length: 100 }, (_, i) => round * 100 + i));
      expect(h.map((e) => e.pos)).toEqual(Array.from({ length: 100 }, (_, i) => (round * 100 + i) & 255));
      expect(vm.resetDirtyRings()).toBe(100);
    }
    expect(entryAt(vcpu, 299 & 255)).toEqual({ flags: 0, slot: 0, offset: 299n });
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 300, resetIndex: 300 });
  });

  it("slot field is as_id << 16 | id: SMM writes (vcpu.smm = true) push the address-space-1 slot; the reset re-arms its SPTEs", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 2, BASE, 64);
    addSlot(vm, AS1 | 2, BASE, 64);
    addSlot(vm, AS1 | 9, BASE2, 64);
    const vcpu = vm.createVcpu(0);
    // distinct gfns per address space here; the same gfn in both is the next test
    writePages(vcpu, BASE, [7]);
    vcpu.smm = true;
    writePages(vcpu, BASE, [8, 9]);
    writePages(vcpu, BASE2, [1]);
    vcpu.smm = false;
    writePages(vcpu, BASE, [10]);
    expect(entryAt(vcpu, 0)).toEqual({ flags: DIRTY, slot: 2, offset: 7n });
    expect(entryAt(vcpu, 1)).toEqual({ flags: DIRTY, slot: 0x1_0002, offset: 8n });
    expect(entryAt(vcpu, 2)).toEqual({ flags: DIRTY, slot: 0x1_0002, offset: 9n });
    expect(entryAt(vcpu, 3)).toEqual({ flags: DIRTY, slot: 0x1_0009, offset: 1n });
    expect(entryAt(vcpu, 4)).toEqual({ flags: DIRTY, slot: 2, offset: 10n });
    const h = harvestDirtyRings(vm);
    expect([...(h.offsets.get(AS1 | 2) ?? [])]).toEqual([8, 9]);
    expect([...(h.offsets.get(AS1 | 9) ?? [])]).toEqual([1]);
    expect([...(h.offsets.get(2) ?? [])]).toEqual([7, 10]);
    expect(h.reset).toBe(5);
    expect(isW(vm, BASE + 8 * PAGE, 1)).toBe(false);
    expect(isW(vm, BASE + 9 * PAGE, 1)).toBe(false);
    expect(isW(vm, BASE2 + 1 * PAGE, 1)).toBe(false);
    expect(isW(vm, BASE + 7 * PAGE, 0)).toBe(false);
    vcpu.smm = true;
    writePages(vcpu, BASE, [9]);
    expect(keysOf(new Collector().harvest(vcpu))).toEqual([]); // harvestDirtyRings' cursor is elsewhere
    expect(entryAt(vcpu, 5)).toEqual({ flags: DIRTY, slot: 0x1_0002, offset: 9n });
  });

  it("the same gfn written in address space 0 and then in SMM gives one entry per slot (separate SPTEs per address space)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 2, BASE, 64, LOG, true);
    addSlot(vm, AS1 | 2, BASE, 64, LOG, true);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [7], 0x1111n);
    vcpu.smm = true;
    writePages(vcpu, BASE, [7], 0x2222n);
    vcpu.smm = false;
    expect(keysOf(new Collector().harvest(vcpu))).toEqual(["2:7", `${AS1 | 2}:7`]);
    // and each store landed in its own address space's memory
    expect(le64(vm.guestMemory(2) as Uint8Array, 7 * PAGE)).toBe(0x1111n);
    expect(le64(vm.guestMemory(AS1 | 2) as Uint8Array, 7 * PAGE)).toBe(0x2222n);
  });

  it("offset stays slot-relative after a MOVE; pages written before and after the MOVE give two entries each; all are harvested and reset", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 4, BASE, 128);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [10, 11]);
    vm.setUserMemoryRegion({ slot: 4, flags: LOG, guestPhysAddr: BASE2, memorySize: 128 * PAGE });
    writePages(vcpu, BASE2, [10, 11, 12]);
    const c = new Collector();
    const h = c.harvest(vcpu);
    expect(keysOf(h)).toEqual(["4:10", "4:11", "4:10", "4:11", "4:12"]);
    expect(vm.resetDirtyRings()).toBe(5);
    // re-armed at the new location
    expect(isW(vm, BASE2 + 10 * PAGE)).toBe(false);
    expect(isW(vm, BASE2 + 12 * PAGE)).toBe(false);
    writePages(vcpu, BASE2, [12, 10]);
    expect(keysOf(c.harvest(vcpu))).toEqual(["4:12", "4:10"]);
    expect(vm.resetDirtyRings()).toBe(2);
  });
});

// ---------------------------------------------------------------------------------------
describe("§3.5 push: one entry per page per epoch", () => {
  it("a page written several times between resets gives one entry; order = first writes", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [7, 3, 7, 9, 3, 3, 1, 9]);
    expect(vcpu.stats.ringPushes).toBe(4n);
    expect(vcpu.dirtyRingState.dirtyIndex).toBe(4);
    const c = new Collector();
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:7", "0:3", "0:9", "0:1"]);
    expect(vm.resetDirtyRings()).toBe(4);
    // next epoch: the same pages again, new order
    writePages(vcpu, BASE, [1, 1, 9, 7, 3]);
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:1", "0:9", "0:7", "0:3"]);
  });

  it("two slots interleaved: entries follow first writes across slots, one per (slot, page)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    addSlot(vm, 1, BASE2, 64);
    const vcpu = vm.createVcpu(0);
    const seq: Array<[number, number]> = [
      [0, 5],
      [1, 5],
      [0, 6],
      [1, 5],
      [0, 5],
      [1, 2],
      [0, 2],
      [1, 6],
      [1, 2],
    ];
    for (const [s, p] of seq) expect(vcpu.writeGuest((s ? BASE2 : BASE) + p * PAGE, 1n)).toBe(0);
    const h = harvestDirtyRings(vm);
    expect(h.entries).toBe(6);
    expect(h.reset).toBe(6);
    expect([...(h.offsets.get(0) ?? [])]).toEqual([5, 6, 2]);
    expect([...(h.offsets.get(1) ?? [])]).toEqual([5, 2, 6]);
    expect(keysOf(new Collector().harvest(vcpu))).toEqual([]); // the helper's own cursor moved on
    expect([0, 1, 2, 3, 4, 5].map((i) => `${entryAt(vcpu, i).slot}:${entryAt(vcpu, i).offset}`)).toEqual([
      "0:5",
      "1:5",
      "0:6",
      "1:2",
      "0:2",
      "1:6",
    ]);
  });

  it("several vCPUs: each write lands in the ring of the vCPU that made it", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    const a = vm.createVcpu(0);
    const b = vm.createVcpu(5);
    writePages(a, BASE, [1, 2]);
    writePages(b, BASE, [3, 1]); // page 1 is already writable: no second entry
    writePages(b, BASE, [4]);
    const c = new Collector();
    expect(keysOf(c.harvest(a))).toEqual(["0:1", "0:2"]);
    expect(keysOf(c.harvest(b))).toEqual(["0:3", "0:4"]);
    expect(vm.resetDirtyRings()).toBe(4);
  });

  it("writes while logging is off push nothing (unlogged slot, or logging turned off)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64, 0);
    addSlot(vm, 1, BASE2, 64);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [1, 2, 3]);
    expect(vcpu.stats.ringPushes).toBe(0n);
    writePages(vcpu, BASE2, [1]);
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: BASE2, memorySize: 64 * PAGE });
    writePages(vcpu, BASE2, [2, 3, 1]);
    expect(vcpu.stats.ringPushes).toBe(1n);
    expect(vcpu.dirtyRingState.dirtyIndex).toBe(1);
  });

  it("entries pending across a logging-off are harvested and reset normally; a page written while off is reported at its next write once logging is back on", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 1, BASE, 64);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [4, 5]);
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: BASE, memorySize: 64 * PAGE });
    writePages(vcpu, BASE, [6, 4]);
    const c = new Collector();
    expect(keysOf(c.harvest(vcpu))).toEqual(["1:4", "1:5"]);
    expect(vm.resetDirtyRings()).toBe(2);
    vm.setUserMemoryRegion({ slot: 1, flags: LOG, guestPhysAddr: BASE, memorySize: 64 * PAGE });
    writePages(vcpu, BASE, [6, 7, 4]);
    expect(keysOf(c.harvest(vcpu))).toEqual(["1:6", "1:7", "1:4"]);
    expect(vm.resetDirtyRings()).toBe(3);
  });

  it("vcpu.kvmWriteGuest pushes on every call (KVM-originated writes are not deduplicated by an SPTE)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    const vcpu = vm.createVcpu(0);
    vcpu.kvmWriteGuest(BASE + 2 * PAGE, 1n);
    vcpu.kvmWriteGuest(BASE + 2 * PAGE + 8, 1n);
    expect(keysOf(new Collector().harvest(vcpu))).toEqual(["0:2", "0:2"]);
    expect(vm.resetDirtyRings()).toBe(2);
  });
});

// ---------------------------------------------------------------------------------------
describe("§3.6 soft-full exit (KVM_EXIT_DIRTY_RING_FULL)", () => {
  it("a 4096-entry ring exits when it holds 4032 entries; the store did not retire; further entries exit until a reset; the retried store pushes the same gfn again", async () => {
    const vm = await ringVm(4096);
    addSlot(vm, 0, BASE, 4096, LOG, true);
    const vcpu = vm.createVcpu(0);
    const mem = vm.guestMemory(0) as Uint8Array;
    const X = 4031; // the 4032nd distinct page
    vm.writeUserMemory(0, X * PAGE, u64bytes(0xaaaan));
    let retired = 0;
    for (let p = 0; p < X; p++) if (vcpu.writeGuest(BASE + p * PAGE, BigInt(p)) === 0) retired++;
    expect(retired).toBe(4031);
    expect(vcpu.stats.ringFullExits).toBe(0n);
    expect(vcpu.dirtyRingState).toMatchObject({ softLimit: 4032, dirtyIndex: 4031, resetIndex: 0 });

    expect(vcpu.writeGuest(BASE + X * PAGE, 0xbbbbn)).toBe(FULL);
    expect(vcpu.exitReason).toBe(FULL);
    expect(vcpu.stats.ringFullExits).toBe(1n);
    expect(vcpu.dirtyRingState.dirtyIndex).toBe(4032);
    expect(entryAt(vcpu, 4031)).toEqual({ flags: DIRTY, slot: 0, offset: BigInt(X) });
    expect(le64(mem, X * PAGE)).toBe(0xaaaan); // not retired

    // every further guest entry exits again and pushes nothing
    const stores = vcpu.stats.stores;
    expect(vcpu.writeGuest(BASE + X * PAGE, 0xbbbbn)).toBe(FULL);
    expect(vcpu.writeGuest(BASE + 0 * PAGE, 0xccccn)).toBe(FULL); // even a writable page
    expect(vcpu.writeGuest(BASE + 4095 * PAGE, 0xccccn)).toBe(FULL); // or a fresh one
    vcpu.readGuest(BASE);
    expect(vcpu.exitReason).toBe(FULL);
    expect(vcpu.writeStrided(BASE + 4000 * PAGE, PAGE, 10, 1n)).toBe(0);
    expect(vcpu.stats.stores).toBe(stores);
    expect(vcpu.stats.ringFullExits).toBe(6n);
    expect(vcpu.dirtyRingState.dirtyIndex).toBe(4032);
    expect(le64(mem, 0)).toBe(0n);
    expect(le64(mem, X * PAGE)).toBe(0xaaaan);

    // a reset that resets nothing does not help
    expect(vm.resetDirtyRings()).toBe(0);
    expect(vcpu.writeGuest(BASE + X * PAGE, 0xbbbbn)).toBe(FULL);

    const c = new Collector();
    const h = c.harvest(vcpu);
    expect(h.length).toBe(4032);
    expect(h[4031].offset).toBe(X);
    expect(vm.resetDirtyRings()).toBe(4032);
    const fast = vcpu.stats.fastFaults;
    expect(vcpu.writeGuest(BASE + X * PAGE, 0xbbbbn)).toBe(0);
    expect(vcpu.stats.fastFaults).toBe(fast + 1n); // faulted again on the re-armed page
    expect(le64(mem, X * PAGE)).toBe(0xbbbbn);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 4033, resetIndex: 4032 });
    expect(keysOf(c.harvest(vcpu))).toEqual([`0:${X}`]); // the duplicate: exactly one
    expect(vm.resetDirtyRings()).toBe(1);
  });

  it("usage just under the limit lets the vCPU run: resetting only the oldest entry lets the retried store retire without a new push", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 256, LOG, true);
    const vcpu = vm.createVcpu(0);
    const mem = vm.guestMemory(0) as Uint8Array;
    for (let p = 0; p < 191; p++) expect(vcpu.writeGuest(BASE + p * PAGE, 1n)).toBe(0);
    expect(vcpu.writeGuest(BASE + 191 * PAGE, 0x55n)).toBe(FULL);
    const c = new Collector();
    expect(keysOf(c.harvest(vcpu, 1))).toEqual(["0:0"]);
    expect(vm.resetDirtyRings()).toBe(1); // used = 191 < 192
    const pushes = vcpu.stats.ringPushes;
    expect(vcpu.writeGuest(BASE + 191 * PAGE, 0x55n)).toBe(0);
    expect(vcpu.stats.ringPushes).toBe(pushes); // its entry is still pending: still writable
    expect(le64(mem, 191 * PAGE)).toBe(0x55n);
    // the next new page reaches the limit again
    expect(vcpu.writeGuest(BASE + 192 * PAGE, 1n)).toBe(FULL);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 193, resetIndex: 1 });
  });

  it("duplicates equal ring-full exits: a sequential pass over 1000 pages with a 256-entry ring", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 1000);
    const vcpu = vm.createVcpu(0);
    const c = new Collector();
    const seen: number[] = [];
    let exits = 0;
    for (let p = 0; p < 1000; p++) {
      let r = vcpu.writeGuest(BASE + p * PAGE, 1n);
      if (r === FULL) {
        exits++;
        const h = c.harvest(vcpu);
        expect(vm.resetDirtyRings()).toBe(h.length);
        seen.push(...h.map((e) => e.offset));
        r = vcpu.writeGuest(BASE + p * PAGE, 1n);
      }
      expect(r).toBe(0);
    }
    const h = c.harvest(vcpu);
    expect(vm.resetDirtyRings()).toBe(h.length);
    seen.push(...h.map((e) => e.offset));
    expect(exits).toBe(5); // 192, 191, 191, 191, 191 new pages per epoch
    expect(Number(vcpu.stats.ringFullExits)).toBe(exits);
    expect(seen.length).toBe(1000 + exits);
    expect(new Set(seen).size).toBe(1000);
    const dup = seen.filter((o, i) => seen.indexOf(o) !== i);
    expect(dup).toEqual([191, 382, 573, 764, 955]);
  });

  it("inside one run (writeStrided) the store that reaches the limit does not retire; the retried run pushes its page again", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 512, LOG, true);
    const vcpu = vm.createVcpu(0);
    const mem = vm.guestMemory(0) as Uint8Array;
    expect(vcpu.writeStrided(BASE, PAGE, 300, 0x99n)).toBe(191);
    expect(vcpu.exitReason).toBe(FULL);
    expect(le64(mem, 190 * PAGE)).toBe(0x99n);
    expect(le64(mem, 191 * PAGE)).toBe(0n);
    expect(vcpu.dirtyRingState.dirtyIndex).toBe(192);
    const c = new Collector();
    const h = c.harvest(vcpu);
    expect(h.map((e) => e.offset)).toEqual(Array.from({ length: 192 }, (_, i) => i));
    expect(vm.resetDirtyRings()).toBe(192);
    expect(vcpu.writeStrided(BASE + 191 * PAGE, PAGE, 109, 0x99n)).toBe(109);
    expect(c.harvest(vcpu).map((e) => e.offset)).toEqual(Array.from({ length: 109 }, (_, i) => 191 + i));
    expect(le64(mem, 191 * PAGE)).toBe(0x99n);
  });

  it("KVM_RUN with a sequential guest workload: exits, entries and duplicates match the replay model", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 1000);
    const vcpu = vm.createVcpu(0);
    vcpu.setWorkload({ pattern: "sequential", gpa: BASE, pages: 1000, batch: 1 << 20, limit: 1500 });
    const c = new Collector();
    const harvests: string[][] = [];
    const exits: number[] = [];
    const harvest = () => {
      const h = c.harvest(vcpu);
      expect(vm.resetDirtyRings()).toBe(h.length);
      harvests.push(keysOf(h));
    };
    for (let guard = 0; guard < 100; guard++) {
      const r = vcpu.runSync();
      if (r === FULL) {
        exits.push(Number(vcpu.workloadStores)); // index of the pending store
        harvest();
        continue;
      }
      expect(r).toBe(KVM_EXIT_SHUTDOWN); // the workload limit
      break;
    }
    harvest();
    expect(vcpu.workloadStores).toBe(1500n);
    const trace = Array.from({ length: 1500 }, (_, i) => ({ slot: 0, offset: i % 1000 }));
    const expected = expectedReplay(trace, 256, new Set());
    expect(exits).toEqual(expected.exits);
    expect(harvests).toEqual(expected.harvests);
    expect(Number(vcpu.stats.ringFullExits)).toBe(expected.duplicates);
  });

  it("with PML the soft limit is entries − 576: a 1024-entry ring exits at 448 entries", async () => {
    const vm = await ringVm(1024, { pml: true });
    addSlot(vm, 0, BASE, 1024);
    const vcpu = vm.createVcpu(0);
    for (let p = 0; p < 447; p++) expect(vcpu.writeGuest(BASE + p * PAGE, 1n)).toBe(0);
    expect(vcpu.writeGuest(BASE + 447 * PAGE, 1n)).toBe(FULL);
    expect(vcpu.dirtyRingState).toMatchObject({ softLimit: 448, dirtyIndex: 448 });
  });
});

// ---------------------------------------------------------------------------------------
describe("§3.7 KVM_RESET_DIRTY_RINGS", () => {
  it("returns exactly the number harvested over all vCPUs; unharvested entries stay DIRTY and are not reset", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 256);
    const a = vm.createVcpu(0);
    const b = vm.createVcpu(1);
    writePages(a, BASE, [1, 2, 3, 4, 5]);
    writePages(b, BASE, [10, 11, 12]);
    const c = new Collector();
    expect(c.harvest(a, 3).length).toBe(3);
    expect(c.harvest(b, 1).length).toBe(1);
    expect(vm.resetDirtyRings()).toBe(4);
    expect(a.dirtyRingState).toMatchObject({ dirtyIndex: 5, resetIndex: 3 });
    expect(b.dirtyRingState).toMatchObject({ dirtyIndex: 3, resetIndex: 1 });
    expect([0, 1, 2, 3, 4].map((i) => entryAt(a, i).flags)).toEqual([0, 0, 0, DIRTY, DIRTY]);
    expect([0, 1, 2].map((i) => entryAt(b, i).flags)).toEqual([0, DIRTY, DIRTY]);
    // re-armed: exactly the harvested pages
    expect([1, 2, 3, 4, 5].map((p) => isW(vm, BASE + p * PAGE))).toEqual([false, false, false, true, true]);
    expect([10, 11, 12].map((p) => isW(vm, BASE + p * PAGE))).toEqual([false, true, true]);
    // nothing harvested since: nothing reset
    expect(vm.resetDirtyRings()).toBe(0);
    // the rest is harvested later, in order
    expect(keysOf(c.harvest(a))).toEqual(["0:4", "0:5"]);
    expect(keysOf(c.harvest(b))).toEqual(["0:11", "0:12"]);
    expect(vm.resetDirtyRings()).toBe(4);
    expect([4, 5, 11, 12].map((p) => isW(vm, BASE + p * PAGE))).toEqual([false, false, false, false]);
  });

  it("re-armed pages push again on their next write; between harvest and reset writes to harvested pages are not pushed", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 128);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [1, 2, 70]);
    const c = new Collector();
    expect(c.harvest(vcpu).length).toBe(3);
    writePages(vcpu, BASE, [2, 1, 70]); // still writable: no push
    expect(vcpu.stats.ringPushes).toBe(3n);
    expect(isW(vm, BASE + 2 * PAGE)).toBe(true);
    expect(vm.resetDirtyRings()).toBe(3);
    expect(isW(vm, BASE + 2 * PAGE)).toBe(false);
    writePages(vcpu, BASE, [70, 2, 1, 3]);
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:70", "0:2", "0:1", "0:3"]);
  });

  it("one TLB flush per reset call that reset anything, none otherwise", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 128);
    addSlot(vm, 1, BASE2, 128);
    const a = vm.createVcpu(0);
    const b = vm.createVcpu(1);
    const flushes = () => vm.stats.tlbFlushes;
    let f = flushes();
    expect(vm.resetDirtyRings()).toBe(0); // empty rings
    expect(flushes()).toBe(f);
    writePages(a, BASE, [1, 2, 100]);
    writePages(b, BASE2, [3]);
    f = flushes();
    expect(vm.resetDirtyRings()).toBe(0); // entries pushed but none harvested
    expect(flushes()).toBe(f);
    const c = new Collector();
    c.harvestAll(vm);
    expect(vm.resetDirtyRings()).toBe(4); // several batches, two rings, two slots
    expect(flushes()).toBe(f + 1n);
    expect(vm.resetDirtyRings()).toBe(0);
    expect(flushes()).toBe(f + 1n);
  });

  // Coalescing (spec §3.7): batches only decide how the re-arming is grouped. Whatever the
  // grouping, every harvested page must be re-armed — a wrong coalescing step would drop a
  // bit (forward d ≥ 64, backward d ≤ −64, or a backward shift that pushes a set bit off
  // the top), leaving that page writable so its next write would not be reported.
  const cases: Array<[string, Array<[number, number]>]> = [
    ["forward within 64 pages", [0, 1, 5, 63, 2].map((o) => [0, o])],
    ["forward d = 64 starts a new batch", [0, 64, 65].map((o) => [0, o])],
    ["forward d = 63 then 64", [200, 263, 264].map((o) => [0, o])],
    ["backward without losing a bit (100, 90, 95)", [100, 90, 95].map((o) => [0, o])],
    ["backward d = −63 keeps the top bit", [100, 37, 38].map((o) => [0, o])],
    ["backward d = −64 starts a new batch", [100, 36, 37].map((o) => [0, o])],
    ["backward step that would lose a bit (10, 73, 5)", [10, 73, 5].map((o) => [0, o])],
    ["backward chain losing a bit late (50, 60, 113, 49)", [50, 60, 113, 49, 48].map((o) => [0, o])],
    ["descending run", Array.from({ length: 130 }, (_, i) => [0, 200 - i] as [number, number])],
    ["zig-zag", [500, 437, 499, 436, 501, 440, 374, 600].map((o) => [0, o])],
    ["slot change starts a new batch", [
      [0, 5],
      [1, 6],
      [0, 6],
      [1, 5],
      [1, 7],
      [0, 4],
    ]],
    ["address-space change starts a new batch (same slot id, as_id differs)", [
      [0, 5],
      [AS1 | 0, 6],
      [AS1 | 0, 5],
      [0, 7],
      [AS1 | 0, 4],
    ]],
  ];
  it.each(cases)("coalescing: %s — every harvested page is re-armed, nothing else", async (_name, seq) => {
    const vm = await ringVm(4096);
    addSlot(vm, 0, BASE, 1024);
    addSlot(vm, 1, BASE2, 1024);
    // address space 1's slot 0 sits at other gfns than any AS 0 slot: the same-gfn case
    // across address spaces is tested on its own above
    addSlot(vm, AS1 | 0, BASE3, 1024);
    const vcpu = vm.createVcpu(0);
    const gpaOf = (s: number, o: number) => (s >>> 16 === 1 ? BASE3 : (s & 0xffff) === 1 ? BASE2 : BASE) + o * PAGE;
    const write = (s: number, o: number) => {
      vcpu.smm = s >>> 16 === 1;
      expect(vcpu.writeGuest(gpaOf(s, o), 9n)).toBe(0);
      vcpu.smm = false;
    };
    // neighbours in the same 64-page windows, pushed after the harvest: must stay writable
    const neighbours = new Map<string, [number, number]>();
    for (const [s, o] of seq) {
      for (const d of [-1, 1, 64, -64]) {
        const n = o + d;
        const k = entryKey(s, n);
        if (n >= 0 && n < 1024 && !seq.some(([s2, o2]) => s2 === s && o2 === n)) neighbours.set(k, [s, n]);
      }
    }
    for (const [s, o] of seq) write(s, o);
    const c = new Collector();
    const h = c.harvest(vcpu);
    expect(keysOf(h)).toEqual(seq.map(([s, o]) => entryKey(s, o)));
    for (const [s, n] of neighbours.values()) write(s, n); // pushed, not harvested
    expect(vm.resetDirtyRings()).toBe(seq.length);
    for (const [s, o] of seq) expect(isW(vm, gpaOf(s, o), s >>> 16), `harvested ${entryKey(s, o)} re-armed`).toBe(false);
    for (const [s, n] of neighbours.values()) expect(isW(vm, gpaOf(s, n), s >>> 16), `unharvested ${entryKey(s, n)} untouched`).toBe(true);
    // and the next writes of the harvested pages are reported again, in order
    c.harvest(vcpu);
    expect(vm.resetDirtyRings()).toBe(neighbours.size);
    for (const [s, o] of seq) write(s, o);
    expect(keysOf(c.harvest(vcpu))).toEqual(seq.map(([s, o]) => entryKey(s, o)));
  });
});

// ---------------------------------------------------------------------------------------
describe("§3.7 trust model: untrusted entries and a full ring", () => {
  it("slot deleted between harvest and reset: its entries are ignored silently, the count is still returned", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    // decoy: an unlogged slot at gpa 0 whose pages sit at the same offsets
    addSlot(vm, 5, 0, 64, 0);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [1, 2, 3, 10]);
    const c = new Collector();
    expect(c.harvest(vcpu).length).toBe(4);
    deleteSlot(vm, 0, BASE);
    writePages(vcpu, 0, [1, 2, 3, 10]); // decoy pages mapped writable (after the delete's zap)
    expect(vm.resetDirtyRings()).toBe(4);
    expect([1, 2, 3, 10].map((p) => isW(vm, p * PAGE))).toEqual([true, true, true, true]);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 4, resetIndex: 4 });
    // the slot comes back: tracking works again
    addSlot(vm, 0, BASE, 64);
    writePages(vcpu, BASE, [2]);
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:2"]);
    expect(vm.resetDirtyRings()).toBe(1);
  });

  it("slot re-created smaller with the same id: batches reaching beyond its end are ignored (nothing outside the slot is touched)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 64);
    const vcpu = vm.createVcpu(0);
    const pages = [20, 21, 22, 40, 63, 30];
    writePages(vcpu, BASE, pages);
    const c = new Collector();
    expect(c.harvest(vcpu).length).toBe(pages.length);
    deleteSlot(vm, 0, BASE);
    addSlot(vm, 0, BASE, 16);
    addSlot(vm, 1, BASE + 16 * PAGE, 48, 0); // right after the new end, unlogged
    const neighbourGpas = pages.map((p) => BASE + p * PAGE);
    for (const g of neighbourGpas) expect(vcpu.writeGuest(g, 1n)).toBe(0);
    expect(vm.resetDirtyRings()).toBe(pages.length);
    for (const g of neighbourGpas) expect(isW(vm, g), `gpa +${(g - BASE) / PAGE} pages`).toBe(true);
    // a batch straddling the new end ([14..17]) is ignored as a whole, like the kernel's check
    addSlot(vm, 2, BASE2, 64);
    writePages(vcpu, BASE2, [14, 15, 16, 17]);
    c.harvest(vcpu);
    deleteSlot(vm, 2, BASE2);
    addSlot(vm, 2, BASE2, 16);
    writePages(vcpu, BASE2, [14, 15]); // new entries, pushed after the harvest
    expect(vm.resetDirtyRings()).toBe(4);
    expect(isW(vm, BASE2 + 14 * PAGE)).toBe(true);
    expect(isW(vm, BASE2 + 15 * PAGE)).toBe(true);
  });

  it("a collector scribbling slot/offset into harvested entries does not change which pages are re-armed (dirtlog's documented rule)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 512);
    addSlot(vm, 1, BASE2, 500, 0); // unlogged decoy slot (no full 2M frame: mapped 4K)
    addSlot(vm, AS1 | 0, BASE, 512);
    const vcpu = vm.createVcpu(0);
    const pages = [3, 4, 5, 70, 300];
    writePages(vcpu, BASE, pages);
    const c = new Collector();
    const h = c.harvest(vcpu);
    expect(h.length).toBe(5);
    // decoys that are writable and must stay so
    writePages(vcpu, BASE2, [3, 4, 5]);
    writePages(vcpu, BASE, [200, 201]); // pushed after the harvest: pending
    vcpu.smm = true;
    writePages(vcpu, BASE, [71]); // a gfn not used in address space 0 (see the SMM test above)
    vcpu.smm = false;
    poke(vcpu, h[0].pos, { slot: 1, offset: 3n });
    poke(vcpu, h[1].pos, { slot: 0, offset: 200n });
    poke(vcpu, h[2].pos, { slot: 0xdead_beef, offset: 1n << 63n });
    poke(vcpu, h[3].pos, { slot: AS1 | 0, offset: 71n });
    poke(vcpu, h[4].pos, { slot: 1, offset: 0xffff_ffff_ffff_ffc0n });
    expect(vm.resetDirtyRings()).toBe(5);
    for (const p of pages) expect(isW(vm, BASE + p * PAGE), `page ${p} re-armed`).toBe(false);
    for (const p of [3, 4, 5]) expect(isW(vm, BASE2 + p * PAGE)).toBe(true);
    expect(isW(vm, BASE + 200 * PAGE)).toBe(true);
    expect(isW(vm, BASE + 201 * PAGE)).toBe(true);
    expect(isW(vm, BASE + 71 * PAGE, 1)).toBe(true);
    // no later write is lost
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:200", "0:201", `${AS1}:71`]);
    expect(vm.resetDirtyRings()).toBe(3);
    writePages(vcpu, BASE, pages);
    expect(keysOf(c.harvest(vcpu))).toEqual(pages.map((p) => entryKey(0, p)));
  });

  it("flags 0 or garbage (≠ 1) in harvested entries still let the reset proceed (dirtlog's documented rule); exactly DIRTY stops it", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 128);
    const vcpu = vm.createVcpu(0);
    const pages = [1, 2, 3, 4, 5, 6, 7];
    writePages(vcpu, BASE, pages);
    const c = new Collector();
    const h = c.harvest(vcpu);
    const garbage = [0, 0xdead_beef, 4, 3, 2, 0x8000_0000, 0xffff_ffff];
    for (const [i, e] of h.entries()) poke(vcpu, e.pos, { flags: garbage[i] });
    expect(vm.resetDirtyRings()).toBe(7);
    expect(h.map((e) => entryAt(vcpu, e.pos).flags)).toEqual([0, 0, 0, 0, 0, 0, 0]);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 7, resetIndex: 7 });
    for (const p of pages) expect(isW(vm, BASE + p * PAGE)).toBe(false);
    writePages(vcpu, BASE, [7, 1]);
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:7", "0:1"]);
    expect(vm.resetDirtyRings()).toBe(2);

    // a harvested entry whose flags are set back to exactly DIRTY stops the walk (kernel: no RESET bit)
    writePages(vcpu, BASE, [20, 21, 22, 23]);
    const h2 = c.harvest(vcpu);
    poke(vcpu, h2[2].pos, { flags: DIRTY });
    expect(vm.resetDirtyRings()).toBe(2);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 13, resetIndex: 11 });
    expect(isW(vm, BASE + 22 * PAGE)).toBe(true);
  });

  it("RESET written into free entries (never pushed) is not walked: the reset stops at dirty_index (dirtlog's documented rule)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 128);
    const vcpu = vm.createVcpu(0);
    writePages(vcpu, BASE, [1, 2, 3]);
    const c = new Collector();
    expect(c.harvest(vcpu).length).toBe(3);
    for (let pos = 3; pos < 20; pos++) poke(vcpu, pos, { flags: pos & 1 ? RESET : RESET | DIRTY, slot: 0, offset: 50n });
    writePages(vcpu, BASE, [50]); // pushed after the harvest, so position 3 is DIRTY again
    expect(vm.resetDirtyRings()).toBe(3);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 4, resetIndex: 3 });
    expect(isW(vm, BASE + 50 * PAGE)).toBe(true); // never harvested: not re-armed
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:50"]);
    expect(vm.resetDirtyRings()).toBe(1);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 4, resetIndex: 4 });
    // later pushes overwrite the scribbled free entries and are harvested normally
    writePages(vcpu, BASE, [7, 8]);
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:7", "0:8"]);
    expect(vm.resetDirtyRings()).toBe(2);
  });

  it("a hard-full ring (vcpu.kvmWriteGuest past `entries`) overwrites the oldest entries, counts ringFullWarnings, and writes nothing outside the ring", async () => {
    const vm = await ringVm(256);
    const a = vm.createVcpu(0);
    const b = vm.createVcpu(1);
    addSlot(vm, 0, BASE, 64, LOG, true);
    writePages(b, BASE, [60, 61, 62]);
    const mem = vm.guestMemory(0) as Uint8Array;
    const ringB = new Uint8Array(b.dirtyRing);
    const stateB = b.dirtyRingState;
    const statsB = b.stats;
    const expectedMem = new Uint8Array(mem);
    const pushes = 256 + 40;
    for (let i = 0; i < pushes; i++) {
      const page = i % 50;
      const off = page * PAGE + 8 * (i % 7);
      a.kvmWriteGuest(BASE + off, BigInt(i + 1));
      new DataView(expectedMem.buffer).setBigUint64(off, BigInt(i + 1), true);
    }
    expect(vm.stats.ringFullWarnings).toBe(40);
    expect(a.dirtyRingState).toMatchObject({ entries: 256, dirtyIndex: pushes, resetIndex: 0 });
    // entry for counter c is at c & 255: the newest 40 overwrote positions 0..39
    for (let i = 0; i < 256; i++) {
      const c = i < 40 ? 256 + i : i;
      expect(entryAt(a, i)).toEqual({ flags: DIRTY, slot: 0, offset: BigInt(c % 50) });
    }
    expect(a.dirtyRing.byteLength).toBe(4096);
    expect(sameBytes(b.dirtyRing, ringB)).toBe(true);
    expect(b.dirtyRingState).toEqual(stateB);
    expect(b.stats).toEqual(statsB);
    expect(sameBytes(mem, expectedMem)).toBe(true);
    // the guest cannot run: soft-full
    expect(a.writeGuest(BASE, 1n)).toBe(FULL);
    expect(b.writeGuest(BASE + 63 * PAGE, 1n)).toBe(0);
  });

  it("after a hard-full overwrite, an honest harvest + reset returns the number harvested (the kernel stops at the entry it just zeroed)", async () => {
    const vm = await ringVm(256);
    addSlot(vm, 0, BASE, 512);
    const vcpu = vm.createVcpu(0);
    for (let i = 0; i < 257; i++) vcpu.kvmWriteGuest(BASE + i * PAGE, 1n);
    expect(vm.stats.ringFullWarnings).toBe(1);
    expect(entryAt(vcpu, 0)).toEqual({ flags: DIRTY, slot: 0, offset: 256n });
    const c = new Collector();
    const h = c.harvest(vcpu);
    expect(h.length).toBe(256); // position 0 (counter 256) is read at fetch 0; fetch 256 finds RESET
    // kernel: resets counters 0..255, then finds position 0 (counter 256) with flags 0 → stops at 256
    expect(vm.resetDirtyRings()).toBe(256);
  });
});

// ---------------------------------------------------------------------------------------
describe("§5.10 PML", () => {
  // Every VM exit drains the PML buffer, and every return from writeGuest / writeStrided is
  // an exit (a vCPU outside KVM_RUN has an empty buffer), so logged pages reach the ring at
  // the latest when the call returns; inside one writeStrided run a full buffer takes a
  // PML-full exit.

  /** PML VM; slot 0 (1024 pages, unbacked) mapped by writes first, then logging enabled. */
  async function pmlSetup(ringEntries: number | undefined): Promise<{ vm: Vm; vcpu: Vcpu }> {
    const vm = await newVm({ pml: true });
    if (ringEntries) vm.enableCap(RING, [ringEntries * 16]);
    addSlot(vm, 0, BASE, 1024, 0);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeStrided(BASE, PAGE, 1024, 1n)).toBe(1024);
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: BASE, memorySize: 1024 * PAGE });
    return { vm, vcpu };
  }

  it("after enabling logging, mapped pages are 4K with W = 1 and D = 0; writes do not fault, set D and are logged once per page", async () => {
    const { vm, vcpu } = await pmlSetup(4096);
    for (const p of [0, 1, 511, 512, 1023]) {
      const s = spteOf(vm, BASE + p * PAGE);
      expect(s & W_BIT).toBe(W_BIT);
      expect(s & D_BIT).toBe(0n);
    }
    const f = faults(vcpu);
    writePages(vcpu, BASE, [5, 3, 900, 5, 64, 3]);
    expect(faults(vcpu)).toBe(f);
    expect(vcpu.stats.pmlFullExits).toBe(0n);
    expect(spteOf(vm, BASE + 5 * PAGE) & (D_BIT | W_BIT)).toBe(D_BIT | W_BIT);
    expect(spteOf(vm, BASE + 6 * PAGE) & D_BIT).toBe(0n);
    expect(vcpu.stats.ringPushes).toBe(4n);
    expect(keysOf(new Collector().harvest(vcpu))).toEqual(["0:5", "0:3", "0:900", "0:64"]);
  });

  it("a full 512-entry buffer takes a PML-full exit inside a run and drains into the ring, oldest first; the rest drains at the final exit", async () => {
    const { vm, vcpu } = await pmlSetup(4096);
    const f = faults(vcpu);
    // one KVM_RUN storing to 600 distinct pages, stride 37 pages (mod 1024 would wrap: keep < 1024)
    expect(vcpu.writeStrided(BASE, PAGE, 600, 3n)).toBe(600);
    expect(faults(vcpu)).toBe(f);
    expect(vcpu.stats.pmlFullExits).toBe(1n);
    expect(vcpu.stats.ringPushes).toBe(600n);
    const c = new Collector();
    expect(c.harvest(vcpu).map((e) => e.offset)).toEqual(Array.from({ length: 600 }, (_, i) => i));
    expect(vm.resetDirtyRings()).toBe(600);
    vcpu.kick(); // nothing left to drain
    expect(vcpu.writeGuest(BASE + 1000 * PAGE, 1n)).toBe(0);
    expect(vcpu.stats.ringPushes).toBe(601n);
  });

  it("harvestDirtyRings (which kicks by default) reports PML-logged pages and re-arms them", async () => {
    const { vm, vcpu } = await pmlSetup(4096);
    writePages(vcpu, BASE, [10, 11, 12]);
    const h1 = harvestDirtyRings(vm);
    expect(h1.entries).toBe(3);
    expect(h1.reset).toBe(3);
    expect([...(h1.offsets.get(0) ?? [])]).toEqual([10, 11, 12]);
    writePages(vcpu, BASE, [12, 13]);
    const h2 = harvestDirtyRings(vm, { kick: false }); // the vCPU is outside KVM_RUN: already drained
    expect([...(h2.offsets.get(0) ?? [])]).toEqual([12, 13]);
    expect(h2.reset).toBe(2);
  });

  it("reset clears D (bit 9) and keeps W on harvested pages only; the next write logs again without a fault", async () => {
    const { vm, vcpu } = await pmlSetup(4096);
    writePages(vcpu, BASE, [10, 11, 12, 13]);
    const c = new Collector();
    expect(c.harvest(vcpu, 3).length).toBe(3); // page 13 stays pending
    expect(vm.resetDirtyRings()).toBe(3);
    for (const p of [10, 11, 12]) {
      const s = spteOf(vm, BASE + p * PAGE);
      expect(s & W_BIT).toBe(W_BIT);
      expect(s & D_BIT).toBe(0n);
    }
    expect(spteOf(vm, BASE + 13 * PAGE) & D_BIT).toBe(D_BIT);
    const f = faults(vcpu);
    writePages(vcpu, BASE, [11, 13]);
    expect(faults(vcpu)).toBe(f);
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:13", "0:11"]);
  });

  it("the reserve covers a PML drain: 513 new pages in one run on a 1024-entry ring push 512 > 448 without overflow, then exit RING_FULL", async () => {
    const { vm, vcpu } = await pmlSetup(1024);
    expect(vcpu.writeStrided(BASE, PAGE, 513, 2n)).toBe(512);
    expect(vcpu.exitReason).toBe(FULL);
    expect(vcpu.stats.pmlFullExits).toBe(1n);
    expect(vcpu.dirtyRingState).toMatchObject({ softLimit: 448, dirtyIndex: 512 });
    expect(vm.stats.ringFullWarnings).toBe(0);
    expect(spteOf(vm, BASE + 512 * PAGE) & D_BIT).toBe(0n); // the 513th store did not complete
    const c = new Collector();
    expect(c.harvest(vcpu).length).toBe(512);
    expect(vm.resetDirtyRings()).toBe(512);
    expect(vcpu.writeGuest(BASE + 512 * PAGE, 2n)).toBe(0);
    expect(keysOf(c.harvest(vcpu))).toEqual(["0:512"]);
  });

  it("bitmap mode: GET reports PML-logged pages (kvm_arch_sync_dirty_log), clears D and keeps W", async () => {
    const { vm, vcpu } = await pmlSetup(undefined);
    const f = faults(vcpu);
    writePages(vcpu, BASE, [700, 3, 64]);
    expect(faults(vcpu)).toBe(f);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 64, 700]);
    for (const p of [3, 64, 700]) {
      const s = spteOf(vm, BASE + p * PAGE);
      expect(s & W_BIT).toBe(W_BIT);
      expect(s & D_BIT).toBe(0n);
    }
    writePages(vcpu, BASE, [64]);
    expect(faults(vcpu)).toBe(f);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([64]);
    // 600 pages in one run: a PML-full exit drains 512 into the bitmap, the final exit the rest
    expect(vcpu.writeStrided(BASE + 100 * PAGE, PAGE, 600, 1n)).toBe(600);
    expect(vcpu.stats.pmlFullExits).toBe(1n);
    expect(faults(vcpu)).toBe(f);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual(Array.from({ length: 600 }, (_, i) => i + 100));
  });
});

// ---------------------------------------------------------------------------------------
describe("trace replays against the kernel's observed rules (anchors 'Behaviour observed')", () => {
  interface Replay {
    harvests: string[][];
    exits: number[];
    /** index in `harvests` of the harvest each exit triggered */
    exitHarvests: number[];
  }

  /** Replay a trace on dirtlog exactly as ring-trace.ts models it. */
  function replay(vm: Vm, vcpu: Vcpu, trace: TraceWrite[], batchEnds: Set<number>, slotGpa: Map<number, number>): Replay {
    const c = new Collector();
    const harvests: string[][] = [];
    const exits: number[] = [];
    const exitHarvests: number[] = [];
    const harvest = () => {
      const h = c.harvest(vcpu);
      const r = vm.resetDirtyRings();
      if (r !== h.length) throw new Error(`reset returned ${r}, harvested ${h.length}`);
      harvests.push(keysOf(h));
    };
    for (let i = 0; i < trace.length; i++) {
      const gpa = (slotGpa.get(trace[i].slot) as number) + trace[i].offset * PAGE;
      let r = vcpu.writeGuest(gpa, BigInt(i));
      if (r === FULL) {
        exits.push(i);
        exitHarvests.push(harvests.length);
        harvest();
        r = vcpu.writeGuest(gpa, BigInt(i));
      }
      if (r !== 0) throw new Error(`write ${i} exited with ${r}`);
      if (batchEnds.has(i)) harvest();
    }
    harvest();
    return { harvests, exits, exitHarvests };
  }

  const N = 8192; // pages per slot
  function everyK(len: number, k: number): Set<number> {
    const s = new Set<number>();
    for (let i = k - 1; i < len; i += k) s.add(i);
    return s;
  }
  type Gen = (entries: number) => { trace: TraceWrite[]; batchEnds: Set<number> };
  const traces: Array<[string, Gen]> = [
    [
      "sequential",
      (e) => {
        const len = 3 * e;
        return { trace: Array.from({ length: len }, (_, i) => ({ slot: 0, offset: i % N })), batchEnds: everyK(len, Math.floor(e * 1.3)) };
      },
    ],
    [
      "strided",
      (e) => {
        const len = 3 * e;
        return { trace: Array.from({ length: len }, (_, i) => ({ slot: 0, offset: (i * 67) % N })), batchEnds: everyK(len, 2 * e) };
      },
    ],
    [
      "random with repeats",
      (e) => {
        const rnd = prng(e);
        const len = 6 * e;
        const span = Math.min(N, Math.floor(e * 1.25));
        const trace = Array.from({ length: len }, () => ({ slot: 0, offset: Math.floor(rnd() * span) }));
        const batchEnds = everyK(len, 3 * e);
        for (let i = 0; i < len; i++) if (rnd() < 1 / (4 * e)) batchEnds.add(i);
        return { trace, batchEnds };
      },
    ],
    [
      "backwards",
      (e) => {
        const len = 3 * e;
        return { trace: Array.from({ length: len }, (_, i) => ({ slot: 0, offset: N - 1 - (i % N) })), batchEnds: everyK(len, Math.floor(e * 2.5)) };
      },
    ],
    [
      "two slots interleaved",
      (e) => {
        const rnd = prng(e * 7 + 1);
        const len = 4 * e;
        const trace = Array.from({ length: len }, (_, i) => ({
          slot: rnd() < 0.5 ? 0 : 1,
          offset: i % 3 === 0 ? Math.floor(i / 3) % N : Math.floor(rnd() * e),
        }));
        return { trace, batchEnds: everyK(len, Math.floor(e * 1.7)) };
      },
    ],
  ];
  const sizes = [256, 1024, 4096];
  const matrix = traces.flatMap(([name, gen]) => sizes.map((e) => [name, e, gen] as [string, number, Gen]));

  it.each(matrix)("%s, %i-entry ring: entries, order, ring-full exits and duplicates match", async (_name, entries, gen) => {
    const { trace, batchEnds } = gen(entries);
    const expected = expectedReplay(trace, entries, batchEnds);
    expect(expected.exits.length, "trace is meant to hit the soft limit").toBeGreaterThan(0);
    const vm = await ringVm(entries);
    addSlot(vm, 0, BASE, N);
    addSlot(vm, 1, BASE2, N);
    const vcpu = vm.createVcpu(0);
    const got = replay(
      vm,
      vcpu,
      trace,
      batchEnds,
      new Map([
        [0, BASE],
        [1, BASE2],
      ]),
    );
    expect(got.exits).toEqual(expected.exits);
    expect(got.harvests.length).toBe(expected.harvests.length);
    for (let k = 0; k < expected.harvests.length; k++) {
      // compare harvest by harvest (a whole-array diff of 10k strings is unreadable)
      expect(got.harvests[k], `harvest ${k}`).toEqual(expected.harvests[k]);
    }
    expect(Number(vcpu.stats.ringFullExits)).toBe(expected.exits.length);
    expect(Number(vcpu.stats.ringPushes)).toBe(expected.pushes);
    // duplicates = exits: the page written at each exit ends that exit's harvest (which
    // holds exactly the soft limit) and is the first entry of the next one
    let dups = 0;
    got.exits.forEach((i, j) => {
      const k = got.exitHarvests[j];
      const key = entryKey(trace[i].slot, trace[i].offset);
      const h = got.harvests[k];
      if (h.length === entries - 64 && h[h.length - 1] === key && got.harvests[k + 1]?.[0] === key) dups++;
    });
    expect(dups).toBe(expected.duplicates);
    expect(dups).toBe(got.exits.length);
    // no written page is missing
    const reported = new Set(got.harvests.flat());
    for (const w of trace) if (!reported.has(entryKey(w.slot, w.offset))) throw new Error(`page ${entryKey(w.slot, w.offset)} never reported`);
  });

  it("the replay model itself: 400 sequential pages on a 256-entry ring (sanity of the expectation)", () => {
    const trace = Array.from({ length: 400 }, (_, i) => ({ slot: 0, offset: i }));
    const e = expectedReplay(trace, 256, new Set());
    expect(e.exits).toEqual([191, 382]);
    expect(e.harvests.map((h) => h.length)).toEqual([192, 192, 18]);
    expect(e.harvests[1][0]).toBe("0:191");
    expect(e.duplicates).toBe(2);
  });
});

// ---------------------------------------------------------------------------------------
describe("fuzzed collector (scribbles between harvest and reset)", () => {
  const NP = 200; // pages per slot
  const SLOTS = [
    { id: 0, gpa: BASE },
    { id: 1, gpa: BASE2 },
  ];
  const flagsArb = fc.oneof(fc.constantFrom(0, 2, 3, 0xffff_ffff, 5), fc.integer({ min: 0, max: 0xffff_ffff })).filter((v) => v !== DIRTY);
  const slotArb = fc.oneof(fc.constantFrom(0, 1, AS1, 2, 0xffff), fc.integer({ min: 0, max: 0xffff_ffff }));
  const offsetArb = fc.oneof(fc.nat(NP + 70).map(BigInt), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }));
  const scribbleArb = fc.record({
    vcpu: fc.nat(1),
    kind: fc.constantFrom("harvested", "free"),
    index: fc.nat(400),
    flags: fc.option(flagsArb),
    slot: fc.option(slotArb),
    offset: fc.option(offsetArb),
  });
  // one write in ten is KVM's own (vcpu.kvmWriteGuest: pushes on every call, no SPTE)
  const writeArb = fc.record({ vcpu: fc.nat(1), slot: fc.nat(1), page: fc.nat(NP - 1), kvm: fc.nat(9).map((x) => x === 0) });
  const roundArb = fc.record({
    writes: fc.array(writeArb, { maxLength: 300, size: "max" }),
    take: fc.tuple(fc.nat(300), fc.nat(300)),
    scribbles: fc.array(scribbleArb, { maxLength: 40, size: "medium" }),
  });

  it("invariants hold and no later write is lost", async () => {
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.array(roundArb, { minLength: 1, maxLength: 5 }), fc.array(writeArb, { maxLength: 400, size: "max" }), async (pml, rounds, honest) => {
        const entries = pml ? 1024 : 256;
        const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 * MIB, pml });
        try {
          vm.enableCap(RING, [entries * 16]);
          for (const s of SLOTS) addSlot(vm, s.id, s.gpa, NP, s.id === 0 && pml ? 0 : LOG);
          const vcpus = [vm.createVcpu(0), vm.createVcpu(1)];
          if (pml) {
            // slot 0: mapped first, then logged, so its writes go through PML
            for (let p = 0; p < NP; p++) vcpus[0].writeGuest(BASE + p * PAGE, 0n);
            vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: BASE, memorySize: NP * PAGE });
          }
          const c = new Collector();
          /** pages written since they were last reported by a harvest */
          const pending = new Set<string>();
          const record = (h: Harvested[]) => {
            for (const e of h) pending.delete(entryKey(e.slot, e.offset));
          };
          const honestHarvest = () => {
            const h = c.harvestAll(vm);
            record(h);
            const r = vm.resetDirtyRings();
            if (r !== h.length) throw new Error(`honest reset returned ${r}, harvested ${h.length}`);
          };
          const doWrite = (w: { vcpu: number; slot: number; page: number; kvm: boolean }, v: number) => {
            const vcpu = vcpus[w.vcpu];
            const gpa = SLOTS[w.slot].gpa + w.page * PAGE;
            if (w.kvm) {
              if (vcpu.dirtyRingState.dirtyIndex - vcpu.dirtyRingState.resetIndex >= vcpu.dirtyRingState.softLimit) honestHarvest();
              vcpu.kvmWriteGuest(gpa, BigInt(v));
            } else {
              let r = vcpu.writeGuest(gpa, BigInt(v));
              if (r === FULL) {
                honestHarvest();
                r = vcpu.writeGuest(gpa, BigInt(v));
              }
              if (r !== 0) throw new Error(`write exited with ${r}`);
            }
            pending.add(entryKey(w.slot, w.page));
          };
          const checkState = () => {
            for (const v of vcpus) {
              const st = v.dirtyRingState;
              if (!(st.resetIndex <= st.dirtyIndex)) throw new Error(`resetIndex ${st.resetIndex} > dirtyIndex ${st.dirtyIndex}`);
              if (st.dirtyIndex - st.resetIndex > st.entries) throw new Error("more entries in use than the ring holds");
            }
          };
          let n = 0;
          for (const round of rounds) {
            for (const w of round.writes) doWrite(w, ++n);
            for (const v of vcpus) v.kick();
            // partial honest harvest, then scribbles, then the reset
            const taken = vcpus.map((v, i) => c.harvest(v, round.take[i]));
            for (const h of taken) record(h);
            const harvested = taken.flat().length;
            for (const s of round.scribbles) {
              const v = vcpus[s.vcpu];
              const st = v.dirtyRingState;
              let pos: number;
              if (s.kind === "harvested") {
                if (taken[s.vcpu].length === 0) continue;
                pos = taken[s.vcpu][s.index % taken[s.vcpu].length].pos;
              } else {
                const free = st.entries - (st.dirtyIndex - st.resetIndex);
                if (free <= 0) continue;
                pos = (st.dirtyIndex + (s.index % free)) & (st.entries - 1);
              }
              poke(v, pos, { flags: s.flags ?? undefined, slot: s.slot ?? undefined, offset: s.offset ?? undefined });
            }
            const before = vcpus.map((v) => v.dirtyRingState.resetIndex);
            const r = vm.resetDirtyRings();
            if (r !== harvested) throw new Error(`fuzzed reset returned ${r}, harvested ${harvested}`);
            vcpus.forEach((v, i) => {
              const st = v.dirtyRingState;
              if (st.resetIndex - before[i] !== taken[i].length) throw new Error("reset walked a different number of entries");
              if (st.resetIndex !== c.fetchIndex(v)) throw new Error("reset index and collector fetch index disagree");
              for (const e of taken[i]) if (entryAt(v, e.pos).flags !== 0) throw new Error("a reset entry kept non-zero flags");
            });
            checkState();
          }
          // honest from here on
          for (const w of honest) doWrite(w, ++n);
          honestHarvest();
          checkState();
          if (pending.size !== 0) throw new Error(`written but never reported: ${[...pending].slice(0, 10).join(", ")}`);
          // and once more: rewrite everything, everything must be reported
          for (const w of honest) doWrite(w, ++n);
          for (const s of [0, 1]) for (let p = 0; p < NP; p += 17) doWrite({ vcpu: p & 1, slot: s, page: p, kvm: false }, ++n);
          honestHarvest();
          if (pending.size !== 0) throw new Error(`second pass: never reported: ${[...pending].slice(0, 10).join(", ")}`);
        } finally {
          vm.dispose();
        }
      }),
      { numRuns: 100 },
    );
  });
});
