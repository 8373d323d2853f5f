/**
 * The leases this node has accepted (lease-rules.ts), per shard, the last
 * few epochs of each: who held which epoch, with which voters, from when.
 * The write authority asks it whether a batch stamped with an epoch came
 * from that epoch's holder (and before the next epoch began); placement asks
 * it for the current holder. Bounded: `keep` epochs per shard, and only
 * shards of the world.
 */
import type { VerifiedLease } from './lease.ts'

/** Epochs kept per shard: enough for the batches of any log window, which rarely spans more than a few failovers. */
export const DEFAULT_KEPT_EPOCHS = 16

export type AdoptResult = 'new-epoch' | 'renewed' | 'unchanged'

/** Epochs kept of a shard whose whole history matters (the provenance ledger's): a bound, not an expectation. */
const MAX_KEPT_EPOCHS = 100_000

export class LeaseHistory {
  private readonly byShard = new Map<string, VerifiedLease[]>()
  private readonly keep: number
  private readonly keepAll: (shard: string) => boolean

  /** `keepAll` names shards whose every epoch is kept (receipts of the provenance ledger are checked against any of them). */
  constructor (keep = DEFAULT_KEPT_EPOCHS, keepAll: (shard: string) => boolean = () => false) {
    this.keep = keep
    this.keepAll = keepAll
  }

  /**
   * Records an accepted lease. Of two leases of one epoch (a genesis race
   * between disjoint voter sets), the one the next epoch names as its
   * predecessor stands, else the one with the smaller holder id, on every
   * node; a renewal (same epoch and holder, later expiry) replaces the
   * version it renews.
   */
  add (lease: VerifiedLease): AdoptResult {
    let list = this.byShard.get(lease.shard)
    if (list == null) {
      list = []
      this.byShard.set(lease.shard, list)
    }
    const i = list.findIndex((l) => l.epoch >= lease.epoch)
    const same = i >= 0 && list[i]!.epoch === lease.epoch ? list[i]! : undefined
    if (same != null) {
      if (same.holder === lease.holder) {
        if (lease.expiresAt <= same.expiresAt) return 'unchanged'
        list[i] = lease
        return 'renewed'
      }
      // The epoch after names which of the two it followed; without one, the smaller holder id stands.
      const next = list[i + 1]
      const named = next?.epoch === lease.epoch + 1 ? next.prevHolder : undefined
      if (named === same.holder || (named !== lease.holder && same.holder < lease.holder)) return 'unchanged'
      list[i] = lease
      return 'new-epoch'
    }
    list.splice(i < 0 ? list.length : i, 0, lease)
    const keep = this.keepAll(lease.shard) ? MAX_KEPT_EPOCHS : this.keep
    if (list.length > keep) list.splice(0, list.length - keep)
    return 'new-epoch'
  }

  /** Puts `lease` in its epoch's place, whichever lease of that epoch was kept (a later epoch named it as its predecessor). */
  replace (lease: VerifiedLease): void {
    const list = this.byShard.get(lease.shard)
    const i = list?.findIndex((l) => l.epoch === lease.epoch) ?? -1
    if (list != null && i >= 0) list[i] = lease
    else this.add(lease)
  }

  /** The newest accepted lease of a shard. */
  current (shard: string): VerifiedLease | undefined {
    const list = this.byShard.get(shard)
    return list?.[list.length - 1]
  }

  at (shard: string, epoch: number): VerifiedLease | undefined {
    return this.byShard.get(shard)?.find((l) => l.epoch === epoch)
  }

  /** The accepted lease that followed `epoch` (the smallest newer one), if any. */
  after (shard: string, epoch: number): VerifiedLease | undefined {
    return this.byShard.get(shard)?.find((l) => l.epoch > epoch)
  }

  /** The newest accepted lease older than `epoch`, if any. */
  before (shard: string, epoch: number): VerifiedLease | undefined {
    const list = this.byShard.get(shard) ?? []
    for (let i = list.length - 1; i >= 0; i--) if (list[i]!.epoch < epoch) return list[i]
    return undefined
  }

  /** Oldest epoch still kept for a shard (0 when none). */
  oldest (shard: string): number {
    return this.byShard.get(shard)?.[0]?.epoch ?? 0
  }

  /** Whether `peer` held or voted on any kept epoch of the shard. */
  involved (shard: string, peer: string): boolean {
    return this.byShard.get(shard)?.some((l) => l.holder === peer || l.voters.includes(peer)) === true
  }

  /** Whether `peer` held an epoch of the shard older than the current one. */
  pastHolder (shard: string, peer: string): boolean {
    const list = this.byShard.get(shard) ?? []
    return list.slice(0, -1).some((l) => l.holder === peer) && list[list.length - 1]?.holder !== peer
  }
}
