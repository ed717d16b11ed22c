// Units for the command line: sizes ("24GiB", "512MiB", "4096"), rates ("20k", "800MB/s",
// "max") and durations ("250ms", "5s", "1m"). Each parser returns a number or throws a
// UnitError saying what form it accepts; nothing is guessed (no bare "8G": say GiB or GB).

export class UnitError extends Error {}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  k: 1024,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
};

const NUMBER = /^(\d+(?:\.\d+)?)\s*([a-z/]*)$/i;

/** Bytes: a number with B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB); a bare number is bytes. */
export function parseSize(text: string): number {
  const m = NUMBER.exec(text.trim());
  const unit = m?.[2].toLowerCase() ?? "";
  const scale = unit === "" ? 1 : SIZE_UNITS[unit];
  if (!m || scale === undefined) throw new UnitError("expected a size like 8GiB, 512MiB, 64KiB or a byte count");
  const v = Number(m[1]) * scale;
  if (!Number.isSafeInteger(v)) throw new UnitError("expected a whole number of bytes");
  return v;
}

/**
 * Pages per second: a bare number (k/M suffixes allowed: "20k") is pages/s; bytes per
 * second ("800MB/s", "64MiB/s") are divided by the 4 KiB page; "max" is 0 (unpaced).
 */
export function parseRate(text: string): number {
  const t = text.trim().toLowerCase();
  if (t === "max") return 0;
  const m = /^(\d+(?:\.\d+)?)\s*(k|m)?$/.exec(t);
  if (m) {
    const v = Number(m[1]) * (m[2] === "k" ? 1e3 : m[2] === "m" ? 1e6 : 1);
    if (!(v > 0)) throw new UnitError("expected a rate above 0 (or max)");
    return v;
  }
  const b = /^(\d+(?:\.\d+)?)\s*([a-z]+)\/s$/.exec(t);
  const scale = b ? SIZE_UNITS[b[2]] : undefined;
  if (!b || scale === undefined) throw new UnitError("expected pages/s like 20000 or 20k, bytes/s like 800MB/s, or max");
  const pages = (Number(b[1]) * scale) / 4096;
  if (!(pages > 0)) throw new UnitError("expected a rate above 0 (or max)");
  return pages;
}

/** Milliseconds: a number with ms, s or m ("250ms", "5s", "1m"). */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m)$/i.exec(text.trim());
  if (!m) throw new UnitError("expected a duration like 250ms, 5s or 1m");
  const unit = m[2].toLowerCase();
  return Number(m[1]) * (unit === "ms" ? 1 : unit === "s" ? 1000 : 60_000);
}

/** A size for people: 8 GiB, 512 MiB, 4 KiB, 17 B. */
export function formatSize(bytes: number): string {
  for (const [unit, scale] of [
    ["TiB", 1024 ** 4],
    ["GiB", 1024 ** 3],
    ["MiB", 1024 ** 2],
    ["KiB", 1024],
  ] as const) {
    if (bytes >= scale) {
      const v = bytes / scale;
      return `${Number.isInteger(v) ? v : v.toFixed(1)} ${unit}`;
    }
  }
  return `${bytes} B`;
}

const BIT_UNITS: Record<string, number> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12 };

/**
 * Bytes per second of a link: bits ("10Gbit", "800Mbit/s", decimal, / 8), Ethernet
 * ("10GbE", "1GbE": its bit rate), or bytes per second ("128MB/s", "1GiB/s").
 */
export function parseBandwidth(text: string): number {
  const t = text.trim().toLowerCase();
  const accepted = "expected a bandwidth like 10Gbit, 800Mbit/s, 10GbE or 128MB/s";
  let v: number | undefined;
  const eth = /^(\d+(?:\.\d+)?)\s*(m|g)be$/.exec(t);
  const bits = /^(\d+(?:\.\d+)?)\s*([kmgt]?bit)(?:\/s|ps)?$/.exec(t);
  const bytes = /^(\d+(?:\.\d+)?)\s*([a-z]+)\/s$/.exec(t);
  if (eth) v = (Number(eth[1]) * (eth[2] === "g" ? 1e9 : 1e6)) / 8;
  else if (bits) v = (Number(bits[1]) * BIT_UNITS[bits[2]]) / 8;
  else if (bytes && SIZE_UNITS[bytes[2]] !== undefined) v = Number(bytes[1]) * SIZE_UNITS[bytes[2]];
  if (v === undefined) throw new UnitError(accepted);
  if (!(v > 0)) throw new UnitError("expected a bandwidth above 0");
  return v;
}
