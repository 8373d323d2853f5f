/**
 * Probes as membership (swim.ts) asks for them: a direct ping, whose RTT also
 * feeds the Vivaldi coordinate and the member's measured RTT, and indirect
 * pings through helpers (SWIM's ping-req, probe-protocol.ts), which answer
 * whether they reached the member (a nack when they could not).
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { CoordinateError, type Coordinate, type VivaldiClient } from '../coordinates/vivaldi.ts'
import { requestProbe } from './probe-protocol.ts'
import { pingPeer } from '../ping.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'

export interface ProberComponents {
  libp2p: MetagridLibp2p
  vivaldi: VivaldiClient
  /** The latest coordinate a peer reported, if any. */
  coordinateOf: (peerId: string) => Coordinate | undefined
  metrics: P2pMetrics | null
  logger: Logger
}

/** Samples kept per peer for the measured RTT shown to operators (median). */
const RTT_SAMPLES = 5
/**
 * A probe of a peer with no connection dials first, under this timeout of its
 * own: a handshake on a loaded machine can take longer than a probe timeout,
 * and says nothing about whether the peer runs (a dead one refuses at once).
 */
const DIAL_TIMEOUT_MS = 3_000

export class Prober {
  private readonly components: ProberComponents
  private readonly log: Logger
  private readonly samples = new Map<string, number[]>()
  /** At most one ping per peer in flight (the ping protocol allows one outbound stream); callers share it. */
  private readonly inFlight = new Map<string, Promise<number>>()

  constructor (components: ProberComponents) {
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:prober' })
  }

  /** Median of the recent RTT samples to `peerId`, ms. */
  measuredRtt (peerId: string): number | undefined {
    const samples = this.samples.get(peerId)
    if (samples == null || samples.length === 0) return undefined
    const sorted = [...samples].sort((a, b) => a - b)
    return sorted[Math.floor(sorted.length / 2)]
  }

  /** The round trip to expect to `peerId`: measured when it was, else estimated from coordinates, ms. */
  expectedRtt (peerId: string): number | undefined {
    const measured = this.measuredRtt(peerId)
    if (measured != null) return measured
    const coordinate = this.components.coordinateOf(peerId)
    return coordinate == null || this.components.vivaldi.updates === 0 ? undefined : this.components.vivaldi.estimateTo(coordinate)
  }

  forget (peerId: string): void {
    this.samples.delete(peerId)
    this.components.vivaldi.forget(peerId)
  }

  /** Pings one peer; throws when the ping fails. Concurrent calls for the same peer share one ping. */
  async ping (peer: PeerId, timeoutMs: number): Promise<number> {
    const key = peer.toString()
    const pending = this.inFlight.get(key)
    if (pending != null) return pending
    const { libp2p } = this.components
    const ping = (async () => {
      if (libp2p.getConnections(peer).length === 0) await libp2p.dial(peer, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
      return pingPeer(libp2p, peer, timeoutMs)
    })().finally(() => { this.inFlight.delete(key) })
    this.inFlight.set(key, ping)
    return ping
  }

  /** A direct probe: true when the peer answered in time (its RTT is recorded). */
  async probe (peerId: string, timeoutMs: number): Promise<boolean> {
    try {
      this.record(peerId, await this.ping(peerIdFromString(peerId), timeoutMs))
      return true
    } catch {
      this.components.metrics?.probeFailures.inc({ kind: 'direct' })
      return false
    }
  }

  private record (peerId: string, rttMs: number): void {
    this.components.metrics?.probeRtt.observe(rttMs / 1000)
    const samples = this.samples.get(peerId) ?? []
    samples.push(rttMs)
    if (samples.length > RTT_SAMPLES) samples.shift()
    this.samples.set(peerId, samples)
    const coordinate = this.components.coordinateOf(peerId)
    if (coordinate == null) return
    try {
      // libp2p ping has millisecond resolution; a 0 ms sample on a LAN still means "very close".
      this.components.vivaldi.update(peerId, coordinate, Math.max(rttMs, 0.1))
      this.components.metrics?.coordinateError.set(this.components.vivaldi.current.error)
    } catch (err) {
      if (!(err instanceof CoordinateError)) throw err
      this.log.debug({ code: 'COORDINATE_SAMPLE', peer: peerId, reason: err.message }, 'RTT sample not applied')
    }
  }

  /** Asks each helper to ping `peerId` for us: how many reached it, and how many answered that they could not (nacks). */
  async indirect (peerId: string, helpers: string[], timeoutMs: number): Promise<{ asked: number, acks: number, nacks: number }> {
    const target = peerIdFromString(peerId)
    const answers = await Promise.allSettled(helpers.map(async (helper) => requestProbe(this.components.libp2p, peerIdFromString(helper), target, timeoutMs)))
    let acks = 0
    let nacks = 0
    for (const answer of answers) {
      if (answer.status !== 'fulfilled') continue
      if (answer.value != null) acks++
      else nacks++
    }
    if (acks === 0) this.components.metrics?.probeFailures.inc({ kind: 'indirect' })
    return { asked: helpers.length, acks, nacks }
  }
}
