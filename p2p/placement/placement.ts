/**
 * The placement engine on one node. Every `tickMs` it:
 *
 * 1. publishes its own signed capability descriptor in the system shard
 *    `sys.placement` (placement-table.ts), which every node replicates, so
 *    every node has the same signed inputs;
 * 2. builds the candidate list: nodes with a valid descriptor that its
 *    membership view does not hold dead, with load headroom and coordinate
 *    from their signed load reports;
 * 3. computes the assignment (assign.ts), deterministic, so nodes with the
 *    same inputs agree, and opens the shards it hosts or replicates;
 * 4. judges the lease records in the table against its own view
 *    (lease-rules.ts) and keeps the accepted ones (lease-history.ts): the
 *    authority on who serves a shard, and, through the write authority
 *    (write-authority.ts), on whose writes every path admits;
 * 5. acts on its own leases (lease-keeper.ts): claims, renewals, voter-set
 *    changes and planned handoffs.
 */
import { createHash } from 'node:crypto'
import { mayHost } from '../../attest/attestation.ts'
import { signStatement } from '../../attest/statement.ts'
import { tagsOf } from '../catalog/tags.ts'
import { LEDGER_SHARD, PLACEMENT_SHARD } from '../constants.ts'
import { explain, type Assignment, type Candidate, type Explained, type PlacementParams } from './assign.ts'
import { assignInRegions, regionOf, type ScopeOptions } from '../hierarchy/regions.ts'
import { shouldMove } from './hysteresis.ts'
import { LeaseHistory } from './lease-history.ts'
import { LeaseKeeper } from './lease-keeper.ts'
import { followedBy, judgeLease } from './lease-rules.ts'
import { PlacementTable, type TableNode } from './placement-table.ts'
import { placementAuthority } from './write-authority.ts'
import { World, writeConcernOf, type ShardInfo, type WorldConfig } from './world.ts'
import type { FederationPolicy } from '../../attest/attestation.ts'
import type { WriteAuthority } from '../admission/authority.ts'
import type { LeaseTerms, VerifiedLease } from './lease.ts'
import type { LivenessOptions } from './liveness.ts'
import type { LoopMonitor } from '../health/loop-monitor.ts'
import { Policy, type PolicySubject } from './policy.ts'
import type { Catalog } from '../catalog/catalog.ts'
import type { Registrar } from '../provenance.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Mesh } from '../mesh.ts'
import type { Replication } from '../sync/replication.ts'
import type { Sublevel } from '../../storage/database.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PrivateKey } from '@libp2p/interface'

export interface PlacementOptions {
  world: WorldConfig
  params: PlacementParams
  /** A lease's term (renewed at half); failover goes by `liveness`, not by it. */
  leaseMs: number
  liveness: LivenessOptions
  /** How long a write waits for a majority of its shard's voters (layers with the majority write concern). */
  writeTimeoutMs: number
  /** Clock difference tolerated between nodes: a holder stops this long before expiry, voters wait this long after. */
  marginMs: number
  tickMs: number
  /** Score gain a planned move must bring (hysteresis). */
  minGain: number
  /** A host keeps a shard at least this long before a planned move (hysteresis). */
  minHoldMs: number
  /** Overflow out of a home region (regions.ts): the mean load above which it takes help, and how many regions a shard spans at most. */
  regions: Pick<ScopeOptions, 'maxLoad' | 'maxRegions'>
  /** After start, shards with no lease are left alone this long, so the lease table can arrive from peers first. */
  settleMs: number
  /**
   * This node was given peers to join: it founds no shard (a genesis lease)
   * before it has exchanged the lease table with a peer, so it does not
   * found beside a lease it has not heard of yet.
   */
  joining: boolean
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
  /** This process's event-loop stalls: a voter does not count its own stall as a holder's silence. */
  loop: LoopMonitor | null
  /** Who may write shards outside the world (served and system shards). */
  fallbackAuthority: WriteAuthority
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
  /** The regions the shard is placed over (home first; more when home is short, overloaded or gone); null for a shard with no home region, placed over every region. */
  scope: string[] | null
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
  readonly code: 'NOT_HOST' | 'NOT_REPLICA' | 'STALE_EPOCH' | 'HANDOFF_IN_PROGRESS'
  readonly host: PeerAddress | null
  readonly epoch: number | null
  constructor (code: NotHostError['code'], message: string, host: PeerAddress | null, epoch: number | null) {
    super(message)
    this.code = code
    this.host = host
    this.epoch = epoch
  }
}

