/**
 * The majority write concern: a write is answered once a majority of its
 * shard's voters (this node one of them) hold it durably, not only this
 * node. Then a host that dies for good after answering loses nothing: the
 * next host pulls from a majority of the same voters before it serves.
 *
 * `/metagrid/replicate/2.0.0`: the writer sends its signed batches, in order,
 * to each voter; each voter runs every batch through the admission layer
 * (exactly as one arriving by gossip or anti-entropy), checks the fence (a
 * voter that granted a newer epoch of a host shard holds no write of an
 * older one), applies it durably and answers how many of the batches it now
 * holds. Group commit: while a request to a voter is out, the writer's new
 * batches wait and go together in the next one, so the cost per write falls
 * as the rate rises.
 *
 * Requests and answers travel on one long-lived stream per voter
 * (p2p/channel.ts), whatever the number of shards. Each is DAG-CBOR: request
 * `{ s: shard, b: [batch, ...] }` (1 to 256 batches, 4 MiB at most), answer
 * `{ n: batches held, c?: code }`.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { REPLICATE_PROTOCOL } from '../constants.ts'
import { Refusal } from '../admission/refusal.ts'
import { decodeWire, WireProtocolError } from '../wire-error.ts'
import { answerChannel, RequestChannel } from '../channel.ts'
import type { Admission } from '../admission/admission.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'

const MAX_BATCHES_PER_REQUEST = 256
const MAX_REQUEST_BYTES = 4 * 1024 * 1024
const REQUEST_TIMEOUT_MS = 5_000
/** Channel streams per connection: one each way, and one being replaced. */
const MAX_STREAMS = 4
/** Requests in flight to one voter (one per shard it votes on), and answered at once for one writer. */
const MAX_CONCURRENT = 4096
/** After a failed request, a voter is asked again this much later. */
const RETRY_MS = 100
/**
 * Refusals of a voter whose view may lag (a lease it has not learned yet, a sync it is behind on): worth asking
 * again. Any other refusal is the batch's own fault (it names no epoch, is forged, too large) and would be refused
 * for ever: the pipe is closed rather than left to retry one batch that blocks every write behind it.
 */
const LAGGING_VIEW = new Set(['UNKNOWN_EPOCH', 'NOT_HOLDER', 'NOT_REPLICA', 'UNKNOWN_SHARD', 'RATE_LIMITED', 'CLOCK_DRIFT'])
/** A voter that keeps refusing for a lagging view this long is taken as refusing for good. */
const MAX_REFUSING_MS = 30_000
/** A batch a majority holds is kept this long for the voters that do not yet; those catch up by anti-entropy after. */
const KEEP_COMMITTED_MS = 5_000
/** Batches kept per shard until every voter holds them; past this the oldest go (their waiters fail). */
const MAX_LOG_ENTRIES = 8192
const MAX_LOG_BYTES = 32 * 1024 * 1024

export class ReplicateError extends WireProtocolError {
  static override name = 'ReplicateError'
  override name = 'ReplicateError'
}

/** Why a write was not acknowledged by a majority; the API answers 503 (TIMEOUT) or 421 (FENCED). */
export class WriteConcernError extends Error {
  static override name = 'WriteConcernError'
  override name = 'WriteConcernError'
  readonly code: 'TIMEOUT' | 'FENCED' | 'DROPPED'
  constructor (code: WriteConcernError['code'], message: string) {
    super(message)
    this.code = code
  }
}

export function encodeReplicateRequest (shard: string, batches: Uint8Array[]): Uint8Array {
  return dagCbor.encode({ s: shard, b: batches })
}

export function decodeReplicateRequest (bytes: Uint8Array): { shard: string, batches: Uint8Array[] } {
  const value = decodeWire(bytes, () => new ReplicateError('MALFORMED', 'request is not DAG-CBOR'))
  const { s, b, ...rest } = (value ?? {}) as Record<string, unknown>
  if (typeof value !== 'object' || Object.keys(rest).length > 0 || typeof s !== 'string' || s.length === 0 || s.length > 64 ||
    !Array.isArray(b) || b.length === 0 || b.length > MAX_BATCHES_PER_REQUEST || !b.every((x) => x instanceof Uint8Array)) {
    throw new ReplicateError('MALFORMED', 'request fields missing or mistyped')
  }
  return { shard: s, batches: b as Uint8Array[] }
}

