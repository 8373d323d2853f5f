/**
 * The composition root: builds the node's parts in dependency order (data
 * directory, identity, storage, libp2p, mesh, catalog, API), starts them in
 * that order and stops them in reverse. Nothing else in the daemon reaches
 * for a part it was not handed.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { MemoryDatastore, MountDatastore } from 'datastore-core'
import { LevelDatastore } from 'datastore-level'
import { Key } from 'interface-datastore'
import { loadOrCreateEd25519Key } from '../attest/key-file.ts'
import { BootstrapKeeper, defaultBootstrapOptions } from '../p2p/bootstrap.ts'
import { Catalog } from '../p2p/catalog/catalog.ts'
import { defaultDiscoveryOptions, Discovery } from '../p2p/catalog/discovery.ts'
import { measureHardware } from '../p2p/catalog/hardware.ts'
import { DESCRIPTOR_NAMESPACE, descriptorSelector, descriptorValidator } from '../p2p/catalog/records.ts'
import { createMetagridLibp2p, listenAddrs, type MetagridLibp2p } from '../p2p/libp2p.ts'
import { LoopMonitor } from '../p2p/health/loop-monitor.ts'
import { Mesh } from '../p2p/mesh.ts'
import { Replication } from '../p2p/sync/replication.ts'
import { openAuthority } from '../p2p/admission/authority.ts'
import { defaultPlacementParams } from '../p2p/placement/assign.ts'
import { EntityHandoff } from '../p2p/placement/entity-handoff.ts'
import { NotHostError, Placement } from '../p2p/placement/placement.ts'
import { WriteConcernError } from '../p2p/sync/replication.ts'
import { Policy } from '../p2p/placement/policy.ts'
import { Database, SUBLEVELS } from '../storage/database.ts'
import { UptimeLog } from '../storage/uptime-log.ts'
import { createApiServer } from './api/server.ts'
import { registerCatalogRoutes } from './api/routes/catalog.ts'
import { registerMeshRoutes } from './api/routes/mesh.ts'
import { registerNodeRoutes } from './api/routes/node.ts'
import { registerShardRoutes } from './api/routes/shards.ts'
import { ShardWriter } from './world/writes.ts'
import { WorldSessions } from './world/sessions.ts'
import { registerSessionRoute } from './api/routes/session.ts'
import { InputRelay } from '../p2p/session/forward.ts'
import { notHost, registerPlacementRoutes } from './api/routes/placement.ts'
import { tokenAuthenticator, tokenAuthorizer } from './api/authorize.ts'
import { guardAgainstBrowsers } from './api/browser-guard.ts'
import { ApiError } from './api/errors.ts'
import { libp2pComponentLogger } from './log/libp2p-logger.ts'
import { Metrics } from './metrics.ts'
import { SloTracker } from './slo.ts'
import { registerSloRoutes } from './api/routes/slo.ts'
import { registerPageRoutes } from './api/routes/page.ts'
import { registerAssetRoutes } from './api/routes/assets.ts'
import { ProvenanceLedger, type Registrar } from '../p2p/provenance.ts'
import { RevocationLedger } from '../p2p/revocations.ts'
import { ReplayGuard } from '../attest/token.ts'
import { registerTokenRoutes } from './api/routes/tokens.ts'
import { Attester, ATTESTATION_NAMESPACE } from './attestation.ts'
import { attestationValidator, attestationSelector } from '../p2p/attestation-records.ts'
import { readFile } from 'node:fs/promises'
import { VERSION } from './version.ts'
import type { Config } from './config/schema.ts'
import type { Logger } from './log/logger.ts'
import type { PrivateKey } from '@libp2p/interface'
import type { FastifyInstance } from 'fastify'
import type { Level } from 'level'

/** Key in the node's own sublevel under which the peers it was connected to are kept for its next start. */
const REMEMBERED_PEERS_KEY = 'remembered-peers'

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

/** Something the node starts and later stops, in order. */
interface Part {
  name: string
  start: () => Promise<void> | void
  stop: () => Promise<void> | void
}

function splitHostPort (value: string): { host: string, port: number } {
  const index = value.lastIndexOf(':')
  return { host: value.slice(0, index).replace(/^\[|\]$/g, ''), port: Number(value.slice(index + 1)) }
}

