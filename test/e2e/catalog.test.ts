/**
 * The capability catalog in the DHT, end to end: six daemons with distinct
 * capabilities declared through their config files, discovery for every
 * combination of constraints, forged descriptors refused everywhere, expiry
 * after a node stops, and the light client that knows one bootstrap address.
 */
import { execFile } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import * as dagCbor from '@ipld/dag-cbor'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BIN_PATH, cleanDaemonEnv } from '../../daemon/process.ts'
import { createLogger } from '../../daemon/log/logger.ts'
import { libp2pComponentLogger } from '../../daemon/log/libp2p-logger.ts'
import { CatalogClient } from '../../p2p/catalog/client.ts'
import { encodeDescriptor, signDescriptor, type CapabilityDescriptor } from '../../p2p/catalog/descriptor.ts'
import { DESCRIPTOR_NAMESPACE, descriptorKey } from '../../p2p/catalog/records.ts'
import { tagCid } from '../../p2p/catalog/tags.ts'
import { createMetagridLibp2p, type MetagridLibp2p } from '../../p2p/libp2p.ts'
import { getJson, TestBed, waitFor, type TestDaemon } from '../helpers/daemons.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { compareResults, type DiscoveryAnswer } from '../../p2p/catalog/discovery.ts'

/** Short lifetimes so expiry is observable: records live 12 s and are renewed every 4 s. */
const TTL_MS = 12_000

const NODES: Array<{ name: string, region: string, catalog: Record<string, unknown> }> = [
  { name: 'bavaria-h100', region: 'DE-BY', catalog: { accelerators: [{ kind: 'gpu', model: 'nvidia-h100', count: 2, memoryMiB: 81920 }], models: [{ name: 'llama-3-70b', p50Ms: 40, p99Ms: 120, throughputPerS: 20 }], cost: { perCoreHour: 0.1, perAcceleratorHour: 2.5 } } },
  { name: 'berlin-h100', region: 'DE', catalog: { accelerators: [{ kind: 'gpu', model: 'nvidia-h100', count: 1, memoryMiB: 81920 }], cost: { perCoreHour: 0.1, perAcceleratorHour: 4 } } },
  { name: 'california-a100', region: 'US-CA', catalog: { accelerators: [{ kind: 'gpu', model: 'nvidia-a100', count: 4, memoryMiB: 40960 }], models: [{ name: 'llama-3-70b', p50Ms: 55, p99Ms: 150, throughputPerS: 15 }], cost: { perCoreHour: 0.08, perAcceleratorHour: 1.5 } } },
  { name: 'paris-cpu', region: 'FR', catalog: { models: [{ name: 'whisper-small', p50Ms: 90, p99Ms: 200, throughputPerS: 8 }], cost: { perCoreHour: 0.05 } } },
  { name: 'hamburg-npu', region: 'DE', catalog: { accelerators: [{ kind: 'npu', model: 'hailo-8', count: 1 }], cost: { perCoreHour: 0.04, perAcceleratorHour: 0.3 } } },
  { name: 'tokyo-edge', region: 'JP', catalog: { tags: ['edge'], cost: { perCoreHour: 0.02 } } }
]

const bed = new TestBed()
const nodes = new Map<string, TestDaemon>()
const byPeer = new Map<string, string>()

async function configFor (index: number): Promise<string> {
  const spec = NODES[index]!
  const file = join(await bed.tempDir(), `${spec.name}.json`)
  await writeFile(file, JSON.stringify({ region: spec.region, catalog: { ...spec.catalog, ttlMs: TTL_MS } }))
  return file
}

async function discover (api: string, params: string): Promise<DiscoveryAnswer> {
  return getJson<DiscoveryAnswer>(api, `/v1/discover?limit=100&${params}`)
}

const names = (answer: DiscoveryAnswer): string[] => answer.results.map((r) => byPeer.get(r.peerId) ?? r.peerId).sort()

beforeAll(async () => {
  const first = await bed.start({ args: ['--config', await configFor(0)] })
  const rest = await Promise.all(NODES.slice(1).map(async (_, i) => bed.start({ args: ['--config', await configFor(i + 1), '--bootstrap', first.addrs[0]!] })))
  ;[first, ...rest].forEach((node, i) => {
    nodes.set(NODES[i]!.name, node)
    byPeer.set(node.peerId, NODES[i]!.name)
  })
  // Every node published: discovery with no constraint sees all six from every node.
  for (const node of nodes.values()) {
    await waitFor('all six in the catalog', async () => (await discover(node.api, '')).results.length === 6, 60_000)
  }
})
afterAll(async () => bed.cleanup())

