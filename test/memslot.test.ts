// Memslots (spec §1): ids and address spaces, KVM_SET_USER_MEMORY_REGION validation and the
// kernel's check order, change kinds, generations, internal slots, capabilities, and the
// dirty bitmap's lifetime as memslots change. Every rejected call is checked to change
// nothing (generations, slots, logging count, dirty bits).
import { describe, expect, it } from "vitest";
import { errnoOf, pagesOf, vmFactory } from "./helpers.js";
import {
  APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
  APIC_DEFAULT_PHYS_BASE,
  type ErrnoName,
  IDENTITY_PAGETABLE_PRIVATE_MEMSLOT,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_CAP_MULTI_ADDRESS_SPACE,
  KVM_CAP_NR_MEMSLOTS,
  KVM_CAP_READONLY_MEM,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_EXIT_MMIO,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  TSS_PRIVATE_MEMSLOT,
  type Vm,
} from "../src/index.js";

const PAGE = 4096;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const RO = KVM_MEM_READONLY;
const AS1 = 1 << 16;
/** Last guest frame number the model accepts: 48-bit guest physical space. */
const MAX_GFN = (1n << 36n) - 1n;
/** First guest-physical address beyond the 48-bit space. */
const GPA_LIMIT = (MAX_GFN + 1n) * 4096n;
const MAX_NR_PAGES = 2n ** 31n - 1n;

// ---- helpers ----
const { newVm } = vmFactory();

function expectErrno(fn: () => unknown, errno: ErrnoName): void {
  expect(errnoOf(fn)).toBe(errno);
}

type Probe = [asId: number, gpa: number | bigint];
/** Everything a memslot call could change that is visible without side effects. */
function state(vm: Vm, probes: Probe[]) {
  const s = vm.stats;
  return {
    gen0: vm.generation(0),
    gen1: vm.generation(1),
    logging: s.memslotsDirtyLogging,
    zaps: s.zaps,
    tlbFlushes: s.tlbFlushes,
    slots: probes.map(([as, gpa]) => vm.memslotAt(as, gpa)),
  };
}
/** The call fails with errno and leaves the VM as it was. */
function expectRejected(vm: Vm, fn: () => unknown, errno: ErrnoName, probes: Probe[] = []): void {
  const before = state(vm, probes);
  expectErrno(fn, errno);
  expect(state(vm, probes)).toEqual(before);
}

function region(vm: Vm, slot: number, gpa: number | bigint, size: number | bigint, flags = 0, backed = false): void {
  vm.setUserMemoryRegion({ slot, flags, guestPhysAddr: gpa, memorySize: size, backed });
}
function del(vm: Vm, slot: number, gpa: number | bigint = 0): void {
  vm.setUserMemoryRegion({ slot, guestPhysAddr: gpa, memorySize: 0 });
}
function dirtyPages(vm: Vm, slot: number): number[] {
  return pagesOf(vm.getDirtyLog(slot));
}
/** Guest stores to the given pages of a range; each must retire. */
function touch(vcpu: { writeGuest(gpa: number | bigint, v: number | bigint): number }, base: number | bigint, pages: number[]): void {
  for (const p of pages) expect(vcpu.writeGuest(BigInt(base) + BigInt(p * PAGE), 0x1234n + BigInt(p))).toBe(0);
}

