/**
 * When a reader accepts a lease it finds in the table. A valid record
 * (lease.ts: the holder's signature, grants from a majority of its voters and
 * of the previous voters) is necessary but not enough: anyone can sign a
 * lease naming themselves and friends as voters. So a reader also checks the
 * lease against its own view:
 *
 * - **length**: it runs at most `leaseMs` (plus the clock margin) from when
 *   its holder signed it;
 * - **federation**: its holder and voters may host under the policy;
 * - **chain**: it follows the newest lease the reader accepted before it: at
 *   most `maxEpochGap` epochs later, and, for the very next epoch, it names
 *   that lease's holder as its predecessor and only that lease's voters as
 *   its previous voters (no lease can drop the previous voters it needed to
 *   be granted by);
 * - **eligibility**: its holder and voters are nodes the assignment's rules
 *   allow for the shard (a node with a valid descriptor in the table that the
 *   placement policy, the layer's required capabilities and the federation
 *   policy do not rule out), or the previous lease's voters.
 *
 * Eligibility, not the assignment's pick: which eligible node the assignment
 * picks depends on measured load and coordinates, which differ a little from
 * node to node, and a lease one reader refuses while others accept breaks
 * the chain every later claim builds on (a claimant that did not accept the
 * current lease would leave its voters out). Eligibility depends only on
 * signed descriptors and the policy, the same on every node. Moving a shard
 * to the node the assignment picks is the holder's planned handoff.
 *
 * Views differ for a moment after a change (a descriptor not yet arrived), so
 * a refusal is not final: the table is read again every round and a refused
 * lease is judged again.
 *
 * Older epochs a reader never saw current (it joined later) are accepted
 * backwards: epoch e is taken when the accepted epoch e + 1 names e's holder
 * as its predecessor (`followedBy`), so the history of a shard chains back
 * from the lease the reader accepted on its own view.
 */
import type { VerifiedLease } from './lease.ts'

export interface LeaseRuleContext {
  leaseMs: number
  marginMs: number
  /** Epochs a lease may skip past the newest one the reader accepted (failed claims and missed epochs). */
  maxEpochGap: number
  /** The newest lease of the shard this reader accepted with an older epoch. */
  previous: VerifiedLease | undefined
  /** Whether the assignment's rules allow `peer` to host or replicate the shard (see the file comment). */
  eligible: (peer: string) => boolean
  /** Whether `peer` may host under the federation policy (always true in an open mesh). */
  mayHost: (peer: string) => boolean
}

export type LeaseVerdict = { ok: true } | { ok: false, code: 'TOO_LONG' | 'UNTRUSTED' | 'EPOCH_GAP' | 'BROKEN_CHAIN' | 'NOT_ELIGIBLE', detail: string }

export function judgeLease (lease: VerifiedLease, ctx: LeaseRuleContext): LeaseVerdict {
  if (lease.expiresAt - lease.issuedAt > ctx.leaseMs + ctx.marginMs) {
    return { ok: false, code: 'TOO_LONG', detail: `epoch ${lease.epoch} runs ${lease.expiresAt - lease.issuedAt} ms from its signature; at most ${ctx.leaseMs + ctx.marginMs}` }
  }
  for (const peer of lease.voters) {
    if (!ctx.mayHost(peer)) return { ok: false, code: 'UNTRUSTED', detail: `${peer === lease.holder ? 'holder' : 'voter'} ${peer} may not host under the federation policy` }
  }
  const previous = ctx.previous
  if (previous != null) {
    if (lease.epoch - previous.epoch > ctx.maxEpochGap) {
      return { ok: false, code: 'EPOCH_GAP', detail: `epoch ${lease.epoch} follows epoch ${previous.epoch}; at most ${ctx.maxEpochGap} later` }
    }
    if (lease.prev.length === 0) return { ok: false, code: 'BROKEN_CHAIN', detail: `epoch ${lease.epoch} names no previous voters after epoch ${previous.epoch}` }
    if (lease.epoch === previous.epoch + 1 && (lease.prevHolder !== previous.holder || !lease.prev.every((peer) => previous.voters.includes(peer)))) {
      return { ok: false, code: 'BROKEN_CHAIN', detail: `epoch ${lease.epoch} does not follow epoch ${previous.epoch}: it names ${lease.prevHolder ?? 'nobody'} and [${lease.prev.join(', ')}], epoch ${previous.epoch} has ${previous.holder} and [${previous.voters.join(', ')}]` }
    }
  }
  const allowed = (peer: string): boolean => ctx.eligible(peer) || previous?.voters.includes(peer) === true
  for (const peer of lease.voters) {
    if (!allowed(peer)) return { ok: false, code: 'NOT_ELIGIBLE', detail: `${peer === lease.holder ? 'holder' : 'voter'} ${peer} may not host the shard under the assignment's rules, nor was it a voter of the lease before` }
  }
  return { ok: true }
}

/** Whether an older lease is the one its accepted successor names: same shard, the epoch before, the predecessor it names. */
export function followedBy (lease: VerifiedLease, successor: VerifiedLease | undefined): boolean {
  return successor != null && successor.shard === lease.shard && successor.epoch === lease.epoch + 1 && successor.prevHolder === lease.holder
}
