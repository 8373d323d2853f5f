/**
 * The placement engine on one node. Every `tickMs` it:
 *
 * 1. publishes its own signed capability descriptor in the system shard
 *    `sys.placement`, which every node replicates (so every node has the same
 *    signed inputs);
 * 2. builds the candidate list: nodes with a valid descriptor that its
 *    membership view does not hold dead, with load headroom and coordinate
 *    from their signed load reports;
 * 3. computes the assignment (assign.ts) — deterministic, so nodes with the
 *    same inputs agree — and opens the shards it hosts or replicates;
 * 4. acts on leases (lease.ts), the authority on who serves a shard:
 *    - the desired host of a shard with no lease, or whose lease lapsed,
 *      claims the next epoch (after pulling the shard's state from the
 *      previous voters);
 *    - a holder renews at half the lease time and steps down when a
 *      voter says a newer epoch exists;
 *    - a holder whose shard would do clearly better elsewhere (score gain of
 *      at least `minGain`, held at least `minHoldMs`: hysteresis) hands it
 *      off: it stops taking writes, signs a release, and the new host pulls
 *      the state and claims the next epoch with that release.
 *
 * Leases live in `sys.placement` too: entity `lease.<shard>`, one component
 * per epoch (`e<epoch>`), so a late write of an old epoch never overwrites a
 * newer one. Readers verify every record and take the highest valid epoch.
 */
import { createHash } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { AttestationError, mayHost, trustOf, verifyAttestation, type FederationPolicy, type Trust, type VerifiedAttestation } from '../../attest/attestation.ts'
import { signStatement } from '../../attest/statement.ts'
import { openDescriptor, type CapabilityDescriptor } from '../catalog/descriptor.ts'
import { tagsOf } from '../catalog/tags.ts'
import { LEASE_PROTOCOL, PLACEMENT_SHARD } from '../constants.ts'
import { assign, explain, type Assignment, type Candidate, type Explained, type PlacementParams } from './assign.ts'
import { encodeLeaseRecord, hasQuorum, LeaseVoter, openRelease, signLease, signRelease, verifyLeaseRecord, LeaseError, type LeaseTerms, type VerifiedLease, type Vote } from './lease.ts'
import { handleLeaseProtocol, requestHandoff, requestVote, type HandoffAnswer } from './lease-protocol.ts'
import { shouldMove } from './hysteresis.ts'
import { World, type ShardInfo, type WorldConfig } from './world.ts'
import type { Policy } from './policy.ts'
import type { Catalog } from '../catalog/catalog.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Mesh } from '../mesh.ts'
import type { Replication } from '../sync/replication.ts'
import type { Sublevel } from '../../storage/database.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'

export interface PlacementOptions {
  world: WorldConfig
  params: PlacementParams
  leaseMs: number
  /** Clock difference tolerated between nodes: a holder stops this long before expiry, voters wait this long after. */
  marginMs: number
  tickMs: number
  /** Score gain a planned move must bring (hysteresis). */
  minGain: number
  /** A host keeps a shard at least this long before a planned move (hysteresis). */
  minHoldMs: number
  /** After start, shards with no lease are left alone this long, so the lease table can arrive from peers first. */
  settleMs: number
}

export interface PlacementComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  replication: Replication
  mesh: Mesh
  catalog: Catalog
  policy: Policy
  /** Which operators' nodes may host, and which code digests are accepted. */
  federation: FederationPolicy
  /** Where this node's lease votes are kept. */
  votes: Sublevel
  metrics: P2pMetrics | null
  logger: Logger
}

export interface LeaseView {
  holder: string
  epoch: number
  expiresAt: number
  startedAt: number
  voters: string[]
  /** Not yet expired on this node's clock. */
  valid: boolean
}

export interface ShardPlacement {
  shard: string
  layer: string
  consistency: 'host' | 'crdt'
  homeRegion: string | null
  host: string | null
  replicas: string[]
  overflow: boolean
  lease: LeaseView | null
}

export interface PlacementView {
  self: string
  computedAt: number
  candidates: string[]
  /** sha-256 over the assignment and the lease holders and epochs: equal digests mean equal answers. */
  digest: string
  /** This node's signed statement of the digest (base64url envelope). */
  signature: string
  shards: ShardPlacement[]
}

export interface PeerAddress { peerId: string, addrs: string[] }