// ---------------------------------------------------------------------------------------
describe("§1.1 slot ids and address spaces", () => {
  it("encodes slot ids as as_id << 16 | id: id 5 of AS 0 and id 5 of AS 1 are different slots", async () => {
    const vm = await newVm();
    region(vm, 5, 0x100000, 4 * PAGE);
    region(vm, AS1 | 5, 0x200000, 2 * PAGE);
    expect(vm.memslotAt(0, 0x100000 + 3 * PAGE)).toBe(5);
    expect(vm.memslotAt(1, 0x200000 + PAGE)).toBe(AS1 | 5);
    expect(vm.memslotAt(0, 0x200000)).toBeUndefined();
    expect(vm.memslotAt(1, 0x100000)).toBeUndefined();
    // deleting AS 1's slot 5 leaves AS 0's slot 5 alone
    del(vm, AS1 | 5);
    expect(vm.memslotAt(1, 0x200000)).toBeUndefined();
    expect(vm.memslotAt(0, 0x100000)).toBe(5);
    // and AS 0's slot 5 can't be deleted twice through AS 1
    expectRejected(vm, () => del(vm, AS1 | 5), "EINVAL", [[0, 0x100000]]);
  });

  it("rejects as_id >= 2 with EINVAL (create, delete, GET)", async () => {
    const vm = await newVm();
    for (const slot of [(2 << 16) | 0, (3 << 16) | 7, 0xffff0000 | 1, 0x80000000]) {
      expectRejected(vm, () => region(vm, slot, 0x100000, PAGE), "EINVAL", [[0, 0x100000], [1, 0x100000]]);
      expectRejected(vm, () => del(vm, slot), "EINVAL");
      expectErrno(() => vm.getDirtyLog(slot), "EINVAL");
    }
  });

  it("checks overlap per address space only: the same range in AS 0 and AS 1 is fine", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 16 * PAGE);
    region(vm, AS1 | 1, 0x100000, 16 * PAGE); // same range, other space
    region(vm, AS1 | 0, 0x200000, 16 * PAGE); // same id, other space, other range
    expect(vm.memslotAt(0, 0x100000)).toBe(0);
    expect(vm.memslotAt(1, 0x100000)).toBe(AS1 | 1);
    expect(vm.memslotAt(1, 0x200000)).toBe(AS1 | 0);
    // within AS 1 the overlap check still applies
    expectRejected(vm, () => region(vm, AS1 | 2, 0x108000, 16 * PAGE), "EEXIST", [[1, 0x110000]]);
  });

  it("a vCPU in SMM (vcpu.smm = true) uses address space 1", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    region(vm, AS1 | 0, 0x100000, 8 * PAGE, LOG);
    region(vm, AS1 | 1, 0x400000, PAGE, 0, true);
    const vcpu = vm.createVcpu(0);
    vcpu.smm = true;
    expect(vcpu.smm).toBe(true);
    touch(vcpu, 0x100000, [3]);
    vcpu.smm = false;
    touch(vcpu, 0x100000, [5]);
    expect(dirtyPages(vm, AS1 | 0)).toEqual([3]);
    expect(dirtyPages(vm, 0)).toEqual([5]);
    // a gpa mapped only in AS 1 is MMIO for a vCPU outside SMM, memory inside SMM
    expect(vcpu.writeGuest(0x400000, 9n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(0x400000n);
    vcpu.smm = true;
    expect(vcpu.writeGuest(0x400000, 9n)).toBe(0);
    expect(vcpu.readGuest(0x400000)).toBe(9n);
  });

  it("allows 32764 user slots (KVM_CAP_NR_MEMSLOTS), ids 0..32763 all at once; 32764 is EINVAL", async () => {
    const vm = await newVm();
    const n = vm.checkExtension(KVM_CAP_NR_MEMSLOTS);
    expect(n).toBe(32764);
    // 128 pages (512 KiB) each, unbacked, ids in address order
    const S = 128 * PAGE;
    for (let id = 0; id < n; id++) region(vm, id, id * S, S);
    expect(vm.generation(0)).toBe(BigInt(2 * n));
    for (const id of [0, 1, 4095, 16384, 32762, 32763]) {
      expect(vm.memslotAt(0, id * S)).toBe(id);
      expect(vm.memslotAt(0, id * S + S - PAGE)).toBe(id);
    }
    expect(vm.memslotAt(0, n * S)).toBeUndefined();
    expectRejected(vm, () => region(vm, 32764, n * S, S), "EINVAL", [[0, n * S]]);
    // overlap checks still find the neighbours in a full table
    del(vm, 20000);
    expect(vm.memslotAt(0, 20000 * S)).toBeUndefined();
    const probes: Probe[] = [[0, 19999 * S], [0, 20001 * S]];
    expectRejected(vm, () => region(vm, 20000, 20000 * S, S + PAGE), "EEXIST", probes);
    expectRejected(vm, () => region(vm, 20000, 20000 * S - PAGE, S), "EEXIST", probes);
    region(vm, 20000, 20000 * S, S);
    expect(vm.memslotAt(0, 20000 * S)).toBe(20000);
    // the highest user id works on its own as well
    const vm2 = await newVm();
    region(vm2, 32763, 0x100000, PAGE, LOG);
    expect(vm2.memslotAt(0, 0x100000)).toBe(32763);
    expect(dirtyPages(vm2, 32763)).toEqual([]);
  });

  it("rejects user calls on ids >= 32764 (internal and out-of-range ids) with EINVAL", async () => {
    const vm = await newVm();
    for (const id of [32764, 32765, 32766, 32767, 40000, 0xffff]) {
      for (const slot of [id, AS1 | id]) {
        expectRejected(vm, () => region(vm, slot, 0x100000, PAGE), "EINVAL", [[0, 0x100000], [1, 0x100000]]);
        expectRejected(vm, () => region(vm, slot, 0x100000, PAGE, LOG), "EINVAL", [[0, 0x100000]]);
        expectRejected(vm, () => del(vm, slot), "EINVAL");
      }
    }
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.3 bad inputs (each EINVAL/EEXIST, nothing changes)", () => {
  it("rejects unknown flag bits: GUEST_MEMFD (4), 8, KVM_MEMSLOT_INVALID (1<<16), 1<<31", async () => {
    const vm = await newVm();
    expect(KVM_MEM_GUEST_MEMFD).toBe(4);
    for (const flags of [KVM_MEM_GUEST_MEMFD, KVM_MEM_GUEST_MEMFD | LOG, 8, 1 << 16, 1 << 31, 0xffffffff]) {
      expectRejected(vm, () => region(vm, 0, 0x100000, PAGE, flags), "EINVAL", [[0, 0x100000]]);
    }
    // accepted flags for contrast: LOG, READONLY, both
    region(vm, 0, 0x100000, PAGE, LOG);
    region(vm, 1, 0x200000, PAGE, RO);
    region(vm, 2, 0x300000, PAGE, LOG | RO);
    expect([0x100000, 0x200000, 0x300000].map((g) => vm.memslotAt(0, g))).toEqual([0, 1, 2]);
  });

  it("rejects unknown flag bits on an existing slot: flags and dirty bits stay", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [1, 6]);
    for (const flags of [LOG | KVM_MEM_GUEST_MEMFD, LOG | (1 << 16), 1 << 16]) {
      expectRejected(vm, () => region(vm, 0, 0x100000, 8 * PAGE, flags), "EINVAL", [[0, 0x100000]]);
    }
    expect(vm.stats.memslotsDirtyLogging).toBe(1);
    expect(dirtyPages(vm, 0)).toEqual([1, 6]);
  });

  it("rejects an unaligned guest_phys_addr", async () => {
    const vm = await newVm();
    for (const gpa of [0x100008, 0x100800, 0x100fff, 1]) {
      expectRejected(vm, () => region(vm, 0, gpa, PAGE), "EINVAL", [[0, 0x100000]]);
    }
  });

  it("rejects an unaligned memory_size", async () => {
    const vm = await newVm();
    for (const size of [1, 8, 4095, 4097, 0x1800, 0x10000 + 0x200]) {
      expectRejected(vm, () => region(vm, 0, 0x100000, size), "EINVAL", [[0, 0x100000]]);
    }
  });

  it("rejects guest_phys_addr + memory_size that wraps past 2^64", async () => {
    const vm = await newVm();
    const top = 2n ** 64n;
    expectRejected(vm, () => region(vm, 0, top - 4096n, 0x2000), "EINVAL");
    expectRejected(vm, () => region(vm, 0, top - 4096n, 4096), "EINVAL"); // sum is exactly 0
    expectRejected(vm, () => region(vm, 0, 0x1000, top - 4096n), "EINVAL");
  });

  it("rejects more than 2^31 - 1 pages", async () => {
    const vm = await newVm();
    expectRejected(vm, () => region(vm, 0, 0, (MAX_NR_PAGES + 1n) * 4096n), "EINVAL", [[0, 0]]);
    expectRejected(vm, () => region(vm, 0, 0, 1n << 44n), "EINVAL", [[0, 0]]);
  });

  it("rejects a last gfn beyond 2^36 - 1 (48-bit guest physical); the last page itself is fine", async () => {
    const vm = await newVm();
    expectRejected(vm, () => region(vm, 0, GPA_LIMIT, PAGE), "EINVAL");
    expectRejected(vm, () => region(vm, 0, GPA_LIMIT - 4096n, 2 * PAGE), "EINVAL", [[0, GPA_LIMIT - 4096n]]);
    expectRejected(vm, () => region(vm, 0, 1n << 52n, PAGE), "EINVAL");
    region(vm, 0, GPA_LIMIT - 4096n, PAGE, LOG);
    expect(vm.memslotAt(0, GPA_LIMIT - 4096n)).toBe(0);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(GPA_LIMIT - 8n, 1n)).toBe(0);
    expect(dirtyPages(vm, 0)).toEqual([0]);
  });

  it("rejects deleting a slot that does not exist", async () => {
    const vm = await newVm();
    expectRejected(vm, () => del(vm, 7), "EINVAL");
    region(vm, 7, 0x100000, PAGE);
    del(vm, 7);
    expectRejected(vm, () => del(vm, 7), "EINVAL", [[0, 0x100000]]); // already deleted
    region(vm, 8, 0x100000, PAGE);
    expectRejected(vm, () => del(vm, 9, 0x100000), "EINVAL", [[0, 0x100000]]); // another id's range
  });

  it("rejects resizing an existing slot (bigger or smaller); the slot and its bits stay", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [0, 3]);
    const probes: Probe[] = [[0, 0x100000 + 3 * PAGE], [0, 0x100000 + 4 * PAGE]];
    expectRejected(vm, () => region(vm, 0, 0x100000, 8 * PAGE, LOG), "EINVAL", probes);
    expectRejected(vm, () => region(vm, 0, 0x100000, 2 * PAGE, LOG), "EINVAL", probes);
    expectRejected(vm, () => region(vm, 0, 0x200000, 2 * PAGE, LOG), "EINVAL", [[0, 0x200000]]); // resize + move
    expect(vm.memslotAt(0, 0x100000 + 3 * PAGE)).toBe(0);
    expect(vm.memslotAt(0, 0x100000 + 4 * PAGE)).toBeUndefined();
    const log = vm.getDirtyLog(0);
    expect(log.length).toBe(8); // still 4 pages: ALIGN(4, 64) / 8
    expect(pagesOf(log)).toEqual([0, 3]);
  });

  it("rejects toggling KVM_MEM_READONLY on an existing slot, either way; bits stay", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    region(vm, 1, 0x200000, 4 * PAGE, RO | LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [2]);
    expectRejected(vm, () => region(vm, 0, 0x100000, 4 * PAGE, LOG | RO), "EINVAL");
    expectRejected(vm, () => region(vm, 0, 0x100000, 4 * PAGE, RO), "EINVAL");
    expectRejected(vm, () => region(vm, 1, 0x200000, 4 * PAGE, LOG), "EINVAL");
    expectRejected(vm, () => region(vm, 1, 0x200000, 4 * PAGE, 0), "EINVAL");
    // still writable / still read-only
    expect(vcpu.writeGuest(0x100000 + PAGE, 1n)).toBe(0);
    expect(vcpu.writeGuest(0x200000, 1n)).toBe(KVM_EXIT_MMIO);
    expect(dirtyPages(vm, 0)).toEqual([1, 2]);
  });

  it("rejects changing the backing (userspace_addr) of an existing slot", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, 0, true);
    region(vm, 1, 0x200000, 4 * PAGE, 0, false);
    expectRejected(vm, () => region(vm, 0, 0x100000, 4 * PAGE, 0, false), "EINVAL");
    expectRejected(vm, () => region(vm, 1, 0x200000, 4 * PAGE, 0, true), "EINVAL");
    expect(vm.guestMemory(0)?.length).toBe(4 * PAGE);
    expect(vm.guestMemory(1)).toBeUndefined();
  });

  it("a CREATE whose metadata or backing cannot be allocated is ENOMEM and changes nothing", async () => {
    const vm = await newVm({ maxMemoryBytes: 128 << 20 });
    // 2^31 - 1 pages pass validation; their metadata does not fit in 128 MiB
    expectRejected(vm, () => region(vm, 0, 0, MAX_NR_PAGES * 4096n, LOG), "ENOMEM", [[0, 0]]);
    // a backed slot larger than the shared memory can hold
    expectRejected(vm, () => region(vm, 0, 0, 1 << 30, 0, true), "ENOMEM", [[0, 0]]);
    expect(vm.stats.memslotsDirtyLogging).toBe(0);
    // nothing leaked: a reasonable slot still fits, under the same id
    region(vm, 0, 0, 16 << 20, LOG, true);
    expect(vm.memslotAt(0, 0)).toBe(0);
    expect(vm.generation(0)).toBe(2n);
  });

  it("treats the same parameters again as a no-op: generation, flushes and bits unchanged", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG, true);
    region(vm, AS1 | 3, 0x100000, 4 * PAGE, RO);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [1]);
    const before = state(vm, [[0, 0x100000], [1, 0x100000]]);
    region(vm, 0, 0x100000, 4 * PAGE, LOG, true);
    region(vm, AS1 | 3, 0x100000, 4 * PAGE, RO);
    expect(state(vm, [[0, 0x100000], [1, 0x100000]])).toEqual(before);
    // the mapping survived (no zap): the next store to page 1 is not a new report
    touch(vcpu, 0x100000, [1]);
    expect(dirtyPages(vm, 0)).toEqual([1]);
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.3 item 8: overlap (EEXIST)", () => {
  it("rejects a CREATE that meets another slot in any way; touching ranges are fine", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 16 * PAGE); // gfns 0x100..0x10f
    const probes: Probe[] = [[0, 0x0ff000], [0, 0x100000], [0, 0x10f000], [0, 0x110000]];
    const cases: Array<[number, number]> = [
      [0x0ff000, 2], // starts below, ends inside
      [0x10f000, 2], // starts on the last page
      [0x104000, 2], // inside
      [0x0f0000, 64], // covers it
      [0x100000, 16], // identical range
    ];
    for (const [gpa, pages] of cases) {
      expectRejected(vm, () => region(vm, 1, gpa, pages * PAGE), "EEXIST", probes);
    }
    region(vm, 1, 0x0ff000, PAGE); // ends where slot 0 begins
    region(vm, 2, 0x110000, PAGE); // begins where slot 0 ends
    expect(probes.map(([as, g]) => vm.memslotAt(as, g))).toEqual([1, 0, 0, 2]);
  });

  it("rejects a MOVE onto another slot with EEXIST; the slot and its bits stay put", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    region(vm, 1, 0x200000, 4 * PAGE);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [2]);
    const probes: Probe[] = [[0, 0x100000], [0, 0x1fe000], [0, 0x200000]];
    expectRejected(vm, () => region(vm, 0, 0x1fe000, 4 * PAGE, LOG), "EEXIST", probes);
    expectRejected(vm, () => region(vm, 0, 0x200000, 4 * PAGE, 0), "EEXIST", probes); // move + flags
    expect(dirtyPages(vm, 0)).toEqual([2]);
  });

  it("lets a MOVE overlap its own old range", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    region(vm, 0, 0x102000, 4 * PAGE, LOG); // up by 2 pages
    expect(vm.memslotAt(0, 0x100000 + PAGE)).toBeUndefined();
    expect(vm.memslotAt(0, 0x105000)).toBe(0);
    region(vm, 0, 0x101000, 4 * PAGE, LOG); // down by 1 page
    expect(vm.memslotAt(0, 0x101000)).toBe(0);
    expect(vm.memslotAt(0, 0x105000)).toBeUndefined();
  });

  it("rejects CREATE over an internal slot in either address space", async () => {
    const vm = await newVm();
    vm.setTssAddr(0x10000);
    expectRejected(vm, () => region(vm, 0, 0x12000, 4 * PAGE), "EEXIST", [[0, 0x13000]]);
    expectRejected(vm, () => region(vm, AS1 | 0, 0x0f000, 2 * PAGE), "EEXIST", [[1, 0x0f000]]);
    region(vm, 0, 0x13000, PAGE); // right after the TSS's 3 pages
    expect(vm.memslotAt(0, 0x13000)).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.3 check order where two errors compete", () => {
  it("bad flags or a bad id win over an overlap (EINVAL, not EEXIST)", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    expectRejected(vm, () => region(vm, 1, 0x100000, PAGE, 1 << 16), "EINVAL");
    expectRejected(vm, () => region(vm, 1, 0x100000, PAGE, KVM_MEM_GUEST_MEMFD), "EINVAL");
    expectRejected(vm, () => region(vm, 32764, 0x100000, PAGE), "EINVAL");
    expectRejected(vm, () => region(vm, 32764, 0x100000, PAGE, 1 << 16), "EINVAL");
  });

  it("alignment wins over an overlap (EINVAL, not EEXIST)", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    expectRejected(vm, () => region(vm, 1, 0x100008, PAGE), "EINVAL");
    expectRejected(vm, () => region(vm, 1, 0x100000, PAGE + 8), "EINVAL");
  });

  it("the page-count limit is checked before overlap: 2^31-1 pages reach EEXIST, 2^31 pages stop at EINVAL", async () => {
    const vm = await newVm();
    region(vm, 0, 0, PAGE);
    // no allocation happens: the overlap is found first
    expectRejected(vm, () => region(vm, 1, 0, MAX_NR_PAGES * 4096n), "EEXIST", [[0, 0]]);
    expectRejected(vm, () => region(vm, 1, 0, (MAX_NR_PAGES + 1n) * 4096n), "EINVAL", [[0, 0]]);
  });

  it("a range wrapping past 2^64 onto an existing slot is EINVAL, not EEXIST", async () => {
    const vm = await newVm();
    region(vm, 0, 0, PAGE);
    expectRejected(vm, () => region(vm, 1, 2n ** 64n - 4096n, 2 * PAGE), "EINVAL", [[0, 0]]);
  });

  it("overlap (item 8) is checked before the max-gfn limit (item 9): CREATE gets EEXIST", async () => {
    const vm = await newVm();
    region(vm, 0, GPA_LIMIT - 16n * 4096n, 16 * PAGE); // ends exactly at the limit
    // overlaps slot 0 and runs past the limit
    expectRejected(vm, () => region(vm, 1, GPA_LIMIT - 4096n, 2 * PAGE), "EEXIST");
    expectRejected(vm, () => region(vm, 1, GPA_LIMIT - 32n * 4096n, 64 * PAGE), "EEXIST");
    // without the overlap the same kind of range is EINVAL
    expectRejected(vm, () => region(vm, 1, GPA_LIMIT, 2 * PAGE), "EINVAL");
  });

  it("overlap (item 8) is checked before the max-gfn limit (item 9): MOVE gets EEXIST", async () => {
    const vm = await newVm();
    region(vm, 0, GPA_LIMIT - 4n * 4096n, 4 * PAGE);
    region(vm, 1, 0x100000, 8 * PAGE);
    expectRejected(vm, () => region(vm, 1, GPA_LIMIT - 6n * 4096n, 8 * PAGE), "EEXIST", [[0, 0x100000]]);
  });

  it("a resize (item 7) is EINVAL even when the new range overlaps another slot (item 8)", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    region(vm, 1, 0x104000, 4 * PAGE);
    expectRejected(vm, () => region(vm, 0, 0x100000, 8 * PAGE), "EINVAL", [[0, 0x104000]]);
  });

  it("a READONLY toggle or backing change (item 7) is EINVAL even on a MOVE onto another slot", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    region(vm, 1, 0x200000, 4 * PAGE);
    const probes: Probe[] = [[0, 0x100000], [0, 0x200000]];
    expectRejected(vm, () => region(vm, 0, 0x200000, 4 * PAGE, RO), "EINVAL", probes);
    expectRejected(vm, () => region(vm, 0, 0x200000, 4 * PAGE, 0, true), "EINVAL", probes);
  });

  it("size 0 with an unaligned gpa or bad flags is EINVAL, not a DELETE (item 4 before item 5)", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    const probes: Probe[] = [[0, 0x100000]];
    expectRejected(vm, () => del(vm, 0, 0x100008), "EINVAL", probes);
    expectRejected(vm, () => vm.setUserMemoryRegion({ slot: 0, flags: 1 << 16, guestPhysAddr: 0x100000, memorySize: 0 }), "EINVAL", probes);
    expectRejected(vm, () => del(vm, 0, 2n ** 64n - 4095n), "EINVAL", probes);
  });

  it("an unaligned size below one page is EINVAL, not a DELETE of the existing slot", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    for (const size of [1, 4095]) expectRejected(vm, () => region(vm, 0, 0x100000, size), "EINVAL", [[0, 0x100000]]);
  });

  it("DELETE compares neither gpa nor (valid) flags with the slot's", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    vm.setUserMemoryRegion({ slot: 0, flags: RO, guestPhysAddr: 0x900000, memorySize: 0 });
    expect(vm.memslotAt(0, 0x100000)).toBeUndefined();
    expect(vm.stats.memslotsDirtyLogging).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.3 item 7 change kinds: MOVE, FLAGS_ONLY, DELETE", () => {
  it("MOVE: a new base gfn moves the slot; the old range is gone; backed bytes follow", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, 0, true);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(0x101008, 77n)).toBe(0);
    region(vm, 0, 0x300000, 4 * PAGE, 0, true);
    expect(vm.memslotAt(0, 0x100000)).toBeUndefined();
    expect(vm.memslotAt(0, 0x303000)).toBe(0);
    expect(vcpu.writeGuest(0x101008, 1n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(0x101008n);
    expect(vcpu.readGuest(0x301008)).toBe(77n);
  });

  it("MOVE even when the flags change too: one MOVE (+4), logging turns on with a fresh bitmap", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [1]);
    const g = vm.generation(0);
    region(vm, 0, 0x200000, 4 * PAGE, LOG);
    expect(vm.generation(0)).toBe(g + 4n);
    expect(vm.memslotAt(0, 0x200000)).toBe(0);
    expect(vm.memslotAt(0, 0x100000)).toBeUndefined();
    expect(vm.stats.memslotsDirtyLogging).toBe(1);
    expect(dirtyPages(vm, 0)).toEqual([]);
    touch(vcpu, 0x200000, [3]);
    expect(dirtyPages(vm, 0)).toEqual([3]);
  });

  it("FLAGS_ONLY: same base, different flags; the slot stays where it is", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    const g = vm.generation(0);
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    expect(vm.generation(0)).toBe(g + 2n);
    expect(vm.stats.memslotsDirtyLogging).toBe(1);
    expect(vm.memslotAt(0, 0x100000)).toBe(0);
    region(vm, 0, 0x100000, 4 * PAGE, 0);
    expect(vm.generation(0)).toBe(g + 4n);
    expect(vm.stats.memslotsDirtyLogging).toBe(0);
  });

  it("DELETE removes the slot; its range becomes MMIO and the id can be reused elsewhere", async () => {
    const vm = await newVm();
    region(vm, 3, 0x100000, 4 * PAGE, LOG, true);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [0]);
    del(vm, 3);
    expect(vm.memslotAt(0, 0x100000)).toBeUndefined();
    expect(vm.stats.memslotsDirtyLogging).toBe(0);
    expectErrno(() => vm.getDirtyLog(3), "ENOENT");
    expect(vcpu.writeGuest(0x100000, 1n)).toBe(KVM_EXIT_MMIO);
    region(vm, 3, 0x500000, 8 * PAGE);
    expect(vm.memslotAt(0, 0x507000)).toBe(3);
  });

  it("counts dirty-logging slots (nr_memslots_dirty_logging) across every change kind", async () => {
    const vm = await newVm();
    const n = () => vm.stats.memslotsDirtyLogging;
    region(vm, 0, 0x100000, PAGE, LOG); // CREATE logged
    region(vm, AS1 | 0, 0x100000, PAGE, LOG);
    expect(n()).toBe(2);
    region(vm, 0, 0x200000, PAGE, 0); // MOVE, logging off
    expect(n()).toBe(1);
    region(vm, 0, 0x200000, PAGE, LOG); // FLAGS_ONLY on
    expect(n()).toBe(2);
    region(vm, 0, 0x300000, PAGE, LOG); // MOVE, still logged
    expect(n()).toBe(2);
    del(vm, AS1 | 0); // DELETE of a logged slot
    expect(n()).toBe(1);
    expectErrno(() => region(vm, 1, 0x300000, PAGE, LOG), "EEXIST"); // rejected
    expect(n()).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.4 memslot generations", () => {
  it("start at the address-space id: generation(0) = 0, generation(1) = 1", async () => {
    const vm = await newVm();
    expect(vm.generation(0)).toBe(0n);
    expect(vm.generation(1)).toBe(1n);
  });

  it("CREATE and FLAGS_ONLY add 2 (one publish × 2 address spaces) to their own AS only", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, PAGE);
    expect([vm.generation(0), vm.generation(1)]).toEqual([2n, 1n]);
    region(vm, AS1 | 0, 0x100000, PAGE);
    expect([vm.generation(0), vm.generation(1)]).toEqual([2n, 3n]);
    region(vm, 0, 0x100000, PAGE, LOG); // FLAGS_ONLY
    expect([vm.generation(0), vm.generation(1)]).toEqual([4n, 3n]);
    region(vm, AS1 | 0, 0x100000, PAGE, LOG);
    expect([vm.generation(0), vm.generation(1)]).toEqual([4n, 5n]);
  });

  it("DELETE and MOVE add 4 (INVALID copy, then the result) to their own AS only", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, PAGE);
    region(vm, AS1 | 0, 0x100000, PAGE);
    expect([vm.generation(0), vm.generation(1)]).toEqual([2n, 3n]);
    region(vm, 0, 0x200000, PAGE); // MOVE
    expect([vm.generation(0), vm.generation(1)]).toEqual([6n, 3n]);
    region(vm, AS1 | 0, 0x300000, PAGE, LOG); // MOVE with a flags change
    expect([vm.generation(0), vm.generation(1)]).toEqual([6n, 7n]);
    del(vm, 0); // DELETE
    expect([vm.generation(0), vm.generation(1)]).toEqual([10n, 7n]);
    del(vm, AS1 | 0);
    expect([vm.generation(0), vm.generation(1)]).toEqual([10n, 11n]);
  });

  it("never advance on rejected calls or no-ops; AS 0 stays even and AS 1 odd", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    region(vm, 1, 0x200000, 4 * PAGE);
    region(vm, AS1 | 0, 0x100000, 4 * PAGE);
    const g0 = vm.generation(0);
    const g1 = vm.generation(1);
    const rejected: Array<[() => void, ErrnoName]> = [
      [() => region(vm, 2, 0x100000, PAGE), "EEXIST"],
      [() => region(vm, 0, 0x200000, 4 * PAGE, LOG), "EEXIST"],
      [() => region(vm, 0, 0x100000, 8 * PAGE, LOG), "EINVAL"],
      [() => region(vm, 0, 0x100000, 4 * PAGE, LOG | RO), "EINVAL"],
      [() => region(vm, 2, 0x100008, PAGE), "EINVAL"],
      [() => region(vm, 2, 0x300000, PAGE, 8), "EINVAL"],
      [() => region(vm, 32764, 0x300000, PAGE), "EINVAL"],
      [() => region(vm, (2 << 16) | 0, 0x300000, PAGE), "EINVAL"],
      [() => region(vm, 2, GPA_LIMIT, PAGE), "EINVAL"],
      [() => del(vm, 9), "EINVAL"],
      [() => del(vm, AS1 | 9), "EINVAL"],
    ];
    for (const [fn, errno] of rejected) expectErrno(fn, errno);
    region(vm, 0, 0x100000, 4 * PAGE, LOG); // no-ops
    region(vm, AS1 | 0, 0x100000, 4 * PAGE);
    expect(vm.generation(0)).toBe(g0);
    expect(vm.generation(1)).toBe(g1);
    expect(g0 % 2n).toBe(0n);
    expect(g1 % 2n).toBe(1n);
  });

  it("a MOVE rejected only by the max-gfn check (arch prepare) still published twice: +4, slot and bits unchanged", async () => {
    // kvm_set_memslot invalidates the old slot (swap 1) before kvm_prepare_memory_region;
    // when x86's prepare rejects the new last gfn, kvm_activate_memslot(invalid, old)
    // reverts it (swap 2). The slot is back as it was, but the generation moved by 2 × 2.
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [2]);
    const g0 = vm.generation(0);
    const g1 = vm.generation(1);
    expectErrno(() => region(vm, 0, GPA_LIMIT - 2n * 4096n, 4 * PAGE, LOG), "EINVAL");
    expect(vm.memslotAt(0, 0x100000)).toBe(0);
    expect(vm.memslotAt(0, GPA_LIMIT - 4096n)).toBeUndefined();
    expect(dirtyPages(vm, 0)).toEqual([2]);
    expect(vm.generation(1)).toBe(g1);
    expect(vm.generation(0)).toBe(g0 + 4n);
    // the slot is usable again: not left KVM_MEMSLOT_INVALID (its faults would retry forever)
    expect(vm.memslots().find((m) => m.slot === 0)?.flags).toBe(LOG);
    touch(vcpu, 0x100000, [3]);
    expect(dirtyPages(vm, 0)).toEqual([3]);
  });

  it("MOVE and DELETE zap every mapping of the VM, other slots' too; CREATE and FLAGS_ONLY do not", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, 0, true);
    region(vm, 1, 0x200000, 4 * PAGE, 0, true);
    region(vm, AS1 | 0, 0x100000, 4 * PAGE, 0, true);
    const vcpu = vm.createVcpu(0);
    const mapped = () => [vm.spte(0, 0x100000).level, vm.spte(0, 0x200000).level];
    touch(vcpu, 0x100000, [0]);
    touch(vcpu, 0x200000, [0]);
    expect(mapped().every((l) => l > 0)).toBe(true);
    const z = vm.stats.zaps;
    region(vm, 2, 0x300000, PAGE); // CREATE
    region(vm, 1, 0x200000, 4 * PAGE, LOG, true); // FLAGS_ONLY
    expect(vm.stats.zaps).toBe(z);
    expect(mapped().every((l) => l > 0)).toBe(true);
    region(vm, AS1 | 0, 0x500000, 4 * PAGE, 0, true); // MOVE in AS 1 zaps AS 0's mappings too
    expect(vm.stats.zaps).toBe(z + 1n);
    expect(mapped()).toEqual([0, 0]);
    touch(vcpu, 0x100000, [0]);
    expect(vm.spte(0, 0x100000).level).toBeGreaterThan(0);
    del(vm, 2); // DELETE
    expect(vm.stats.zaps).toBe(z + 2n);
    expect(vm.spte(0, 0x100000).level).toBe(0);
  });

  it("internal slots advance both address spaces by 2 each", async () => {
    const vm = await newVm();
    vm.setTssAddr(0x10000);
    expect([vm.generation(0), vm.generation(1)]).toEqual([2n, 3n]);
    vm.setIdentityMapAddr(0xfffbc000); // only records the address
    expect([vm.generation(0), vm.generation(1)]).toEqual([2n, 3n]);
    vm.createVcpu(0); // init_rmode_identity_map installs the slot
    expect([vm.generation(0), vm.generation(1)]).toEqual([4n, 5n]);
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.1 internal slots (TSS 32764, APIC access page 32765, identity map 32766)", () => {
  it("setTssAddr creates a 3-page slot 32764 in both address spaces", async () => {
    const vm = await newVm();
    const a = 0xfeffd000;
    vm.setTssAddr(a);
    for (const as of [0, 1]) {
      const id = (as << 16) | TSS_PRIVATE_MEMSLOT;
      expect(vm.memslotAt(as, a)).toBe(id);
      expect(vm.memslotAt(as, a + 2 * PAGE)).toBe(id);
      expect(vm.memslotAt(as, a + 3 * PAGE)).toBeUndefined();
      expect(vm.memslotAt(as, a - PAGE)).toBeUndefined();
    }
    expect(TSS_PRIVATE_MEMSLOT).toBe(32764);
  });

  it("setTssAddr a second time is EEXIST (same or another address)", async () => {
    const vm = await newVm();
    vm.setTssAddr(0x10000);
    expectRejected(vm, () => vm.setTssAddr(0x10000), "EEXIST", [[0, 0x10000], [0, 0x20000]]);
    expectRejected(vm, () => vm.setTssAddr(0x20000), "EEXIST", [[0, 0x10000], [0, 0x20000]]);
  });

  it("setTssAddr accepts up to 0xffffd000 ((unsigned)-3*PAGE_SIZE) and rejects higher with EINVAL", async () => {
    const vm = await newVm();
    for (const a of [0xffffe000, 0xfffff000, 0x1_0000_0000, 0x1_0001_0000]) {
      expectRejected(vm, () => vm.setTssAddr(a), "EINVAL", [[0, 0xffffe000]]);
    }
    expectRejected(vm, () => vm.setTssAddr(0x10001), "EINVAL", [[0, 0x10000]]); // unaligned gpa
    vm.setTssAddr(0xffffd000);
    expect(vm.memslotAt(0, 0xfffff000)).toBe(TSS_PRIVATE_MEMSLOT);
  });

  it("setTssAddr over a user slot is EEXIST (in AS 0, or in AS 1 only)", async () => {
    const vm = await newVm();
    region(vm, 0, 0x11000, PAGE);
    expectRejected(vm, () => vm.setTssAddr(0x10000), "EEXIST", [[0, 0x10000], [1, 0x10000]]);
    const vm2 = await newVm();
    region(vm2, AS1 | 0, 0x12000, PAGE);
    expectErrno(() => vm2.setTssAddr(0x10000), "EEXIST");
    expect(vm2.memslotAt(1, 0x10000)).toBeUndefined();
  });

  it("setIdentityMapAddr records the address; the first vCPU creates the 1-page slot 32766 in both address spaces", async () => {
    const vm = await newVm();
    vm.setIdentityMapAddr(0xfffbc000);
    expect(vm.memslotAt(0, 0xfffbc000)).toBeUndefined();
    vm.setIdentityMapAddr(0xfffbc000); // may be set again before any vCPU exists
    vm.createVcpu(0);
    for (const as of [0, 1]) {
      expect(vm.memslotAt(as, 0xfffbc000)).toBe((as << 16) | IDENTITY_PAGETABLE_PRIVATE_MEMSLOT);
      expect(vm.memslotAt(as, 0xfffbd000)).toBeUndefined();
    }
  });

  it("setIdentityMapAddr after a vCPU exists is EINVAL", async () => {
    const vm = await newVm();
    vm.createVcpu(0);
    expectRejected(vm, () => vm.setIdentityMapAddr(0xfffbc000), "EINVAL", [[0, 0xfffbc000], [1, 0xfffbc000]]);
  });

  it("with an in-kernel irqchip the first vCPU adds the 1-page APIC access slot 32765 at 0xfee00000", async () => {
    const vm = await newVm({ irqchip: true });
    expect(vm.memslotAt(0, APIC_DEFAULT_PHYS_BASE)).toBeUndefined();
    vm.createVcpu(0);
    for (const as of [0, 1]) {
      expect(vm.memslotAt(as, APIC_DEFAULT_PHYS_BASE)).toBe((as << 16) | APIC_ACCESS_PAGE_PRIVATE_MEMSLOT);
      expect(vm.memslotAt(as, APIC_DEFAULT_PHYS_BASE + PAGE)).toBeUndefined();
    }
    const g = [vm.generation(0), vm.generation(1)];
    expect(g).toEqual([2n, 3n]);
    vm.createVcpu(1); // only the first vCPU installs it
    expect([vm.generation(0), vm.generation(1)]).toEqual(g);
    // without an irqchip there is no such slot
    const plain = await newVm();
    plain.createVcpu(0);
    expect(plain.memslotAt(0, APIC_DEFAULT_PHYS_BASE)).toBeUndefined();
    expect(plain.generation(0)).toBe(0n);
  });

  it("user calls on internal ids are EINVAL, even on existing internal slots (no LOG_DIRTY_PAGES, no delete)", async () => {
    const vm = await newVm({ irqchip: true });
    vm.setTssAddr(0x10000);
    vm.setIdentityMapAddr(0xfffbc000);
    vm.createVcpu(0);
    const internal: Array<[number, number, number]> = [
      [TSS_PRIVATE_MEMSLOT, 0x10000, 3],
      [APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, APIC_DEFAULT_PHYS_BASE, 1],
      [IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, 0xfffbc000, 1],
    ];
    for (const [id, gpa, pages] of internal) {
      for (const as of [0, 1]) {
        const slot = (as << 16) | id;
        const probes: Probe[] = [[as, gpa]];
        expectRejected(vm, () => region(vm, slot, gpa, pages * PAGE, LOG), "EINVAL", probes);
        expectRejected(vm, () => region(vm, slot, gpa, pages * PAGE, 0), "EINVAL", probes);
        expectRejected(vm, () => del(vm, slot, gpa), "EINVAL", probes);
        expectRejected(vm, () => region(vm, slot, 0x4000_0000, pages * PAGE, 0), "EINVAL", probes);
        expect(vm.memslotAt(as, gpa)).toBe(slot);
      }
    }
    expect(vm.stats.memslotsDirtyLogging).toBe(0);
  });

  it("GET/CLEAR_DIRTY_LOG on internal ids are EINVAL", async () => {
    const vm = await newVm({ irqchip: true });
    vm.setTssAddr(0x10000);
    vm.setIdentityMapAddr(0xfffbc000);
    vm.createVcpu(0);
    for (const id of [32764, 32765, 32766]) {
      for (const slot of [id, AS1 | id]) {
        expectErrno(() => vm.getDirtyLog(slot), "EINVAL");
        expectErrno(() => vm.clearDirtyLog(slot, 0, 1, new Uint8Array(8)), "EINVAL");
      }
    }
  });

  it("guest stores to internal slots retire and read back but are never dirty-logged", async () => {
    const vm = await newVm({ irqchip: true });
    vm.setTssAddr(0x10000);
    region(vm, 0, 0x100000, 4 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(0x10000 + 2 * PAGE + 8, 5n)).toBe(0);
    expect(vcpu.exitReason).toBe(0);
    expect(vcpu.readGuest(0x10000 + 2 * PAGE + 8)).toBe(5n);
    expect(vcpu.writeGuest(APIC_DEFAULT_PHYS_BASE, 6n)).toBe(0);
    vcpu.smm = true;
    expect(vcpu.writeGuest(0x10000, 7n)).toBe(0); // the SMM copy of the TSS slot
    // no logged internal slot exists and the user slot saw nothing
    expect(vm.stats.memslotsDirtyLogging).toBe(1);
    expect(dirtyPages(vm, 0)).toEqual([]);
    expectErrno(() => vm.getDirtyLog(TSS_PRIVATE_MEMSLOT), "EINVAL");
  });
});

