// A rejected call changes nothing (issue §3): check first, then act. createVcpu failing
// with EEXIST (an internal slot's page inside a user slot) or ENOMEM (the ring does not
// fit) leaves no internal memslot, region or vCPU behind, and the next createVcpu works once
// the cause is gone; setWorkload rejected (EINVAL, ENOMEM for the Zipf table) leaves the
// previous workload running as it was, its Zipf table alive; setUserMemoryRegion failures
// of every kind leave memslots, generations and dirty bits alone — except the kernel's own
// exception, a MOVE rejected by x86's max-gfn check, which has already published the
// INVALID slot and the revert (generation + 4) when it fails with EINVAL.
import { describe, expect, it } from "vitest";
import * as L from "../src/layout.js";
import {
  APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
  APIC_DEFAULT_PHYS_BASE,
  type ErrnoName,
  IDENTITY_PAGETABLE_PRIVATE_MEMSLOT,
  KVM_CAP_DIRTY_LOG_RING,
  KVM_EXIT_IO,
  KVM_MEM_GUEST_MEMFD,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KvmError,
  TSS_PRIVATE_MEMSLOT,
  type UserMemoryRegion,
  type Vm,
  createVm,
  hashMemory,
  zipfCdf,
} from "../src/index.js";
import { errnoOf, pagesOf, vmFactory } from "./helpers.js";

const PAGE = 4096;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const RO = KVM_MEM_READONLY;
const AS1 = 1 << 16;
const APIC = APIC_DEFAULT_PHYS_BASE;
const IDENTITY = 0xfeffc000;
/** First guest-physical address beyond the model's 48-bit guest physical space. */
const GPA_LIMIT = 1n << 48n;

const { newVm, track } = vmFactory();

/** What a rejected call must not change. */
function state(vm: Vm) {
  const s = vm.stats;
  return {
    slots: vm.memslots().sort((a, b) => a.slot - b.slot),
    gen0: vm.generation(0),
    gen1: vm.generation(1),
    vcpus: vm.vcpuList.map((v) => v.id),
    logging: s.memslotsDirtyLogging,
    zaps: s.zaps,
    tlbFlushes: s.tlbFlushes,
    pageTablePages: s.pageTablePages,
  };
}

/** The call fails with errno (returned: its KvmError) and the VM is as it was. */
function expectRejected(vm: Vm, fn: () => unknown, errno: ErrnoName): KvmError {
  const before = state(vm);
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, "the call must fail").toBeInstanceOf(KvmError);
  expect(
    errnoOf(() => {
      throw err;
    }),
  ).toBe(errno);
  expect(state(vm)).toEqual(before);
  return err as KvmError;
}

/** The internal slots (ids 32764..32766) as [slot, gpa], sorted. */
function internalSlots(vm: Vm): Array<[number, bigint]> {
  return vm
    .memslots()
    .filter((s) => (s.slot & 0xffff) >= TSS_PRIVATE_MEMSLOT)
    .map((s): [number, bigint] => [s.slot, s.guestPhysAddr])
    .sort((a, b) => a[0] - b[0]);
}

function del(vm: Vm, slot: number): void {
  vm.setUserMemoryRegion({ slot, guestPhysAddr: 0, memorySize: 0 });
}

