// Convergence helpers for live migration, as QEMU has them:
//
//   dirty-limit    (system/dirtylimit.c) caps one vCPU's dirty rate by delaying it at its
//                  ring-full exits: the vCPU thread sleeps `throttle_us_per_full` at each
//                  KVM_EXIT_DIRTY_RING_FULL (dirtylimit_vcpu_execute), and a controller
//                  every period (vcpu-dirty-limit-period, 1000 ms) measures each limited
//                  vCPU's dirty rate and adjusts that sleep (dirtylimit_adjust_throttle):
//                  nothing within the tolerance; far from the quota (> 50 % apart) a
//                  proportional step, ring_full_time × sleep_pct / (100 − sleep_pct); near
//                  it a fixed step of ring_full_time / 10; clamped to [0, 99 × ring_full_time],
//                  where ring_full_time = ring size / the highest dirty rate seen.
//   auto-converge  (softmmu/cpu-throttle.c) throttles every vCPU alike: at p %, after each
//                  10 ms timeslice run, the vCPU sleeps p / (100 − p) of it.
//
// The vCPU side is the worker loop (src/vcpu-worker.ts), which reads the two words of its
// vCPU block (VCPU_THROTTLE_US, VCPU_THROTTLE_PCT) and counts its sleeps in
// VCPU_THROTTLE_NS (vcpu.stats.throttleNs). The controller runs on the thread that owns the
// VM (a timer). Rates are measured from the vCPU's ring pushes (its dirty pages, as QEMU
// counts the entries it reaps), in pages/s; MB/s is QEMU's unit, MiB (2^20 bytes) per second.
//
// The tolerance: QEMU's DIRTYLIMIT_TOLERANCE_RANGE is 25 MB/s, meant for quotas of hundreds
// of MB/s; for the small quotas a test or a small modelled guest uses, 25 MB/s would be most
// of the quota. Here it is min(25 MB/s, 5 % of the quota) unless `toleranceMBps` says.
import { KvmError } from "./errors.js";
import * as L from "./layout.js";
import type { Vcpu } from "./vcpu.js";
import { Vm } from "./vm.js";

const PAGE = 4096;
/** Pages/s per MB/s (MiB/s). */
export const PAGES_PER_MB = 2 ** 20 / PAGE;
/** QEMU's DIRTYLIMIT_TOLERANCE_RANGE, MB/s. */
export const DIRTYLIMIT_TOLERANCE_RANGE = 25;
/** QEMU's DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT. */
export const DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT = 50;
/** QEMU's DIRTYLIMIT_THROTTLE_PCT_MAX. */
export const DIRTYLIMIT_THROTTLE_PCT_MAX = 99;
/** QEMU's cpu-throttle parameters (migration/options.c defaults). */
export const CPU_THROTTLE = { initialPct: 20, incrementPct: 10, maxPct: 99 } as const;

export interface DirtyLimitOptions {
  /** Quota per vCPU index, pages/s (an array: index = vCPU index; 0 or missing = no limit). */
  quotaPagesPerSec?: Record<number, number> | number[];
  /** The same in MB/s (MiB/s), QEMU's unit; either this or quotaPagesPerSec. */
  quotaMBps?: Record<number, number> | number[];
  /** The controller's period, ms (QEMU's vcpu-dirty-limit-period) [1000]. */
  periodMs?: number;
  /** Done when |quota − current| is within this, MB/s [min(25, 5 % of the quota)]. */
  toleranceMBps?: number;
  /** Compute the steps but never give them to the vCPUs (for showing what the limit does). */
  dryRun?: boolean;
}

export interface DirtyLimitVcpuState {
  vcpu: number;
  quotaPagesPerSec: number;
  quotaMBps: number;
  /** The rate measured over the last period. */
  currentPagesPerSec: number;
  currentMBps: number;
  /** The sleep at each ring-full exit now in force, µs. */
  throttleUsPerFull: number;
  /** Per period: the measured rate (pages/s) and the throttle set after it (µs). */
  history: Array<{ pagesPerSec: number; throttleUs: number }>;
}