const VIEW_TYPE = 'metagrid.placement-view/v1'
/** How long past `settleMs` a joining node waits for a lease-table sync before it founds shards anyway. */
const FOUND_WAIT_MS = 30_000
/** Epochs a lease may skip past the newest one a reader accepted (claims that failed half-way, epochs it missed). */
const MAX_EPOCH_GAP = 64
/** Lease records whose refusal was counted, so a record judged again each round is counted once; cleared when full. */
const MAX_REFUSALS_REMEMBERED = 10_000
/** Older records one bridge() may look at (a shard's table holds eight epochs; a hostile one could hold more records per epoch). */
const MAX_BRIDGE_VISITS = 64

/** Whether `lease` names `r` as its predecessor: r's holder, and previous voters among r's voters. */
function follows (lease: VerifiedLease, r: VerifiedLease): boolean {
  return r.holder === lease.prevHolder && lease.prev.every((peer) => r.voters.includes(peer))
}

export class Placement {
  readonly world: World
  private readonly components: PlacementComponents
  private readonly options: PlacementOptions
  private readonly log: Logger
  private readonly self: string
  private readonly table: PlacementTable
  /** Every epoch of the ledger's registrar is kept: receipts of any age are checked against them. */
  private readonly history = new LeaseHistory(undefined, (shard) => shard === LEDGER_SHARD)
  private readonly keeper: LeaseKeeper
  private readonly refused = new Set<string>()
  private timer: NodeJS.Timeout | undefined
  private ticking: Promise<void> | undefined
  private running = false
  /** A lease record arrived between rounds: the table's leases are judged again at once (refreshLeases). */
  private leaseRefresh: Promise<void> | undefined
  private leaseRefreshAgain = false
  private startedAt = 0
  private foundWaitLogged = false
  /** The epoch each world shard's last write here was taken under (one entry per shard of the world at most). */
  private readonly writeEpochs = new Map<string, number>()
  private candidates: Candidate[] = []
  /** Every node in the table as the policy sees it, alive or not: what lease eligibility is judged by. */
  private subjects = new Map<string, PolicySubject>()
  private assignment = new Map<string, Assignment>()
  /** Each home region's placement scope, from the last computation (regions.ts). */
  private scopes = new Map<string, string[]>()
  /** Each candidate's region as placement counts it (regionOf), from the last computation. */
  private regionByPeer = new Map<string, string>()
  /** Shards per home region. */
  private readonly groupSizes = new Map<string, number>()
  /** The regions the world names as homes: a node in a subdivision of one counts in it. */
  private readonly homes: Set<string>
  private computedAt = 0
  private fingerprint = ''
  private roundHook: ((held: string[]) => Promise<void>) | undefined
  private hookRunning = false
  private signedView: { digest: string, signature: string } | undefined

  constructor (components: PlacementComponents, options: PlacementOptions) {
    this.components = components
    this.options = options
    this.world = new World(options.world, [LEDGER_SHARD])
    this.homes = new Set(options.world.regions.map((r) => r.region))
    for (const shard of this.world.all()) if (shard.homeRegion != null) this.groupSizes.set(shard.homeRegion, (this.groupSizes.get(shard.homeRegion) ?? 0) + 1)
    this.log = components.logger.child({ component: 'metagrid:placement' })
    this.self = components.libp2p.peerId.toString()
    this.table = new PlacementTable({
      replication: components.replication,
      federation: components.federation,
      isWorldShard: (shard) => this.world.shard(shard) != null,
      keepsAllEpochs: (shard) => shard === LEDGER_SHARD,
      metrics: components.metrics,
      logger: components.logger
    })
    this.keeper = new LeaseKeeper({
      libp2p: components.libp2p,
      privateKey: components.privateKey,
      replication: components.replication,
      membership: components.mesh.membership,
      table: this.table,
      votes: components.votes,
      checkClaim: (terms) => this.checkClaim(terms),
      leaseOf: (shard) => this.history.current(shard),
      adopt: (lease) => { this.adopt(lease) },
      onHolderSilent: () => { this.schedule() },
      loop: components.loop,
      metrics: components.metrics,
      logger: components.logger
    }, { leaseMs: options.leaseMs, marginMs: options.marginMs, liveness: options.liveness })
    this.keeper.setAssignment((shard) => this.assignment.get(shard))
  }

