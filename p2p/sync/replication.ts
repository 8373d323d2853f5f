/**
 * Replication of every shard this node serves, composed of three parts that
 * share one admission layer (p2p/admission):
 *
 * - the shard set (shard-set.ts): stores opened from disk, local deltas
 *   sealed as batches signed by this node;
 * - delta gossip (delta-gossip.ts): each durable batch out on the shard's
 *   topic, each received one admitted and applied;
 * - anti-entropy (sync-sessions.ts, anti-entropy.ts): what gossip missed,
 *   repaired over direct streams, on connect, periodically, on a gap, and
 *   when a peer comes back from suspect or dead;
 * - the write concern (write-concern.ts): for shards that need it, each
 *   durable local batch sent to the shard's voters, and a write answered
 *   once a majority of them hold it.
 *
 * Gossip, anti-entropy and the write concern call the same `admitBatch`; a
 * check cannot sit on one path and not on its twin.
 */
import { TypedEventEmitter } from 'main-event'
import { REPLICATE_PROTOCOL, SYNC_PROTOCOL } from '../constants.ts'
import { Admission } from '../admission/admission.ts'
import { DeltaGossip } from './delta-gossip.ts'
import { ShardSet, UnknownShardError, type ShardChange } from './shard-set.ts'
import { SyncSessions } from './sync-sessions.ts'
import { handleReplicate, WriteConcern } from './write-concern.ts'
import type { SessionStats, SyncLimits } from './anti-entropy.ts'
import type { Database } from '../../storage/database.ts'
import type { ApplyResult } from '../../storage/crdt/shard-doc.ts'
import type { ShardStore, ShardStoreOptions } from '../../storage/shard-store.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Membership } from '../membership/membership.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'

export { UnknownShardError, type ShardChange }
export { MAX_GOSSIP_DELTA_BYTES } from './delta-gossip.ts'
export { WriteConcernError } from './write-concern.ts'

/** The replicate protocol's fence: a code when this node must not hold a write of `epoch` to `shard`, else null. */
export type Fence = (shard: string, epoch: number) => string | null

export interface ReplicationOptions extends ShardStoreOptions {
  served: string[]
  syncIntervalMs: number
  /** Largest JSON value of one component; remote writes are held to the API's own limit. */
  maxValueBytes: number
  limits?: SyncLimits
}

export interface ReplicationComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  database: Database
  membership: Membership
  metrics: P2pMetrics | null
  logger: Logger
  /** Called with each remote write's time from origin to apply here (ms), for writes gossip brought; feeds the convergence SLO. */
  onConvergence?: (ms: number) => void
}

export interface ReplicationEvents {
  change: CustomEvent<ShardChange>
}

export class Replication extends TypedEventEmitter<ReplicationEvents> {
  readonly admission: Admission
  private readonly components: ReplicationComponents
  private readonly options: ReplicationOptions
  private readonly shards: ShardSet
  private readonly gossip: DeltaGossip
  private readonly sessions: SyncSessions
  private readonly concern: WriteConcern
  private fence: Fence = () => null
  private running = false

  private readonly onIdentify = (event: CustomEvent<{ peerId: PeerId, protocols: string[] }>): void => {
    if (!event.detail.protocols.includes(SYNC_PROTOCOL)) return
    for (const shard of this.shards.served()) this.sessions.want(shard, event.detail.peerId, 1_000)
  }

  private readonly onAlive = (event: CustomEvent<{ peerId: string, previous: string | null }>): void => {
    if (event.detail.previous !== 'suspect' && event.detail.previous !== 'dead') return
    const peer = this.components.libp2p.getConnections().find((c) => c.remotePeer.toString() === event.detail.peerId)?.remotePeer
    if (peer == null) return
    for (const shard of this.shards.served()) this.sessions.want(shard, peer, 200)
  }

  constructor (components: ReplicationComponents, options: ReplicationOptions) {
    super()
    this.components = components
    this.options = options
    const { libp2p, metrics, logger } = components
    const self = libp2p.peerId.toString()
    this.admission = new Admission({ self, metrics }, { maxValueBytes: options.maxValueBytes })
    this.shards = new ShardSet({ database: components.database, privateKey: components.privateKey, self, admission: this.admission, metrics, logger }, options)
    this.gossip = new DeltaGossip({ libp2p, admission: this.admission, onGap: (shard, peer) => { this.sessions.want(shard, peer, 500) }, onApplied: (result) => { this.observe(result, true) }, metrics, logger })
    this.sessions = new SyncSessions({ libp2p, shards: this.shards, admission: this.admission, onApplied: (result) => { this.observe(result, false) }, metrics, logger }, { syncIntervalMs: options.syncIntervalMs, ...(options.limits != null ? { limits: options.limits } : {}) })
    this.concern = new WriteConcern({ libp2p, metrics, logger })
    this.shards.addEventListener('delta', (event) => {
      const { shard, bytes, patch } = event.detail
      this.concern.enqueue(shard, patch.to ?? 0, bytes)
      void this.gossip.publish(shard, bytes)
    })
    this.shards.addEventListener('change', (event) => { this.safeDispatchEvent('change', { detail: event.detail }) })
    this.shards.addEventListener('opened', (event) => {
      if (!this.running) return
      this.gossip.attach(event.detail.store)
      for (const connection of libp2p.getConnections()) this.sessions.want(event.detail.shard, connection.remotePeer, 300)
    })
  }

