/**
 * Keeps a node joined: while it has fewer than `minPeers` connections it
 * dials its bootstrap list, retrying with exponential backoff and jitter, and
 * it keeps checking once joined, so a node whose bootstrap peers were down or
 * busy when it started (or that was cut off later) finds its way back in.
 *
 * This replaces a one-shot bootstrap: a daemon that runs for months cannot
 * depend on its first dial succeeding.
 *
 * Besides the configured list it dials the peers it was connected to when it
 * last ran (`remembered`, saved every few minutes and at stop), so a node
 * restarted without `--bootstrap` finds its mesh again (libp2p's peer store
 * lives in memory).
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

/** Where the addresses of the peers this node was connected to are kept across restarts. */
export interface PeerMemory {
  load: () => Promise<string[]>
  save: (addrs: string[]) => Promise<void>
}

export interface BootstrapComponents {
  libp2p: MetagridLibp2p
  metrics: P2pMetrics | null
  logger: Logger
  remembered?: PeerMemory
}

/** Peers remembered across a restart, at most. */
const MAX_REMEMBERED = 32
const SAVE_EVERY_MS = 300_000

export class BootstrapKeeper {
  private readonly components: BootstrapComponents
  private readonly options: BootstrapOptions
  private readonly log: Logger
  private timer: NodeJS.Timeout | undefined
  private retryMs: number
  private failedRounds = 0
  private running = false
  private remembered: string[] = []
  private saveTimer: NodeJS.Timeout | undefined

  constructor (components: BootstrapComponents, options: BootstrapOptions) {
    this.components = components
    this.options = options
    this.retryMs = options.minRetryMs
    this.log = components.logger.child({ component: 'metagrid:bootstrap' })
  }

  async start (): Promise<void> {
    const memory = this.components.remembered
    if (memory != null) {
      this.remembered = (await memory.load().catch(() => [])).filter((addr) => !this.options.addrs.includes(addr)).slice(0, MAX_REMEMBERED)
      this.saveTimer = setInterval(() => { void this.save() }, SAVE_EVERY_MS)
      this.saveTimer.unref()
    }
    if (this.options.addrs.length === 0 && this.remembered.length === 0) return
    this.running = true
    void this.round()
  }

  async stop (): Promise<void> {
    this.running = false
    clearTimeout(this.timer)
    clearInterval(this.saveTimer)
    await this.save()
  }

  /** Saves the dialable addresses (with peer id) of the peers connected now, if there are any. */
  private async save (): Promise<void> {
    const { libp2p, remembered } = this.components
    if (remembered == null) return
    const addrs: string[] = []
    for (const peer of libp2p.getPeers().slice(0, MAX_REMEMBERED)) {
      const stored = await libp2p.peerStore.get(peer).catch(() => undefined)
      const addr = stored?.addresses[0]?.multiaddr
      if (addr != null) addrs.push(addr.encapsulate(`/p2p/${peer.toString()}`).toString())
    }
    if (addrs.length > 0) await remembered.save(addrs).catch((err: unknown) => { this.log.debug({ err }, 'could not save the peers to remember') })
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
    const targets = [...this.options.addrs, ...this.remembered].filter((addr) => !connected.has(multiaddr(addr).getComponents().find((c) => c.name === 'p2p')?.value ?? ''))
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
