// The vCPU access path and SPTE semantics: EPT bit positions, writable-state triples
// (spec §5.1, §5.2), fast page faults (§5.6), huge pages and eager split (§1.6, §1.7, §5.9),
// the TLB-flush points (§5.3, §8), zap-all on MOVE/DELETE (§1.4), reads and flags-only
// changes as measured on the real kernel (anchors/real-kvm.md), guest data and SMM.
import { afterEach, describe, expect, it } from "vitest";
import { faults, pagesOf, triple } from "./helpers.js";
import {
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_EXIT_MMIO,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  type Vm,
  createVm,
} from "../src/index.js";

const PAGE = 4096;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const MIB = 1 << 20;
const GIB = 1 << 30;
const BASE = 0x1_0000_0000; // 4 GiB: 1 GiB and 2 MiB aligned

const bit = (n: number) => 1n << BigInt(n);
const EPT_R = bit(0);
const EPT_W = bit(1);
const PS = bit(7);
const EPT_A = bit(8);
const EPT_D = bit(9);
const MMU_PRESENT = bit(11);
const HOST_WRITABLE = bit(57);
const MMU_WRITABLE = bit(58);
const PFN_MASK = 0x000f_ffff_ffff_f000n;

const vms: Vm[] = [];
afterEach(() => {
  for (const vm of vms.splice(0)) vm.dispose();
});

async function newVm(): Promise<Vm> {
  const vm = await createVm({ maxMemoryBytes: 512 << 20 });
  vms.push(vm);
  return vm;
}

function addSlot(vm: Vm, slot: number, gpa: number, bytes: number, flags = LOG, backed = false): void {
  vm.setUserMemoryRegion({ slot, flags, guestPhysAddr: gpa, memorySize: bytes, backed });
}

function readLe64(bytes: Uint8Array, off: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset + off, 8).getBigUint64(0, true);
}

// ---------------------------------------------------------------------------------------
describe("§5.1 EPT SPTE bit positions on real SPTEs", () => {
  it("a logged 4K write mapping: R, W(1), A(8), D(9), MMU-present(11), H(57), M(58); no PS(7)", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(BASE + 3 * PAGE + 16, 1n)).toBe(0);
    const { spte, level } = vm.spte(0, BASE + 3 * PAGE);
    expect(level).toBe(1);
    expect(spte & EPT_R).toBe(EPT_R);
    expect(spte & EPT_W).toBe(EPT_W);
    expect(spte & PS).toBe(0n);
    expect(spte & EPT_A).toBe(EPT_A);
    expect(spte & EPT_D).toBe(EPT_D);
    expect(spte & MMU_PRESENT).toBe(MMU_PRESENT);
    expect(spte & HOST_WRITABLE).toBe(HOST_WRITABLE);
    expect(spte & MMU_WRITABLE).toBe(MMU_WRITABLE);
    // pfn: the host page behind guest page 3 of the backed slot
    const mem = vm.guestMemory(0);
    expect(mem).toBeDefined();
    expect(spte & PFN_MASK).toBe(BigInt((mem as Uint8Array).byteOffset + 3 * PAGE));
  });

  it("dirty-log protection clears only W (bit 1): H, M, D, A, present stay", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 3 * PAGE, 1n);
    const before = vm.spte(0, BASE + 3 * PAGE).spte;
    vm.getDirtyLog(0);
    const after = vm.spte(0, BASE + 3 * PAGE).spte;
    expect(after).toBe(before & ~EPT_W);
    expect(after & (HOST_WRITABLE | MMU_WRITABLE | MMU_PRESENT | EPT_D | EPT_A)).toBe(
      HOST_WRITABLE | MMU_WRITABLE | MMU_PRESENT | EPT_D | EPT_A,
    );
  });

  it("a huge leaf has PS (bit 7) and a pfn aligned to its size", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, 0, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 5 * PAGE, 1n);
    const { spte, level } = vm.spte(0, BASE + 5 * PAGE);
    expect(level).toBe(2);
    expect(spte & PS).toBe(PS);
    expect(spte & MMU_PRESENT).toBe(MMU_PRESENT);
    const mem = vm.guestMemory(0) as Uint8Array;
    expect(spte & PFN_MASK).toBe(BigInt(mem.byteOffset));
    expect(Number(spte & PFN_MASK) % (2 * MIB)).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------