/** Why a write was refused by the lease rules; the API turns it into a status. */
export class NotHostError extends Error {
  static override name = 'NotHostError'
  override name = 'NotHostError'
  readonly code: 'NOT_HOST' | 'STALE_EPOCH' | 'HANDOFF_IN_PROGRESS'
  readonly host: PeerAddress | null
  readonly epoch: number | null
  constructor (code: NotHostError['code'], message: string, host: PeerAddress | null, epoch: number | null) {
    super(message)
    this.code = code
    this.host = host
    this.epoch = epoch
  }
}

const VOTE_TIMEOUT_MS = 2_000
const SYNC_BEFORE_SERVE_MS = 3_000
const VIEW_TYPE = 'metagrid.placement-view/v1'

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64')
const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'base64'))

export class Placement {
  readonly world: World
  private readonly components: PlacementComponents
  private readonly options: PlacementOptions
  private readonly log: Logger
  private readonly voter: LeaseVoter
  private readonly self: string
  private timer: NodeJS.Timeout | undefined
  private ticking: Promise<void> | undefined
  private running = false
  private startedAt = 0
  /** Verified descriptors and lease records by their base64 text; both are immutable once signed. */
  private readonly descriptors = new Map<string, CapabilityDescriptor | null>()
  private readonly leaseRecords = new Map<string, VerifiedLease | null>()
  private readonly attestations = new Map<string, VerifiedAttestation | null>()
  /** Each node's standing under the federation policy, as of the last round. */
  private readonly trust = new Map<string, { trust: Trust, operator: string | null, codeDigest: string | null }>()
  private readonly leases = new Map<string, VerifiedLease>()
  private readonly pastHolders = new Map<string, Set<string>>()
  private readonly held = new Map<string, { terms: LeaseTerms, record: Uint8Array }>()
  private readonly busy = new Set<string>()
  /** Highest epoch a voter told us it promised, per shard. */
  private readonly epochFloor = new Map<string, number>()
  private readonly handingOff = new Set<string>()
  private readonly addrs = new Map<string, string[]>()
  private candidates: Candidate[] = []
  private assignment = new Map<string, Assignment>()
  private computedAt = 0
  private fingerprint = ''
  private roundHook: ((held: string[]) => Promise<void>) | undefined
  private hookRunning = false
  private signedView: { digest: string, signature: string } | undefined

  constructor (components: PlacementComponents, options: PlacementOptions) {
    this.components = components
    this.options = options
    this.world = new World(options.world)
    this.log = components.logger.child({ component: 'metagrid:placement' })
    this.self = components.libp2p.peerId.toString()
    this.voter = new LeaseVoter(components.votes, components.privateKey, { maxLeaseMs: options.leaseMs, marginMs: options.marginMs })
  }

  async start (): Promise<void> {
    const { libp2p, replication, metrics } = this.components
    await replication.ensure(PLACEMENT_SHARD)
    replication.admission.setAuthority({
      mayWrite: (shard, origin) => {
        const fence = this.fence(shard, origin)
        return fence === 'ok' ? { ok: true } : fence === 'stale' ? { ok: false, code: 'STALE_EPOCH', action: 'ignore', detail: `${origin} no longer holds the lease of ${shard}` } : { ok: false, code: 'NOT_HOLDER', action: 'ignore', detail: `${origin} holds no lease of ${shard} that this node knows of` }
      },
      mayServe: () => true,
      epochFor: (shard) => this.holding(shard)?.epoch ?? this.leases.get(shard)?.epoch ?? 0
    })
    await handleLeaseProtocol(libp2p, {
      claim: async (lease, release) => this.voter.vote(lease, release),
      handoff: async (shard, release, from) => this.acceptHandoff(shard, release, from)
    }, metrics, this.components.logger)
    this.running = true
    this.startedAt = Date.now()
    this.timer = setInterval(() => { this.schedule() }, this.options.tickMs)
    this.schedule()
  }

  async stop (): Promise<void> {
    this.running = false
    clearInterval(this.timer)
    await this.ticking?.catch(() => {})
    await this.components.libp2p.unhandle(LEASE_PROTOCOL).catch(() => {})
  }

  private schedule (): void {
    if (this.ticking != null || !this.running) return
    this.ticking = this.tick().catch((err) => {
      this.log.warn({ code: 'PLACEMENT_TICK', err }, 'placement round failed')
    }).finally(() => { this.ticking = undefined })
  }

