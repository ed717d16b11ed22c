// The shadow MMU (createVm({ mmu: "shadow" })) for unpaged guests: direct shadow pages,
// 4K mappings, the rmap invariant (every present leaf on exactly one rmap, spec §5.7), and
// dirty logging through the rmaps (§2.6, §5.4): GET / CLEAR / ring reset clear W only
// (pt_protect = false, so the fast path may restore it), write tracking clears W and
// MMU-writable (pt_protect = true), logging turned on write-protects every rmap. The
// reports equal the TDP MMU's: test/property.test.ts compares both with the reference model.
import { describe, expect, it } from "vitest";
import { errnoOf, faults, pagesOf, triple, vmFactory } from "./helpers.js";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_MEM_LOG_DIRTY_PAGES,
  type Vm,
  createVm,
  harvestDirtyRings,
} from "../src/index.js";

const { newVm } = vmFactory();
const PAGE = 4096;
const MIB = 1 << 20;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const BASE = 0x1_0000_0000;

async function shadowVm(): Promise<Vm> {
  return newVm({ mmu: "shadow" });
}

describe("createVm({ mmu })", () => {
  it("tdp by default, shadow on request; anything else, or PML without EPT, is EINVAL", async () => {
    expect((await newVm()).mmu).toBe("tdp");
    expect((await shadowVm()).mmu).toBe("shadow");
    for (const bad of ["ept", "", 1, null]) {
      await expect(createVm({ mmu: bad as unknown as "tdp" })).rejects.toMatchObject({ errno: "EINVAL" });
    }
    await expect(createVm({ mmu: "shadow", pml: true })).rejects.toMatchObject({ errno: "EINVAL" });
    const tdp = await newVm();
    expect(errnoOf(() => tdp.rmapCount(0, 0))).toBe("EINVAL"); // the TDP MMU keeps no rmaps
  });
});

describe("direct shadow pages and the rmap invariant (§5.7, §5.8)", () => {
  it("maps 4K only (no huge page even where the TDP MMU maps 2M); each present leaf is on its gfn's rmap once", async () => {
    const vm = await shadowVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: BASE, memorySize: 4 * MIB, backed: true });
    expect(vm.stats.shadowPages).toBe(2); // one root per address space
    const v = vm.createVcpu(0);
    expect(v.writeGuest(BASE, 1n)).toBe(0);
    expect(triple(vm, BASE)).toEqual({ hmw: "111", level: 1 });
    expect(vm.stats.shadowPages).toBe(2 + 3); // a level-3, level-2 and level-1 page below the root
    expect(vm.rmapCount(0, BASE / PAGE)).toBe(1);
    expect(vm.rmapCount(0, BASE / PAGE + 1)).toBe(0);
    expect(v.readGuest(BASE + PAGE)).toBe(0n); // no host page: the zero page, read-only, mapped and on the rmap
    expect(triple(vm, BASE + PAGE)).toEqual({ hmw: "000", level: 1 });
    expect(vm.rmapCount(0, BASE / PAGE + 1)).toBe(1);
    expect(v.writeGuest(BASE + PAGE, 2n)).toBe(0); // copy-on-write replaces the zero-page SPTE: still one entry
    expect(vm.rmapCount(0, BASE / PAGE + 1)).toBe(1);
    expect(v.writeGuest(BASE + 2 * MIB, 3n)).toBe(0); // a second level-1 page
    expect(vm.stats.shadowPages).toBe(6);
  });

  it("a zap empties every rmap and frees every page but the roots; the mmu notifier zaps through the rmaps", async () => {
    const vm = await shadowVm();
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: BASE, memorySize: MIB, backed: true });
    const v = vm.createVcpu(0);
    for (let p = 0; p < 8; p++) expect(v.writeGuest(BASE + p * PAGE, 1n)).toBe(0);
    vm.invalidateHostRange(0, 2 * PAGE, 2 * PAGE); // pages 2 and 3
    expect([0, 1, 2, 3, 4].map((p) => vm.rmapCount(0, BASE / PAGE + p))).toEqual([1, 1, 0, 0, 1]);
    expect(vm.spte(0, BASE + 2 * PAGE).level).toBe(0);
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0, memorySize: MIB }); // CREATE: nothing zapped
    expect(vm.rmapCount(0, BASE / PAGE)).toBe(1);
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0, memorySize: 0 }); // DELETE: zap all
    expect(vm.rmapCount(0, BASE / PAGE)).toBe(0);
    expect(vm.stats.shadowPages).toBe(2);
    expect(v.writeGuest(BASE, 2n)).toBe(0);
    expect(vm.rmapCount(0, BASE / PAGE)).toBe(1);
  });

  it("SMM has its own root and its slots their own rmaps", async () => {
    const vm = await shadowVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: MIB, backed: true });
    vm.setUserMemoryRegion({ slot: (1 << 16) | 0, guestPhysAddr: 0, memorySize: MIB, backed: true });
    const v = vm.createVcpu(0);
    v.smm = true;
    expect(v.writeGuest(PAGE, 1n)).toBe(0);
    expect(vm.rmapCount(1, 1)).toBe(1);
    expect(vm.rmapCount(0, 1)).toBe(0);
    expect(vm.spte(0, PAGE).level).toBe(0);
  });
});