  /** Opens every served shard from disk; run before the network starts so the API never sees half-loaded state. */
  async open (): Promise<void> {
    await this.shards.openAll(this.options.served)
  }

  /**
   * Starts replicating a shard at runtime (placement made this node its host
   * or a replica): opens it from disk, subscribes, and syncs with the peers
   * already connected.
   */
  async ensure (shard: string): Promise<ShardStore> {
    return this.shards.ensure(shard)
  }

  async start (): Promise<void> {
    this.running = true
    this.gossip.start()
    for (const [, store] of this.shards.entries()) this.gossip.attach(store)
    await this.sessions.start()
    await handleReplicate({
      libp2p: this.components.libp2p,
      admission: this.admission,
      storeOf: (shard) => (this.shards.served().includes(shard) ? this.shards.shard(shard) : undefined),
      fence: (shard, epoch) => this.fence(shard, epoch),
      onGap: (shard, peer) => {
        const id = this.components.libp2p.getConnections().find((c) => c.remotePeer.toString() === peer)?.remotePeer
        if (id != null) this.sessions.want(shard, id, 100)
      },
      metrics: this.components.metrics,
      logger: this.components.logger
    })
    this.components.libp2p.addEventListener('peer:identify', this.onIdentify as never)
    this.components.membership.addEventListener('member:alive', this.onAlive as never)
  }

  async stop (): Promise<void> {
    this.running = false
    this.components.libp2p.removeEventListener('peer:identify', this.onIdentify as never)
    this.components.membership.removeEventListener('member:alive', this.onAlive as never)
    this.gossip.stop(this.shards.served())
    this.concern.stop()
    await this.components.libp2p.unhandle(REPLICATE_PROTOCOL).catch(() => {})
    await this.sessions.stop()
  }

  /** Where the replicate protocol asks whether a write may be held here (placement: the voter's promises). */
  setFence (fence: Fence): void {
    this.fence = fence
  }

  /**
   * Declares that this node's writes to `shard` are answered only once a
   * majority of `voters` hold them (null: once durable here). Call before
   * taking a write; idempotent for the same voters.
   */
  prepareConcern (shard: string, voters: readonly string[] | null): void {
    const self = this.components.libp2p.peerId.toString()
    this.concern.prepare(shard, voters, voters == null ? 0 : this.shards.shard(shard).doc.context.highest(self))
  }

  /** Resolves once this node's writes to `shard` so far are on a majority of its voters (at once if it needs none); throws WriteConcernError. */
  async replicated (shard: string, timeoutMs: number): Promise<void> {
    const seq = this.shards.shard(shard).doc.context.highest(this.components.libp2p.peerId.toString())
    await this.concern.replicated(shard, seq, timeoutMs)
  }

  /** Writes what is pending and closes every shard; after `stop`. */
  async close (): Promise<void> {
    await this.shards.close()
  }

  shard (id: string): ShardStore {
    return this.shards.shard(id)
  }

  /** The store of a shard if it is open here, without opening it. */
  opened (id: string): ShardStore | undefined {
    return this.shards.get(id)
  }

  served (): string[] {
    return this.shards.served()
  }

  /** Whether an anti-entropy session of `shard` with some peer ran to its end since this process started. */
  exchangedOnce (shard: string): boolean {
    return this.sessions.exchangedOnce(shard)
  }

  /** Runs one anti-entropy session with `peer` as the asker; null if it failed or the peer does not serve the shard. `urgent` goes before routine sessions. */
  async sync (shard: string, peer: PeerId, urgent = false): Promise<SessionStats | null> {
    return this.sessions.sync(shard, peer, urgent)
  }

  /**
   * Convergence of applied remote writes: every one goes into the histogram;
   * only those the live path (gossip) brought go to `onConvergence` (the
   * SLO). What anti-entropy repairs is what the live path missed (this node
   * was starting, subscribing or partitioned); the divergence gauge measures it.
   */
  private observe (result: ApplyResult, live: boolean): void {
    const { metrics, onConvergence } = this.components
    const now = Date.now()
    if (onConvergence != null && live) for (const wall of result.appliedWalls) onConvergence(Math.max(0, now - wall))
    if (metrics == null) return
    for (const wall of result.appliedWalls) metrics.crdtConvergence.observe(Math.max(0, now - wall) / 1000)
    if (result.conflicts > 0) metrics.crdtConflicts.inc(result.conflicts)
  }
}
