// Guest workloads as the host describes them; the core's workload.ts executes them.
import { finite, int, object, oneOf, u64 } from "./args.js";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";
import type { Vm } from "./vm.js";

export type WorkloadPattern = "sequential" | "uniform" | "hot-set" | "zipf" | "strided";

export interface Workload {
  pattern: WorkloadPattern;
  /** First guest-physical address of the region the vCPU writes (page aligned). */
  gpa: number | bigint;
  /** Pages in the region. */
  pages: number;
  /** Stores per KVM_RUN before KVM_EXIT_IO (default 4096). */
  batch?: number;
  /** Stores after which KVM_RUN exits with KVM_EXIT_SHUTDOWN (default 0 = never). */
  limit?: number | bigint;
  /** strided: pages between stores. */
  stride?: number;
  /** hot-set: the hot set is the first `hotPages` pages of the region… */
  hotPages?: number;
  /** …and receives this share of the stores (0..1). */
  hotFraction?: number;
  /** zipf: the exponent s (rank r is drawn with weight 1 / r^s; rank 0 = first page). */
  zipfS?: number;
  /** RNG seed (non-zero); default derived from the vCPU id. */
  seed?: bigint;
}

const PATTERNS: Record<WorkloadPattern, number> = { sequential: 0, uniform: 1, "hot-set": 2, zipf: 3, strided: 4 };
const FIELDS = ["pattern", "gpa", "pages", "batch", "limit", "stride", "hotPages", "hotFraction", "zipfS", "seed"];
const U32_MAX = 0xffff_ffff;

/**
 * Write the Zipf(s) CDF over `pages` ranks, scaled to 2^32 (u32), into `out` for the core's
 * binary search. Two passes over the ranks and no table of weights: a large region costs
 * no JS memory beyond `out` itself.
 */
export function zipfCdf(pages: number, s: number, out = new Uint32Array(pages)): Uint32Array {
  let total = 0;
  for (let r = 0; r < pages; r++) total += 1 / (r + 1) ** s;
  let acc = 0;
  for (let r = 0; r < pages; r++) {
    acc += 1 / (r + 1) ** s;
    out[r] = Math.min(U32_MAX, Math.floor((acc / total) * 0x1_0000_0000));
  }
  out[pages - 1] = U32_MAX;
  return out;
}

const zipfTables = new WeakMap<Vm, Map<number, { addr: number; bytes: number }>>();

/**
 * Write a workload into a vCPU block (the caller holds the vCPU's mutex). Everything is
 * validated and the Zipf table allocated before the first field is written, so a rejected
 * workload (EINVAL, ENOMEM) leaves the previous one intact and running as it was.
 */
export function writeWorkload(vm: Vm, vcpu: number, workload: Workload): void {
  const call = "setWorkload";
  const w = object<Workload>(workload, "workload", call, false);
  for (const k of Object.keys(w)) {
    if (!FIELDS.includes(k)) throw new KvmError("EINVAL", call, `unknown workload field ${JSON.stringify(k)}`);
  }
  const pattern = oneOf(w.pattern, PATTERNS, "pattern", call);
  const gpa = u64(w.gpa, "gpa", call);
  if (gpa % 4096n !== 0n) throw new KvmError("EINVAL", call, `gpa 0x${gpa.toString(16)} is not page-aligned`);
  const pages = int(w.pages, "pages", call, 1, U32_MAX);
  if (gpa + BigInt(pages) * 4096n > 1n << 64n) throw new KvmError("EINVAL", call, "the region wraps past 2^64");
  const batch = w.batch === undefined ? 4096 : int(w.batch, "batch", call, 1, U32_MAX);
  const limit = w.limit === undefined ? 0n : u64(w.limit, "limit", call);
  const stride = w.stride === undefined ? 1 : int(w.stride, "stride", call, 1, U32_MAX);
  const hotPages = w.hotPages === undefined ? 0 : int(w.hotPages, "hotPages", call, 0, pages);
  const hotFraction = w.hotFraction === undefined ? 0.9 : finite(w.hotFraction, "hotFraction", call, 0, 1);
  const zipfS = w.zipfS === undefined ? 1 : finite(w.zipfS, "zipfS", call, 0, 64);
  const seed = w.seed === undefined ? undefined : u64(w.seed, "seed", call);
  if (seed === 0n) throw new KvmError("EINVAL", call, "seed must be non-zero (xorshift64*)");

  let zipf = 0;
  const tables = zipfTables.get(vm) ?? new Map<number, { addr: number; bytes: number }>();
  zipfTables.set(vm, tables);
  if (pattern === "zipf") {
    zipf = vm.allocRegion(pages * 4, 64, call); // ENOMEM here changes nothing
    zipfCdf(pages, zipfS, new Uint32Array(vm.memory.buffer, zipf, pages));
  }
  // commit
  const v = new DataView(vm.memory.buffer);
  v.setUint32(vcpu + L.VCPU_WL_KIND, PATTERNS[pattern], true);
  v.setUint32(vcpu + L.VCPU_WL_BATCH, batch, true);
  v.setBigUint64(vcpu + L.VCPU_WL_BASE, gpa, true);
  v.setUint32(vcpu + L.VCPU_WL_PAGES, pages, true);
  v.setUint32(vcpu + L.VCPU_WL_STRIDE, stride, true);
  v.setUint32(vcpu + L.VCPU_WL_CURSOR, 0, true);
  v.setUint32(vcpu + L.VCPU_WL_HOT_PAGES, hotPages, true);
  v.setUint32(vcpu + L.VCPU_WL_HOT_FRAC, Math.round(hotFraction * 65535), true);
  v.setUint32(vcpu + L.VCPU_WL_ZIPF, zipf, true);
  v.setBigUint64(vcpu + L.VCPU_WL_PENDING, 0n, true);
  v.setBigUint64(vcpu + L.VCPU_WL_LIMIT, limit, true);
  v.setBigUint64(vcpu + L.VCPU_WL_DONE, 0n, true);
  if (seed !== undefined) v.setBigUint64(vcpu + L.VCPU_RNG, seed, true);
  // the old table is no longer referenced by the vCPU: now it may go
  const old = tables.get(vcpu);
  tables.delete(vcpu);
  if (old) vm.releaseRegion(old.addr, old.bytes);
  if (zipf) tables.set(vcpu, { addr: zipf, bytes: pages * 4 });
}

/**
 * Regions for n vCPUs over [gpa, gpa + pages pages): one partition each, or the whole
 * region shared by all.
 */
export function splitRegion(gpa: number | bigint, pages: number, n: number, shared = false): Array<{ gpa: bigint; pages: number }> {
  const base = BigInt(gpa);
  if (shared) return Array.from({ length: n }, () => ({ gpa: base, pages }));
  const each = Math.floor(pages / n);
  return Array.from({ length: n }, (_, i) => ({ gpa: base + BigInt(i * each) * 4096n, pages: each }));
}