export interface DirtyLimitState {
  periodMs: number;
  periods: number;
  /** The highest per-vCPU dirty rate seen (QEMU's static max_dirtyrate), pages/s. */
  maxPagesPerSec: number;
  vcpus: DirtyLimitVcpuState[];
}

export interface DirtyLimit {
  state(): DirtyLimitState;
  /** Stop the controller and clear the limited vCPUs' throttles. */
  stop(): void;
}

function vcpuWords(vcpu: Vcpu): Uint32Array {
  return new Uint32Array(vcpu.vm.memory.buffer, vcpu.addr + L.VCPU_THROTTLE_US, 2);
}

/** Set a vCPU's dirty-limit sleep per ring-full exit, µs (0 = none). */
export function setDirtyLimitThrottle(vcpu: Vcpu, us: number): void {
  Atomics.store(vcpuWords(vcpu), 0, Math.max(0, Math.min(0xffff_ffff, Math.round(us))));
}

/** Set a vCPU's auto-converge throttle, % of each timeslice slept (0 = none, at most 99). */
export function setCpuThrottle(vcpu: Vcpu, pct: number): void {
  const call = "setCpuThrottle";
  if (!Number.isInteger(pct) || pct < 0 || pct > CPU_THROTTLE.maxPct) {
    throw new KvmError("EINVAL", call, `pct ${String(pct)} is not a whole number from 0 to ${CPU_THROTTLE.maxPct}`);
  }
  Atomics.store(vcpuWords(vcpu), 1, pct);
}

function quotas(o: DirtyLimitOptions, vm: Vm, call: string): Map<number, number> {
  const list = o.quotaPagesPerSec ?? o.quotaMBps;
  if (o.quotaPagesPerSec !== undefined && o.quotaMBps !== undefined)
    throw new KvmError("EINVAL", call, "quotaPagesPerSec or quotaMBps, not both");
  if (list === undefined || typeof list !== "object" || list === null)
    throw new KvmError("EINVAL", call, "a quota (quotaPagesPerSec or quotaMBps) per vCPU index is needed");
  const scale = o.quotaPagesPerSec !== undefined ? 1 : PAGES_PER_MB;
  const out = new Map<number, number>();
  for (const [k, v] of Object.entries(list)) {
    const index = Number(k);
    if (v === undefined || v === 0) continue;
    if (typeof v !== "number" || !(v > 0 && Number.isFinite(v)))
      throw new KvmError("EINVAL", call, `quota of vCPU ${k} ${String(v)} is not a positive number`);
    if (!vm.vcpuList.some((c) => c.id === index)) throw new KvmError("EINVAL", call, `vCPU ${k} does not exist`);
    out.set(index, v * scale);
  }
  if (out.size === 0) throw new KvmError("EINVAL", call, "no vCPU has a quota");
  return out;
}

