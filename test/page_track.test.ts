// Write tracking (page track) and its external notifier API, under the TDP MMU, as KVMGT
// uses it (spec §4): u16 counters with refused overflow (§4.2), huge-page disallow (§4.3),
// shadow-style write protection with its flush (§4.2, §5.3, §5.4), emulation of guest
// writes to tracked pages (§4.5), notifiers and slot removal (§4.6), the MOVE rule.
import { isMainThread } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { errnoOf, pagesOf, triple, vmFactory } from "./helpers.js";
import { plantedCore } from "./planted-core.js";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_EXIT_PAGE_TRACK_FULL,
  KVM_EXIT_SHUTDOWN,
  KVM_MEM_LOG_DIRTY_PAGES,
  type PageTrackNotifier,
  type Vm,
  harvestDirtyRings,
} from "../src/index.js";

const { newVm } = vmFactory();
const PAGE = 4096;
const MIB = 1 << 20;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;

interface Event {
  gpa: bigint;
  bytes: number[];
}

/** A notifier that records what it is told. */
function recorder(): PageTrackNotifier & { writes: Event[]; removed: Array<[bigint, number]> } {
  const writes: Event[] = [];
  const removed: Array<[bigint, number]> = [];
  return {
    writes,
    removed,
    trackWrite(gpa, bytes) {
      writes.push({ gpa, bytes: [...bytes] });
    },
    trackRemoveRegion(gfn, nrPages) {
      removed.push([gfn, nrPages]);
    },
  };
}

const le64 = (v: bigint) => [...new Uint8Array(new BigUint64Array([v]).buffer)];

async function trackedVm(
  options: { flags?: number; bytes?: number } = {},
): Promise<{ vm: Vm; n: ReturnType<typeof recorder> }> {
  const vm = await newVm();
  vm.setUserMemoryRegion({
    slot: 0,
    flags: options.flags ?? LOG,
    guestPhysAddr: 0,
    memorySize: options.bytes ?? 4 * MIB,
    backed: true,
  });
  const n = recorder();
  vm.registerPageTrackNotifier(n);
  return { vm, n };
}

