/**
 * Holder liveness: how a lease stays held without a vote per shard.
 *
 * A lease (lease.ts) names its epoch, holder and voters; it is granted once
 * and then held for as long as its holder keeps telling its voters that it
 * runs and still stands behind it. The holder sends each of its voters a
 * keepalive every `intervalMs` over one long-lived stream
 * (`/metagrid/keepalive/1.0.0`), whatever the number of shards: the cost is
 * per voter, not per shard. A keepalive names the version of the list of
 * (shard, epoch) the holder holds with that voter; the list itself travels
 * only when it changed (or the voter asks for it).
 *
 * A voter grants another claimant the next epoch of a shard once the lease
 * it promised no longer *stands*: its holder has been silent for `timeoutMs`
 * on the voter's own clock, or its holder's list (received after the grant
 * settled) no longer names it (a claim that failed half-way, a lease the
 * holder moved to other voters), or its holder released it.
 *
 * The holder serves a shard only while a majority of its voters answered a
 * keepalive it sent less than `timeoutMs - guard` ago: the voter's silence is
 * measured from when it *received* that keepalive, later than when it was
 * sent, so the holder stops first. Both sides judge by their own clocks only,
 * and a voter whose own event loop stalled does not count the stall as the
 * holder's silence (the keepalives may be sitting unread in its socket).
 *
 * Frames are length-prefixed DAG-CBOR: holder → voter `{ s: seq, v: version,
 * h?: [[shard, epoch], ...] }`, voter → holder `{ s: seq, v: version it has }`.
 * A voter takes keepalives only from holders of a lease it promised; anything
 * else closes the stream.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import { TypedEventEmitter } from 'main-event'
import { KEEPALIVE_PROTOCOL } from '../constants.ts'
import { decodeWire, wireErrorCode, WireProtocolError } from '../wire-error.ts'
import type { LoopMonitor } from '../health/loop-monitor.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { Stream } from '@libp2p/interface'

export interface LivenessOptions {
  /** A holder sends each voter a keepalive this often. */
  intervalMs: number
  /** A voter grants a silent holder's shards to another after this much silence. */
  timeoutMs: number
}

/** A list of a few thousand (shard, epoch) pairs; anything longer is refused unread. */
const MAX_FRAME_BYTES = 512 * 1024
const MAX_HELD = 8192
/** A voter closes a keepalive stream that stays quiet this long (the holder reopens one when it needs to). */
const IDLE_CLOSE_MS = 30_000
const MAX_STREAMS = 2

export class KeepaliveError extends WireProtocolError {
  static override name = 'KeepaliveError'
  override name = 'KeepaliveError'
}

export interface Keepalive {
  seq: number
  version: number
  /** The (shard, epoch) pairs the holder holds with this voter, when they changed. */
  held?: Array<[string, number]>
}

export function encodeKeepalive (keepalive: Keepalive): Uint8Array {
  return dagCbor.encode(keepalive.held == null ? { s: keepalive.seq, v: keepalive.version } : { s: keepalive.seq, v: keepalive.version, h: keepalive.held })
}

function decodeMap (bytes: Uint8Array): Record<string, unknown> {
  const value = decodeWire(bytes, () => new KeepaliveError('MALFORMED', 'keepalive is not DAG-CBOR'))
  if (value == null || typeof value !== 'object' || Array.isArray(value)) throw new KeepaliveError('MALFORMED', 'a keepalive is a map')
  return value as Record<string, unknown>
}

const count = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0

export function decodeKeepalive (bytes: Uint8Array): Keepalive {
  const { s, v, h, ...rest } = decodeMap(bytes)
  if (Object.keys(rest).length > 0 || !count(s) || !count(v)) throw new KeepaliveError('MALFORMED', 'keepalive fields missing or mistyped')
  if (h === undefined) return { seq: s, version: v }
  if (!Array.isArray(h) || h.length > MAX_HELD || !h.every((pair) => Array.isArray(pair) && pair.length === 2 && typeof pair[0] === 'string' && pair[0].length > 0 && pair[0].length <= 64 && count(pair[1]))) {
    throw new KeepaliveError('MALFORMED', 'held list missing or mistyped')
  }
  return { seq: s, version: v, held: h as Array<[string, number]> }
}