  private table (): ShardStore {
    return this.components.replication.shard(PLACEMENT_SHARD)
  }

  /** One round: publish, read the table, compute, act. Public for tests and the CLI's "now". */
  async tick (): Promise<void> {
    await this.publishDescriptor()
    await this.readTable()
    this.compute()
    const now = Date.now()
    for (const shard of this.world.all()) {
      const desired = this.assignment.get(shard.id)
      const mine = desired?.host === this.self || desired?.replicas.includes(this.self) === true || this.held.has(shard.id)
      if (mine) void this.components.replication.ensure(shard.id).catch((err) => { this.log.warn({ code: 'SHARD_OPEN', shard: shard.id, err }, 'could not open a placed shard') })
      if (this.busy.has(shard.id)) continue
      const held = this.held.get(shard.id)
      if (held != null) {
        if (now >= held.terms.expiresAt - this.options.marginMs) {
          this.dropHeld(shard.id, 'lease expired before it could be renewed')
        } else if (this.reconfigure(held.terms, desired, now)) {
          this.run(shard.id, async () => this.claim(shard, this.leases.get(shard.id)))
        } else if (held.terms.expiresAt - now < this.options.leaseMs / 2) {
          this.run(shard.id, async () => this.renew(shard.id))
        } else if (desired?.host != null && desired.host !== this.self && this.moveWorthIt(shard, held.terms, desired.host, now)) {
          this.run(shard.id, async () => this.handOff(shard, held.terms, desired.host!))
        }
        continue
      }
      const lease = this.leases.get(shard.id)
      const lapsed = lease != null && now > lease.expiresAt + this.options.marginMs
      // A lapsed holder that our view still ranks first is silent: the next candidate takes over without waiting for it to be declared dead.
      const claimer = lapsed && desired?.host === lease.holder ? desired.replicas[0] : desired?.host
      if (claimer !== this.self) continue
      // A node just started has not heard of its peers' leases yet: let the table sync before claiming unleased shards.
      if (lease == null && now - this.startedAt < this.options.settleMs) continue
      if (lease == null || lapsed || lease.holder === this.self) {
        this.run(shard.id, async () => this.claim(shard, lease))
      }
    }
    this.refreshGauges()
    if (this.roundHook != null && !this.hookRunning) {
      this.hookRunning = true
      void this.roundHook(this.heldShards()).catch((err) => {
        this.log.warn({ code: 'ROUND_HOOK', err }, 'post-round work failed')
      }).finally(() => { this.hookRunning = false })
    }
  }

  private run (shard: string, task: () => Promise<unknown>): void {
    this.busy.add(shard)
    void task().catch((err) => {
      this.log.warn({ code: 'LEASE_TASK', shard, err }, 'lease work failed')
    }).finally(() => this.busy.delete(shard))
  }

  private async publishDescriptor (): Promise<void> {
    const signed = this.components.catalog.current()?.signed
    if (signed == null) return
    const text = b64(signed)
    const store = this.table()
    const entity = `node.${this.self}`
    if (store.doc.entity(entity)?.components.d === text) return
    store.doc.setComponent(entity, 'd', text)
    await store.commit()
  }

  private async readTable (): Promise<void> {
    const doc = this.table().doc
    const now = Date.now()
    if (this.descriptors.size > 10_000) this.descriptors.clear()
    if (this.leaseRecords.size > 10_000) this.leaseRecords.clear()
    const candidates: Candidate[] = []
    for (const id of doc.entityIds()) {
      if (id.startsWith('node.')) {
        const text = doc.entity(id)?.components.d
        if (typeof text !== 'string') continue
        const descriptor = await this.descriptor(id.slice(5), text, now)
        if (descriptor == null || descriptor.expiresAt <= now) continue
        this.addrs.set(descriptor.peerId, descriptor.addrs)
        const att = doc.entity(id)?.components.att
        const attestation = typeof att === 'string' ? await this.attestation(descriptor.peerId, att, now) : null
        const trust = trustOf(attestation, this.components.federation)
        this.trust.set(descriptor.peerId, { trust, operator: attestation?.operator ?? null, codeDigest: attestation?.software.codeDigest ?? null })
        const candidate = this.candidate(descriptor, attestation, trust)
        if (candidate != null) candidates.push(candidate)
      } else if (id.startsWith('lease.')) {
        const shard = id.slice(6)
        let best: VerifiedLease | undefined
        for (const [component, value] of Object.entries(doc.entity(id)?.components ?? {})) {
          if (!component.startsWith('e') || typeof value !== 'string') continue
          const lease = await this.leaseRecord(value, now)
          if (lease == null || lease.shard !== shard) continue
          if (best == null || lease.epoch > best.epoch) best = lease
        }
        if (best != null) this.adoptLease(best)
      }
    }
    this.candidates = candidates
  }