describe("§3 createVcpu failing with EEXIST leaves nothing behind", () => {
  it("identity map inside a user slot: no internal slot, no vCPU; the next createVcpu works once the slot is gone", async () => {
    const vm = await newVm();
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0x100000, memorySize: 16 * PAGE });
    vm.setIdentityMapAddr(0x104000);
    const first = expectRejected(vm, () => vm.createVcpu(0), "EEXIST");
    // again and again: the same cause, not a leftover internal slot
    for (let i = 0; i < 3; i++)
      expect(expectRejected(vm, () => vm.createVcpu(0), "EEXIST").message).toBe(first.message);
    expect(internalSlots(vm)).toEqual([]);
    del(vm, 0);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.id).toBe(0);
    expect(internalSlots(vm)).toEqual([
      [IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, 0x104000n],
      [AS1 | IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, 0x104000n],
    ]);
    vm.createVcpu(1);
    expect(internalSlots(vm)).toHaveLength(2);
  });

  it("the APIC access page (0xfee00000) inside a user slot, with an identity map that would fit: neither internal slot is made", async () => {
    // the identity map is checked (and, unchecked, would be created) before the APIC page
    const vm = await newVm({ irqchip: true });
    vm.setIdentityMapAddr(IDENTITY);
    vm.setUserMemoryRegion({ slot: 3, guestPhysAddr: APIC, memorySize: PAGE });
    const g = [vm.generation(0), vm.generation(1)];
    const first = expectRejected(vm, () => vm.createVcpu(0), "EEXIST");
    for (let i = 0; i < 3; i++)
      expect(expectRejected(vm, () => vm.createVcpu(7), "EEXIST").message).toBe(first.message);
    expect(internalSlots(vm)).toEqual([]);
    expect([vm.generation(0), vm.generation(1)]).toEqual(g);
    expect(vm.memslotAt(0, IDENTITY)).toBeUndefined();
    del(vm, 3);
    vm.createVcpu(0);
    vm.createVcpu(1);
    expect(internalSlots(vm)).toEqual([
      [APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, BigInt(APIC)],
      [IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, BigInt(IDENTITY)],
      [AS1 | APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, BigInt(APIC)],
      [AS1 | IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, BigInt(IDENTITY)],
    ]);
    expect(vm.vcpuList.map((v) => v.id)).toEqual([0, 1]);
  });

  it("the APIC page inside a user slot of address space 1 only: address space 0 gets nothing either", async () => {
    // dirtlog checks every address space before creating the slot in any (the kernel's
    // __x86_set_memory_region could leave address space 0's slot behind)
    const vm = await newVm({ irqchip: true });
    vm.setUserMemoryRegion({ slot: AS1 | 0, guestPhysAddr: 0xfe000000, memorySize: 32 << 20 });
    expectRejected(vm, () => vm.createVcpu(0), "EEXIST");
    expect(vm.memslotAt(0, APIC)).toBeUndefined();
    expect(internalSlots(vm)).toEqual([]);
    del(vm, AS1 | 0);
    vm.createVcpu(0);
    expect(internalSlots(vm).map(([s]) => s)).toEqual([
      APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
      AS1 | APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
    ]);
  });

  it("identity map on the APIC page: EEXIST, nothing made; a new identity-map address then works", async () => {
    const vm = await newVm({ irqchip: true });
    vm.setIdentityMapAddr(APIC);
    expectRejected(vm, () => vm.createVcpu(0), "EEXIST");
    expect(internalSlots(vm)).toEqual([]);
    vm.setIdentityMapAddr(IDENTITY); // still allowed: no vCPU was created
    vm.createVcpu(0);
    expect(internalSlots(vm)).toHaveLength(4);
  });

  it("a duplicate or invalid vCPU id changes nothing", async () => {
    const vm = await newVm({ irqchip: true });
    vm.createVcpu(0);
    expectRejected(vm, () => vm.createVcpu(0), "EEXIST");
    expectRejected(vm, () => vm.createVcpu(4096), "EINVAL");
    expect(internalSlots(vm)).toHaveLength(2);
  });
});

