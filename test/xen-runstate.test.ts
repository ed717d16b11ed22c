// The Xen runstate area (spec §6.3, arch/x86/kvm/xen.c): both layouts, every position of
// the structure across a page boundary (the XEN_RUNSTATE_UPDATE byte on either side),
// across two memslots, invalidation of either page just before an update, atomic against
// normal context, the accounting, and which pages are marked dirty. The concurrent guest
// reader is in xen-runstate-threads.test.ts.
import { describe, expect, it } from "vitest";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_MEM_LOG_DIRTY_PAGES,
  RUNSTATE_blocked,
  RUNSTATE_offline,
  RUNSTATE_runnable,
  RUNSTATE_running,
  type Vcpu,
  type Vm,
  XEN_RUNSTATE_LAYOUT,
  harvestDirtyRings,
} from "../src/index.js";
import { errnoOf, pagesOf, vmFactory } from "./helpers.js";

const PAGE = 4096;
const BASE = 0x1_0000_0000;
const { newVm } = vmFactory();

interface Parsed {
  state: number;
  entry: bigint;
  times: bigint[];
}

/** The structure as the guest sees it at gpa (read through the slots' bytes). */
function readArea(vm: Vm, gpa: number, compat: boolean): Parsed {
  const L = compat ? XEN_RUNSTATE_LAYOUT.compat : XEN_RUNSTATE_LAYOUT.long;
  const buf = new Uint8Array(L.size);
  for (let i = 0; i < L.size; i++) buf[i] = guestByte(vm, gpa + i);
  const v = new DataView(buf.buffer);
  return {
    state: v.getInt32(L.state, true),
    entry: v.getBigUint64(L.stateEntryTime, true),
    times: [0, 1, 2, 3].map((k) => v.getBigUint64(L.time + 8 * k, true)),
  };
}

function guestByte(vm: Vm, gpa: number): number {
  for (const s of vm.memslots()) {
    const start = Number(s.guestPhysAddr);
    if (gpa >= start && gpa < start + s.npages * PAGE) return (vm.guestMemory(s.slot) as Uint8Array)[gpa - start];
  }
  throw new Error(`no slot at 0x${gpa.toString(16)}`);
}

async function vmWith(pages = 16): Promise<{ vm: Vm; vcpu: Vcpu }> {
  const vm = await newVm();
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE, memorySize: pages * PAGE, backed: true });
  return { vm, vcpu: vm.createVcpu(0) };
}

