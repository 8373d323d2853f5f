/**
 * Requests and answers multiplexed over one long-lived stream per peer and
 * protocol: what the input relay and the write concern's replication use,
 * which send one request per input or per batch round, hundreds a second to
 * the same few peers.
 *
 * A fresh stream per request (`requestOnce`) costs a yamux stream, protocol
 * selection, libp2p's stream bookkeeping and metrics, and a peer-store update
 * each time; at a few hundred requests a second between four nodes that was
 * most of each node's CPU, and the streams a protocol allows per connection
 * ran out, refusing inputs. Here the stream opens once and stays while it is
 * used.
 *
 * Frames are length-prefixed; each starts with a 4-byte request id (big
 * endian) the answer repeats, so answers may come in any order. The asking
 * side bounds its requests in flight per peer and times each one out on its
 * own; a stream that fails fails what is in flight on it, and the next
 * request opens a new one. The answering side answers up to `maxConcurrent`
 * requests of a stream at once and reads no more until one is answered (so a
 * peer cannot queue unbounded work), and aborts the stream on a frame it
 * cannot take (counted in `metagrid_wire_rejected_total{protocol}`).
 */
import { lpStream } from '@libp2p/utils'
import { wireErrorCode, WireProtocolError } from './wire-error.ts'
import type { MetagridLibp2p } from './libp2p.ts'
import type { PeerId, Stream } from '@libp2p/interface'

const ID_BYTES = 4
/** A stream nothing was asked on for this long is closed. */
const IDLE_MS = 30_000

export class ChannelError extends WireProtocolError {
  static override name = 'ChannelError'
  override name = 'ChannelError'
}

function frame (id: number, payload: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(ID_BYTES + payload.byteLength)
  new DataView(bytes.buffer).setUint32(0, id)
  bytes.set(payload, ID_BYTES)
  return bytes
}

function unframe (bytes: Uint8Array): { id: number, payload: Uint8Array } {
  if (bytes.byteLength < ID_BYTES) throw new ChannelError('MALFORMED', 'frame shorter than its request id')
  return { id: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0), payload: bytes.subarray(ID_BYTES) }
}

interface Pending {
  resolve: (answer: Uint8Array) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

interface Conn {
  stream: Stream
  write: (bytes: Uint8Array) => Promise<void>
  pending: Map<number, Pending>
  nextId: number
  idle: NodeJS.Timeout | undefined
  closed: boolean
}

export interface ChannelOptions {
  protocol: string
  /** The largest answer read; a larger one ends the stream. */
  maxFrameBytes: number
  /** Requests in flight to one peer; one more is refused at once (`BUSY`). */
  maxPending: number
  /** Peers with an open stream; the least recently opened is closed past it. */
  maxPeers?: number
}

/** The asking side: one stream per peer, opened on the first request and kept while requests come. */
export class RequestChannel {
  private readonly libp2p: MetagridLibp2p
  private readonly options: ChannelOptions
  private readonly conns = new Map<string, Conn | Promise<Conn>>()
  private stopped = false

  constructor (libp2p: MetagridLibp2p, options: ChannelOptions) {
    this.libp2p = libp2p
    this.options = options
  }