describe("§5.2 writable-state triples and §5.6 fast page fault", () => {
  it("a logged write installs (1,1,1) by a slow fault and reports the page", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    const s0 = vcpu.stats;
    vcpu.writeGuest(BASE + 7 * PAGE, 1n);
    expect(vcpu.stats.slowFaults - s0.slowFaults).toBe(1n);
    expect(vcpu.stats.fastFaults - s0.fastFaults).toBe(0n);
    expect(triple(vm, BASE + 7 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([7]);
  });

  it("GET re-protects to (1,1,0); the next write is a fast fault that reports the page once", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 7 * PAGE, 1n);
    vm.getDirtyLog(0);
    expect(triple(vm, BASE + 7 * PAGE)).toEqual({ hmw: "110", level: 1 });
    const s0 = vcpu.stats;
    vcpu.writeGuest(BASE + 7 * PAGE, 2n);
    vcpu.writeGuest(BASE + 7 * PAGE + 8, 3n);
    vcpu.writeGuest(BASE + 7 * PAGE + 4088, 4n);
    expect(vcpu.stats.fastFaults - s0.fastFaults).toBe(1n);
    expect(vcpu.stats.slowFaults - s0.slowFaults).toBe(0n);
    expect(vcpu.stats.stores - s0.stores).toBe(3n);
    expect(triple(vm, BASE + 7 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([7]);
  });

  it("a read-only slot maps (0,0,0); a write to it exits with KVM_EXIT_MMIO", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, KVM_MEM_READONLY, true);
    const vcpu = vm.createVcpu(0);
    vm.writeUserMemory(0, 2 * PAGE, new Uint8Array([0x11, 0x22, 0, 0, 0, 0, 0, 0]));
    expect(vcpu.readGuest(BASE + 2 * PAGE)).toBe(0x2211n);
    expect(vcpu.exitReason).toBe(0);
    const t = triple(vm, BASE + 2 * PAGE);
    expect(t.hmw).toBe("000");
    expect(t.level).toBeGreaterThan(0);
    expect(vcpu.writeGuest(BASE + 2 * PAGE, 5n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(BigInt(BASE + 2 * PAGE));
    expect(vcpu.readGuest(BASE + 2 * PAGE)).toBe(0x2211n);
  });

  it("a read of a never-touched page maps the zero page host-read-only (0,0,0)", async () => {
    // §5.2: 0 0 0 = host mapping read-only (host page not writable) — the shared zero page.
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.readGuest(BASE + 9 * PAGE)).toBe(0n);
    expect(triple(vm, BASE + 9 * PAGE)).toEqual({ hmw: "000", level: 1 });
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.7/§5.9 huge pages", () => {
  it("an unlogged unbacked slot aligned at 1 GiB maps 1G leaves", async () => {
    const vm = await newVm();
    addSlot(vm, 0, GIB, GIB, 0);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(GIB + 12345 * PAGE, 1n);
    expect(triple(vm, GIB + 12345 * PAGE)).toEqual({ hmw: "111", level: 3 });
    expect(vm.spte(0, GIB).level).toBe(3); // same leaf covers the whole GiB
    expect(vm.spte(0, 2 * GIB - PAGE).level).toBe(3);
  });

  it("the same slot not aligned at 1 GiB maps at most 2M", async () => {
    const vm = await newVm();
    addSlot(vm, 0, GIB + 2 * MIB, GIB, 0);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(GIB + 64 * MIB, 1n);
    expect(triple(vm, GIB + 64 * MIB)).toEqual({ hmw: "111", level: 2 });
  });

  it("an unlogged backed slot maps at most 2M", async () => {
    const vm = await newVm();
    addSlot(vm, 0, GIB, 8 * MIB, 0, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(GIB + 3 * MIB, 1n);
    expect(triple(vm, GIB + 3 * MIB)).toEqual({ hmw: "111", level: 2 });
    vcpu.writeGuest(GIB, 1n);
    expect(vm.spte(0, GIB).level).toBe(2);
  });

  it("an unaligned slot maps 4K at its ragged ends and 2M in between", async () => {
    const vm = await newVm();
    const gpa = GIB + PAGE; // 4 MiB starting one page into a 2M frame
    addSlot(vm, 0, gpa, 4 * MIB, 0);
    const vcpu = vm.createVcpu(0);
    const first = gpa;
    const middle = GIB + 2 * MIB + 8 * PAGE; // frame [GIB+2M, GIB+4M) lies inside the slot
    const last = gpa + 4 * MIB - PAGE; // = GIB + 4M, alone in its frame
    for (const a of [first, middle, last]) expect(vcpu.writeGuest(a, 1n)).toBe(0);
    expect(vm.spte(0, first).level).toBe(1);
    expect(vm.spte(0, middle).level).toBe(2);
    expect(vm.spte(0, last).level).toBe(1);
    vcpu.writeGuest(GIB + 2 * MIB - PAGE, 1n); // last page of the ragged head
    expect(vm.spte(0, GIB + 2 * MIB - PAGE).level).toBe(1);
  });

  it("never maps huge in a logged slot", async () => {
    const vm = await newVm();
    addSlot(vm, 0, GIB, GIB, LOG);
    addSlot(vm, 1, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(GIB + 12345 * PAGE, 1n);
    vcpu.writeGuest(BASE + 5 * PAGE, 1n);
    expect(triple(vm, GIB + 12345 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(vm.spte(0, GIB + 12346 * PAGE).level).toBe(0);
    expect(triple(vm, BASE + 5 * PAGE)).toEqual({ hmw: "111", level: 1 });
    vm.writeUserMemory(1, 100 * PAGE, new Uint8Array(8).fill(1));
    vcpu.readGuest(BASE + 100 * PAGE);
    expect(vm.spte(0, BASE + 100 * PAGE).level).toBe(1);
  });

  it("enabling logging (flags-only) eagerly splits huge mappings to 4K and write-protects them", async () => {
    const vm = await newVm();
    addSlot(vm, 0, GIB, GIB, 0);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(GIB, 1n);
    expect(vm.spte(0, GIB).level).toBe(3);
    const s0 = vm.stats.hugeSplits;
    const pt0 = vm.stats.pageTablePages;
    addSlot(vm, 0, GIB, GIB, LOG);
    // one 1G → 512 × 2M split, then 512 splits of 2M → 4K
    expect(vm.stats.hugeSplits - s0).toBe(513n);
    expect(vm.stats.pageTablePages - pt0).toBe(513);
    for (const p of [0, 1, 511, 512, 131071, 262143]) {
      expect(triple(vm, GIB + p * PAGE), `page ${p}`).toEqual({ hmw: "110", level: 1 });
    }
    const ff = vcpu.stats.fastFaults;
    vcpu.writeGuest(GIB + 512 * PAGE, 2n);
    vcpu.writeGuest(GIB + 262143 * PAGE, 2n);
    expect(vcpu.stats.fastFaults - ff).toBe(2n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([512, 262143]);
  });

  it("enabling logging splits a backed slot's 2M mappings too", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, 0, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 3 * PAGE, 0xabcn);
    expect(vm.spte(0, BASE).level).toBe(2);
    const s0 = vm.stats.hugeSplits;
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    expect(vm.stats.hugeSplits - s0).toBe(1n);
    expect(triple(vm, BASE + 3 * PAGE)).toEqual({ hmw: "110", level: 1 });
    // the split kept the host pages: data still there, pfn of page 3 is page 3's
    const mem = vm.guestMemory(0) as Uint8Array;
    expect(vm.spte(0, BASE + 3 * PAGE).spte & PFN_MASK).toBe(BigInt(mem.byteOffset + 3 * PAGE));
    expect(vcpu.readGuest(BASE + 3 * PAGE)).toBe(0xabcn);
    vcpu.writeGuest(BASE + 4 * PAGE, 1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([4]);
  });
});

// ---------------------------------------------------------------------------------------
describe("§5.3/§1.6/§8 TLB flushes on memslot changes", () => {
  it("enabling logging flushes exactly once, unconditionally; creating a logged slot does not", async () => {
    const vm = await newVm();
    const t0 = vm.stats.tlbFlushes;
    addSlot(vm, 0, BASE, 4 * MIB, LOG); // CREATE: no SPTEs yet, nothing to flush
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    addSlot(vm, 1, BASE + GIB, 4 * MIB, 0);
    const t1 = vm.stats.tlbFlushes;
    addSlot(vm, 1, BASE + GIB, 4 * MIB, LOG); // nothing mapped: still one flush
    expect(vm.stats.tlbFlushes - t1).toBe(1n);
    addSlot(vm, 2, BASE + 2 * GIB, 4 * MIB, 0);
    const vcpu = vm.createVcpu(0);
    for (let p = 0; p < 1024; p += 37) vcpu.writeGuest(BASE + 2 * GIB + p * PAGE, 1n);
    const t2 = vm.stats.tlbFlushes;
    addSlot(vm, 2, BASE + 2 * GIB, 4 * MIB, LOG); // many protections: still one flush
    expect(vm.stats.tlbFlushes - t2).toBe(1n);
    const t3 = vm.stats.tlbFlushes;
    addSlot(vm, 2, BASE + 2 * GIB, 4 * MIB, LOG); // no change: no-op
    expect(vm.stats.tlbFlushes - t3).toBe(0n);
  });
});

// ---------------------------------------------------------------------------------------
describe("§1.4 MOVE and DELETE zap every mapping of the VM", () => {
  async function twoSlots() {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true); // A
    addSlot(vm, 1, BASE + GIB, 4 * MIB, LOG, true); // B
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 2 * PAGE, 0xaan);
    vcpu.writeGuest(BASE + GIB + 5 * PAGE, 0xbbn);
    vm.getDirtyLog(0);
    vm.getDirtyLog(1);
    return { vm, vcpu };
  }

  it("MOVE drops other slots' mappings; their written pages are reported at the next read", async () => {
    const { vm, vcpu } = await twoSlots();
    // control: before the MOVE a read of a write-protected page is not reported
    expect(vcpu.readGuest(BASE + GIB + 5 * PAGE)).toBe(0xbbn);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([]);
    expect(vm.spte(0, BASE + GIB + 5 * PAGE).level).toBe(1);
    const z0 = vm.stats.zaps;
    addSlot(vm, 0, BASE + 2 * GIB, 4 * MIB, LOG, true); // MOVE A
    expect(vm.stats.zaps - z0).toBe(1n);
    expect(vm.spte(0, BASE + GIB + 5 * PAGE).level).toBe(0);
    expect(vm.spte(0, BASE + 2 * PAGE).level).toBe(0);
    const sf = vcpu.stats.slowFaults;
    expect(vcpu.readGuest(BASE + GIB + 5 * PAGE)).toBe(0xbbn);
    expect(vcpu.stats.slowFaults - sf).toBe(1n);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([5]);
    // the moved slot's own written page, read at its new address: reported, data kept
    expect(vcpu.readGuest(BASE + 2 * GIB + 2 * PAGE)).toBe(0xaan);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2]);
    // its old address is no longer guest memory
    vcpu.readGuest(BASE + 2 * PAGE);
    expect(vcpu.exitReason).toBe(KVM_EXIT_MMIO);
  });

  it("DELETE drops other slots' mappings; their written pages are reported at the next read", async () => {
    const { vm, vcpu } = await twoSlots();
    const z0 = vm.stats.zaps;
    addSlot(vm, 0, BASE, 0, LOG, true); // DELETE A
    expect(vm.stats.zaps - z0).toBe(1n);
    expect(vm.spte(0, BASE + GIB + 5 * PAGE).level).toBe(0);
    expect(vcpu.readGuest(BASE + GIB + 5 * PAGE)).toBe(0xbbn);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([5]);
  });

  it("the zap reaches the SMM address space too", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG);
    addSlot(vm, (1 << 16) | 0, BASE, 4 * MIB, LOG);
    const vcpu = vm.createVcpu(0);
    vcpu.smm = true;
    vcpu.writeGuest(BASE + PAGE, 1n);
    vm.getDirtyLog((1 << 16) | 0);
    expect(vm.spte(1, BASE + PAGE).level).toBe(1);
    addSlot(vm, 5, BASE + GIB, 4 * MIB, LOG);
    addSlot(vm, 5, BASE + GIB, 0); // DELETE in AS 0
    expect(vm.spte(1, BASE + PAGE).level).toBe(0);
    vcpu.readGuest(BASE + PAGE);
    expect(pagesOf(vm.getDirtyLog((1 << 16) | 0))).toEqual([1]);
  });
});

