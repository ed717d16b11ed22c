// Messages between the page (main.ts) and the collector worker (collector-worker.ts).
import type { BitmapSnapshot, CompareProgress, CompareResult, CompareScenario, RingSnapshot } from "../dist/compare.js";
import type { HarvestPoint } from "../dist/compare_types.js";
import type { Capabilities, HarvestCounts } from "../dist/index.js";

export type ToCollector = { type: "run"; scenario: CompareScenario };

/** One harvest, as the engine timed it (the same figures the result's timeline holds). */
export interface LivePoint {
  point: HarvestPoint;
  /** Each vCPU's stores since the mode's vCPUs started. */
  vcpuStores: number[];
}

/** The samples of about 50 ms of one mode, batched (the charts need every harvest, the views the latest state). */
export interface SampleBatch {
  type: "samples";
  mode: string;
  index: number;
  points: LivePoint[];
  /** The latest reading of vCPU 0's ring (ring modes). */
  ring?: RingSnapshot;
  /** The last harvest's ring counts, and the entries it collected and reset. */
  ringHarvest?: { tMs: number; counts: HarvestCounts; from: number; to: number };
  /** Bitmap modes: the words the batch's harvests took (pages per word summed, saturating at 255). */
  bitmap?: BitmapSnapshot & { harvests: number; counts: HarvestCounts };
}

export type FromCollector =
  | { type: "ready"; capabilities: Capabilities }
  | { type: "progress"; progress: CompareProgress }
  | SampleBatch
  | { type: "result"; result: CompareResult; wallMs: number }
  | { type: "error"; message: string };