describe("dirty logging through the rmaps (§2.6, §5.4)", () => {
  it("GET clears W only (1 1 0): the next write takes the fast path and is reported once", async () => {
    const vm = await shadowVm();
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: BASE, memorySize: MIB, backed: true });
    const v = vm.createVcpu(0);
    for (const p of [0, 5, 64, 255]) expect(v.writeGuest(BASE + p * PAGE, 1n)).toBe(0);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([0, 5, 64, 255]);
    expect(triple(vm, BASE + 5 * PAGE).hmw).toBe("110");
    const fast = v.stats.fastFaults;
    expect(v.writeGuest(BASE + 5 * PAGE, 2n)).toBe(0);
    expect(v.writeGuest(BASE + 5 * PAGE + 8, 3n)).toBe(0);
    expect(v.stats.fastFaults).toBe(fast + 1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([5]);
  });

  it("CLEAR and ring reset re-arm exactly the pages named, through their rmaps", async () => {
    const vm = await shadowVm();
    vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [1]);
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: BASE, memorySize: MIB, backed: true });
    const v = vm.createVcpu(0);
    for (const p of [1, 2, 3]) v.writeGuest(BASE + p * PAGE, 1n);
    const bits = new Uint8Array(32);
    bits[0] = 0b0100; // page 2 only
    vm.clearDirtyLog(0, 0, 256, bits);
    expect([1, 2, 3].map((p) => triple(vm, BASE + p * PAGE).hmw)).toEqual(["111", "110", "111"]);

    const r = await shadowVm();
    r.enableCap(KVM_CAP_DIRTY_LOG_RING, [4096]);
    r.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: BASE, memorySize: MIB, backed: true });
    const w = r.createVcpu(0);
    for (const p of [7, 9]) w.writeGuest(BASE + p * PAGE, 1n);
    expect([...(harvestDirtyRings(r).offsets.get(0) ?? [])]).toEqual([7, 9]);
    expect([7, 9].map((p) => triple(r, BASE + p * PAGE).hmw)).toEqual(["110", "110"]);
    const before = faults(w);
    w.writeGuest(BASE + 7 * PAGE, 2n);
    expect(faults(w)).toBe(before + 1n);
  });

  it("turning logging on write-protects every mapped page (kvm_mmu_slot_remove_write_access)", async () => {
    const vm = await shadowVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: BASE, memorySize: MIB, backed: true });
    const v = vm.createVcpu(0);
    for (let p = 0; p < 100; p++) v.writeGuest(BASE + p * PAGE, 1n);
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: BASE, memorySize: MIB, backed: true });
    expect(vm.countSptes(0, BASE, 256, 1n << 1n)).toBe(0);
    expect(triple(vm, BASE + 99 * PAGE).hmw).toBe("110");
    v.writeGuest(BASE + 42 * PAGE, 2n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([42]);
  });

  it("write tracking protects through the rmap shadow style (1 0 0) and emulates writes", async () => {
    const vm = await shadowVm();
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: MIB, backed: true });
    const seen: bigint[] = [];
    vm.registerPageTrackNotifier({ trackWrite: (gpa) => seen.push(gpa) });
    const v = vm.createVcpu(0);
    v.writeGuest(3 * PAGE, 1n);
    vm.writeTrackAddGfn(3);
    expect(triple(vm, 3 * PAGE).hmw).toBe("100");
    expect(v.writeGuest(3 * PAGE + 8, 2n)).toBe(0);
    expect(seen).toEqual([BigInt(3 * PAGE + 8)]);
    expect(triple(vm, 3 * PAGE).hmw).toBe("100");
    expect(vm.rmapCount(0, 3)).toBe(1);
  });
});
