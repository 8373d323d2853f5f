/**
 * Keeps a node joined: while it has fewer than `minPeers` connections it
 * dials its bootstrap list, retrying with exponential backoff and jitter, and
 * it keeps checking once joined, so a node whose bootstrap peers were down or
 * busy when it started (or that was cut off later) finds its way back in.
 *
 * This replaces a one-shot bootstrap: a daemon that runs for months cannot
 * depend on its first dial succeeding.
 */
import { multiaddr } from '@multiformats/multiaddr'
import type { MetagridLibp2p } from './libp2p.ts'
import type { Logger } from './logger.ts'
import type { P2pMetrics } from './metrics.ts'

export interface BootstrapOptions {
  addrs: string[]
  /** Below this many connected peers the node dials its bootstrap list. */
  minPeers: number
  /** First retry after a failed round; doubles up to `maxRetryMs`. */
  minRetryMs: number
  maxRetryMs: number
  /** How often a joined node checks that it still is. */
  checkEveryMs: number
}

export const defaultBootstrapOptions: Omit<BootstrapOptions, 'addrs'> = {
  // One peer is enough to find the rest through the DHT.
  minPeers: 1,
  minRetryMs: 1_000,
  maxRetryMs: 60_000,
  checkEveryMs: 30_000
}

export interface BootstrapComponents {
  libp2p: MetagridLibp2p
  metrics: P2pMetrics | null
  logger: Logger
}

export class BootstrapKeeper {
  private readonly components: BootstrapComponents
  private readonly options: BootstrapOptions
  private readonly log: Logger
  private timer: NodeJS.Timeout | undefined
  private retryMs: number
  private failedRounds = 0
  private running = false

  constructor (components: BootstrapComponents, options: BootstrapOptions) {
    this.components = components
    this.options = options
    this.retryMs = options.minRetryMs
    this.log = components.logger.child({ component: 'metagrid:bootstrap' })
  }

  start (): void {
    if (this.options.addrs.length === 0) return
    this.running = true
    void this.round()
  }

  stop (): void {
    this.running = false
    clearTimeout(this.timer)
  }

  private schedule (ms: number): void {
    if (!this.running) return
    clearTimeout(this.timer)
    this.timer = setTimeout(() => { void this.round() }, ms)
  }

  /** One check: dial the bootstrap peers we are not connected to if we are short of peers. */
  async round (): Promise<void> {
    const { libp2p, metrics } = this.components
    if (libp2p.getPeers().length >= this.options.minPeers) {
      this.failedRounds = 0
      this.retryMs = this.options.minRetryMs
      this.schedule(this.options.checkEveryMs)
      return
    }
    const connected = new Set(libp2p.getPeers().map(String))
    const targets = this.options.addrs.filter((addr) => !connected.has(multiaddr(addr).getComponents().find((c) => c.name === 'p2p')?.value ?? ''))
    const results = await Promise.allSettled(targets.map(async (addr) => libp2p.dial(multiaddr(addr))))
    let succeeded = 0
    results.forEach((result, i) => {
      metrics?.bootstrapDials.inc({ result: result.status === 'fulfilled' ? 'ok' : 'failed' })
      if (result.status === 'fulfilled') succeeded++
      else this.log.debug({ addr: targets[i], err: result.reason }, 'bootstrap dial failed')
    })
    if (succeeded > 0 || libp2p.getPeers().length >= this.options.minPeers) {
      if (this.failedRounds > 0) this.log.info({ attempts: this.failedRounds + 1 }, 'joined the mesh through bootstrap')
      this.failedRounds = 0
      this.retryMs = this.options.minRetryMs
      this.schedule(this.options.checkEveryMs)
      return
    }
    this.failedRounds++
    // Warn on the third failed round and every tenth after, not on each retry.
    if (this.failedRounds === 3 || this.failedRounds % 10 === 0) {
      this.log.warn({ code: 'BOOTSTRAP_FAILED', attempts: this.failedRounds, addrs: this.options.addrs, nextRetryMs: this.retryMs }, 'no peers, and no bootstrap peer answered')
    }
    const jitter = 0.8 + Math.random() * 0.4
    this.schedule(Math.round(this.retryMs * jitter))
    this.retryMs = Math.min(this.retryMs * 2, this.options.maxRetryMs)
  }
}
