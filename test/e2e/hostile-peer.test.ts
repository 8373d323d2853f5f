/**
 * A hostile peer on a mesh of four real daemons: a real libp2p node with its
 * own key joins and runs, one by one, the attacks a stranger on an open mesh
 * can make, then garbage on every protocol and gossip topic. After each, the
 * honest nodes' state is what it was before (their honest writes, leases,
 * table entries and provenance untouched), no daemon died, their event loops
 * kept up, and the refusal was counted under a bounded reason.
 */
import { randomBytes } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { assetCid, signProvenance, signReceipt } from '../../attest/provenance.ts'
import { HANDOFF_PROTOCOL, INPUT_PROTOCOL, KEEPALIVE_PROTOCOL, LEASE_PROTOCOL, LEDGER_PROTOCOL, MEMBERS_TOPIC, PLACEMENT_SHARD, PROBE_PROTOCOL, PROVENANCE_SHARD, REPLICATE_PROTOCOL, SYNC_PROTOCOL, TELEMETRY_TOPIC, shardTopic } from '../../p2p/constants.ts'
import { encodeLeaseRecord, signLease } from '../../p2p/placement/lease.ts'
import { encodeFrame, encodeHello, encodeSnapshotFrame, FRAME_DELTA, FRAME_END } from '../../p2p/sync/anti-entropy.ts'
import { DotContext } from '../../storage/crdt/dots.ts'
import { HybridClock } from '../../storage/crdt/hlc.ts'
import { encodePatch } from '../../storage/crdt/patch-codec.ts'
import { ShardDoc, type Patch } from '../../storage/crdt/shard-doc.ts'
import { seal } from '../helpers/batches.ts'
import { getJson, waitFor } from '../helpers/daemons.ts'
import { startTestPeer } from '../helpers/libp2p.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { pickCities } from '../testbed/geo.ts'
import { placementTestEnv } from '../testbed/placement-env.ts'
import { Testbed } from '../testbed/testbed.ts'
import type { MetagridLibp2p } from '../../p2p/libp2p.ts'
import type { PlacementView } from '../../p2p/placement/placement.ts'
import type { PrivateKey } from '@libp2p/interface'

let bed: Testbed
let attacker: MetagridLibp2p
let key: PrivateKey
let me: string
let asset: string

const api = (i: number): string => bed.nodes[i]!.api
const view = async (i: number): Promise<PlacementView> => getJson<PlacementView>(api(i), '/v1/placement')

async function call (i: number, method: string, path: string, body?: unknown): Promise<{ status: number, json: any }> {
  const response = await fetch(`${api(i)}${path}`, { method, ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) })
  return { status: response.status, json: await response.json() }
}

/** What an attack must not change, on every honest node: shard contents, the lease table, who is in the table, the asset's chain. */
async function honestState (i: number): Promise<string> {
  const shards = ['default', 'physics.0.0', 'presence.0.0']
  const served = new Set(((await getJson(api(i), '/v1/shards')).shards as Array<{ shard: string }>).map((s) => s.shard))
  const contents = await Promise.all(shards.filter((s) => served.has(s)).map(async (s) => {
    const v = await getJson(api(i), `/v1/shards/${s}?limit=10000`)
    return [s, v.entities, v.counters]
  }))
  const placement = await view(i)
  // Who holds what: epochs move on by themselves (a holder moving to a new voter set), holders only if taken.
  const leases = placement.shards.map((s) => [s.shard, s.lease?.valid === true ? s.lease.holder : null])
  const chain = await getJson(api(i), `/v1/assets/${asset}/provenance`)
  return JSON.stringify({ contents, leases, candidates: placement.candidates, owner: chain.owner, registration: chain.registration })
}

