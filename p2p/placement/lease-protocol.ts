/**
 * `/metagrid/lease/3.0.0`: one request and one response per stream, each a
 * length-prefixed DAG-CBOR map.
 *
 * - claims:  `{ t: 'claims', c: [{ l: lease statement, r?: release }, ...] }` (1 to 64) →
 *            `{ v: [vote, ...] }`, one per claim, in order; a vote is
 *            `{ ok: true, g: grant, s?: context }` or `{ ok: false, c: code, d: detail, e: epoch, h: holder, w?: ms }`
 *            (`s`: the voter's causal context of the shard, for a takeover, at most 2 KiB;
 *            `w`: how long the promise the refusal names stands, for HELD until this voter would grant)
 * - handoff: `{ t: 'handoff', s: shard, r: release }` → `{ ok: bool, c?: code, d?: detail }`
 *            ("the shard is yours once you claim the next epoch with this release")
 *
 * Claims to one voter are batched: every claim and renewal a node makes
 * within a few milliseconds (a round of placement renews many shards at
 * once) goes to each voter in one stream, so a node holding fifty shards
 * opens a stream per voter per round, not fifty.
 *
 * Garbage, oversized frames and slow peers get the stream aborted and a
 * `metagrid_wire_rejected_total{protocol="lease"}` count.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { lpStream } from '@libp2p/utils'
import { LEASE_PROTOCOL } from '../constants.ts'
import { decodeWire, wireErrorCode, WireProtocolError } from '../wire-error.ts'
import { requestOnce } from '../request.ts'
import type { Vote, VoteRefusal } from './lease.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'

const MAX_FRAME_BYTES = 256 * 1024
/** A grant's context of the shard, at most; a voter whose context is larger sends none (the claimant pulls). 64 of them fit a frame. */
const MAX_GRANT_STATE_BYTES = 2048
const MAX_STREAMS = 32
/** Claims in one request at most; more wait for the next. */
const MAX_CLAIMS_PER_REQUEST = 64
/** Claims to one voter made within this window share a request. */
const BATCH_WINDOW_MS = 5
/** A handoff includes the new host's claim round. */
const HANDLER_TIMEOUT_MS = 10_000

export class LeaseProtocolError extends WireProtocolError {
  static override name = 'LeaseProtocolError'
  override name = 'LeaseProtocolError'
}

export interface Claim { lease: Uint8Array, release?: Uint8Array }
export type LeaseRequest = { t: 'claims', claims: Claim[] } | { t: 'handoff', shard: string, release: Uint8Array }
export interface HandoffAnswer { ok: boolean, code?: string, detail?: string }

function decode (bytes: Uint8Array): Record<string, unknown> {
  const value = decodeWire(bytes, () => new LeaseProtocolError('MALFORMED', 'not DAG-CBOR'))
  if (value == null || typeof value !== 'object' || Array.isArray(value)) throw new LeaseProtocolError('MALFORMED', 'expected a map')
  return value as Record<string, unknown>
}

function decodeClaim (value: unknown): Claim {
  const { l, r, ...rest } = (value ?? {}) as Record<string, unknown>
  if (typeof value !== 'object' || Object.keys(rest).length > 0 || !(l instanceof Uint8Array) || (r !== undefined && !(r instanceof Uint8Array))) {
    throw new LeaseProtocolError('MALFORMED', 'claim fields missing or mistyped')
  }
  return r === undefined ? { lease: l } : { lease: l, release: r }
}

export function decodeLeaseRequest (bytes: Uint8Array): LeaseRequest {
  const { t, c, r, s, ...rest } = decode(bytes)
  if (Object.keys(rest).length > 0) throw new LeaseProtocolError('MALFORMED', 'unknown fields')
  if (t === 'claims' && Array.isArray(c) && c.length > 0 && c.length <= MAX_CLAIMS_PER_REQUEST && r === undefined && s === undefined) return { t, claims: c.map(decodeClaim) }
  if (t === 'handoff' && typeof s === 'string' && s.length <= 64 && r instanceof Uint8Array && c === undefined) return { t, shard: s, release: r }
  throw new LeaseProtocolError('MALFORMED', 'request fields missing or mistyped')
}

function encodeRequest (request: LeaseRequest): Uint8Array {
  if (request.t === 'handoff') return dagCbor.encode({ t: request.t, s: request.shard, r: request.release })
  return dagCbor.encode({ t: request.t, c: request.claims.map((claim) => (claim.release == null ? { l: claim.lease } : { l: claim.lease, r: claim.release })) })
}