  async start (): Promise<void> {
    const { replication } = this.components
    await replication.ensure(PLACEMENT_SHARD)
    replication.admission.setRules(PLACEMENT_SHARD, this.table.rules())
    replication.admission.setAuthority(placementAuthority({
      world: this.world,
      history: this.history,
      assigned: (shard, peer) => this.assigned(shard, peer),
      // A write is sealed when its group commit flushes, a few ms after it was taken: if the lease moved on in between
      // (a handoff), the batch still names the epoch the write was taken under, not none (which every reader refuses).
      heldEpoch: (shard) => this.keeper.holding(shard)?.epoch ?? this.writeEpochs.get(shard),
      self: this.self,
      marginMs: this.options.marginMs,
      fallback: this.components.fallbackAuthority
    }))
    // A voter that granted a newer epoch of a host shard holds no write of an older one: nothing the old holder writes reaches a majority.
    replication.setFence((shard, epoch) => {
      const info = this.world.shard(shard)
      if (info == null || info.layer.consistency !== 'host') return null
      return this.keeper.promisedEpoch(shard) > epoch ? 'STALE_EPOCH' : null
    })
    await this.keeper.start(this.world)
    // A member suspected or dead may hold leases: look at its shards now rather than next round.
    this.components.mesh.membership.addEventListener('member:suspect', this.onMemberDown)
    this.components.mesh.membership.addEventListener('member:dead', this.onMemberDown)
    replication.addEventListener('change', this.onTableChange)
    this.running = true
    this.startedAt = Date.now()
    this.timer = setInterval(() => { this.schedule() }, this.options.tickMs)
    this.schedule()
  }

  private readonly onMemberDown = (): void => { this.schedule() }

  /**
   * A lease record from a peer: judged now, not at the next round (up to
   * `tickMs` later). A new host's first writes reach its voters and replicas
   * right after its record does; until they know its epoch they ignore them
   * (UNKNOWN_EPOCH), which a failover measured as half a second of majority
   * writes waiting.
   */
  private readonly onTableChange = (event: CustomEvent<{ shard: string, result: { entities: Set<string> } | null, local: boolean }>): void => {
    const { shard, result, local } = event.detail
    if (shard !== PLACEMENT_SHARD || local || result == null) return
    for (const entity of result.entities) {
      if (entity.startsWith('lease.')) {
        this.refreshLeases()
        return
      }
    }
  }

  private refreshLeases (): void {
    if (!this.running || this.computedAt === 0) return
    if (this.leaseRefresh != null) {
      this.leaseRefreshAgain = true
      return
    }
    this.leaseRefresh = (async () => {
      do {
        this.leaseRefreshAgain = false
        const { leases } = await this.table.read(Date.now())
        // Only records past the epoch this node already follows: a successor of a known lease is unique (each
        // previous voter grants one holder per epoch), so judging it on arrival decides nothing a round would
        // decide otherwise. Races (two geneses, the chains they grew) are left to the round, which sees every
        // record the table has at once; judged one by one in arrival order, nodes could keep different sides.
        const ahead = new Map<string, VerifiedLease[]>()
        for (const [shard, records] of leases) {
          const current = this.history.current(shard)
          if (current == null) continue
          const newer = records.filter((lease) => lease.epoch > current.epoch)
          if (newer.length > 0) ahead.set(shard, newer)
        }
        this.judge(ahead)
      } while (this.leaseRefreshAgain && this.running)
    })().catch((err) => {
      this.log.warn({ code: 'LEASE_REFRESH', err }, 'judging new lease records failed')
    }).finally(() => { this.leaseRefresh = undefined })
  }

  async stop (): Promise<void> {
    this.running = false
    this.components.mesh.membership.removeEventListener('member:suspect', this.onMemberDown)
    this.components.mesh.membership.removeEventListener('member:dead', this.onMemberDown)
    this.components.replication.removeEventListener('change', this.onTableChange)
    clearInterval(this.timer)
    await this.ticking?.catch(() => {})
    await this.leaseRefresh
    await this.keeper.stop()
  }

  private schedule (): void {
    if (this.ticking != null || !this.running) return
    this.ticking = this.tick().catch((err) => {
      this.log.warn({ code: 'PLACEMENT_TICK', err }, 'placement round failed')
    }).finally(() => { this.ticking = undefined })
  }

  /** One round: publish, read the table, compute, judge leases, act. Public for tests and the CLI's "now". */
  async tick (): Promise<void> {
    const signed = this.components.catalog.current()?.signed
    if (signed != null) await this.table.publishDescriptor(this.self, signed)
    const now = Date.now()
    const { nodes, leases } = await this.table.read(now)
    this.subjects = new Map(nodes.map((node) => [node.descriptor.peerId, this.subject(node)]))
    this.candidates = nodes.map((node) => this.candidate(node)).filter((c): c is Candidate => c != null)
    this.compute()
    this.judge(leases)
    for (const shard of this.world.all()) this.act(shard, now)
    this.refreshGauges()
    if (this.roundHook != null && !this.hookRunning) {
      this.hookRunning = true
      void this.roundHook(this.heldShards()).catch((err) => {
        this.log.warn({ code: 'ROUND_HOOK', err }, 'post-round work failed')
      }).finally(() => { this.hookRunning = false })
    }
  }