describe("§3 createVcpu failing with ENOMEM (the ring does not fit) leaves nothing behind", () => {
  // 80 MiB of VM memory, a 1 MiB page-table pool, a ring of 65536 entries (1 MiB, plus the
  // core's 1 MiB private copy), an irqchip and an identity map (two internal slots per
  // address space come first in the vCPU's allocations), and a backed slot of `pages`.
  const SLOT0_GPA = 0x1_0000_0000;
  async function ringVm(pages: number): Promise<Vm> {
    const vm = await createVm({ maxMemoryBytes: 80 << 20, mmuPoolBytes: 1 << 20, irqchip: true });
    track(vm);
    vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [65536 * 16]);
    vm.setIdentityMapAddr(IDENTITY);
    if (pages) vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: SLOT0_GPA, memorySize: pages * PAGE, backed: true });
    return vm;
  }
  /** Largest n in [lo, hi] with ok(n) (ok(lo) holds, ok is monotone), each probe on fresh VMs. */
  async function largest(lo: number, hi: number, ok: (n: number) => Promise<boolean>): Promise<number> {
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (await ok(mid)) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
  async function vcpuFits(pages: number): Promise<boolean> {
    let vm: Vm;
    try {
      vm = await ringVm(pages);
    } catch {
      return false; // the slot itself does not fit
    }
    const e = errnoOf(() => vm.createVcpu(0));
    vm.dispose();
    return e === undefined;
  }
  /** The biggest slot 0 beside which a vCPU still fits: one page more and createVcpu is ENOMEM. */
  let tight: number | undefined;
  async function tightPages(): Promise<number> {
    tight ??= await largest(0, (80 << 20) / PAGE, vcpuFits);
    return tight;
  }

  it("the ring that does not fit: ENOMEM, every time for the same reason; memslots and generations unchanged", async () => {
    const pages = (await tightPages()) + 1;
    expect(pages).toBeGreaterThan(16 * 256); // "a backed slot filling most of the memory"
    const vm = await ringVm(pages);
    const first = expectRejected(vm, () => vm.createVcpu(0), "ENOMEM");
    for (let i = 0; i < 5; i++)
      expect(expectRejected(vm, () => vm.createVcpu(0), "ENOMEM").message).toBe(first.message);
    expect(internalSlots(vm)).toEqual([]);
    expect(vm.vcpuList).toEqual([]);
    // the big slot gone: createVcpu works, and makes each internal slot exactly once
    del(vm, 0);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.dirtyRingState.entries).toBe(65536);
    expect(internalSlots(vm)).toEqual([
      [APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, BigInt(APIC)],
      [IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, BigInt(IDENTITY)],
      [AS1 | APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, BigInt(APIC)],
      [AS1 | IDENTITY_PAGETABLE_PRIVATE_MEMSLOT, BigInt(IDENTITY)],
    ]);
    vm.createVcpu(1);
    expect(internalSlots(vm)).toHaveLength(4);
  });

  it("the regions the failed createVcpu took all went back: the slot beside it fits exactly as it did before", async () => {
    // With nothing taken, one failed createVcpu cannot change what fits in the VM's memory:
    // the largest backed slot that fits next to the big one is the same before and after.
    const pages = (await tightPages()) + 1;
    const slot1 = (vm: Vm, n: number) =>
      errnoOf(() =>
        vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x2_0000_0000, memorySize: n * PAGE, backed: true }),
      ) === undefined;
    const before = await largest(0, 4096, async (n) => {
      const vm = await ringVm(pages);
      const ok = slot1(vm, n);
      vm.dispose();
      return ok;
    });
    expect(before).toBeGreaterThan(0);
    const vm = await ringVm(pages);
    expectRejected(vm, () => vm.createVcpu(0), "ENOMEM");
    const after = errnoOf(() =>
      vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x2_0000_0000, memorySize: before * PAGE, backed: true }),
    );
    expect(after, `a backed slot of ${before} pages fits before the failed createVcpu`).toBeUndefined();
  });
});

