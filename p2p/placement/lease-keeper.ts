/**
 * This node's side of the leases (lease.ts): the shards it holds, and what it
 * does for each every round:
 *
 * - the desired host of a shard with no lease, or whose lease lapsed, claims
 *   the next epoch (after pulling the shard's state from the previous voters);
 * - a holder renews at half the lease time, moves to a new voter set when
 *   the assignment's replicas change, and steps down when a voter says a
 *   newer epoch exists;
 * - a holder whose shard would do clearly better elsewhere (hysteresis.ts)
 *   hands it off: it stops taking writes, signs a release, and the new host
 *   pulls the state and claims the next epoch with that release.
 *
 * And the voter: one durable promise per world shard (LeaseVoter), granted
 * only to claims its own view finds eligible.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { LEASE_PROTOCOL } from '../constants.ts'
import { encodeLeaseRecord, hasQuorum, LeaseVoter, openRelease, signLease, signRelease, VOTE_REFUSALS, type ClaimCheck, type LeaseTerms, type VerifiedLease, type Vote } from './lease.ts'
import { handleLeaseProtocol, requestHandoff, VoteRequests, type HandoffAnswer } from './lease-protocol.ts'
import type { Assignment } from './assign.ts'
import type { PlacementTable } from './placement-table.ts'
import type { ShardInfo } from './world.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Membership } from '../membership/membership.ts'
import type { Replication } from '../sync/replication.ts'
import type { Sublevel } from '../../storage/database.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'

const VOTE_TIMEOUT_MS = 2_000
const SYNC_BEFORE_SERVE_MS = 3_000
/** After a failed planned handoff, the shard is not offered again for this long (the target may not know the lease yet). */
const HANDOFF_RETRY_MS = 5_000

export interface LeaseKeeperOptions {
  leaseMs: number
  marginMs: number
}

export interface LeaseKeeperComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  replication: Replication
  membership: Membership
  table: PlacementTable
  /** Where this node's lease votes are kept. */
  votes: Sublevel
  /** The voter's view of a claim (placement: world shard, eligible claimant). */
  checkClaim: ClaimCheck
  /** The accepted lease of a shard now, if any. */
  leaseOf: (shard: string) => VerifiedLease | undefined
  /** Takes a lease this node just stored as accepted (it was granted, so it is). */
  adopt: (lease: VerifiedLease) => void
  metrics: P2pMetrics | null
  logger: Logger
}

export type ClaimReason = 'genesis' | 'failover' | 'handoff' | 'reconfigure'

export class LeaseKeeper {
  private readonly components: LeaseKeeperComponents
  private readonly options: LeaseKeeperOptions
  private readonly log: Logger
  private readonly voter: LeaseVoter
  private readonly votes: VoteRequests
  private readonly self: string
  private readonly held = new Map<string, { terms: LeaseTerms, record: Uint8Array }>()
  private readonly busy = new Set<string>()
  /** Highest epoch a voter told us it promised, per shard (only shards this node claims). */
  private readonly epochFloor = new Map<string, number>()
  private readonly handingOff = new Set<string>()
  /** When the last planned handoff of a shard failed (only shards this node holds). */
  private readonly handoffFailed = new Map<string, number>()

  constructor (components: LeaseKeeperComponents, options: LeaseKeeperOptions) {
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:lease' })
    this.self = components.libp2p.peerId.toString()
    this.voter = new LeaseVoter(components.votes, components.privateKey, { maxLeaseMs: options.leaseMs, marginMs: options.marginMs }, components.checkClaim)
    this.votes = new VoteRequests(components.libp2p, VOTE_TIMEOUT_MS)
  }

  async start (world: { shard: (id: string) => ShardInfo | undefined }): Promise<void> {
    await handleLeaseProtocol(this.components.libp2p, {
      claim: async (lease, release) => this.voter.vote(lease, release),
      handoff: async (shard, release, from) => {
        const info = world.shard(shard)
        return info == null ? { ok: false, code: 'UNKNOWN_SHARD', detail: `${shard} is not a shard of this node's world` } : this.acceptHandoff(info, release, from)
      }
    }, this.components.metrics, this.components.logger)
  }

