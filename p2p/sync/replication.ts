/**
 * Replication of every shard this node serves: opens each shard's store,
 * gossips its durable local deltas on `/metagrid/shard/<id>/1`, applies the
 * deltas peers gossip (after validation), and runs anti-entropy on connect,
 * periodically, when a delta reveals a gap, and when a peer comes back from
 * suspect or dead (a healed partition).
 *
 * One topic per shard: a subscriber receives only the shards it replicates,
 * and gossipsub's mesh per topic is the shard's replica set. With thousands
 * of shards per node a topic per group of shards would cut the control
 * traffic (each topic costs heartbeats); placement assigns few shards per
 * node, so the simple mapping wins for now.
 */
import { TypedEventEmitter } from 'main-event'
import { SYNC_PROTOCOL, shardTopic } from '../constants.ts'
import { ignore, reject, topicValidator } from '../gossip/validation.ts'
import { wireErrorCode } from '../wire-error.ts'
import { CodecError } from '../../storage/crdt/codec.ts'
import { ClockDriftError } from '../../storage/crdt/hlc.ts'
import { decodePatch } from '../../storage/crdt/patch-codec.ts'
import { SUBLEVELS, type Database } from '../../storage/database.ts'
import { ShardStore, type ShardStoreOptions } from '../../storage/shard-store.ts'
import {
  countMissing, defaultSyncLimits, encodeContext, encodeFrame, FRAME_CONTEXT, FRAME_END, FRAME_HELLO, framedStream, readContext, readHello,
  receivePatches, sendPlan, SyncProtocolError, type SessionStats, type SyncLimits
} from './anti-entropy.ts'
import type { ApplyResult, Patch } from '../../storage/crdt/shard-doc.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Membership } from '../membership/membership.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'

/** A gossiped delta larger than this is refused; bigger local batches go by anti-entropy instead. */
export const MAX_GOSSIP_DELTA_BYTES = 512 * 1024
/** Concurrent sync sessions per connection, each way. */
const MAX_SYNC_STREAMS = 4
/** A peer that sent garbage is not served again for this long. */
const BAD_PEER_BACKOFF_MS = 60_000

export interface ReplicationOptions extends ShardStoreOptions {
  served: string[]
  syncIntervalMs: number
  limits?: SyncLimits
}

export interface ReplicationComponents {
  libp2p: MetagridLibp2p
  database: Database
  membership: Membership
  metrics: P2pMetrics | null
  logger: Logger
  /** Called with each remote write's time from origin to apply here (ms); feeds the convergence SLO. */
  onConvergence?: (ms: number) => void
}

export interface ShardChange {
  shard: string
  /** Null for a local write (the API knows what it wrote). */
  result: ApplyResult | null
  local: boolean
}

export interface ReplicationEvents {
  change: CustomEvent<ShardChange>
}

export type Fence = (shard: string, origin: string) => 'ok' | 'stale' | 'unknown'

export class UnknownShardError extends Error {
  static override name = 'UnknownShardError'
  override name = 'UnknownShardError'
}

export class Replication extends TypedEventEmitter<ReplicationEvents> {
  private readonly components: ReplicationComponents
  private readonly options: ReplicationOptions
  private readonly limits: SyncLimits
  private readonly log: Logger
  private readonly shards = new Map<string, ShardStore>()
  private readonly opening = new Map<string, Promise<ShardStore>>()
  private fence: Fence = () => 'ok'
  private readonly badPeers = new Map<string, number>()
  /** Sessions wanted soon, per (shard, peer), debounced. */
  private readonly wanted = new Map<string, NodeJS.Timeout>()
  private readonly sessions = new Set<Promise<unknown>>()
  private timer: NodeJS.Timeout | undefined
  private running = false
  private readonly onIdentify = (event: CustomEvent<{ peerId: PeerId, protocols: string[] }>): void => {
    if (!event.detail.protocols.includes(SYNC_PROTOCOL)) return
    for (const shard of this.shards.keys()) this.want(shard, event.detail.peerId, 1_000)
  }

