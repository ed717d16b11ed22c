// LogMode: one definition per dirty-tracking mode, in the shape of the kernel selftest's
// `struct log_mode { name; create_vm_done; collect_dirty_pages; after_vcpu_run }`
// (tools/testing/selftests/kvm/dirty_log_test.c). Every job that harvests — compare,
// migrate, runDirtyLogTest, bench — goes through this table, so the "GET [+ CLEAR]" and
// "kick, collect, reset" sequences exist once.
//
//   bitmap / dirty-log   KVM_GET_DIRTY_LOG exchanges the bitmap and re-arms what it returns
//   manual / clear-log   KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET copies; KVM_CLEAR_DIRTY_LOG
//                        re-arms, in chunks of `clearChunkPages` (QEMU clears 256k-page
//                        chunks); optionally INITIALLY_SET
//   ring / dirty-ring    KVM_CAP_DIRTY_LOG_RING of `ringEntries` per vCPU (optionally PML):
//                        kick (drains PML), collect every ring (into a buffer the VM's
//                        harvests reuse), KVM_RESET_DIRTY_RINGS, then hand the entries out
//
// Invariant: a page is handed to the consumer only after the call that re-arms it has
// been made for this harvest (GET returned / CLEAR done / RESET done), so a write racing
// with the consumer's copy is reported again by the next harvest (QEMU's ordering).
import { int, known, object, oneOf } from "./args.js";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
} from "./constants.js";
import { collectDirtyRingInPlace, holdingRingBuffers } from "./dirty_ring_collector.js";
import { KvmError } from "./errors.js";
import type { Vm, VmOptions } from "./vm.js";

export type LogModeKind = "dirty-log" | "clear-log" | "dirty-ring";

export interface LogModeSpec {
  kind: LogModeKind;
  /** dirty-ring: entries per vCPU (a power of two, 256..65536). */
  ringEntries?: number;
  /** Model Intel PML (a VM option; the ring's reserve grows by 512 entries). */
  pml?: boolean;
  /** clear-log: pages per KVM_CLEAR_DIRTY_LOG call (a multiple of 64; default 262144). */
  clearChunkPages?: number;
  /** clear-log: KVM_DIRTY_LOG_INITIALLY_SET (the first harvest reports every page). */
  initiallySet?: boolean;
}

/** What one harvest did: the events the kernel would perform, counted. */
export interface HarvestCounts {
  /** Pages handed to the consumer (ring: entries, duplicates included). */
  reported: number;
  /** KVM_GET_DIRTY_LOG calls. */
  getCalls: number;
  /** Bitmap words (u64) the GETs returned and the collector scanned. */
  bitmapWords: number;
  /** KVM_CLEAR_DIRTY_LOG calls. */
  clearCalls: number;
  /** Ring entries collected. */
  ringEntries: number;
  /** Entries KVM_RESET_DIRTY_RINGS re-armed. */
  ringResets: number;
  /** KVM_RESET_DIRTY_RINGS calls. */
  resetCalls: number;
}

/** A reported page: its slot (as_id << 16 | id), slot-relative page, and the vCPU whose ring held it (-1: a bitmap). */
export type OnPage = (slot: number, offset: number, vcpu: number) => void;

export interface LogMode {
  /** The mode's short name: "bitmap", "manual:262144", "ring:4096", "ring:4096+pml". */
  readonly name: string;
  readonly spec: Readonly<Required<LogModeSpec>>;
  /** VM options the mode needs at KVM_CREATE_VM (PML). */
  readonly vmOptions: Readonly<Pick<VmOptions, "pml">>;
  /** create_vm_done: enable the mode's capabilities (before memslots and vCPUs). */
  createVmDone(vm: Vm): void;
  /** The memslot flags a tracked slot needs. */
  readonly slotFlags: number;
  /**
   * collect_dirty_pages: harvest every logged slot of `slots` (ring: every vCPU's ring),
   * re-arm, then hand each reported page to `onPage`. Returns what was done.
   */
  collectDirtyPages(vm: Vm, slots: readonly number[], onPage: OnPage): HarvestCounts;
  /** Bytes the mode keeps to track `pages` pages with `vcpus` vCPUs (bitmaps, or rings + the core's copies). */
  trackingBytes(pages: number, vcpus: number): number;
}

const KINDS: Record<LogModeKind, true> = { "dirty-log": true, "clear-log": true, "dirty-ring": true };
const CLEAR_CHUNK = 262144;

function counts(): HarvestCounts {
  return { reported: 0, getCalls: 0, bitmapWords: 0, clearCalls: 0, ringEntries: 0, ringResets: 0, resetCalls: 0 };
}