// ---------------------------------------------------------------------------------------
describe("KVM_CHECK_EXTENSION and KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)", () => {
  it("reports NR_MEMSLOTS 32764, MULTI_ADDRESS_SPACE 2, MANUAL_DIRTY_LOG_PROTECT2 3, READONLY_MEM 1, unknown 0", async () => {
    const vm = await newVm();
    expect(vm.checkExtension(KVM_CAP_NR_MEMSLOTS)).toBe(32764);
    expect(vm.checkExtension(KVM_CAP_MULTI_ADDRESS_SPACE)).toBe(2);
    expect(vm.checkExtension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)).toBe(
      KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET,
    );
    expect(vm.checkExtension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)).toBe(3);
    expect(vm.checkExtension(KVM_CAP_READONLY_MEM)).toBe(1);
    for (const cap of [9999, 0x7fffffff, 0xffffffff]) expect(vm.checkExtension(cap)).toBe(0);
    // a value that does not fit the ioctl argument never reaches the kernel
    expect(errnoOf(() => vm.checkExtension(-1))).toBe("EINVAL");
  });

  it("accepts MANUAL_DIRTY_LOG_PROTECT2 values 0, 1 and 3", async () => {
    const vm = await newVm();
    for (const v of [1, 3, 0, 3n, 1]) expect(() => vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [v])).not.toThrow();
  });

  it("rejects values 2, 4, 7 and high bits, and flags != 0, with EINVAL; the mode stays", async () => {
    const vm = await newVm();
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [3]);
    for (const v of [2, 4, 5, 7, 0xff, (1n << 32n) | 1n, 1n << 63n]) {
      expectErrno(() => vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [v]), "EINVAL");
    }
    expectErrno(() => vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1], 1), "EINVAL");
    expectErrno(() => vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [0], 0x80), "EINVAL");
    // still manual + INITIALLY_SET: a new bitmap starts all ones, and GET does not clear it
    region(vm, 0, 0x100000, 3 * PAGE, LOG);
    expect(dirtyPages(vm, 0)).toEqual([0, 1, 2]);
    expect(dirtyPages(vm, 0)).toEqual([0, 1, 2]);
  });

  it("rejects an unknown or non-enableable capability with EINVAL", async () => {
    const vm = await newVm();
    for (const cap of [9999, KVM_CAP_NR_MEMSLOTS, KVM_CAP_READONLY_MEM]) {
      expectErrno(() => vm.enableCap(cap, [1]), "EINVAL");
    }
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.5 dirty bitmap lifetime across memslot changes", () => {
  it("a slot without logging has no bitmap (ENOENT), nor has a missing slot", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE);
    expectErrno(() => vm.getDirtyLog(0), "ENOENT");
    expectErrno(() => vm.getDirtyLog(1), "ENOENT");
    expectErrno(() => vm.getDirtyLog(AS1 | 0), "ENOENT");
  });

  it("FLAGS_ONLY logging off drops the bitmap (ENOENT); on again starts all zero", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [1, 4]);
    region(vm, 0, 0x100000, 8 * PAGE, 0);
    expectErrno(() => vm.getDirtyLog(0), "ENOENT");
    touch(vcpu, 0x100000, [5]); // not logged
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    const log = vm.getDirtyLog(0);
    expect(log.length).toBe(8);
    expect(pagesOf(log)).toEqual([]);
  });

  it("with manual protect + INITIALLY_SET a new bitmap has exactly npages ones, also after off/on", async () => {
    const vm = await newVm();
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [3]);
    region(vm, 0, 0x100000, 100 * PAGE, LOG);
    const all = Array.from({ length: 100 }, (_, i) => i);
    const log = vm.getDirtyLog(0);
    expect(log.length).toBe(16); // ALIGN(100, 64) / 8
    expect(pagesOf(log)).toEqual(all);
    // clear everything, then logging off and on: a new all-ones bitmap
    vm.clearDirtyLog(0, 0, 100, new Uint8Array(16).fill(0xff));
    expect(dirtyPages(vm, 0)).toEqual([]);
    region(vm, 0, 0x100000, 100 * PAGE, 0);
    expectErrno(() => vm.getDirtyLog(0), "ENOENT");
    region(vm, 0, 0x100000, 100 * PAGE, LOG);
    expect(dirtyPages(vm, 0)).toEqual(all);
    // manual protect without INITIALLY_SET: zero
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1]);
    region(vm, 1, 0x400000, 100 * PAGE, LOG);
    expect(dirtyPages(vm, 1)).toEqual([]);
  });

  it("turning logging on while it is already on keeps the bits", async () => {
    const vm = await newVm();
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1]); // GET keeps bits: compare twice
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [0, 7]);
    expect(dirtyPages(vm, 0)).toEqual([0, 7]);
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    expect(dirtyPages(vm, 0)).toEqual([0, 7]);
  });

  it("MOVE keeps the bits at their slot offsets while logging stays on", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [2, 5]);
    region(vm, 0, 0x900000, 8 * PAGE, LOG);
    touch(vcpu, 0x900000, [6]);
    expect(dirtyPages(vm, 0)).toEqual([2, 5, 6]);
    // and across address spaces' slots of the same id nothing leaks
    region(vm, AS1 | 0, 0x100000, 8 * PAGE, LOG);
    expect(dirtyPages(vm, AS1 | 0)).toEqual([]);
  });

  it("MOVE with logging turned off drops the bits; moving back with logging starts from zero", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [3]);
    region(vm, 0, 0x200000, 8 * PAGE, 0);
    expectErrno(() => vm.getDirtyLog(0), "ENOENT");
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    expect(dirtyPages(vm, 0)).toEqual([]);
  });

  it("DELETE then re-CREATE starts from zero (same id, same range)", async () => {
    const vm = await newVm();
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1]);
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    const vcpu = vm.createVcpu(0);
    touch(vcpu, 0x100000, [1, 2, 3]);
    expect(dirtyPages(vm, 0)).toEqual([1, 2, 3]);
    del(vm, 0);
    region(vm, 0, 0x100000, 8 * PAGE, LOG);
    expect(dirtyPages(vm, 0)).toEqual([]);
    touch(vcpu, 0x100000, [4]);
    expect(dirtyPages(vm, 0)).toEqual([4]);
  });

  it("GET returns ALIGN(npages, 64) / 8 bytes and never bits >= npages", async () => {
    const vm = await newVm();
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [3]);
    for (const [slot, pages, bytes] of [[0, 1, 8], [1, 64, 8], [2, 65, 16], [3, 130, 24]]) {
      region(vm, slot, 0x1000000 * (slot + 1), pages * PAGE, LOG);
      const log = vm.getDirtyLog(slot);
      expect(log.length).toBe(bytes);
      expect(pagesOf(log).length).toBe(pages);
    }
  });
});

