/**
 * What the node is and who it is connected to: `/v1/status`, `/v1/peers`,
 * `/v1/dht/peers/:peerId` and the Prometheus `/metrics`.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { z } from 'zod'
import { badRequest, notFound, parseInput } from '../errors.ts'
import type { Metrics } from '../../metrics.ts'
import { gossipScore, listenAddrs, type MetagridLibp2p } from '../../../p2p/libp2p.ts'
import type { PeerId } from '@libp2p/interface'
import type { FastifyInstance } from 'fastify'

export interface NodeRouteComponents {
  libp2p: MetagridLibp2p
  /** Median of recent probe RTTs to a peer, ms. */
  measuredRtt: (peerId: string) => number | undefined
  metrics: Metrics | null
  version: string
  region?: string
  startedAt: number
}

export interface PeerView {
  peerId: string
  addrs: string[]
  direction: 'inbound' | 'outbound'
  /** Median round-trip time of recent latency probes, when the peer is a member that has been probed. */
  latencyMs: number | null
  agent: string | null
  /** gossipsub's score for the peer; negative after invalid messages. */
  gossipScore: number
}

/** Bounds a DHT lookup made on behalf of an API caller. */
const FIND_PEER_TIMEOUT_MS = 10_000

function routingTableSize (libp2p: MetagridLibp2p): number {
  const dht = libp2p.services.dht as unknown as { routingTable?: { size: number } }
  return dht.routingTable?.size ?? 0
}

export function statusOf (components: NodeRouteComponents): Record<string, unknown> {
  const { libp2p } = components
  return {
    peerId: libp2p.peerId.toString(),
    version: components.version,
    node: process.version,
    region: components.region ?? null,
    addrs: libp2p.getMultiaddrs().map(String),
    listen: listenAddrs(libp2p),
    peers: libp2p.getPeers().length,
    uptimeS: Math.floor((Date.now() - components.startedAt) / 1000),
    dht: { mode: libp2p.services.dht.getMode(), routingTable: routingTableSize(libp2p) }
  }
}

async function peersOf (libp2p: MetagridLibp2p, measuredRtt: NodeRouteComponents['measuredRtt']): Promise<PeerView[]> {
  const byPeer = new Map<string, PeerView>()
  for (const connection of libp2p.getConnections()) {
    if (connection.status !== 'open') continue
    const id = connection.remotePeer.toString()
    const view = byPeer.get(id) ?? { peerId: id, addrs: [], direction: connection.direction, latencyMs: measuredRtt(id) ?? null, agent: null, gossipScore: gossipScore(libp2p, id) }
    view.addrs.push(connection.remoteAddr.toString())
    byPeer.set(id, view)
  }
  for (const view of byPeer.values()) {
    try {
      const peer = await libp2p.peerStore.get(peerIdFromString(view.peerId))
      const agent = peer.metadata.get('AgentVersion')
      if (agent != null) view.agent = new TextDecoder().decode(agent)
    } catch {
      // Not yet identified; the agent stays unknown.
    }
  }
  return [...byPeer.values()].sort((a, b) => a.peerId.localeCompare(b.peerId))
}

const peerParams = z.object({ peerId: z.string().min(1).max(128) })
const findQuery = z.object({ cache: z.enum(['true', 'false']).default('false') })

function parsePeerId (text: string): PeerId {
  try {
    return peerIdFromString(text)
  } catch {
    throw badRequest('BAD_PEER_ID', `not a peer id: ${text.slice(0, 64)}`)
  }
}

export function registerNodeRoutes (app: FastifyInstance, components: NodeRouteComponents): void {
  const { libp2p, metrics } = components

  metrics?.onScrape(() => {
    metrics.peersConnected.set(libp2p.getPeers().length)
    metrics.uptimeSeconds.set((Date.now() - components.startedAt) / 1000)
  })

  app.get('/v1/status', async () => statusOf(components))

  app.get('/v1/peers', async () => ({ peers: await peersOf(libp2p, components.measuredRtt) }))

  app.get('/v1/dht/peers/:peerId', async (request) => {
    const { peerId } = parseInput(peerParams, request.params, 'params')
    const { cache } = parseInput(findQuery, request.query, 'query')
    const id = parsePeerId(peerId)
    if (id.equals(libp2p.peerId)) throw badRequest('SELF', 'that is this node\'s own peer id')
    try {
      // Without cache the answer comes from a FIND_NODE query over the DHT, not from what this node already knows.
      const info = await libp2p.peerRouting.findPeer(id, { useCache: cache === 'true', signal: AbortSignal.timeout(FIND_PEER_TIMEOUT_MS) })
      return { peerId: info.id.toString(), addrs: info.multiaddrs.map(String) }
    } catch (err) {
      const name = (err as Error).name
      if (name === 'NotFoundError' || name === 'AbortError' || name === 'TimeoutError') {
        throw notFound('PEER_NOT_FOUND', `no DHT peer knows ${peerId}`)
      }
      throw err
    }
  })

  app.get('/metrics', async (_request, reply) => {
    if (metrics == null) throw notFound('METRICS_DISABLED', 'metrics are disabled on this node')
    const { contentType, body } = await metrics.render()
    return reply.type(contentType).send(body)
  })
}
