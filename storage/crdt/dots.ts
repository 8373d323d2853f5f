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
  /** Seen seqs beyond max + 1, per replica. */
  private readonly cloud = new Map<string, Set<number>>()

  has (replica: string, seq: number): boolean {
    if (seq <= (this.prefix.get(replica) ?? 0)) return true
    return this.cloud.get(replica)?.has(seq) === true
  }

  add (replica: string, seq: number): void {
    const max = this.prefix.get(replica) ?? 0
    if (seq <= max) return
    if (seq === max + 1) {
      let next = seq
      const cloud = this.cloud.get(replica)
      if (cloud != null) {
        while (cloud.delete(next + 1)) next++
        if (cloud.size === 0) this.cloud.delete(replica)
      }
      this.prefix.set(replica, next)
      return
    }
    let cloud = this.cloud.get(replica)
    if (cloud == null) {
      cloud = new Set()
      this.cloud.set(replica, cloud)
    }
    cloud.add(seq)
  }

  addRange (replica: string, from: number, to: number): void {
    const max = this.prefix.get(replica) ?? 0
    if (from <= max + 1 && to > max) {
      // The common case: a range that extends the prefix.
      this.prefix.set(replica, to)
      const cloud = this.cloud.get(replica)
      if (cloud != null) {
        let next = to
        for (const seq of [...cloud]) if (seq <= to) cloud.delete(seq)
        while (cloud.delete(next + 1)) next++
        this.prefix.set(replica, next)
        if (cloud.size === 0) this.cloud.delete(replica)
      }
      return
    }
    for (let seq = from; seq <= to; seq++) this.add(replica, seq)
  }

  /** The contiguous prefix of a replica's seqs seen (0 for none). */
  max (replica: string): number {
    return this.prefix.get(replica) ?? 0
  }

  /** The highest seq of a replica seen, contiguous or not. */
  highest (replica: string): number {
    let high = this.prefix.get(replica) ?? 0
    for (const seq of this.cloud.get(replica) ?? []) if (seq > high) high = seq
    return high
  }

  replicas (): string[] {
    return [...new Set([...this.prefix.keys(), ...this.cloud.keys()])]
  }

  /** Every dot of `replica` seen out of order. */
  cloudOf (replica: string): number[] {
    return [...(this.cloud.get(replica) ?? [])].sort((a, b) => a - b)
  }

  merge (other: DotContext): void {
    for (const replica of other.replicas()) {
      const max = other.max(replica)
      if (max > 0) this.addRange(replica, 1, max)
      for (const seq of other.cloudOf(replica)) this.add(replica, seq)
    }
  }

  /** Whether every dot of `other` is in this context. */
  covers (other: DotContext): boolean {
    for (const replica of other.replicas()) {
      if (other.max(replica) > this.max(replica)) {
        for (let seq = this.max(replica) + 1; seq <= other.max(replica); seq++) if (!this.has(replica, seq)) return false
      }
      for (const seq of other.cloudOf(replica)) if (!this.has(replica, seq)) return false
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