  /** What this node does about one shard this round (see lease-keeper.ts). */
  private act (shard: ShardInfo, now: number): void {
    const { keeper } = this
    const desired = this.assignment.get(shard.id)
    const mine = desired?.host === this.self || desired?.replicas.includes(this.self) === true || keeper.holds(shard.id)
    if (mine) void this.components.replication.ensure(shard.id).catch((err) => { this.log.warn({ code: 'SHARD_OPEN', shard: shard.id, err }, 'could not open a placed shard') })
    if (keeper.isBusy(shard.id)) return
    const terms = keeper.termsOf(shard.id)
    if (terms != null) {
      if (keeper.expire(shard.id, now)) return
      if (keeper.needsReclaim(shard.id)) {
        keeper.run(shard.id, async () => keeper.reclaim(shard))
      } else if (this.reconfigure(terms, desired, now)) {
        keeper.run(shard.id, async () => keeper.claim(shard, desired, this.history.current(shard.id)))
      } else if (terms.expiresAt - now < this.options.leaseMs / 2) {
        keeper.run(shard.id, async () => keeper.renew(shard.id))
      } else if (desired?.host != null && desired.host !== this.self && this.moveWorthIt(shard, terms, desired.host, now)) {
        keeper.run(shard.id, async () => keeper.handOff(shard, desired.host!))
      }
      return
    }
    const lease = this.history.current(shard.id)
    // Ours in the table, not held here, and wanted elsewhere: let it go (releaseOrphan says why), once the table has settled.
    if (lease != null && lease.holder === this.self && now <= lease.expiresAt && desired?.host != null && desired.host !== this.self &&
        now - this.startedAt >= this.options.settleMs && keeper.mayHandOff(shard.id, now)) {
      keeper.run(shard.id, async () => keeper.releaseOrphan(shard, lease, desired.host!))
      return
    }
    const lapsed = lease != null && lease.holder !== this.self && (now > lease.expiresAt + this.options.marginMs || this.holderDown(lease))
    // A lapsed holder that our view still ranks first is silent: the next candidate takes over without waiting for it to be declared dead.
    const claimer = lapsed && desired?.host === lease.holder ? desired.replicas[0] : desired?.host
    if (claimer !== this.self) return
    // A node just started has not heard of its peers' leases yet (nor that a lease it held was taken over): let the table sync first.
    if (now - this.startedAt < this.options.settleMs) return
    if (lease == null && !this.mayFound(now)) return
    if (lease == null || lapsed || lease.holder === this.self) keeper.run(shard.id, async () => keeper.claim(shard, desired, lease))
  }

  /**
   * Whether this node may claim the first lease of a shard nobody holds. Two
   * such genesis leases on disjoint voter sets are both valid, and the
   * placement e2e saw such races fork a shard's history for good when the
   * machine was busy: a joining node whose table had not arrived within
   * `settleMs` founded shards that were already held. So a node founds only
   * once a session of the lease table with a peer has run to its end (it has
   * what that peer knew), or when it is alone (no peers to join and no
   * connection), or after `FOUND_WAIT_MS` more without either (peers that
   * never answer a sync do not keep a shard unheld for ever).
   */
  private mayFound (now: number): boolean {
    if (this.components.replication.exchangedOnce(PLACEMENT_SHARD)) return true
    if (!this.options.joining && this.components.libp2p.getConnections().length === 0) return true
    if (now - this.startedAt < this.options.settleMs + FOUND_WAIT_MS) return false
    if (!this.foundWaitLogged) {
      this.foundWaitLogged = true
      this.log.warn({ code: 'FOUND_UNSYNCED', waitedMs: now - this.startedAt }, 'no lease-table sync with a peer has completed; founding unheld shards on what this node knows')
    }
    return true
  }