/** Runs an attack, then checks every honest node is alive, unchanged, kept up, and counted the refusal. */
async function attack (run: () => Promise<void>, counted: () => Promise<number>): Promise<void> {
  const before = await Promise.all(bed.nodes.map(async (_, i) => honestState(i)))
  const refusals = await counted()
  // Scraping resets the event-loop lag histogram: what the next scrape shows is the attack's window.
  await Promise.all(bed.nodes.map(async (n) => scrape(n.api)))
  await run()
  await waitFor('the refusal to be counted', async () => (await counted()) > refusals, 20_000, 250)
  await new Promise((resolve) => setTimeout(resolve, 1_500))
  for (const [i, node] of bed.nodes.entries()) {
    expect(node.process.child.exitCode, `node ${i} is still running`).toBeNull()
    const p99 = metricValue(await scrape(node.api), 'nodejs_eventloop_lag_p99_seconds') ?? 0
    expect(p99, `node ${i} event-loop lag p99 during the attack`).toBeLessThan(0.1)
  }
  // The mesh goes on (renewals, gossip), so state is compared once it is the same again, never against a changed one.
  const after = await Promise.all(bed.nodes.map(async (_, i) => honestState(i)))
  expect(after).toEqual(before)
}

const total = async (name: string, labels: Record<string, string>): Promise<number> => {
  let sum = 0
  for (const node of bed.nodes) sum += metricValue(await scrape(node.api), name, labels) ?? 0
  return sum
}
const admission = async (path: string, reason: string, action = 'reject'): Promise<number> => total('metagrid_admission_rejected_total', { path, reason, action })
const gossipRefused = async (reason: string, topic = 'shard', action = 'reject'): Promise<number> => total('metagrid_gossip_invalid_total', { topic, reason, action })
const wire = async (protocol: string, reason: string): Promise<number> => total('metagrid_wire_rejected_total', { protocol, reason })
/** Every refusal on a protocol, whatever its reason. */
const wireAny = async (protocol: string): Promise<number> => {
  let sum = 0
  for (const node of bed.nodes) {
    for (const match of (await scrape(node.api)).matchAll(new RegExp(`^metagrid_wire_rejected_total\\{protocol="${protocol}",reason="[A-Z_]+"\\} (\\S+)$`, 'gm'))) sum += Number(match[1])
  }
  return sum
}

/** An attacker's document, its dots past anything it used, for batches it signs itself. */
function doc (replica: string): ShardDoc {
  const d = new ShardDoc(replica, new HybridClock(60_000))
  const ahead = new DotContext()
  ahead.addRange(replica, 1, Date.now() % 1_000_000 + 1_000_000)
  d.apply({ kind: 'snapshot', components: [], adds: [], removes: [], counters: [], context: ahead })
  return d
}

async function publish (topic: string, data: Uint8Array): Promise<void> {
  attacker.services.pubsub.subscribe(topic)
  await waitFor(`a daemon to show up on ${topic}`, () => attacker.services.pubsub.getSubscribers(topic).length >= 2, 20_000)
  await attacker.services.pubsub.publish(topic, data)
}

/**
 * One anti-entropy session as the asker: HELLO, the answerer's frames up to
 * its END, then ours. Resolves once the answerer has taken them all (it
 * closes the stream) or cut the stream; true when it closed it cleanly.
 */
async function syncAs (target: number, shard: string, frames: Uint8Array[]): Promise<boolean> {
  const signal = AbortSignal.timeout(15_000)
  const stream = await attacker.dialProtocol(peerIdFromString(bed.nodes[target]!.peerId), SYNC_PROTOCOL, { signal })
  const lp = lpStream(stream, { maxDataLength: 16 * 1024 * 1024 })
  try {
    await lp.write(encodeHello(shard, 0, new DotContext()), { signal })
    for (;;) {
      const frame = (await lp.read({ signal })).subarray()
      if (frame[0] === FRAME_END && frame.length === 1) break
    }
    for (const frame of [...frames, Uint8Array.of(FRAME_END)]) await lp.write(frame, { signal })
    await lp.read({ signal })
    return false
  } catch {
    return stream.status === 'closed'
  } finally {
    stream.abort(new Error('done'))
  }
}