describe("§3 a rejected setWorkload leaves the previous workload running as it was", () => {
  const GPA0 = 0x10_0000;
  /** The vCPU block's bytes: workload parameters, cursor, progress, RNG. */
  const block = (vm: Vm, addr: number) => hashMemory(vm.u8().slice(addr, addr + L.VCPU_SIZE));

  it("EINVAL in any field and ENOMEM for a Zipf table: the old sequential walk goes on where it was", async () => {
    const vm = await newVm();
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: GPA0, memorySize: 256 * PAGE, backed: true });
    const vcpu = vm.createVcpu(0);
    vcpu.setWorkload({ pattern: "sequential", gpa: GPA0 + 16 * PAGE, pages: 8, batch: 4, seed: 77n });
    expect(vcpu.runSync()).toBe(KVM_EXIT_IO);
    expect(vcpu.lastGpa).toBe(BigInt(GPA0 + 19 * PAGE));
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([16, 17, 18, 19]);
    // each rejected workload writes elsewhere (pages 128..191) if any of its fields lands
    const other = { pattern: "uniform", gpa: GPA0 + 128 * PAGE, pages: 64, batch: 64, seed: 5n };
    const rejected: Array<[ErrnoName, object]> = [
      ["EINVAL", { ...other, batch: 0 }],
      ["EINVAL", { ...other, pattern: "toString" }],
      ["EINVAL", { ...other, seed: 0n }],
      ["EINVAL", { ...other, limit: -1 }],
      ["EINVAL", { ...other, hotFraction: Number.NaN }],
      ["EINVAL", { ...other, zipfS: -1 }],
      ["EINVAL", { ...other, pattern: "strided", stride: 0 }],
      ["EINVAL", { ...other, pattern: "hot-set", hotPages: 65 }],
      ["EINVAL", { ...other, gpa: GPA0 + 128 * PAGE + 8 }],
      ["EINVAL", { ...other, pages: 0 }],
      ["EINVAL", { ...other, pages: 2.5 }],
      ["EINVAL", { ...other, rate: 10 }],
      ["ENOMEM", { ...other, pattern: "zipf", pages: 1 << 27 }],
    ];
    for (const [errno, w] of rejected) {
      const before = block(vm, vcpu.addr);
      expect(
        errnoOf(() => vcpu.setWorkload(w as never)),
        JSON.stringify(w, (_k, v) => (typeof v === "bigint" ? `${v}n` : v)),
      ).toBe(errno);
      expect(block(vm, vcpu.addr)).toBe(before);
    }
    expect(vcpu.workloadStores).toBe(4n); // not reset
    expect(vcpu.runSync()).toBe(KVM_EXIT_IO);
    expect(vcpu.lastGpa).toBe(BigInt(GPA0 + 23 * PAGE));
    expect(vcpu.runSync()).toBe(KVM_EXIT_IO);
    expect(vcpu.lastGpa).toBe(BigInt(GPA0 + 19 * PAGE)); // wrapped: 16..19 again
    expect(vcpu.workloadStores).toBe(12n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([16, 17, 18, 19, 20, 21, 22, 23]);
  });

  it("after an ENOMEM Zipf workload the live Zipf table stays intact: the next memslot's bitmap is not put over it", async () => {
    const ZIPF_PAGES = 4096; // a 16 KiB table: room for a small slot's metadata if it were freed
    const vm = await newVm();
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: GPA0, memorySize: ZIPF_PAGES * PAGE });
    const vcpu = vm.createVcpu(0);
    vcpu.setWorkload({ pattern: "zipf", gpa: GPA0, pages: ZIPF_PAGES, zipfS: 1.1, batch: 4096, seed: 0x1234n });
    const dv = () => new DataView(vm.memory.buffer);
    const tableAddr = () => dv().getUint32(vcpu.addr + L.VCPU_WL_ZIPF, true);
    const table = tableAddr();
    const cdf = zipfCdf(ZIPF_PAGES, 1.1);
    const tableNow = () => new Uint32Array(vm.memory.buffer, table, ZIPF_PAGES).slice();
    expect(tableNow()).toEqual(cdf);

    expect(errnoOf(() => vcpu.setWorkload({ pattern: "zipf", gpa: GPA0, pages: 1 << 27, zipfS: 1.1 }))).toBe("ENOMEM");
    expect(tableAddr()).toBe(table);
    expect(tableNow()).toEqual(cdf);

    // another memslot with logging: its metadata (bitmaps) must lie outside the live table
    const GPA1 = 0x4000_0000;
    vm.setUserMemoryRegion({ slot: 1, flags: LOG, guestPhysAddr: GPA1, memorySize: 64 * PAGE });
    const slots = dv().getUint32(vm.addr + L.VM_SLOTS, true);
    const meta = dv().getUint32(slots + 1 * L.SLOT_SIZE + L.SLOT_META, true);
    const metaBytes = Number(vm.raw.memslot_meta_bytes(64n));
    expect(
      meta + metaBytes <= table || table + ZIPF_PAGES * 4 <= meta,
      "slot 1's metadata overlaps the Zipf table",
    ).toBe(true);
    expect(tableNow()).toEqual(cdf);

    // the Zipf workload runs as before: its own region only, rank 0 the hottest, many pages
    expect(vcpu.runSync()).toBe(KVM_EXIT_IO);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([]);
    const dirty = pagesOf(vm.getDirtyLog(0));
    expect(dirty.every((p) => p < ZIPF_PAGES)).toBe(true);
    expect(dirty).toContain(0);
    expect(dirty.length).toBeGreaterThan(256);
    expect(vcpu.lastGpa >= BigInt(GPA0) && vcpu.lastGpa < BigInt(GPA0 + ZIPF_PAGES * PAGE)).toBe(true);
    expect(tableNow()).toEqual(cdf);
  });
});

