// Xen runstate area, host side (the core's is assembly/xen.ts): the state numbers, the
// structure's layouts and the clock its times are kept in. vcpu.setXenRunstateArea and
// vcpu.updateXenRunstate are the calls; a vCPU's worker loop updates the area itself
// (running in KVM_RUN, runnable between runs, the latter in atomic context).

/** Xen's runstate numbers (xen/include/public/vcpu.h). */
export const RUNSTATE_running = 0;
export const RUNSTATE_runnable = 1;
export const RUNSTATE_blocked = 2;
export const RUNSTATE_offline = 3;
/** Bit 63 of state_entry_time: set while KVM rewrites the structure (guests re-read). */
export const XEN_RUNSTATE_UPDATE = 1n << 63n;

/** struct vcpu_runstate_info (64-bit guest) and its compat (32-bit) layout. */
export const XEN_RUNSTATE_LAYOUT = {
  long: { size: 0x30, state: 0, stateEntryTime: 8, time: 16 },
  compat: { size: 0x2c, state: 0, stateEntryTime: 4, time: 12 },
} as const;

/** INVALID_GPA: no runstate area. */
export const NO_RUNSTATE_AREA = 0xffff_ffff_ffff_ffffn;

const hrtime = (globalThis as { process?: { hrtime?: { bigint?: () => bigint } } }).process?.hrtime?.bigint;

/**
 * The host clock in ns, one origin for every thread of the process: Node's monotonic
 * process.hrtime (ns resolution); in browsers the epoch-based performance clock (about a
 * quarter of a µs: consecutive updates may share a time).
 */
export function clockNs(): bigint {
  return hrtime ? hrtime() : BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
}

/**
 * get_kvmclock_ns, the clock of runstate times: ns since the VM was created (its base is
 * in the VM block, VM_KVMCLOCK_BASE, so vCPU threads read the same clock).
 */
export function kvmclockNs(base: bigint): bigint {
  const now = clockNs() - base;
  return now > 0n ? now : 1n;
}

/** What KVM keeps for a vCPU's runstate (vcpu.xenRunstate). */
export interface XenRunstate {
  /** The area's gpa, or undefined when none is set. */
  gpa: bigint | undefined;
  compat: boolean;
  /** current_runstate (RUNSTATE_*). */
  state: number;
  /** runstate_entry_time, ns. */
  entryTime: bigint;
  /** runstate_times: ns spent in each state. */
  times: [bigint, bigint, bigint, bigint];
  /** Guest copies written, and skipped (atomic context: lock contended or a cache invalid). */
  updates: number;
  skipped: number;
}