function decodeAck (bytes: Uint8Array): { seq: number, version: number } {
  const { s, v, ...rest } = decodeMap(bytes)
  if (Object.keys(rest).length > 0 || !count(s) || !count(v)) throw new KeepaliveError('MALFORMED', 'keepalive answer fields missing or mistyped')
  return { seq: s, version: v }
}

/** How long before a voter's timeout the holder stops serving: a quarter of it. */
export function guardOf (options: LivenessOptions): number {
  return Math.floor(options.timeoutMs / 4)
}

// ---------------------------------------------------------------------------
// Voter side

export interface VoterLivenessEvents {
  /** A holder of a lease this node promised went silent past the timeout. */
  lapsed: CustomEvent<{ holder: string }>
}

interface Heard {
  at: number
  version: number
  /** `shard@epoch` the holder says it holds with this voter; null until a list arrived (version 0). */
  held: Set<string> | null
}

/**
 * What a voter knows of holders' keepalives. Holders are only the peers
 * `isHolder` names (holders of this node's promises), which bounds the map.
 */
export class VoterLiveness extends TypedEventEmitter<VoterLivenessEvents> {
  private readonly heard = new Map<string, Heard>()
  private readonly reported = new Set<string>()
  private readonly startedAt: number
  private readonly self: string
  private readonly options: LivenessOptions
  private readonly isHolder: (peer: string) => boolean
  private readonly loop: LoopMonitor | null
  private readonly now: () => number
  private readonly selfHolds: (shard: string, epoch: number) => boolean
  private timer: NodeJS.Timeout | undefined

  /** `selfHolds`: whether this node itself still holds (shard, epoch); its own promises stand only while it does. */
  constructor (self: string, options: LivenessOptions, isHolder: (peer: string) => boolean, loop: LoopMonitor | null, selfHolds: (shard: string, epoch: number) => boolean, now: () => number = Date.now) {
    super()
    this.self = self
    this.selfHolds = selfHolds
    this.options = options
    this.isHolder = isHolder
    this.loop = loop
    this.now = now
    // A voter that just started has heard nobody: every holder gets a full timeout from here.
    this.startedAt = now()
  }

  /** A claim this voter just granted: as good as hearing from its holder. */
  alive (holder: string): void {
    if (!this.isHolder(holder)) return
    const heard = this.heard.get(holder)
    if (heard == null) this.heard.set(holder, { at: this.now(), version: 0, held: null })
    else heard.at = this.now()
    this.reported.delete(holder)
  }

  /** A keepalive from `holder`; returns the version of its list this voter has (the holder resends the list when it differs). */
  keepalive (holder: string, keepalive: Keepalive): number {
    if (!this.isHolder(holder)) throw new KeepaliveError('NOT_A_HOLDER', 'this node promised that peer no lease')
    let heard = this.heard.get(holder)
    if (heard == null) {
      heard = { at: 0, version: 0, held: null }
      this.heard.set(holder, heard)
    }
    heard.at = this.now()
    if (keepalive.held != null) {
      heard.version = keepalive.version
      heard.held = new Set(keepalive.held.map(([shard, epoch]) => `${shard}@${epoch}`))
    }
    this.reported.delete(holder)
    return heard.version
  }

  /** How long `holder` has been silent, less this node's own stalls meanwhile. */
  silentFor (holder: string): number {
    const now = this.now()
    const silent = now - Math.max(this.heard.get(holder)?.at ?? 0, this.startedAt)
    return silent - (this.loop?.longestWithin(silent) ?? 0)
  }

  /** Whether `holder` went silent past the timeout: its leases may be granted to another. This node, running, never is. */
  lapsed (holder: string): boolean {
    return holder !== this.self && this.silentFor(holder) > this.options.timeoutMs
  }

  /**
   * Whether the lease this voter promised (`shard` at `epoch` to `holder`,
   * granted at `grantedAt` on this clock) still stands: its holder is not
   * silent, and, once a timeout has passed since the grant (the claim had
   * time to finish), its holder's current list names it.
   */
  stands (holder: string, shard: string, epoch: number, grantedAt: number): boolean {
    if (holder !== this.self && this.lapsed(holder)) return false
    if (this.now() - grantedAt <= this.options.timeoutMs) return true
    if (holder === this.self) return this.selfHolds(shard, epoch)
    const held = this.heard.get(holder)?.held
    return held == null || held.has(`${shard}@${epoch}`)
  }