function voteValue (vote: Vote): Record<string, unknown> {
  return vote.ok ? { ok: true, g: vote.grant, ...(vote.state != null && vote.state.byteLength <= MAX_GRANT_STATE_BYTES ? { s: vote.state } : {}) } : { ok: false, c: vote.code, d: vote.detail.slice(0, 256), e: vote.epoch, h: vote.holder, ...(vote.retryInMs != null ? { w: vote.retryInMs } : {}) }
}

function decodeVote (value: unknown): Vote {
  if (value == null || typeof value !== 'object') throw new LeaseProtocolError('MALFORMED', 'a vote is a map')
  const { ok, g, c, d, e, h, w, s } = value as Record<string, unknown>
  if (ok === true && g instanceof Uint8Array && (s === undefined || (s instanceof Uint8Array && s.byteLength <= MAX_GRANT_STATE_BYTES))) {
    return s === undefined ? { ok: true, grant: g } : { ok: true, grant: g, state: s }
  }
  if (ok === false && typeof c === 'string' && typeof d === 'string' && Number.isSafeInteger(e) && (h === null || typeof h === 'string') && (w === undefined || (Number.isSafeInteger(w) && (w as number) >= 0))) {
    return { ok: false, code: c as VoteRefusal, detail: d, epoch: e as number, holder: h, ...(w !== undefined ? { retryInMs: w as number } : {}) }
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
      let answer: Uint8Array
      if (request.t === 'claims') {
        // Different shards decide independently (the voter orders decisions per shard itself).
        const votes = await Promise.all(request.claims.map(async (claim) => counted(await handlers.claim(claim.lease, claim.release, connection.remotePeer), metrics)))
        answer = dagCbor.encode({ v: votes.map(voteValue) })
      } else {
        answer = encodeHandoff(await handlers.handoff(request.shard, request.release, connection.remotePeer))
      }
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

/**
 * Asks voters for their votes, batching: every claim to one voter made within
 * BATCH_WINDOW_MS goes in one request (up to MAX_CLAIMS_PER_REQUEST).
 */
export class VoteRequests {
  private readonly libp2p: MetagridLibp2p
  private readonly timeoutMs: number
  private readonly pending = new Map<string, { peer: PeerId, claims: Array<{ claim: Claim, resolve: (vote: Vote) => void, reject: (err: Error) => void }>, timer: NodeJS.Timeout }>()

  constructor (libp2p: MetagridLibp2p, timeoutMs: number) {
    this.libp2p = libp2p
    this.timeoutMs = timeoutMs
  }

  async request (peer: PeerId, lease: Uint8Array, release?: Uint8Array): Promise<Vote> {
    return new Promise((resolve, reject) => {
      const key = peer.toString()
      let batch = this.pending.get(key)
      if (batch == null) {
        batch = { peer, claims: [], timer: setTimeout(() => { void this.send(key) }, BATCH_WINDOW_MS) }
        this.pending.set(key, batch)
      }
      batch.claims.push({ claim: release == null ? { lease } : { lease, release }, resolve, reject })
      if (batch.claims.length >= MAX_CLAIMS_PER_REQUEST) {
        clearTimeout(batch.timer)
        void this.send(key)
      }
    })
  }

  private async send (key: string): Promise<void> {
    const batch = this.pending.get(key)
    if (batch == null) return
    this.pending.delete(key)
    try {
      const answer = decode(await exchange(this.libp2p, batch.peer, { t: 'claims', claims: batch.claims.map((c) => c.claim) }, this.timeoutMs))
      const votes = answer.v
      if (!Array.isArray(votes) || votes.length !== batch.claims.length) throw new LeaseProtocolError('MALFORMED', 'one vote per claim expected')
      batch.claims.forEach((c, i) => { c.resolve(decodeVote(votes[i])) })
    } catch (err) {
      for (const c of batch.claims) c.reject(err as Error)
    }
  }
}

export async function requestHandoff (libp2p: MetagridLibp2p, peer: PeerId, shard: string, release: Uint8Array, timeoutMs: number): Promise<HandoffAnswer> {
  return decodeHandoff(await exchange(libp2p, peer, { t: 'handoff', shard, release }, timeoutMs))
}
