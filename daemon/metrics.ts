/**
 * Every metagrid metric, declared once with its type, help text and labels.
 * Parts of the daemon take `metrics: Metrics | null` and never create metrics
 * of their own. Label values are bounded codes (route templates, error codes,
 * reasons), never peer ids, shard ids or free text.
 *
 * libp2p's own metrics (`libp2p_*`) and Node's process metrics (`process_*`,
 * `nodejs_*`: heap, event-loop lag, GC) are registered in the same registry.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'

export type ScrapeHook = () => void

export class Metrics {
  readonly registry: Registry
  private readonly scrapeHooks: ScrapeHook[] = []

  /** 1, labelled with the software version, so dashboards can show what runs where. */
  readonly buildInfo: Gauge<'version' | 'node'>
  readonly apiRequestDuration: Histogram<'method' | 'route' | 'status'>
  /** HTTP requests refused with a 4xx or failed with a 5xx, by error code. */
  readonly apiErrors: Counter<'code'>
  readonly peersConnected: Gauge
  readonly uptimeSeconds: Gauge

  constructor (registry: Registry = new Registry()) {
    this.registry = registry
    const registers = [registry]
    collectDefaultMetrics({ register: registry })
    this.buildInfo = new Gauge({ name: 'metagrid_build_info', help: 'Software build of this node (always 1)', labelNames: ['version', 'node'], registers })
    this.apiRequestDuration = new Histogram({
      name: 'metagrid_api_request_duration_seconds',
      help: 'HTTP API request latency by route template and status code',
      labelNames: ['method', 'route', 'status'],
      // Loopback API calls take well under a millisecond; discovery queries that go to the DHT take seconds.
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers
    })
    this.apiErrors = new Counter({ name: 'metagrid_api_errors_total', help: 'HTTP API requests answered with an error, by error code', labelNames: ['code'], registers })
    this.peersConnected = new Gauge({ name: 'metagrid_peers_connected', help: 'Peers with at least one open connection', registers })
    this.uptimeSeconds = new Gauge({ name: 'metagrid_uptime_seconds', help: 'Seconds since the node started', registers })
  }

  /** Registers a function that refreshes point-in-time gauges just before each scrape. */
  onScrape (hook: ScrapeHook): void {
    this.scrapeHooks.push(hook)
  }

  async render (): Promise<{ contentType: string, body: string }> {
    for (const hook of this.scrapeHooks) hook()
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