function decodeAnswer (bytes: Uint8Array, sent: number): { held: number, code: string | null } {
  const value = decodeWire(bytes, () => new ReplicateError('MALFORMED', 'answer is not DAG-CBOR'))
  const { n, c } = (value ?? {}) as Record<string, unknown>
  if (!Number.isSafeInteger(n) || (n as number) < 0 || (n as number) > sent || (c !== undefined && typeof c !== 'string')) throw new ReplicateError('MALFORMED', 'answer fields missing or mistyped')
  return { held: n as number, code: typeof c === 'string' ? c.slice(0, 32) : null }
}

// ---------------------------------------------------------------------------
// The voter's side

export interface ReplicateHandlerComponents {
  libp2p: MetagridLibp2p
  admission: Admission
  /** The open store of a shard this node replicates, or undefined (the request is refused). */
  storeOf: (shard: string) => ShardStore | undefined
  /**
   * The fence, checked right before each batch is applied (nothing awaited in
   * between): a code when this node must not hold a write of that epoch
   * (it granted a newer one), else null.
   */
  fence: (shard: string, epoch: number) => string | null
  /** A batch showed a gap (earlier operations of its origin missing): anti-entropy fills it. */
  onGap: (shard: string, peer: string) => void
  metrics: P2pMetrics | null
  logger: Logger
}

export async function handleReplicate (components: ReplicateHandlerComponents): Promise<void> {
  const { libp2p, admission, metrics } = components
  const log = components.logger.child({ component: 'metagrid:replicate' })
  await answerChannel(libp2p, REPLICATE_PROTOCOL, { name: 'replicate', maxFrameBytes: MAX_REQUEST_BYTES, maxConcurrent: MAX_CONCURRENT, maxStreams: MAX_STREAMS, metrics, log }, async (bytes, peer) => {
    const from = peer.toString()
    const request = decodeReplicateRequest(bytes)
    const store = components.storeOf(request.shard)
    // A shard this voter has not opened yet (its view lags): answered, so the writer asks again; other shards' requests share the stream.
    if (store == null) return dagCbor.encode({ n: 0, c: 'UNKNOWN_SHARD' })
    let held = 0
    let code: string | null = null
    // Each batch is applied as it is admitted and all become durable in one group commit: awaiting each
    // batch's own commit made a request of n batches wait n commit windows (a second for 200 of them).
    const durable: Array<Promise<unknown>> = []
    // A batch already applied (from gossip or anti-entropy) may still wait for its commit: held only once that is durable.
    let duplicates = false
    for (const bytes of request.batches) {
      try {
        const batch = await admission.admitBatch(store, bytes, 'replicate')
        // Checked after admission's awaits and before the apply, with nothing in between: a grant of a newer epoch cannot slip past it.
        const fenced = components.fence(request.shard, batch.header.epoch)
        if (fenced != null) {
          code = fenced
          break
        }
        if (batch.header.from > store.doc.context.highest(batch.header.origin) + 1) components.onGap(request.shard, from)
        // Applied before applyBatch returns its promise; only the commit is waited for, below.
        durable.push(store.applyBatch(batch))
      } catch (err) {
        if (err instanceof Refusal && err.code === 'DUPLICATE') {
          duplicates = true
          held++
          continue
        }
        if (err instanceof Refusal) {
          code = err.code
          break
        }
        // The stream ends; the batches already applied still commit, and their outcome is nobody's to wait for.
        void Promise.allSettled(durable)
        throw err
      }
      held++
    }
    await Promise.all(duplicates ? [...durable, store.settled()] : durable)
    return dagCbor.encode(code == null ? { n: held } : { n: held, c: code })
  })
}

// ---------------------------------------------------------------------------
// The writer's side

interface Entry {
  /** The last seq of this node's own operations the batch carries. */
  to: number
  bytes: Uint8Array
  /** Voters that hold it (this node included). */
  holders: Set<string>
  at: number
}

interface VoterPipe {
  /** Index (in `Pipe.entries`, counted from `Pipe.base`) of the next entry to send. */
  next: number
  inFlight: boolean
  retryAt: number
  /** Since when this voter has refused the entry at `next` (0: it has not). */
  refusingSince: number
}

