// measure — the memory floors bench/micro.js quotes beside re-protection: one pass over
// `n` consecutive u64 words (SPTE-sized) that flips `bits` in each, with a plain load +
// store or with an atomic read-modify-write. Not a KVM function; nothing else calls them.

/** Flip `bits` in each of n u64 at addr with a plain load and store. Returns the last word. */
export function measure_plain_pass(addr: usize, n: u32, bits: u64): u64 {
  let last: u64 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const p = addr + (<usize>i << 3);
    last = load<u64>(p) ^ bits;
    store<u64>(p, last);
  }
  return last;
}

/**
 * Flip `bits` in every `stride`-th u64 from addr, n of them, with a plain load and store
 * (the floor of re-protecting scattered pages). Returns the last word.
 */
export function measure_plain_pass_strided(addr: usize, n: u32, stride: u32, bits: u64): u64 {
  let last: u64 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const p = addr + ((<usize>i * <usize>stride) << 3);
    last = load<u64>(p) ^ bits;
    store<u64>(p, last);
  }
  return last;
}

/** Flip `bits` in each of n u64 at addr with an atomic xor. Returns the last old word. */
export function measure_atomic_pass(addr: usize, n: u32, bits: u64): u64 {
  let last: u64 = 0;
  for (let i: u32 = 0; i < n; i++) last = atomic.xor<u64>(addr + (<usize>i << 3), bits);
  return last;
}
