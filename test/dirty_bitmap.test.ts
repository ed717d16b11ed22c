// The dirty bitmap: KVM_GET_DIRTY_LOG, manual protect, KVM_CLEAR_DIRTY_LOG and
// INITIALLY_SET — one test per rule of spec §2 (kvm-tracking.md), with the behaviour
// measured on the real kernel (anchors/real-kvm.md) where it applies.
import { afterEach, describe, expect, it } from "vitest";
import { errnoOf, faults, pagesOf, triple } from "./helpers.js";
import {
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
  type Vcpu,
  type Vm,
  createVm,
} from "../src/index.js";

const PAGE = 4096;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const MANUAL = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE; // 1
const MANUAL_INIT_SET = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET; // 3
const BASE = 0x1_0000_0000; // gpa of the main test slot (1 GiB aligned)
const NPAGES = 131; // 2·64 + 3: deliberately not a multiple of 64
const GIB = 1 << 30;
const MIB = 1 << 20;


const vms: Vm[] = [];
afterEach(() => {
  for (const vm of vms.splice(0)) vm.dispose();
});

async function newVm(manual?: number): Promise<Vm> {
  const vm = await createVm({ maxMemoryBytes: 512 << 20 });
  vms.push(vm);
  if (manual !== undefined) vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [manual]);
  return vm;
}

function addSlot(vm: Vm, slot: number, gpa: number, npages: number, flags = LOG, backed = false): void {
  vm.setUserMemoryRegion({ slot, flags, guestPhysAddr: gpa, memorySize: npages * PAGE, backed });
}

/** A VM with one logged slot 0 of NPAGES pages at BASE and one vCPU. */
async function setup(manual?: number, npages = NPAGES): Promise<{ vm: Vm; vcpu: Vcpu }> {
  const vm = await newVm(manual);
  addSlot(vm, 0, BASE, npages);
  return { vm, vcpu: vm.createVcpu(0) };
}

function write(vcpu: Vcpu, pages: number[], base = BASE, value = 0x1234n): void {
  for (const p of pages) expect(vcpu.writeGuest(base + p * PAGE, value)).toBe(0);
}

function popcount(bm: Uint8Array): number {
  let n = 0;
  for (const b of bm) for (let x = b; x; x &= x - 1) n++;
  return n;
}

/** A user bitmap of `bytes` bytes with bit (p - first) set for each page p. */
function mask(bytes: number, pages: number[], first = 0): Uint8Array {
  const out = new Uint8Array(bytes);
  for (const p of pages) out[(p - first) >> 3] |= 1 << ((p - first) & 7);
  return out;
}

