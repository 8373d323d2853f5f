/**
 * Who may change which shard, as the admission layer asks it. Placement
 * answers for world shards (lease holders and replicas, by epoch); the open
 * authority below answers for everything else.
 */

/** A decision on one origin's right to write, or a peer's to serve. */
export type Verdict = { ok: true } | { ok: false, code: string, action: 'reject' | 'ignore', detail: string }

export const allowed: Verdict = { ok: true }

export interface WriteAuthority {
  /**
   * May `origin` have made these operations on `shard` under lease epoch
   * `epoch`? `latestWall` is the newest HLC wall time among them, for rules
   * that fence a superseded holder by when its epoch ended.
   */
  mayWrite: (shard: string, origin: string, epoch: number, latestWall: number) => Verdict
  /** May `peer` serve this node a snapshot of `shard` (it vouches for what the snapshot holds)? */
  mayServe: (shard: string, peer: string) => boolean
  /** The epoch this node stamps on its own batches of `shard` (0 where the shard has no leases). */
  epochFor: (shard: string) => number
}

/**
 * The authority for shards outside placement (`shards.served`, system
 * shards): any peer may write and serve, unless `trusted` says otherwise
 * (federation: only nodes of trusted operators write served shards). System
 * shards add their own per-entry ownership rules on top (see rules.ts).
 */
export function openAuthority (trusted: (peer: string, shard: string) => boolean = () => true): WriteAuthority {
  return {
    mayWrite: (shard, origin) => trusted(origin, shard) ? allowed : { ok: false, code: 'UNTRUSTED_WRITER', action: 'ignore', detail: `${origin} is not a node of a trusted operator` },
    mayServe: (shard, peer) => trusted(peer, shard),
    epochFor: () => 0
  }
}