describe("kvm_write_track_add_gfn / remove_gfn (§4.2, §4.6)", () => {
  it("refuses bad calls without changing anything", async () => {
    const vm = await newVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: MIB, backed: true });
    // tracking not enabled yet: the kernel's KVM_BUG_ON, refused here
    expect(errnoOf(() => vm.writeTrackAddGfn(1))).toBe("ENXIO");
    expect(vm.writeTrackCount(1)).toBe(0);
    const n = recorder();
    expect(errnoOf(() => vm.registerPageTrackNotifier({ trackWrite: 1 } as unknown as PageTrackNotifier))).toBe(
      "EINVAL",
    );
    expect(errnoOf(() => vm.registerPageTrackNotifier(null as unknown as PageTrackNotifier))).toBe("EINVAL");
    expect(errnoOf(() => vm.unregisterPageTrackNotifier(n))).toBe("EINVAL");
    vm.registerPageTrackNotifier(n);
    expect(errnoOf(() => vm.registerPageTrackNotifier(n))).toBe("EEXIST");
    // no slot in address space 0 holds the gfn (an SMM-only slot does not count)
    vm.setUserMemoryRegion({ slot: (1 << 16) | 1, guestPhysAddr: 0x1000_0000, memorySize: MIB });
    expect(errnoOf(() => vm.writeTrackAddGfn(0x1000_0000 / PAGE))).toBe("EINVAL");
    expect(errnoOf(() => vm.writeTrackAddGfn(-1))).toBe("EINVAL");
    expect(errnoOf(() => vm.writeTrackCount(0x1000_0000 / PAGE))).toBe("EINVAL");
    expect(vm.writeTrackCount(1)).toBe(0);
  });

  it("counts per gfn; at 65535 and at 0 an update is refused and counted, the value stays", async () => {
    const { vm } = await trackedVm();
    vm.writeTrackAddGfn(5);
    vm.writeTrackAddGfn(5);
    expect(vm.writeTrackCount(5)).toBe(2);
    expect(vm.writeTrackCount(6)).toBe(0);
    vm.writeTrackRemoveGfn(5);
    vm.writeTrackRemoveGfn(5);
    expect(vm.writeTrackCount(5)).toBe(0);
    vm.writeTrackRemoveGfn(5); // underflow
    expect(vm.writeTrackCount(5)).toBe(0);
    expect(vm.stats.pageTrackWarnings).toBe(1);
    for (let i = 0; i < 65535; i++) vm.writeTrackAddGfn(7);
    expect(vm.writeTrackCount(7)).toBe(65535);
    vm.writeTrackAddGfn(7); // overflow
    expect(vm.writeTrackCount(7)).toBe(65535);
    expect(vm.stats.pageTrackWarnings).toBe(2);
  });

  it("write-protects shadow style at once (W and MMU-writable cleared, TLBs flushed); remove leaves it read-only until a fault", async () => {
    const { vm } = await trackedVm();
    const v = vm.createVcpu(0);
    expect(v.writeGuest(3 * PAGE, 1n)).toBe(0);
    expect(triple(vm, 3 * PAGE).hmw).toBe("111");
    const flushes = vm.stats.tlbFlushes;
    vm.writeTrackAddGfn(3);
    expect(triple(vm, 3 * PAGE).hmw).toBe("100"); // host-writable stays: only the slow path restores W
    expect(vm.stats.tlbFlushes).toBe(flushes + 1n);
    vm.writeTrackAddGfn(3); // nothing left to protect: no flush
    expect(vm.stats.tlbFlushes).toBe(flushes + 1n);
    vm.writeTrackRemoveGfn(3);
    expect(triple(vm, 3 * PAGE).hmw).toBe("100"); // still tracked once
    vm.writeTrackRemoveGfn(3);
    expect(triple(vm, 3 * PAGE).hmw).toBe("100"); // lazily writable again…
    expect(v.writeGuest(3 * PAGE, 2n)).toBe(0);
    expect(triple(vm, 3 * PAGE).hmw).toBe("111"); // …at the next write fault
    expect(vm.stats.emulatedWrites).toBe(0n);
  });

  it("a tracked gfn keeps huge mappings off its 2M frame; a huge leaf over it is write-protected whole (§4.3)", async () => {
    const vm = await newVm();
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 8 * MIB, backed: true }); // not logged: huge allowed
    const n = recorder();
    vm.registerPageTrackNotifier(n);
    const v = vm.createVcpu(0);
    expect(v.writeGuest(0, 1n)).toBe(0);
    expect(triple(vm, 0).level).toBe(2);
    vm.writeTrackAddGfn(5);
    expect(triple(vm, 5 * PAGE)).toEqual({ hmw: "100", level: 2 }); // the whole 2M leaf
    // another page of the frame: the fault may not map 2M any more, and splits
    expect(v.writeGuest(6 * PAGE, 2n)).toBe(0);
    expect(triple(vm, 6 * PAGE)).toEqual({ hmw: "111", level: 1 });
    expect(triple(vm, 5 * PAGE)).toEqual({ hmw: "100", level: 1 });
    // the next 2M frame is untouched by the counter
    expect(v.writeGuest(2 * MIB, 3n)).toBe(0);
    expect(triple(vm, 2 * MIB).level).toBe(2);
    // untracked again: a frame with no mapping yet may be huge again
    vm.writeTrackRemoveGfn(5);
    expect(v.writeGuest(4 * MIB + 5 * PAGE, 4n)).toBe(0);
    expect(triple(vm, 4 * MIB).level).toBe(2);
    expect(n.writes).toEqual([]);
  });
});

/**
 * 3000 emulated stores in one writeStrided call on this thread (8 tracked pages): more
 * than the event queue holds (1024). `exact`: the notifier saw each store once, in order.
 */
async function stridedRun(wasm?: WebAssembly.Module) {
  const vm = await newVm(wasm ? { wasm } : {});
  vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
  const n = recorder();
  vm.registerPageTrackNotifier(n);
  const v = vm.createVcpu(0);
  for (let g = 0; g < 8; g++) vm.writeTrackAddGfn(g);
  const retired = v.writeStrided(0, 8, 3000, 7n);
  const exact = retired === 3000 && n.writes.length === 3000 && n.writes.every((e, i) => e.gpa === BigInt(8 * i));
  return { vm, n, v, exact };
}