// ---------------------------------------------------------------------------------------
describe("§2.1 bitmap buffer", () => {
  it("is ALIGN(npages, 64) / 8 bytes", async () => {
    const vm = await newVm();
    const sizes = [1, 63, 64, 65, 131, 4097];
    for (const [i, n] of sizes.entries()) addSlot(vm, i, BASE + i * 64 * MIB, n);
    for (const [i, n] of sizes.entries()) {
      expect(vm.getDirtyLog(i).length, `npages ${n}`).toBe((Math.ceil(n / 64) * 64) / 8);
    }
  });

  it("uses little-endian bit numbering: page p is byte p/8, bit p%8", async () => {
    const { vm, vcpu } = await setup();
    const pages = [0, 1, 7, 8, 9, 63, 64, 100, 130];
    write(vcpu, pages);
    const bm = vm.getDirtyLog(0);
    expect(bm.length).toBe(24);
    // spelled out byte by byte
    expect(bm[0]).toBe(0b1000_0011); // pages 0, 1, 7
    expect(bm[1]).toBe(0b0000_0011); // pages 8, 9
    expect(bm[7]).toBe(0b1000_0000); // page 63
    expect(bm[8]).toBe(0b0000_0001); // page 64
    expect(bm[12]).toBe(0b0001_0000); // page 100 = 12·8 + 4
    expect(bm[16]).toBe(0b0000_0100); // page 130 = 16·8 + 2
    for (const i of [2, 3, 4, 5, 6, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23]) expect(bm[i]).toBe(0);
    expect(pagesOf(bm)).toEqual(pages);
  });

  it("keeps bits >= npages at 0 even when every page is dirty", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, Array.from({ length: NPAGES }, (_, p) => p));
    const bm = vm.getDirtyLog(0);
    expect(popcount(bm)).toBe(NPAGES);
    expect(bm[16]).toBe(0b111); // pages 128..130
    for (let i = 17; i < 24; i++) expect(bm[i]).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------
describe("one report per page per epoch", () => {
  it("a page written many times between harvests gives one bit and one fault", async () => {
    const { vm, vcpu } = await setup();
    const f0 = faults(vcpu);
    const s0 = vcpu.stats.stores;
    for (let i = 0; i < 10; i++) expect(vcpu.writeGuest(BASE + 5 * PAGE + i * 8, BigInt(i))).toBe(0);
    expect(vcpu.stats.stores - s0).toBe(10n);
    expect(faults(vcpu) - f0).toBe(1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([5]);
    // next epoch: again exactly one fault for many writes
    const f1 = faults(vcpu);
    for (let i = 0; i < 10; i++) vcpu.writeGuest(BASE + 5 * PAGE + i * 8, 7n);
    expect(faults(vcpu) - f1).toBe(1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([5]);
  });
});

// ---------------------------------------------------------------------------------------
describe("§2.4 classic KVM_GET_DIRTY_LOG", () => {
  it("returns the bits and clears them", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, [3, 70]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 70]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });

  it("re-protects the pages it returned: the next write is reported again, unwritten pages are not", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, [3, 70]);
    expect(triple(vm, BASE + 3 * PAGE).hmw).toBe("111");
    vm.getDirtyLog(0);
    expect(triple(vm, BASE + 3 * PAGE).hmw).toBe("110");
    expect(triple(vm, BASE + 70 * PAGE).hmw).toBe("110");
    write(vcpu, [3]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3]);
    write(vcpu, [3]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3]);
  });

  it("flushes TLBs exactly once per GET that found bits, never when nothing was dirty", async () => {
    // 16384 pages: bits in several bitmap words and several 4096-page summary chunks
    const { vm, vcpu } = await setup(undefined, 16384);
    const t0 = vm.stats.tlbFlushes;
    vm.getDirtyLog(0);
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    write(vcpu, [0, 100, 5000, 9000, 16383]);
    const t1 = vm.stats.tlbFlushes;
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([0, 100, 5000, 9000, 16383]);
    expect(vm.stats.tlbFlushes - t1).toBe(1n);
    const t2 = vm.stats.tlbFlushes;
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    expect(vm.stats.tlbFlushes - t2).toBe(0n);
    write(vcpu, [9000]);
    const t3 = vm.stats.tlbFlushes;
    vm.getDirtyLog(0);
    expect(vm.stats.tlbFlushes - t3).toBe(1n);
  });
});

// ---------------------------------------------------------------------------------------
describe("§2.2/§2.4 manual protect (MANUAL_DIRTY_LOG_PROTECT2 = 1)", () => {
  it("GET is a copy: repeated GETs return the accumulated bits", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [3, 70]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 70]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 70]);
    write(vcpu, [5]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 5, 70]);
  });

  it("GET neither flushes nor re-protects; pages stay writable until CLEAR", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [3, 70]);
    const t0 = vm.stats.tlbFlushes;
    vm.getDirtyLog(0);
    vm.getDirtyLog(0);
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    expect(triple(vm, BASE + 3 * PAGE).hmw).toBe("111");
    const f0 = faults(vcpu);
    write(vcpu, [3, 70]);
    expect(faults(vcpu) - f0).toBe(0n); // no re-protection: writes do not fault
    vm.clearDirtyLog(0, 0, 64, mask(8, [3]));
    expect(triple(vm, BASE + 3 * PAGE).hmw).toBe("110");
    expect(triple(vm, BASE + 70 * PAGE).hmw).toBe("111");
  });

  it("ENABLE_CAP accepts 0, 1, 3 and rejects INITIALLY_SET without ENABLE, unknown bits, flags", async () => {
    const vm = await newVm();
    for (const v of [0, 1, 3]) expect(errnoOf(() => vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [v]))).toBe(undefined);
    for (const v of [2, 4, 5, 7]) expect(errnoOf(() => vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [v]))).toBe("EINVAL");
    expect(errnoOf(() => vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1], 1))).toBe("EINVAL");
    expect(vm.checkExtension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)).toBe(3);
  });
});

