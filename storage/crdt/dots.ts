/**
 * Causal context: the set of dots (replica, sequence number) a replica has
 * seen, kept compact as a version vector (the contiguous prefix per replica)
 * plus a "cloud" of dots seen out of order (Almeida, Shoker, Baquero:
 * delta-state CRDTs). Every operation consumes one dot of the replica that
 * made it, so the context says both what state a replica has and which
 * deltas it still lacks.
 */

export interface Dot {
  replica: string
  seq: number
}

export class DotContext {
  /** Contiguous prefix per replica: every seq in 1..max has been seen. */
  private readonly prefix = new Map<string, number>()
  /**
   * Seen seqs beyond max + 1, per replica, as sorted, disjoint, non-adjacent
   * ranges [from, to]: a whole delta received out of order is one range, not
   * a thousand numbers.
   */
  private readonly cloud = new Map<string, Array<[number, number]>>()

  has (replica: string, seq: number): boolean {
    if (seq <= (this.prefix.get(replica) ?? 0)) return true
    const ranges = this.cloud.get(replica)
    if (ranges == null) return false
    const range = ranges[findRange(ranges, seq)]
    return range != null && range[0] <= seq && seq <= range[1]
  }

  /** Whether every seq in from..to has been seen. */
  hasRange (replica: string, from: number, to: number): boolean {
    const max = this.prefix.get(replica) ?? 0
    if (to <= max) return true
    const start = Math.max(from, max + 1)
    const ranges = this.cloud.get(replica)
    if (ranges == null) return false
    const range = ranges[findRange(ranges, start)]
    return range != null && range[0] <= start && to <= range[1]
  }

  add (replica: string, seq: number): void {
    this.addRange(replica, seq, seq)
  }

  addRange (replica: string, from: number, to: number): void {
    const max = this.prefix.get(replica) ?? 0
    if (to <= max || to < from) return
    if (from <= max + 1) {
      // The common case: the range extends the prefix; absorb cloud ranges it reaches.
      let next = to
      const ranges = this.cloud.get(replica)
      if (ranges != null) {
        let drop = 0
        while (drop < ranges.length && ranges[drop]![0] <= next + 1) {
          next = Math.max(next, ranges[drop]![1])
          drop++
        }
        if (drop > 0) ranges.splice(0, drop)
        if (ranges.length === 0) this.cloud.delete(replica)
      }
      this.prefix.set(replica, next)
      return
    }
    let ranges = this.cloud.get(replica)
    if (ranges == null) {
      this.cloud.set(replica, [[from, to]])
      return
    }
    // Insert, then merge with overlapping or adjacent neighbours.
    let i = findRange(ranges, from)
    if (i > 0 && ranges[i - 1]![1] + 1 >= from) i--
    let start = from
    let end = to
    let j = i
    while (j < ranges.length && ranges[j]![0] <= end + 1) {
      start = Math.min(start, ranges[j]![0])
      end = Math.max(end, ranges[j]![1])
      j++
    }
    ranges.splice(i, j - i, [start, end])
  }

  /** The contiguous prefix of a replica's seqs seen (0 for none). */
  max (replica: string): number {
    return this.prefix.get(replica) ?? 0
  }

  /** The highest seq of a replica seen, contiguous or not. */
  highest (replica: string): number {
    const ranges = this.cloud.get(replica)
    return ranges != null && ranges.length > 0 ? ranges[ranges.length - 1]![1] : this.prefix.get(replica) ?? 0
  }

  replicas (): string[] {
    return [...new Set([...this.prefix.keys(), ...this.cloud.keys()])]
  }

  /** The ranges of `replica`'s seqs seen out of order, ascending. */
  cloudOf (replica: string): ReadonlyArray<readonly [number, number]> {
    return this.cloud.get(replica) ?? []
  }

  /** Every seq of `replica` seen, as ascending, disjoint ranges. */
  rangesOf (replica: string): Array<readonly [number, number]> {
    const max = this.prefix.get(replica) ?? 0
    const ranges: Array<readonly [number, number]> = max > 0 ? [[1, max]] : []
    for (const range of this.cloud.get(replica) ?? []) ranges.push(range)
    return ranges
  }

  /**
   * How many dots this context has that `other` lacks, counting up to `limit`
   * (then it stops). Counted over ranges, so the work is bounded by how many
   * ranges the two contexts hold, never by the sequence numbers they name: a
   * peer's context claiming one dot at 2^52 costs what any one range costs.
   */
  missingFrom (other: DotContext, limit = Number.POSITIVE_INFINITY): number {
    let missing = 0
    for (const replica of this.replicas()) {
      const theirs = other.rangesOf(replica)
      let j = 0
      for (const [from, to] of this.rangesOf(replica)) {
        while (j < theirs.length && theirs[j]![1] < from) j++
        let covered = 0
        for (let k = j; k < theirs.length && theirs[k]![0] <= to; k++) {
          covered += Math.min(to, theirs[k]![1]) - Math.max(from, theirs[k]![0]) + 1
        }
        missing += to - from + 1 - covered
        if (missing > limit) return missing
      }
    }
    return missing
  }

  merge (other: DotContext): void {
    for (const replica of other.replicas()) {
      const max = other.max(replica)
      if (max > 0) this.addRange(replica, 1, max)
      for (const [from, to] of other.cloudOf(replica)) this.addRange(replica, from, to)
    }
  }

  /** Whether every dot of `other` is in this context. */
  covers (other: DotContext): boolean {
    for (const replica of other.replicas()) {
      if (other.max(replica) > 0 && !this.hasRange(replica, 1, other.max(replica))) return false
      for (const [from, to] of other.cloudOf(replica)) if (!this.hasRange(replica, from, to)) return false
    }
    return true
  }

  clone (): DotContext {
    const copy = new DotContext()
    copy.merge(this)
    return copy
  }

  /** The version vector alone (contiguous prefixes), for display and cheap comparison. */
  toVersionVector (): Record<string, number> {
    return Object.fromEntries([...this.prefix.entries()].sort(([a], [b]) => a.localeCompare(b)))
  }

  equals (other: DotContext): boolean {
    return this.covers(other) && other.covers(this)
  }
}

/** Index of the first range that ends at or after `seq` (ranges.length if none). */
function findRange (ranges: ReadonlyArray<readonly [number, number]>, seq: number): number {
  let low = 0
  let high = ranges.length
  while (low < high) {
    const mid = (low + high) >>> 1
    if (ranges[mid]![1] < seq) low = mid + 1
    else high = mid
  }
  return low
}