describe("guest writes to a tracked page are emulated (§4.5)", () => {
  it("the bytes land, the SPTE stays read-only, the notifier sees (gpa, bytes), the page is logged at every write", async () => {
    const { vm, n } = await trackedVm();
    const v = vm.createVcpu(0);
    vm.writeTrackAddGfn(2);
    expect(v.writeGuest(2 * PAGE + 16, 0x1122_3344_5566_7788n)).toBe(0);
    expect(n.writes).toEqual([{ gpa: BigInt(2 * PAGE + 16), bytes: le64(0x1122_3344_5566_7788n) }]);
    expect(v.readGuest(2 * PAGE + 16)).toBe(0x1122_3344_5566_7788n);
    expect(triple(vm, 2 * PAGE).hmw).toBe("100");
    expect(vm.stats.emulatedWrites).toBe(1n);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2]);
    // no fault re-arms anything here: each emulated write marks the page again
    expect(v.writeGuest(2 * PAGE + 24, 9n)).toBe(0);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([2]);
    expect(n.writes.length).toBe(2);
    // an untracked neighbour is an ordinary page: no event
    expect(v.writeGuest(3 * PAGE, 1n)).toBe(0);
    expect(n.writes.length).toBe(2);
    expect(triple(vm, 3 * PAGE).hmw).toBe("111");
  });

  it("a first write to a tracked page with no mapping maps it read-only, then emulates (RET_PF_EMULATE)", async () => {
    const { vm, n } = await trackedVm();
    const v = vm.createVcpu(0);
    vm.writeTrackAddGfn(9);
    expect(vm.spte(0, 9 * PAGE).level).toBe(0);
    expect(v.writeGuest(9 * PAGE, 5n)).toBe(0);
    expect(triple(vm, 9 * PAGE)).toEqual({ hmw: "100", level: 1 });
    expect(n.writes.map((e) => e.gpa)).toEqual([BigInt(9 * PAGE)]);
    // a read of a tracked page maps it read-only as well, and is no event
    vm.writeTrackAddGfn(10);
    vm.writeUserMemory(0, 10 * PAGE, new Uint8Array([1])); // the host page exists
    expect(v.readGuest(10 * PAGE)).toBe(1n);
    expect(triple(vm, 10 * PAGE)).toEqual({ hmw: "100", level: 1 });
    expect(n.writes.length).toBe(1);
  });

  it("on a ring VM every emulated write pushes an entry; an ordinary page pushes once per protection", async () => {
    const vm = await newVm();
    vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [65536]);
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: MIB, backed: true });
    vm.registerPageTrackNotifier(recorder());
    const v = vm.createVcpu(0);
    vm.writeTrackAddGfn(1);
    for (let i = 0; i < 3; i++) expect(v.writeGuest(PAGE + 8 * i, 1n)).toBe(0);
    for (let i = 0; i < 3; i++) expect(v.writeGuest(2 * PAGE + 8 * i, 1n)).toBe(0);
    const got = harvestDirtyRings(vm).offsets.get(0);
    expect([...(got ?? [])]).toEqual([1, 1, 1, 2]);
  });

  it("the notifier is not told of KVM's own writes or of the VMM's (only emulated guest writes)", async () => {
    const { vm, n } = await trackedVm();
    vm.writeTrackAddGfn(4);
    vm.kvmWriteGuest(4 * PAGE, 1n);
    vm.writeUserMemory(0, 4 * PAGE, new Uint8Array([2]));
    expect(n.writes).toEqual([]);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([4]); // kvm_write_guest marks, as always
  });

  it("notifiers are called newest first, on the registering thread; unregistering delivers what was queued", async () => {
    const { vm, n } = await trackedVm();
    const order: string[] = [];
    const a: PageTrackNotifier = { trackWrite: () => order.push(`a:${isMainThread}`) };
    const b: PageTrackNotifier = { trackWrite: () => order.push(`b:${isMainThread}`) };
    vm.registerPageTrackNotifier(a);
    vm.registerPageTrackNotifier(b);
    vm.writeTrackAddGfn(1);
    expect(vm.createVcpu(0).writeGuest(PAGE, 1n)).toBe(0);
    expect(order).toEqual(["b:true", "a:true"]);
    vm.unregisterPageTrackNotifier(a);
    vm.unregisterPageTrackNotifier(b);
    vm.unregisterPageTrackNotifier(n);
    // no notifier: still emulated (the page stays tracked), nothing queued
    expect(vm.vcpuList[0].writeGuest(PAGE, 2n)).toBe(0);
    expect(vm.stats.emulatedWrites).toBe(2n);
    expect(n.writes.length).toBe(1);
  });

  it("a notifier that throws does not stop the others; the error reaches the caller after delivery", async () => {
    const { vm, n } = await trackedVm();
    vm.registerPageTrackNotifier({
      trackWrite() {
        throw new Error("mediator failed");
      },
    });
    vm.writeTrackAddGfn(1);
    expect(() => vm.createVcpu(0).writeGuest(PAGE, 1n)).toThrow("mediator failed");
    expect(n.writes.length).toBe(1);
    expect(vm.vcpuList[0].readGuest(PAGE)).toBe(1n); // the write itself happened
  });

  it("a full event queue stops the store before it writes; this thread delivers and retries", async () => {
    const { vm, n, v, exact } = await stridedRun();
    expect(exact).toBe(true);
    expect(vm.stats.pageTrackFullExits).toBe(2);
    // KVM_RUN on this thread ends at the full queue (the store pending), its events
    // delivered; the next KVM_RUN goes on from the pending store
    v.setWorkload({ pattern: "sequential", gpa: 0, pages: 8, batch: 1500 });
    n.writes.length = 0;
    expect(v.runSync()).toBe(KVM_EXIT_PAGE_TRACK_FULL);
    expect(n.writes.length).toBe(1024);
    expect(v.runSync()).toBe(KVM_EXIT_PAGE_TRACK_FULL); // a new batch of 1500 from the pending store
    expect(n.writes.length).toBe(2048);
    // no store lost or doubled across the exits: the sequence goes on page by page
    expect(n.writes.every((e, i) => e.gpa === BigInt(PAGE * (i % 8)))).toBe(true);
    expect(v.workloadStores).toBe(2048n);
  });
});