  async stop (): Promise<void> {
    await this.components.libp2p.unhandle(LEASE_PROTOCOL).catch(() => {})
  }

  /** The lease this node holds for a shard and may serve under now. */
  holding (shard: string): LeaseTerms | undefined {
    const held = this.held.get(shard)
    return held != null && Date.now() < held.terms.expiresAt - this.options.marginMs ? held.terms : undefined
  }

  heldShards (): string[] {
    return [...this.held.keys()].filter((shard) => this.holding(shard) != null)
  }

  /** Shards held, including any whose lease is about to lapse (for opening their stores). */
  holds (shard: string): boolean {
    return this.held.has(shard)
  }

  isBusy (shard: string): boolean {
    return this.busy.has(shard)
  }

  handingOffNow (shard: string): boolean {
    return this.handingOff.has(shard)
  }

  /** Whether a planned handoff of the shard may be tried now (not while one runs, nor soon after one failed). */
  mayHandOff (shard: string, now: number): boolean {
    return !this.handingOff.has(shard) && now - (this.handoffFailed.get(shard) ?? 0) >= HANDOFF_RETRY_MS
  }

  /** Runs one lease task for a shard, at most one at a time per shard. */
  run (shard: string, task: () => Promise<unknown>): void {
    this.busy.add(shard)
    void task().catch((err) => {
      this.log.warn({ code: 'LEASE_TASK', shard, err }, 'lease work failed')
    }).finally(() => this.busy.delete(shard))
  }

  /** Called when a lease was accepted: steps down if it supersedes one this node holds. */
  superseded (lease: VerifiedLease): void {
    const held = this.held.get(lease.shard)
    if (held != null && (lease.epoch > held.terms.epoch || (lease.epoch === held.terms.epoch && lease.holder !== this.self))) {
      this.drop(lease.shard, `epoch ${lease.epoch} belongs to ${lease.holder}`)
    }
  }

  /** Drops a held lease that lapsed before it could be renewed. */
  expire (shard: string, now: number): boolean {
    const held = this.held.get(shard)
    if (held == null || now < held.terms.expiresAt - this.options.marginMs) return false
    this.drop(shard, 'lease expired before it could be renewed')
    return true
  }

  termsOf (shard: string): LeaseTerms | undefined {
    return this.held.get(shard)?.terms
  }

  /** Runs a vote round on a signed lease; resolves to the record when a majority of voters and previous voters granted it. */
  private async collect (terms: LeaseTerms, release?: Uint8Array): Promise<{ record?: Uint8Array, refusals: Vote[] }> {
    const lease = await signLease(this.components.privateKey, terms, Date.now())
    const electorate = [...new Set([...terms.voters, ...terms.prev])]
    const votes = await Promise.all(electorate.map(async (peer): Promise<[string, Vote | null]> => {
      if (peer === this.self) return [peer, await this.voter.vote(lease, release)]
      try {
        return [peer, await this.votes.request(peerIdFromString(peer), lease, release)]
      } catch {
        return [peer, null]
      }
    }))
    const granted = new Set<string>()
    const grants: Uint8Array[] = []
    const refusals: Vote[] = []
    for (const [peer, vote] of votes) {
      if (vote?.ok === true) {
        granted.add(peer)
        grants.push(vote.grant)
      } else if (vote != null) {
        refusals.push(vote)
      }
    }
    if (!hasQuorum(terms, granted)) return { refusals }
    return { record: encodeLeaseRecord(lease, grants), refusals }
  }