  /** Time left until `holder` lapses (0 if it has). */
  remaining (holder: string): number {
    if (holder === this.self) return this.options.timeoutMs
    return Math.max(0, this.options.timeoutMs - this.silentFor(holder) + 1)
  }

  /** Watches the holders `holders()` names and emits `lapsed` once each time one of them goes silent. */
  start (holders: () => Iterable<string>): void {
    this.timer = setInterval(() => {
      for (const holder of holders()) {
        if (this.reported.has(holder) || !this.lapsed(holder)) continue
        this.reported.add(holder)
        this.safeDispatchEvent('lapsed', { detail: { holder } })
      }
      for (const holder of this.heard.keys()) if (!this.isHolder(holder)) this.heard.delete(holder)
    }, Math.max(10, Math.floor(this.options.intervalMs / 2)))
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }
}

// ---------------------------------------------------------------------------
// Holder side

interface Channel {
  stream: Stream | null
  lp: LengthPrefixedStream<Stream> | null
  opening: boolean
  /** Send time of each keepalive not answered yet, by seq (a few at most). */
  sent: Map<number, number>
  /** Send time of the newest answered keepalive (or granted claim). */
  ackedSentAt: number
  /** The list this voter holds now, its version, and the version the voter said it has. */
  held: Array<[string, number]>
  version: number
  voterVersion: number
}

/**
 * The holder's keepalives to its voters, and what they say about whether it
 * may serve: a voter is *fresh* while it answered a keepalive sent less
 * than `timeoutMs - guard` ago.
 */
export class HolderLiveness {
  private readonly channels = new Map<string, Channel>()
  private seq = 0
  private timer: NodeJS.Timeout | undefined
  private readonly log: Logger
  private readonly libp2p: MetagridLibp2p
  private readonly options: LivenessOptions
  /** The voters this node holds leases with now (itself excluded), each with the (shard, epoch) it holds with it. */
  private readonly voters: () => Map<string, Array<[string, number]>>
  private readonly metrics: P2pMetrics | null
  private readonly now: () => number

  constructor (libp2p: MetagridLibp2p, options: LivenessOptions, voters: () => Map<string, Array<[string, number]>>, metrics: P2pMetrics | null, logger: Logger, now: () => number = Date.now) {
    this.libp2p = libp2p
    this.options = options
    this.voters = voters
    this.metrics = metrics
    this.now = now
    this.log = logger.child({ component: 'metagrid:keepalive' })
  }

  start (): void {
    this.timer = setInterval(() => { this.round() }, this.options.intervalMs)
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
    for (const channel of this.channels.values()) channel.stream?.abort(new Error('stopping'))
    this.channels.clear()
  }

  /** A voter granted a claim sent at `sentAt`: as good as an answered keepalive from then. */
  granted (voter: string, sentAt: number): void {
    const channel = this.channel(voter)
    channel.ackedSentAt = Math.max(channel.ackedSentAt, sentAt)
  }

  /** Whether `voter` answered recently enough for this node to serve under it. */
  fresh (voter: string): boolean {
    const channel = this.channels.get(voter)
    return channel != null && this.now() < channel.ackedSentAt + this.options.timeoutMs - guardOf(this.options)
  }

  private channel (voter: string): Channel {
    let channel = this.channels.get(voter)
    if (channel == null) {
      // Version 0 is "no list": the first list the holder has is version 1.
      channel = { stream: null, lp: null, opening: false, sent: new Map(), ackedSentAt: 0, held: [], version: 0, voterVersion: -1 }
      this.channels.set(voter, channel)
    }
    return channel
  }

  /** One keepalive to every voter; channels to peers no longer voters are closed. */
  private round (): void {
    const voters = this.voters()
    for (const [voter, channel] of this.channels) {
      if (voters.has(voter)) continue
      channel.stream?.abort(new Error('no longer a voter'))
      this.channels.delete(voter)
    }
    const seq = ++this.seq
    const now = this.now()
    for (const [voter, held] of voters) {
      const channel = this.channel(voter)
      if (!sameList(channel.held, held)) {
        channel.held = held
        channel.version++
      }
      if (channel.lp == null) {
        if (!channel.opening) void this.open(voter, channel)
        continue
      }
      // Keepalives unanswered for a whole timeout are not coming back.
      for (const [s, at] of channel.sent) if (now - at > this.options.timeoutMs) channel.sent.delete(s)
      this.send(channel, seq, now)
    }
  }