interface Waiter {
  seq: number
  startedAt: number
  resolve: () => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

interface Pipe {
  shard: string
  voters: string[]
  /** Entries before this index were dropped (every voter had them, or the log outgrew its bound). */
  base: number
  entries: Entry[]
  bytes: number
  pipes: Map<string, VoterPipe>
  waiters: Waiter[]
  /** This node's seqs up to here are on a majority (or came before the pipe). */
  committed: number
  fenced: string | null
}

export interface WriteConcernComponents {
  libp2p: MetagridLibp2p
  metrics: P2pMetrics | null
  logger: Logger
}

export class WriteConcern {
  private readonly components: WriteConcernComponents
  private readonly self: string
  private readonly log: Logger
  private readonly pipes = new Map<string, Pipe>()
  private readonly channel: RequestChannel

  constructor (components: WriteConcernComponents) {
    this.components = components
    this.channel = new RequestChannel(components.libp2p, { protocol: REPLICATE_PROTOCOL, maxFrameBytes: 1024, maxPending: MAX_CONCURRENT })
    this.self = components.libp2p.peerId.toString()
    this.log = components.logger.child({ component: 'metagrid:write-concern' })
  }

  /**
   * Declares (before any write to it is taken) that a shard's writes need a
   * majority of `voters`; `committedSeq` is this node's own highest seq so
   * far (what came before needs nothing). Null voters stop it. Idempotent
   * for the same voters.
   */
  prepare (shard: string, voters: readonly string[] | null, committedSeq: number): void {
    const existing = this.pipes.get(shard)
    if (voters == null) {
      if (existing != null) this.close(existing, new WriteConcernError('FENCED', `${shard} is no longer held here`))
      return
    }
    if (existing != null && existing.fenced == null && sameSet(existing.voters, voters)) return
    if (existing != null) this.close(existing, new WriteConcernError('FENCED', `the voters of ${shard} changed`))
    this.pipes.set(shard, { shard, voters: [...voters], base: 0, entries: [], bytes: 0, pipes: new Map(), waiters: [], committed: committedSeq, fenced: null })
  }

  /** A durable local batch of `shard` (its last seq `to`): sent to the voters if the shard needs them. */
  enqueue (shard: string, to: number, bytes: Uint8Array): void {
    const pipe = this.pipes.get(shard)
    if (pipe == null || pipe.fenced != null) return
    pipe.entries.push({ to, bytes, holders: new Set([this.self]), at: Date.now() })
    pipe.bytes += bytes.byteLength
    while (pipe.entries.length > MAX_LOG_ENTRIES || pipe.bytes > MAX_LOG_BYTES) this.dropOldest(pipe)
    this.advance(pipe)
    for (const voter of pipe.voters) if (voter !== this.self) this.send(pipe, voter)
  }

