import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { afterAll, describe, expect, it } from 'vitest'
import { sealEnvelope } from '../../attest/envelope.ts'
import { buildDescriptor, type DescriptorInputs } from '../../p2p/catalog/build.ts'
import { CAPABILITY_TYPE, DescriptorError, encodeDescriptor, openDescriptor, signDescriptor, type CapabilityDescriptor } from '../../p2p/catalog/descriptor.ts'
import { compareResults, queryTags, relevantCost, satisfies, type DiscoveryQuery, type DiscoveryResult } from '../../p2p/catalog/discovery.ts'
import { parseNvidiaSmi } from '../../p2p/catalog/hardware.ts'
import { descriptorKey, descriptorSelector, descriptorValidator, peerIdOfDescriptorKey } from '../../p2p/catalog/records.ts'
import { tagCid, tagsOf } from '../../p2p/catalog/tags.ts'
import { configSchema } from '../../daemon/config/schema.ts'
import { Metrics } from '../../daemon/metrics.ts'
import { Database, SUBLEVELS } from '../../storage/database.ts'
import { UptimeLog } from '../../storage/uptime-log.ts'
import { TestBed } from '../helpers/daemons.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())

const key = await generateKeyPair('Ed25519')
const peerId = peerIdFromPrivateKey(key).toString()
const NOW = 1_800_000_000_000

function inputs (catalog: Record<string, unknown> = {}, region?: string): Omit<DescriptorInputs, 'now'> {
  const config = configSchema.parse({ dataDir: '/x', listen: ['/ip4/0.0.0.0/tcp/0'], announce: [], api: '127.0.0.1:1', bootstrap: [], logLevel: 'info', logFormat: 'json', catalog })
  return {
    peerId,
    operator: null,
    region,
    catalog: config.catalog,
    hardware: { cpu: { cores: 8, arch: 'x64', model: 'EPYC' }, memoryMiB: 32_768, storageGiB: 500, accelerators: [{ kind: 'gpu', model: 'NVIDIA H100 80GB HBM3', count: 2, memoryMiB: 81_559, free: 1 }] },
    reliability: { uptime: 0.99876, windowS: 604_800 },
    addrs: ['/ip4/198.51.100.7/tcp/4001'],
    version: '1.2.3'
  }
}

const descriptor = (catalog: Record<string, unknown> = {}, region?: string): CapabilityDescriptor => buildDescriptor({ ...inputs(catalog, region), now: NOW })

async function rejection (bytes: Uint8Array, options = { now: NOW + 1, expectedPeerId: peerId }): Promise<string> {
  const err = await openDescriptor(bytes, options).then(() => undefined, (e: unknown) => e)
  expect(err).toBeInstanceOf(DescriptorError)
  return (err as DescriptorError).reason
}

