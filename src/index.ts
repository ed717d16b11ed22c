// dirtlog — a model of Linux KVM's guest-memory dirty tracking over a WebAssembly core.
export * from "./constants.js";
export { KvmError, ERRNO, type ErrnoName } from "./errors.js";
export { createVm, Vm, type VmOptions, type UserMemoryRegion, type VmStats, type MemslotInfo } from "./vm.js";
export { Vcpu, type VcpuStats, type DirtyRingState } from "./vcpu.js";
export { GfnToHvaCache, GfnToPfnCache } from "./pfncache.js";
export type { PageTrackNotifier } from "./page_track.js";
export { buildPageTables, type GuestMapping, type PageTables } from "./paging.js";
export {
  RUNSTATE_running,
  RUNSTATE_runnable,
  RUNSTATE_blocked,
  RUNSTATE_offline,
  XEN_RUNSTATE_UPDATE,
  XEN_RUNSTATE_LAYOUT,
  type XenRunstate,
} from "./xen.js";
export { coreModule, type CoreSource } from "./core.js";
export { capabilities, type Capabilities } from "./capabilities.js";
export { collectDirtyRing, harvestDirtyRings, type HarvestOptions, type RingHarvest } from "./dirty_ring_collector.js";
export { type Workload, type WorkloadPattern, splitRegion, zipfCdf } from "./workload.js";
export { runDirtyLogTest, type DirtyLogTestOptions, type DirtyLogTestResult } from "./dirty_log_test.js";
export {
  logMode,
  logModeOf,
  parseLogMode,
  type LogMode,
  type LogModeKind,
  type LogModeSpec,
  type HarvestCounts,
  type OnPage,
} from "./log_mode.js";
export { migrate, hashMemory, type MigrateOptions, type MigrationResult, type MigrationRound } from "./migrate.js";
export {
  startDirtyLimit,
  setDirtyLimitThrottle,
  setCpuThrottle,
  CPU_THROTTLE,
  PAGES_PER_MB,
  type DirtyLimit,
  type DirtyLimitOptions,
  type DirtyLimitState,
  type DirtyLimitVcpuState,
} from "./dirtylimit.js";
export {
  measureDirtyRate,
  sampleCount,
  DIRTYRATE_DEFAULTS,
  SAMPLE_PAGES_RANGE,
  type DirtyRateOptions,
  type DirtyRateResult,
  type DirtyRateRun,
  type DirtyRateTruth,
  type DirtyRateMethod,
  type DirtyRateMethodResult,
  type SamplingResult,
  type RingResult,
  type RingVcpuResult,
  type BitmapResult,
  type Rate,
  type DirtyRateProgress,
} from "./dirtyrate.js";