// ---------------------------------------------------------------------------------------
describe("§2.5 KVM_CLEAR_DIRTY_LOG semantics", () => {
  it("clears exactly the named bits and re-arms only those pages", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [1, 2, 3, 65]);
    vm.clearDirtyLog(0, 0, 128, mask(16, [1, 65]));
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2, 3]);
    expect(triple(vm, BASE + 1 * PAGE).hmw).toBe("110");
    expect(triple(vm, BASE + 65 * PAGE).hmw).toBe("110");
    // pages not named keep W and their bit; writing them again takes no fault
    expect(triple(vm, BASE + 2 * PAGE).hmw).toBe("111");
    expect(triple(vm, BASE + 3 * PAGE).hmw).toBe("111");
    const f0 = faults(vcpu);
    write(vcpu, [2, 3]);
    expect(faults(vcpu) - f0).toBe(0n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2, 3]);
    // a cleared page is reported again at its next write (fast fault)
    const ff = vcpu.stats.fastFaults;
    write(vcpu, [65]);
    expect(vcpu.stats.fastFaults - ff).toBe(1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2, 3, 65]);
  });

  it("naming clean pages is harmless: no bit, no SPTE and no flush changes", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [1, 10]);
    vm.clearDirtyLog(0, 0, 64, mask(8, [10])); // page 10: armed and clean now
    const t0 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 0, 64, mask(8, [4, 10, 20])); // all clean (4, 20 never touched)
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1]);
    expect(triple(vm, BASE + 1 * PAGE).hmw).toBe("111");
    expect(triple(vm, BASE + 10 * PAGE).hmw).toBe("110");
    write(vcpu, [10]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1, 10]);
  });

  it("user bits beyond npages have no effect", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [128, 130]);
    const t0 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 128, 3, new Uint8Array(8).fill(0xff));
    expect(vm.stats.tlbFlushes - t0).toBe(1n);
    let bm = vm.getDirtyLog(0);
    expect(pagesOf(bm)).toEqual([]);
    const t1 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 128, 3, new Uint8Array(8).fill(0xff)); // nothing set any more
    expect(vm.stats.tlbFlushes - t1).toBe(0n);
    write(vcpu, [129]);
    bm = vm.getDirtyLog(0);
    expect(pagesOf(bm)).toEqual([129]);
    for (let i = 17; i < 24; i++) expect(bm[i]).toBe(0);
  });

  it("accepts an empty range (num_pages 0), including at first_page == npages", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    addSlot(vm, 1, BASE + GIB, 128);
    write(vcpu, [1]);
    const t0 = vm.stats.tlbFlushes;
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 0, new Uint8Array(0)))).toBe(undefined);
    expect(errnoOf(() => vm.clearDirtyLog(0, 64, 0, new Uint8Array(0)))).toBe(undefined);
    expect(errnoOf(() => vm.clearDirtyLog(1, 128, 0, new Uint8Array(0)))).toBe(undefined);
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1]);
    expect(triple(vm, BASE + 1 * PAGE).hmw).toBe("111");
  });

  it("is honoured in classic mode too (no manual protect)", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, [1, 2]);
    const t0 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 0, 64, mask(8, [1]));
    expect(vm.stats.tlbFlushes - t0).toBe(1n);
    expect(triple(vm, BASE + 1 * PAGE).hmw).toBe("110");
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2]);
    write(vcpu, [1]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1]);
  });

  it("flushes once per CLEAR that cleared something, however many words", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [0, 63, 64, 130]);
    const t0 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 0, NPAGES, new Uint8Array(24).fill(0xff));
    expect(vm.stats.tlbFlushes - t0).toBe(1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    const t1 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 0, NPAGES, new Uint8Array(24).fill(0xff));
    expect(vm.stats.tlbFlushes - t1).toBe(0n);
  });
});

