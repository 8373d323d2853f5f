/**
 * Who may write a world shard, for the admission layer (p2p/admission),
 * decided from the leases this node accepted (lease-history.ts). A batch is
 * stamped with the lease epoch its origin wrote under:
 *
 * - **host layers**: only the holder of that epoch, and, once a newer epoch
 *   began, only with writes made before it began (plus the clock margin):
 *   a superseded holder is fenced off on every path, relayed or not;
 * - **crdt layers**: the voters of that epoch (its host and replicas);
 * - an epoch this node has not heard of (yet) is ignored, not punished.
 *
 * Snapshots (which carry no signature) are taken from the nodes that held or
 * voted on a kept epoch of the shard, or that the assignment names for it.
 * Shards outside the world go to the fallback authority.
 */
import type { Verdict, WriteAuthority } from '../admission/authority.ts'
import type { LeaseHistory } from './lease-history.ts'
import type { World } from './world.ts'

export interface PlacementAuthorityComponents {
  world: World
  history: LeaseHistory
  /** Whether the assignment names `peer` host or replica of `shard`. */
  assigned: (shard: string, peer: string) => boolean
  /** The epoch this node holds the shard under, if it does. */
  heldEpoch: (shard: string) => number | undefined
  self: string
  marginMs: number
  fallback: WriteAuthority
}

export function placementAuthority (c: PlacementAuthorityComponents): WriteAuthority {
  const refused = (code: string, action: 'reject' | 'ignore', detail: string): Verdict => ({ ok: false, code, action, detail })
  return {
    mayWrite: (shard, origin, epoch, latestWall) => {
      const info = c.world.shard(shard)
      if (info == null) return c.fallback.mayWrite(shard, origin, epoch, latestWall)
      if (epoch === 0) return refused('NO_EPOCH', 'ignore', `writes to world shard ${shard} name the lease epoch they were made under`)
      const lease = c.history.at(shard, epoch)
      if (lease == null) return refused('UNKNOWN_EPOCH', 'ignore', `epoch ${epoch} of ${shard} is not one this node knows (yet)`)
      if (info.layer.consistency === 'crdt') {
        return lease.voters.includes(origin) ? { ok: true } : refused('NOT_REPLICA', 'ignore', `${origin} is not a replica of ${shard} in epoch ${epoch}`)
      }
      if (lease.holder !== origin) return refused('NOT_HOLDER', 'ignore', `epoch ${epoch} of ${shard} is held by ${lease.holder}, not ${origin}`)
      const next = c.history.after(shard, epoch)
      if (next != null && latestWall > next.startedAt + c.marginMs) {
        return refused('STALE_EPOCH', 'ignore', `${origin} wrote under epoch ${epoch} after epoch ${next.epoch} began`)
      }
      return { ok: true }
    },
    mayServe: (shard, peer) => {
      if (c.world.shard(shard) == null) return c.fallback.mayServe(shard, peer)
      return c.history.involved(shard, peer) || c.assigned(shard, peer)
    },
    epochFor: (shard) => {
      const info = c.world.shard(shard)
      if (info == null) return c.fallback.epochFor(shard)
      if (info.layer.consistency === 'host') return c.heldEpoch(shard) ?? 0
      // A replica writes under the newest epoch it votes in.
      const current = c.history.current(shard)
      return current != null && current.voters.includes(c.self) ? current.epoch : c.heldEpoch(shard) ?? 0
    }
  }
}
