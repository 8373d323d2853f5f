/**
 * This node's side of the leases (lease.ts): the shards it holds, and what it
 * does for each every round:
 *
 * - the desired host of a shard with no lease, or whose holder went silent,
 *   claims the next epoch, then pulls the shard's state from a majority of
 *   the previous voters that granted it (frozen at that epoch by their
 *   grant, so it holds every write the majority write concern answered)
 *   before it serves;
 * - a holder keeps its leases by keepalives to its voters (liveness.ts), one
 *   stream per voter whatever the number of shards; it renews a lease's term
 *   at half of it (minutes), moves to a new voter set when the assignment's
 *   replicas change, and steps down when a voter says a newer epoch exists;
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
import { decodeContext, encodeContext } from '../sync/anti-entropy.ts'
import type { DotContext } from '../../storage/crdt/dots.ts'
import { handleKeepalives, HolderLiveness, VoterLiveness, type LivenessOptions } from './liveness.ts'
import { KEEPALIVE_PROTOCOL } from '../constants.ts'
import type { LoopMonitor } from '../health/loop-monitor.ts'
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
/** A claim refused as HELD by a voter that would grant within this long waits and asks again, rather than a whole round later. */
const MAX_HELD_WAIT_MS = 2_000
const MAX_CLAIM_ATTEMPTS = 3
/** After a failed planned handoff, the shard is not offered again for this long (the target may not know the lease yet). */
const HANDOFF_RETRY_MS = 5_000
/** How long the target of a handoff waits for the lease being released to reach its table. */
const LEASE_ARRIVAL_MS = 2_000
/**
 * How long, at most, a claimant that learned of a promised epoch it has no
 * lease record of waits for the table before it claims without one: the
 * anti-entropy backstop's interval, by which any record that exists has
 * arrived. It waits less when the voters say the promise stands for less.
 */
const UNSEEN_HISTORY_WAIT_MS = 30_000

export interface LeaseKeeperOptions {
  leaseMs: number
  marginMs: number
  liveness: LivenessOptions
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
  /** A holder of a lease this node promised went silent: placement looks at its shards now rather than next round. */
  onHolderSilent: (holder: string) => void
  loop: LoopMonitor | null
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
  private readonly voterLiveness: VoterLiveness
  private readonly holderLiveness: HolderLiveness
  /** Held shards whose state was pulled from a majority of the previous voters: only those are served. */
  private readonly synced = new Set<string>()
  private readonly self: string
  private readonly held = new Map<string, { terms: LeaseTerms, record: Uint8Array }>()
  private readonly busy = new Set<string>()
  /** Highest epoch a voter told us it promised, per shard (only shards this node claims). */
  private readonly epochFloor = new Map<string, number>()
  /** Per shard: until when to wait for the record of an epoch the voters promised and the table does not show. */
  private readonly unseenUntil = new Map<string, number>()
  private readonly handingOff = new Set<string>()
  /** When the last planned handoff of a shard failed (only shards this node holds). */
  private readonly handoffFailed = new Map<string, number>()
  /** Shards whose handoff failed: served again only under a next epoch of our own. */
  private readonly reclaiming = new Set<string>()

  constructor (components: LeaseKeeperComponents, options: LeaseKeeperOptions) {
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:lease' })
    this.self = components.libp2p.peerId.toString()
    this.voter = new LeaseVoter(components.votes, components.privateKey, { maxLeaseMs: options.leaseMs, marginMs: options.marginMs }, components.checkClaim)
    this.votes = new VoteRequests(components.libp2p, VOTE_TIMEOUT_MS)
    this.voterLiveness = new VoterLiveness(this.self, options.liveness, (peer) => this.voter.isHolder(peer), components.loop, (shard, epoch) => this.held.get(shard)?.terms.epoch === epoch)
    this.voter.setSilence(this.voterLiveness)
    // The lease protocol drops a context over its bound (the claimant then pulls).
    this.voter.setStateOf((shard) => {
      const store = components.replication.opened(shard)
      return store == null ? undefined : encodeContext(store.doc.context)
    })
    this.holderLiveness = new HolderLiveness(components.libp2p, options.liveness, () => this.keepaliveTargets(), components.metrics, components.logger)
    this.voterLiveness.addEventListener('lapsed', (event) => { components.onHolderSilent(event.detail.holder) })
  }