describe('discovery through the DHT catalog', () => {
  it.each([
    ['', ['bavaria-h100', 'berlin-h100', 'california-a100', 'hamburg-npu', 'paris-cpu', 'tokyo-edge']],
    ['need=gpu', ['bavaria-h100', 'berlin-h100', 'california-a100']],
    ['need=gpu:nvidia-h100', ['bavaria-h100', 'berlin-h100']],
    ['need=gpu:nvidia-h100&region=DE', ['bavaria-h100', 'berlin-h100']],
    ['need=gpu:nvidia-h100&region=DE&maxCost=3', ['bavaria-h100']],
    ['need=gpu:nvidia-h100&region=DE&maxCost=3&currency=EUR', []],
    ['need=gpu&region=US', ['california-a100']],
    ['need=gpu&maxCost=2', ['california-a100']],
    ['model=llama-3-70b', ['bavaria-h100', 'california-a100']],
    ['model=llama-3-70b&region=DE', ['bavaria-h100']],
    ['model=whisper-small&need=gpu', []],
    ['region=DE', ['bavaria-h100', 'berlin-h100', 'hamburg-npu']],
    ['region=DE-BY', ['bavaria-h100']],
    ['need=npu', ['hamburg-npu']],
    ['need=edge', ['tokyo-edge']],
    ['maxCost=0.045', ['hamburg-npu', 'tokyo-edge']],
    ['need=arch:x64&need=gpu&need=npu', []],
    ['region=BR', []]
  ])('"%s" returns exactly the matching nodes', async (params, expected) => {
    const answer = await discover(nodes.get('paris-cpu')!.api, params)
    expect(names(answer)).toEqual([...expected].sort())
  })

  it('returns each result verified, with why it ranked where it did', async () => {
    const answer = await discover(nodes.get('tokyo-edge')!.api, 'need=gpu:nvidia-h100')
    expect(names(answer)).toEqual(['bavaria-h100', 'berlin-h100'])
    // The order is the ranking's: RTT bucket, then load bucket, then price (the tie-breaks are unit-tested).
    expect([...answer.results].sort(compareResults).map((r) => r.peerId)).toEqual(answer.results.map((r) => r.peerId))
    for (const result of answer.results) {
      expect(result.descriptor.peerId).toBe(result.peerId)
      expect(result.addrs).toEqual(result.descriptor.addrs)
      expect(result.rank).toMatchObject({ rttMs: expect.any(Number), rttSource: expect.stringMatching(/^(estimated|measured)$/), currency: 'USD' })
      expect(result.descriptor.measured).toContain('cpu')
      expect(result.descriptor.declared).toEqual(expect.arrayContaining(['accelerators', 'cost', 'region']))
    }
    expect(answer.results.map((r) => r.rank.cost).sort()).toEqual([2.5, 4])
    expect(answer.timings.completeMs).toBeGreaterThanOrEqual(answer.timings.firstMs ?? 0)
  })

  it('refuses bad queries with a 400 naming the field', async () => {
    const response = await fetch(`${nodes.get('paris-cpu')!.api}/v1/discover?limit=0`)
    expect(response.status).toBe(400)
    expect((await response.json() as { error: { message: string } }).error.message).toMatch(/^query\.limit: /)
    const region = await fetch(`${nodes.get('paris-cpu')!.api}/v1/discover?region=Germany`)
    expect((await region.json() as { error: { message: string } }).error.message).toMatch(/^query\.region: expected an ISO 3166 code/)
  })
})

describe('a node alone', () => {
  it('answers a discovery at once with why it is empty, instead of waiting out the query timeout', async () => {
    const alone = await bed.start({})
    const answer = await discover(alone.api, 'need=gpu')
    expect(answer.results).toEqual([])
    expect(answer.note).toMatchObject({ code: 'NO_PEERS', message: expect.stringMatching(/--bootstrap/) })
  })
})