// ---------------------------------------------------------------------------------------
describe("reads (anchors: 'More behaviour observed')", () => {
  it("a read of a never-touched page is not reported; a write to it then is", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.readGuest(BASE + 9 * PAGE)).toBe(0n);
    const { spte, level } = vm.spte(0, BASE + 9 * PAGE);
    expect(level).toBe(1);
    expect(spte & EPT_W).toBe(0n);
    expect(spte & MMU_WRITABLE).toBe(0n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    expect(vcpu.writeGuest(BASE + 9 * PAGE, 0x99n)).toBe(0);
    expect(triple(vm, BASE + 9 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([9]);
    expect(vcpu.readGuest(BASE + 9 * PAGE)).toBe(0x99n);
  });

  it("a read of a page the host wrote (host page exists, unmapped) is reported", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vm.writeUserMemory(0, 6 * PAGE + 8, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]); // the VMM's write is not seen by KVM
    expect(vcpu.readGuest(BASE + 6 * PAGE + 8)).toBe(0x0807060504030201n);
    expect(triple(vm, BASE + 6 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([6]);
  });

  it("a read of a write-protected page is not reported (no fault)", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 4 * PAGE, 0x44n);
    vm.getDirtyLog(0);
    const f0 = faults(vcpu);
    expect(vcpu.readGuest(BASE + 4 * PAGE)).toBe(0x44n);
    expect(faults(vcpu) - f0).toBe(0n);
    expect(triple(vm, BASE + 4 * PAGE).hmw).toBe("110");
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------
describe("flags-only logging changes (anchors)", () => {
  it("logging off then on write-protects but does not zap: reads of mapped pages stay unreported", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 1 * PAGE, 0x11n);
    vcpu.writeGuest(BASE + 2 * PAGE, 0x22n);
    vm.getDirtyLog(0);
    const z0 = vm.stats.zaps;
    addSlot(vm, 0, BASE, 4 * MIB, 0, true); // off
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true); // on again
    expect(vm.stats.zaps - z0).toBe(0n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]); // a fresh, empty bitmap
    expect(vcpu.readGuest(BASE + 1 * PAGE)).toBe(0x11n);
    expect(vcpu.readGuest(BASE + 2 * PAGE)).toBe(0x22n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    // ... and write-protected: a write is reported
    vcpu.writeGuest(BASE + 1 * PAGE, 0x12n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1]);
  });

  it("a page written while logging was off is reported at its next write after logging is back on", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 2 * PAGE, 1n);
    vm.getDirtyLog(0);
    addSlot(vm, 0, BASE, 4 * MIB, 0, true); // off
    vcpu.writeGuest(BASE + 2 * PAGE, 2n);
    vcpu.writeGuest(BASE + 300 * PAGE, 2n);
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true); // on
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]); // nothing pushed while off
    expect(triple(vm, BASE + 2 * PAGE)).toEqual({ hmw: "110", level: 1 });
    expect(triple(vm, BASE + 300 * PAGE)).toEqual({ hmw: "110", level: 1 });
    vcpu.writeGuest(BASE + 2 * PAGE, 3n);
    vcpu.writeGuest(BASE + 300 * PAGE, 3n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2, 300]);
  });

  it("turning logging on while it is on is a no-op that keeps the bits", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1]);
    vcpu.writeGuest(BASE + 2 * PAGE, 1n);
    const t0 = vm.stats.tlbFlushes;
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    expect(vm.stats.tlbFlushes - t0).toBe(0n);
    expect(triple(vm, BASE + 2 * PAGE).hmw).toBe("111");
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2]);
  });
});