describe("§3 setUserMemoryRegion: every kind of failure changes nothing", () => {
  const GPA0 = 0x10_0000;
  async function setup(): Promise<Vm> {
    const vm = await newVm();
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: GPA0, memorySize: 16 * PAGE, backed: true });
    vm.setUserMemoryRegion({ slot: AS1 | 0, guestPhysAddr: GPA0, memorySize: 16 * PAGE });
    vm.setUserMemoryRegion({ slot: 2, flags: RO, guestPhysAddr: 0x20_0000, memorySize: 16 * PAGE });
    const vcpu = vm.createVcpu(0);
    for (const p of [2, 5]) expect(vcpu.writeGuest(GPA0 + p * PAGE, 0x5eedn)).toBe(0);
    return vm;
  }

  const failures: Array<[string, ErrnoName, UserMemoryRegion]> = [
    [
      "unknown flag KVM_MEM_GUEST_MEMFD",
      "EINVAL",
      { slot: 3, flags: KVM_MEM_GUEST_MEMFD, guestPhysAddr: 0x40_0000, memorySize: PAGE },
    ],
    ["unknown flag 1 << 3", "EINVAL", { slot: 3, flags: 1 << 3, guestPhysAddr: 0x40_0000, memorySize: PAGE }],
    ["an internal slot id", "EINVAL", { slot: TSS_PRIVATE_MEMSLOT, guestPhysAddr: 0x40_0000, memorySize: PAGE }],
    ["an id beyond the memslots", "EINVAL", { slot: 32767, guestPhysAddr: 0x40_0000, memorySize: PAGE }],
    ["address space 2", "EINVAL", { slot: (2 << 16) | 3, guestPhysAddr: 0x40_0000, memorySize: PAGE }],
    ["a gpa not page-aligned", "EINVAL", { slot: 3, guestPhysAddr: 0x40_0800, memorySize: PAGE }],
    ["a size not page-aligned", "EINVAL", { slot: 3, guestPhysAddr: 0x40_0000, memorySize: 0x800 }],
    ["gpa + size wrapping past 2^64", "EINVAL", { slot: 3, guestPhysAddr: (1n << 64n) - 4096n, memorySize: 2 * PAGE }],
    ["more than KVM_MEM_MAX_NR_PAGES", "EINVAL", { slot: 3, guestPhysAddr: 0, memorySize: (1n << 31n) * 4096n }],
    ["deleting a slot that does not exist", "EINVAL", { slot: 9, guestPhysAddr: 0, memorySize: 0 }],
    [
      "a new size for slot 0",
      "EINVAL",
      { slot: 0, flags: LOG, guestPhysAddr: GPA0, memorySize: 8 * PAGE, backed: true },
    ],
    ["dropping KVM_MEM_READONLY", "EINVAL", { slot: 2, guestPhysAddr: 0x20_0000, memorySize: 16 * PAGE }],
    ["a new backing for slot 0", "EINVAL", { slot: 0, flags: LOG, guestPhysAddr: GPA0, memorySize: 16 * PAGE }],
    ["a CREATE beyond the 48-bit space", "EINVAL", { slot: 3, guestPhysAddr: GPA_LIMIT - 4096n, memorySize: 2 * PAGE }],
    ["a CREATE overlapping slot 0", "EEXIST", { slot: 3, guestPhysAddr: GPA0 + 4 * PAGE, memorySize: 16 * PAGE }],
    [
      "a MOVE onto slot 2",
      "EEXIST",
      { slot: 0, flags: LOG, guestPhysAddr: 0x20_0000, memorySize: 16 * PAGE, backed: true },
    ],
    [
      "a backed slot the memory cannot hold",
      "ENOMEM",
      { slot: 3, guestPhysAddr: 0x1_0000_0000, memorySize: 1 << 30, backed: true },
    ],
    [
      "a backed slot beyond 4 GiB",
      "ENOMEM",
      { slot: 3, guestPhysAddr: 0x10_0000_0000, memorySize: 8n << 30n, backed: true },
    ],
  ];

  it.each(failures)("%s: %s, nothing changed", async (_what, errno, region) => {
    const vm = await setup();
    const bytes = hashMemory(vm.guestMemory(0) as Uint8Array);
    for (let i = 0; i < 2; i++) expectRejected(vm, () => vm.setUserMemoryRegion(region), errno);
    expect(vm.memslotAt(0, GPA0 + 4 * PAGE)).toBe(0);
    expect(vm.memslotAt(0, 0x40_0000)).toBeUndefined();
    expect(hashMemory(vm.guestMemory(0) as Uint8Array)).toBe(bytes);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2, 5]);
  });

  it("an ENOMEM slot gives back its metadata: the largest slot that fits is the same afterwards", async () => {
    const fits = (vm: Vm, n: number) =>
      errnoOf(() =>
        vm.setUserMemoryRegion({ slot: 4, guestPhysAddr: 0x2_0000_0000, memorySize: n * PAGE, backed: true }),
      ) === undefined;
    let lo = 0;
    let hi = (256 << 20) / PAGE;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      const vm = await setup();
      if (fits(vm, mid)) lo = mid;
      else hi = mid - 1;
      vm.dispose();
    }
    expect(lo).toBeGreaterThan(0);
    const vm = await setup();
    expectRejected(
      vm,
      () => vm.setUserMemoryRegion({ slot: 3, guestPhysAddr: 0x1_0000_0000, memorySize: 1 << 30, backed: true }),
      "ENOMEM",
    );
    expect(fits(vm, lo), `${lo} pages fit before the failed call`).toBe(true);
  });

  it("the kernel's exception stays: a MOVE rejected only by the max-gfn check is EINVAL after generation + 4", async () => {
    // kvm_set_memslot publishes the INVALID copy (and zaps) before x86's prepare rejects
    // the new last gfn, then reverts: two publishes (+2 each) in address space 0 only
    const vm = await setup();
    const before = state(vm);
    expect(
      errnoOf(() =>
        vm.setUserMemoryRegion({
          slot: 0,
          flags: LOG,
          guestPhysAddr: GPA_LIMIT - 8n * 4096n,
          memorySize: 16 * PAGE,
          backed: true,
        }),
      ),
    ).toBe("EINVAL");
    const after = state(vm);
    expect(after.gen0).toBe(before.gen0 + 4n);
    expect(after.gen1).toBe(before.gen1);
    expect(after.slots).toEqual(before.slots);
    expect(vm.memslotAt(0, GPA0)).toBe(0);
    expect(vm.memslotAt(0, GPA_LIMIT - 4096n)).toBeUndefined();
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2, 5]);
  });

  it("setTssAddr over a user slot (in either address space): EEXIST, no TSS slot in any", async () => {
    const vm = await setup();
    expectRejected(vm, () => vm.setTssAddr(GPA0), "EEXIST");
    vm.setUserMemoryRegion({ slot: AS1 | 5, guestPhysAddr: 0x80_0000, memorySize: 16 * PAGE });
    expectRejected(vm, () => vm.setTssAddr(0x80_0000), "EEXIST");
    expect(internalSlots(vm)).toEqual([]);
    vm.setTssAddr(0x90_0000);
    expect(internalSlots(vm)).toEqual([
      [TSS_PRIVATE_MEMSLOT, 0x90_0000n],
      [AS1 | TSS_PRIVATE_MEMSLOT, 0x90_0000n],
    ]);
    expectRejected(vm, () => vm.setTssAddr(0xa0_0000), "EEXIST");
  });
});
