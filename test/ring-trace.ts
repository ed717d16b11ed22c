// Expected dirty-ring contents for a write trace, computed from the kernel's observed rules
// alone (anchors/real-kvm.md "Behaviour observed", spec §3.5–§3.7) — no dirtlog code here.
//
// The replay this models: one vCPU writes the trace in order; the collector harvests every
// published entry and calls KVM_RESET_DIRTY_RINGS
//   - after each write whose index is in `batchEnds`,
//   - whenever a write exits with KVM_EXIT_DIRTY_RING_FULL (then the same write is retried),
//   - once at the end.
// Rules:
//   - one entry per (slot, page) per epoch (between resets), in the order of first writes;
//   - the ring exits when it holds `entries − reserve` entries (the soft limit); the write
//     that pushed the entry reaching the limit did not retire;
//   - the reset re-arms that page, so the retried write pushes it again: one duplicate per
//     ring-full exit.

export interface TraceWrite {
  /** as_id << 16 | id */
  slot: number;
  /** slot-relative page index */
  offset: number;
}

export interface ExpectedReplay {
  /** Entries of each harvest in ring order, as "slot:offset". */
  harvests: string[][];
  /** Trace indices of the writes that took a ring-full exit. */
  exits: number[];
  /** Entries pushed again for the page being written at a ring-full exit (one per exit). */
  duplicates: number;
  /** Total entries pushed. */
  pushes: number;
}

export const entryKey = (slot: number, offset: number): string => `${slot}:${offset}`;

export function expectedReplay(
  trace: readonly TraceWrite[],
  entries: number,
  batchEnds: ReadonlySet<number>,
  reserve = 64,
): ExpectedReplay {
  const softLimit = entries - reserve;
  const harvests: string[][] = [];
  const exits: number[] = [];
  let current: string[] = [];
  let epoch = new Set<string>();
  let duplicates = 0;
  let pushes = 0;
  const harvestAndReset = (): void => {
    harvests.push(current);
    current = [];
    epoch = new Set();
  };
  const push = (key: string): void => {
    epoch.add(key);
    current.push(key);
    pushes++;
  };
  for (let i = 0; i < trace.length; i++) {
    const key = entryKey(trace[i].slot, trace[i].offset);
    if (!epoch.has(key)) {
      push(key);
      // every harvest takes everything, so the ring holds exactly `current`
      if (current.length >= softLimit) {
        exits.push(i);
        harvestAndReset();
        push(key); // the retried write faults again on the re-armed page
        duplicates++;
      }
    }
    if (batchEnds.has(i)) harvestAndReset();
  }
  harvestAndReset();
  return { harvests, exits, duplicates, pushes };
}

/** Deterministic PRNG (mulberry32) so traces are reproducible. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
