/**
 * Discovery: find nodes that can serve a request, nearest first.
 *
 * 1. Every wanted tag (capabilities, `model:<name>`, `region:<code>`) is a CID.
 *    The providers of the most selective one are streamed from the DHT.
 * 2. Each candidate's descriptor is fetched from the DHT as soon as the
 *    candidate appears, the first copy that verifies (signature, peer id,
 *    expiry) is taken, and every constraint (all the other tags included) is
 *    checked against the signed descriptor: provider records are unsigned
 *    claims, so the descriptor is the authority and intersecting provider sets
 *    would only cost more queries.
 * 3. Matches are ranked by expected RTT to the asker (from network
 *    coordinates when it has them, else a direct ping), then load, then cost.
 *    RTTs within 5 ms and loads within 10% count as equal, so a marginally
 *    nearer but busy node does not win over an idle one next door.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { DescriptorError, openDescriptor, type CapabilityDescriptor } from './descriptor.ts'
import { descriptorKey } from './records.ts'
import { pingPeer } from '../ping.ts'
import { ANY_NODE_TAG, normalizeTagValue, tagCid, tagsOf } from './tags.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'

export interface DiscoveryQuery {
  /** Capability tags every result must have (`gpu`, `gpu:nvidia-h100`, `arch:x64`, ...). */
  need: string[]
  model?: string
  /** ISO 3166 code; `DE` also matches `DE-BY`. */
  region?: string
  /** Highest acceptable hourly price: per accelerator-hour when an accelerator is needed, else per core-hour. */
  maxCost?: number
  /** Prices are only compared in one currency. */
  currency: string
  limit: number
}

export interface Ranking {
  rttMs: number | null
  /** `estimated` from coordinates, `measured` by a ping, `self` for the asking node, `unknown` when neither worked. */
  rttSource: 'estimated' | 'measured' | 'self' | 'unknown'
  /** CPU utilisation from the node's last load report, 0..1, when known. */
  load: number | null
  /** The hourly price the query cares about, in `currency`. */
  cost: number
  currency: string
}

export interface DiscoveryResult {
  peerId: string
  addrs: string[]
  descriptor: CapabilityDescriptor
  rank: Ranking
}

export interface DiscoveryAnswer {
  results: DiscoveryResult[]
  /** Providers of the query's most selective tag that were examined. */
  candidates: number
  /** Candidates whose descriptor was missing, invalid or did not satisfy the query. */
  skipped: number
  timings: { firstMs: number | null, completeMs: number }
  /** Why the answer is empty without asking anyone, when it is (`NO_PEERS`: nobody to ask). */
  note?: { code: 'NO_PEERS', message: string }
}

export interface DiscoveryComponents {
  libp2p: MetagridLibp2p
  /** RTT to a peer estimated from network coordinates, when the asker has coordinates. */
  estimateRtt?: (peerId: string) => number | undefined
  loadOf?: (peerId: string) => number | undefined
  metrics: P2pMetrics | null
  logger: Logger
}

export interface DiscoveryOptions {
  /** The whole discovery must finish in this time. */
  timeoutMs: number
  /** Stop collecting providers of a tag past this many. */
  maxCandidates: number
  /** Descriptors fetched at once. */
  concurrency: number
  /** A ping used for ranking waits this long; it may include dialling the node and the handshake, a few RTTs. */
  pingTimeoutMs: number
}

export const defaultDiscoveryOptions: DiscoveryOptions = {
  timeoutMs: 15_000,
  maxCandidates: 200,
  concurrency: 8,
  pingTimeoutMs: 5_000
}

/** RTTs closer than this rank as equal, then load decides. */
const RTT_BUCKET_MS = 5
const LOAD_BUCKET = 0.1

/** How specific a tag is: a model or an accelerator model narrows most, the catch-all tag least. */
function selectivity (tag: string): number {
  if (tag === ANY_NODE_TAG) return 0
  const [kind, value] = tag.split(':')
  if (kind === 'region' || kind === 'arch') return value != null && value.includes('-') ? 2 : 1
  return value != null ? 4 : 3
}