describe('capability descriptor', () => {
  it('marks what was measured and what was declared', () => {
    const d = descriptor({ memoryMiB: 16_000, models: [{ name: 'llama-3-8b', p50Ms: 20, p99Ms: 70, throughputPerS: 40 }], accelerators: [{ kind: 'npu', model: 'Hailo-8' }] }, 'DE-BY')
    expect(d.measured).toEqual(['accelerators', 'cpu', 'reliability', 'storageGiB'])
    expect(d.declared).toEqual(['accelerators', 'cost', 'memoryMiB', 'models', 'region'])
    expect(d.memoryMiB).toBe(16_000)
    expect(d.accelerators.map((a) => [a.model, a.source, a.free])).toEqual([['NVIDIA H100 80GB HBM3', 'measured', 1], ['Hailo-8', 'declared', 1]])
    expect(d.reliability).toEqual({ uptime: 0.9988, windowS: 604_800 })
    expect(d.expiresAt - d.issuedAt).toBe(3_600_000)
  })

  it('round-trips through its signed envelope', async () => {
    const d = descriptor({}, 'DE')
    expect(await openDescriptor(await signDescriptor(key, d), { now: NOW + 1, expectedPeerId: peerId })).toEqual(d)
  })

  it('encodes deterministically', () => {
    expect(encodeDescriptor(descriptor())).toEqual(encodeDescriptor(descriptor()))
  })

  it('is refused with the failing check named: signature, peer id, key, expiry, schema, size', async () => {
    const d = descriptor()
    const signed = await signDescriptor(key, d)
    const envelope = dagCbor.decode(signed) as Record<string, Uint8Array>
    expect(await rejection(dagCbor.encode({ ...envelope, p: encodeDescriptor({ ...d, memoryMiB: 1 }) }))).toBe('signature')
    const other = await generateKeyPair('Ed25519')
    expect(await rejection(await signDescriptor(other, d))).toBe('peer-id')
    const otherId = peerIdFromPrivateKey(other).toString()
    expect(await rejection(await signDescriptor(other, { ...d, peerId: otherId }))).toBe('key-mismatch')
    expect(await rejection(signed, { now: d.expiresAt, expectedPeerId: peerId })).toBe('expired')
    expect(await rejection(signed, { now: d.issuedAt - 120_000, expectedPeerId: peerId })).toBe('not-yet-valid')
    expect(await rejection(await sealEnvelope(key, CAPABILITY_TYPE, dagCbor.encode({ ...d, cpu: { cores: 0, arch: 'x', model: 'y' } })))).toBe('schema')
    expect(await rejection(await sealEnvelope(key, CAPABILITY_TYPE, dagCbor.encode({ ...d, extra: 1 })))).toBe('schema')
    expect(await rejection(await sealEnvelope(key, CAPABILITY_TYPE, Uint8Array.of(0xff)))).toBe('encoding')
    expect(await rejection(await sealEnvelope(key, 'metagrid.other/v1', encodeDescriptor(d)))).toBe('encoding')
    expect(await rejection(new Uint8Array(20_000))).toBe('oversized')
  })

  it('refuses any garbage with a DescriptorError', async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 400 }), async (bytes) => {
      return (await openDescriptor(bytes, { now: NOW }).then(() => undefined, (e: unknown) => e)) instanceof DescriptorError
    }), { numRuns: 300 })
  })
})

describe('tags', () => {
  it('derives tags from the signed fields', () => {
    expect(tagsOf(descriptor({ models: [{ name: 'Llama 3 70B', p50Ms: 1, p99Ms: 2, throughputPerS: 3 }], tags: ['edge'] }, 'DE-BY'))).toEqual([
      'arch:x64', 'edge', 'gpu', 'gpu:nvidia-h100-80gb-hbm3', 'model:llama-3-70b', 'node', 'region:de', 'region:de-by'
    ])
  })

  it('maps a tag to the same CID everywhere', async () => {
    expect((await tagCid('gpu')).toString()).toBe((await tagCid('gpu')).toString())
    expect((await tagCid('gpu')).toString()).not.toBe((await tagCid('gpu:x')).toString())
  })

  it('reads nvidia-smi output, grouping GPUs by model and counting idle ones as free', () => {
    expect(parseNvidiaSmi('NVIDIA H100 80GB HBM3, 81559, 0\nNVIDIA H100 80GB HBM3, 81559, 97\nNVIDIA L4, 23034, 3\n\ngarbage line\n')).toEqual([
      { kind: 'gpu', model: 'NVIDIA H100 80GB HBM3', count: 2, memoryMiB: 81559, free: 1 },
      { kind: 'gpu', model: 'NVIDIA L4', count: 1, memoryMiB: 23034, free: 1 }
    ])
    expect(parseNvidiaSmi('')).toEqual([])
  })
})

