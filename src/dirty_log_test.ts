// The kernel's tools/testing/selftests/kvm/dirty_log_test.c, ported (spec §7.1): vCPU
// threads write the current iteration into random pages while the collector harvests
// concurrently; after each iteration the vCPUs are stopped, a final harvest is taken and
// every page is checked against one rule: a page written in this iteration must have been
// reported, and a reported page must hold this iteration's value — with the kernel's
// exceptions (INITIALLY_SET's first report; the ring's last harvested page, whose store may
// not have retired yet). One harness over every tracking mode.
import { bool, finite, int, known, object, oneOf } from "./args.js";
import { KVM_MEM_LOG_DIRTY_PAGES } from "./constants.js";
import { KvmError } from "./errors.js";
import { type LogMode, type LogModeKind, logMode } from "./log_mode.js";
import { buildPageTables } from "./paging.js";
import { type Vm, createVm } from "./vm.js";
import { type WorkloadPattern, splitRegion } from "./workload.js";

export interface DirtyLogTestOptions {
  mode: LogModeKind;
  /** Ring size in entries (dirty-ring). */
  ringEntries?: number;
  /** Model Intel PML. */
  pml?: boolean;
  /** The MMU (VmOptions.mmu, default "tdp"). */
  mmu?: "tdp" | "shadow";
  /**
   * The guest runs paged (`true` or `"long"`: x86-64 4-level tables; `"32bit"`: a 32-bit
   * non-PAE guest's 2-level tables of 4-byte gPTEs, its region then below 4 GiB), the
   * tables in a slot of their own, mapping the test region at the same addresses: the
   * CPU's walk under the TDP MMU, shadow pages of the guest's tables under the shadow MMU.
   */
  paging?: boolean | "long" | "32bit";
  /** The vCPU TLB model (default on). */
  tlb?: boolean;
  vcpus?: number;
  iterations?: number;
  /** Milliseconds each iteration lets the vCPUs run (TEST_HOST_LOOP_INTERVAL). */
  intervalMs?: number;
  /** Guest pages; the kernel uses 2^n + 3 so the bitmap has a ragged end. */
  pages?: number;
  pattern?: WorkloadPattern;
  /** Each vCPU writes its own partition (default: all vCPUs share the whole region). */
  partition?: boolean;
  /** Fault injection: never deliver remote TLB flushes (the result must show lost pages). */
  skipTlbFlush?: boolean;
  /**
   * Misuse: while the loops run, this thread keeps calling vCPU 0's writeGuest (vCPU
   * context from another thread). Each call must get EBUSY and change nothing.
   */
  mainThreadHammer?: boolean;
  /**
   * KVM writes guest memory too, in a second logged slot: each vCPU's Xen runstate area
   * (across a page boundary; KVM rewrites it around every KVM_RUN of the vCPU's loop, in
   * vCPU context) and, in the bitmap modes, a gfn_to_hva_cache and a gfn_to_pfn_cache the
   * collector writes at every step (VM context: a ring VM would drop those reports, as the
   * kernel does). Every page of that slot whose content changed in an iteration must have
   * been reported.
   */
  kvmWrites?: boolean;
  /**
   * While the loops run, this thread creates and deletes a small slot of its own at every
   * step. Each DELETE zaps every mapping of the VM (kvm_mmu_zap_all_fast) under the running
   * vCPUs, which fault everything in again; under the shadow MMU the zap goes in batches
   * and lets their faults in between (stats.mmuLockBreaks).
   */
  memslotChurn?: boolean;
  /** A compiled core to use instead of the package's (negative controls: a planted bug). */
  wasm?: WebAssembly.Module;
}

export interface DirtyLogTestResult {
  mode: string;
  iterations: number;
  /** Page checks performed (pages × iterations). */
  pagesChecked: number;
  /** Reported pages in all iterations. */
  dirtyPages: number;
  /** Pages written in an iteration but not reported: must be 0. */
  lost: number;
  /** Reported pages whose content was not this iteration's value (outside the exceptions): must be 0. */
  wrongValue: number;
  writes: bigint;
  ringFullExits: bigint;
  /** Pushes into a hard-full ring (the kernel's WARN: the report is lost): must be 0. */
  ringFullWarnings: number;
  harvests: number;
  /** mainThreadHammer: calls made, and how many were rejected with EBUSY. */
  hammerCalls: number;
  hammerEbusy: number;
  /** kvmWrites: runstate updates and cached writes KVM made, and pages of its slot checked. */
  kvmWrites: number;
  kvmPagesChecked: number;
  /** memslotChurn: slots deleted (each a zap of everything) while the vCPUs ran. */
  memslotDeletes: number;
  /** vm.stats.mmuLockBreaks at the end: waiters let in by long mmu_lock holds (shadow MMU). */
  mmuLockBreaks: number;
  firstError?: string;
}