/** The one tag whose providers are looked up: the most selective, ties broken by name. */
export function primaryTag (tags: string[]): string {
  return [...tags].sort((a, b) => selectivity(b) - selectivity(a) || a.localeCompare(b))[0] ?? ANY_NODE_TAG
}

/** The tags a query needs providers for. */
export function queryTags (query: DiscoveryQuery): string[] {
  const tags = new Set(query.need.map((tag) => {
    const [kind, ...rest] = tag.split(':')
    return rest.length === 0 ? normalizeTagValue(tag) : `${normalizeTagValue(kind ?? '')}:${normalizeTagValue(rest.join(':'))}`
  }))
  if (query.model != null) tags.add(`model:${normalizeTagValue(query.model)}`)
  if (query.region != null) tags.add(`region:${query.region.toLowerCase()}`)
  return tags.size > 0 ? [...tags].sort() : [ANY_NODE_TAG]
}

/** The price that matters for this query on this node. */
export function relevantCost (query: DiscoveryQuery, descriptor: CapabilityDescriptor): number {
  const kinds = new Set(descriptor.accelerators.map((a) => normalizeTagValue(a.kind)))
  const wantsAccelerator = query.need.some((tag) => kinds.has(normalizeTagValue(tag.split(':')[0] ?? '')))
  return wantsAccelerator ? descriptor.cost.perAcceleratorHour : descriptor.cost.perCoreHour
}

/** Whether a verified descriptor satisfies the query: the authoritative check, provider records aside. */
export function satisfies (query: DiscoveryQuery, descriptor: CapabilityDescriptor): boolean {
  const tags = new Set(tagsOf(descriptor))
  if (!queryTags(query).every((tag) => tags.has(tag))) return false
  if (query.maxCost != null) {
    if (descriptor.cost.currency !== query.currency) return false
    if (relevantCost(query, descriptor) > query.maxCost) return false
  }
  return true
}

/** Orders results: RTT (bucketed, unknown last), then load (bucketed, unknown as half loaded), then cost, then peer id. */
export function compareResults (a: DiscoveryResult, b: DiscoveryResult): number {
  const rtt = (r: DiscoveryResult): number => r.rank.rttMs == null ? Number.POSITIVE_INFINITY : Math.floor(r.rank.rttMs / RTT_BUCKET_MS)
  const load = (r: DiscoveryResult): number => Math.floor((r.rank.load ?? 0.5) / LOAD_BUCKET)
  return (rtt(a) - rtt(b)) || (load(a) - load(b)) || (a.rank.cost - b.rank.cost) || a.peerId.localeCompare(b.peerId)
}

export class Discovery {
  private readonly components: DiscoveryComponents
  private readonly options: DiscoveryOptions
  private readonly log: Logger

  constructor (components: DiscoveryComponents, options: DiscoveryOptions = defaultDiscoveryOptions) {
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:discovery' })
  }

  /** Streams the distinct providers of a tag. A query cut short by the deadline ends with what it found. */
  private async * providers (tag: string, signal: AbortSignal): AsyncGenerator<string> {
    const seen = new Set<string>()
    const cid = await tagCid(tag)
    try {
      for await (const provider of this.components.libp2p.contentRouting.findProviders(cid, { signal })) {
        const id = provider.id.toString()
        if (seen.has(id)) continue
        seen.add(id)
        yield id
        if (seen.size >= this.options.maxCandidates) return
      }
    } catch (err) {
      if (!signal.aborted) this.log.debug({ tag, err }, 'provider query ended with an error')
    }
  }

  /**
   * The candidate's descriptor: the first copy the DHT returns that verifies.
   * Descriptors are self-certifying, so there is no need to wait for the query
   * to visit every holder and pick the newest; the query is stopped there.
   */
  private async descriptorOf (peerId: string, signal: AbortSignal): Promise<CapabilityDescriptor | undefined> {
    const { libp2p, metrics } = this.components
    const stop = new AbortController()
    try {
      for await (const event of libp2p.services.dht.get(descriptorKey(peerId), { signal: AbortSignal.any([signal, stop.signal]) })) {
        // kad-dht has already run our validator on a record carried by a response; VALUE is its final pick.
        const value = event.name === 'PEER_RESPONSE' ? event.record?.value : event.name === 'VALUE' ? event.value : undefined
        if (value == null) continue
        try {
          return await openDescriptor(value, { now: Date.now(), expectedPeerId: peerId })
        } catch (err) {
          metrics?.catalogRejected.inc({ reason: err instanceof DescriptorError ? err.reason : 'encoding' })
        }
      }
    } catch {
      // Not found, timed out, or every copy failed the DHT validator (which counted it).
    } finally {
      stop.abort()
    }
    return undefined
  }