  /** Claims the next epoch of a shard; `known` is its current lease, `release` its holder's signed release (a handoff). */
  async claim (shard: ShardInfo, desired: Assignment | undefined, known: VerifiedLease | undefined, release?: Uint8Array): Promise<boolean> {
    const voters = [this.self, ...(desired?.replicas ?? []).filter((p) => p !== this.self)].slice(0, 16)
    // Previous voters our membership view holds dead are left out: a voter set whose majority died
    // could otherwise never be replaced (availability over the last bit of safety; see the README).
    const prev = (known?.voters ?? []).filter((p) => p === this.self || this.components.membership.get(p)?.state !== 'dead')
    // A voter may have promised a higher epoch than the table shows (a claim that failed half-way): start above it.
    const epoch = Math.max(known?.epoch ?? 0, this.epochFloor.get(shard.id) ?? 0) + 1
    // Take the state before taking the shard: pull from the previous voters that answer.
    if (known != null && known.holder !== this.self) await this.pullState(shard.id, [...new Set([...(release != null ? [known.holder] : []), ...prev])].filter((p) => p !== this.self))
    const now = Date.now()
    const terms: LeaseTerms = { shard: shard.id, epoch, holder: this.self, voters, prev, prevHolder: known?.holder ?? null, expiresAt: now + this.options.leaseMs, startedAt: now }
    const { record, refusals } = await this.collect(terms, release)
    const metrics = this.components.metrics
    this.learnEpochs(shard.id, refusals)
    if (record == null) {
      metrics?.placementClaims.inc({ kind: 'claim', result: refusalLabel(refusals) })
      this.log.debug({ shard: shard.id, epoch, refusals: refusals.map((r) => (r.ok ? 'ok' : r.code)) }, 'lease claim failed')
      return false
    }
    await this.keep(terms, record)
    metrics?.placementClaims.inc({ kind: 'claim', result: 'ok' })
    if (known != null && known.holder !== this.self) metrics?.placementMoves.inc({ reason: release != null ? 'handoff' : 'failover' })
    const reason: ClaimReason = known == null ? 'genesis' : release != null ? 'handoff' : known.holder === this.self ? 'reconfigure' : 'failover'
    this.log.info({ code: 'LEASE_CLAIMED', shard: shard.id, epoch, previous: known?.holder ?? null, reason }, 'now hosting shard')
    return true
  }

  async renew (shard: string): Promise<void> {
    const held = this.held.get(shard)
    if (held == null) return
    const terms: LeaseTerms = { ...held.terms, expiresAt: Date.now() + this.options.leaseMs }
    const { record, refusals } = await this.collect(terms)
    this.learnEpochs(shard, refusals)
    if (record == null) {
      this.components.metrics?.placementClaims.inc({ kind: 'renew', result: 'no_quorum' })
      // A newer epoch of our own (a reconfiguration that did not finish) is no reason to stop; another holder's is.
      const newer = refusals.find((r) => !r.ok && (r.code === 'STALE_EPOCH' || r.code === 'EPOCH_TAKEN') && r.holder !== this.self)
      if (newer != null && !newer.ok) this.drop(shard, `a voter knows epoch ${newer.epoch} of ${newer.holder ?? 'another node'}`)
      return
    }
    if (this.held.get(shard)?.terms.epoch !== terms.epoch) return
    await this.keep(terms, record)
    this.components.metrics?.placementClaims.inc({ kind: 'renew', result: 'ok' })
  }

  private learnEpochs (shard: string, refusals: Vote[]): void {
    for (const vote of refusals) {
      if (!vote.ok && vote.epoch > (this.epochFloor.get(shard) ?? 0)) this.epochFloor.set(shard, vote.epoch)
    }
  }

  /** Records a granted lease in the table and starts serving under it. */
  private async keep (terms: LeaseTerms, record: Uint8Array): Promise<void> {
    this.held.set(terms.shard, { terms, record })
    await this.components.table.storeLease(terms.shard, terms.epoch, record)
    const verified = await this.components.table.leaseRecord(Buffer.from(record).toString('base64'), Date.now())
    if (verified != null) this.components.adopt(verified)
  }

  private drop (shard: string, reason: string): void {
    if (!this.held.delete(shard)) return
    this.handingOff.delete(shard)
    this.handoffFailed.delete(shard)
    this.log.info({ code: 'LEASE_LOST', shard, reason }, 'stopped hosting shard')
  }

