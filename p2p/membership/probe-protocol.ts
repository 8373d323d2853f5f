/**
 * `/metagrid/probe/1.0.0`: SWIM's ping-req. A member that cannot reach a
 * peer asks others to ping it on its behalf, so one bad link does not make a
 * healthy node look dead.
 *
 * One request and one response per stream, each a length-prefixed DAG-CBOR
 * map: request `{ t: target peer id (multihash bytes), w: timeout ms }`,
 * response `{ ok: bool, r: rtt ms }`. Garbage, oversized frames and slow
 * peers get the stream aborted and a `metagrid_wire_rejected_total` count.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromMultihash } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import * as Digest from 'multiformats/hashes/digest'
import { PROBE_PROTOCOL } from '../constants.ts'
import { decodeWire, wireErrorCode, WireProtocolError } from '../wire-error.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'

/** A request or response is a few dozen bytes; anything longer is refused unread. */
const MAX_FRAME_BYTES = 256
/** A helper never waits longer than this for the target, whatever the asker wants. */
const MAX_PROBE_TIMEOUT_MS = 10_000
/** Concurrent probe streams per connection: SWIM asks k (3) helpers at a time. */
const MAX_STREAMS = 8

export class ProbeProtocolError extends WireProtocolError {
  static override name = 'ProbeProtocolError'
  override name = 'ProbeProtocolError'
}

export interface ProbeRequest { target: PeerId, timeoutMs: number }
export interface ProbeResponse { ok: boolean, rttMs: number }

export function encodeProbeRequest (request: ProbeRequest): Uint8Array {
  return dagCbor.encode({ t: request.target.toMultihash().bytes, w: request.timeoutMs })
}

export function decodeProbeRequest (bytes: Uint8Array): ProbeRequest {
  const value = decodeWire(bytes, () => new ProbeProtocolError('MALFORMED', 'request is not DAG-CBOR'))
  const { t, w, ...rest } = (value ?? {}) as Record<string, unknown>
  if (typeof value !== 'object' || Object.keys(rest).length > 0 || !(t instanceof Uint8Array) || !Number.isSafeInteger(w) || (w as number) <= 0) {
    throw new ProbeProtocolError('MALFORMED', 'request fields missing or mistyped')
  }
  let target: PeerId
  try {
    target = peerIdFromMultihash(Digest.decode(t))
  } catch {
    throw new ProbeProtocolError('BAD_PEER_ID', 'target is not a peer id')
  }
  return { target, timeoutMs: Math.min(w as number, MAX_PROBE_TIMEOUT_MS) }
}

export function encodeProbeResponse (response: ProbeResponse): Uint8Array {
  return dagCbor.encode({ ok: response.ok, r: Math.max(0, Math.round(response.rttMs)) })
}

export function decodeProbeResponse (bytes: Uint8Array): ProbeResponse {
  const value = decodeWire(bytes, () => new ProbeProtocolError('MALFORMED', 'response is not DAG-CBOR'))
  const { ok, r, ...rest } = (value ?? {}) as Record<string, unknown>
  if (typeof value !== 'object' || Object.keys(rest).length > 0 || typeof ok !== 'boolean' || !Number.isSafeInteger(r) || (r as number) < 0) {
    throw new ProbeProtocolError('MALFORMED', 'response fields missing or mistyped')
  }
  return { ok, rttMs: r as number }
}

export interface ProbeHandlerComponents {
  libp2p: MetagridLibp2p
  /** Pings `target` and resolves to the RTT in ms; rejects when it cannot be reached in time. */
  ping: (target: PeerId, timeoutMs: number) => Promise<number>
  metrics: P2pMetrics | null
  logger: Logger
}

/** Answers other members' indirect probe requests. */
export async function handleProbes (components: ProbeHandlerComponents): Promise<void> {
  const { libp2p, metrics } = components
  const log = components.logger.child({ component: 'metagrid:probe' })
  await libp2p.handle(PROBE_PROTOCOL, async (stream, connection) => {
    // Reading the request plus the ping itself plus writing the answer.
    const signal = AbortSignal.timeout(MAX_PROBE_TIMEOUT_MS + 2_000)
    const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
    try {
      const request = decodeProbeRequest((await lp.read({ signal })).subarray())
      if (request.target.equals(connection.remotePeer) || request.target.equals(libp2p.peerId)) {
        throw new ProbeProtocolError('BAD_TARGET', 'cannot probe the asker or the helper itself')
      }
      let response: ProbeResponse
      try {
        response = { ok: true, rttMs: await components.ping(request.target, request.timeoutMs) }
      } catch {
        response = { ok: false, rttMs: 0 }
      }
      await lp.write(encodeProbeResponse(response), { signal })
      await stream.close({ signal })
    } catch (err) {
      const code = wireErrorCode(err)
      metrics?.wireRejected.inc({ protocol: 'probe', reason: code })
      log.debug({ code, peer: connection.remotePeer.toString(), reason: (err as Error).message }, 'probe request refused')
      stream.abort(err as Error)
    }
  }, { maxInboundStreams: MAX_STREAMS, maxOutboundStreams: MAX_STREAMS })
}

/** Asks `helper` to ping `target`; resolves to the RTT it measured, or null when it could not reach it. */
export async function requestProbe (libp2p: MetagridLibp2p, helper: PeerId, target: PeerId, timeoutMs: number): Promise<number | null> {
  const signal = AbortSignal.timeout(timeoutMs + 1_000)
  const stream = await libp2p.dialProtocol(helper, PROBE_PROTOCOL, { signal, negotiateFully: false })
  try {
    const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
    await lp.write(encodeProbeRequest({ target, timeoutMs }), { signal })
    const response = decodeProbeResponse((await lp.read({ signal })).subarray())
    await stream.close({ signal })
    return response.ok ? response.rttMs : null
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}