  private async descriptor (peerId: string, text: string, now: number): Promise<CapabilityDescriptor | null> {
    if (this.descriptors.has(text)) return this.descriptors.get(text)!
    let descriptor: CapabilityDescriptor | null = null
    try {
      descriptor = await openDescriptor(unb64(text), { now, expectedPeerId: peerId })
    } catch (err) {
      this.components.metrics?.catalogRejected.inc({ reason: (err as { reason?: string }).reason ?? 'encoding' })
    }
    this.descriptors.set(text, descriptor)
    return descriptor
  }

  private async attestation (peerId: string, text: string, now: number): Promise<VerifiedAttestation | null> {
    const cached = this.attestations.get(text)
    if (cached !== undefined) return cached != null && cached.expiresAt > now ? cached : null
    if (this.attestations.size > 10_000) this.attestations.clear()
    let attestation: VerifiedAttestation | null = null
    try {
      attestation = await verifyAttestation(unb64(text), now)
      if (attestation.node !== peerId) throw new AttestationError('subject', `the entry of ${peerId} holds the attestation of ${attestation.node}`)
    } catch (err) {
      if (!(err instanceof AttestationError)) throw err
      this.components.metrics?.catalogRejected.inc({ reason: `attestation-${err.check}` })
      this.log.warn({ code: 'BAD_ATTESTATION', peer: peerId, check: err.check, reason: err.detail }, 'a node\'s attestation does not verify; it cannot host shards')
      attestation = null
    }
    this.attestations.set(text, attestation)
    return attestation
  }

  /** A node's standing under the federation policy (for the mesh view), or undefined if it has published nothing. */
  trustOf (peerId: string): { trust: Trust, operator: string | null, codeDigest: string | null } | undefined {
    return this.trust.get(peerId)
  }

  private async leaseRecord (text: string, now: number): Promise<VerifiedLease | null> {
    if (this.leaseRecords.has(text)) return this.leaseRecords.get(text)!
    let lease: VerifiedLease | null = null
    try {
      lease = await verifyLeaseRecord(unb64(text), now)
    } catch (err) {
      if (!(err instanceof LeaseError)) throw err
      this.components.metrics?.wireRejected.inc({ protocol: 'lease', reason: `RECORD_${err.check.toUpperCase()}` })
      this.log.warn({ code: 'BAD_LEASE_RECORD', check: err.check, reason: err.detail }, 'ignored an invalid lease record in the table')
    }
    this.leaseRecords.set(text, lease)
    return lease
  }

  /** Takes a lease from the table as the shard's current one if it is newer; steps down if it supersedes ours. */
  private adoptLease (lease: VerifiedLease): void {
    const current = this.leases.get(lease.shard)
    if (current != null && (current.epoch > lease.epoch || (current.epoch === lease.epoch && current.expiresAt >= lease.expiresAt))) return
    if (current != null && current.holder !== lease.holder) {
      const past = this.pastHolders.get(lease.shard) ?? new Set()
      past.add(current.holder)
      past.delete(lease.holder)
      this.pastHolders.set(lease.shard, past)
    }
    this.leases.set(lease.shard, lease)
    const held = this.held.get(lease.shard)
    if (held != null && (lease.epoch > held.terms.epoch || (lease.epoch === held.terms.epoch && lease.holder !== this.self))) {
      this.dropHeld(lease.shard, `epoch ${lease.epoch} belongs to ${lease.holder}`)
    }
  }

