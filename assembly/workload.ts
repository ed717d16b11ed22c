// workload — guest write generators executed inside WASM, so that a benchmark measures
// tracking rather than the JS boundary. Parameters live in the vCPU block (VCPU_WL_*),
// written by the host before KVM_RUN; the generator state (cursor, RNG) too.
//
//   WL_SEQUENTIAL  pages 0, 1, 2, … of the region, wrapping
//   WL_UNIFORM     uniform random page
//   WL_HOT_SET     with probability hot_frac a page of the first hot_pages pages, else one of
//                  the others (x % of writes to y % of pages)
//   WL_ZIPF        page = rank drawn from a Zipf(s) CDF the host tabulated (u32, scaled to 2^32)
//   WL_STRIDED     pages 0, stride, 2·stride, … wrapping with an offset of one page per lap
// Every store goes to the first 8 bytes of its page (dirty_log_test's layout).
import {
  VCPU_WL_BASE,
  VCPU_WL_CURSOR,
  VCPU_WL_HOT_FRAC,
  VCPU_WL_HOT_PAGES,
  VCPU_WL_KIND,
  VCPU_WL_PAGES,
  VCPU_WL_STRIDE,
  VCPU_WL_ZIPF,
} from "./layout";

export const WL_SEQUENTIAL: u32 = 0;
export const WL_UNIFORM: u32 = 1;
export const WL_HOT_SET: u32 = 2;
export const WL_ZIPF: u32 = 3;
export const WL_STRIDED: u32 = 4;

/** xorshift64* step; the state must never be 0. */
@inline export function rng_next(state: u64): u64 {
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state;
}

@inline function scaled(r: u64, n: u32): u32 {
  // multiply-shift: uniform in [0, n) from the high 32 bits of the scrambled state
  return <u32>(((r * 0x2545f4914f6cdd1d) >> 32) * <u64>n >> 32);
}

/**
 * Page index (inside the region) of the next store. `r` is a fresh xorshift64* value from
 * the caller's RNG (the random generators consume it; the walks ignore it).
 */
export function workload_next_page(vcpu: usize, r: u64): u32 {
  const pages = load<u32>(vcpu + VCPU_WL_PAGES);
  const kind = load<u32>(vcpu + VCPU_WL_KIND);
  if (kind == WL_SEQUENTIAL || kind == WL_STRIDED) {
    const cursor = load<u32>(vcpu + VCPU_WL_CURSOR);
    const step = kind == WL_SEQUENTIAL ? 1 : load<u32>(vcpu + VCPU_WL_STRIDE);
    store<u32>(vcpu + VCPU_WL_CURSOR, <u32>((<u64>cursor + step) % pages));
    return cursor;
  }
  if (kind == WL_UNIFORM) return scaled(r, pages);
  if (kind == WL_HOT_SET) {
    const hot = load<u32>(vcpu + VCPU_WL_HOT_PAGES);
    if (hot == 0 || hot >= pages) return scaled(r, pages);
    if (<u32>(r & 0xffff) < load<u32>(vcpu + VCPU_WL_HOT_FRAC)) return scaled(r >> 16, hot);
    return hot + scaled(r >> 16, pages - hot);
  }
  // WL_ZIPF: the first rank whose CDF value exceeds u (binary search)
  const cdf = <usize>load<u32>(vcpu + VCPU_WL_ZIPF);
  const u = <u32>((r * 0x2545f4914f6cdd1d) >> 32);
  let lo: u32 = 0;
  let hi: u32 = pages - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (load<u32>(cdf + (<usize>mid << 2)) > u) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** The gpa of a page of the region. */
@inline export function workload_gpa(vcpu: usize, page: u32): u64 {
  return load<u64>(vcpu + VCPU_WL_BASE) + ((<u64>page) << 12);
}