describe("memslots and write tracking (§1.5, §4.1, §4.6)", () => {
  it("a slot created after tracking was enabled is tracked too; deleting a slot calls trackRemoveRegion after its write events", async () => {
    const { vm, n } = await trackedVm();
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x4000_0000, memorySize: 2 * MIB, backed: true });
    const gfn = 0x4000_0000 / PAGE + 3;
    vm.writeTrackAddGfn(gfn);
    const log: string[] = [];
    vm.registerPageTrackNotifier({
      trackWrite: (gpa) => log.push(`write ${gpa.toString(16)}`),
      trackRemoveRegion: (g, pages) => log.push(`remove ${g.toString(16)} ${pages}`),
    });
    expect(vm.createVcpu(0).writeGuest(gfn * PAGE, 1n)).toBe(0);
    vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 0x4000_0000, memorySize: 0 });
    expect(log).toEqual([`write ${(gfn * PAGE).toString(16)}`, "remove 40000 512"]);
    expect(n.removed).toEqual([[0x40000n, 512]]);
    expect(errnoOf(() => vm.writeTrackAddGfn(gfn))).toBe("EINVAL");
  });

  it("MOVE is refused while a notifier is registered (after the zap, as the kernel fails it); later it starts the counters afresh", async () => {
    const { vm, n } = await trackedVm({ flags: 0, bytes: MIB });
    vm.writeTrackAddGfn(1);
    const v = vm.createVcpu(0);
    expect(v.writeGuest(0, 1n)).toBe(0);
    const zaps = vm.stats.zaps;
    expect(
      errnoOf(() => vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10_0000, memorySize: MIB, backed: true })),
    ).toBe("EINVAL");
    expect(vm.stats.zaps).toBe(zaps + 1n);
    expect(vm.memslots()[0].guestPhysAddr).toBe(0n);
    expect(vm.writeTrackCount(1)).toBe(1);
    vm.unregisterPageTrackNotifier(n);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0x10_0000, memorySize: MIB, backed: true });
    expect(vm.writeTrackCount(0x100 + 1)).toBe(0); // fresh metadata after a MOVE
  });
});