  /**
   * Whether a lease's holder is gone as far as this node can tell: a voter
   * of the lease knows from the holder's keepalives, or from membership
   * holding it dead; any other node goes by membership. Either way the
   * voters decide; this only says when to ask.
   */
  private holderDown (lease: VerifiedLease): boolean {
    const state = this.components.mesh.membership.get(lease.holder)?.state
    // A voter whose grant was not among the quorum the lease was valid with promised the holder nothing and hears no
    // keepalives from it: for it, as for any node, a holder membership holds dead is down. (The two-region e2e saw
    // it: the desired host of a lost region's shard was such a voter and never claimed the shard.)
    if (lease.voters.includes(this.self) || lease.prev.includes(this.self)) return this.keeper.leaseDown(lease) || state === 'dead'
    return state === 'suspect' || state === 'dead'
  }

  /**
   * Judges the table's lease records against this node's view, oldest epoch
   * first, and keeps those it accepts; then, newest first, takes the older
   * epochs its accepted ones name as their predecessors (lease-rules.ts).
   */
  private judge (leases: Map<string, VerifiedLease[]>): void {
    for (const [shard, records] of leases) {
      if (this.world.shard(shard) == null) continue
      for (let i = records.length - 1; i >= 0; i--) {
        const lease = records[i]!
        if (this.history.at(shard, lease.epoch) == null && followedBy(lease, this.history.after(shard, lease.epoch))) this.adopt(lease)
      }
      for (const lease of records) {
        // Two leases of one epoch can both be valid (a genesis race between disjoint voter sets): the next
        // epoch names which one it followed, and the table's older records bridge it back to where this
        // node's history agrees, or to the other genesis of the same race (bridge()).
        let previous = this.history.before(shard, lease.epoch)
        let bridge: VerifiedLease[] = []
        if (previous != null && previous.epoch === lease.epoch - 1 && !follows(lease, previous)) {
          bridge = this.bridge(shard, lease, records, { visits: MAX_BRIDGE_VISITS }) ?? []
          if (bridge.length > 0) previous = bridge[0]
        }
        const verdict = this.judged(shard, lease, previous)
        if (verdict.ok) {
          for (const older of bridge) this.history.replace(older)
          this.adopt(lease)
          continue
        }
        const key = `${shard}\u0000${lease.epoch}\u0000${lease.holder}\u0000${verdict.code}`
        if (this.refused.has(key)) continue
        if (this.refused.size >= MAX_REFUSALS_REMEMBERED) this.refused.clear()
        this.refused.add(key)
        this.components.metrics?.admissionRejected.inc({ path: 'lease', reason: verdict.code, action: 'ignore' })
        this.log.debug({ code: verdict.code, shard, epoch: lease.epoch, holder: lease.holder, reason: verdict.detail }, 'lease not accepted')
      }
    }
  }

  /**
   * The older records, newest first, through which `lease` follows this
   * node's history when its predecessor is not the lease this node kept:
   * each one valid against the one below it, down to a lease that follows
   * this node's history, or to a genesis (epoch 1, no previous voters)
   * issued within a lease term of the genesis this node kept, the other
   * winner of the same race. Two nodes that kept different geneses and saw
   * both histories grow would otherwise never agree (the placement e2e saw
   * it: one shard of 65, two hosts, 90 s). A genesis issued later than that
   * is no race: a node that forks a shard's history so is refused, as
   * before. Null when there is no such bridge; bounded by `budget`.
   */
  private bridge (shard: string, lease: VerifiedLease, records: VerifiedLease[], budget: { visits: number }): VerifiedLease[] | null {
    for (const r of records) {
      if (r.epoch !== lease.epoch - 1 || !follows(lease, r) || budget.visits-- <= 0) continue
      if (r.epoch === 1 && r.prev.length === 0 && r.prevHolder == null) {
        const kept = this.history.at(shard, 1)
        if (kept != null && Math.abs(r.issuedAt - kept.issuedAt) <= this.options.leaseMs && this.judged(shard, r, undefined).ok) return [r]
        continue
      }
      const below = this.history.before(shard, r.epoch)
      if (below == null) continue
      if (below.epoch !== r.epoch - 1 || follows(r, below)) {
        if (this.judged(shard, r, below).ok) return [r]
        continue
      }
      const deeper = this.bridge(shard, r, records, budget)
      if (deeper != null && deeper.length > 0 && this.judged(shard, r, deeper[0]).ok) return [r, ...deeper]
    }
    return null
  }

  private judged (shard: string, lease: VerifiedLease, previous: VerifiedLease | undefined): ReturnType<typeof judgeLease> {
    return judgeLease(lease, {
      leaseMs: this.options.leaseMs,
      marginMs: this.options.marginMs,
      maxEpochGap: MAX_EPOCH_GAP,
      previous,
      eligible: (peer) => this.eligible(shard, peer),
      mayHost: (peer) => this.mayHost(peer)
    })
  }