function apiUrl (host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`
}

/** libp2p reports a listen failure in its own error with the errno in the text. */
function listenFailure (err: unknown, what: string): AddressInUseError | undefined {
  const code = (err as NodeJS.ErrnoException).code ?? /\b(EADDRINUSE|EADDRNOTAVAIL|EACCES)\b/.exec((err as Error).message)?.[1]
  if (code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL' || code === 'EACCES' || (err as Error).name === 'UnsupportedListenAddressesError') {
    return new AddressInUseError(`cannot listen on ${what}: ${code ?? (err as Error).name}`, { cause: err })
  }
  return undefined
}

export class FederationFileError extends Error {
  static override name = 'FederationFileError'
  override name = 'FederationFileError'
}

/** The membership certificate and private-network key named in the config, read before anything starts. */
async function readFederationFiles (config: Config): Promise<{ certificate: Uint8Array | null, privateNetworkKey: Uint8Array | null }> {
  const read = async (path: string | undefined, what: string): Promise<Uint8Array | null> => {
    if (path == null) return null
    try {
      return await readFile(path)
    } catch (err) {
      throw new FederationFileError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  const certificateText = await read(config.federation.certificateFile, 'federation.certificateFile')
  const certificate = certificateText == null ? null : new Uint8Array(Buffer.from(Buffer.from(certificateText).toString('utf8').trim(), 'base64url'))
  if (certificate != null && certificate.byteLength === 0) throw new FederationFileError(`federation.certificateFile ${config.federation.certificateFile!} holds no base64url certificate`)
  const privateNetworkKey = await read(config.federation.privateNetworkKeyFile, 'federation.privateNetworkKeyFile')
  if (privateNetworkKey != null && !Buffer.from(privateNetworkKey).toString('utf8').startsWith('/key/swarm/psk/1.0.0/')) {
    throw new FederationFileError(`federation.privateNetworkKeyFile ${config.federation.privateNetworkKeyFile!} is not a swarm key (create one with: metagrid key psk FILE)`)
  }
  return { certificate, privateNetworkKey }
}

export class MetagridNode {
  readonly config: Config
  readonly logger: Logger
  readonly metrics: Metrics
  readonly database: Database
  readonly libp2p: MetagridLibp2p
  readonly mesh: Mesh
  readonly catalog: Catalog
  readonly discovery: Discovery
  readonly replication: Replication
  readonly placement: Placement | null
  readonly slo: SloTracker
  readonly provenance: ProvenanceLedger
  readonly revocations: RevocationLedger
  readonly writer: ShardWriter
  /** World sessions (WebSocket), when placement runs: a world exists only then. */
  readonly sessions: WorldSessions | null
  readonly attester: Attester
  readonly api: FastifyInstance
  private readonly parts: Part[]
  private readonly started: Part[] = []
  private readonly inFlight = { count: 0 }
  /** This process's event-loop stalls, for everything that judges others by timeouts (membership, lease voters). */
  private readonly loop = new LoopMonitor()
  private apiAddress = ''
  private stopping: Promise<void> | undefined

  private constructor (options: NodeOptions, database: Database, libp2p: MetagridLibp2p, metrics: Metrics, privateKey: PrivateKey, uptime: UptimeLog, hardware: Awaited<ReturnType<typeof measureHardware>>, policy: Policy, certificate: Uint8Array | null) {
    const { config, logger } = options
    this.config = config
    this.logger = logger
    this.database = database
    this.libp2p = libp2p
    this.metrics = metrics
    const startedAt = Date.now()

    this.mesh = new Mesh({ libp2p, privateKey, loadSources: { queueLength: () => this.inFlight.count }, loop: this.loop, metrics, logger }, {
      telemetry: config.telemetry,
      membership: { probeIntervalMs: config.probes.intervalMs, probeTimeoutMs: config.probes.timeoutMs, indirect: config.probes.indirect, ...config.membership }
    })
    const nodeLevel = database.sublevel(SUBLEVELS.node)
    const remembered = {
      load: async () => {
        const bytes = await nodeLevel.get(REMEMBERED_PEERS_KEY)
        const parsed: unknown = bytes == null ? [] : JSON.parse(Buffer.from(bytes).toString('utf8'))
        return Array.isArray(parsed) ? parsed.filter((a): a is string => typeof a === 'string') : []
      },
      save: async (addrs: string[]) => { await nodeLevel.put(REMEMBERED_PEERS_KEY, Buffer.from(JSON.stringify(addrs))) }
    }
    const bootstrap = new BootstrapKeeper({ libp2p, metrics, logger, remembered }, { ...defaultBootstrapOptions, addrs: config.bootstrap })
    this.catalog = new Catalog({
      libp2p,
      privateKey,
      inputs: () => ({
        peerId: libp2p.peerId.toString(),
        operator: null,
        region: config.region,
        catalog: config.catalog,
        hardware,
        reliability: uptime.reliability(),
        addrs: libp2p.getMultiaddrs().map(String),
        version: VERSION
      }),
      metrics,
      logger
    }, { ttlMs: config.catalog.ttlMs, checkEveryMs: Math.min(5_000, config.catalog.ttlMs / 6) })
    this.discovery = new Discovery({
      libp2p,
      estimateRtt: (peerId) => {
        const coordinate = this.mesh.telemetry.latest(peerId)?.report.coordinate
        return coordinate != null && this.mesh.vivaldi.updates > 0 ? this.mesh.vivaldi.estimateTo(coordinate) : undefined
      },
      loadOf: (peerId) => peerId === libp2p.peerId.toString() ? this.mesh.telemetry.ownReport()?.cpu : this.mesh.telemetry.latest(peerId)?.report.cpu,
      metrics,
      logger
    }, defaultDiscoveryOptions)

    this.slo = new SloTracker(config.slo, logger, metrics)
    const slo = this.slo
    const { maxValueBytes } = config.shards
    this.replication = new Replication({ libp2p, privateKey, database, membership: this.mesh.membership, metrics, logger, onConvergence: (ms) => { if (Date.now() - ms >= startedAt) slo.observeConvergence(ms) } }, config.shards)

    this.attester = new Attester({
      libp2p,
      privateKey,
      replication: this.replication,
      config,
      hardware: { cores: hardware.cpu.cores, memoryMiB: hardware.memoryMiB, accelerators: hardware.accelerators.map((a) => a.model) },
      version: VERSION,
      certificate,
      logger
    })
    const federation = { trustedOperators: new Set(config.federation.trustedOperators), acceptedCodeDigests: new Set(config.federation.acceptedCodeDigests) }
    const placement = config.placement
    this.placement = placement.enabled
      ? new Placement({
        libp2p,
        privateKey,
        replication: this.replication,
        mesh: this.mesh,
        catalog: this.catalog,
        policy,
        federation,
        votes: database.sublevel(SUBLEVELS.placement),
        loop: this.loop,
        // Served shards take writes from nodes the federation policy trusts; system shards from anyone, under their ownership rules.
        fallbackAuthority: openAuthority((peer, shard) => shard.startsWith('sys.') || this.placement?.mayHost(peer) !== false),
        metrics,
        logger
      }, {
        world: placement.world,
        params: { ...defaultPlacementParams, replicas: placement.replicas, epsilon: placement.epsilon, scoreStep: placement.scoreStep, rttScaleMs: placement.rttScaleMs, weights: placement.weights },
        leaseMs: placement.leaseMs,
        marginMs: placement.marginMs,
        liveness: placement.liveness,
        writeTimeoutMs: placement.writeTimeoutMs,
        tickMs: placement.tickMs,
        minGain: placement.minGain,
        minHoldMs: placement.minHoldMs,
        regions: placement.regions,
        settleMs: placement.settleMs,
        joining: config.bootstrap.length > 0
      })
      : null

    const handoff = this.placement == null
      ? null
      : new EntityHandoff({
        libp2p,
        replication: this.replication,
        hostOf: (shard) => this.placement!.hostOf(shard),
        guardWrite: (shard) => { this.placement!.guardWrite(shard, undefined) },
        maxValueBytes: config.shards.maxValueBytes,
        metrics,
        logger
      }, { abandonAfterMs: 30_000 })
    if (handoff != null) this.placement!.setRoundHook(async (held) => handoff.resolve(held))

    if (this.placement != null) {
      const p = this.placement
      slo.setAvailabilitySampler(() => p.availability())
    }

    this.api = createApiServer({ logger, metrics, inFlight: this.inFlight, onLatency: (ms) => { slo.observeApiLatency(ms) } })
    // Before any route: every route is behind the Host, Origin and JSON checks.
    guardAgainstBrowsers(this.api, { apiHost: splitHostPort(config.api).host, allowedHosts: config.apiAllowedHosts })
    registerSloRoutes(this.api, slo)
    registerPageRoutes(this.api, { world: this.placement != null })
    registerNodeRoutes(this.api, {
      libp2p,
      measuredRtt: (peerId) => this.mesh.prober.measuredRtt(peerId),
      metrics,
      version: VERSION,
      startedAt,
      ...(config.region != null ? { region: config.region } : {})
    })
    registerMeshRoutes(this.api, {
      mesh: this.mesh,
      trustOf: (peerId) => this.placement?.trustOf(peerId),
      attestation: () => this.attester.signed()
    })
    registerCatalogRoutes(this.api, { catalog: this.catalog, discovery: this.discovery })
    const nodeId = libp2p.peerId.toString()
    this.revocations = new RevocationLedger({ replication: this.replication, logger })
    const revocations = this.revocations
    const authenticator = tokenAuthenticator({
      apiHost: splitHostPort(config.api).host,
      audience: nodeId,
      roots: () => new Set([nodeId]),
      revocations: () => revocations.revocations(),
      replay: new ReplayGuard()
    })
    const authorize = tokenAuthorizer(authenticator)
    registerTokenRoutes(this.api, { revocations, authorize })
    const placementPart = this.placement
    const self = libp2p.peerId.toString()
    // Without placement the node is its own registrar: its registrations count on it alone.
    const registrar: Registrar = placementPart?.registrar() ?? {
      current: () => ({ peer: self, epoch: 0 }),
      heldEpoch: () => 0,
      witnessed: (receipt) => receipt.witness === self,
      leaseRecord: () => undefined
    }
    this.provenance = new ProvenanceLedger({ libp2p, privateKey, replication: this.replication, registrar, metrics, logger })
    registerAssetRoutes(this.api, { ledger: this.provenance, privateKey, nodeId, authorize })
    this.writer = new ShardWriter({
      replication: this.replication,
      metrics,
      maxValueBytes,
      ...(placementPart != null
        ? {
            guardWrite: (shard: string, epoch: number | undefined) => {
              if (slo.shedding() && placementPart.world.shard(shard)?.layer.decorative === true) {
                metrics.shed.inc({ what: 'decorative_write' })
                throw new ApiError(503, 'SHED_LOAD', `writes to decorative shards are shed while an SLO burns its error budget (${slo.shedReason() ?? 'see /v1/slo'}); retry later`)
              }
              try {
                placementPart.guardWrite(shard, epoch)
              } catch (err) {
                throw err instanceof NotHostError ? notHost(err) : err
              }
            },
            writeConcern: async (shard: string) => {
              try {
                await placementPart.writeConcern(shard)
              } catch (err) {
                if (!(err instanceof WriteConcernError)) throw err
                // The write is durable here and may yet reach the others: its outcome is unknown, not failed.
                if (err.code === 'FENCED') throw new ApiError(421, 'NOT_HOST', `${err.message}; the write was not acknowledged and may or may not survive`)
                throw new ApiError(503, 'WRITE_NOT_REPLICATED', err.message)
              }
            }
          }
        : {})
    })
    registerShardRoutes(this.api, { replication: this.replication, writer: this.writer, authorize })
    // After the shard routes, so their token and lease checks run on the handoff route too.
    if (placementPart != null) registerPlacementRoutes(this.api, placementPart, handoff)
    const writer = this.writer
    // Inputs relayed by the node a world client is connected to: from peers the federation lets host (any member of an open mesh).
    const relay = placementPart == null
      ? null
      : new InputRelay({
        libp2p,
        apply: async (peer, input) => {
          if (!placementPart.mayHost(peer)) {
            metrics.admissionRejected.inc({ path: 'input', reason: 'NOT_TRUSTED', action: 'ignore' })
            return { ok: false, code: 'NOT_TRUSTED', message: 'this node takes relayed inputs from nodes its federation trusts', retry: false }
          }
          if (placementPart.world.shard(input.shard) == null || input.shard.startsWith('sys.')) return { ok: false, code: 'UNKNOWN_SHARD', message: `${input.shard} is not a world shard`, retry: false }
          // Through the sessions, which commit it on its layer's clock (they exist whenever the relay does).
          return this.sessions!.applyHere(input)
        },
        metrics,
        logger
      })
    this.sessions = placementPart == null || relay == null
      ? null
      : new WorldSessions({ world: placementPart.world, self, replication: this.replication, writer, relay, hostOf: (shard) => placementPart.hostOf(shard), authenticator, metrics, logger }, config.sessions)
    if (this.sessions != null) registerSessionRoute(this.api, this.sessions)
    const sessions = this.sessions

    const { host, port } = splitHostPort(config.api)
    this.parts = [
      { name: 'uptime', start: async () => uptime.start(), stop: async () => uptime.stop() },
      { name: 'slo', start: () => { slo.start() }, stop: () => { slo.stop() } },
      // Shard state is loaded before the network starts and written out after it stops.
      { name: 'shard-stores', start: async () => this.replication.open(), stop: async () => this.replication.close() },
      {
        name: 'libp2p',
        start: async () => {
          try {
            await libp2p.start()
          } catch (err) {
            throw listenFailure(err, config.listen.join(', ')) ?? err
          }
        },
        stop: async () => libp2p.stop()
      },
      { name: 'mesh', start: async () => this.mesh.start(), stop: async () => this.mesh.stop() },
      { name: 'bootstrap', start: async () => bootstrap.start(), stop: async () => bootstrap.stop() },
      { name: 'catalog', start: async () => this.catalog.start(), stop: async () => this.catalog.stop() },
      { name: 'replication', start: async () => this.replication.start(), stop: async () => this.replication.stop() },
      { name: 'provenance', start: async () => this.provenance.start(), stop: async () => this.provenance.stop() },
      { name: 'revocations', start: async () => this.revocations.start(), stop: () => {} },
      { name: 'attestation', start: async () => this.attester.start(), stop: () => { this.attester.stop() } },
      ...(placementPart != null ? [{ name: 'placement', start: async () => placementPart.start(), stop: async () => placementPart.stop() }] : []),
      ...(handoff != null ? [{ name: 'entity-handoff', start: async () => handoff.start(), stop: async () => handoff.stop() }] : []),
      ...(relay != null ? [{ name: 'input-relay', start: async () => relay.start(), stop: async () => relay.stop() }] : []),
      ...(sessions != null ? [{ name: 'sessions', start: () => { sessions.start() }, stop: () => { sessions.stop() } }] : []),
      {
        name: 'api',
        start: async () => {
          try {
            await this.api.listen({ host, port })
          } catch (err) {
            throw listenFailure(err, `${config.api} (API)`) ?? err
          }
          const address = this.api.server.address()
          this.apiAddress = apiUrl(host, typeof address === 'object' && address != null ? address.port : port)
        },
        stop: async () => this.api.close()
      }
    ]
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

    const { certificate, privateNetworkKey } = await readFederationFiles(config)
    const database = await Database.open(config.dataDir)
    try {
      const level = new LevelDatastore(database.sublevel(SUBLEVELS.libp2p) as unknown as Level<string, Uint8Array>)
      await level.open()
      // DHT records and provider records persist in LevelDB. The peer store lives in memory: libp2p merges a
      // peer's protocols into it on every stream it opens or accepts, and in LevelDB that cost a read and a
      // write per stream, the largest share of an idle node's CPU. Peers are found again after a restart
      // through the bootstrap list, the DHT and gossip.
      const datastore = new MountDatastore([
        { prefix: new Key('/peers'), datastore: new MemoryDatastore() },
        { prefix: new Key('/'), datastore: level }
      ])
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
        dhtValidators: { [DESCRIPTOR_NAMESPACE]: descriptorValidator(metrics), [ATTESTATION_NAMESPACE]: attestationValidator(metrics) },
        dhtSelectors: { [DESCRIPTOR_NAMESPACE]: descriptorSelector, [ATTESTATION_NAMESPACE]: attestationSelector },
        ...(privateNetworkKey != null ? { privateNetworkKey } : {}),
        providerValidityMs: config.catalog.ttlMs,
        ...(config.outboundBindAddress != null ? { outboundBindAddress: config.outboundBindAddress } : {})
      })
      const uptime = new UptimeLog(database.sublevel(SUBLEVELS.node), { windowMs: config.catalog.reliabilityWindowMs, tickMs: 60_000, now: Date.now })
      const hardware = await measureHardware(config.dataDir)
      const policy = config.placement.policyFile != null ? await Policy.load(config.placement.policyFile) : new Policy()
      return new MetagridNode(options, database, libp2p, metrics, key, uptime, hardware, policy, certificate)
    } catch (err) {
      await database.close()
      throw err
    }
  }

  /** Starts every part in order; if one fails, stops those already started and rethrows. */
  async start (): Promise<ReadyInfo> {
    for (const part of this.parts) {
      try {
        await part.start()
      } catch (err) {
        await this.stop()
        throw err
      }
      this.started.push(part)
    }
    return {
      peerId: this.libp2p.peerId.toString(),
      api: this.apiAddress,
      addrs: this.libp2p.getMultiaddrs().map(String),
      listen: listenAddrs(this.libp2p)
    }
  }

  /** Stops what was started, in reverse order, then closes storage. Safe to call more than once. */
  async stop (): Promise<void> {
    this.stopping ??= (async () => {
      for (const part of this.started.splice(0).reverse()) {
        try {
          await part.stop()
        } catch (err) {
          this.logger.warn({ code: 'PART_STOP', part: part.name, err }, `${part.name} did not stop cleanly`)
        }
      }
      await this.database.close()
    })()
    return this.stopping
  }
}
