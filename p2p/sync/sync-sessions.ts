/**
 * Anti-entropy sessions (anti-entropy.ts is the protocol): this node asks a
 * replica of each shard at random every `syncIntervalMs`, soon after a peer
 * connects, when a gossiped batch shows a gap, and when a peer comes back
 * from suspect or dead (a healed partition); and it answers peers' sessions.
 * Every frame received passes the admission layer. A peer whose frames are
 * refused outright (malformed, forged) is disconnected and not served again
 * for a minute; what admission only ignores (an epoch this node has not
 * heard of yet) is counted, and the next session with that shard asks for a
 * snapshot instead.
 */
import { SYNC_PROTOCOL, shardTopic } from '../constants.ts'
import { Refusal } from '../admission/refusal.ts'
import { wireErrorCode } from '../wire-error.ts'
import {
  defaultSyncLimits, emptyStats, encodeContext, encodeFrame, encodeHello, FRAME_CONTEXT, FRAME_END, framedStream, readContext, readHello,
  receivePatches, sendPlan, SyncProtocolError, WANT_SNAPSHOT, type PatchHandlers, type SessionStats, type SyncLimits
} from './anti-entropy.ts'
import type { Admission } from '../admission/admission.ts'
import type { ApplyResult } from '../../storage/crdt/shard-doc.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { ShardSet } from './shard-set.ts'
import type { PeerId, Stream } from '@libp2p/interface'

/** Concurrent sync sessions per connection, each way. */
const MAX_SYNC_STREAMS = 4
/**
 * Sessions this node runs as the asker with one peer at a time; the rest
 * wait their turn. Below the peer's inbound limit, so a round over many
 * shards neither trips the stream limit nor resets the peer's streams.
 */
const MAX_ASKING_PER_PEER = 3
/** Sessions waiting for a turn, over all peers; past it a session is not run (the next round covers it). */
const MAX_WAITING = 4096
/** A peer that sent garbage is not served again for this long. */
const BAD_PEER_BACKOFF_MS = 60_000
/** Peers remembered as backing off; past it the oldest is forgotten (each entry took a refused session to make). */
const MAX_BAD_PEERS = 1024
/** Sessions scheduled and not yet run, per (shard, peer). */
const MAX_WANTED = 4096
/** Shards marked to ask for a snapshot next time. */
const MAX_SNAPSHOT_WANTED = 4096
/**
 * Sessions a peer may have answered, per second on average, in bursts of
 * SESSION_BURST: answering one costs a pass over the shard's state, so a peer
 * asking again and again is refused (`RATE_LIMITED`) rather than served.
 */
const SESSIONS_PER_S = 10
const SESSION_BURST = 40
/** This node asks one peer at most this often (and in bursts of ASK_BURST), below what the peer answers. */
const ASKS_PER_S = 8
const ASK_BURST = 30

export interface SyncSessionsComponents {
  libp2p: MetagridLibp2p
  shards: ShardSet
  admission: Admission
  /** Called with what applying a received patch changed. */
  onApplied: (result: ApplyResult) => void
  metrics: P2pMetrics | null
  logger: Logger
}

export interface SyncSessionsOptions {
  syncIntervalMs: number
  limits?: SyncLimits
}

export class SyncSessions {
  private readonly components: SyncSessionsComponents
  private readonly options: SyncSessionsOptions
  private readonly limits: SyncLimits
  private readonly log: Logger
  private readonly badPeers = new Map<string, number>()
  private readonly wanted = new Map<string, NodeJS.Timeout>()
  private readonly snapshotWanted = new Set<string>()
  /** Per peer: session tokens left and when they were counted (bounded like badPeers). */
  private readonly allowance = new Map<string, { tokens: number, at: number }>()
  /** The same for the sessions this node asks of each peer. */
  private readonly asking = new Map<string, { tokens: number, at: number }>()
  private readonly sessions = new Set<Promise<unknown>>()
  /** Per peer: sessions running as the asker, and those waiting for a turn. */
  private readonly turns = new Map<string, { running: number, waiting: Array<{ id: string, resolve: () => void }> }>()
  private waiting = 0
  /** Sessions waiting for their turn, by shard and peer. */
  private readonly queued = new Map<string, Promise<SessionStats | null>>()
  /** Shards this process has finished a session of with some peer (only shards it serves get sessions, so bounded by them). */
  private readonly exchanged = new Set<string>()
  private timer: NodeJS.Timeout | undefined
  private running = false

  constructor (components: SyncSessionsComponents, options: SyncSessionsOptions) {
    this.components = components
    this.options = options
    this.limits = options.limits ?? defaultSyncLimits
    this.log = components.logger.child({ component: 'metagrid:sync' })
  }

