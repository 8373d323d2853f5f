/**
 * `/metagrid/lease/1.0.0`: one request and one response per stream, each a
 * length-prefixed DAG-CBOR map.
 *
 * - claim:   `{ t: 'claim', l: lease statement, r?: release }` →
 *            `{ ok: true, g: grant }` or `{ ok: false, c: code, d: detail, e: epoch, h: holder }`
 * - handoff: `{ t: 'handoff', s: shard, r: release }` → `{ ok: bool, c?: code, d?: detail }`
 *            ("the shard is yours once you claim the next epoch with this release")
 *
 * Garbage, oversized frames and slow peers get the stream aborted and a
 * `metagrid_wire_rejected_total{protocol="lease"}` count.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { lpStream } from '@libp2p/utils'
import { LEASE_PROTOCOL } from '../constants.ts'
import { WireProtocolError, wireErrorCode } from '../wire-error.ts'
import { requestOnce } from '../request.ts'
import type { Vote, VoteRefusal } from './lease.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'

const MAX_FRAME_BYTES = 64 * 1024
const MAX_STREAMS = 32
/** A handoff includes the new host's claim round. */
const HANDLER_TIMEOUT_MS = 10_000

export class LeaseProtocolError extends WireProtocolError {
  static override name = 'LeaseProtocolError'
  override name = 'LeaseProtocolError'
}

export type LeaseRequest = { t: 'claim', lease: Uint8Array, release?: Uint8Array } | { t: 'handoff', shard: string, release: Uint8Array }
export interface HandoffAnswer { ok: boolean, code?: string, detail?: string }

function decode (bytes: Uint8Array): Record<string, unknown> {
  let value: unknown
  try {
    value = dagCbor.decode(bytes)
  } catch {
    throw new LeaseProtocolError('MALFORMED', 'not DAG-CBOR')
  }
  if (value == null || typeof value !== 'object' || Array.isArray(value)) throw new LeaseProtocolError('MALFORMED', 'expected a map')
  return value as Record<string, unknown>
}

export function decodeLeaseRequest (bytes: Uint8Array): LeaseRequest {
  const { t, l, r, s, ...rest } = decode(bytes)
  if (Object.keys(rest).length > 0) throw new LeaseProtocolError('MALFORMED', 'unknown fields')
  if (t === 'claim' && l instanceof Uint8Array && (r === undefined || r instanceof Uint8Array) && s === undefined) {
    return r === undefined ? { t, lease: l } : { t, lease: l, release: r }
  }
  if (t === 'handoff' && typeof s === 'string' && s.length <= 64 && r instanceof Uint8Array && l === undefined) return { t, shard: s, release: r }
  throw new LeaseProtocolError('MALFORMED', 'request fields missing or mistyped')
}

function encodeRequest (request: LeaseRequest): Uint8Array {
  if (request.t === 'handoff') return dagCbor.encode({ t: request.t, s: request.shard, r: request.release })
  return dagCbor.encode(request.release == null ? { t: request.t, l: request.lease } : { t: request.t, l: request.lease, r: request.release })
}

function encodeVote (vote: Vote): Uint8Array {
  return dagCbor.encode(vote.ok ? { ok: true, g: vote.grant } : { ok: false, c: vote.code, d: vote.detail.slice(0, 256), e: vote.epoch, h: vote.holder })
}

function decodeVote (bytes: Uint8Array): Vote {
  const { ok, g, c, d, e, h } = decode(bytes)
  if (ok === true && g instanceof Uint8Array) return { ok: true, grant: g }
  if (ok === false && typeof c === 'string' && typeof d === 'string' && Number.isSafeInteger(e) && (h === null || typeof h === 'string')) {
    return { ok: false, code: c as VoteRefusal, detail: d, epoch: e as number, holder: h }
  }
  throw new LeaseProtocolError('MALFORMED', 'vote fields missing or mistyped')
}

function encodeHandoff (answer: HandoffAnswer): Uint8Array {
  return dagCbor.encode({ ok: answer.ok, ...(answer.code != null ? { c: answer.code.slice(0, 32) } : {}), ...(answer.detail != null ? { d: answer.detail.slice(0, 256) } : {}) })
}

function decodeHandoff (bytes: Uint8Array): HandoffAnswer {
  const { ok, c, d } = decode(bytes)
  if (typeof ok !== 'boolean') throw new LeaseProtocolError('MALFORMED', 'handoff answer fields missing or mistyped')
  return { ok, ...(typeof c === 'string' ? { code: c } : {}), ...(typeof d === 'string' ? { detail: d } : {}) }
}

export interface LeaseHandlers {
  claim: (lease: Uint8Array, release: Uint8Array | undefined, from: PeerId) => Promise<Vote>
  handoff: (shard: string, release: Uint8Array, from: PeerId) => Promise<HandoffAnswer>
}

export async function handleLeaseProtocol (libp2p: MetagridLibp2p, handlers: LeaseHandlers, metrics: P2pMetrics | null, logger: Logger): Promise<void> {
  const log = logger.child({ component: 'metagrid:lease' })
  await libp2p.handle(LEASE_PROTOCOL, async (stream, connection) => {
    const signal = AbortSignal.timeout(HANDLER_TIMEOUT_MS)
    const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
    try {
      const request = decodeLeaseRequest((await lp.read({ signal })).subarray())
      const answer = request.t === 'claim'
        ? encodeVote(counted(await handlers.claim(request.lease, request.release, connection.remotePeer), metrics))
        : encodeHandoff(await handlers.handoff(request.shard, request.release, connection.remotePeer))
      await lp.write(answer, { signal })
      await stream.close({ signal })
    } catch (err) {
      const code = wireErrorCode(err)
      metrics?.wireRejected.inc({ protocol: 'lease', reason: code })
      log.debug({ code, peer: connection.remotePeer.toString(), reason: (err as Error).message }, 'lease request refused')
      stream.abort(err as Error)
    }
  }, { maxInboundStreams: MAX_STREAMS, maxOutboundStreams: MAX_STREAMS })
}

/** Refusals that say the claim itself was wrong (not that the shard is held): counted as the admission layer's. */
const REFUSED_CLAIMS = new Set(['BAD_LEASE', 'TOO_LONG', 'NOT_A_VOTER', 'NOT_ELIGIBLE'])

function counted (vote: Vote, metrics: P2pMetrics | null): Vote {
  if (!vote.ok && REFUSED_CLAIMS.has(vote.code)) metrics?.admissionRejected.inc({ path: 'lease', reason: vote.code, action: 'reject' })
  return vote
}

async function exchange (libp2p: MetagridLibp2p, peer: PeerId, request: LeaseRequest, timeoutMs: number): Promise<Uint8Array> {
  return requestOnce(libp2p, peer, LEASE_PROTOCOL, encodeRequest(request), { timeoutMs, maxFrameBytes: MAX_FRAME_BYTES })
}

export async function requestVote (libp2p: MetagridLibp2p, peer: PeerId, lease: Uint8Array, release: Uint8Array | undefined, timeoutMs: number): Promise<Vote> {
  return decodeVote(await exchange(libp2p, peer, release == null ? { t: 'claim', lease } : { t: 'claim', lease, release }, timeoutMs))
}

export async function requestHandoff (libp2p: MetagridLibp2p, peer: PeerId, shard: string, release: Uint8Array, timeoutMs: number): Promise<HandoffAnswer> {
  return decodeHandoff(await exchange(libp2p, peer, { t: 'handoff', shard, release }, timeoutMs))
}
