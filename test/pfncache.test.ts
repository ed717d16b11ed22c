// KVM's own writes into guest memory (spec §3.8, §6): gfn_to_hva_cache (§6.1),
// gfn_to_pfn_cache (§6.2), the mmu notifier (host invalidation, copy-on-write of the zero
// page), whose write it is (VM or vCPU context, SMM) and where its mark goes, and the
// internal slots KVM writes at setup.
import { describe, expect, it } from "vitest";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  type Vm,
  harvestDirtyRings,
  migrate,
} from "../src/index.js";
import { errnoOf, pagesOf, vmFactory } from "./helpers.js";

const PAGE = 4096;
const BASE = 0x1_0000_0000;
const { newVm } = vmFactory();

async function bitmapVm(pages = 64, backed = true): Promise<Vm> {
  const vm = await newVm();
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE, memorySize: pages * PAGE, backed });
  return vm;
}

async function ringVm(withBitmap = false): Promise<Vm> {
  const vm = await newVm();
  vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [256 * 16]);
  if (withBitmap) vm.enableCap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP, []);
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE, memorySize: 64 * PAGE, backed: true });
  return vm;
}

const bytes = (n: number, v: number) => new Uint8Array(n).fill(v);

describe("§6.1 gfn_to_hva_cache", () => {
  it("a one-page range: the write lands, marks its page, and reads back", async () => {
    const vm = await bitmapVm();
    const ghc = vm.createGfnToHvaCache(BASE + 5 * PAGE + 100, 64);
    expect(ghc.singlePage).toBe(true);
    expect(ghc.gpa).toBe(BigInt(BASE + 5 * PAGE + 100));
    ghc.writeCached(bytes(16, 0xab), { offset: 8 });
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([5]);
    expect([...ghc.readCached(20, { offset: 6 })]).toEqual([0, 0, ...Array(16).fill(0xab), 0, 0]);
    expect(vm.guestMemory(0)?.[5 * PAGE + 108]).toBe(0xab);
  });

  it("a range over two pages (and two memslots) takes the slow path and marks each page written", async () => {
    const vm = await bitmapVm(64);
    vm.setUserMemoryRegion({ slot: 1, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE + 64 * PAGE, memorySize: 16 * PAGE, backed: true });
    const ghc = vm.createGfnToHvaCache(BASE + 63 * PAGE + 4000, 200);
    expect(ghc.singlePage).toBe(false);
    ghc.writeCached(bytes(200, 7));
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([63]);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([0]);
    expect(vm.guestMemory(1)?.[103]).toBe(7);
    ghc.writeCached(bytes(10, 1), { offset: 0 }); // only the first page this time
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([63]);
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([]);
  });

  it("init errors: an empty range at a page start is EINVAL, a hole or a read-only slot EFAULT", async () => {
    const vm = await bitmapVm();
    vm.setUserMemoryRegion({ slot: 2, flags: KVM_MEM_READONLY, guestPhysAddr: BASE + 128 * PAGE, memorySize: PAGE, backed: true });
    expect(errnoOf(() => vm.createGfnToHvaCache(BASE + PAGE, 0))).toBe("EINVAL");
    expect(errnoOf(() => vm.createGfnToHvaCache(BASE + PAGE + 8, 0))).toBeUndefined(); // inside a page: fine
    expect(errnoOf(() => vm.createGfnToHvaCache(BASE + 63 * PAGE, 2 * PAGE))).toBe("EFAULT"); // runs off the slot
    expect(errnoOf(() => vm.createGfnToHvaCache(BASE + 128 * PAGE, 8))).toBe("EFAULT");
    expect(errnoOf(() => vm.createGfnToHvaCache(0x1000, 8))).toBe("EFAULT");
  });

  it("an access beyond the cached length is EINVAL and writes nothing", async () => {
    const vm = await bitmapVm();
    const ghc = vm.createGfnToHvaCache(BASE + 2 * PAGE, 32);
    expect(errnoOf(() => ghc.writeCached(bytes(8, 1), { offset: 28 }))).toBe("EINVAL");
    expect(errnoOf(() => ghc.readCached(33))).toBe("EINVAL");
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    expect(vm.guestMemory(0)?.[2 * PAGE + 28]).toBe(0);
  });

  it("re-initialises on a memslot generation change; the generation is recorded before the checks", async () => {
    const vm = await bitmapVm();
    vm.setUserMemoryRegion({ slot: 1, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE + 256 * PAGE, memorySize: 4 * PAGE, backed: true });
    const ghc = vm.createGfnToHvaCache(BASE + 257 * PAGE, 8);
    const gen0 = ghc.generation;
    expect(gen0).toBe(vm.generation(0));
    // the slot goes: the write re-initialises, fails, and remembers the new generation
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: BASE + 256 * PAGE, memorySize: 0 });
    expect(errnoOf(() => ghc.writeCached(bytes(8, 1)))).toBe("EFAULT");
    expect(ghc.generation).toBe(vm.generation(0));
    expect(ghc.generation).not.toBe(gen0);
    expect(errnoOf(() => ghc.writeCached(bytes(8, 1)))).toBe("EFAULT"); // no change since: still the error hva
    // the slot comes back (elsewhere in the host): the next write re-initialises and lands
    vm.setUserMemoryRegion({ slot: 1, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: BASE + 256 * PAGE, memorySize: 4 * PAGE, backed: true });
    ghc.writeCached(bytes(8, 9));
    expect(pagesOf(vm.getDirtyLog(1))).toEqual([1]);
    expect(vm.guestMemory(1)?.[PAGE]).toBe(9);
  });
});