// ---------------------------------------------------------------------------------------
describe("§2.5 KVM_CLEAR_DIRTY_LOG errors, in the kernel's order", () => {
  it("first_page & 63 → EINVAL, checked before the slot lookup", async () => {
    const { vm } = await setup(MANUAL);
    expect(errnoOf(() => vm.clearDirtyLog(0, 32, 64, new Uint8Array(8)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 1, 0, new Uint8Array(8)))).toBe("EINVAL");
    // slot 7 does not exist: unaligned first_page wins over ENOENT
    expect(errnoOf(() => vm.clearDirtyLog(7, 1, 64, new Uint8Array(8)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(7, 0, 64, new Uint8Array(8)))).toBe("ENOENT");
  });

  it("missing slot or logging off → ENOENT (before the range checks)", async () => {
    const { vm } = await setup(MANUAL);
    addSlot(vm, 1, BASE + GIB, 64, 0); // exists, not logged
    expect(errnoOf(() => vm.clearDirtyLog(7, 0, 64, new Uint8Array(8)))).toBe("ENOENT");
    expect(errnoOf(() => vm.clearDirtyLog(1, 0, 64, new Uint8Array(8)))).toBe("ENOENT");
    expect(errnoOf(() => vm.clearDirtyLog(7, 0, 100000, new Uint8Array(8)))).toBe("ENOENT");
    expect(errnoOf(() => vm.clearDirtyLog((1 << 16) | 0, 0, 64, new Uint8Array(8)))).toBe("ENOENT");
  });

  it("id >= 32764 or as_id >= 2 → EINVAL", async () => {
    const { vm } = await setup(MANUAL);
    expect(errnoOf(() => vm.clearDirtyLog(32764, 0, 64, new Uint8Array(8)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0xffff, 0, 64, new Uint8Array(8)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(2 << 16, 0, 64, new Uint8Array(8)))).toBe("EINVAL");
  });

  it("first_page > npages → EINVAL", async () => {
    const { vm } = await setup(MANUAL);
    expect(errnoOf(() => vm.clearDirtyLog(0, 192, 0, new Uint8Array(8)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 1 << 20, 0, new Uint8Array(8)))).toBe("EINVAL");
  });

  it("num_pages > npages − first_page → EINVAL", async () => {
    const { vm } = await setup(MANUAL);
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 132, new Uint8Array(24)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 64, 128, new Uint8Array(16)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 128, 4, new Uint8Array(8)))).toBe("EINVAL");
  });

  it("num_pages not a multiple of 64 short of the slot end → EINVAL", async () => {
    const { vm } = await setup(MANUAL);
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 65, new Uint8Array(16)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 1, new Uint8Array(8)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 64, 66, new Uint8Array(16)))).toBe("EINVAL");
    // multiples of 64 short of the end are fine
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 64, new Uint8Array(8)))).toBe(undefined);
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 128, new Uint8Array(16)))).toBe(undefined);
  });

  it("a range ending exactly at the slot end may have any length", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [64, 130]);
    expect(errnoOf(() => vm.clearDirtyLog(0, 128, 3, mask(8, [130], 128)))).toBe(undefined);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([64]);
    expect(errnoOf(() => vm.clearDirtyLog(0, 64, 67, mask(16, [64], 64)))).toBe(undefined);
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, NPAGES, new Uint8Array(24)))).toBe(undefined);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });

  it("a user bitmap shorter than ALIGN(num_pages, 64) / 8 → EFAULT (after the range checks)", async () => {
    const { vm } = await setup(MANUAL);
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 64, new Uint8Array(7)))).toBe("EFAULT");
    expect(errnoOf(() => vm.clearDirtyLog(0, 64, 67, new Uint8Array(15)))).toBe("EFAULT");
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, NPAGES, new Uint8Array(23)))).toBe("EFAULT");
    expect(errnoOf(() => vm.clearDirtyLog(0, 64, 67, new Uint8Array(16)))).toBe(undefined);
    // a bad range wins over a short buffer
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 65, new Uint8Array(0)))).toBe("EINVAL");
  });

  it("a rejected CLEAR changes nothing", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [1, 65]);
    const t0 = vm.stats.tlbFlushes;
    const ones = (n: number) => new Uint8Array(n).fill(0xff);
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 65, ones(16)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, NPAGES, ones(23)))).toBe("EFAULT");
    expect(errnoOf(() => vm.clearDirtyLog(0, 32, 64, ones(8)))).toBe("EINVAL");
    expect(errnoOf(() => vm.clearDirtyLog(0, 0, 132, ones(24)))).toBe("EINVAL");
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1, 65]);
    expect(triple(vm, BASE + 1 * PAGE).hmw).toBe("111");
    expect(triple(vm, BASE + 65 * PAGE).hmw).toBe("111");
    // and a later valid CLEAR is not affected by the rejected user bits
    vm.clearDirtyLog(0, 0, 64, mask(8, [1]));
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([65]);
  });
});