  private adopt (lease: VerifiedLease): void {
    if (this.history.add(lease) !== 'unchanged') this.keeper.superseded(lease)
  }

  /**
   * Whether the assignment's rules allow `peer` for `shard`: a node with a valid
   * descriptor in the table that the policy, the layer's capabilities and the
   * federation policy do not rule out. Deterministic from the table alone.
   */
  private eligible (shard: string, peer: string): boolean {
    const info = this.world.shard(shard)
    const subject = this.subjects.get(peer)
    return info != null && subject != null && Policy.refusal(info, this.components.policy.rulesFor(info), subject) == null
  }

  /** Whether this node's assignment names `peer` host or replica of `shard`. */
  private assigned (shard: string, peer: string): boolean {
    const a = this.assignment.get(shard)
    return a != null && (a.host === peer || a.replicas.includes(peer))
  }

  /** Whether `peer` may host and replicate under the federation policy, as the table shows it (always, in an open mesh). */
  mayHost (peer: string): boolean {
    if (peer === this.self || this.components.federation.trustedOperators.size === 0) return true
    const standing = this.table.trustOf(peer)
    return standing != null && mayHost(standing.trust)
  }

  /** The voter's view of a claim: a shard of the world, claimed by a node the assignment or the current voters allow. */
  private checkClaim (terms: LeaseTerms): { ok: true } | { ok: false, code: 'NOT_ELIGIBLE' | 'BAD_LEASE', detail: string } {
    if (this.world.shard(terms.shard) == null) return { ok: false, code: 'BAD_LEASE', detail: `${terms.shard} is not a shard of this node's world` }
    if (!this.mayHost(terms.holder)) return { ok: false, code: 'NOT_ELIGIBLE', detail: `${terms.holder} may not host under the federation policy` }
    const current = this.history.current(terms.shard)
    if (this.eligible(terms.shard, terms.holder) || current?.voters.includes(terms.holder) === true) return { ok: true }
    return { ok: false, code: 'NOT_ELIGIBLE', detail: `${terms.holder} may not host ${terms.shard} under the assignment's rules, nor is it one of its voters` }
  }

  private subject (node: TableNode): PolicySubject {
    const { descriptor, attestation, trust } = node
    return {
      peerId: descriptor.peerId,
      region: descriptor.region,
      // The operator a certificate proves, not the one the descriptor declares.
      operator: attestation?.operator ?? null,
      tags: new Set(tagsOf(descriptor)),
      trusted: mayHost(trust)
    }
  }

  private candidate (node: TableNode): Candidate | null {
    const { mesh } = this.components
    const { descriptor } = node
    const own = descriptor.peerId === this.self
    if (!own && (mesh.membership.get(descriptor.peerId)?.state ?? 'dead') === 'dead') return null
    const report = own ? mesh.telemetry.ownReport() : mesh.telemetry.latest(descriptor.peerId)?.report
    return {
      ...this.subject(node),
      cost: descriptor.cost.perCoreHour,
      reliability: descriptor.reliability.uptime,
      headroom: report == null ? 0.5 : 1 - report.cpu,
      coordinate: own ? mesh.vivaldi.current : report?.coordinate ?? null
    }
  }

  /** A node's standing under the federation policy (for the mesh view), or undefined if it has published nothing. */
  trustOf (peerId: string): ReturnType<PlacementTable['trustOf']> {
    return this.table.trustOf(peerId)
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
    const placed = assignInRegions(this.world.all(), this.candidates, this.components.policy, this.options.params, this.options.regions)
    this.assignment = placed.assignment
    this.scopes = placed.scopes
    this.regionByPeer = new Map(this.candidates.map((c) => [c.peerId, regionOf(c.region, this.homes)]))
    this.components.metrics?.placementCompute.observe(Number(process.hrtime.bigint() - started) / 1e9)
    this.computedAt = Date.now()
    this.signedView = undefined
  }