/** One request on a direct stream; resolves to the answer, or null when the node cut the stream. */
async function ask (target: number, protocol: string, frames: Uint8Array[]): Promise<Uint8Array | null> {
  const stream = await attacker.dialProtocol(peerIdFromString(bed.nodes[target]!.peerId), protocol, { signal: AbortSignal.timeout(10_000) })
  const lp = lpStream(stream, { maxDataLength: 16 * 1024 * 1024 })
  try {
    for (const frame of frames) await lp.write(frame, { signal: AbortSignal.timeout(10_000) })
    return (await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray()
  } catch {
    return null
  } finally {
    stream.abort(new Error('done'))
  }
}

async function agreement (): Promise<void> {
  await waitFor('every node to agree on every lease', async () => {
    const views = await Promise.all(bed.nodes.map(async (_, i) => view(i)))
    const table = (v: PlacementView): string => JSON.stringify(v.shards.map((s) => [s.shard, s.lease?.valid === true ? s.lease.holder : null, s.host]))
    return views.every((v) => v.candidates.length === 4 && v.shards.every((s) => s.lease?.valid === true && s.lease.holder === s.host) && table(v) === table(views[0]!))
  }, 90_000, 500)
}

const holderOf = async (shard: string): Promise<number> => {
  const lease = (await view(0)).shards.find((s) => s.shard === shard)!.lease!
  return bed.nodes.findIndex((n) => n.peerId === lease.holder)
}

beforeAll(async () => {
  bed = await Testbed.start({
    cities: pickCities(4),
    env: {
      ...placementTestEnv({ side: 200 }),
      METAGRID_PLACEMENT_WORLD_LAYERS: JSON.stringify([{ name: 'physics', consistency: 'host' }, { name: 'presence', consistency: 'crdt' }]),
      METAGRID_SHARDS_SYNC_INTERVAL_MS: '2000'
    }
  })
  await agreement()
  // The honest workload: writes to a served shard, a host shard (at its holder) and a crdt shard, and a registered asset.
  for (let i = 0; i < 5; i++) expect((await call(i % 4, 'PUT', `/v1/shards/default/entities/h${i}`, { components: { hp: i } })).status).toBe(200)
  expect((await call(await holderOf('physics.0.0'), 'PUT', '/v1/shards/physics.0.0/entities/ship', { components: { pos: [1, 2] } })).status).toBe(200)
  expect((await call(await holderOf('presence.0.0'), 'PUT', '/v1/shards/presence.0.0/entities/player', { components: { at: [3, 4] } })).status).toBe(200)
  const registered = await call(1, 'POST', '/v1/assets', { data: Buffer.from('an honest castle').toString('base64') })
  expect(registered.status).toBe(200)
  asset = registered.json.asset
  await waitFor('every node to see the honest state', async () => {
    const states = await Promise.all(bed.nodes.map(async (_, i) => (await getJson(api(i), '/v1/shards/default')).entityCount === 5 && (await getJson(api(i), `/v1/assets/${asset}/provenance`)).owner != null))
    return states.every(Boolean)
  }, 60_000, 500)
  ;({ node: attacker, key } = await startTestPeer())
  me = attacker.peerId.toString()
  for (const node of bed.nodes) await attacker.dial(multiaddr(node.addr))
}, 180_000)

afterAll(async () => {
  await attacker?.stop()
  await bed?.stop()
})

describe('a hostile peer on a mesh of four daemons', () => {
  it('cannot freeze a node with a context that names a dot far out', async () => {
    const claim = new DotContext()
    claim.add(bed.nodes[0]!.peerId, 2 ** 52)
    claim.addRange(me, 5e7, 5e7 + 10)
    await attack(async () => {
      // Answered in the time a handful of ranges takes, not once per sequence number.
      expect(await ask(0, SYNC_PROTOCOL, [encodeHello(PLACEMENT_SHARD, 0, claim)])).not.toBeNull()
      // And a HELLO naming no sensible shard is refused outright.
      await ask(0, SYNC_PROTOCOL, [encodeHello('x'.repeat(100), 0, claim)])
    }, async () => wire('sync', 'MALFORMED'))
  })

  it('erases nothing and poisons nothing through anti-entropy', async () => {
    const victim = 1
    const other = bed.nodes[2]!.peerId
    await attack(async () => {
      // The 47-byte snapshot: claims every operation of another replica and of the victim, holds nothing.
      const context = new DotContext()
      context.addRange(other, 1, 1e9)
      context.addRange(bed.nodes[victim]!.peerId, 1, 2 ** 53 - 2)
      const poison = encodePatch({ kind: 'snapshot', components: [], adds: [], removes: [], counters: [], context } satisfies Patch)
      // And a forged entry in another replica's name, beyond anything it signed.
      const forged = new ShardDoc(other, new HybridClock(60_000))
      forged.apply({ kind: 'snapshot', components: [], adds: [], removes: [], counters: [], context: (() => { const c = new DotContext(); c.addRange(other, 1, 5e8); return c })() })
      forged.setComponent('h0', 'hp', 666)
      const entries = encodePatch(forged.snapshot())
      await syncAs(victim, 'default', [encodeSnapshotFrame([], poison), encodeSnapshotFrame([], entries)])
      // A batch in another replica's name, signed by the attacker: the stream is cut for it.
      const impostor = doc(other)
      impostor.setComponent('h1', 'hp', 667)
      await syncAs(victim, 'default', [encodeFrame(FRAME_DELTA, seal(key, 'default', impostor.takeDelta()!).bytes)])
    }, async () => wire('sync', 'FORGED'))
    // The victim's own next write is still an ordinary one, and the other replica's next write still arrives.
    const written = await call(victim, 'PUT', '/v1/shards/default/entities/after-poison', { components: { ok: true } })
    expect(written.json.seq).toBeLessThan(1_000_000)
    expect((await call(2, 'PUT', '/v1/shards/default/entities/from-other', { components: { ok: true } })).status).toBe(200)
    await waitFor('the other replica\'s write to reach the victim', async () => (await call(victim, 'GET', '/v1/shards/default/entities/from-other')).status === 200, 20_000)
  })

  it('takes no shard with a lease it voted for itself', async () => {
    const shard = 'physics.0.0'
    await attack(async () => {
      const now = Date.now()
      const table = doc(me)
      // A year-long lease at epoch 1e9, with itself as the only voter: it verifies, and no reader takes it.
      const forever = await signLease(key, { shard, epoch: 1e9, holder: me, voters: [me], prev: [], prevHolder: null, expiresAt: now + 365 * 86_400_000, startedAt: now }, now)
      table.setComponent(`lease.${shard}`, `e1000000000.${me}`, Buffer.from(encodeLeaseRecord(forever, [await selfGrant(forever)])).toString('base64'))
      await publish(shardTopic(PLACEMENT_SHARD), seal(key, PLACEMENT_SHARD, table.takeDelta()!).bytes)
      // And it asks honest nodes to vote for it.
      await ask(0, LEASE_PROTOCOL, [dagCbor.encode({ t: 'claims', c: [{ l: forever }] })])
    }, async () => (await admission('lease', 'TOO_LONG', 'ignore')) + (await admission('lease', 'NOT_A_VOTER')) + (await admission('lease', 'TOO_LONG')))
  })

  it('writes nothing into a shard it does not hold through handoff, and every node restarts after', async () => {
    const target = await holderOf('physics.1.0')
    await attack(async () => {
      const prepare = { t: 'prepare', id: randomBytes(16).toString('hex'), from: 'physics.0.0', to: 'physics.1.0', entity: 'intruder', components: JSON.stringify({ evil: true }) }
      await ask(target, HANDOFF_PROTOCOL, [dagCbor.encode(prepare)])
      // An id the document could never hold: refused before anything is written.
      await ask(target, HANDOFF_PROTOCOL, [dagCbor.encode({ ...prepare, id: randomBytes(16).toString('hex'), entity: 'x'.repeat(300) })])
    }, async () => admission('handoff', 'NOT_SOURCE_HOST', 'ignore'))
    expect((await call(target, 'GET', '/v1/shards/physics.1.0/entities/intruder')).status).toBe(404)
    // Nothing a stranger sent stops a node from starting again.
    await bed.kill(target, 'SIGTERM')
    await bed.restart(target)
    await attacker.dial(multiaddr(bed.nodes[target]!.addr))
    await agreement()
  })

  it('steals no registered asset, however it signs its claim', async () => {
    const owner = async (): Promise<string | null> => (await getJson(api(0), `/v1/assets/${asset}/provenance`)).owner
    const rightful = await owner()
    await attack(async () => {
      // Its own created record for the asset, with a "receipt" it signed itself, straight into the ledger shard.
      const mine = await signProvenance(key, asset, { kind: 'created', prev: null })
      const { verifyRecord } = await import('../../attest/provenance.ts')
      const record = await verifyRecord(mine)
      const receipt = await signReceipt(key, asset, { record: record.cid, epoch: 0, seq: 0 })
      const ledger = doc(me)
      ledger.putEntity(`rec.${record.cid}`, { r: Buffer.from(mine).toString('base64'), a: asset, w: Buffer.from(receipt).toString('base64') })
      await publish(shardTopic(PROVENANCE_SHARD), seal(key, PROVENANCE_SHARD, ledger.takeDelta()!).bytes)
      // And at the registrar itself (whichever node it is; the others say they are not it).
      for (let i = 0; i < bed.nodes.length; i++) await ask(i, LEDGER_PROTOCOL, [dagCbor.encode({ t: 'register', r: mine })])
    }, async () => (await admission('ledger', 'ALREADY_REGISTERED', 'ignore')) + (await admission('ledger', 'LEDGER_UNAVAILABLE', 'ignore')))
    expect(await owner()).toBe(rightful)
  })

  it('rewrites no system entry it does not own', async () => {
    const victim = bed.nodes[3]!.peerId
    await attack(async () => {
      const table = doc(me)
      table.setComponent(`node.${victim}`, 'd', 'not a descriptor')
      await publish(shardTopic(PLACEMENT_SHARD), seal(key, PLACEMENT_SHARD, table.takeDelta()!).bytes)
      // Removing another node's provenance record: a remove of dots that are not its own.
      const removal = doc(me)
      removal.setComponent('x', 'y', 1)
      const delta = removal.takeDelta()!
      delta.removes.push({ entity: `rec.${asset}`, replica: bed.nodes[1]!.peerId, seq: 1 })
      delta.context.add(bed.nodes[1]!.peerId, 1)
      await publish(shardTopic(PROVENANCE_SHARD), seal(key, PROVENANCE_SHARD, delta).bytes)
    }, async () => (await gossipRefused('NOT_OWNER')) + (await gossipRefused('APPEND_ONLY')) + (await gossipRefused('UNKNOWN_ENTRY')))
  })

  it('is refused, counted and survived for garbage on every protocol and every topic', async () => {
    const garbage = randomBytes(300)
    await attack(async () => {
      for (const protocol of [SYNC_PROTOCOL, LEASE_PROTOCOL, HANDOFF_PROTOCOL, PROBE_PROTOCOL, LEDGER_PROTOCOL, KEEPALIVE_PROTOCOL, REPLICATE_PROTOCOL, INPUT_PROTOCOL]) {
        await ask(0, protocol, [garbage])
        await ask(1, protocol, [new Uint8Array(5 * 1024 * 1024)])
      }
      for (const topic of [TELEMETRY_TOPIC, MEMBERS_TOPIC, shardTopic('default'), shardTopic(PLACEMENT_SHARD), shardTopic(PROVENANCE_SHARD)]) await publish(topic, garbage)
    }, async () => {
      // Every protocol and topic counted its own refusals (MALFORMED, UNEXPECTED_FRAME, OVERSIZED where a frame is over the
      // protocol's limit): the total moves only once the last of them has.
      const counts = [
        ...await Promise.all(['sync', 'lease', 'handoff', 'probe', 'ledger', 'keepalive', 'replicate', 'input'].map(wireAny)),
        await gossipRefused('MALFORMED', 'telemetry'), await gossipRefused('TOO_LARGE', 'members'), await gossipRefused('MALFORMED')
      ]
      return counts.every((n) => n > 0) ? counts.reduce((a, b) => a + b, 0) : 0
    })
  })

  it('gets a flood of sessions refused rather than served', async () => {
    await attack(async () => {
      // Four lanes (a connection takes four sync streams at a time), a hundred sessions in all: past the burst of forty, refused.
      await Promise.all(Array.from({ length: 4 }, async () => {
        for (let i = 0; i < 25; i++) await ask(2, SYNC_PROTOCOL, [encodeHello('default', 0, new DotContext())])
      }))
    }, async () => wire('sync', 'RATE_LIMITED'))
  })
})

/** A grant by the attacker for its own lease: what makes a self-voted lease verify. */
async function selfGrant (lease: Uint8Array): Promise<Uint8Array> {
  const { openLeaseStatement } = await import('../../p2p/placement/lease.ts')
  const { signStatement } = await import('../../attest/statement.ts')
  const terms = await openLeaseStatement(lease, Date.now())
  const now = Date.now()
  return signStatement(key, { type: 'metagrid.lease-grant/v1', subjects: [{ id: terms.shard }], predicate: { shard: terms.shard, epoch: terms.epoch, holder: terms.holder, expiresAt: terms.expiresAt }, issuedAt: now, notBefore: now, expiresAt: now + 365 * 86_400_000 })
}