// ---------------------------------------------------------------------------------------
describe("§2.3 KVM_GET_DIRTY_LOG errors", () => {
  it("missing slot → ENOENT", async () => {
    const { vm } = await setup();
    expect(errnoOf(() => vm.getDirtyLog(5))).toBe("ENOENT");
    expect(errnoOf(() => vm.getDirtyLog((1 << 16) | 0))).toBe("ENOENT"); // AS 1 has no slot 0
  });

  it("logging off → ENOENT (never on, or turned off)", async () => {
    const { vm, vcpu } = await setup();
    addSlot(vm, 1, BASE + GIB, 64, 0);
    expect(errnoOf(() => vm.getDirtyLog(1))).toBe("ENOENT");
    write(vcpu, [1]);
    addSlot(vm, 0, BASE, NPAGES, 0); // flags-only: logging off drops the bitmap
    expect(errnoOf(() => vm.getDirtyLog(0))).toBe("ENOENT");
  });

  it("id >= 32764 → EINVAL; as_id >= 2 → EINVAL", async () => {
    const { vm } = await setup();
    expect(errnoOf(() => vm.getDirtyLog(32764))).toBe("EINVAL");
    expect(errnoOf(() => vm.getDirtyLog(32766))).toBe("EINVAL");
    expect(errnoOf(() => vm.getDirtyLog(0xffff))).toBe("EINVAL");
    expect(errnoOf(() => vm.getDirtyLog(2 << 16))).toBe("EINVAL");
    expect(errnoOf(() => vm.getDirtyLog((3 << 16) | 0))).toBe("EINVAL");
  });

  it("a rejected GET changes nothing", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, [1, 100]);
    const t0 = vm.stats.tlbFlushes;
    expect(errnoOf(() => vm.getDirtyLog(2 << 16))).toBe("EINVAL");
    expect(errnoOf(() => vm.getDirtyLog(32764))).toBe("EINVAL");
    expect(errnoOf(() => vm.getDirtyLog(1 << 16))).toBe("ENOENT");
    expect(errnoOf(() => vm.getDirtyLog(9))).toBe("ENOENT");
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    expect(triple(vm, BASE + 1 * PAGE).hmw).toBe("111");
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1, 100]);
  });
});