/**
 * 2 vCPU workers write their 256-page regions in order; every other page is write-tracked.
 * This thread is kept busy until the event queue has filled at least once (the workers
 * then wait for it), then awaits the loops. Returns what the notifier saw.
 */
async function threadedRun(wasm?: WebAssembly.Module) {
  const vm = await newVm(wasm ? { wasm } : {});
  vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 2 * MIB, backed: true });
  const seen = new Map<bigint, number>();
  let offThread = 0;
  vm.registerPageTrackNotifier({
    trackWrite(gpa) {
      if (!isMainThread) offThread++;
      seen.set(gpa, (seen.get(gpa) ?? 0) + 1);
    },
  });
  for (let g = 0; g < 512; g += 2) vm.writeTrackAddGfn(g);
  const vcpus = [0, 1].map((id) => vm.createVcpu(id));
  const limit = 6000;
  for (const [i, v] of vcpus.entries())
    v.setWorkload({ pattern: "sequential", gpa: i * MIB, pages: 256, batch: 500, limit });
  await Promise.all(vcpus.map((v) => v.startLoop()));
  const until = Date.now() + 10_000;
  const finished = () => vcpus.every((v) => v.workloadStores >= BigInt(limit));
  while (vm.stats.pageTrackFullExits === 0 && !finished() && Date.now() < until) {}
  const reasons = await Promise.all(vcpus.map((v) => v.loopEnd));
  vm.deliverPageTrackEvents();
  let total = 0;
  for (const c of seen.values()) total += c;
  // sequential: store k of a vCPU goes to the start of page k mod 256 of its region
  const expected = new Map<bigint, number>();
  for (let i = 0; i < 2; i++) {
    for (let k = 0; k < limit; k++) {
      const page = k % 256;
      if (page % 2 === 0)
        expected.set(BigInt(i * MIB + page * PAGE), (expected.get(BigInt(i * MIB + page * PAGE)) ?? 0) + 1);
    }
  }
  const exact = seen.size === expected.size && [...expected].every(([gpa, c]) => seen.get(gpa) === c);
  return { vm, seen, total, offThread, reasons, limit, exact };
}

describe("vCPU threads (no event lost)", () => {
  it("2 vCPU workers writing tracked and untracked pages, the queue filling up: every emulated write reaches the notifier once, on this thread", async () => {
    const { vm, seen, total, offThread, reasons, limit, exact } = await threadedRun();
    expect(reasons).toEqual([KVM_EXIT_SHUTDOWN, KVM_EXIT_SHUTDOWN]);
    expect(vm.stats.pageTrackFullExits).toBeGreaterThan(0);
    // sequential over 256 pages, the even ones tracked: each vCPU's tracked stores
    const perVcpu = 128 * Math.floor(limit / 256) + Math.ceil((limit % 256) / 2);
    expect(total).toBe(2 * perVcpu);
    expect(Number(vm.stats.emulatedWrites)).toBe(2 * perVcpu);
    expect(offThread).toBe(0);
    expect(exact).toBe(true); // each tracked page told exactly as often as it was written
    for (const gpa of seen.keys()) expect(Number(gpa / BigInt(PAGE)) % 2).toBe(0);
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")(
    "negative controls (planted cores): no room check loses events; tracked pages mapped writable are emulated once, then written unseen",
    async () => {
      const noRoom = plantedCore(
        [{ file: "page_track.ts", from: "load<u32>(vm + VM_TRACK_ENTRIES)) {", to: "0xffff_ffff) {" }],
        "release",
      );
      const a = await stridedRun(noRoom);
      expect(a.vm.stats.pageTrackFullExits).toBe(0);
      expect(a.exact).toBe(false); // 3000 records in 1024 places: the first ones overwritten
      const writable = plantedCore(
        [
          {
            file: "fault.ts",
            from: "const writable = host_writable && !tracked;",
            to: "const writable = host_writable;",
          },
        ],
        "release",
      );
      const b = await stridedRun(writable);
      expect(b.exact).toBe(false);
      expect(b.n.writes.length).toBe(6); // pages 0..5: only each page's first write (the fault's own verdict) is emulated
    },
  );
});