describe("§6.2 gfn_to_pfn_cache", () => {
  it("one page only: an activation, check or refresh whose access crosses the page fails", async () => {
    const vm = await bitmapVm();
    const gpc = vm.createGfnToPfnCache();
    expect(gpc.active).toBe(false);
    expect(errnoOf(() => gpc.activate(BASE + PAGE - 8, 16))).toBe("EINVAL");
    expect(gpc.active).toBe(false); // rejected before anything changed
    gpc.activate(BASE + PAGE - 8, 8);
    expect(gpc.active && gpc.valid).toBe(true);
    expect(gpc.check(8)).toBe(true);
    expect(gpc.check(9)).toBe(false);
    expect(errnoOf(() => gpc.refresh(9))).toBe("EINVAL");
    expect(errnoOf(() => gpc.write(bytes(4, 1), { offset: 6 }))).toBe("EINVAL");
  });

  it("writes mark the cached page dirty; reads do not", async () => {
    const vm = await bitmapVm();
    const gpc = vm.createGfnToPfnCache();
    gpc.activate(BASE + 9 * PAGE + 64, 64);
    gpc.write(new Uint8Array([1, 2, 3]), { offset: 4 });
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([9]);
    expect([...gpc.read(8)]).toEqual([0, 0, 0, 0, 1, 2, 3, 0]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
  });

  it("a memslot change makes check fail; the usage protocol refreshes; a deleted slot is EFAULT", async () => {
    const vm = await bitmapVm();
    const gpc = vm.createGfnToPfnCache();
    gpc.activate(BASE + 3 * PAGE, 8);
    vm.setUserMemoryRegion({ slot: 5, flags: 0, guestPhysAddr: BASE + 1024 * PAGE, memorySize: PAGE }); // any change
    expect(gpc.check(8)).toBe(false);
    expect(gpc.valid).toBe(true); // still mapped: only the generation is stale
    gpc.write(bytes(8, 3));
    expect(gpc.check(8)).toBe(true);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3]);
    vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: BASE, memorySize: 0 });
    expect(errnoOf(() => gpc.write(bytes(8, 3)))).toBe("EFAULT");
    expect(gpc.valid).toBe(false);
    expect(gpc.active).toBe(true); // a failed refresh leaves it active, as the kernel does
  });

  it("a refresh that races an invalidation resolves again: its own copy-on-write of a page without a host page is one", async () => {
    const vm = await bitmapVm();
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 2 * PAGE, 1n); // page 2 has a host page; page 3 does not
    const a = vm.createGfnToPfnCache();
    a.activate(BASE + 2 * PAGE, 8);
    expect(vm.stats).toMatchObject({ hostInvalidations: 0, pfnCacheRetries: 0 });
    expect(vcpu.readGuest(BASE + 3 * PAGE)).toBe(0n); // the zero page, read-only
    const b = vm.createGfnToPfnCache();
    b.activate(BASE + 3 * PAGE, 8); // "we always request a writable mapping": copy-on-write
    expect(vm.stats).toMatchObject({ hostInvalidations: 1, pfnCacheRetries: 1 });
    expect(b.valid).toBe(true);
    expect(vm.spte(0, BASE + 3 * PAGE).level).toBe(0); // the guest's zero-page mapping is gone
    b.write(new Uint8Array([8]));
    expect(vcpu.readGuest(BASE + 3 * PAGE)).toBe(8n);
  });

  it("deleting the slot invalidates its caches at once (its memory is reused), gpa- and hva-based alike", async () => {
    const vm = await bitmapVm();
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: BASE + 256 * PAGE, memorySize: 4 * PAGE, backed: true });
    const info = vm.memslots().find((s) => s.slot === 1);
    if (!info) throw new Error("no slot 1");
    const byGpa = vm.createGfnToPfnCache();
    byGpa.activate(BASE + 257 * PAGE, 8);
    const byHva = vm.createGfnToPfnCache();
    byHva.activateHva(info.userspaceAddr + BigInt(2 * PAGE), 8);
    const other = vm.createGfnToPfnCache();
    other.activate(BASE + PAGE, 8);
    vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: BASE + 256 * PAGE, memorySize: 0 });
    expect([byGpa.valid, byHva.valid, other.valid]).toEqual([false, false, true]);
    expect(vm.stats.pfnCachesInvalidated).toBe(2);
    expect(errnoOf(() => byGpa.write(bytes(8, 1)))).toBe("EFAULT");
    expect(errnoOf(() => byHva.write(bytes(8, 1)))).toBe("EFAULT");
    other.write(bytes(8, 1));
  });

  it("activating on a gpa no memslot maps is EFAULT and leaves the cache active but invalid", async () => {
    const vm = await bitmapVm();
    const gpc = vm.createGfnToPfnCache();
    expect(errnoOf(() => gpc.activate(0x2000, 8))).toBe("EFAULT");
    expect(gpc.active).toBe(true);
    expect(gpc.valid).toBe(false);
    expect(gpc.check(8)).toBe(false);
  });

  it("host invalidation: the cache stops being valid; atomic context gives up (EAGAIN), normal context refreshes", async () => {
    const vm = await bitmapVm();
    const gpc = vm.createGfnToPfnCache();
    gpc.activate(BASE + 12 * PAGE + 512, 16);
    const other = vm.createGfnToPfnCache();
    other.activate(BASE + 13 * PAGE, 16);
    vm.invalidateHostRange(0, 12 * PAGE, PAGE);
    expect(gpc.valid).toBe(false);
    expect(other.valid).toBe(true); // outside the range
    expect(vm.stats.pfnCachesInvalidated).toBe(1);
    expect(errnoOf(() => gpc.write(bytes(4, 1), { atomic: true }))).toBe("EAGAIN");
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]); // nothing written, nothing marked
    gpc.write(bytes(4, 5));
    expect(gpc.valid).toBe(true);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([12]);
    expect(vm.guestMemory(0)?.[12 * PAGE + 512]).toBe(5);
  });

  it("activated on a bare host address: no generation check, no memslot, so nothing is marked", async () => {
    const vm = await bitmapVm();
    const info = vm.memslots().find((s) => s.slot === 0);
    if (!info) throw new Error("no slot 0");
    const gpc = vm.createGfnToPfnCache();
    gpc.activateHva(info.userspaceAddr + BigInt(20 * PAGE + 8), 8);
    expect(gpc.gpa).toBeUndefined();
    vm.setUserMemoryRegion({ slot: 5, flags: 0, guestPhysAddr: BASE + 1024 * PAGE, memorySize: PAGE });
    expect(gpc.check(8)).toBe(true); // memslot changes do not concern it
    gpc.write(bytes(8, 4));
    expect(vm.guestMemory(0)?.[20 * PAGE + 8]).toBe(4);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    vm.invalidateHostRange(0, 20 * PAGE, PAGE); // but host invalidation does
    expect(gpc.valid).toBe(false);
    expect(errnoOf(() => vm.createGfnToPfnCache().activateHva(0x10n, 8))).toBe("EFAULT");
    expect(errnoOf(() => vm.createGfnToPfnCache().activateHva(info.userspaceAddr + 4090n, 8))).toBe("EINVAL");
  });

  it("deactivate: check fails, refresh and accesses are EINVAL, and invalidations skip it", async () => {
    const vm = await bitmapVm();
    const gpc = vm.createGfnToPfnCache();
    gpc.activate(BASE + PAGE, 8);
    gpc.deactivate();
    expect(gpc.active || gpc.valid).toBe(false);
    expect(gpc.check(8)).toBe(false);
    expect(errnoOf(() => gpc.refresh(8))).toBe("EINVAL");
    expect(errnoOf(() => gpc.write(bytes(8, 1)))).toBe("EINVAL");
    vm.invalidateHostRange(0, 0, 64 * PAGE);
    expect(vm.stats.pfnCachesInvalidated).toBe(0);
    gpc.activate(BASE + 2 * PAGE, 8); // and it can be activated again
    gpc.write(bytes(8, 1));
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2]);
  });
});