  private readonly onAlive = (event: CustomEvent<{ peerId: string, previous: string | null }>): void => {
    if (event.detail.previous !== 'suspect' && event.detail.previous !== 'dead') return
    const peer = this.components.libp2p.getConnections().find((c) => c.remotePeer.toString() === event.detail.peerId)?.remotePeer
    if (peer == null) return
    for (const shard of this.shards.keys()) this.want(shard, peer, 200)
  }

  constructor (components: ReplicationComponents, options: ReplicationOptions) {
    super()
    this.components = components
    this.options = options
    this.limits = options.limits ?? defaultSyncLimits
    this.log = components.logger.child({ component: 'metagrid:replication' })
  }

  /** Opens every served shard from disk; run before the network starts so the API never sees half-loaded state. */
  async open (): Promise<void> {
    for (const shard of this.options.served) await this.openStore(shard)
  }

  private async openStore (shard: string): Promise<ShardStore> {
    const db = this.components.database.sublevel(SUBLEVELS.crdt)
    const replica = this.components.libp2p.peerId.toString()
    const { store, recovery } = await ShardStore.open(shard, replica, db, this.options, this.components.logger)
    if (recovery.cut > 0) {
      this.components.metrics?.crdtLogCut.inc(recovery.cut)
      this.log.warn({ code: 'LOG_TAIL_CUT', shard, cut: recovery.cut, kept: recovery.records }, 'cut a corrupt shard log tail; peers will resend what it held')
    }
    this.log.info({ shard, records: recovery.records, snapshotBytes: recovery.snapshotBytes, entities: store.doc.entityIds().length }, 'shard loaded')
    store.addEventListener('delta', (event) => { void this.publish(shard, event.detail.bytes) })
    store.addEventListener('change', (event) => { this.safeDispatchEvent('change', { detail: { shard, result: event.detail.result, local: event.detail.local } }) })
    this.shards.set(shard, store)
    return store
  }

  /**
   * Starts replicating a shard at runtime (placement made this node its host
   * or a replica): opens it from disk, subscribes, and syncs with the peers
   * already connected. Concurrent calls for one shard share one opening.
   */
  async ensure (shard: string): Promise<ShardStore> {
    const open = this.shards.get(shard)
    if (open != null) return open
    let opening = this.opening.get(shard)
    if (opening == null) {
      opening = (async () => {
        const store = await this.openStore(shard)
        if (this.running) {
          this.attach(shard, store)
          for (const connection of this.components.libp2p.getConnections()) this.want(shard, connection.remotePeer, 300)
        }
        return store
      })().finally(() => this.opening.delete(shard))
      this.opening.set(shard, opening)
    }
    return opening
  }

  private attach (shard: string, store: ShardStore): void {
    const { libp2p, metrics } = this.components
    const pubsub = libp2p.services.pubsub
    const topic = shardTopic(shard)
    pubsub.topicValidators.set(topic, topicValidator({
      topicLabel: 'shard',
      validate: (message, source) => this.validateDelta(store, message.data, message.from, source),
      onAccept: (patch, message) => {
        metrics?.crdtDeltaBytes.inc({ direction: 'received', path: 'gossip' }, message.data.byteLength)
        void this.applyRemote(store, patch, message.data)
      },
      metrics,
      logger: this.log
    }))
    pubsub.subscribe(topic)
  }

  async start (): Promise<void> {
    const { libp2p } = this.components
    this.running = true
    for (const [shard, store] of this.shards) this.attach(shard, store)
    await libp2p.handle(SYNC_PROTOCOL, async (stream, connection) => { await this.answer(stream, connection.remotePeer) },
      { maxInboundStreams: MAX_SYNC_STREAMS, maxOutboundStreams: MAX_SYNC_STREAMS })
    libp2p.addEventListener('peer:identify', this.onIdentify as never)
    this.components.membership.addEventListener('member:alive', this.onAlive as never)
    this.timer = setInterval(() => { this.syncRound() }, this.options.syncIntervalMs)
  }