/** Bytes of a slot's bitmap (KVM_GET_DIRTY_LOG's buffer): ALIGN(pages, 64) / 8. */
const bitmapBytes = (pages: number) => Math.ceil(pages / 64) * 8;

/** Call onPage for each set bit of a dirty log (bit p = page p), skipping zero words. */
function forEachBit(bitmap: Uint8Array, slot: number, onPage: OnPage): number {
  const words = new Uint32Array(bitmap.buffer, bitmap.byteOffset, bitmap.byteLength >> 2);
  let n = 0;
  for (let i = 0; i < words.length; i++) {
    let w = words[i];
    while (w !== 0) {
      const low = w & -w;
      onPage(slot, i * 32 + 31 - Math.clz32(low), -1);
      w ^= low;
      n++;
    }
  }
  return n;
}

/** The LogMode for a spec (validated: EINVAL for a bad spec). */
export function logMode(spec: LogModeSpec): LogMode {
  const call = "logMode";
  const o = object<LogModeSpec>(spec, "spec", call, false);
  known(o, ["kind", "ringEntries", "pml", "clearChunkPages", "initiallySet"], call);
  const kind = oneOf(o.kind, KINDS, "kind", call);
  const pml = o.pml === true;
  if (o.pml !== undefined && typeof o.pml !== "boolean")
    throw new KvmError("EINVAL", call, "pml must be true or false");
  if (o.initiallySet !== undefined && typeof o.initiallySet !== "boolean") {
    throw new KvmError("EINVAL", call, "initiallySet must be true or false");
  }
  const ringEntries = kind === "dirty-ring" ? int(o.ringEntries ?? 4096, "ringEntries", call, 256, 65536) : 0;
  const reserve = 64 + (pml ? 512 : 0);
  if (kind === "dirty-ring" && ((ringEntries & (ringEntries - 1)) !== 0 || ringEntries < reserve)) {
    throw new KvmError(
      "EINVAL",
      call,
      `ringEntries ${ringEntries} must be a power of two of at least ${Math.max(256, reserve)}`,
    );
  }
  const clearChunkPages =
    kind === "clear-log" ? int(o.clearChunkPages ?? CLEAR_CHUNK, "clearChunkPages", call, 64, 2 ** 31) : 0;
  if (clearChunkPages % 64 !== 0)
    throw new KvmError("EINVAL", call, `clearChunkPages ${clearChunkPages} is not a multiple of 64`);
  const initiallySet = kind === "clear-log" && o.initiallySet === true;
  const full: Required<LogModeSpec> = { kind, ringEntries, pml, clearChunkPages, initiallySet };
  const suffix = pml ? "+pml" : "";
  switch (kind) {
    case "dirty-log":
      return bitmapMode(`bitmap${suffix}`, full);
    case "clear-log":
      return bitmapMode(`manual:${clearChunkPages}${initiallySet ? "+initially-set" : ""}${suffix}`, full);
    case "dirty-ring":
      return ringMode(`ring:${ringEntries}${suffix}`, full);
  }
}

function bitmapMode(name: string, spec: Required<LogModeSpec>): LogMode {
  const manual = spec.kind === "clear-log";
  return {
    name,
    spec,
    vmOptions: { pml: spec.pml },
    slotFlags: KVM_MEM_LOG_DIRTY_PAGES,
    createVmDone(vm) {
      if (!manual) return;
      const flags = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (spec.initiallySet ? KVM_DIRTY_LOG_INITIALLY_SET : 0);
      vm.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [flags]);
    },
    collectDirtyPages(vm, slots, onPage) {
      const c = counts();
      // PML buffers drain into the bitmap at every exit: kick so a running vCPU exits now
      if (spec.pml) for (const v of vm.vcpuList) v.kick();
      // a harvest started from inside onPage must not overwrite the bitmap being handed out
      const reuse = !harvesting.has(vm);
      harvesting.add(vm);
      try {
        for (const slot of slots) {
          const bitmap = vm.getDirtyLog(slot, reuse ? bitmapBuffer(vm, slot) : undefined);
          c.getCalls++;
          c.bitmapWords += bitmap.byteLength >> 3;
          if (manual) {
            // re-arm before handing pages out: CLEAR the chunks that hold a set bit
            const npages = slotPages(vm, slot);
            for (let first = 0; first < npages; first += spec.clearChunkPages) {
              const chunk = bitmap.subarray(
                first >> 3,
                Math.min(bitmap.byteLength, (first + spec.clearChunkPages) >> 3),
              );
              if (!chunk.some((b) => b !== 0)) continue;
              vm.clearDirtyLog(slot, first, Math.min(spec.clearChunkPages, npages - first), chunk);
              c.clearCalls++;
            }
          }
          c.reported += forEachBit(bitmap, slot, onPage);
        }
      } finally {
        if (reuse) harvesting.delete(vm);
      }
      return c;
    },
    trackingBytes(pages) {
      // the live bitmap and the second one GET hands out (the kernel's dirty_bitmap is 2×)
      return 2 * bitmapBytes(pages);
    },
  };
}