describe("mmu notifier: host-side changes to guest memory", () => {
  it("a write into a page that was invalidated and faulted back is reported", async () => {
    const vm = await bitmapVm();
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 7 * PAGE, 1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([7]); // reported, and write-protected again
    vm.invalidateHostRange(0, 7 * PAGE, PAGE);
    expect(vm.spte(0, BASE + 7 * PAGE).level).toBe(0); // zapped
    expect(vm.stats.hostInvalidations).toBe(1);
    expect(vcpu.writeGuest(BASE + 7 * PAGE, 2n)).toBe(0);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([7]);
    expect(vcpu.readGuest(BASE + 7 * PAGE)).toBe(2n); // the content survived the round trip
  });

  it("a page dirtied, then invalidated before the harvest, is still reported, and its next write too", async () => {
    const vm = await bitmapVm();
    const vcpu = vm.createVcpu(0);
    vcpu.writeGuest(BASE + 4 * PAGE, 1n);
    vm.invalidateHostRange(0, 0, 8 * PAGE);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([4]);
    vcpu.writeGuest(BASE + 4 * PAGE, 2n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([4]);
  });

  it("copy-on-write: a guest read maps the zero page; a VMM write zaps it, and the next guest read is reported", async () => {
    const vm = await bitmapVm();
    const vcpu = vm.createVcpu(0);
    expect(vcpu.readGuest(BASE + 5 * PAGE)).toBe(0n); // no host page: the zero page, read-only
    expect(vm.spte(0, BASE + 5 * PAGE).spte & ~0xfffn).toBe(0n); // pfn 0
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]);
    vm.writeUserMemory(0, 5 * PAGE, new Uint8Array([42]));
    expect(vm.stats.hostInvalidations).toBe(1);
    expect(vm.spte(0, BASE + 5 * PAGE).level).toBe(0); // the stale mapping is gone
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([]); // KVM does not see the VMM's write
    expect(vcpu.readGuest(BASE + 5 * PAGE)).toBe(42n); // the new page, not the zero page
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([5]); // mapped writable: logged as if written
    vm.writeUserMemory(0, 5 * PAGE, new Uint8Array([43])); // the host page exists: no event
    expect(vm.stats.hostInvalidations).toBe(1);
  });

  it("copy-on-write by KVM's own write: the guest sees the new bytes, not the zero page", async () => {
    const vm = await bitmapVm();
    const vcpu = vm.createVcpu(0);
    expect(vcpu.readGuest(BASE + 6 * PAGE)).toBe(0n);
    vm.kvmWriteGuest(BASE + 6 * PAGE, 77n);
    expect(vcpu.readGuest(BASE + 6 * PAGE)).toBe(77n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([6]);
  });

  it("bad ranges are EINVAL and change nothing", async () => {
    const vm = await bitmapVm();
    expect(errnoOf(() => vm.invalidateHostRange(3, 0, PAGE))).toBe("EINVAL");
    expect(errnoOf(() => vm.invalidateHostRange(0, 63 * PAGE, 2 * PAGE))).toBe("EINVAL");
    expect(errnoOf(() => vm.invalidateHostRange(0, -1, PAGE))).toBe("EINVAL");
    expect(vm.stats.hostInvalidations).toBe(0);
  });
});