// ---------------------------------------------------------------------------------------
describe("§2.2/§1.5/§1.6 INITIALLY_SET (MANUAL_DIRTY_LOG_PROTECT2 = 3)", () => {
  it("a new bitmap has exactly npages bits set", async () => {
    const { vm } = await setup(MANUAL_INIT_SET);
    const bm = vm.getDirtyLog(0);
    expect(bm.length).toBe(24);
    expect(popcount(bm)).toBe(NPAGES);
    expect(pagesOf(bm)).toEqual(Array.from({ length: NPAGES }, (_, p) => p));
    // also for a bitmap allocated by a flags-only enable
    addSlot(vm, 1, BASE + GIB, 70, 0);
    addSlot(vm, 1, BASE + GIB, 70, LOG);
    const bm1 = vm.getDirtyLog(1);
    expect(bm1.length).toBe(16);
    expect(popcount(bm1)).toBe(70);
    expect(bm1[8]).toBe(0b11_1111);
  });

  it("only affects bitmaps allocated after it was enabled", async () => {
    const { vm } = await setup(MANUAL);
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [MANUAL_INIT_SET]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    addSlot(vm, 1, BASE + GIB, 64);
    expect(popcount(vm.getDirtyLog(1))).toBe(64);
  });

  it("enabling logging protects nothing: writes through writable mappings are not re-reported", async () => {
    const vm = await newVm(MANUAL_INIT_SET);
    addSlot(vm, 0, BASE, NPAGES, 0); // 131 pages: mapped at 4K
    const vcpu = vm.createVcpu(0);
    write(vcpu, [3, 4]);
    expect(triple(vm, BASE + 3 * PAGE)).toEqual({ hmw: "111", level: 1 });
    const t0 = vm.stats.tlbFlushes;
    addSlot(vm, 0, BASE, NPAGES, LOG);
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    expect(triple(vm, BASE + 3 * PAGE).hmw).toBe("111");
    const f0 = faults(vcpu);
    write(vcpu, [3, 4]);
    expect(faults(vcpu) - f0).toBe(0n);
    expect(popcount(vm.getDirtyLog(0))).toBe(NPAGES);
  });

  it("the first CLEAR re-arms the named pages", async () => {
    const vm = await newVm(MANUAL_INIT_SET);
    addSlot(vm, 0, BASE, NPAGES, 0);
    const vcpu = vm.createVcpu(0);
    write(vcpu, [3, 4]);
    addSlot(vm, 0, BASE, NPAGES, LOG);
    const t0 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 0, 64, mask(8, [3, 10]));
    expect(vm.stats.tlbFlushes - t0).toBe(1n);
    expect(triple(vm, BASE + 3 * PAGE).hmw).toBe("110");
    expect(triple(vm, BASE + 4 * PAGE).hmw).toBe("111");
    let bm = pagesOf(vm.getDirtyLog(0));
    expect(bm.length).toBe(NPAGES - 2);
    expect(bm).not.toContain(3);
    expect(bm).not.toContain(10);
    const ff = vcpu.stats.fastFaults;
    write(vcpu, [3, 4]);
    expect(vcpu.stats.fastFaults - ff).toBe(1n); // only page 3 was armed
    bm = pagesOf(vm.getDirtyLog(0));
    expect(bm).toContain(3);
    expect(bm).not.toContain(10);
    write(vcpu, [10]); // never mapped: slow fault, reported
    expect(pagesOf(vm.getDirtyLog(0))).toContain(10);
  });

  it("CLEAR of the last partial word with all-ones bits clears only pages < npages", async () => {
    const { vm } = await setup(MANUAL_INIT_SET);
    vm.clearDirtyLog(0, 128, 3, new Uint8Array(8).fill(0xff));
    const bm = vm.getDirtyLog(0);
    expect(popcount(bm)).toBe(128);
    for (let i = 16; i < 24; i++) expect(bm[i]).toBe(0);
  });

  it("after manual protect is turned off, a classic GET returns (and takes) exactly the npages set bits", async () => {
    const { vm, vcpu } = await setup(MANUAL_INIT_SET);
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [0]);
    const t0 = vm.stats.tlbFlushes;
    const bm = vm.getDirtyLog(0);
    expect(bm.length).toBe(24);
    expect(pagesOf(bm)).toEqual(Array.from({ length: NPAGES }, (_, p) => p));
    expect(vm.stats.tlbFlushes - t0).toBe(1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    write(vcpu, [5, 130]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([5, 130]);
  });

  it("§2.6 step 1: a writable 2M mapping survives enable, the first CLEAR inside splits and protects it", async () => {
    const vm = await newVm(MANUAL_INIT_SET);
    const npages = 1024; // 4 MiB unbacked at a 1 GiB aligned gpa: two 2M frames
    addSlot(vm, 0, BASE, npages, 0);
    const vcpu = vm.createVcpu(0);
    write(vcpu, [600]);
    expect(triple(vm, BASE + 600 * PAGE)).toEqual({ hmw: "111", level: 2 });
    const s0 = vm.stats.hugeSplits;
    addSlot(vm, 0, BASE, npages, LOG);
    expect(triple(vm, BASE + 600 * PAGE)).toEqual({ hmw: "111", level: 2 });
    expect(vm.stats.hugeSplits - s0).toBe(0n);
    const f0 = faults(vcpu);
    write(vcpu, [601, 700]);
    expect(faults(vcpu) - f0).toBe(0n);
    expect(popcount(vm.getDirtyLog(0))).toBe(npages);

    const t0 = vm.stats.tlbFlushes;
    vm.clearDirtyLog(0, 576, 64, mask(8, [600], 576));
    expect(vm.stats.tlbFlushes - t0).toBe(1n);
    expect(vm.stats.hugeSplits - s0).toBe(1n);
    expect(triple(vm, BASE + 600 * PAGE)).toEqual({ hmw: "110", level: 1 });
    // the rest of the frame is now 4K, with the huge mapping's permissions
    expect(triple(vm, BASE + 601 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(triple(vm, BASE + 1023 * PAGE)).toEqual({ hmw: "111", level: 1 });
    let bm = vm.getDirtyLog(0);
    expect(pagesOf(bm)).not.toContain(600);
    expect(popcount(bm)).toBe(npages - 1);
    const ff = vcpu.stats.fastFaults;
    write(vcpu, [600]);
    expect(vcpu.stats.fastFaults - ff).toBe(1n);
    bm = vm.getDirtyLog(0);
    expect(pagesOf(bm)).toContain(600);
    expect(triple(vm, BASE + 600 * PAGE)).toEqual({ hmw: "111", level: 1 });
  });

  it("§2.6 step 1: a writable 1G mapping is split only where the CLEAR names pages", async () => {
    const vm = await newVm(MANUAL_INIT_SET);
    const gpa = GIB; // 1 GiB unbacked at 1 GiB: one 1G frame
    const npages = GIB / PAGE;
    addSlot(vm, 0, gpa, npages, 0);
    const vcpu = vm.createVcpu(0);
    write(vcpu, [1000], gpa);
    expect(triple(vm, gpa + 1000 * PAGE)).toEqual({ hmw: "111", level: 3 });
    const s0 = vm.stats.hugeSplits;
    addSlot(vm, 0, gpa, npages, LOG);
    expect(triple(vm, gpa + 1000 * PAGE)).toEqual({ hmw: "111", level: 3 });
    expect(vm.stats.hugeSplits - s0).toBe(0n);

    vm.clearDirtyLog(0, 960, 64, mask(8, [1000], 960));
    expect(vm.stats.hugeSplits - s0).toBe(2n); // 1G → 2M, then the 2M holding page 1000 → 4K
    expect(triple(vm, gpa + 1000 * PAGE)).toEqual({ hmw: "110", level: 1 });
    expect(triple(vm, gpa + 1001 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(triple(vm, gpa + 200000 * PAGE)).toEqual({ hmw: "111", level: 2 });
    let bm = vm.getDirtyLog(0);
    expect(bm.length).toBe(npages / 8);
    expect(popcount(bm)).toBe(npages - 1);
    expect((bm[1000 >> 3] >> (1000 & 7)) & 1).toBe(0);
    write(vcpu, [1000], gpa);
    bm = vm.getDirtyLog(0);
    expect((bm[1000 >> 3] >> (1000 & 7)) & 1).toBe(1);
    expect(popcount(bm)).toBe(npages);
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.5 bitmap lifetime (anchors: 'Bitmap lifetime')", () => {
  it("is kept across a MOVE while logging stays on: bits keep their slot offsets", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, [7, 100]);
    addSlot(vm, 0, BASE + GIB, NPAGES); // MOVE
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([7, 100]);
    write(vcpu, [8], BASE + GIB);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([8]);
  });

  it("is dropped when logging turns off; re-enabling starts from zero", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, [7]);
    addSlot(vm, 0, BASE, NPAGES, 0);
    expect(errnoOf(() => vm.getDirtyLog(0))).toBe("ENOENT");
    addSlot(vm, 0, BASE, NPAGES, LOG);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });

  it("re-enabling with INITIALLY_SET starts from all ones", async () => {
    const { vm, vcpu } = await setup(MANUAL);
    write(vcpu, [7]);
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [MANUAL_INIT_SET]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([7]);
    addSlot(vm, 0, BASE, NPAGES, 0);
    addSlot(vm, 0, BASE, NPAGES, LOG);
    expect(popcount(vm.getDirtyLog(0))).toBe(NPAGES);
  });
});

// ---------------------------------------------------------------------------------------
describe("KVM_GET_DIRTY_LOG into a caller's buffer (a VMM reuses its bitmap)", () => {
  it("writes exactly the log into the buffer, clearing what a previous GET left there", async () => {
    const { vm, vcpu } = await setup();
    const buf = new Uint8Array(64).fill(0xff); // larger than the 24-byte log, and dirty
    write(vcpu, [0, 70, 130]);
    const a = vm.getDirtyLog(0, buf);
    expect(a.buffer).toBe(buf.buffer);
    expect(a.byteLength).toBe(24);
    expect(pagesOf(a)).toEqual([0, 70, 130]);
    expect(buf.subarray(24).every((b) => b === 0xff)).toBe(true); // past the log: untouched
    write(vcpu, [5]);
    expect(pagesOf(vm.getDirtyLog(0, buf))).toEqual([5]);
    expect(pagesOf(vm.getDirtyLog(0, buf))).toEqual([]);
  });

  it("a buffer too small (or not bytes) is EFAULT before any bit is taken", async () => {
    const { vm, vcpu } = await setup();
    write(vcpu, [3, 99]);
    expect(errnoOf(() => vm.getDirtyLog(0, new Uint8Array(23)))).toBe("EFAULT");
    expect(errnoOf(() => vm.getDirtyLog(0, new Uint32Array(6) as unknown as Uint8Array))).toBe("EFAULT");
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 99]); // still there
  });
});