  async stop (): Promise<void> {
    this.running = false
    clearInterval(this.timer)
    for (const timeout of this.wanted.values()) clearTimeout(timeout)
    this.wanted.clear()
    const { libp2p } = this.components
    libp2p.removeEventListener('peer:identify', this.onIdentify as never)
    this.components.membership.removeEventListener('member:alive', this.onAlive as never)
    await libp2p.unhandle(SYNC_PROTOCOL).catch(() => {})
    for (const shard of this.shards.keys()) {
      libp2p.services.pubsub.unsubscribe(shardTopic(shard))
      libp2p.services.pubsub.topicValidators.delete(shardTopic(shard))
    }
    await Promise.allSettled([...this.sessions])
  }

  /** Writes what is pending and closes every shard; after `stop`. */
  async close (): Promise<void> {
    for (const store of this.shards.values()) await store.close()
  }

  /**
   * Decides whose gossiped deltas a shard accepts (placement installs it):
   * `ok`, `stale` (an older epoch's holder: rejected) or `unknown` (ignored
   * until the lease arrives; anti-entropy fills the gap). Default: everyone.
   */
  setFence (fence: Fence): void {
    this.fence = fence
  }

  shard (id: string): ShardStore {
    const store = this.shards.get(id)
    if (store == null) throw new UnknownShardError(`this node does not serve shard ${id}`)
    return store
  }

  served (): string[] {
    return [...this.shards.keys()]
  }

  private validateDelta (store: ShardStore, data: Uint8Array, from: PeerId, source: PeerId): Patch {
    if (data.byteLength > MAX_GOSSIP_DELTA_BYTES) throw reject('OVERSIZED', `delta of ${data.byteLength} bytes`)
    let patch: Patch
    try {
      patch = decodePatch(data)
    } catch (err) {
      if (err instanceof CodecError) throw reject('MALFORMED', err.message)
      throw err
    }
    if (patch.kind !== 'delta') throw reject('NOT_A_DELTA', 'only deltas are gossiped')
    // A peer publishes only its own writes; gossipsub has checked that `from` signed the message.
    if (patch.origin !== from.toString()) throw reject('FORGED', `delta of ${patch.origin} published by ${from.toString()}`)
    // Host-authoritative shards take writes from the lease holder only; a superseded holder is fenced off.
    const fence = this.fence(store.shard, patch.origin)
    if (fence === 'stale') throw reject('STALE_EPOCH', `${patch.origin} no longer holds the lease of ${store.shard}`)
    if (fence === 'unknown') throw ignore('NOT_HOLDER', `${patch.origin} holds no lease of ${store.shard} that this node knows of`)
    const context = store.doc.context
    if (context.hasRange(patch.origin, patch.from!, patch.to!)) throw ignore('DUPLICATE', 'every operation already applied')
    // Operations of this origin before the delta that we never saw: a gap only anti-entropy can fill.
    if (patch.from! > context.max(patch.origin) + 1) this.want(store.shard, source, 500)
    let latest = 0
    for (const component of patch.components) latest = Math.max(latest, component.wall)
    try {
      store.doc.clock.check(latest)
    } catch (err) {
      if (err instanceof ClockDriftError) throw ignore('CLOCK_DRIFT', err.message)
      throw err
    }
    return patch
  }

  private async applyRemote (store: ShardStore, patch: Patch, bytes: Uint8Array): Promise<void> {
    try {
      const result = await store.applyRemote(patch, bytes)
      this.observe(result)
    } catch (err) {
      this.log.warn({ code: err instanceof ClockDriftError ? 'CLOCK_DRIFT' : 'APPLY', shard: store.shard, err }, 'could not apply a remote patch')
    }
  }