const GPA = 0x1_0000_0000;
const GPA_32BIT = 0x4000_0000; // (pages ≤ 2^19: the region ends by 0xc000_0000, where the tables go)
const OPTIONS = [
  "mode",
  "ringEntries",
  "pml",
  "mmu",
  "paging",
  "tlb",
  "vcpus",
  "iterations",
  "intervalMs",
  "pages",
  "pattern",
  "partition",
  "skipTlbFlush",
  "memslotChurn",
  "mainThreadHammer",
  "kvmWrites",
  "wasm",
];
const LOG_MODES: Record<LogModeKind, true> = { "dirty-log": true, "clear-log": true, "dirty-ring": true };
const PATTERNS: Record<WorkloadPattern, true> = { sequential: true, uniform: true, "hot-set": true, zipf: true, strided: true };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function setBit(bm: Uint8Array, p: number): void {
  bm[p >> 3] |= 1 << (p & 7);
}
function testAndClear(bm: Uint8Array, p: number): boolean {
  const m = 1 << (p & 7);
  const was = (bm[p >> 3] & m) !== 0;
  bm[p >> 3] &= ~m;
  return was;
}

export async function runDirtyLogTest(options: DirtyLogTestOptions): Promise<DirtyLogTestResult> {
  const call = "runDirtyLogTest";
  const o = object<DirtyLogTestOptions>(options, "options", call, false);
  known(o, OPTIONS, call);
  const mode = oneOf(o.mode, LOG_MODES, "mode", call);
  const pages = o.pages === undefined ? (1 << 14) + 3 : int(o.pages, "pages", call, 1, 1 << 19);
  const nVcpus = o.vcpus === undefined ? 2 : int(o.vcpus, "vcpus", call, 1, 64);
  const iterations = o.iterations === undefined ? 32 : int(o.iterations, "iterations", call, 1, 1 << 20);
  const interval = o.intervalMs === undefined ? 10 : finite(o.intervalMs, "intervalMs", call, 0, 3_600_000);
  const entries = o.ringEntries === undefined ? 1024 : int(o.ringEntries, "ringEntries", call, 1, 65536);
  for (const k of ["pml", "tlb", "partition", "skipTlbFlush", "mainThreadHammer", "kvmWrites", "memslotChurn"] as const) bool(o[k], k, call);
  if (o.wasm !== undefined && !(o.wasm instanceof WebAssembly.Module)) {
    throw new KvmError("EINVAL", call, "wasm must be a WebAssembly.Module");
  }
  if (o.pattern !== undefined) oneOf(o.pattern, PATTERNS, "pattern", call);
  const paging = o.paging === undefined || o.paging === false ? undefined : o.paging === true ? "long" : o.paging;
  if (paging !== undefined) oneOf(paging, { long: 1, "32bit": 1 }, "paging", call);
  // a 32-bit guest's gPTEs reach 4 GiB: its region and tables live below
  const base = paging === "32bit" ? GPA_32BIT : GPA;
  // the selftest's clear-log mode runs with INITIALLY_SET; the mode checks its own rules
  // (a ring size the kernel refuses) before any VM exists
  let logmode: LogMode;
  try {
    logmode = logMode({ kind: mode, ringEntries: entries, pml: o.pml === true, initiallySet: mode === "clear-log" });
  } catch (e) {
    throw e instanceof KvmError ? new KvmError(e.errno, call, e.reason) : e;
  }
  const vm = await createVm({
    maxMemoryBytes: Math.max(256 << 20, pages * 4096 + (64 << 20)),
    mmuPoolBytes: 8 << 20,
    pml: options.pml,
    tlb: options.tlb,
    ...(o.mmu !== undefined ? { mmu: o.mmu } : {}),
    ...(o.wasm ? { wasm: o.wasm } : {}),
  });
  try {
    if (options.skipTlbFlush) vm.setDebug({ skipTlbFlush: true });
    logmode.createVmDone(vm);
    const slot = 1;
    vm.setUserMemoryRegion({ slot, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: base, memorySize: pages * 4096, backed: true });
    const memory = vm.guestMemory(slot) as Uint8Array;
    const values = new BigUint64Array(memory.buffer, memory.byteOffset, pages * 512);
    const vcpus = Array.from({ length: nVcpus }, (_, i) => vm.createVcpu(i));
    const regions = options.partition ? splitRegion(base, pages, nVcpus) : splitRegion(base, pages, nVcpus, true);
    for (const [i, v] of vcpus.entries()) v.setWorkload({ pattern: options.pattern ?? "uniform", ...regions[i], batch: 1024 });
    if (paging !== undefined) {
      // the guest's page tables: their own slot (not logged), an identity map of the region
      const tableSlot = 3;
      const tableBytes = (Math.ceil(pages / 512) + 8) * 4096;
      const tablesAt = paging === "32bit" ? 0xc000_0000 : GPA + 0x2_0000_0000;
      vm.setUserMemoryRegion({ slot: tableSlot, guestPhysAddr: tablesAt, memorySize: tableBytes, backed: true });
      const tables = buildPageTables(vm, tableSlot, 0, [{ gva: base, gpa: base, pages }], { mode: paging });
      for (const v of vcpus) v.setPaging({ cr3: tables.cr3, mode: paging });
    }
    // KVM's own writes: a second slot, pages 2i and 2i + 1 for vCPU i's runstate area
    // (crossing between them), then one page for each cache of the collector
    const kvmSlot = 2;
    const kvmPages = 2 * nVcpus + 2;
    const KVM_GPA = GPA + 0x1_0000_0000;
    let kvmMemory: Uint8Array = new Uint8Array(0);
    let kvmSnapshot: Uint8Array = new Uint8Array(0);
    let cachedWrite = (_iteration: bigint) => {};
    if (o.kvmWrites) {
      vm.setUserMemoryRegion({ slot: kvmSlot, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: KVM_GPA, memorySize: kvmPages * 4096, backed: true });
      kvmMemory = vm.guestMemory(kvmSlot) as Uint8Array;
      kvmSnapshot = kvmMemory.slice();
      for (const [i, v] of vcpus.entries()) v.setXenRunstateArea(KVM_GPA + (2 * i + 1) * 4096 - 21);
      if (mode !== "dirty-ring") {
        const ghc = vm.createGfnToHvaCache(KVM_GPA + 2 * nVcpus * 4096 + 1000, 16);
        const gpc = vm.createGfnToPfnCache();
        gpc.activate(KVM_GPA + (2 * nVcpus + 1) * 4096 + 8, 16);
        const word = new Uint8Array(16);
        const dv = new DataView(word.buffer);
        cachedWrite = (iteration) => {
          dv.setBigUint64(0, iteration, true);
          dv.setBigUint64(8, BigInt(result.kvmWrites), true);
          ghc.writeCached(word);
          gpc.write(word);
          result.kvmWrites += 2;
        };
      }
    }

    const bytes = Math.ceil(pages / 64) * 8;
    const bmap = [new Uint8Array(bytes), new Uint8Array(bytes)];
    const result: DirtyLogTestResult = {
      mode: `${mode}${mode === "dirty-ring" ? `-${entries}` : ""}${options.pml ? "+pml" : ""}${options.tlb === false ? "-notlb" : ""}${options.mmu === "shadow" ? "+shadow" : ""}${paging === undefined ? "" : paging === "32bit" ? "+paging32" : "+paging"}`,
      iterations,
      pagesChecked: 0,
      dirtyPages: 0,
      lost: 0,
      wrongValue: 0,
      writes: 0n,
      ringFullExits: 0n,
      ringFullWarnings: 0,
      harvests: 0,
      hammerCalls: 0,
      hammerEbusy: 0,
      kvmWrites: 0,
      kvmPagesChecked: 0,
      memslotDeletes: 0,
      mmuLockBreaks: 0,
    };
    // memslotChurn: a slot nobody touches, created and deleted again (a zap of everything)
    const churn = () => {
      vm.setUserMemoryRegion({ slot: 4, guestPhysAddr: base + 0x3_0000_0000, memorySize: 16 * 4096 });
      vm.setUserMemoryRegion({ slot: 4, guestPhysAddr: base + 0x3_0000_0000, memorySize: 0 });
      result.memslotDeletes++;
    };
    /** A burst of vCPU-context calls from this thread into vCPU 0 while its loop runs. */
    const hammer = (value: bigint) => {
      for (let k = 0; k < 256; k++) {
        result.hammerCalls++;
        try {
          // a call that went through would be a legitimate write of this iteration's value
          vcpus[0].writeGuest(base + ((result.hammerCalls * 7919) % pages) * 4096, value);
        } catch (e) {
          if (!(e instanceof KvmError) || e.errno !== "EBUSY") throw e;
          result.hammerEbusy++;
        }
      }
    };
    // ring mode: the last page harvested from each vCPU (its store may not have retired)
    const lastPage = new Array<number>(nVcpus).fill(-1);
    let prevLastPage = new Array<number>(nVcpus).fill(-1);

    const kvmReported = new Uint8Array(Math.ceil(kvmPages / 8));
    const collect = (into: Uint8Array) => {
      result.harvests++;
      const c = logmode.collectDirtyPages(vm, o.kvmWrites ? [slot, kvmSlot] : [slot], (s, offset, vcpu) => {
        if (s === kvmSlot && o.kvmWrites && offset < kvmPages) {
          setBit(kvmReported, offset);
          return;
        }
        if (s !== slot || offset >= pages) throw new Error(`bad report: slot ${s} offset ${offset}`);
        setBit(into, offset);
        if (vcpu >= 0) lastPage[vcpu] = offset; // ring order: the last one harvested per vCPU
      });
      if (c.ringResets !== c.ringEntries) {
        throw new Error(`KVM_RESET_DIRTY_RINGS returned ${c.ringResets}, harvested ${c.ringEntries}`);
      }
    };

    for (let iteration = 1; iteration <= iterations; iteration++) {
      const it = BigInt(iteration);
      vm.iteration = it;
      prevLastPage = [...lastPage];
      const before = vcpus.reduce((a, v) => a + v.workloadStores, 0n);
      const fullBefore = vcpus.reduce((a, v) => a + v.stats.ringFullExits, 0n);
      const runstateBefore = o.kvmWrites ? vcpus.reduce((a, v) => a + v.xenRunstate.updates, 0) : 0;
      if (iteration === 1) await Promise.all(vcpus.map((v) => v.startLoop()));
      else for (const v of vcpus) v.resume();
      // let the vCPUs run; harvest concurrently (bitmap modes: once, at the first step, since
      // a GET is destructive; ring mode: at the first step and whenever a ring filled up)
      const t0 = performance.now();
      let step = 0;
      let fullSeen = fullBefore;
      while (true) {
        await sleep(1);
        const writes = vcpus.reduce((a, v) => a + v.workloadStores, 0n) - before;
        const full = vcpus.reduce((a, v) => a + v.stats.ringFullExits, 0n);
        if (step === 0 || (mode === "dirty-ring" && full !== fullSeen)) collect(bmap[0]);
        if (o.mainThreadHammer) hammer(it);
        if (o.memslotChurn) churn();
        cachedWrite(it);
        fullSeen = full;
        step++;
        if (performance.now() - t0 >= interval && writes >= 0x100n) break;
        if (performance.now() - t0 >= interval + 30_000) {
          const exits = vcpus.map((v) => v.exitReason).join(", ");
          throw new KvmError("EIO", call, `iteration ${iteration}: the vCPUs made no progress in 30 s (last exits: ${exits})`);
        }
      }
      for (const v of vcpus) await v.pause();
      cachedWrite(it); // one more after the vCPUs stopped, caught by the final harvest only
      collect(bmap[1]);
      result.writes += vcpus.reduce((a, v) => a + v.workloadStores, 0n) - before;
      result.ringFullExits += vcpus.reduce((a, v) => a + v.stats.ringFullExits, 0n) - fullBefore;

      // verify every page
      for (let p = 0; p < pages; p++) {
        const d0 = testAndClear(bmap[0], p);
        const d1 = testAndClear(bmap[1], p);
        const val = values[p * 512];
        result.pagesChecked++;
        if (d0 || d1) {
          result.dirtyPages++;
          if (val === it) continue;
          if (mode === "dirty-ring") {
            if (prevLastPage.includes(p) && val === it - 1n) continue;
            if (lastPage.includes(p) && val < it) continue; // logged, store not retired yet
          } else if (iteration === 1 && val === 0n && d0) {
            continue; // clear-log: INITIALLY_SET reports never-written pages once
          }
          result.wrongValue++;
          result.firstError ??= `iteration ${iteration}: page ${p} reported with value ${val}`;
        } else if (val >= it) {
          result.lost++;
          result.firstError ??= `iteration ${iteration}: page ${p} holds ${val} but was not reported (spte 0x${vm.spte(0, base + p * 4096).spte.toString(16)})`;
        }
      }
      // KVM's pages: one whose content changed in this iteration must have been reported
      for (let p = 0; o.kvmWrites && p < kvmPages; p++) {
        result.kvmPagesChecked++;
        const now = kvmMemory.subarray(p * 4096, (p + 1) * 4096);
        const was = kvmSnapshot.subarray(p * 4096, (p + 1) * 4096);
        const reported = testAndClear(kvmReported, p);
        if (!reported && !now.every((b, k) => b === was[k])) {
          result.lost++;
          result.firstError ??= `iteration ${iteration}: KVM's page ${p} changed but was not reported`;
        }
        was.set(now);
      }
      if (o.kvmWrites) result.kvmWrites += vcpus.reduce((a, v) => a + v.xenRunstate.updates, 0) - runstateBefore;
    }
    result.ringFullWarnings = vm.stats.ringFullWarnings;
    result.mmuLockBreaks = vm.stats.mmuLockBreaks;
    // a harness that checked nothing has not shown anything
    if (result.pagesChecked === 0) throw new KvmError("EINVAL", call, "no page was checked");
    return result;
  } finally {
    await vm.close();
  }
}

export type { Vm };