  private async pullState (shard: string, peers: string[]): Promise<void> {
    const replication = this.components.replication
    await replication.ensure(shard)
    const deadline = AbortSignal.timeout(SYNC_BEFORE_SERVE_MS)
    for (const peer of peers) {
      if (deadline.aborted) return
      if (this.components.membership.get(peer)?.state === 'dead') continue
      if (await Promise.race([replication.sync(shard, peerIdFromString(peer)), new Promise<null>((resolve) => setTimeout(() => resolve(null), SYNC_BEFORE_SERVE_MS))]) != null) return
    }
  }

  /** A planned move: stop taking writes, sign a release, let the new host pull the state and claim the next epoch. */
  async handOff (shard: ShardInfo, target: string): Promise<void> {
    const terms = this.held.get(shard.id)?.terms
    if (terms == null) return
    this.handingOff.add(shard.id)
    this.log.info({ code: 'HANDOFF_START', shard: shard.id, epoch: terms.epoch, to: target }, 'handing shard off to a better host')
    const store = await this.components.replication.ensure(shard.id)
    await store.commit()
    const release = await signRelease(this.components.privateKey, { shard: shard.id, epoch: terms.epoch, to: target }, Date.now())
    let answer: HandoffAnswer
    try {
      answer = await requestHandoff(this.components.libp2p, peerIdFromString(target), shard.id, release, VOTE_TIMEOUT_MS + SYNC_BEFORE_SERVE_MS + 2_000)
    } catch (err) {
      answer = { ok: false, code: 'UNREACHABLE', detail: (err as Error).message }
    }
    if (answer.ok) {
      this.handoffFailed.delete(shard.id)
      this.drop(shard.id, `handed off to ${target}`)
    } else {
      // Keep serving under our lease; a voter that granted the target refuses our renewal, and we step down then.
      this.handingOff.delete(shard.id)
      this.handoffFailed.set(shard.id, Date.now())
      this.log.warn({ code: 'HANDOFF_FAILED', shard: shard.id, to: target, reason: answer.code ?? 'unknown' }, 'handoff failed; keeping the shard')
    }
  }

  /** The other side of a handoff: the release must come from the holder of the lease we know. */
  private desiredOf: ((shard: string) => Assignment | undefined) | undefined

  /** Placement tells the keeper where the assignment is, for handoffs it accepts. */
  setAssignment (desiredOf: (shard: string) => Assignment | undefined): void {
    this.desiredOf = desiredOf
  }

  private async acceptHandoff (info: ShardInfo, release: Uint8Array, from: PeerId): Promise<HandoffAnswer> {
    let r
    try {
      r = await openRelease(release, Date.now())
    } catch (err) {
      return { ok: false, code: 'BAD_RELEASE', detail: (err as Error).message }
    }
    const known = this.components.leaseOf(info.id)
    if (r.shard !== info.id || r.to !== this.self || r.signer !== from.toString()) return { ok: false, code: 'BAD_RELEASE', detail: 'release is not for this shard, this node, or from the sender' }
    if (known == null || known.holder !== r.signer || known.epoch !== r.epoch) return { ok: false, code: 'UNKNOWN_LEASE', detail: 'this node does not know the lease being released yet' }
    if (this.busy.has(info.id)) return { ok: false, code: 'BUSY', detail: 'a lease round for this shard is running' }
    this.busy.add(info.id)
    try {
      return (await this.claim(info, this.desiredOf?.(info.id), known, release)) ? { ok: true } : { ok: false, code: 'NO_QUORUM', detail: 'voters did not grant the next epoch' }
    } finally {
      this.busy.delete(info.id)
    }
  }
}

/** A bounded label for a failed claim: the first refusal's code if it is one of ours, else `other`; `no_quorum` when nobody refused. */
function refusalLabel (refusals: Vote[]): string {
  const first = refusals[0]
  if (first == null || first.ok) return 'no_quorum'
  return VOTE_REFUSALS.has(first.code) ? first.code.toLowerCase() : 'other'
}