function ringMode(name: string, spec: Required<LogModeSpec>): LogMode {
  return {
    name,
    spec,
    vmOptions: { pml: spec.pml },
    slotFlags: KVM_MEM_LOG_DIRTY_PAGES,
    createVmDone(vm) {
      vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [spec.ringEntries * 16]);
    },
    collectDirtyPages(vm, _slots, onPage) {
      const c = counts();
      const vcpus = vm.vcpuList;
      // kvm_dirty_ring_flush: kick every vCPU so PML buffers reach the rings
      if (spec.pml) for (const v of vcpus) v.kick();
      // collect every ring into its vCPU's buffer, re-arm, then hand out from the buffers
      // (held meanwhile: a harvest started from onPage takes fresh arrays)
      holdingRingBuffers(vm, () => {
        const batches = vcpus.map(collectDirtyRingInPlace);
        for (const b of batches) c.ringEntries += b.n;
        c.ringResets = vm.resetDirtyRings(); // re-arm first, hand out after
        c.resetCalls = 1;
        for (let i = 0; i < batches.length; i++) {
          const { n, slots, offsets } = batches[i];
          for (let k = 0; k < n; k++) onPage(slots[k], offsets[k], i);
        }
      });
      c.reported = c.ringEntries;
      return c;
    },
    trackingBytes(_pages, vcpus) {
      // the shared ring and the core's private copy of each entry
      return 2 * spec.ringEntries * 16 * vcpus;
    },
  };
}

/**
 * The buffer a VM's bitmap harvests of one slot reuse (a VMM keeps its dirty bitmap; a
 * fresh one per GET costs a page fault per 4 KiB here). Grows with the slot, never shrinks.
 */
const bitmapBuffers = new WeakMap<Vm, Map<number, Uint8Array>>();
/** VMs whose bitmap harvest is handing pages out (their buffers are in use). */
const harvesting = new WeakSet<Vm>();

function bitmapBuffer(vm: Vm, slot: number): Uint8Array {
  let bySlot = bitmapBuffers.get(vm);
  if (!bySlot) {
    bySlot = new Map();
    bitmapBuffers.set(vm, bySlot);
  }
  const bytes = Math.ceil(slotPages(vm, slot) / 64) * 8;
  let b = bySlot.get(slot);
  if (!b || b.byteLength < bytes) {
    b = new Uint8Array(bytes);
    bySlot.set(slot, b);
  }
  return b;
}

function slotPages(vm: Vm, slot: number): number {
  const s = vm.memslots().find((m) => m.slot === slot);
  return s ? s.npages : 0;
}

/**
 * Parse a mode as the CLI writes it: `bitmap`, `manual[:CHUNK]` (CHUNK pages, k/m
 * suffixes: `manual:256k`), `ring[:ENTRIES]` (`ring:4096`), each optionally `+pml`.
 */
export function parseLogMode(text: string): LogMode {
  const call = "logMode";
  const m = /^(bitmap|dirty-log|manual|clear-log|ring|dirty-ring)(?::(\d+)([km]?))?(\+pml)?$/i.exec(text.trim());
  if (!m)
    throw new KvmError(
      "EINVAL",
      call,
      `mode ${JSON.stringify(text)} is not bitmap, manual[:CHUNK] or ring[:ENTRIES], with an optional +pml`,
    );
  const word = m[1].toLowerCase();
  const n = m[2] === undefined ? undefined : Number(m[2]) * (m[3] === "k" ? 1024 : m[3] === "m" ? 1 << 20 : 1);
  const pml = m[4] !== undefined;
  if (word === "bitmap" || word === "dirty-log") {
    if (n !== undefined) throw new KvmError("EINVAL", call, `mode ${JSON.stringify(text)}: bitmap takes no size`);
    return logMode({ kind: "dirty-log", pml });
  }
  if (word === "manual" || word === "clear-log") return logMode({ kind: "clear-log", clearChunkPages: n, pml });
  return logMode({ kind: "dirty-ring", ringEntries: n, pml });
}

/** The LogMode a VM is set up for: its ring, else manual protect, else classic GET. */
export function logModeOf(vm: Vm): LogMode {
  if (vm.dirtyRingSize !== 0) return logMode({ kind: "dirty-ring", ringEntries: vm.dirtyRingSize / 16, pml: vm.pml });
  if (vm.manualDirtyLogProtect) return logMode({ kind: "clear-log", pml: vm.pml });
  return logMode({ kind: "dirty-log", pml: vm.pml });
}
