/**
 * The light client: an application that wants nodes, not a node itself. It
 * joins the mesh in DHT client mode from a bootstrap address, with a fresh
 * in-memory identity and no data directory, asks the catalog, and leaves.
 *
 *     const client = await CatalogClient.connect({ bootstrap: ['/ip4/…/tcp/4001/p2p/12D3KooW…'] })
 *     const { results } = await client.discover({ need: ['gpu:nvidia-h100'], region: 'DE', maxCost: 3, currency: 'USD', limit: 5 })
 *     await client.close()
 *
 * Results are ranked by a direct ping from the client: it has no network
 * coordinate of its own.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import type { ComponentLogger } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import { silentLogger, type Logger } from '../logger.ts'
import { createMetagridLibp2p, type MetagridLibp2p } from '../libp2p.ts'
import { defaultDiscoveryOptions, Discovery, type DiscoveryAnswer, type DiscoveryOptions, type DiscoveryQuery } from './discovery.ts'
import { DESCRIPTOR_NAMESPACE, descriptorSelector, descriptorValidator } from './records.ts'

export interface CatalogClientOptions {
  /** Multiaddrs of mesh nodes, each ending in /p2p/<peer id>. */
  bootstrap: string[]
  /** How long to wait for a bootstrap peer and a usable routing table. */
  connectTimeoutMs?: number
  discovery?: Partial<DiscoveryOptions>
  /** Where the client's own lines go; none by default. */
  logger?: Logger
  /** libp2p's component logger; libp2p's default (the DEBUG environment variable) when absent. */
  libp2pLogger?: ComponentLogger
}

export class CatalogClientError extends Error {
  static override name = 'CatalogClientError'
  override name = 'CatalogClientError'
}

export class CatalogClient {
  readonly libp2p: MetagridLibp2p
  private readonly discovery: Discovery

  private constructor (libp2p: MetagridLibp2p, discovery: Discovery) {
    this.libp2p = libp2p
    this.discovery = discovery
  }

  static async connect (options: CatalogClientOptions): Promise<CatalogClient> {
    if (options.bootstrap.length === 0) throw new CatalogClientError('a light client needs at least one bootstrap address')
    const logger = options.logger ?? silentLogger
    const libp2p = await createMetagridLibp2p({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
      announce: [],
      connections: { maxConnections: 64, maxIncomingPendingConnections: 4, maxParallelDials: 16, dialTimeoutMs: 10_000, inboundConnectionThreshold: 4, allow: [] },
      logger: options.libp2pLogger ?? defaultLogger(),
      metricsRegistry: null,
      version: 'light-client',
      dhtClientMode: true,
      dhtValidators: { [DESCRIPTOR_NAMESPACE]: descriptorValidator(null) },
      dhtSelectors: { [DESCRIPTOR_NAMESPACE]: descriptorSelector }
    })
    await libp2p.start()
    const deadline = AbortSignal.timeout(options.connectTimeoutMs ?? 15_000)
    try {
      const dials = await Promise.allSettled(options.bootstrap.map(async (addr) => libp2p.dial(multiaddr(addr), { signal: deadline })))
      if (dials.every((dial) => dial.status === 'rejected')) {
        const reason = (dials[0] as PromiseRejectedResult).reason as Error
        throw new CatalogClientError(`no bootstrap peer answered (${options.bootstrap.length} tried): ${reason.message}`)
      }
      // kad-dht holds queries until its routing table has a server in it.
      while ((libp2p.services.dht as unknown as { routingTable: { size: number } }).routingTable.size === 0) {
        if (deadline.aborted) throw new CatalogClientError('connected, but no DHT server joined the routing table in time')
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    } catch (err) {
      await libp2p.stop()
      throw err
    }
    return new CatalogClient(libp2p, new Discovery({ libp2p, metrics: null, logger }, { ...defaultDiscoveryOptions, ...options.discovery }))
  }

  async discover (query: DiscoveryQuery): Promise<DiscoveryAnswer> {
    return this.discovery.discover(query)
  }

  async close (): Promise<void> {
    await this.libp2p.stop()
  }
}