  /** Sends one request to `peer`; resolves with its answer, rejects on timeout or when the stream fails. */
  async request (peer: PeerId, payload: Uint8Array, timeoutMs: number): Promise<Uint8Array> {
    if (this.stopped) throw new ChannelError('STOPPED', 'the channel is stopped')
    const conn = await this.conn(peer, timeoutMs)
    if (conn.pending.size >= this.options.maxPending) throw new ChannelError('BUSY', `${this.options.maxPending} requests already in flight to this peer`)
    clearTimeout(conn.idle)
    conn.idle = undefined
    const id = conn.nextId
    conn.nextId = (conn.nextId + 1) >>> 0
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.pending.delete(id)
        this.idleLater(peer.toString(), conn)
        reject(new ChannelError('TIMEOUT', `no answer within ${timeoutMs} ms`))
      }, timeoutMs)
      conn.pending.set(id, { resolve, reject, timer })
      conn.write(frame(id, payload)).catch((err: unknown) => { this.fail(peer.toString(), conn, err as Error) })
    })
  }

  /** Closes every stream; what is in flight fails. */
  stop (): void {
    this.stopped = true
    for (const [peer, conn] of this.conns) if (!(conn instanceof Promise)) this.fail(peer, conn, new ChannelError('STOPPED', 'the channel is stopped'))
  }

  private async conn (peer: PeerId, timeoutMs: number): Promise<Conn> {
    const key = peer.toString()
    const existing = this.conns.get(key)
    if (existing != null) return existing
    const opening = this.open(peer, timeoutMs)
    this.conns.set(key, opening)
    try {
      const conn = await opening
      if (this.stopped) {
        this.fail(key, conn, new ChannelError('STOPPED', 'the channel is stopped'))
        throw new ChannelError('STOPPED', 'the channel is stopped')
      }
      this.conns.set(key, conn)
      const max = this.options.maxPeers ?? 1024
      if (this.conns.size > max) {
        const [oldest, other] = this.conns.entries().next().value!
        if (!(other instanceof Promise)) this.fail(oldest, other, new ChannelError('EVICTED', 'too many peers with an open stream'))
      }
      return conn
    } catch (err) {
      if (this.conns.get(key) === opening) this.conns.delete(key)
      throw err
    }
  }

  private async open (peer: PeerId, timeoutMs: number): Promise<Conn> {
    // The protocol is selected in the same message as the first request: no round trip to agree on it first.
    const stream = await this.libp2p.dialProtocol(peer, this.options.protocol, { signal: AbortSignal.timeout(timeoutMs), negotiateFully: false })
    const lp = lpStream(stream, { maxDataLength: this.options.maxFrameBytes + ID_BYTES })
    const conn: Conn = { stream, write: async (bytes) => lp.write(bytes), pending: new Map(), nextId: 1, idle: undefined, closed: false }
    const key = peer.toString()
    void (async () => {
      try {
        while (!conn.closed) {
          const bytes = await lp.read()
          const { id, payload } = unframe(bytes.subarray())
          const waiter = conn.pending.get(id)
          // An answer to a request that timed out meanwhile: nobody waits for it.
          if (waiter == null) continue
          conn.pending.delete(id)
          clearTimeout(waiter.timer)
          waiter.resolve(payload)
          this.idleLater(key, conn)
        }
      } catch (err) {
        this.fail(key, conn, err as Error)
      }
    })()
    return conn
  }

  private idleLater (key: string, conn: Conn): void {
    if (conn.pending.size > 0 || conn.closed || conn.idle != null) return
    conn.idle = setTimeout(() => {
      if (conn.pending.size > 0) return
      conn.closed = true
      if (this.conns.get(key) === conn) this.conns.delete(key)
      void conn.stream.close().catch((err: unknown) => { conn.stream.abort(err as Error) })
    }, IDLE_MS)
    conn.idle.unref()
  }

  private fail (key: string, conn: Conn, err: Error): void {
    if (this.conns.get(key) === conn) this.conns.delete(key)
    clearTimeout(conn.idle)
    const closedCleanly = conn.closed
    conn.closed = true
    for (const waiter of conn.pending.values()) {
      clearTimeout(waiter.timer)
      waiter.reject(err)
    }
    conn.pending.clear()
    if (!closedCleanly) conn.stream.abort(err)
  }
}

export interface AnswerChannelOptions {
  /** The label of `metagrid_wire_rejected_total{protocol}` and of the debug line. */
  name: string
  /** The largest request read; a larger one ends the stream. */
  maxFrameBytes: number
  /** Requests of one stream answered at once; the stream is not read further until one is done. */
  maxConcurrent: number
  /** Streams of this protocol per connection, each way. */
  maxStreams: number
  metrics: { wireRejected: { inc: (labels: { protocol: string, reason: string }) => void } } | null
  log: { debug: (fields: Record<string, unknown>, message: string) => void }
}

/**
 * The answering side: reads requests off each stream a peer opens and
 * writes each answer as it is ready. `answer` decides what a request is
 * worth; an error it throws (a malformed request) ends the stream, so a
 * refusal the asker should see (a shard not open here yet) is an answer.
 * `answer` must settle: a request it never answers holds one of the
 * stream's `maxConcurrent` slots.
 */
export async function answerChannel (libp2p: MetagridLibp2p, protocol: string, options: AnswerChannelOptions, answer: (request: Uint8Array, peer: PeerId) => Promise<Uint8Array>): Promise<void> {
  await libp2p.handle(protocol, async (stream, connection) => {
    const peer = connection.remotePeer
    // What an asking side within its bound can have sent ahead of the answers; past it the stream is reset.
    const lp = lpStream(stream, { maxDataLength: options.maxFrameBytes + ID_BYTES, maxBufferSize: Math.max(4 * 1024 * 1024, 2 * (options.maxFrameBytes + ID_BYTES)) })
    let inFlight = 0
    let slot: PromiseWithResolvers<void> | null = null
    let failed = false
    const refuse = (err: Error): void => {
      if (failed) return
      failed = true
      const code = wireErrorCode(err)
      options.metrics?.wireRejected.inc({ protocol: options.name, reason: code })
      options.log.debug({ code, peer: peer.toString(), reason: err.message }, `${options.name} request refused`)
      stream.abort(err)
    }
    try {
      while (!failed) {
        if (inFlight >= options.maxConcurrent) {
          slot = Promise.withResolvers()
          await slot.promise
          continue
        }
        let bytes
        try {
          bytes = await lp.read()
        } catch (err) {
          // The asking side closed its end (idle: answer what is in flight, then close ours) or reset it (stopped).
          if (stream.remoteWriteStatus === 'closed' || stream.status !== 'open') break
          throw err
        }
        const { id, payload } = unframe(bytes.subarray())
        inFlight++
        void answer(payload, peer)
          .then(async (reply) => { if (!failed) await lp.write(frame(id, reply)) })
          .catch((err: unknown) => { refuse(err as Error) })
          .finally(() => {
            inFlight--
            slot?.resolve()
            slot = null
          })
      }
      while (inFlight > 0 && !failed) {
        slot = Promise.withResolvers()
        await slot.promise
      }
      if (!failed && stream.status === 'open') await stream.close()
    } catch (err) {
      refuse(err as Error)
    }
  }, { maxInboundStreams: options.maxStreams, maxOutboundStreams: options.maxStreams })
}