  async start (world: { shard: (id: string) => ShardInfo | undefined }): Promise<void> {
    await this.voter.load()
    await handleKeepalives(this.components.libp2p, this.voterLiveness, this.components.metrics, this.components.logger)
    this.voterLiveness.start(() => this.voter.holderIds())
    this.holderLiveness.start()
    await handleLeaseProtocol(this.components.libp2p, {
      claim: async (lease, release) => this.voter.vote(lease, release),
      handoff: async (shard, release, from) => {
        const info = world.shard(shard)
        return info == null ? { ok: false, code: 'UNKNOWN_SHARD', detail: `${shard} is not a shard of this node's world` } : this.acceptHandoff(info, release, from)
      }
    }, this.components.metrics, this.components.logger)
  }

  async stop (): Promise<void> {
    this.holderLiveness.stop()
    this.voterLiveness.stop()
    await this.components.libp2p.unhandle(LEASE_PROTOCOL).catch(() => {})
    await this.components.libp2p.unhandle(KEEPALIVE_PROTOCOL).catch(() => {})
  }

  /**
   * The lease this node holds for a shard and may serve under now: within
   * its term, its state pulled from the previous voters, and a majority of
   * its voters answering keepalives (this node is one of them).
   */
  holding (shard: string): LeaseTerms | undefined {
    const held = this.held.get(shard)
    if (held == null || !this.synced.has(shard) || Date.now() >= held.terms.expiresAt - this.options.marginMs) return undefined
    const { voters } = held.terms
    const fresh = voters.filter((voter) => voter === this.self || this.holderLiveness.fresh(voter)).length
    return fresh * 2 > voters.length ? held.terms : undefined
  }

  /** Whether the holder of a lease this node promised has gone silent past the liveness timeout (its shards may be claimed). */
  holderSilent (holder: string): boolean {
    return this.voter.isHolder(holder) && this.voterLiveness.lapsed(holder)
  }

  /**
   * Whether a lease this node is a voter of no longer stands: its holder went
   * silent, or its holder's keepalives stopped listing it (it dropped the
   * shard: a failed handoff, a lost renewal). Either way the voters would
   * grant the next epoch, so the next candidate may claim it now.
   */
  leaseDown (lease: { shard: string, holder: string, epoch: number }): boolean {
    return this.voter.promiseStands(lease.shard, lease.holder, lease.epoch) === false || this.holderSilent(lease.holder)
  }

  /** The epoch this node promised for a shard as a voter (0 for none): the replicate protocol's fence. */
  promisedEpoch (shard: string): number {
    return this.voter.promisedEpoch(shard)
  }