  private candidate (descriptor: CapabilityDescriptor, attestation: VerifiedAttestation | null, trust: Trust): Candidate | null {
    const { mesh } = this.components
    const own = descriptor.peerId === this.self
    if (!own && (mesh.membership.get(descriptor.peerId)?.state ?? 'dead') === 'dead') return null
    const report = own ? mesh.telemetry.ownReport() : mesh.telemetry.latest(descriptor.peerId)?.report
    return {
      peerId: descriptor.peerId,
      region: descriptor.region,
      // The operator a certificate proves, not the one the descriptor declares.
      operator: attestation?.operator ?? null,
      tags: new Set(tagsOf(descriptor)),
      trusted: mayHost(trust),
      cost: descriptor.cost.perCoreHour,
      reliability: descriptor.reliability.uptime,
      headroom: report == null ? 0.5 : 1 - report.cpu,
      coordinate: own ? mesh.vivaldi.current : report?.coordinate ?? null
    }
  }

  /**
   * Recomputes the assignment when its inputs changed. For 10,000 shards over
   * 1,000 nodes a computation takes ~0.2 s of one core (see the placement
   * bench), so it is not redone every tick for nothing.
   */
  private compute (): void {
    const fingerprint = JSON.stringify(this.candidates.map((c) => [
      c.peerId, c.region, c.operator, c.trusted, [...c.tags].sort(), c.cost, Math.floor(c.reliability * 10 + 1e-9), Math.floor(c.headroom * 4 + 1e-9),
      c.coordinate == null ? null : [c.coordinate.vec.map((x) => Math.round(x / 10)), Math.round(c.coordinate.height / 10)]
    ]).sort())
    if (fingerprint === this.fingerprint) return
    this.fingerprint = fingerprint
    const started = process.hrtime.bigint()
    this.assignment = assign(this.world.all(), this.candidates, this.components.policy, this.options.params)
    this.components.metrics?.placementCompute.observe(Number(process.hrtime.bigint() - started) / 1e9)
    this.computedAt = Date.now()
    this.signedView = undefined
  }

  /** Is moving `shard` from us to `target` worth it? See hysteresis.ts. */
  private moveWorthIt (shard: ShardInfo, terms: LeaseTerms, target: string, now: number): boolean {
    if (this.handingOff.has(shard.id) || !this.candidates.some((c) => c.peerId === target)) return false
    if (now - terms.startedAt < this.options.minHoldMs) return false
    const rows = explain(shard, this.candidates, this.components.policy, this.options.params)
    const cap = Math.ceil((1 + this.options.params.epsilon) * this.world.all().length / Math.max(1, this.candidates.length))
    return shouldMove({
      host: rows.find((r) => r.peerId === this.self),
      target: rows.find((r) => r.peerId === target),
      heldMs: now - terms.startedAt,
      overloaded: this.heldShards().length > cap,
      minGain: this.options.minGain,
      minHoldMs: this.options.minHoldMs
    })
  }

  /**
   * Should the holder move its lease to a new voter set (the replicas the
   * assignment names now)? At once when it has fewer voters than wanted (a
   * genesis lease taken before the peers were known, a dead replica), else
   * once the lease is `minHoldMs` old. The new set comes with a new epoch,
   * granted by both the old and the new set.
   */
  private reconfigure (terms: LeaseTerms, desired: Assignment | undefined, now: number): boolean {
    if (desired == null || desired.host !== this.self) return false
    const wanted = new Set([this.self, ...desired.replicas])
    if (wanted.size === terms.voters.length && terms.voters.every((p) => wanted.has(p))) return false
    return terms.voters.length < wanted.size || now - terms.startedAt >= this.options.minHoldMs
  }