  /** Resolves once this node's operations up to `seq` are on a majority of the shard's voters; rejects with WriteConcernError. */
  async replicated (shard: string, seq: number, timeoutMs: number): Promise<void> {
    const pipe = this.pipes.get(shard)
    if (pipe == null || seq <= pipe.committed) return
    if (pipe.fenced != null) throw new WriteConcernError('FENCED', pipe.fenced)
    const startedAt = Date.now()
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        seq,
        startedAt,
        resolve,
        reject,
        timer: setTimeout(() => {
          pipe.waiters = pipe.waiters.filter((w) => w !== waiter)
          this.components.metrics?.writeConcern.observe({ result: 'timeout' }, (Date.now() - startedAt) / 1000)
          reject(new WriteConcernError('TIMEOUT', `not held by a majority of the ${pipe.voters.length} voters of ${shard} within ${timeoutMs} ms; it may still be`))
        }, timeoutMs)
      }
      pipe.waiters.push(waiter)
    })
  }

  private send (pipe: Pipe, voter: string): void {
    let state = pipe.pipes.get(voter)
    if (state == null) {
      state = { next: pipe.base, inFlight: false, retryAt: 0, refusingSince: 0 }
      pipe.pipes.set(voter, state)
    }
    if (state.inFlight || pipe.fenced != null) return
    const now = Date.now()
    if (now < state.retryAt) {
      const voterState = state
      setTimeout(() => { if (!voterState.inFlight) this.send(pipe, voter) }, state.retryAt - now).unref()
      return
    }
    state.next = Math.max(state.next, pipe.base)
    const start = state.next - pipe.base
    if (start >= pipe.entries.length) return
    const batch: Entry[] = []
    let size = 0
    for (let i = start; i < pipe.entries.length && batch.length < MAX_BATCHES_PER_REQUEST; i++) {
      const entry = pipe.entries[i]!
      if (batch.length > 0 && size + entry.bytes.byteLength > MAX_REQUEST_BYTES - 1024) break
      batch.push(entry)
      size += entry.bytes.byteLength
    }
    state.inFlight = true
    const request = encodeReplicateRequest(pipe.shard, batch.map((e) => e.bytes))
    const voterState = state
    void this.channel.request(peerIdFromString(voter), request, REQUEST_TIMEOUT_MS)
      .then((answer) => {
        const { held, code } = decodeAnswer(answer, batch.length)
        for (let i = 0; i < held; i++) batch[i]!.holders.add(voter)
        voterState.next += held
        if (code === 'STALE_EPOCH' || code === 'FENCED') {
          this.close(pipe, new WriteConcernError('FENCED', `voter ${voter} holds a newer epoch of ${pipe.shard}`))
          return
        }
        const now = Date.now()
        if (code == null || held > 0) voterState.refusingSince = 0
        if (code != null && voterState.refusingSince === 0) voterState.refusingSince = now
        if (code != null && (!LAGGING_VIEW.has(code) || now - voterState.refusingSince > MAX_REFUSING_MS)) {
          // Simulated players (metagrid players) saw one batch that named no epoch block every later write of its shard for good.
          this.components.metrics?.admissionRejected.inc({ path: 'replicate', reason: 'VOTER_REFUSES', action: 'ignore' })
          this.log.warn({ code: 'REPLICATE_REFUSED', shard: pipe.shard, voter, reason: code }, 'a voter refuses a batch for good; writes waiting on it fail, later ones start over')
          this.close(pipe, new WriteConcernError('FENCED', `voter ${voter} refuses a batch of ${pipe.shard} (${code})`))
          return
        }
        // Refused for a reason of its view (a lease it has not learned yet): ask again shortly.
        if (code != null) voterState.retryAt = now + RETRY_MS
        this.advance(pipe)
      }, (err) => {
        voterState.retryAt = Date.now() + RETRY_MS
        this.log.debug({ code: 'REPLICATE_FAILED', shard: pipe.shard, voter, reason: (err as Error).message }, 'replicate request failed; retrying')
      })
      .finally(() => {
        voterState.inFlight = false
        if (this.pipes.get(pipe.shard) === pipe) this.send(pipe, voter)
      })
  }

  /** Moves `committed` past every entry a majority holds, resolves the waiters it covers, and drops what every voter holds. */
  private advance (pipe: Pipe): void {
    const majority = Math.floor(pipe.voters.length / 2) + 1
    for (const entry of pipe.entries) {
      if (entry.to <= pipe.committed) continue
      if (entry.holders.size < majority) break
      pipe.committed = entry.to
    }
    const now = Date.now()
    pipe.waiters = pipe.waiters.filter((waiter) => {
      if (waiter.seq > pipe.committed) return true
      clearTimeout(waiter.timer)
      this.components.metrics?.writeConcern.observe({ result: 'ok' }, (now - waiter.startedAt) / 1000)
      waiter.resolve()
      return false
    })
    while (pipe.entries.length > 0) {
      const first = pipe.entries[0]!
      if (first.holders.size < pipe.voters.length && (first.to > pipe.committed || now - first.at < KEEP_COMMITTED_MS)) break
      pipe.bytes -= pipe.entries.shift()!.bytes.byteLength
      pipe.base++
    }
  }

  private dropOldest (pipe: Pipe): void {
    const entry = pipe.entries.shift()!
    pipe.bytes -= entry.bytes.byteLength
    pipe.base++
    if (entry.to <= pipe.committed) return
    // Never on a majority: whoever waits for it cannot be answered.
    pipe.committed = entry.to
    pipe.waiters = pipe.waiters.filter((waiter) => {
      if (waiter.seq > entry.to) return true
      clearTimeout(waiter.timer)
      waiter.reject(new WriteConcernError('DROPPED', `the voters of ${pipe.shard} fell too far behind; the write is only on this node`))
      return false
    })
  }

  private close (pipe: Pipe, err: WriteConcernError): void {
    pipe.fenced = err.message
    for (const waiter of pipe.waiters) {
      clearTimeout(waiter.timer)
      this.components.metrics?.writeConcern.observe({ result: 'fenced' }, (Date.now() - waiter.startedAt) / 1000)
      waiter.reject(err)
    }
    pipe.waiters = []
    if (this.pipes.get(pipe.shard) === pipe) this.pipes.delete(pipe.shard)
  }

  stop (): void {
    for (const pipe of [...this.pipes.values()]) this.close(pipe, new WriteConcernError('FENCED', 'node stopping'))
    this.channel.stop()
  }
}

function sameSet (a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x))
}