  private observe (result: ApplyResult): void {
    const { metrics, onConvergence } = this.components
    const now = Date.now()
    if (onConvergence != null) for (const wall of result.appliedWalls) onConvergence(Math.max(0, now - wall))
    if (metrics == null) return
    for (const wall of result.appliedWalls) metrics.crdtConvergence.observe(Math.max(0, now - wall) / 1000)
    if (result.conflicts > 0) metrics.crdtConflicts.inc(result.conflicts)
  }

  private async publish (shard: string, bytes: Uint8Array): Promise<void> {
    if (!this.running) return
    if (bytes.byteLength > MAX_GOSSIP_DELTA_BYTES) {
      // Peers would refuse it; anti-entropy delivers it instead.
      this.components.metrics?.crdtGossipSkipped.inc({ reason: 'oversized' })
      return
    }
    try {
      await this.components.libp2p.services.pubsub.publish(shardTopic(shard), bytes)
      this.components.metrics?.crdtDeltaBytes.inc({ direction: 'sent', path: 'gossip' }, bytes.byteLength)
    } catch (err) {
      this.components.metrics?.crdtGossipSkipped.inc({ reason: 'publish_failed' })
      this.log.debug({ code: 'DELTA_PUBLISH', shard, err }, 'could not gossip a delta; anti-entropy will deliver it')
    }
  }

  /** One anti-entropy session per shard with a random replica. */
  private syncRound (): void {
    const pubsub = this.components.libp2p.services.pubsub
    for (const shard of this.shards.keys()) {
      const peers = pubsub.getSubscribers(shardTopic(shard))
      if (peers.length === 0) continue
      const peer = peers[Math.floor(Math.random() * peers.length)]!
      void this.sync(shard, peer)
    }
  }

  /** Schedules a session with a peer soon, once however often it is asked for. */
  private want (shard: string, peer: PeerId, delayMs: number): void {
    if (!this.running) return
    const key = `${shard}\u0000${peer.toString()}`
    if (this.wanted.has(key)) return
    this.wanted.set(key, setTimeout(() => {
      this.wanted.delete(key)
      void this.sync(shard, peer)
    }, delayMs))
  }

  /** Runs one session as the asker. Resolves to its stats, or null if it failed. */
  async sync (shard: string, peer: PeerId): Promise<SessionStats | null> {
    const session = this.runSession(shard, peer)
    this.sessions.add(session)
    try {
      return await session
    } finally {
      this.sessions.delete(session)
    }
  }

  private async runSession (shard: string, peer: PeerId): Promise<SessionStats | null> {
    const store = this.shard(shard)
    const { libp2p, metrics } = this.components
    const signal = AbortSignal.timeout(this.limits.timeoutMs)
    const stats = emptyStats()
    let stream
    try {
      stream = await libp2p.dialProtocol(peer, SYNC_PROTOCOL, { signal })
    } catch (err) {
      metrics?.crdtSyncSessions.inc({ role: 'asker', result: 'unreachable' })
      this.log.debug({ shard, peer: peer.toString(), err }, 'sync: could not open a stream')
      return null
    }
    try {
      const lp = framedStream(stream, this.limits)
      await store.commit()
      await lp.write(encodeFrame(FRAME_HELLO, encodeContext(store.doc.context), shard), { signal })
      const theirs = readContext((await lp.read({ signal })).subarray())
      if (theirs == null) {
        await stream.close({ signal })
        metrics?.crdtSyncSessions.inc({ role: 'asker', result: 'not_served' })
        return stats
      }
      stats.weLacked = countMissing(theirs, store.doc.context, this.limits.snapshotAfterOps)
      await receivePatches(lp, async (patch, bytes) => { await this.applySynced(store, patch, bytes) }, this.limits, stats, signal)
      await sendPlan(lp, store, theirs, this.limits, stats, signal)
      await stream.close({ signal })
      this.finish(shard, 'asker', stats)
      return stats
    } catch (err) {
      this.fail(peer, 'asker', err)
      stream.abort(err as Error)
      return null
    }
  }