describe('forged descriptors', () => {
  let attacker: MetagridLibp2p

  beforeAll(async () => {
    const key = await generateKeyPair('Ed25519')
    // A peer whose own DHT accepts anything under our namespace: what a malicious node would run.
    attacker = await createMetagridLibp2p({
      privateKey: key,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      announce: [],
      connections: { maxConnections: 50, maxIncomingPendingConnections: 10, maxParallelDials: 10, dialTimeoutMs: 5000, inboundConnectionThreshold: 10, allow: [] },
      logger: libp2pComponentLogger(createLogger({ level: 'silent', format: 'json' })),
      metricsRegistry: null,
      version: 'attacker',
      dhtValidators: { [DESCRIPTOR_NAMESPACE]: async () => {} },
      dhtSelectors: { [DESCRIPTOR_NAMESPACE]: () => 0 }
    })
    await attacker.start()
    await attacker.dial(multiaddr(nodes.get('bavaria-h100')!.addrs[0]!))
    await waitFor('the attacker\'s routing table', () => (attacker.services.dht as unknown as { routingTable: { size: number } }).routingTable.size > 0)
  })
  afterAll(async () => attacker?.stop())

  it('are refused by every DHT server and never returned', async () => {
    const attackerId = attacker.peerId.toString()
    const victim = nodes.get('tokyo-edge')!
    const real = (await getJson<{ descriptor: CapabilityDescriptor }>(victim.api, '/v1/catalog')).descriptor
    const attackerKey = (attacker as unknown as { components: { privateKey: Parameters<typeof signDescriptor>[0] } }).components.privateKey
    const bait: CapabilityDescriptor = {
      ...real,
      peerId: attackerId,
      accelerators: [{ kind: 'gpu', model: 'nvidia-h100', count: 8, memoryMiB: 81920, free: 8, source: 'declared' }],
      cost: { ...real.cost, perAcceleratorHour: 0.01 },
      addrs: attacker.getMultiaddrs().map(String),
      issuedAt: Date.now(),
      expiresAt: Date.now() + 60_000
    }
    const signedVictim = (await getJson<{ signed: string }>(victim.api, '/v1/catalog')).signed
    const envelope = dagCbor.decode(Buffer.from(signedVictim, 'base64')) as Record<string, Uint8Array>
    const forgeries: Array<[string, Uint8Array, Uint8Array]> = [
      // The victim's descriptor, altered after signing, under the victim's key.
      ['signature', descriptorKey(victim.peerId), dagCbor.encode({ ...envelope, p: encodeDescriptor({ ...real, cost: { ...real.cost, perCoreHour: 99 } }) })],
      // A descriptor claiming to be the victim, signed by the attacker.
      ['peer-id', descriptorKey(victim.peerId), await signDescriptor(attackerKey, { ...bait, peerId: victim.peerId })],
      // The attacker's own descriptor, already expired.
      ['expired', descriptorKey(attackerId), await signDescriptor(attackerKey, { ...bait, issuedAt: Date.now() - 120_000, expiresAt: Date.now() - 60_000 })]
    ]
    const rejected = async (reason: string): Promise<number> => {
      let sum = 0
      for (const node of nodes.values()) sum += metricValue(await scrape(node.api), 'metagrid_catalog_rejected_total', { reason }) ?? 0
      return sum
    }
    for (const [reason, key, value] of forgeries) {
      const before = await rejected(reason)
      await attacker.contentRouting.put(key, value, { signal: AbortSignal.timeout(10_000) }).catch(() => {})
      await waitFor(`DHT servers to refuse the ${reason} forgery`, async () => (await rejected(reason)) > before, 15_000)
    }
    // The attacker also claims the tags, so discovery meets it as a candidate and must throw it out.
    for (const tag of ['gpu', 'gpu:nvidia-h100', 'node']) await attacker.contentRouting.provide(await tagCid(tag), { signal: AbortSignal.timeout(10_000) }).catch(() => {})

    for (const node of nodes.values()) {
      const answer = await discover(node.api, 'need=gpu:nvidia-h100')
      expect(names(answer)).toEqual(['bavaria-h100', 'berlin-h100'])
      const victimResult = (await discover(node.api, 'need=edge')).results[0]
      expect(victimResult?.descriptor.cost.perCoreHour).toBe(0.02)
    }
  })
})

describe('the light client', () => {
  it('finds nodes knowing only one bootstrap address, ranked by its own pings', async () => {
    const client = await CatalogClient.connect({ bootstrap: [nodes.get('paris-cpu')!.addrs[0]!] })
    try {
      expect(client.libp2p.services.dht.getMode()).toBe('client')
      const answer = await client.discover({ need: ['gpu'], region: 'DE', currency: 'USD', limit: 10 })
      expect(names(answer)).toEqual(['bavaria-h100', 'berlin-h100'])
      for (const result of answer.results) expect(result.rank.rttSource).toBe('measured')
    } finally {
      await client.close()
    }
  })

  it('is what `metagrid discover --bootstrap` runs', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [BIN_PATH, 'discover', '--bootstrap', nodes.get('hamburg-npu')!.addrs[0]!, '--need', 'npu', '--json'], { env: cleanDaemonEnv(process.env) })
    expect(names(JSON.parse(stdout))).toEqual(['hamburg-npu'])
  })

  it('refuses to start without a reachable bootstrap peer', async () => {
    const dead = '/ip4/127.0.0.1/tcp/1/p2p/12D3KooWNFBn5sWgNob1oDEUEkPbomk8gWA39jVo8QBQSF42p4PR'
    await expect(CatalogClient.connect({ bootstrap: [dead], connectTimeoutMs: 3_000 })).rejects.toThrow(/no bootstrap peer answered/)
  })
})

describe('a node that stops', () => {
  it('is gone from results once its records expire', async () => {
    const edge = nodes.get('tokyo-edge')!
    const asker = nodes.get('paris-cpu')!
    expect(names(await discover(asker.api, 'need=edge'))).toEqual(['tokyo-edge'])
    const stoppedAt = Date.now()
    expect(await edge.process.stop()).toBe(0)
    await waitFor('the stopped node to drop out of discovery', async () => (await discover(asker.api, 'need=edge')).results.length === 0, TTL_MS + 15_000)
    // Its last descriptor was issued at most half a lifetime before the stop, so it cannot outlive the stop by more than TTL.
    expect(Date.now() - stoppedAt).toBeLessThan(TTL_MS + 15_000)
  })
})

