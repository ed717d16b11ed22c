// Browser-safe helpers shared by the HTML report (src/report_html.ts) and the live demo page
// (web/): number formatting, the one-line scenario summary, and the data the charts plot,
// shaped from a mode's timeline exactly as the report's inline script shapes it (rates per
// harvest interval). No node: imports here: the demo page bundles this module.
import type { CompareScenario, HarvestPoint } from "./compare_types.js";

export function fmtNum(v: number, digits = 0): string {
  if (!Number.isFinite(v)) return String(v);
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** 1234567 → "1.23 M". */
export function fmtSi(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toPrecision(3)} G`;
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)} M`;
  if (a >= 1e3) return `${(v / 1e3).toPrecision(3)} k`;
  return fmtNum(v, Number.isInteger(v) ? 0 : 1);
}

export function fmtBytes(b: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = b;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

export function fmtMs(ms: number): string {
  return ms >= 1000 && ms % 100 === 0 ? `${ms / 1000} s` : `${fmtNum(ms)} ms`;
}

function patternText(s: CompareScenario): string {
  const extra: string[] = [];
  if (s.pattern === "hot-set") {
    if (s.hotFraction !== undefined) extra.push(`${fmtNum(s.hotFraction * 100)}% of stores`);
    if (s.hotPagesFraction !== undefined) extra.push(`to ${fmtNum(s.hotPagesFraction * 100)}% of pages`);
  }
  if (s.pattern === "zipf" && s.zipfS !== undefined) extra.push(`s=${s.zipfS}`);
  if (s.pattern === "strided" && s.stride !== undefined) extra.push(`stride ${s.stride}`);
  return extra.length ? `${s.pattern} (${extra.join(" ")})` : s.pattern;
}

/** One line: memory, vCPUs, pattern, dirty rate, duration, interval. */
export function scenarioSummary(s: CompareScenario): string {
  const rate =
    s.dirtyRatePagesPerSec > 0 ? `${fmtSi(s.dirtyRatePagesPerSec)} stores/s per vCPU` : "stores as fast as they go";
  return [
    `${fmtBytes(s.memoryBytes)}${s.backed ? " backed" : ""}`,
    `${s.vcpus} vCPU${s.vcpus === 1 ? "" : "s"}`,
    patternText(s),
    rate,
    `${fmtMs(s.durationMs)} run`,
    `harvest every ${fmtMs(s.intervalMs)}`,
  ].join(" · ");
}

/** What the time charts plot for one mode: one value per harvest (null where undefined). */
export interface HarvestSeries {
  /** Seconds since the mode's vCPUs started. */
  t: number[];
  /** Harvest latency, µs. */
  latencyUs: number[];
  /** Guest stores per second over the interval the harvest closed (all vCPUs). */
  writtenPerSec: (number | null)[];
  /** Pages reported per second over the same interval. */
  reportedPerSec: (number | null)[];
  /** perVcpu[v][k]: vCPU v's stores per second over harvest k's interval. */
  perVcpu: (number | null)[][];
}

const rate = (n: number, dt: number): number | null => (dt > 0 ? n / dt : null);

/**
 * The charts' data for a mode's harvests (timeline[k] and vcpuStores[k], cumulative per
 * vCPU), as the report plots it: rates over the time since the previous harvest.
 */
export function harvestSeries(
  timeline: readonly HarvestPoint[],
  vcpuStores: readonly number[][],
  vcpus: number,
): HarvestSeries {
  let prev = 0;
  const dt = timeline.map((p) => {
    const d = (p.tMs - prev) / 1000;
    prev = p.tMs;
    return d;
  });
  const perVcpu: (number | null)[][] = [];
  for (let v = 0; v < vcpus; v++) {
    let last = 0;
    perVcpu.push(
      timeline.map((_, k) => {
        const c = vcpuStores[k]?.[v];
        if (c === undefined) return null;
        const r = rate(c - last, dt[k]);
        last = c;
        return r;
      }),
    );
  }
  return {
    t: timeline.map((p) => p.tMs / 1000),
    latencyUs: timeline.map((p) => p.latencyUs),
    writtenPerSec: timeline.map((p, k) => rate(p.stores, dt[k])),
    reportedPerSec: timeline.map((p, k) => rate(p.reported, dt[k])),
    perVcpu,
  };
}