describe('matching and ranking', () => {
  const query = (q: Partial<DiscoveryQuery>): DiscoveryQuery => ({ need: [], currency: 'USD', limit: 10, ...q })
  const priced = descriptor({ cost: { perCoreHour: 0.1, perAcceleratorHour: 2.5 }, models: [{ name: 'llama-3-70b', p50Ms: 1, p99Ms: 2, throughputPerS: 3 }] }, 'DE-BY')

  it('turns constraints into tags, with no constraint meaning any node', () => {
    expect(queryTags(query({}))).toEqual(['node'])
    expect(queryTags(query({ need: ['GPU:NVIDIA H100'], model: 'Llama-3-70b', region: 'DE' }))).toEqual(['gpu:nvidia-h100', 'model:llama-3-70b', 'region:de'])
  })

  it('checks constraints against the signed descriptor', () => {
    expect(satisfies(query({ need: ['gpu:nvidia-h100-80gb-hbm3'], region: 'DE' }), priced)).toBe(true)
    expect(satisfies(query({ region: 'DE-BY' }), priced)).toBe(true)
    expect(satisfies(query({ region: 'FR' }), priced)).toBe(false)
    expect(satisfies(query({ model: 'llama-3-70b' }), priced)).toBe(true)
    expect(satisfies(query({ model: 'whisper' }), priced)).toBe(false)
    expect(satisfies(query({ need: ['gpu'], maxCost: 3 }), priced)).toBe(true)
    expect(satisfies(query({ need: ['gpu'], maxCost: 2 }), priced)).toBe(false)
    expect(satisfies(query({ maxCost: 0.1 }), priced)).toBe(true)
    expect(satisfies(query({ need: ['gpu'], maxCost: 3, currency: 'EUR' }), priced)).toBe(false)
  })

  it('prices by the accelerator-hour only when an accelerator is needed', () => {
    expect(relevantCost(query({ need: ['gpu'] }), priced)).toBe(2.5)
    expect(relevantCost(query({}), priced)).toBe(0.1)
  })

  it('ranks by RTT, then load, then cost, treating near-equal as equal', () => {
    const r = (peer: string, rttMs: number | null, load: number | null, cost: number): DiscoveryResult =>
      ({ peerId: peer, addrs: [], descriptor: priced, rank: { rttMs, rttSource: 'estimated', load, cost, currency: 'USD' } })
    const ranked = [r('far', 80, 0, 0), r('unknown', null, 0, 0), r('near-busy', 11, 0.9, 0), r('near-idle-pricey', 13, 0.05, 5), r('near-idle-cheap', 12, 0.08, 1)].sort(compareResults)
    expect(ranked.map((x) => x.peerId)).toEqual(['near-idle-cheap', 'near-idle-pricey', 'near-busy', 'far', 'unknown'])
  })
})

describe('DHT records', () => {
  it('derives the key from the peer id and back', () => {
    expect(peerIdOfDescriptorKey(descriptorKey(peerId))).toBe(peerId)
    expect(() => peerIdOfDescriptorKey(new TextEncoder().encode('/pk/abc'))).toThrow(DescriptorError)
  })

  it('validates with a count by reason, and selects the newest', async () => {
    const metrics = new Metrics()
    const validate = descriptorValidator(metrics, () => NOW + 1)
    const older = await signDescriptor(key, descriptor())
    const newer = await signDescriptor(key, { ...descriptor(), issuedAt: NOW + 10 })
    await validate(descriptorKey(peerId), older)
    const other = await generateKeyPair('Ed25519')
    await expect(validate(descriptorKey(peerId), await signDescriptor(other, descriptor()))).rejects.toThrow(DescriptorError)
    expect((await metrics.catalogRejected.get()).values).toEqual([expect.objectContaining({ labels: { reason: 'peer-id' }, value: 1 })])
    expect(await descriptorSelector(descriptorKey(peerId), [older, newer, Uint8Array.of(1)])).toBe(1)
  })
})

describe('uptime log', () => {
  it('measures the fraction of the window the node was up, across restarts', async () => {
    const db = await Database.open(await bed.tempDir())
    let now = 0
    const HOUR = 3_600_000
    const log = new UptimeLog(db.sublevel(SUBLEVELS.node), { windowMs: 10 * HOUR, tickMs: 60_000, now: () => now })
    await log.start()
    now = 2 * HOUR
    await log.stop()
    now = 3 * HOUR
    const again = new UptimeLog(db.sublevel(SUBLEVELS.node), { windowMs: 10 * HOUR, tickMs: 60_000, now: () => now })
    await again.start()
    now = 4 * HOUR
    expect(again.reliability()).toEqual({ uptime: 0.75, windowS: 4 * 3600 })
    now = 14 * HOUR
    // The window slid past the first session: 10 of the last 10 hours were up.
    expect(again.reliability()).toEqual({ uptime: 1, windowS: 10 * 3600 })
    await again.stop()
    await db.close()
  })
})