// ---------------------------------------------------------------------------------------
describe("guest accesses and memslots", () => {
  it("a store to a gpa without a slot exits with KVM_EXIT_MMIO and sets mmio.phys_addr", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, PAGE);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(0x101010, 1n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.exitReason).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(0x101010n);
    expect(vcpu.writeGuest(0xdead0008, 1n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(0xdead0008n);
  });

  it("exitReason is 0 after a store that retired (following an MMIO exit)", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, PAGE, 0, true);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(0x200000, 1n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.exitReason).toBe(KVM_EXIT_MMIO);
    expect(vcpu.writeGuest(0x100008, 3n)).toBe(0);
    expect(vcpu.exitReason).toBe(0);
  });

  it("a store to a KVM_MEM_READONLY slot exits with KVM_EXIT_MMIO, changes nothing and is not logged", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, RO | LOG, true);
    vm.writeUserMemory(0, PAGE + 16, new Uint8Array([0x2a, 0, 0, 0, 0, 0, 0, 0]));
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(0x101010, 99n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(0x101010n);
    expect(vcpu.writeGuest(0x100000, 99n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(0x100000n);
    expect(vm.guestMemory(0)?.[PAGE + 16]).toBe(0x2a);
    expect(vcpu.readGuest(0x101010)).toBe(0x2an);
    expect(dirtyPages(vm, 0)).toEqual([]);
  });

  it("KVM_MEM_READONLY slots can be read: untouched memory reads 0, VMM-written bytes read back", async () => {
    const vm = await newVm();
    region(vm, 0, 0x100000, 4 * PAGE, RO, true);
    region(vm, 1, 0x200000, 4 * PAGE, RO, false);
    vm.writeUserMemory(0, 3 * PAGE, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(0x300000, 0n)).toBe(KVM_EXIT_MMIO); // make exitReason non-zero first
    expect(vcpu.readGuest(0x100008)).toBe(0n);
    expect(vcpu.exitReason).toBe(0);
    expect(vcpu.readGuest(0x103000)).toBe(0x0807060504030201n);
    expect(vcpu.readGuest(0x201000)).toBe(0n);
    expect(vcpu.exitReason).toBe(0);
  });

  it("unbacked 1 TiB slots can be created, logged, written at both ends, deleted and re-created", async () => {
    const vm = await newVm({ maxMemoryBytes: 512 << 20 });
    const TiB = 1n << 40n;
    region(vm, 0, TiB, TiB, LOG);
    expect(vm.memslotAt(0, TiB)).toBe(0);
    expect(vm.memslotAt(0, 2n * TiB - 4096n)).toBe(0);
    expect(vm.memslotAt(0, 2n * TiB)).toBeUndefined();
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(TiB, 1n)).toBe(0);
    expect(vcpu.writeGuest(2n * TiB - 8n, 1n)).toBe(0);
    const log = vm.getDirtyLog(0);
    expect(log.length).toBe(Number(TiB / 4096n / 8n));
    expect(log[0]).toBe(1);
    expect(log[log.length - 1]).toBe(0x80);
    del(vm, 0);
    expect(vm.memslotAt(0, TiB)).toBeUndefined();
    region(vm, 1, TiB / 2n, TiB); // overlaps the old range: free again
    expect(vm.memslotAt(0, TiB)).toBe(1);
    del(vm, 1);
    expect(vm.memslotAt(0, TiB)).toBeUndefined();
  });
});