  private send (channel: Channel, seq: number, now: number): void {
    const { lp, stream } = channel
    if (lp == null) return
    channel.sent.set(seq, now)
    const keepalive: Keepalive = channel.voterVersion === channel.version ? { seq, version: channel.version } : { seq, version: channel.version, held: channel.held }
    lp.write(encodeKeepalive(keepalive), { signal: AbortSignal.timeout(this.options.timeoutMs) }).catch((err) => {
      if (channel.stream === stream) this.close(channel, err as Error)
    })
  }

  private async open (voter: string, channel: Channel): Promise<void> {
    channel.opening = true
    try {
      const stream = await this.libp2p.dialProtocol(peerIdFromString(voter), KEEPALIVE_PROTOCOL, { signal: AbortSignal.timeout(this.options.timeoutMs) })
      if (this.channels.get(voter) !== channel) {
        stream.abort(new Error('no longer a voter'))
        return
      }
      channel.stream = stream
      channel.lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
      channel.voterVersion = -1
      void this.readAnswers(channel, stream, channel.lp)
      // Send at once rather than waiting for the next round: the channel was down.
      this.send(channel, ++this.seq, this.now())
    } catch (err) {
      this.metrics?.keepaliveFailures.inc({ reason: 'dial' })
      this.log.debug({ code: 'KEEPALIVE_DIAL', voter, reason: (err as Error).message }, 'could not open keepalive stream')
    } finally {
      channel.opening = false
    }
  }

  private async readAnswers (channel: Channel, stream: Stream, lp: LengthPrefixedStream<Stream>): Promise<void> {
    try {
      while (channel.stream === stream) {
        const ack = decodeAck((await lp.read()).subarray())
        channel.voterVersion = ack.version
        const sentAt = channel.sent.get(ack.seq)
        if (sentAt == null) continue
        for (const s of channel.sent.keys()) if (s <= ack.seq) channel.sent.delete(s)
        channel.ackedSentAt = Math.max(channel.ackedSentAt, sentAt)
      }
    } catch (err) {
      if (channel.stream === stream) this.close(channel, err as Error)
    }
  }

  private close (channel: Channel, err: Error): void {
    this.metrics?.keepaliveFailures.inc({ reason: 'stream' })
    channel.stream?.abort(err)
    channel.stream = null
    channel.lp = null
    channel.sent.clear()
  }
}

function sameList (a: ReadonlyArray<[string, number]>, b: ReadonlyArray<[string, number]>): boolean {
  return a.length === b.length && a.every(([shard, epoch], i) => b[i]![0] === shard && b[i]![1] === epoch)
}

// ---------------------------------------------------------------------------
// The voter's stream handler

export async function handleKeepalives (libp2p: MetagridLibp2p, liveness: VoterLiveness, metrics: P2pMetrics | null, logger: Logger): Promise<void> {
  const log = logger.child({ component: 'metagrid:keepalive' })
  await libp2p.handle(KEEPALIVE_PROTOCOL, async (stream, connection) => {
    const holder = connection.remotePeer.toString()
    const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
    try {
      while (true) {
        const keepalive = decodeKeepalive((await lp.read({ signal: AbortSignal.timeout(IDLE_CLOSE_MS) })).subarray())
        const version = liveness.keepalive(holder, keepalive)
        await lp.write(dagCbor.encode({ s: keepalive.seq, v: version }))
      }
    } catch (err) {
      // A holder closing its stream, or its connection dropping, is the normal end; only refusals are counted.
      const code = wireErrorCode(err)
      if (err instanceof KeepaliveError || code === 'OVERSIZED') {
        metrics?.wireRejected.inc({ protocol: 'keepalive', reason: code })
        log.debug({ code, peer: holder, reason: (err as Error).message }, 'keepalive refused')
      }
      stream.abort(err as Error)
    }
  }, { maxInboundStreams: MAX_STREAMS, maxOutboundStreams: MAX_STREAMS })
}