describe("§6.3 Xen runstate area", () => {
  for (const compat of [false, true]) {
    const L = compat ? XEN_RUNSTATE_LAYOUT.compat : XEN_RUNSTATE_LAYOUT.long;
    it(`${compat ? "compat (0x2c bytes)" : "64-bit (0x30 bytes)"}: every position across a page boundary writes the whole structure, flag cleared, both pages marked`, async () => {
      const { vm, vcpu } = await vmWith();
      let now = 1000n;
      // k = bytes in the first page: 1 .. size - 1 (the flag byte's position moves across)
      for (let k = 1; k < L.size; k++) {
        const gpa = BASE + 4 * PAGE - k;
        vcpu.setXenRunstateArea(gpa, { compat });
        vm.getDirtyLog(0); // the registration's own write
        // sentinels around the structure must survive
        vm.writeUserMemory(0, 4 * PAGE - k - 1, new Uint8Array([0x5a]));
        vm.writeUserMemory(0, 4 * PAGE - k + L.size, new Uint8Array([0xa5]));
        now += 7n;
        expect(vcpu.updateXenRunstate(RUNSTATE_blocked, { now })).toBe(true);
        const got = readArea(vm, gpa, compat);
        expect(got.state).toBe(RUNSTATE_blocked);
        expect(got.entry).toBe(now); // XEN_RUNSTATE_UPDATE cleared
        expect(got.times).toEqual(vcpu.xenRunstate.times);
        expect(guestByte(vm, gpa - 1)).toBe(0x5a);
        expect(guestByte(vm, gpa + L.size)).toBe(0xa5);
        expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 4]);
      }
      expect(vcpu.xenRunstate.skipped).toBe(0);
    });
  }

  it("inside one page: one cache, one page marked; the layout's fields where the ABI puts them", async () => {
    const { vm, vcpu } = await vmWith();
    vcpu.setXenRunstateArea(BASE + 2 * PAGE + 0x100);
    vm.getDirtyLog(0);
    expect(vcpu.updateXenRunstate(RUNSTATE_running, { now: 500n })).toBe(true);
    expect(vcpu.updateXenRunstate(RUNSTATE_runnable, { now: 800n })).toBe(true);
    const got = readArea(vm, BASE + 2 * PAGE + 0x100, false);
    // offline until 500 (entry time was 0: the first update counts from 0), running 500..800
    expect(got).toEqual({ state: RUNSTATE_runnable, entry: 800n, times: [300n, 0n, 0n, 500n] });
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2]);
  });

  it("across two memslots (two pfn caches on different slots)", async () => {
    const { vm, vcpu } = await vmWith(4);
    vm.setUserMemoryRegion({ slot: 1, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE + 4 * PAGE, memorySize: 4 * PAGE, backed: true });
    const gpa = BASE + 4 * PAGE - 20;
    vcpu.setXenRunstateArea(gpa);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3]);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([0]);
    vcpu.updateXenRunstate(RUNSTATE_blocked, { now: 99n });
    expect(readArea(vm, gpa, false).entry).toBe(99n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3]);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([0]);
  });

  it("a ring VM: each update pushes the second page, then the first, to the vCPU's own ring", async () => {
    const vm = await newVm();
    vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [256 * 16]);
    vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE, memorySize: 16 * PAGE, backed: true });
    const [a, b] = [vm.createVcpu(0), vm.createVcpu(1)];
    b.setXenRunstateArea(BASE + 6 * PAGE - 8);
    harvestDirtyRings(vm);
    b.updateXenRunstate(RUNSTATE_blocked);
    expect(a.stats.ringPushes).toBe(0n);
    const h = harvestDirtyRings(vm);
    expect([...(h.offsets.get(0) ?? [])]).toEqual([6, 5]);
  });

  for (const which of ["first", "second"] as const) {
    it(`the ${which} page invalidated just before: normal context refreshes and writes; atomic context writes nothing at all`, async () => {
      const { vm, vcpu } = await vmWith();
      const gpa = BASE + 8 * PAGE - 24; // 24 bytes in page 7, 24 in page 8; the flag byte (offset 15) in page 7
      vcpu.setXenRunstateArea(gpa);
      vcpu.updateXenRunstate(RUNSTATE_running, { now: 10n });
      vm.getDirtyLog(0);
      const before = readArea(vm, gpa, false);
      vm.invalidateHostRange(0, (which === "first" ? 7 : 8) * PAGE, PAGE);
      expect(vcpu.updateXenRunstate(RUNSTATE_runnable, { now: 20n, atomic: true })).toBe(false);
      expect(readArea(vm, gpa, false)).toEqual(before); // neither page written, not even the valid one
      expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
      expect(vcpu.xenRunstate.skipped).toBe(1);
      expect(vcpu.xenRunstate.times[RUNSTATE_running]).toBe(10n); // KVM's accounting goes on
      expect(vcpu.updateXenRunstate(RUNSTATE_blocked, { now: 35n })).toBe(true);
      expect(readArea(vm, gpa, false)).toEqual({ state: RUNSTATE_blocked, entry: 35n, times: [10n, 15n, 0n, 10n] });
      expect(pagesOf(vm.getDirtyLog(0))).toEqual([7, 8]);
    });
  }

  it("a memslot change invalidates by generation: atomic context gives up, normal context refreshes", async () => {
    const { vm, vcpu } = await vmWith();
    vcpu.setXenRunstateArea(BASE + PAGE);
    vm.setUserMemoryRegion({ slot: 3, flags: 0, guestPhysAddr: BASE + 64 * PAGE, memorySize: PAGE });
    expect(vcpu.updateXenRunstate(RUNSTATE_runnable, { now: 5n, atomic: true })).toBe(false);
    expect(vcpu.updateXenRunstate(RUNSTATE_running, { now: 6n })).toBe(true);
    expect(readArea(vm, BASE + PAGE, false).state).toBe(RUNSTATE_running);
  });

  it("placement errors: EFAULT when a page of it is in no memslot (both caches left inactive); null removes it", async () => {
    const { vm, vcpu } = await vmWith(4);
    expect(errnoOf(() => vcpu.setXenRunstateArea(0x5000))).toBe("EFAULT");
    expect(errnoOf(() => vcpu.setXenRunstateArea(BASE + 4 * PAGE - 16))).toBe("EFAULT"); // second page: none
    expect(vcpu.xenRunstate.gpa).toBeUndefined();
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]); // nothing was written
    vcpu.setXenRunstateArea(BASE + 100);
    expect(vcpu.xenRunstate.gpa).toBe(BigInt(BASE + 100));
    vcpu.setXenRunstateArea(null);
    expect(vcpu.xenRunstate.gpa).toBeUndefined();
    vm.getDirtyLog(0);
    expect(vcpu.updateXenRunstate(RUNSTATE_offline, { now: 9n })).toBe(false); // no area: nothing written
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    expect(errnoOf(() => vcpu.updateXenRunstate(4))).toBe("EINVAL");
    expect(errnoOf(() => vcpu.setXenRunstateArea(BASE, { compat: 1 as unknown as boolean }))).toBe("EINVAL");
  });
});
