/**
 * One request and one answer over a fresh stream, each a length-prefixed
 * frame: what the lease, handoff and ledger protocols do as the asking side.
 * The stream gets its own deadline, is closed after the answer and aborted
 * on any failure, so no stream outlives its request. The protocol is
 * selected optimistically, in the same message as the request.
 */
import { lpStream } from '@libp2p/utils'
import { wireErrorCode } from './wire-error.ts'
import type { MetagridLibp2p } from './libp2p.ts'
import type { PeerId } from '@libp2p/interface'

export async function requestOnce (libp2p: MetagridLibp2p, peer: PeerId, protocol: string, request: Uint8Array, options: { timeoutMs: number, maxFrameBytes: number }): Promise<Uint8Array> {
  const signal = AbortSignal.timeout(options.timeoutMs)
  // The protocol name goes out with the request in the first message (no round trip to agree on it first):
  // a request costs one round trip, not two. A peer that does not speak it fails the read instead.
  const stream = await libp2p.dialProtocol(peer, protocol, { signal, negotiateFully: false })
  try {
    const lp = lpStream(stream, { maxDataLength: options.maxFrameBytes })
    await lp.write(request, { signal })
    const answer = (await lp.read({ signal })).subarray()
    // The answer is in: closing waits for the other side's close, one more round trip the caller need not wait for.
    void stream.close({ signal }).catch((err: unknown) => { stream.abort(err as Error) })
    return answer
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}

export interface AnswerOptions {
  /** The label of `metagrid_wire_rejected_total{protocol}` and of the debug line. */
  name: string
  timeoutMs: number
  maxFrameBytes: number
  maxStreams: number
  metrics: { wireRejected: { inc: (labels: { protocol: string, reason: string }) => void } } | null
  log: { debug: (fields: Record<string, unknown>, message: string) => void }
}

/**
 * The answering side of `requestOnce`: reads one length-prefixed request,
 * writes `answer`'s reply and closes, within `timeoutMs`. A request that
 * fails to decode or answer aborts the stream, counted by its bounded code.
 */
export async function answerRequests (libp2p: MetagridLibp2p, protocol: string, options: AnswerOptions, answer: (request: Uint8Array, peer: PeerId) => Promise<Uint8Array>): Promise<void> {
  await libp2p.handle(protocol, async (stream, connection) => {
    const signal = AbortSignal.timeout(options.timeoutMs)
    const lp = lpStream(stream, { maxDataLength: options.maxFrameBytes })
    try {
      const reply = await answer((await lp.read({ signal })).subarray(), connection.remotePeer)
      await lp.write(reply, { signal })
      await stream.close({ signal })
    } catch (err) {
      const code = wireErrorCode(err)
      options.metrics?.wireRejected.inc({ protocol: options.name, reason: code })
      options.log.debug({ code, peer: connection.remotePeer.toString(), reason: (err as Error).message }, `${options.name} request refused`)
      stream.abort(err as Error)
    }
  }, { maxInboundStreams: options.maxStreams, maxOutboundStreams: options.maxStreams })
}
