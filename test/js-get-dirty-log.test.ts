// The plain-JS GET in bench/js-get-dirty-log.js (the benchmark's baseline) must be the same
// algorithm as the core's: on two VMs built and dirtied identically, the WASM GET on one
// and the JS GET on the other return identical bitmaps and leave byte-identical shared
// memories (bitmaps, summary, scratch list, SPTEs, mmu_lock, TLB flush counter).
import { describe, expect, it } from "vitest";
// @ts-expect-error plain ESM JavaScript without type declarations
import { createJsGetDirtyLog } from "../bench/js-get-dirty-log.js";
import { KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_MEM_LOG_DIRTY_PAGES, type Vcpu, type Vm, createVm } from "../src/index.js";
import * as L from "../src/layout.js";

const PAGE = 4096;
// slot 0: backed, base 3 pages past a 2M boundary (words straddle leaf tables), 1000 pages (tail word)
const BACKED = { slot: 0, gpa: 0x1_0000_0000 + 3 * PAGE, pages: 1000, backed: true };
// slot 1: unbacked at 2 TiB (gfns above 2^32), 1 GiB
const HIGH = { slot: 1, gpa: 2 ** 41, pages: 262144, backed: false };
// slot 2 in address space 1 (SMM)
const SMM = { slot: (1 << 16) | 2, gpa: 0x8000_0000, pages: 4096, backed: false };
const SLOTS = [BACKED, HIGH, SMM];

interface Pair {
  vm: Vm;
  vcpu: Vcpu;
}

async function makeVm(manual = false): Promise<Pair> {
  const vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 8 << 20 });
  if (manual) vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1]);
  for (const s of SLOTS) {
    vm.setUserMemoryRegion({
      slot: s.slot,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: s.gpa,
      memorySize: s.pages * PAGE,
      backed: s.backed,
    });
  }
  return { vm, vcpu: vm.createVcpu(0) };
}

function xorshift(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** A write pattern: (slot index, page) pairs, mixing dense runs and scattered pages. */
function pattern(rnd: () => number, n: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  while (out.length < n) {
    const si = Math.floor(rnd() * SLOTS.length);
    const pages = SLOTS[si].pages;
    const start = Math.floor(rnd() * pages);
    const run = rnd() < 0.3 ? Math.min(pages - start, 1 + Math.floor(rnd() * 200)) : 1;
    for (let p = start; p < start + run; p++) out.push([si, p]);
  }
  return out;
}

function apply(p: Pair, ops: Array<[number, number]>): void {
  for (const [si, page] of ops) {
    const s = SLOTS[si];
    p.vcpu.smm = s.slot >>> 16 === 1;
    expect(p.vcpu.writeGuest(s.gpa + page * PAGE, BigInt(page + 1))).toBe(0);
  }
  p.vcpu.smm = false;
}

/** The VM's memory, but for the one field two VMs made at different times differ in. */
function memoryOf(vm: Vm): Buffer {
  const m = Buffer.from(new Uint8Array(vm.memory.buffer));
  m.fill(0, vm.addr + L.VM_KVMCLOCK_BASE, vm.addr + L.VM_KVMCLOCK_BASE + 8); // kvmclock's origin
  return m;
}

function popcount(bm: Uint8Array): number {
  let c = 0;
  for (const b of bm) for (let x = b; x; x &= x - 1) c++;
  return c;
}

describe("plain-JS classic GET (bench baseline)", () => {
  it("returns the same bitmaps and leaves the same memory as the WASM GET", async () => {
    const a = await makeVm();
    const b = await makeVm();
    const jsGet = createJsGetDirtyLog(b.vm);
    const rnd = xorshift(12345);
    // round 0 maps pages (slow faults); later rounds hit protected pages (fast faults)
    for (let round = 0; round < 8; round++) {
      const ops = pattern(rnd, round === 7 ? 20000 : 3000);
      apply(a, ops);
      apply(b, ops);
      for (const s of SLOTS) {
        const want = a.vm.getDirtyLog(s.slot);
        const got: Uint8Array = jsGet(s.slot);
        expect(got.length).toBe(want.length);
        expect(Buffer.compare(Buffer.from(got), Buffer.from(want))).toBe(0);
        const expected = new Set(ops.filter(([si]) => SLOTS[si] === s).map(([, p]) => p)).size;
        expect(popcount(got)).toBe(expected);
      }
      expect(memoryOf(b.vm).equals(memoryOf(a.vm))).toBe(true);
    }
    expect(b.vm.stats.tlbFlushes).toBe(a.vm.stats.tlbFlushes);
    // the harvested pages are write-protected again (W clear, MMU-writable kept)
    const { spte } = b.vm.spte(0, HIGH.gpa);
    expect(spte & 2n).toBe(0n);
  });

  it("re-arms pages: the next write is reported again", async () => {
    const b = await makeVm();
    const jsGet = createJsGetDirtyLog(b.vm);
    b.vcpu.writeGuest(HIGH.gpa + 5 * PAGE, 1n);
    expect(jsGet(HIGH.slot)[0]).toBe(0b0010_0000);
    expect(popcount(jsGet(HIGH.slot))).toBe(0);
    b.vcpu.writeGuest(HIGH.gpa + 5 * PAGE, 2n);
    expect(jsGet(HIGH.slot)[0]).toBe(0b0010_0000);
    expect(b.vcpu.stats.fastFaults).toBe(1n);
  });

  it("matches in manual-protect mode (a copy, nothing re-armed)", async () => {
    const a = await makeVm(true);
    const b = await makeVm(true);
    const jsGet = createJsGetDirtyLog(b.vm);
    const ops = pattern(xorshift(7), 5000);
    apply(a, ops);
    apply(b, ops);
    for (let i = 0; i < 2; i++) {
      for (const s of SLOTS) expect(Buffer.from(jsGet(s.slot)).equals(Buffer.from(a.vm.getDirtyLog(s.slot)))).toBe(true);
      expect(memoryOf(b.vm).equals(memoryOf(a.vm))).toBe(true);
    }
  });

  it("rejects what the WASM GET rejects, with the same errno", async () => {
    const b = await makeVm();
    const jsGet = createJsGetDirtyLog(b.vm);
    for (const slot of [3, 32764, 2 << 16, 7]) {
      let want = "";
      let got = "";
      try {
        b.vm.getDirtyLog(slot);
      } catch (e) {
        want = (e as { errno: string }).errno;
      }
      try {
        jsGet(slot);
      } catch (e) {
        got = (e as { errno: string }).errno;
      }
      expect(want).not.toBe("");
      expect(got).toBe(want);
    }
  });
});
