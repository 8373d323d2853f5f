/**
 * One latency probe: libp2p's ping on metagrid's own protocol id, shared by
 * the prober, indirect probes and discovery. The ping protocol allows one
 * outbound stream per peer, so a ping can still meet another in flight (a
 * helper asked to probe a peer the prober is probing) and be refused locally
 * with TooManyOutboundProtocolStreamsError. That is no sign of a slow or dead
 * peer: wait briefly and try again within the timeout.
 */
import type { MetagridLibp2p } from './libp2p.ts'
import type { PeerId } from '@libp2p/interface'

/** The other ping takes one RTT; check back well within a typical one. */
const RETRY_AFTER_MS = 25

export async function pingPeer (libp2p: MetagridLibp2p, peer: PeerId, timeoutMs: number): Promise<number> {
  const signal = AbortSignal.timeout(timeoutMs)
  while (true) {
    try {
      return await libp2p.services.probePing.ping(peer, { signal })
    } catch (err) {
      if ((err as Error).name !== 'TooManyOutboundProtocolStreamsError' || signal.aborted) throw err
      await new Promise((resolve) => setTimeout(resolve, RETRY_AFTER_MS))
    }
  }
}
