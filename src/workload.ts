// Guest workloads as the host describes them; the core's workload.ts executes them.
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

/** Zipf(s) CDF over `pages` ranks, scaled to 2^32 (u32), for the core's binary search. */
export function zipfCdf(pages: number, s: number): Uint32Array {
  const w = new Float64Array(pages);
  let total = 0;
  for (let r = 0; r < pages; r++) total += w[r] = 1 / (r + 1) ** s;
  const cdf = new Uint32Array(pages);
  let acc = 0;
  for (let r = 0; r < pages; r++) {
    acc += w[r];
    cdf[r] = Math.min(0xffffffff, Math.floor((acc / total) * 0x1_0000_0000));
  }
  cdf[pages - 1] = 0xffffffff;
  return cdf;
}

const zipfTables = new WeakMap<Vm, Map<number, { addr: number; bytes: number }>>();

/** Write a workload into a vCPU block. */
export function writeWorkload(vm: Vm, vcpu: number, w: Workload): void {
  const call = "setWorkload";
  const kind = PATTERNS[w.pattern];
  const pages = w.pages >>> 0;
  const gpa = BigInt(w.gpa);
  if (kind === undefined || pages === 0 || gpa % 4096n !== 0n) throw new KvmError("EINVAL", call);
  const v = new DataView(vm.memory.buffer);
  const batch = w.batch ?? 4096;
  const stride = w.stride ?? 1;
  if (!(batch > 0) || !(stride > 0)) throw new KvmError("EINVAL", call);
  let zipf = 0;
  const tables = zipfTables.get(vm) ?? new Map();
  zipfTables.set(vm, tables);
  const old = tables.get(vcpu);
  if (old) {
    vm.releaseRegion(old.addr, old.bytes);
    tables.delete(vcpu);
  }
  if (w.pattern === "zipf") {
    const cdf = zipfCdf(pages, w.zipfS ?? 1);
    zipf = vm.allocRegion(cdf.byteLength, 64);
    new Uint32Array(vm.memory.buffer, zipf, pages).set(cdf);
    tables.set(vcpu, { addr: zipf, bytes: cdf.byteLength });
  }
  v.setUint32(vcpu + L.VCPU_WL_KIND, kind, true);
  v.setUint32(vcpu + L.VCPU_WL_BATCH, batch >>> 0, true);
  v.setBigUint64(vcpu + L.VCPU_WL_BASE, gpa, true);
  v.setUint32(vcpu + L.VCPU_WL_PAGES, pages, true);
  v.setUint32(vcpu + L.VCPU_WL_STRIDE, stride >>> 0, true);
  v.setUint32(vcpu + L.VCPU_WL_CURSOR, 0, true);
  v.setUint32(vcpu + L.VCPU_WL_HOT_PAGES, (w.hotPages ?? 0) >>> 0, true);
  v.setUint32(vcpu + L.VCPU_WL_HOT_FRAC, Math.round(Math.min(1, Math.max(0, w.hotFraction ?? 0.9)) * 65535), true);
  v.setUint32(vcpu + L.VCPU_WL_ZIPF, zipf, true);
  v.setBigUint64(vcpu + L.VCPU_WL_PENDING, 0n, true);
  v.setBigUint64(vcpu + L.VCPU_WL_LIMIT, BigInt(w.limit ?? 0), true);
  v.setBigUint64(vcpu + L.VCPU_WL_DONE, 0n, true);
  if (w.seed !== undefined) v.setBigUint64(vcpu + L.VCPU_RNG, BigInt.asUintN(64, w.seed) || 1n, true);
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
