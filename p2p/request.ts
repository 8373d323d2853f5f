/**
 * One request and one answer over a fresh stream, each a length-prefixed
 * frame: what the lease, handoff and ledger protocols do as the asking side.
 * The stream gets its own deadline, is closed after the answer and aborted
 * on any failure, so no stream outlives its request. The protocol is
 * selected optimistically, in the same message as the request.
 */
import { lpStream } from '@libp2p/utils'
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
