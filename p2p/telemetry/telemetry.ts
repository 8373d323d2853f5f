/**
 * Load reports over gossipsub: publishes this node's signed report every
 * interval on `/metagrid/telemetry/1` and keeps the latest valid report of
 * every other node, emitting `report` for each one accepted.
 */
import { TypedEventEmitter } from 'main-event'
import { TELEMETRY_TOPIC } from '../constants.ts'
import { topicValidator } from '../gossip/validation.ts'
import { signLoadReport, type LoadReport } from './load-report.ts'
import { ReportValidator, type ReceivedReport } from './report-validator.ts'
import type { Coordinate } from '../coordinates/vivaldi.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { LoadSampler } from './load-sampler.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PrivateKey } from '@libp2p/interface'

export interface TelemetryOptions {
  intervalMs: number
  staleAfterMs: number
  maxClockSkewMs: number
}

export interface TelemetryComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  sampler: LoadSampler
  coordinate: () => Coordinate
  metrics: P2pMetrics | null
  logger: Logger
}

export interface TelemetryEvents {
  report: CustomEvent<ReceivedReport>
}

/** Reports from more distinct senders than this are ignored; a mesh this large needs sharded telemetry anyway. */
const MAX_TRACKED_PEERS = 10_000

export class Telemetry extends TypedEventEmitter<TelemetryEvents> {
  private readonly components: TelemetryComponents
  private readonly options: TelemetryOptions
  private readonly log: Logger
  private readonly validator: ReportValidator
  private readonly latestReports = new Map<string, ReceivedReport>()
  private timer: NodeJS.Timeout | undefined
  private seq = 0
  private own: LoadReport | undefined

  constructor (components: TelemetryComponents, options: TelemetryOptions) {
    super()
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:telemetry' })
    this.validator = new ReportValidator({ ...options, maxTrackedPeers: MAX_TRACKED_PEERS, now: Date.now })
  }

  start (): void {
    const pubsub = this.components.libp2p.services.pubsub
    pubsub.topicValidators.set(TELEMETRY_TOPIC, topicValidator({
      topicLabel: 'telemetry',
      validate: async (message) => this.validator.validate(message),
      onAccept: (received) => {
        this.latestReports.set(received.peerId, received)
        this.safeDispatchEvent('report', { detail: received })
      },
      metrics: this.components.metrics,
      logger: this.log
    }))
    pubsub.subscribe(TELEMETRY_TOPIC)
    // The first report goes out soon after start so a new node is known within one interval.
    this.timer = setInterval(() => { void this.publish() }, this.options.intervalMs)
    setTimeout(() => { void this.publish() }, Math.min(500, this.options.intervalMs)).unref()
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
    const pubsub = this.components.libp2p.services.pubsub
    pubsub.unsubscribe(TELEMETRY_TOPIC)
    pubsub.topicValidators.delete(TELEMETRY_TOPIC)
  }

  /** Builds, signs and publishes one report now. */
  async publish (): Promise<void> {
    if (this.timer == null) return
    // Starting from the wall clock keeps the sequence increasing across restarts without storing it.
    this.seq = Math.max(this.seq + 1, Date.now())
    const report: LoadReport = {
      seq: this.seq,
      timestamp: Date.now(),
      ...this.components.sampler.sample(),
      coordinate: this.components.coordinate()
    }
    this.own = report
    try {
      await this.components.libp2p.services.pubsub.publish(TELEMETRY_TOPIC, await signLoadReport(this.components.privateKey, report))
      this.components.metrics?.telemetryPublished.inc()
    } catch (err) {
      this.log.warn({ code: 'TELEMETRY_PUBLISH', err }, 'could not publish load report')
    }
  }

  latest (peerId: string): ReceivedReport | undefined {
    return this.latestReports.get(peerId)
  }

  /** This node's most recent report. */
  ownReport (): LoadReport | undefined {
    return this.own
  }

  forget (peerId: string): void {
    this.latestReports.delete(peerId)
    this.validator.forget(peerId)
  }
}