  async start (): Promise<void> {
    this.running = true
    await this.components.libp2p.handle(SYNC_PROTOCOL, async (stream, connection) => { await this.answer(stream, connection.remotePeer) },
      { maxInboundStreams: MAX_SYNC_STREAMS, maxOutboundStreams: MAX_SYNC_STREAMS })
    this.timer = setInterval(() => { this.round() }, this.options.syncIntervalMs)
  }

  async stop (): Promise<void> {
    this.running = false
    clearInterval(this.timer)
    for (const timeout of this.wanted.values()) clearTimeout(timeout)
    this.wanted.clear()
    // Sessions waiting for a turn see the node stopping and return without running.
    for (const turns of this.turns.values()) for (const next of turns.waiting.splice(0)) next.resolve()
    this.waiting = 0
    await this.components.libp2p.unhandle(SYNC_PROTOCOL).catch(() => {})
    await Promise.allSettled([...this.sessions])
  }

  /** One session per shard with a random subscriber of its topic, spread over the interval rather than all at once. */
  private round (): void {
    const pubsub = this.components.libp2p.services.pubsub
    for (const shard of this.components.shards.served()) {
      const peers = pubsub.getSubscribers(shardTopic(shard))
      if (peers.length === 0) continue
      this.want(shard, peers[Math.floor(Math.random() * peers.length)]!, Math.random() * this.options.syncIntervalMs)
    }
  }

  /**
   * Schedules a session with a peer soon, once however often it is asked
   * for; when the time comes it runs only if the peer still replicates the
   * shard (is subscribed to its topic), so a new connection or a revived
   * member costs sessions for the shards the two share, not for every shard.
   */
  want (shard: string, peer: PeerId, delayMs: number): void {
    if (!this.running) return
    const key = `${shard}\u0000${peer.toString()}`
    if (this.wanted.has(key) || this.wanted.size >= MAX_WANTED) return
    this.wanted.set(key, setTimeout(() => {
      this.wanted.delete(key)
      if (!this.running || !this.shares(shard, peer)) return
      void this.sync(shard, peer)
    }, delayMs))
  }

  private shares (shard: string, peer: PeerId): boolean {
    return this.components.libp2p.services.pubsub.getSubscribers(shardTopic(shard)).some((p) => p.equals(peer))
  }

  /**
   * Runs one session as the asker, after the sessions already running with
   * that peer. Resolves to its stats, or null if it failed. A session for the
   * same shard and peer still waiting for its turn is shared rather than
   * queued twice (so the queue is bounded by shards × peers); an `urgent`
   * one (a takeover pulling state before it serves) goes to the front.
   */
  async sync (shard: string, peer: PeerId, urgent = false): Promise<SessionStats | null> {
    const key = peer.toString()
    const id = `${shard}\u0000${key}`
    const queued = this.queued.get(id)
    if (queued != null) {
      if (urgent) this.promote(key, id)
      return queued
    }
    const session = (async () => {
      const turn = await this.turn(key, id, urgent)
      // Running from here on: a later call starts a session of its own, which sees what arrives from now.
      this.queued.delete(id)
      if (turn !== 'run') {
        this.components.metrics?.crdtSyncSessions.inc({ role: 'asker', result: 'busy' })
        if (turn === 'stopped') this.release(key)
        return null
      }
      const asking = this.ask(shard, peer)
      this.sessions.add(asking)
      try {
        return await asking
      } finally {
        this.sessions.delete(asking)
        this.release(key)
      }
    })()
    this.queued.set(id, session)
    return session
  }