  /** Is moving `shard` from us to `target` worth it? See hysteresis.ts. */
  private moveWorthIt (shard: ShardInfo, terms: LeaseTerms, target: string, now: number): boolean {
    if (!this.keeper.mayHandOff(shard.id, now) || !this.candidates.some((c) => c.peerId === target)) return false
    if (now - terms.startedAt < this.options.minHoldMs) return false
    const rows = this.explainRows(shard)
    return shouldMove({
      host: rows.find((r) => r.peerId === this.self),
      target: rows.find((r) => r.peerId === target),
      heldMs: now - terms.startedAt,
      overloaded: this.overloaded(shard),
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
    if (desired == null) return false
    const wanted = new Set([this.self, ...desired.replicas])
    // Kept here though another node is wanted (the move is not worth it yet): a lease with fewer voters than its
    // shard wants still grows them, or this node's crash leaves the shard unheld until the lease runs out. A clean-
    // clone CI run saw it: a genesis lease taken alone kept its single voter, and killing its holder stopped the shard.
    if (desired.host !== this.self) return terms.voters.length < wanted.size
    if (wanted.size === terms.voters.length && terms.voters.every((p) => wanted.has(p))) return false
    return terms.voters.length < wanted.size || now - terms.startedAt >= this.options.minHoldMs
  }

  /** The provenance ledger's registrar, as this node's accepted leases of `sys.ledger` say (see p2p/provenance.ts). */
  registrar (): Registrar {
    return {
      current: () => {
        const lease = this.history.current(LEDGER_SHARD)
        return lease != null && Date.now() < lease.expiresAt ? { peer: lease.holder, epoch: lease.epoch } : null
      },
      heldEpoch: () => this.keeper.holding(LEDGER_SHARD)?.epoch,
      witnessed: (receipt) => {
        const lease = this.history.at(LEDGER_SHARD, receipt.epoch)
        const next = this.history.after(LEDGER_SHARD, receipt.epoch)
        return lease?.holder === receipt.witness && (next == null || receipt.issuedAt <= next.startedAt + this.options.marginMs)
      },
      leaseRecord: (epoch) => this.history.at(LEDGER_SHARD, epoch)?.record
    }
  }

  /** The node that takes writes for a shard now: the holder of its valid lease. */
  hostOf (shard: string): string | null {
    const lease = this.history.current(shard)
    return lease != null && Date.now() < lease.expiresAt ? lease.holder : null
  }

  /**
   * World shards with a host holding a valid lease, as this node's table
   * shows (the availability SLI); null while the node is starting (settling
   * and one lease time), when a table still arriving says nothing of the mesh.
   */
  availability (): { good: number, total: number } | null {
    const now = Date.now()
    if (!this.running || now - this.startedAt < this.options.settleMs + 2 * this.options.liveness.timeoutMs) return null
    const all = this.world.all()
    return { good: all.filter((s) => this.hostOf(s.id) != null).length, total: all.length }
  }

  /** Shards whose lease this node holds now. */
  heldShards (): string[] {
    return this.keeper.heldShards()
  }

  /** Work to run after each round, one at a time (entity transfers to settle). */
  setRoundHook (hook: (held: string[]) => Promise<void>): void {
    this.roundHook = hook
  }

  /** The lease this node holds for a shard and may serve under now. */
  holding (shard: string): LeaseTerms | undefined {
    return this.keeper.holding(shard)
  }

  /**
   * Throws NotHostError when this node may not take a write to `shard`:
   * host-authoritative shards take writes from their lease holder only, under
   * the epoch the client names (if it names one); crdt shards on their
   * replicas only (where the write will replicate). Other shards: no rule.
   */
  guardWrite (shard: string, epoch: number | undefined): void {
    const info = this.world.shard(shard)
    if (info == null) return
    const lease = this.history.current(shard)
    const host = lease != null ? this.address(lease.holder) : null
    const majority = writeConcernOf(info.layer) === 'majority'
    if (info.layer.consistency === 'crdt') {
      if (lease == null || Date.now() >= lease.expiresAt || !lease.voters.includes(this.self)) {
        throw new NotHostError('NOT_REPLICA', `this node is not a replica of ${shard} under a valid lease`, host, lease?.epoch ?? null)
      }
      this.components.replication.prepareConcern(shard, majority ? lease.voters : null)
      this.writeEpochs.set(shard, lease.epoch)
      return
    }
    if (this.keeper.handingOffNow(shard)) throw new NotHostError('HANDOFF_IN_PROGRESS', `shard ${shard} is moving to another host; retry shortly`, host, lease?.epoch ?? null)
    const held = this.holding(shard)
    if (held == null) throw new NotHostError('NOT_HOST', `this node does not hold the lease of ${shard} (or cannot reach a majority of its voters)`, host, lease?.epoch ?? null)
    if (epoch != null && epoch !== held.epoch) throw new NotHostError('STALE_EPOCH', `write names epoch ${epoch}; the current epoch is ${held.epoch}`, this.address(this.self), held.epoch)
    this.components.replication.prepareConcern(shard, majority ? held.voters : null)
    this.writeEpochs.set(shard, held.epoch)
  }

  /** After a write to `shard` is durable here: waits until its layer's write concern is met (WriteConcernError if not in time). */
  async writeConcern (shard: string): Promise<void> {
    const info = this.world.shard(shard)
    if (info == null || writeConcernOf(info.layer) === 'local') return
    await this.components.replication.replicated(shard, this.options.writeTimeoutMs)
  }

  private address (peerId: string): PeerAddress {
    return { peerId, addrs: this.table.addressesOf(peerId) }
  }

  /** Where a client goes for a position: the shard, its lease holder (or desired host) and replicas, and the epoch. */
  locate (x: number, y: number, layer: string): { shard: string, consistency: string, host: PeerAddress | null, replicas: PeerAddress[], epoch: number | null } | undefined {
    const info = this.world.locate(x, y, layer)
    if (info == null) return undefined
    const lease = this.history.current(info.id)
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
      candidates: this.explainRows(info),
      assignment: this.assignment.get(shard) ?? null,
      lease: this.leaseView(shard, Date.now())
    }
  }

  /**
   * Whether this node holds more of the shard's group than the load bound
   * lets `assign` give one node: the group is the shards of its home region
   * over the candidates of its scope, or every shard over every candidate.
   */
  private overloaded (info: ShardInfo): boolean {
    const held = this.heldShards()
    const epsilon = this.options.params.epsilon
    const scope = this.scopeOf(info)
    if (scope == null) return held.length > Math.ceil((1 + epsilon) * this.world.all().length / Math.max(1, this.candidates.length))
    const home = info.homeRegion!
    let members = 0
    for (const region of this.regionByPeer.values()) if (scope.includes(region)) members++
    const cap = Math.ceil((1 + epsilon) * (this.groupSizes.get(home) ?? 0) / Math.max(1, members))
    return held.filter((id) => this.world.shard(id)?.homeRegion === home).length > cap
  }

  /** The shard's placement scope, or null when it is placed over every candidate (no home region, or a policy its scope cannot meet). */
  private scopeOf (info: ShardInfo): string[] | null {
    if (info.homeRegion == null) return null
    const scope = this.scopes.get(info.homeRegion)
    const host = this.assignment.get(info.id)?.host
    if (scope == null || host == null) return null
    const hostRegion = this.regionByPeer.get(host)
    return hostRegion != null && scope.includes(hostRegion) ? scope : null
  }

  /**
   * Every candidate's row for a shard, as the assignment ranked it: the
   * candidates of its region scope, then the others refused as
   * `outside-region-scope:<regions>` (so a host left outside, its home back
   * to strength, hands the shard home).
   */
  private explainRows (info: ShardInfo): Explained[] {
    const scope = this.scopeOf(info)
    if (scope == null) return explain(info, this.candidates, this.components.policy, this.options.params)
    const inside = this.candidates.filter((c) => scope.includes(regionOf(c.region, this.homes)))
    const outside = this.candidates.filter((c) => !scope.includes(regionOf(c.region, this.homes)))
    const refusal = `outside-region-scope:${scope.join('+')}`
    return [
      ...explain(info, inside, this.components.policy, this.options.params),
      ...explain(info, outside, this.components.policy, this.options.params).map((row) => ({ ...row, refusal, rank: null }))
    ]
  }

  private leaseView (shard: string, now: number): LeaseView | null {
    const lease = this.history.current(shard)
    return lease == null ? null : { holder: lease.holder, epoch: lease.epoch, expiresAt: lease.expiresAt, startedAt: lease.startedAt, voters: lease.voters, valid: now < lease.expiresAt }
  }

  async view (): Promise<PlacementView> {
    const now = Date.now()
    const shards = this.world.all().map((info): ShardPlacement => {
      const a = this.assignment.get(info.id)
      return { shard: info.id, layer: info.layer.name, consistency: info.layer.consistency, homeRegion: info.homeRegion, scope: this.scopeOf(info), host: a?.host ?? null, replicas: a?.replicas ?? [], overflow: a?.overflow ?? false, lease: this.leaseView(info.id, now) }
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
    const held = this.keeper.heldShards()
    for (const shard of held) max = Math.max(max, this.keeper.holding(shard)?.epoch ?? 0)
    metrics.placementLeasesHeld.set(held.length)
    metrics.placementEpochMax.set(max)
    metrics.placementOverflow.set([...this.assignment.values()].filter((a) => a.overflow).length)
    metrics.placementUnheld.set(this.world.all().filter((s) => this.hostOf(s.id) == null).length)
  }
}