  /** Runs a vote round on a signed lease; resolves to the record when a majority of voters and previous voters granted it. */
  private async collect (terms: LeaseTerms, release?: Uint8Array): Promise<{ record?: Uint8Array, refusals: Vote[] }> {
    const { libp2p, privateKey } = this.components
    const lease = await signLease(privateKey, terms, Date.now())
    const electorate = [...new Set([...terms.voters, ...terms.prev])]
    const votes = await Promise.all(electorate.map(async (peer): Promise<[string, Vote | null]> => {
      if (peer === this.self) return [peer, await this.voter.vote(lease, release)]
      try {
        return [peer, await requestVote(libp2p, peerIdFromString(peer), lease, release, VOTE_TIMEOUT_MS)]
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

  private async claim (shard: ShardInfo, known: VerifiedLease | undefined, release?: Uint8Array): Promise<boolean> {
    const desired = this.assignment.get(shard.id)
    const voters = [this.self, ...(desired?.replicas ?? []).filter((p) => p !== this.self)].slice(0, 16)
    // Previous voters our membership view holds dead are left out: a voter set whose majority died
    // could otherwise never be replaced (availability over the last bit of safety; see the README).
    const prev = (known?.voters ?? []).filter((p) => p === this.self || this.components.mesh.membership.get(p)?.state !== 'dead')
    // A voter may have promised a higher epoch than the table shows (a claim that failed half-way): start above it.
    const epoch = Math.max(known?.epoch ?? 0, this.epochFloor.get(shard.id) ?? 0) + 1
    // Take the state before taking the shard: pull from the previous voters that answer.
    if (known != null && known.holder !== this.self) await this.pullState(shard.id, [...new Set([...(release != null ? [known.holder] : []), ...prev])].filter((p) => p !== this.self))
    const now = Date.now()
    const terms: LeaseTerms = { shard: shard.id, epoch, holder: this.self, voters, prev, expiresAt: now + this.options.leaseMs, startedAt: now }
    const { record, refusals } = await this.collect(terms, release)
    const metrics = this.components.metrics
    this.learnEpochs(shard.id, refusals)
    if (record == null) {
      metrics?.placementClaims.inc({ kind: 'claim', result: refusals[0]?.ok === false ? refusals[0].code.toLowerCase() : 'no_quorum' })
      this.log.debug({ shard: shard.id, epoch, refusals: refusals.map((r) => (r.ok ? 'ok' : r.code)) }, 'lease claim failed')
      return false
    }
    await this.store(terms, record)
    metrics?.placementClaims.inc({ kind: 'claim', result: 'ok' })
    if (known != null && known.holder !== this.self) metrics?.placementMoves.inc({ reason: release != null ? 'handoff' : 'failover' })
    this.log.info({ code: 'LEASE_CLAIMED', shard: shard.id, epoch, previous: known?.holder ?? null, reason: known == null ? 'genesis' : release != null ? 'handoff' : known.holder === this.self ? 'reconfigure' : 'failover' }, 'now hosting shard')
    return true
  }

  private async renew (shard: string): Promise<void> {
    const held = this.held.get(shard)
    if (held == null) return
    const terms: LeaseTerms = { ...held.terms, expiresAt: Date.now() + this.options.leaseMs }
    const { record, refusals } = await this.collect(terms)
    this.learnEpochs(shard, refusals)
    if (record == null) {
      this.components.metrics?.placementClaims.inc({ kind: 'renew', result: 'no_quorum' })
      // A newer epoch of our own (a reconfiguration that did not finish) is no reason to stop; another holder's is.
      const newer = refusals.find((r) => !r.ok && (r.code === 'STALE_EPOCH' || r.code === 'EPOCH_TAKEN') && r.holder !== this.self)
      if (newer != null && !newer.ok) this.dropHeld(shard, `a voter knows epoch ${newer.epoch} of ${newer.holder ?? 'another node'}`)
      return
    }
    if (this.held.get(shard)?.terms.epoch !== terms.epoch) return
    await this.store(terms, record)
    this.components.metrics?.placementClaims.inc({ kind: 'renew', result: 'ok' })
  }

  private learnEpochs (shard: string, refusals: Vote[]): void {
    for (const vote of refusals) {
      if (!vote.ok && vote.epoch > (this.epochFloor.get(shard) ?? 0)) this.epochFloor.set(shard, vote.epoch)
    }
  }

  /** Records a granted lease in the table (dropping older epochs' components) and starts serving under it. */
  private async store (terms: LeaseTerms, record: Uint8Array): Promise<void> {
    this.held.set(terms.shard, { terms, record })
    const store = this.table()
    const entity = `lease.${terms.shard}`
    for (const component of Object.keys(store.doc.entity(entity)?.components ?? {})) {
      if (component.startsWith('e') && Number(component.slice(1)) < terms.epoch) store.doc.deleteComponent(entity, component)
    }
    store.doc.setComponent(entity, `e${terms.epoch}`, b64(record))
    await store.commit()
    const verified = await verifyLeaseRecord(record, Date.now())
    this.leaseRecords.set(b64(record), verified)
    this.adoptLease(verified)
  }

  private dropHeld (shard: string, reason: string): void {
    if (!this.held.delete(shard)) return
    this.handingOff.delete(shard)
    this.log.info({ code: 'LEASE_LOST', shard, reason }, 'stopped hosting shard')
  }

  private async pullState (shard: string, peers: string[]): Promise<void> {
    const replication = this.components.replication
    await replication.ensure(shard)
    const deadline = AbortSignal.timeout(SYNC_BEFORE_SERVE_MS)
    for (const peer of peers) {
      if (deadline.aborted) return
      if (this.components.mesh.membership.get(peer)?.state === 'dead') continue
      if (await Promise.race([replication.sync(shard, peerIdFromString(peer)), new Promise<null>((resolve) => setTimeout(() => resolve(null), SYNC_BEFORE_SERVE_MS))]) != null) return
    }
  }

  /** A planned move: stop taking writes, sign a release, let the new host pull the state and claim the next epoch. */
  private async handOff (shard: ShardInfo, terms: LeaseTerms, target: string): Promise<void> {
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
      this.dropHeld(shard.id, `handed off to ${target}`)
    } else {
      // Keep serving under our lease; a voter that granted the target refuses our renewal, and we step down then.
      this.handingOff.delete(shard.id)
      this.log.warn({ code: 'HANDOFF_FAILED', shard: shard.id, to: target, reason: answer.code ?? 'unknown' }, 'handoff failed; keeping the shard')
    }
  }

  /** The other side of a handoff: the release must come from the holder of the lease we know. */
  private async acceptHandoff (shard: string, release: Uint8Array, from: PeerId): Promise<HandoffAnswer> {
    let r
    try {
      r = await openRelease(release, Date.now())
    } catch (err) {
      return { ok: false, code: 'BAD_RELEASE', detail: (err as Error).message }
    }
    const info = this.world.shard(shard)
    const known = this.leases.get(shard)
    if (info == null || r.shard !== shard || r.to !== this.self || r.signer !== from.toString()) return { ok: false, code: 'BAD_RELEASE', detail: 'release is not for this shard, this node, or from the sender' }
    if (known == null || known.holder !== r.signer || known.epoch !== r.epoch) return { ok: false, code: 'UNKNOWN_LEASE', detail: 'this node does not know the lease being released yet' }
    if (this.busy.has(shard)) return { ok: false, code: 'BUSY', detail: 'a lease round for this shard is running' }
    this.busy.add(shard)
    try {
      return (await this.claim(info, known, release)) ? { ok: true } : { ok: false, code: 'NO_QUORUM', detail: 'voters did not grant the next epoch' }
    } finally {
      this.busy.delete(shard)
    }
  }

  /** Whose gossiped deltas a host-authoritative shard takes: its holder's. */
  private fence (shard: string, origin: string): 'ok' | 'stale' | 'unknown' {
    const info = this.world.shard(shard)
    if (info == null || info.layer.consistency !== 'host') return 'ok'
    if (this.leases.get(shard)?.holder === origin) return 'ok'
    return this.pastHolders.get(shard)?.has(origin) === true ? 'stale' : 'unknown'
  }

  /** The node that takes writes for a shard now: the holder of its valid lease. */
  hostOf (shard: string): string | null {
    const lease = this.leases.get(shard)
    return lease != null && Date.now() < lease.expiresAt ? lease.holder : null
  }

  /**
   * World shards with a host holding a valid lease, as this node's table
   * shows (the availability SLI); null while the node is starting (settling
   * and one lease time), when a table still arriving says nothing of the mesh.
   */
  availability (): { good: number, total: number } | null {
    const now = Date.now()
    if (!this.running || now - this.startedAt < this.options.settleMs + this.options.leaseMs) return null
    const all = this.world.all()
    return { good: all.filter((s) => this.hostOf(s.id) != null).length, total: all.length }
  }

  /** Shards whose lease this node holds now. */
  heldShards (): string[] {
    return [...this.held.keys()].filter((shard) => this.holding(shard) != null)
  }

  /** Work to run after each round, one at a time (entity transfers to settle). */
  setRoundHook (hook: (held: string[]) => Promise<void>): void {
    this.roundHook = hook
  }

  /** The lease this node holds for a shard and may serve under now. */
  holding (shard: string): LeaseTerms | undefined {
    const held = this.held.get(shard)
    return held != null && Date.now() < held.terms.expiresAt - this.options.marginMs ? held.terms : undefined
  }

  /**
   * Throws NotHostError when this node may not take a write to `shard`:
   * host-authoritative shards take writes from their lease holder only, under
   * the epoch the client names (if it names one). Other shards: no rule.
   */
  guardWrite (shard: string, epoch: number | undefined): void {
    const info = this.world.shard(shard)
    if (info == null || info.layer.consistency !== 'host') return
    const lease = this.leases.get(shard)
    const host = lease != null ? this.address(lease.holder) : null
    if (this.handingOff.has(shard)) throw new NotHostError('HANDOFF_IN_PROGRESS', `shard ${shard} is moving to another host; retry shortly`, host, lease?.epoch ?? null)
    const held = this.holding(shard)
    if (held == null) throw new NotHostError('NOT_HOST', `this node does not hold the lease of ${shard}`, host, lease?.epoch ?? null)
    if (epoch != null && epoch !== held.epoch) throw new NotHostError('STALE_EPOCH', `write names epoch ${epoch}; the current epoch is ${held.epoch}`, this.address(this.self), held.epoch)
  }

  private address (peerId: string): PeerAddress {
    return { peerId, addrs: this.addrs.get(peerId) ?? [] }
  }

  /** Where a client goes for a position: the shard, its lease holder (or desired host) and replicas, and the epoch. */
  locate (x: number, y: number, layer: string): { shard: string, consistency: string, host: PeerAddress | null, replicas: PeerAddress[], epoch: number | null } | undefined {
    const info = this.world.locate(x, y, layer)
    if (info == null) return undefined
    const lease = this.leases.get(info.id)
    const valid = lease != null && Date.now() < lease.expiresAt
    const desired = this.assignment.get(info.id)
    const host = valid ? lease.holder : desired?.host ?? null
    const replicas = (valid ? lease.voters : desired?.replicas ?? []).filter((p) => p !== host)
    return { shard: info.id, consistency: info.layer.consistency, host: host == null ? null : this.address(host), replicas: replicas.map((p) => this.address(p)), epoch: valid ? lease.epoch : null }
  }

  explain (shard: string): { shard: ShardInfo, rules: string[], candidates: Explained[], assignment: Assignment | null, lease: LeaseView | null } | undefined {
    const info = this.world.shard(shard)
    if (info == null) return undefined
    return {
      shard: info,
      rules: this.components.policy.rulesFor(info).map((r) => r.name),
      candidates: explain(info, this.candidates, this.components.policy, this.options.params),
      assignment: this.assignment.get(shard) ?? null,
      lease: this.leaseView(shard, Date.now())
    }
  }

  private leaseView (shard: string, now: number): LeaseView | null {
    const lease = this.leases.get(shard)
    return lease == null ? null : { holder: lease.holder, epoch: lease.epoch, expiresAt: lease.expiresAt, startedAt: lease.startedAt, voters: lease.voters, valid: now < lease.expiresAt }
  }

  async view (): Promise<PlacementView> {
    const now = Date.now()
    const shards = this.world.all().map((info): ShardPlacement => {
      const a = this.assignment.get(info.id)
      return { shard: info.id, layer: info.layer.name, consistency: info.layer.consistency, homeRegion: info.homeRegion, host: a?.host ?? null, replicas: a?.replicas ?? [], overflow: a?.overflow ?? false, lease: this.leaseView(info.id, now) }
    })
    if (this.signedView == null) {
      const canonical = JSON.stringify(shards.map((s) => [s.shard, s.host, s.replicas]))
      const digest = createHash('sha256').update(canonical).digest('hex')
      const statement = await signStatement(this.components.privateKey, { type: VIEW_TYPE, subjects: [{ id: 'placement', digest }], predicate: { candidates: this.candidates.length }, issuedAt: now, notBefore: now, expiresAt: now + 3_600_000 })
      this.signedView = { digest, signature: Buffer.from(statement).toString('base64url') }
    }
    return { self: this.self, computedAt: this.computedAt, candidates: this.candidates.map((c) => c.peerId).sort(), ...this.signedView, shards }
  }

  private refreshGauges (): void {
    const metrics = this.components.metrics
    if (metrics == null) return
    let max = 0
    let held = 0
    for (const [shard] of this.held) {
      const terms = this.holding(shard)
      if (terms == null) continue
      held++
      max = Math.max(max, terms.epoch)
    }
    metrics.placementLeasesHeld.set(held)
    metrics.placementEpochMax.set(max)
    metrics.placementOverflow.set([...this.assignment.values()].filter((a) => a.overflow).length)
    const all = this.world.all()
    metrics.placementUnheld.set(all.filter((s) => this.hostOf(s.id) == null).length)
  }
}