  private async rttTo (descriptor: CapabilityDescriptor): Promise<Pick<Ranking, 'rttMs' | 'rttSource'>> {
    const { libp2p, estimateRtt } = this.components
    const { peerId } = descriptor
    if (peerId === libp2p.peerId.toString()) return { rttMs: 0, rttSource: 'self' }
    const estimate = estimateRtt?.(peerId)
    if (estimate != null) return { rttMs: Math.round(estimate * 100) / 100, rttSource: 'estimated' }
    try {
      const id = peerIdFromString(peerId)
      // The descriptor may have come from another holder: its signed addresses are how to reach the node itself.
      await libp2p.peerStore.merge(id, { multiaddrs: descriptor.addrs.map((addr) => multiaddr(addr)) })
      const rtt = await pingPeer(libp2p, id, this.options.pingTimeoutMs)
      return { rttMs: rtt, rttSource: 'measured' }
    } catch {
      return { rttMs: null, rttSource: 'unknown' }
    }
  }

  async discover (query: DiscoveryQuery, onResult?: (result: DiscoveryResult) => void): Promise<DiscoveryAnswer> {
    const started = performance.now()
    // With nobody to ask, the DHT query would only wait out its timeout: answer at once, and say why.
    const routingTable = (this.components.libp2p.services.dht as unknown as { routingTable?: { size: number } }).routingTable
    if ((routingTable?.size ?? 0) === 0 && this.components.libp2p.getConnections().length === 0) {
      return {
        results: [],
        candidates: 0,
        skipped: 0,
        timings: { firstMs: null, completeMs: Math.round(performance.now() - started) },
        note: { code: 'NO_PEERS', message: 'this node has no peers to ask: start it with --bootstrap (or METAGRID_BOOTSTRAP) to join a mesh' }
      }
    }
    const signal = AbortSignal.timeout(this.options.timeoutMs)
    const results: DiscoveryResult[] = []
    let firstMs: number | null = null
    let candidates = 0
    const examine = async (peerId: string): Promise<void> => {
      if (signal.aborted) return
      const descriptor = await this.descriptorOf(peerId, signal)
      if (descriptor == null || !satisfies(query, descriptor)) return
      const rtt = await this.rttTo(descriptor)
      const result: DiscoveryResult = {
        peerId,
        addrs: descriptor.addrs,
        descriptor,
        rank: { ...rtt, load: this.components.loadOf?.(peerId) ?? null, cost: relevantCost(query, descriptor), currency: descriptor.cost.currency }
      }
      results.push(result)
      if (firstMs == null) {
        firstMs = performance.now() - started
        this.components.metrics?.discoveryDuration.observe({ stage: 'first' }, firstMs / 1000)
      }
      onResult?.(result)
    }

    // Candidates are examined while the provider query is still running, a few at a time.
    const running = new Set<Promise<void>>()
    for await (const peerId of this.providers(primaryTag(queryTags(query)), signal)) {
      candidates++
      const job = examine(peerId).finally(() => running.delete(job))
      running.add(job)
      if (running.size >= this.options.concurrency) await Promise.race(running)
    }
    await Promise.all(running)
    const completeMs = performance.now() - started
    this.components.metrics?.discoveryDuration.observe({ stage: 'complete' }, completeMs / 1000)
    results.sort(compareResults)
    return {
      results: results.slice(0, query.limit),
      candidates,
      skipped: candidates - results.length,
      timings: { firstMs: firstMs == null ? null : Math.round(firstMs), completeMs: Math.round(completeMs) }
    }
  }
}