/** Start QEMU's dirty-limit for some vCPUs of `vm` (which needs a dirty ring). */
export function startDirtyLimit(vm: Vm, options: DirtyLimitOptions): DirtyLimit {
  const call = "startDirtyLimit";
  if (!(vm instanceof Vm)) throw new KvmError("EINVAL", call, "vm must be a Vm from createVm()");
  if (typeof options !== "object" || options === null) throw new KvmError("EINVAL", call, "options must be an object");
  for (const k of Object.keys(options)) {
    if (!["quotaPagesPerSec", "quotaMBps", "periodMs", "toleranceMBps", "dryRun"].includes(k))
      throw new KvmError("EINVAL", call, `unknown option ${k}`);
  }
  vm.checkAlive(call);
  const periodMs = options.periodMs ?? 1000;
  if (typeof periodMs !== "number" || !(periodMs >= 10 && periodMs <= 60_000))
    throw new KvmError("EINVAL", call, `periodMs ${String(periodMs)} is outside [10, 60000]`);
  const tol = options.toleranceMBps;
  if (tol !== undefined && (typeof tol !== "number" || !(tol >= 0 && Number.isFinite(tol))))
    throw new KvmError("EINVAL", call, `toleranceMBps ${String(tol)} is not a number ≥ 0`);
  const quota = quotas(options, vm, call);
  const limited = [...quota.keys()].map((i) => vm.vcpuList.find((c) => c.id === i) as Vcpu);
  const ringEntries = limited[0].dirtyRing.byteLength >> 4;
  if (ringEntries === 0) throw new KvmError("EINVAL", call, "dirty-limit needs a VM with a dirty ring");
  const dryRun = options.dryRun === true;

  const states: DirtyLimitVcpuState[] = limited.map((v) => {
    const q = quota.get(v.id) as number;
    return {
      vcpu: v.id,
      quotaPagesPerSec: q,
      quotaMBps: q / PAGES_PER_MB,
      currentPagesPerSec: 0,
      currentMBps: 0,
      throttleUsPerFull: 0,
      history: [],
    };
  });
  let maxRate = 0;
  let periods = 0;
  let last = limited.map((v) => Number(v.stats.ringPushes));
  let lastT = performance.now();

  const alive = () => {
    try {
      vm.checkAlive(call);
      return true;
    } catch {
      return false;
    }
  };
  let stopped = false;
  const step = () => {
    if (!alive()) {
      // the VM was closed or disposed without stop(): the controller ends with it
      stopped = true;
      clearInterval(timer);
      return;
    }
    const now = performance.now();
    const dt = (now - lastT) / 1000;
    const pushes = limited.map((v) => Number(v.stats.ringPushes));
    lastT = now;
    periods++;
    for (const [i, st] of states.entries()) {
      const current = dt > 0 ? (pushes[i] - last[i]) / dt : 0;
      st.currentPagesPerSec = current;
      st.currentMBps = current / PAGES_PER_MB;
      const q = st.quotaPagesPerSec;
      const tolerance =
        tol !== undefined ? tol * PAGES_PER_MB : Math.min(DIRTYLIMIT_TOLERANCE_RANGE * PAGES_PER_MB, 0.05 * q);
      // dirtylimit_adjust_throttle
      if (Math.abs(q - current) > tolerance) {
        let us = st.throttleUsPerFull;
        if (current === 0) us = 0;
        else {
          // dirtylimit_set_throttle
          if (current > maxRate) maxRate = current;
          const ringFullUs = (ringEntries * 1e6) / maxRate;
          const hi = Math.max(q, current);
          if ((Math.abs(q - current) * 100) / hi > DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT) {
            const sleepPct = Math.floor((Math.abs(q - current) * 100) / hi);
            const t = (ringFullUs * sleepPct) / (100 - sleepPct);
            us += q < current ? t : -t;
          } else us += q < current ? ringFullUs / 10 : -ringFullUs / 10;
          us = Math.max(0, Math.min(us, ringFullUs * DIRTYLIMIT_THROTTLE_PCT_MAX));
        }
        st.throttleUsPerFull = Math.round(us);
        if (!dryRun) setDirtyLimitThrottle(limited[i], st.throttleUsPerFull);
      }
      st.history.push({ pagesPerSec: current, throttleUs: st.throttleUsPerFull });
    }
    last = pushes;
  };
  const timer = setInterval(step, periodMs);
  // like an idle vCPU worker, the controller alone does not keep Node running
  (timer as { unref?: () => void }).unref?.();
  return {
    state: () => ({
      periodMs,
      periods,
      maxPagesPerSec: maxRate,
      vcpus: states.map((s) => ({ ...s, history: [...s.history] })),
    }),
    stop: () => {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      if (alive()) for (const v of limited) setDirtyLimitThrottle(v, 0);
    },
  };
}
