// Argument validation: values are checked, never coerced. A value that does not fit the
// ioctl structure's field (u32 slot and flags, u64 addresses and sizes) is EINVAL — the
// kernel could never receive it — and so is a wrong type, a fraction, NaN or a missing
// required field. Each check names the field and the value in the KvmError's reason.
import { KvmError } from "./errors.js";

const U64_LIMIT = 1n << 64n;

/** How a rejected value is shown in a reason. */
export function show(value: unknown): string {
  if (typeof value === "bigint") return value >= 0n && value < U64_LIMIT ? `0x${value.toString(16)}` : `${value}n`;
  if (typeof value === "number") return Number.isInteger(value) && value >= 0 ? `0x${value.toString(16)}` : String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? `a ${value.constructor?.name ?? "object"}` : typeof value;
}

function fail(call: string, name: string, value: unknown, problem: string, shown = show(value)): never {
  throw new KvmError("EINVAL", call, `${name} ${shown} ${problem}`);
}

const LIMIT = { 32: 1n << 32n, 64: U64_LIMIT } as const;

/** An unsigned integer field of `bits` bits given as a number or a bigint. */
export function unsigned(value: unknown, bits: 32 | 64, name: string, call: string): bigint {
  // the common case first: a safe non-negative integer number (no BigInt arithmetic)
  if (typeof value === "number" && value >= 0 && value <= Number.MAX_SAFE_INTEGER && Number.isInteger(value)) {
    if (bits === 64 || value <= 0xffff_ffff) return BigInt(value);
    return fail(call, name, value, `does not fit a u${bits}`);
  }
  let v: bigint;
  if (typeof value === "bigint") v = value;
  else if (typeof value === "number" && Number.isInteger(value)) v = BigInt(value);
  else if (typeof value === "number") return fail(call, name, value, "is not an integer");
  else return fail(call, name, value, `must be a number or a bigint (u${bits})`);
  if (v < 0n || v >= LIMIT[bits]) fail(call, name, value, `does not fit a u${bits}`);
  return v;
}

/** A u64 field (addresses, sizes) as a bigint. */
export function u64(value: unknown, name: string, call: string): bigint {
  return unsigned(value, 64, name, call);
}

/** A u32 field (slot ids, flags, counts) as a number. */
export function u32(value: unknown, name: string, call: string): number {
  if (typeof value === "number" && value >= 0 && value <= 0xffff_ffff && Number.isInteger(value)) return value;
  return Number(unsigned(value, 32, name, call));
}

/** An integer (number) in [min, max]. */
export function int(value: unknown, name: string, call: string, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    return fail(call, name, value, typeof value === "number" ? "is not an integer" : "must be an integer");
  }
  // counts and sizes read best in decimal (addresses are shown in hex)
  if (value < min || value > max) fail(call, name, value, `is outside [${min}, ${max}]`, String(value));
  return value;
}

/** A finite number in [min, max]. */
export function finite(value: unknown, name: string, call: string, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isFinite(value)) return fail(call, name, value, "must be a finite number");
  if (value < min || value > max) fail(call, name, value, `is outside [${min}, ${max}]`, String(value));
  return value;
}

/** An optional boolean. */
export function bool(value: unknown, name: string, call: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") fail(call, name, value, "must be true or false");
  return value as boolean;
}

/** A plain options object (undefined allowed when `optional`). */
export function object<T extends object>(value: unknown, name: string, call: string, optional = true): Partial<T> {
  if (value === undefined && optional) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail(call, name, value, "must be an object");
  return value as Partial<T>;
}

/** One of the keys of `choices` (own keys only: "toString" is no choice). */
export function oneOf<K extends string>(value: unknown, choices: Record<K, unknown>, name: string, call: string): K {
  if (typeof value !== "string" || !Object.hasOwn(choices, value)) {
    fail(call, name, value, `is not one of ${Object.keys(choices).join(", ")}`);
  }
  return value as K;
}

/** Reject keys an options object does not know (a misspelt option would be ignored). */
export function known(options: object, keys: readonly string[], call: string): void {
  for (const k of Object.keys(options)) {
    if (!keys.includes(k)) throw new KvmError("EINVAL", call, `unknown option ${JSON.stringify(k)}`);
  }
}