describe("§3.8 whose write it is, and where the mark goes", () => {
  it("a vCPU in SMM writes SMRAM in vCPU context; the VM-context path never does", async () => {
    const vm = await newVm();
    const SMRAM = 0xa0000;
    vm.setUserMemoryRegion({ slot: (1 << 16) | 1, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: SMRAM, memorySize: 16 * PAGE, backed: true });
    const vcpu = vm.createVcpu(0);
    vcpu.smm = true;
    vcpu.kvmWriteGuest(SMRAM + 8, 5n); // kvm_vcpu_write_guest: the vCPU's address space
    expect(pagesOf(vm.getDirtyLog((1 << 16) | 1))).toEqual([0]);
    expect(vm.guestMemory((1 << 16) | 1)?.[8]).toBe(5);
    // kvm_write_guest: address space 0, where nothing maps SMRAM's addresses
    expect(errnoOf(() => vm.kvmWriteGuest(SMRAM + 8, 6n))).toBe("EFAULT");
    expect(vm.guestMemory((1 << 16) | 1)?.[8]).toBe(5);
  });

  it("a ring VM: vCPU-context writes go to that vCPU's ring; VM-context ones to the WITH_BITMAP bitmap", async () => {
    const vm = await ringVm(true);
    const [a, b] = [vm.createVcpu(0), vm.createVcpu(1)];
    const ghc = vm.createGfnToHvaCache(BASE + 3 * PAGE, 8);
    ghc.writeCached(bytes(8, 1), { vcpu: b });
    const gpc = b.createGfnToPfnCache(BASE + 4 * PAGE, 8);
    gpc.write(bytes(8, 1));
    ghc.writeCached(bytes(8, 2)); // no vCPU
    const vmGpc = vm.createGfnToPfnCache();
    vmGpc.activate(BASE + 5 * PAGE, 8);
    vmGpc.write(bytes(8, 2));
    expect(a.stats.ringPushes).toBe(0n);
    expect(b.stats.ringPushes).toBe(2n);
    const h = harvestDirtyRings(vm);
    expect([...(h.offsets.get(0) ?? [])]).toEqual([3, 4]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([3, 5]);
    expect(vm.stats.noVcpuWarnings).toBe(0);
  });

  it("a ring VM without a bitmap drops a VM-context write's report, counting the kernel's warning", async () => {
    const vm = await ringVm(false);
    vm.createVcpu(0);
    const ghc = vm.createGfnToHvaCache(BASE + 3 * PAGE, 8);
    ghc.writeCached(bytes(8, 1));
    expect(vm.stats.noVcpuWarnings).toBe(1);
    expect(harvestDirtyRings(vm).entries).toBe(0);
    expect(vm.guestMemory(0)?.[3 * PAGE]).toBe(1); // the bytes are written all the same
  });
});

describe("internal memslots: written by KVM at setup, never logged, not migrated", () => {
  it("the TSS (3 pages) and the identity map (1 page) hold what vmx.c writes; a second KVM_SET_TSS_ADDR is EEXIST", async () => {
    const vm = await newVm();
    vm.setTssAddr(0xfffbd000);
    vm.setIdentityMapAddr(0xfffbc000);
    vm.createVcpu(0);
    const tss = vm.guestMemory(32764);
    if (!tss) throw new Error("no TSS slot");
    expect(tss.length).toBe(3 * PAGE);
    expect(tss[0x66] | (tss[0x67] << 8)).toBe(0x88);
    expect(tss[0x2088]).toBe(0xff);
    expect(tss.reduce((n, b) => n + (b !== 0 ? 1 : 0), 0)).toBe(2);
    const idmap = vm.guestMemory(32766);
    if (!idmap) throw new Error("no identity map slot");
    const pde = new DataView(idmap.buffer, idmap.byteOffset, PAGE);
    expect(pde.getUint32(0, true)).toBe(0xe7);
    expect(pde.getUint32(4 * 1023, true)).toBe(((1023 << 22) | 0xe7) >>> 0);
    expect(errnoOf(() => vm.setTssAddr(0xfffbd000))).toBe("EEXIST");
    expect(vm.memslots().filter((s) => (s.slot & 0xffff) >= 32764).every((s) => s.flags === 0)).toBe(true);
  });

  it("migration carries KVM's cached writes and leaves the internal slots out", async () => {
    const vm = await bitmapVm(64);
    vm.setTssAddr(0xfffbd000);
    const vcpu = vm.createVcpu(0);
    const gpc = vcpu.createGfnToPfnCache(BASE + 30 * PAGE, 16);
    const ghc = vm.createGfnToHvaCache(BASE + 40 * PAGE + 4090, 12);
    let round = 0;
    const result = await migrate(vm, {
      onRound: () => {
        round++;
        gpc.write(new Uint8Array([round, 1, 2, 3]), { offset: 4 });
        ghc.writeCached(new Uint8Array(12).fill(round));
      },
    });
    expect(round).toBeGreaterThan(0);
    expect(result.equal).toBe(true);
    expect([...result.destination.keys()]).toEqual([0]); // the TSS slot is not migrated
    expect(result.destination.get(0)?.[30 * PAGE + 4]).toBe(round);
    expect(result.destination.get(0)?.[41 * PAGE + 5]).toBe(round);
  });
});