  /** Waits for a free session slot with `peer` (`run`); `full` when too many sessions already wait, `stopped` (holding a slot) when the node stopped meanwhile. */
  private async turn (peer: string, id: string, urgent: boolean): Promise<'run' | 'full' | 'stopped'> {
    let turns = this.turns.get(peer)
    if (turns == null) {
      turns = { running: 0, waiting: [] }
      this.turns.set(peer, turns)
    }
    if (turns.running < MAX_ASKING_PER_PEER) {
      turns.running++
    } else {
      if (this.waiting >= MAX_WAITING) return 'full'
      this.waiting++
      await new Promise<void>((resolve) => {
        if (urgent) turns.waiting.unshift({ id, resolve })
        else turns.waiting.push({ id, resolve })
      })
    }
    // Paced below the peer's answering rate, so a burst of sessions is spread rather than refused.
    const waitMs = takeToken(this.asking, peer, ASKS_PER_S, ASK_BURST)
    if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs))
    return this.running ? 'run' : 'stopped'
  }

  /** Moves a waiting session to the front of its peer's queue. */
  private promote (peer: string, id: string): void {
    const waiting = this.turns.get(peer)?.waiting
    const at = waiting?.findIndex((w) => w.id === id) ?? -1
    if (waiting == null || at <= 0) return
    waiting.unshift(...waiting.splice(at, 1))
  }

  /** Hands the slot to the next waiting session with `peer`, or frees it. */
  private release (peer: string): void {
    const turns = this.turns.get(peer)
    if (turns == null) return
    const next = turns.waiting.shift()
    if (next != null) {
      this.waiting--
      next.resolve()
      return
    }
    turns.running--
    if (turns.running === 0) this.turns.delete(peer)
  }

  private async ask (shard: string, peer: PeerId): Promise<SessionStats | null> {
    const store = this.components.shards.shard(shard)
    const { libp2p, metrics } = this.components
    const signal = AbortSignal.timeout(this.limits.timeoutMs)
    const stats = emptyStats()
    let stream: Stream
    try {
      // The hello goes out with the protocol name in one message.
      stream = await libp2p.dialProtocol(peer, SYNC_PROTOCOL, { signal, negotiateFully: false })
    } catch (err) {
      metrics?.crdtSyncSessions.inc({ role: 'asker', result: 'unreachable' })
      this.log.debug({ shard, peer: peer.toString(), err }, 'sync: could not open a stream')
      return null
    }
    try {
      const lp = framedStream(stream, this.limits)
      await store.commit()
      const flags = this.snapshotWanted.delete(shard) ? WANT_SNAPSHOT : 0
      await lp.write(encodeHello(shard, flags, store.doc.context), { signal })
      const theirs = readContext((await lp.read({ signal })).subarray())
      if (theirs == null) {
        // The peer does not replicate the shard (yet): nothing was learnt, which a takeover must not take for its state.
        await stream.close({ signal })
        metrics?.crdtSyncSessions.inc({ role: 'asker', result: 'not_served' })
        return null
      }
      await receivePatches(lp, this.handlers(store, peer, stats), this.limits, stats, signal)
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

  private async answer (stream: Stream, peer: PeerId): Promise<void> {
    const { metrics } = this.components
    const until = this.badPeers.get(peer.toString())
    if (until != null && until > Date.now()) {
      metrics?.crdtSyncSessions.inc({ role: 'answerer', result: 'refused' })
      stream.abort(new SyncProtocolError('BACKOFF', 'peer is backing off after sending garbage'))
      return
    }
    if (!this.allow(peer.toString())) {
      metrics?.crdtSyncSessions.inc({ role: 'answerer', result: 'rate_limited' })
      metrics?.wireRejected.inc({ protocol: 'sync', reason: 'RATE_LIMITED' })
      stream.abort(new SyncProtocolError('RATE_LIMITED', 'too many sessions from this peer'))
      return
    }
    const signal = AbortSignal.timeout(this.limits.timeoutMs)
    const stats = emptyStats()
    try {
      const lp = framedStream(stream, this.limits)
      const hello = readHello((await lp.read({ signal })).subarray())
      const store = this.components.shards.get(hello.shard)
      if (store == null) {
        await lp.write(Uint8Array.of(FRAME_END), { signal })
        await stream.close({ signal })
        metrics?.crdtSyncSessions.inc({ role: 'answerer', result: 'not_served' })
        return
      }
      await store.commit()
      await lp.write(encodeFrame(FRAME_CONTEXT, encodeContext(store.doc.context)), { signal })
      await sendPlan(lp, store, hello.context, this.limits, stats, signal, (hello.flags & WANT_SNAPSHOT) !== 0)
      await receivePatches(lp, this.handlers(store, peer, stats), this.limits, stats, signal)
      await stream.close({ signal })
      this.finish(hello.shard, 'answerer', stats)
    } catch (err) {
      this.fail(peer, 'answerer', err)
      stream.abort(err as Error)
    }
  }

  /** What a session does with each frame: admission first, the same gate as gossip, then the store. */
  private handlers (store: ShardStore, peer: PeerId, stats: SessionStats): PatchHandlers {
    const { admission, metrics, onApplied } = this.components
    const refused = (err: unknown): void => {
      if (!(err instanceof Refusal)) throw err
      if (err.action === 'reject') throw new SyncProtocolError(err.code, err.message)
      stats.ignored++
      if (err.code === 'UNKNOWN_EPOCH' && this.snapshotWanted.size < MAX_SNAPSHOT_WANTED) this.snapshotWanted.add(store.shard)
      this.log.debug({ code: err.code, shard: store.shard, peer: peer.toString(), reason: err.message }, 'sync: ignored a frame')
    }
    return {
      batch: async (bytes) => {
        metrics?.crdtDeltaBytes.inc({ direction: 'received', path: 'sync' }, bytes.byteLength)
        let batch
        try {
          batch = await admission.admitBatch(store, bytes, 'sync')
        } catch (err) {
          refused(err)
          return
        }
        stats.weLacked += batch.patch.components.length + batch.patch.adds.length + batch.patch.counters.length
        onApplied(await store.applyBatch(batch))
      },
      snapshot: async (proofs, patchBytes) => {
        metrics?.crdtDeltaBytes.inc({ direction: 'received', path: 'sync' }, patchBytes.byteLength)
        let admitted
        try {
          admitted = await admission.admitSnapshot(store, proofs, patchBytes, 'sync', peer.toString())
        } catch (err) {
          refused(err)
          return
        }
        stats.weLacked += admitted.patch.components.length + admitted.patch.adds.length + admitted.patch.counters.length
        onApplied(await store.applySnapshot(admitted.patch, admitted.proofs))
      }
    }
  }

  /** Whether a session of `shard` with a peer ran to its end since this process started: both sides sent what the other lacked. */
  exchangedOnce (shard: string): boolean {
    return this.exchanged.has(shard)
  }

  private finish (shard: string, role: 'asker' | 'answerer', stats: SessionStats): void {
    const metrics = this.components.metrics
    this.exchanged.add(shard)
    metrics?.crdtSyncSessions.inc({ role, result: 'ok' })
    metrics?.crdtDeltaBytes.inc({ direction: 'sent', path: 'sync' }, stats.sentBytes)
    metrics?.crdtDivergence.set({ shard }, stats.theyLacked + stats.weLacked)
    if (stats.sentPatches + stats.receivedPatches > 0) this.log.debug({ shard, role, ...stats }, 'anti-entropy repaired a difference')
  }

  private fail (peer: PeerId, role: 'asker' | 'answerer', err: unknown): void {
    const metrics = this.components.metrics
    if (err instanceof SyncProtocolError) {
      metrics?.crdtSyncSessions.inc({ role, result: 'rejected' })
      metrics?.wireRejected.inc({ protocol: 'sync', reason: err.code })
      this.log.warn({ code: err.code, peer: peer.toString(), reason: err.message }, 'sync: peer sent bad data; disconnecting it')
      if (err.code !== 'TOO_LARGE') {
        this.backOff(peer.toString())
        void this.components.libp2p.hangUp(peer).catch(() => {})
      }
      return
    }
    const code = wireErrorCode(err)
    if (code === 'OVERSIZED') metrics?.wireRejected.inc({ protocol: 'sync', reason: code })
    metrics?.crdtSyncSessions.inc({ role, result: code.toLowerCase() })
    this.log.debug({ code, peer: peer.toString(), err }, 'sync session failed')
  }

  /** A token bucket per peer: SESSIONS_PER_S refilled each second, SESSION_BURST at most. */
  private allow (peer: string): boolean {
    const bucket = refill(this.allowance, peer, SESSIONS_PER_S, SESSION_BURST)
    if (bucket.tokens < 1) return false
    bucket.tokens--
    return true
  }

  private backOff (peer: string): void {
    const now = Date.now()
    if (this.badPeers.size >= MAX_BAD_PEERS) {
      for (const [key, until] of this.badPeers) if (until <= now) this.badPeers.delete(key)
      // Still full: forget the oldest (Map keeps insertion order).
      if (this.badPeers.size >= MAX_BAD_PEERS) this.badPeers.delete(this.badPeers.keys().next().value!)
    }
    this.badPeers.delete(peer)
    this.badPeers.set(peer, now + BAD_PEER_BACKOFF_MS)
  }
}

type Buckets = Map<string, { tokens: number, at: number }>

/** The bucket of `key`, refilled to now (`rate` tokens a second, `burst` at most); the map is bounded like the back-off table. */
function refill (buckets: Buckets, key: string, rate: number, burst: number): { tokens: number, at: number } {
  const now = Date.now()
  let bucket = buckets.get(key)
  if (bucket == null) {
    if (buckets.size >= MAX_BAD_PEERS) buckets.delete(buckets.keys().next().value!)
    bucket = { tokens: burst, at: now }
    buckets.set(key, bucket)
  }
  bucket.tokens = Math.min(burst, bucket.tokens + (now - bucket.at) * rate / 1000)
  bucket.at = now
  return bucket
}

/** Takes a token, going into debt if there is none: the milliseconds to wait until the token taken is due. */
function takeToken (buckets: Buckets, key: string, rate: number, burst: number): number {
  const bucket = refill(buckets, key, rate, burst)
  bucket.tokens--
  return bucket.tokens >= 0 ? 0 : -bucket.tokens * 1000 / rate
}