  /** Every voter of the leases this node holds (itself excluded), with the (shard, epoch) held with it: whom it sends keepalives, and what they say. */
  private keepaliveTargets (): Map<string, Array<[string, number]>> {
    const targets = new Map<string, Array<[string, number]>>()
    for (const { terms } of this.held.values()) {
      for (const voter of terms.voters) {
        if (voter === this.self) continue
        let list = targets.get(voter)
        if (list == null) targets.set(voter, list = [])
        list.push([terms.shard, terms.epoch])
      }
    }
    for (const list of targets.values()) list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]))
    return targets
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
  private async collect (terms: LeaseTerms, release?: Uint8Array): Promise<{ record?: Uint8Array, refusals: Vote[], granted: Set<string>, states: Map<string, Uint8Array> }> {
    const sentAt = Date.now()
    const lease = await signLease(this.components.privateKey, terms, sentAt)
    const electorate = [...new Set([...terms.voters, ...terms.prev])]
    const granted = new Set<string>()
    const grants: Uint8Array[] = []
    const refusals: Vote[] = []
    const states = new Map<string, Uint8Array>()
    // Done once the grants make a quorum, or every voter answered: a dead voter (the holder that just failed is one)
    // is not waited for. On a real network its dial hangs until the vote timeout, which would add 2 s to a failover.
    await new Promise<void>((resolve) => {
      let left = electorate.length
      let done = false
      for (const peer of electorate) {
        const ask = peer === this.self ? this.voter.vote(lease, release) : this.votes.request(peerIdFromString(peer), lease, release)
        ask.then((vote) => {
          if (vote.ok) {
            // The voter counts the grant as hearing from us, from when it granted: from when we asked, to be safe.
            if (peer !== this.self) this.holderLiveness.granted(peer, sentAt)
            if (done) return
            granted.add(peer)
            grants.push(vote.grant)
            if (vote.state != null) states.set(peer, vote.state)
          } else if (!done) {
            refusals.push(vote)
          }
        }, (err: Error) => {
          this.log.debug({ code: 'VOTE_UNANSWERED', shard: terms.shard, voter: peer, reason: err.name }, 'a voter did not answer')
        }).finally(() => {
          left--
          if (!done && (left === 0 || hasQuorum(terms, granted))) {
            done = true
            resolve()
          }
        })
      }
    })
    if (!hasQuorum(terms, granted)) return { refusals, granted, states }
    return { record: encodeLeaseRecord(lease, grants), refusals, granted, states }
  }

  /** Claims the next epoch of a shard; `known` is its current lease, `release` its holder's signed release (a handoff). */
  async claim (shard: ShardInfo, desired: Assignment | undefined, known: VerifiedLease | undefined, release?: Uint8Array): Promise<boolean> {
    const voters = [this.self, ...(desired?.replicas ?? []).filter((p) => p !== this.self)].slice(0, 16)
    // Previous voters our membership view holds dead are left out: a voter set whose majority died
    // could otherwise never be replaced (availability over the last bit of safety; see the README).
    const prev = (known?.voters ?? []).filter((p) => p === this.self || this.components.membership.get(p)?.state !== 'dead')
    const metrics = this.components.metrics
    for (let attempt = 1; ; attempt++) {
      // A voter may have promised a higher epoch than the table shows (a claim that failed half-way): start above it.
      const floor = this.epochFloor.get(shard.id) ?? 0
      // The table caught up with what the voters said: the next unseen epoch gets a wait of its own.
      if (floor <= (known?.epoch ?? 0)) this.unseenUntil.delete(shard.id)
      else if (release == null && Date.now() < (this.unseenUntil.get(shard.id) ?? 0)) {
        // A voter promised an epoch of this shard that the table does not show here yet: a claim now would fork the
        // history (a lease naming no previous voters, or one that skips the unseen epoch and follows an older one;
        // every reader that has the unseen epoch refuses it, and its holder serves on voters nobody else counts).
        // The placement e2e saw a genesis holder do this on learning that epoch 2 was taken: it reconfigured its
        // epoch 1 into epoch 3 and kept serving beside the real host. Wait for the table; past the wait, the promise
        // is taken for a claim that failed half-way and left no record anywhere. The wait is as long as the voters
        // say the promise stands (its term, or 0 once its holder's keepalives stop naming it), at most 30 s:
        // a fixed 30 s kept a shard unheld for 25 s after a genesis race whose loser had promised itself epoch 2.
        metrics?.placementClaims.inc({ kind: 'claim', result: 'history_unseen' })
        return false
      }
      const epoch = Math.max(known?.epoch ?? 0, floor) + 1
      const now = Date.now()
      const terms: LeaseTerms = { shard: shard.id, epoch, holder: this.self, voters, prev, prevHolder: known?.holder ?? null, expiresAt: now + this.options.leaseMs, startedAt: now }
      const { record, refusals, granted, states } = await this.collect(terms, release)
      const votedAt = Date.now()
      this.learnEpochs(shard.id, refusals)
      if (record == null) {
        // Voters that still hear the holder say when they would not: ask again then, rather than a whole round later.
        const wait = Math.max(0, ...refusals.map((r) => (!r.ok && r.code === 'HELD' ? r.retryInMs ?? Number.POSITIVE_INFINITY : 0)))
        const onlyHeld = refusals.length > 0 && refusals.every((r) => !r.ok && r.code === 'HELD')
        if (onlyHeld && wait <= MAX_HELD_WAIT_MS && attempt < MAX_CLAIM_ATTEMPTS) {
          await new Promise((resolve) => setTimeout(resolve, wait + 10))
          continue
        }
        metrics?.placementClaims.inc({ kind: 'claim', result: refusalLabel(refusals) })
        this.log.debug({ shard: shard.id, epoch, refusals: refusals.map((r) => (r.ok ? 'ok' : `${r.code} (epoch ${r.epoch} of ${r.holder ?? 'nobody'})`)) }, 'lease claim failed')
        return false
      }
      const takesOver = known != null && known.holder !== this.self
      // Held from here (keepalives to the new voters start), served once synced, published after: a lease the table shows is served.
      this.held.set(terms.shard, { terms, record })
      metrics?.placementClaims.inc({ kind: 'claim', result: 'ok' })
      if (takesOver) {
        metrics?.placementMoves.inc({ reason: release != null ? 'handoff' : 'failover' })
        await this.takeState(shard.id, known, prev, granted, release != null, states)
      } else {
        // Our own reconfiguration, or a genesis: this node already has the state it serves.
        this.synced.add(shard.id)
      }
      await this.keep(terms, record)
      const reason: ClaimReason = known == null ? 'genesis' : release != null ? 'handoff' : known.holder === this.self ? 'reconfigure' : 'failover'
      // How long the vote round and the state pull took: where a failover's time goes, after the holder's silence.
      this.log.info({ code: 'LEASE_CLAIMED', shard: shard.id, epoch, previous: known?.holder ?? null, reason, voteMs: votedAt - now, syncMs: Date.now() - votedAt }, 'now hosting shard')
      return true
    }
  }

  /**
   * Before serving a shard taken from another holder: pull its state from the
   * previous voters that granted this epoch (their grant froze them at the old
   * one) until this node has the state of a majority of them, itself
   * included. Every write the old holder answered under the majority write
   * concern is on a majority of those voters, so on one of these. A handoff
   * also pulls from the releasing holder, which has everything.
   */
  private async takeState (shard: string, known: VerifiedLease, prev: string[], granted: Set<string>, handoff: boolean, states: Map<string, Uint8Array>, attempt = 1): Promise<void> {
    const replication = this.components.replication
    const store = await replication.ensure(shard)
    const needed = Math.floor(prev.length / 2) + 1
    let have = prev.includes(this.self) ? 1 : 0
    const sources = [...new Set([...(handoff ? [known.holder] : []), ...prev.filter((p) => p !== this.self && granted.has(p))])]
    const deadline = Date.now() + SYNC_BEFORE_SERVE_MS
    const pending = new Set(sources)
    // A previous voter whose grant says it holds nothing this node lacks needs no pull: its grant fenced it at the
    // old epoch, so what it had then is all it will hold of it. The usual failover: the replicas were up to date.
    // A handoff still pulls from the releasing holder, which has writes its layer's concern did not wait for.
    for (const peer of handoff ? [] : sources) {
      const state = states.get(peer)
      if (state == null || have >= needed) continue
      let theirs: DotContext
      try {
        theirs = decodeContext(state)
      } catch {
        continue
      }
      if (!store.doc.context.covers(theirs)) continue
      pending.delete(peer)
      have++
    }
    let fromHolder = false
    while (pending.size > 0 && Date.now() < deadline && have < needed && !fromHolder) {
      const results = await Promise.all([...pending].map(async (peer) => {
        const ok = await Promise.race([
          replication.sync(shard, peerIdFromString(peer), true).then((r) => r != null, () => false),
          new Promise<boolean>((resolve) => setTimeout(() => resolve(false), Math.max(1, deadline - Date.now())))
        ])
        return [peer, ok] as const
      }))
      for (const [peer, ok] of results) {
        if (!ok) continue
        pending.delete(peer)
        if (prev.includes(peer)) have++
        if (handoff && peer === known.holder) fromHolder = true
      }
    }
    if (have >= needed || fromHolder || prev.length === 0) {
      this.synced.add(shard)
      return
    }
    // Warned once per takeover; the retries are debug.
    this.log[attempt === 1 ? 'warn' : 'debug']({ code: 'TAKEOVER_UNSYNCED', shard, have, needed, attempt }, 'could not pull the state of a majority of the previous voters; not serving yet')
    // Try again in the background, as long as this node holds the lease.
    setTimeout(() => {
      if (this.held.has(shard) && !this.synced.has(shard)) this.run(shard, async () => this.takeState(shard, known, prev, granted, handoff, new Map(), attempt + 1))
    }, 1_000).unref()
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
    const before = this.epochFloor.get(shard) ?? 0
    let floor = before
    for (const vote of refusals) if (!vote.ok) floor = Math.max(floor, vote.epoch)
    if (floor === before) return
    this.epochFloor.set(shard, floor)
    if (floor <= (this.components.leaseOf(shard)?.epoch ?? 0)) return
    // The longest any voter says the new epoch's promise stands (an old voter that does not say: the whole wait).
    const stands = Math.max(...refusals.map((v) => (!v.ok && v.epoch === floor ? Math.min(UNSEEN_HISTORY_WAIT_MS, v.retryInMs ?? UNSEEN_HISTORY_WAIT_MS) : 0)))
    this.unseenUntil.set(shard, Date.now() + stands)
  }

  /** Records a granted lease in the table and starts serving under it. */
  private async keep (terms: LeaseTerms, record: Uint8Array): Promise<void> {
    // Superseded meanwhile (a newer epoch arrived while the state was pulled): nothing to keep.
    if (this.held.get(terms.shard)?.terms.epoch !== terms.epoch) return
    this.held.set(terms.shard, { terms, record })
    await this.components.table.storeLease(terms.shard, terms.epoch, record)
    const verified = await this.components.table.leaseRecord(Buffer.from(record).toString('base64'), Date.now())
    if (verified != null) this.components.adopt(verified)
  }

  private drop (shard: string, reason: string): void {
    this.synced.delete(shard)
    if (!this.held.delete(shard)) return
    this.handingOff.delete(shard)
    this.handoffFailed.delete(shard)
    this.reclaiming.delete(shard)
    this.log.info({ code: 'LEASE_LOST', shard, reason }, 'stopped hosting shard')
  }

  /** Signs a release of (shard, epoch) to `target` and asks it to take the shard over; an unreachable target is an answer too. */
  private async offer (shard: string, epoch: number, target: string): Promise<HandoffAnswer> {
    const release = await signRelease(this.components.privateKey, { shard, epoch, to: target }, Date.now())
    try {
      return await requestHandoff(this.components.libp2p, peerIdFromString(target), shard, release, LEASE_ARRIVAL_MS + VOTE_TIMEOUT_MS + SYNC_BEFORE_SERVE_MS + 2_000)
    } catch (err) {
      return { ok: false, code: 'UNREACHABLE', detail: (err as Error).message }
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
    const answer = await this.offer(shard.id, terms.epoch, target)
    if (answer.ok) {
      this.handoffFailed.delete(shard.id)
      this.drop(shard.id, `handed off to ${target}`)
      return
    }
    this.handoffFailed.set(shard.id, Date.now())
    this.log.warn({ code: 'HANDOFF_FAILED', shard: shard.id, to: target, reason: answer.code ?? 'unknown', detail: answer.detail }, 'handoff failed; keeping the shard')
    // The signed release stays good for the target (it may even have won, and its answer got lost) until a newer
    // epoch voids it: claim that epoch back before taking writes again (every round until it is won, or a newer
    // holder shows up and this node steps down).
    this.reclaiming.add(shard.id)
    await this.reclaim(shard)
  }

  /**
   * A lease the table shows for this node that it does not hold: it stepped
   * down from it (a same-epoch lease of a genesis race superseded it here,
   * while every other node kept this one) or it restarted. Its voters still
   * see it stand while this node runs, and a desired host that is not one of
   * them goes by membership, which sees this node alive: nobody would claim
   * it until its term ran out (5 minutes; the placement e2e waited 90 s for
   * 29 such shards). Sign a release of it to the desired host, as a handoff
   * does; this node serves nothing under it either way.
   */
  async releaseOrphan (shard: ShardInfo, lease: { epoch: number }, target: string): Promise<void> {
    if (this.held.has(shard.id)) return
    this.log.info({ code: 'ORPHAN_RELEASE', shard: shard.id, epoch: lease.epoch, to: target }, 'releasing a lease this node no longer holds')
    const answer = await this.offer(shard.id, lease.epoch, target)
    this.components.metrics?.placementClaims.inc({ kind: 'orphan_release', result: answer.ok ? 'ok' : 'failed' })
    if (!answer.ok) {
      this.handoffFailed.set(shard.id, Date.now())
      this.log.debug({ code: 'ORPHAN_RELEASE_FAILED', shard: shard.id, to: target, reason: answer.code ?? 'unknown' }, 'release of a lease not held was not taken up')
    }
  }

  /** Whether a failed handoff left this shard to be claimed back before it is served again. */
  needsReclaim (shard: string): boolean {
    return this.reclaiming.has(shard)
  }

  /** Claims the next epoch of a shard whose handoff failed, voiding the release this node signed; writes stay refused until then. */
  async reclaim (shard: ShardInfo): Promise<void> {
    const terms = this.held.get(shard.id)?.terms
    if (terms == null) {
      this.reclaiming.delete(shard.id)
      return
    }
    const known = this.components.leaseOf(shard.id)
    // The table has not caught up with our own lease yet (or a newer one superseded it, and superseded() drops it).
    if (known == null || known.holder !== this.self || known.epoch !== terms.epoch) return
    if (await this.claim(shard, this.desiredOf?.(shard.id), known)) {
      this.reclaiming.delete(shard.id)
      this.handingOff.delete(shard.id)
      this.handoffFailed.set(shard.id, Date.now())
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
    if (r.shard !== info.id || r.to !== this.self || r.signer !== from.toString()) return { ok: false, code: 'BAD_RELEASE', detail: 'release is not for this shard, this node, or from the sender' }
    // The lease being released may still be on its way here through the table's gossip: give it a moment.
    let known = this.components.leaseOf(info.id)
    for (let waited = 0; waited < LEASE_ARRIVAL_MS && (known == null || known.epoch < r.epoch); waited += 100) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      known = this.components.leaseOf(info.id)
    }
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
