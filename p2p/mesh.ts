/**
 * The node's view of the mesh: load reports (telemetry), membership with its
 * probes, and network coordinates, wired together. Reports introduce
 * members; membership's probes feed the coordinate; forgotten members are
 * dropped everywhere.
 */
import { VivaldiClient, estimateRtt, type Coordinate } from './coordinates/vivaldi.ts'
import { LoopMonitor } from './health/loop-monitor.ts'
import { Membership, type MemberState, type MembershipOptions } from './membership/membership.ts'
import { Prober } from './membership/prober.ts'
import { handleProbes } from './membership/probe-protocol.ts'
import { PROBE_PROTOCOL } from './constants.ts'
import { LoadSampler, type LoadSources } from './telemetry/load-sampler.ts'
import { Telemetry, type TelemetryOptions } from './telemetry/telemetry.ts'
import type { LoadReport } from './telemetry/load-report.ts'
import { gossipScore, type MetagridLibp2p } from './libp2p.ts'
import type { Logger } from './logger.ts'
import type { P2pMetrics } from './metrics.ts'
import type { PrivateKey } from '@libp2p/interface'

export interface MeshOptions {
  telemetry: TelemetryOptions
  membership: MembershipOptions
}

export interface MeshComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  loadSources?: Partial<LoadSources>
  /** This process's event-loop stall monitor, shared with whoever else judges by timeouts. */
  loop: LoopMonitor
  metrics: P2pMetrics | null
  logger: Logger
}

export interface MeshPeer {
  peerId: string
  state: MemberState
  /** Why the state is what it is, and for how long it has been. */
  reason: string
  sinceMs: number
  lastHeardMsAgo: number
  load: (Omit<LoadReport, 'coordinate'> & { ageMs: number }) | null
  coordinate: Coordinate | null
  /** RTT from this node estimated from the two coordinates. */
  rttEstimateMs: number | null
  /** Median of recent direct pings. */
  rttMeasuredMs: number | null
  /** This node's gossipsub score for the peer; it drops when the peer sends invalid messages. */
  gossipScore: number
}

export interface MeshView {
  self: { peerId: string, coordinate: Coordinate, load: LoadReport | null }
  peers: MeshPeer[]
}

export class Mesh {
  readonly vivaldi = new VivaldiClient()
  readonly telemetry: Telemetry
  readonly membership: Membership
  readonly prober: Prober
  private readonly components: MeshComponents

  constructor (components: MeshComponents, options: MeshOptions) {
    this.components = components
    const { libp2p, metrics, logger } = components
    this.telemetry = new Telemetry({
      libp2p,
      privateKey: components.privateKey,
      sampler: new LoadSampler(components.loadSources),
      coordinate: () => this.vivaldi.current,
      metrics,
      logger
    }, options.telemetry)
    this.prober = new Prober({
      libp2p,
      vivaldi: this.vivaldi,
      coordinateOf: (peerId) => this.telemetry.latest(peerId)?.report.coordinate,
      metrics,
      logger
    })
    this.membership = new Membership({ libp2p, prober: this.prober, loop: components.loop, now: Date.now, metrics, logger }, options.membership)

    this.telemetry.addEventListener('report', (event) => { this.membership.heard(event.detail.peerId) })
    this.membership.addEventListener('member:forgotten', (event) => {
      this.telemetry.forget(event.detail.peerId)
      this.prober.forget(event.detail.peerId)
    })
  }

  async start (): Promise<void> {
    await handleProbes({
      libp2p: this.components.libp2p,
      ping: async (target, timeoutMs) => this.prober.ping(target, timeoutMs),
      metrics: this.components.metrics,
      logger: this.components.logger
    })
    this.telemetry.start()
    this.membership.start()
  }

  async stop (): Promise<void> {
    this.membership.stop()
    this.telemetry.stop()
    await this.components.libp2p.unhandle(PROBE_PROTOCOL)
  }

  view (): MeshView {
    const now = Date.now()
    const own = this.vivaldi.current
    const peers = this.membership.list().map((member): MeshPeer => {
      const received = this.telemetry.latest(member.peerId)
      const coordinate = received?.report.coordinate ?? null
      const { coordinate: _coordinate, ...load } = received?.report ?? { coordinate: null }
      return {
        peerId: member.peerId,
        state: member.state,
        reason: member.reason,
        sinceMs: now - member.since,
        lastHeardMsAgo: now - member.lastHeard,
        load: received != null ? { ...(load as Omit<LoadReport, 'coordinate'>), ageMs: now - received.report.timestamp } : null,
        coordinate,
        rttEstimateMs: coordinate != null && this.vivaldi.updates > 0 ? round(estimateRtt(own, coordinate)) : null,
        rttMeasuredMs: this.prober.measuredRtt(member.peerId) ?? null,
        gossipScore: round(gossipScore(this.components.libp2p, member.peerId))
      }
    })
    peers.sort((a, b) => a.peerId.localeCompare(b.peerId))
    return { self: { peerId: this.components.libp2p.peerId.toString(), coordinate: own, load: this.telemetry.ownReport() ?? null }, peers }
  }
}

function round (value: number): number {
  return Math.round(value * 100) / 100
}