// ---------------------------------------------------------------------------------------
describe("guest data", () => {
  it("backed slot stores land in guestMemory at the right offset (little-endian u64)", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true); // logged: 4K mappings
    addSlot(vm, 1, BASE + GIB, 4 * MIB, 0, true); // unlogged: 2M mappings
    const vcpu = vm.createVcpu(0);
    const cases: Array<[number, number, bigint]> = [
      [0, 0, 0x0102030405060708n],
      [0, 5 * PAGE + 24, 0xfedcba9876543210n],
      [0, 4 * MIB - 8, 0x1122334455667788n],
      [1, 0, 0x0a0b0c0d0e0f1011n],
      [1, 3 * MIB + 7 * PAGE + 4088, 0xdeadbeefcafef00dn],
    ];
    for (const [slot, off, v] of cases) {
      const gpa = (slot ? BASE + GIB : BASE) + off;
      expect(vcpu.writeGuest(gpa, v)).toBe(0);
    }
    for (const [slot, off, v] of cases) {
      const mem = vm.guestMemory(slot) as Uint8Array;
      expect(mem.length).toBe(4 * MIB);
      expect(readLe64(mem, off)).toBe(v);
      expect(mem[off]).toBe(Number(v & 0xffn)); // least significant byte first
      const gpa = (slot ? BASE + GIB : BASE) + off;
      expect(vcpu.readGuest(gpa)).toBe(v);
    }
    // nothing else was written around the first store of slot 1
    expect(readLe64(vm.guestMemory(1) as Uint8Array, 8)).toBe(0n);
  });

  it("unbacked slot stores retire but read back 0", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 64 * MIB, LOG); // unbacked
    const vcpu = vm.createVcpu(0);
    const s0 = vcpu.stats.stores;
    expect(vcpu.writeGuest(BASE + 3 * PAGE, 0x1234n)).toBe(0);
    expect(vcpu.stats.stores - s0).toBe(1n);
    expect(vcpu.readGuest(BASE + 3 * PAGE)).toBe(0n);
    expect(vcpu.exitReason).toBe(0);
    expect(vm.guestMemory(0)).toBeUndefined();
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3]);
  });

  it("an access outside every slot exits with KVM_EXIT_MMIO", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.writeGuest(BASE + 4 * MIB, 1n)).toBe(KVM_EXIT_MMIO);
    expect(vcpu.mmioPhysAddr).toBe(BigInt(BASE + 4 * MIB));
    expect(vcpu.readGuest(BASE - 8)).toBe(0n);
    expect(vcpu.exitReason).toBe(KVM_EXIT_MMIO);
  });
});

