/**
 * Builds the libp2p node every metagrid part runs on: TCP, Noise, Yamux,
 * identify, ping, a Kademlia DHT in server mode under our own protocol, and
 * gossipsub with signed messages.
 */
import { preSharedKey } from '@libp2p/pnet'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub, type GossipSub, type GossipsubOpts } from '@libp2p/gossipsub'
import { identify, type Identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, type KadDHT, type SelectFn, type ValidateFn } from '@libp2p/kad-dht'
import { ping, type Ping } from '@libp2p/ping'
import { prometheusMetrics } from '@libp2p/prometheus-metrics'
import { createHash } from 'node:crypto'
import { createLibp2p, type Libp2p } from 'libp2p'
import { AGENT_NAME, DHT_PROTOCOL, PROBE_PING_PREFIX } from './constants.ts'
import { metagridScoreParams } from './gossip/scoring.ts'
import { tcpTransport } from './transport.ts'
import type { ComponentLogger, PrivateKey } from '@libp2p/interface'
import type { Datastore } from 'interface-datastore'
import type { Registry } from 'prom-client'

export interface MetagridServices extends Record<string, unknown> {
  identify: Identify
  /** Standard ping, used by kad-dht for its routing table. */
  ping: Ping
  /** metagrid's latency probes: the same ping, on its own protocol id (see constants.ts). */
  probePing: Ping
  dht: KadDHT
  pubsub: GossipSub
}

export type MetagridLibp2p = Libp2p<MetagridServices>

export interface ConnectionLimits {
  maxConnections: number
  maxIncomingPendingConnections: number
  maxParallelDials: number
  dialTimeoutMs: number
  inboundConnectionThreshold: number
  /** Address ranges (multiaddr prefixes) exempt from the inbound limits above. */
  allow: string[]
}

export interface Libp2pOptions {
  privateKey: PrivateKey
  listen: string[]
  announce: string[]
  connections: ConnectionLimits
  /** Where the peer store and DHT records live; in memory when absent (light clients, tests). */
  datastore?: Datastore
  logger: ComponentLogger
  /** Registry that libp2p's own metrics join; null runs without metrics. */
  metricsRegistry: Registry | null
  version: string
  /** DHT record validators and selectors by key prefix, added by the parts that store records. */
  dhtValidators?: Record<string, ValidateFn>
  dhtSelectors?: Record<string, SelectFn>
  /** In DHT client mode the node asks but does not answer or store; for light clients. */
  dhtClientMode?: boolean
  /** How long provider records stay valid; expired ones are swept at a quarter of it (at most hourly). */
  providerValidityMs?: number
  gossipsub?: Partial<GossipsubOpts>
  /** Source address for outgoing TCP connections. */
  outboundBindAddress?: string
  /** A libp2p private-network key (swarm.key file contents): only peers with the same key can connect. */
  privateNetworkKey?: Uint8Array
}

/**
 * Lets gossipsub drop the duplicate copies of a message (each arrives from
 * several mesh peers) before verifying its signature again: without it every
 * copy costs an Ed25519 verification, which dominated an idle node's CPU. The
 * cache behind it is filled only after a copy has verified, so a forged copy
 * cannot pre-empt the real one; sender and sequence number are in the id so
 * a replayed payload still reaches the topic validator and is counted.
 */
function fastMessageId (message: { from?: Uint8Array, seqno?: Uint8Array, data?: Uint8Array }): string {
  const hash = createHash('sha1')
  if (message.from != null) hash.update(message.from)
  if (message.seqno != null) hash.update(message.seqno)
  if (message.data != null) hash.update(message.data)
  return hash.digest('base64')
}

export async function createMetagridLibp2p (options: Libp2pOptions): Promise<MetagridLibp2p> {
  return createLibp2p({
    privateKey: options.privateKey,
    start: false,
    addresses: { listen: options.listen, announce: options.announce },
    transports: [tcpTransport(options.outboundBindAddress != null ? { outboundBindAddress: options.outboundBindAddress } : {})],
    connectionEncrypters: [noise()],
    ...(options.privateNetworkKey != null ? { connectionProtector: preSharedKey({ psk: options.privateNetworkKey }) } : {}),
    streamMuxers: [yamux()],
    ...(options.datastore != null ? { datastore: options.datastore } : {}),
    logger: options.logger,
    nodeInfo: { name: AGENT_NAME, version: options.version, userAgent: `${AGENT_NAME}/${options.version}` },
    // metagrid's prober measures RTT and its membership decides liveness, with indirect confirmation.
    // libp2p's monitor would ping the same peers (the ping spec allows one outbound stream per peer)
    // and abort a connection on one failed ping, the failure mode membership exists to avoid.
    connectionMonitor: { enabled: false },
    connectionManager: {
      maxConnections: options.connections.maxConnections,
      maxIncomingPendingConnections: options.connections.maxIncomingPendingConnections,
      maxParallelDials: options.connections.maxParallelDials,
      dialTimeout: options.connections.dialTimeoutMs,
      inboundConnectionThreshold: options.connections.inboundConnectionThreshold,
      allow: options.connections.allow
    },
    ...(options.metricsRegistry != null
      ? { metrics: prometheusMetrics({ registry: options.metricsRegistry, preserveExistingMetrics: true, collectDefaultMetrics: false }) }
      : {}),
    services: {
      identify: identify(),
      ping: ping(),
      probePing: ping({ protocolPrefix: PROBE_PING_PREFIX }),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        // Edge meshes live on LANs and in tests on loopback: keep private addresses and answer queries from the start.
        clientMode: options.dhtClientMode ?? false,
        peerInfoMapper: passthroughMapper,
        validators: options.dhtValidators ?? {},
        selectors: options.dhtSelectors ?? {},
        ...(options.providerValidityMs != null
          ? {
              reprovide: {
                validity: options.providerValidityMs,
                threshold: options.providerValidityMs / 2,
                interval: Math.min(options.providerValidityMs / 4, 3_600_000)
              }
            }
          : {})
      }),
      pubsub: gossipsub({
        globalSignaturePolicy: 'StrictSign',
        // A node alone in its mesh still publishes; nobody hears it, and that is not an error.
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        scoreParams: metagridScoreParams(),
        fastMsgIdFn: fastMessageId,
        ...options.gossipsub
      })
    }
  })
}

/** gossipsub's score for a peer; the router has it, though the published interface does not list it. */
export function gossipScore (libp2p: MetagridLibp2p, peerId: string): number {
  const router = libp2p.services.pubsub as unknown as { getScore?: (id: string) => number }
  return router.getScore?.(peerId) ?? 0
}

/** The addresses this node actually listens on (with real ports), which may differ from the announced ones. */
export function listenAddrs (libp2p: MetagridLibp2p): string[] {
  const manager = (libp2p as unknown as { components?: { transportManager?: { getAddrs: () => Array<{ toString: () => string }> } } }).components?.transportManager
  return manager?.getAddrs().map(String) ?? []
}
