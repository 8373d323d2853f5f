/**
 * The composition root: builds the node's parts in dependency order (data
 * directory, identity, storage, libp2p, API), starts them, and stops them in
 * reverse. Nothing else in the daemon reaches for a part it was not handed.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { LevelDatastore } from 'datastore-level'
import { loadOrCreateEd25519Key } from '../attest/key-file.ts'
import { BootstrapKeeper, defaultBootstrapOptions } from '../p2p/bootstrap.ts'
import { createMetagridLibp2p, listenAddrs, type MetagridLibp2p } from '../p2p/libp2p.ts'
import { Mesh } from '../p2p/mesh.ts'
import { Database, SUBLEVELS } from '../storage/database.ts'
import { createApiServer } from './api/server.ts'
import { registerMeshRoutes } from './api/routes/mesh.ts'
import { registerNodeRoutes } from './api/routes/node.ts'
import { libp2pComponentLogger } from './log/libp2p-logger.ts'
import { Metrics } from './metrics.ts'
import { VERSION } from './version.ts'
import type { Config } from './config/schema.ts'
import type { Logger } from './log/logger.ts'
import type { FastifyInstance } from 'fastify'
import type { Level } from 'level'
import type { PrivateKey } from '@libp2p/interface'

export class AddressInUseError extends Error {
  static override name = 'AddressInUseError'
  override name = 'AddressInUseError'
}

export interface ReadyInfo {
  peerId: string
  /** Full URL of the HTTP API. */
  api: string
  /** Addresses peers are told to dial (announced, or the listen addresses). */
  addrs: string[]
  /** Addresses actually bound, with the ports the OS picked for port 0. */
  listen: string[]
}

export interface NodeOptions {
  config: Config
  logger: Logger
}

function splitHostPort (value: string): { host: string, port: number } {
  const index = value.lastIndexOf(':')
  return { host: value.slice(0, index).replace(/^\[|\]$/g, ''), port: Number(value.slice(index + 1)) }
}

function apiUrl (host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`
}

export class MetagridNode {
  readonly config: Config
  readonly logger: Logger
  readonly metrics: Metrics
  readonly database: Database
  readonly libp2p: MetagridLibp2p
  readonly mesh: Mesh
  readonly bootstrap: BootstrapKeeper
  readonly api: FastifyInstance
  private readonly startedAt = Date.now()
  private readonly inFlight = { count: 0 }
  private meshStarted = false
  private stopping: Promise<void> | undefined

  private constructor (options: NodeOptions, database: Database, libp2p: MetagridLibp2p, metrics: Metrics, privateKey: PrivateKey) {
    this.config = options.config
    this.logger = options.logger
    this.database = database
    this.libp2p = libp2p
    this.metrics = metrics
    this.mesh = new Mesh({
      libp2p,
      privateKey,
      loadSources: { queueLength: () => this.inFlight.count },
      metrics,
      logger: this.logger
    }, { telemetry: this.config.telemetry, probes: this.config.probes, membership: this.config.membership })
    this.bootstrap = new BootstrapKeeper({ libp2p, metrics, logger: this.logger }, { ...defaultBootstrapOptions, addrs: this.config.bootstrap })
    this.api = createApiServer({ logger: this.logger, metrics, inFlight: this.inFlight })
    registerNodeRoutes(this.api, {
      libp2p,
      measuredRtt: (peerId) => this.mesh.prober.measuredRtt(peerId),
      metrics,
      version: VERSION,
      startedAt: this.startedAt,
      ...(this.config.region != null ? { region: this.config.region } : {})
    })
    registerMeshRoutes(this.api, this.mesh)
  }

  /** Builds every part without starting the network or the API. */
  static async create (options: NodeOptions): Promise<MetagridNode> {
    const { config, logger } = options
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 })
    const keyPath = join(config.dataDir, 'node.key')
    const { key, created, looseMode } = await loadOrCreateEd25519Key(keyPath)
    if (created) logger.info({ path: keyPath }, 'created node identity')
    if (looseMode != null) {
      logger.warn({ code: 'KEY_FILE_MODE', path: keyPath, mode: looseMode.toString(8) }, 'node key file is readable by other users; run chmod 600 on it')
    }

    const database = await Database.open(config.dataDir)
    try {
      const datastore = new LevelDatastore(database.sublevel(SUBLEVELS.libp2p) as unknown as Level<string, Uint8Array>)
      await datastore.open()
      const metrics = new Metrics()
      metrics.buildInfo.set({ version: VERSION, node: process.version }, 1)
      const libp2p = await createMetagridLibp2p({
        privateKey: key,
        listen: config.listen,
        announce: config.announce,
        connections: config.connections,
        datastore,
        logger: libp2pComponentLogger(logger),
        metricsRegistry: metrics.registry,
        version: VERSION,
        ...(config.outboundBindAddress != null ? { outboundBindAddress: config.outboundBindAddress } : {})
      })
      return new MetagridNode(options, database, libp2p, metrics, key)
    } catch (err) {
      await database.close()
      throw err
    }
  }

  /** Starts libp2p, then the API; on failure stops whatever had started. */
  async start (): Promise<ReadyInfo> {
    try {
      await this.libp2p.start()
    } catch (err) {
      await this.stop()
      const code = (err as NodeJS.ErrnoException).code ?? /\b(EADDRINUSE|EADDRNOTAVAIL|EACCES)\b/.exec((err as Error).message)?.[1]
      if (code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL' || code === 'EACCES' || (err as Error).name === 'UnsupportedListenAddressesError') {
        throw new AddressInUseError(`cannot listen on ${this.config.listen.join(', ')}: ${code ?? (err as Error).name}`, { cause: err })
      }
      throw err
    }
    await this.mesh.start()
    this.meshStarted = true
    this.bootstrap.start()
    const { host, port } = splitHostPort(this.config.api)
    let address
    try {
      await this.api.listen({ host, port })
      address = this.api.server.address()
    } catch (err) {
      await this.stop()
      const code = (err as NodeJS.ErrnoException).code
      throw new AddressInUseError(`cannot listen for the API on ${this.config.api}: ${code ?? (err as Error).message}`, { cause: err })
    }
    const boundPort = typeof address === 'object' && address != null ? address.port : port
    return {
      peerId: this.libp2p.peerId.toString(),
      api: apiUrl(host, boundPort),
      addrs: this.libp2p.getMultiaddrs().map(String),
      listen: listenAddrs(this.libp2p)
    }
  }

  /** Stops in reverse dependency order: API, network, storage. Safe to call more than once. */
  async stop (): Promise<void> {
    this.stopping ??= (async () => {
      try {
        await this.api.close()
      } catch (err) {
        this.logger.warn({ code: 'API_CLOSE', err }, 'API did not close cleanly')
      }
      this.bootstrap.stop()
      if (this.meshStarted) await this.mesh.stop().catch((err: unknown) => { this.logger.warn({ code: 'MESH_STOP', err }, 'mesh did not stop cleanly') })
      try {
        await this.libp2p.stop()
      } catch (err) {
        this.logger.warn({ code: 'LIBP2P_STOP', err }, 'libp2p did not stop cleanly')
      }
      await this.database.close()
    })()
    return this.stopping
  }
}