// ---------------------------------------------------------------------------------------
describe("SMM (address space 1)", () => {
  it("SMM writes go to address space 1's slots and are logged in that slot's bitmap", async () => {
    const vm = await newVm();
    const smmSlot = (1 << 16) | 0;
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    addSlot(vm, smmSlot, BASE, 4 * MIB, LOG, true); // same gpa, other address space
    const vcpu = vm.createVcpu(0);
    vcpu.smm = true;
    expect(vcpu.smm).toBe(true);
    expect(vcpu.writeGuest(BASE + 3 * PAGE, 0x5353n)).toBe(0);
    expect(pagesOf(vm.getDirtyLog(smmSlot))).toEqual([3]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    expect(readLe64(vm.guestMemory(smmSlot) as Uint8Array, 3 * PAGE)).toBe(0x5353n);
    expect(readLe64(vm.guestMemory(0) as Uint8Array, 3 * PAGE)).toBe(0n);
    expect(vm.spte(1, BASE + 3 * PAGE).level).toBe(1);
    expect(vm.spte(0, BASE + 3 * PAGE).level).toBe(0);

    vcpu.smm = false;
    expect(vcpu.readGuest(BASE + 3 * PAGE)).toBe(0n);
    vcpu.writeGuest(BASE + 4 * PAGE, 1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([4]);
    expect(pagesOf(vm.getDirtyLog(smmSlot))).toEqual([]);
  });

  it("an address with a slot only in address space 0 is MMIO while in SMM", async () => {
    const vm = await newVm();
    addSlot(vm, 0, BASE, 4 * MIB, LOG, true);
    const vcpu = vm.createVcpu(0);
    vcpu.smm = true;
    expect(vcpu.writeGuest(BASE, 1n)).toBe(KVM_EXIT_MMIO);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });
});
