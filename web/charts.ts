// The live charts (uPlot): harvest latency, dirty rate written vs reported, per-vCPU store
// rates. Every point is one harvest as the engine timed it; the rates are shaped by the
// same helper the HTML report's charts follow (src/report_charts.ts harvestSeries).
import uPlot from "uplot";
import type { HarvestPoint } from "../dist/compare_types.js";
import { harvestSeries } from "../dist/report_charts.js";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22"];
const DASHES = [[], [7, 4], [2, 3], [10, 3, 2, 3], [4, 4]];
const color = (i: number) => PALETTE[i % PALETTE.length];

function si(v: number | null | undefined): string {
  if (v == null) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toPrecision(3)}k`;
  return `${+v.toPrecision(3)}`;
}

/** A mode's harvests so far. */
export interface ModeSeries {
  mode: string;
  timeline: HarvestPoint[];
  vcpuStores: number[][];
}

export const CHARTS = [
  ["latency", "Harvest latency", "µs per harvest; each point is one harvest (x: time since the mode's vCPUs started)."],
  [
    "dirty-rate",
    "Dirty rate: written vs reported",
    "Pages per second: stored by the guest (solid) vs reported by the collector (dashed).",
  ],
  ["vcpu-rate", "Per-vCPU store rate", "Guest stores per second for each vCPU (dash pattern = vCPU)."],
] as const;

export type ChartName = (typeof CHARTS)[number][0];

const timeSeries = { label: "t", value: (_u: uPlot, v: number | null) => (v == null ? "–" : `${v.toFixed(3)} s`) };

function line(label: string, i: number, dash: number[] = []): uPlot.Series {
  return {
    label,
    stroke: color(i),
    width: 1.75,
    dash,
    spanGaps: true,
    points: { show: true, size: 4, fill: color(i) },
    value: (_u, v) => si(v),
  };
}

const axes = (label: string): uPlot.Axis[] => [
  { stroke: "#4a5563", values: (_u, s) => s.map((v) => `${+v.toPrecision(4)} s`), grid: { stroke: "#eef0f2" } },
  { stroke: "#4a5563", label, values: (_u, s) => s.map((v) => si(v)), size: 56, grid: { stroke: "#eef0f2" } },
];

/** The three charts of one run; `update` redraws them from the harvests so far. */
export class LiveCharts {
  private readonly plots = new Map<ChartName, uPlot>();

  constructor(
    private readonly root: HTMLElement,
    private readonly modes: string[],
    private readonly vcpus: number,
  ) {
    for (const [name] of CHARTS) {
      const box = root.querySelector<HTMLElement>(`[data-chart="${name}"]`);
      const el = box?.querySelector<HTMLElement>(".plot");
      if (!box || !el) throw new Error(`no chart box ${name}`);
      el.replaceChildren();
      delete box.dataset.drawn;
      const opts: uPlot.Options = {
        width: Math.max(320, el.clientWidth || 600),
        height: 240,
        scales: { x: { time: false } },
        series: [timeSeries, ...this.seriesOf(name)],
        axes: axes(name === "latency" ? "µs" : name === "dirty-rate" ? "pages / s" : "stores / s"),
        legend: { live: false },
        hooks: {
          draw: [
            (u) => {
              const b = u.bbox;
              box.dataset.bbox = [b.left, b.top, b.width, b.height].map(Math.round).join(",");
              if (u.data[0].length > 0) box.dataset.drawn = "1";
            },
          ],
        },
      };
      this.plots.set(name, new uPlot(opts, this.empty(opts.series.length), el));
    }
  }

  private seriesOf(name: ChartName): uPlot.Series[] {
    if (name === "latency") return this.modes.map((m, i) => line(m, i));
    if (name === "dirty-rate") {
      return this.modes.flatMap((m, i) => [line(`${m} written`, i), line(`${m} reported`, i, [6, 4])]);
    }
    return this.modes.flatMap((m, i) =>
      Array.from({ length: this.vcpus }, (_, v) => line(`${m} vCPU ${v}`, i, DASHES[v % DASHES.length])),
    );
  }

  private empty(n: number): uPlot.AlignedData {
    return Array.from({ length: n }, () => []) as unknown as uPlot.AlignedData;
  }

  /** Redraw from each mode's harvests so far (modes not started yet have none). */
  update(series: ModeSeries[]): void {
    const shaped = series.map((s) => harvestSeries(s.timeline, s.vcpuStores, this.vcpus));
    const tables = (pick: (k: number) => (number | null)[][]): uPlot.AlignedData[] =>
      shaped.flatMap((h, k) => pick(k).map((ys) => [h.t, ys] as unknown as uPlot.AlignedData));
    const data: Record<ChartName, uPlot.AlignedData[]> = {
      latency: tables((k) => [shaped[k].latencyUs]),
      "dirty-rate": tables((k) => [shaped[k].writtenPerSec, shaped[k].reportedPerSec]),
      "vcpu-rate": tables((k) => shaped[k].perVcpu),
    };
    for (const [name, u] of this.plots) {
      const t = data[name];
      const joined = t.some((d) => d[0].length > 0) ? uPlot.join(t) : this.empty(u.series.length);
      u.setData(joined);
    }
  }

  resize(): void {
    for (const u of this.plots.values()) {
      const el = u.root.parentElement;
      if (el) u.setSize({ width: Math.max(320, el.clientWidth), height: 240 });
    }
  }

  destroy(): void {
    for (const u of this.plots.values()) u.destroy();
    this.plots.clear();
  }
}
