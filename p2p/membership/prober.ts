/**
 * Latency probes: every interval, ping the next member of a shuffled
 * round-robin over the mesh (SWIM's probe order: every member is probed once
 * per cycle, in an order nobody can predict). Each RTT feeds the Vivaldi
 * coordinate and the member's measured RTT; a failed ping asks membership to
 * check the member. `check()` is membership's direct-then-indirect probe.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { CoordinateError, type Coordinate, type VivaldiClient } from '../coordinates/vivaldi.ts'
import { requestProbe } from './probe-protocol.ts'
import { shuffle } from '../shuffle.ts'
import { pingPeer } from '../ping.ts'
import type { CheckResult, Membership } from './membership.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'

export interface ProberOptions {
  intervalMs: number
  timeoutMs: number
  /** Helpers asked for an indirect probe (SWIM's k). */
  indirect: number
}

export interface ProberComponents {
  libp2p: MetagridLibp2p
  membership: Membership
  vivaldi: VivaldiClient
  /** The latest coordinate a peer reported, if any. */
  coordinateOf: (peerId: string) => Coordinate | undefined
  metrics: P2pMetrics | null
  logger: Logger
}

/** Samples kept per peer for the measured RTT shown to operators (median). */
const RTT_SAMPLES = 5

export class Prober {
  private readonly components: ProberComponents
  private readonly options: ProberOptions
  private readonly log: Logger
  private readonly samples = new Map<string, number[]>()
  /** At most one ping per peer in flight (the ping protocol allows one outbound stream); callers share it. */
  private readonly inFlight = new Map<string, Promise<number>>()
  private order: string[] = []
  private timer: NodeJS.Timeout | undefined

  constructor (components: ProberComponents, options: ProberOptions) {
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:prober' })
  }

  start (): void {
    this.timer = setInterval(() => { void this.probeNext() }, this.options.intervalMs)
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** Median of the recent RTT samples to `peerId`, ms. */
  measuredRtt (peerId: string): number | undefined {
    const samples = this.samples.get(peerId)
    if (samples == null || samples.length === 0) return undefined
    const sorted = [...samples].sort((a, b) => a - b)
    return sorted[Math.floor(sorted.length / 2)]
  }

  forget (peerId: string): void {
    this.samples.delete(peerId)
    this.components.vivaldi.forget(peerId)
  }

  /** Pings one peer; throws when the ping fails. Concurrent calls for the same peer share one ping. */
  async ping (peer: PeerId, timeoutMs = this.options.timeoutMs): Promise<number> {
    const key = peer.toString()
    const pending = this.inFlight.get(key)
    if (pending != null) return pending
    const ping = pingPeer(this.components.libp2p, peer, timeoutMs)
      .finally(() => { this.inFlight.delete(key) })
    this.inFlight.set(key, ping)
    return ping
  }

  private nextTarget (): string | undefined {
    const candidates = new Set(this.components.membership.peers('alive', 'suspect'))
    this.order = this.order.filter((peer) => candidates.has(peer))
    if (this.order.length === 0) {
      this.order = shuffle([...candidates])
    }
    return this.order.shift()
  }

  private async probeNext (): Promise<void> {
    const target = this.nextTarget()
    if (target == null) return
    try {
      this.record(target, await this.ping(peerIdFromString(target)))
      this.components.membership.heard(target, 'probe')
    } catch {
      this.components.metrics?.probeFailures.inc({ kind: 'direct' })
      this.components.membership.probeFailed(target)
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

  /** Membership's check: a direct ping, then up to `indirect` helpers asked to ping for us. */
  async check (peerId: string): Promise<CheckResult> {
    const target = peerIdFromString(peerId)
    try {
      this.record(peerId, await this.ping(target))
      return 'direct'
    } catch {
      this.components.metrics?.probeFailures.inc({ kind: 'direct' })
    }
    const asked = shuffle(this.components.membership.peers('alive').filter((peer) => peer !== peerId)).slice(0, this.options.indirect)
    if (asked.length === 0) return null
    const answers = await Promise.allSettled(asked.map(async (helper) => requestProbe(this.components.libp2p, peerIdFromString(helper), target, this.options.timeoutMs)))
    if (answers.some((answer) => answer.status === 'fulfilled' && answer.value != null)) return 'indirect'
    this.components.metrics?.probeFailures.inc({ kind: 'indirect' })
    return null
  }
}