  /** Answers a peer's session. */
  private async answer (stream: Parameters<typeof framedStream>[0], peer: PeerId): Promise<void> {
    const { metrics } = this.components
    const until = this.badPeers.get(peer.toString())
    if (until != null && until > Date.now()) {
      metrics?.crdtSyncSessions.inc({ role: 'answerer', result: 'refused' })
      stream.abort(new SyncProtocolError('BACKOFF', 'peer is backing off after sending garbage'))
      return
    }
    const signal = AbortSignal.timeout(this.limits.timeoutMs)
    const stats = emptyStats()
    try {
      const lp = framedStream(stream, this.limits)
      const hello = readHello((await lp.read({ signal })).subarray())
      const store = this.shards.get(hello.shard)
      if (store == null) {
        await lp.write(Uint8Array.of(FRAME_END), { signal })
        await stream.close({ signal })
        metrics?.crdtSyncSessions.inc({ role: 'answerer', result: 'not_served' })
        return
      }
      await store.commit()
      stats.weLacked = countMissing(hello.context, store.doc.context, this.limits.snapshotAfterOps)
      await lp.write(encodeFrame(FRAME_CONTEXT, encodeContext(store.doc.context)), { signal })
      await sendPlan(lp, store, hello.context, this.limits, stats, signal)
      await receivePatches(lp, async (patch, bytes) => { await this.applySynced(store, patch, bytes) }, this.limits, stats, signal)
      await stream.close({ signal })
      this.finish(hello.shard, 'answerer', stats)
    } catch (err) {
      this.fail(peer, 'answerer', err)
      stream.abort(err as Error)
    }
  }

  private async applySynced (store: ShardStore, patch: Patch, bytes: Uint8Array): Promise<void> {
    this.components.metrics?.crdtDeltaBytes.inc({ direction: 'received', path: 'sync' }, bytes.byteLength)
    try {
      this.observe(await store.applyRemote(patch, bytes))
    } catch (err) {
      if (err instanceof ClockDriftError) throw new SyncProtocolError('CLOCK_DRIFT', err.message)
      throw err
    }
  }

  private finish (shard: string, role: 'asker' | 'answerer', stats: SessionStats): void {
    const metrics = this.components.metrics
    metrics?.crdtSyncSessions.inc({ role, result: 'ok' })
    metrics?.crdtDeltaBytes.inc({ direction: 'sent', path: 'sync' }, stats.sentBytes)
    metrics?.crdtDivergence.set({ shard }, stats.theyLacked + stats.weLacked)
    if (stats.sentPatches + stats.receivedPatches > 0) {
      this.log.debug({ shard, role, ...stats }, 'anti-entropy repaired a difference')
    }
  }

  private fail (peer: PeerId, role: 'asker' | 'answerer', err: unknown): void {
    const metrics = this.components.metrics
    if (err instanceof SyncProtocolError) {
      metrics?.crdtSyncSessions.inc({ role, result: 'rejected' })
      metrics?.wireRejected.inc({ protocol: 'sync', reason: err.code })
      this.log.warn({ code: err.code, peer: peer.toString(), reason: err.message }, 'sync: peer sent bad data; disconnecting it')
      if (err.code !== 'TOO_LARGE') {
        this.badPeers.set(peer.toString(), Date.now() + BAD_PEER_BACKOFF_MS)
        void this.components.libp2p.hangUp(peer).catch(() => {})
      }
      return
    }
    const code = wireErrorCode(err)
    if (code === 'OVERSIZED') metrics?.wireRejected.inc({ protocol: 'sync', reason: code })
    metrics?.crdtSyncSessions.inc({ role, result: code.toLowerCase() })
    this.log.debug({ code, peer: peer.toString(), err }, 'sync session failed')
  }
}

function emptyStats (): SessionStats {
  return { sentPatches: 0, sentBytes: 0, receivedPatches: 0, receivedBytes: 0, theyLacked: 0, weLacked: 0 }
}
