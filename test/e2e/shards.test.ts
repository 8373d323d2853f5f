/**
 * Shard state replicated between four daemons in emulated cities: concurrent
 * writes through different nodes, a partition with writes on both sides and
 * a heal, a kill -9 in the middle of a stream of writes, and a restart from
 * the data directory. Every replica must end equal, with every acknowledged
 * write present and every acknowledged increment counted exactly once.
 */
import { multiaddr } from '@multiformats/multiaddr'
import { lpStream } from '@libp2p/utils'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SYNC_PROTOCOL, shardTopic } from '../../p2p/constants.ts'
import { HybridClock } from '../../storage/crdt/hlc.ts'
import { DotContext } from '../../storage/crdt/dots.ts'
import { ShardDoc } from '../../storage/crdt/shard-doc.ts'
import { startTestPeer } from '../helpers/libp2p.ts'
import { seal } from '../helpers/batches.ts'
import { encodeHello } from '../../p2p/sync/anti-entropy.ts'
import { getJson, waitFor } from '../helpers/daemons.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { pickCities } from '../testbed/geo.ts'
import { Testbed } from '../testbed/testbed.ts'

const TIMERS = {
  METAGRID_TELEMETRY_INTERVAL_MS: '500',
  METAGRID_SHARDS_SYNC_INTERVAL_MS: '2000',
  METAGRID_SHARDS_SERVED: 'default,w2'
}

interface ShardView {
  entityCount: number
  entities: Array<{ entity: string, components: Record<string, unknown> }>
  counters: Record<string, number>
  versionVector: Record<string, number>
}

let bed: Testbed

async function call (index: number, method: string, path: string, body?: unknown): Promise<{ status: number, json: any }> {
  const response = await fetch(`${bed.nodes[index]!.api}${path}`, {
    method,
    ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {})
  })
  return { status: response.status, json: await response.json() }
}

async function write (index: number, method: string, path: string, body?: unknown): Promise<any> {
  const { status, json } = await call(index, method, path, body)
  if (status !== 200) throw new Error(`${method} ${path} on node ${index}: ${status} ${JSON.stringify(json)}`)
  return json
}

const shard = async (index: number, id = 'default'): Promise<ShardView> => getJson<ShardView>(bed.nodes[index]!.api, `/v1/shards/${id}?limit=10000`)
/** The visible state, without the version vector (equal state is what matters; contexts follow). */
const visible = (view: ShardView): string => JSON.stringify({ entities: view.entities, counters: view.counters })

async function allEqual (what: string, timeoutMs = 60_000, id = 'default'): Promise<ShardView> {
  return waitFor(what, async () => {
    const views = await Promise.all(bed.nodes.map(async (node) => shard(node.index, id)))
    const first = visible(views[0]!)
    return views.every((view) => visible(view) === first) ? views[0]! : undefined
  }, timeoutMs, 500)
}

beforeAll(async () => {
  bed = await Testbed.start({ cities: pickCities(4), env: TIMERS })
  await Promise.all(bed.nodes.map(async (node, i) => waitFor(`node ${i} to see the other 3 alive`, async () => {
    const view = await getJson<{ peers: Array<{ state: string }> }>(node.api, '/v1/mesh')
    return view.peers.filter((peer) => peer.state === 'alive').length === 3
  }, 60_000)))
})
afterAll(async () => bed?.stop())

describe('shard replication on a 4-node testbed', () => {
  it('converges after concurrent writes through every node, counting each increment once', async () => {
    await Promise.all(bed.nodes.map(async (node) => {
      for (let i = 0; i < 10; i++) {
        await write(node.index, 'PUT', `/v1/shards/default/entities/n${node.index}-${i}`, { components: { pos: { x: i, y: node.index }, owner: node.peerId } })
        await write(node.index, 'PATCH', '/v1/shards/default/entities/contested', { components: { by: node.index, hp: i } })
        await write(node.index, 'POST', '/v1/shards/default/counters/score', { by: 1 })
      }
    }))
    const view = await allEqual('all four replicas to be equal')
    expect(view.entityCount).toBe(41)
    expect(view.counters.score).toBe(40)
    // The other shard saw none of it.
    expect((await shard(0, 'w2')).entityCount).toBe(0)
    const conflicts = await Promise.all(bed.nodes.map(async (node) => metricValue(await scrape(node.api), 'metagrid_crdt_conflicts_total') ?? 0))
    expect(conflicts.reduce((a, b) => a + b, 0)).toBeGreaterThan(0)
    const converged = metricValue(await scrape(bed.nodes[1]!.api), 'metagrid_crdt_convergence_seconds_count') ?? 0
    expect(converged).toBeGreaterThan(0)
  })

  it('keeps both sides of a partition writable and merges them on heal, every acknowledged increment once', async () => {
    const before = (await shard(0)).counters.score ?? 0
    bed.partition([0, 1], [2, 3])
    let acked = 0
    await Promise.all([0, 1, 2, 3].map(async (index) => {
      for (let i = 0; i < 8; i++) {
        await write(index, 'PUT', `/v1/shards/default/entities/split-${index}-${i}`, { components: { side: index < 2 ? 'west' : 'east' } })
        await write(index, 'POST', '/v1/shards/default/counters/score', { by: 2 })
        acked += 2
      }
      await write(index, 'PUT', '/v1/shards/default/entities/flag', { components: { holder: index } })
      if (index === 1) await write(index, 'DELETE', '/v1/shards/default/entities/n0-0')
    }))
    // While cut, the west does not see the east's writes.
    await new Promise((resolve) => setTimeout(resolve, 3_000))
    expect((await getJson(bed.nodes[0]!.api, '/v1/shards/default/entities/split-1-7').catch(() => null))).not.toBeNull()
    expect(await call(0, 'GET', '/v1/shards/default/entities/split-3-7')).toMatchObject({ status: 404 })
    bed.healAll()
    const view = await allEqual('replicas to converge after the heal', 90_000)
    expect(view.counters.score).toBe(before + acked)
    expect(view.entities.filter((e) => e.entity.startsWith('split-'))).toHaveLength(32)
    expect(view.entities.find((e) => e.entity === 'n0-0')).toBeUndefined()
    expect(view.entities.find((e) => e.entity === 'flag')?.components.holder).toBeTypeOf('number')
  })

  it('loses no acknowledged write to kill -9, and a restarted node catches up with what it missed', async () => {
    // Node 3 alone: what it acknowledges exists only on its own disk.
    bed.partition([3], [0, 1, 2])
    const acked: string[] = []
    let stop = false
    const stream = (async () => {
      for (let i = 0; !stop; i++) {
        try {
          await write(3, 'PUT', `/v1/shards/default/entities/crash-${i}`, { components: { i } })
          acked.push(`crash-${i}`)
        } catch {
          return // the node died under us; that write was never acknowledged
        }
      }
    })()
    await waitFor('some writes to be acknowledged', () => acked.length >= 30, 30_000, 50)
    await bed.kill(3)
    stop = true
    await stream
    // Meanwhile the others write something node 3 must catch up on.
    await write(0, 'PUT', '/v1/shards/default/entities/while-down', { components: { x: 1 } })
    await write(1, 'POST', '/v1/shards/default/counters/score', { by: 5 })

    await bed.restart(3)
    const local = await shard(3)
    const ids = new Set(local.entities.map((e) => e.entity))
    expect(acked.filter((id) => !ids.has(id))).toEqual([])
    expect(ids.has('while-down')).toBe(false)

    bed.healAll()
    const view = await allEqual('the restarted node and the others to converge', 90_000)
    const all = new Set(view.entities.map((e) => e.entity))
    expect(all.has('while-down')).toBe(true)
    expect(acked.every((id) => all.has(id))).toBe(true)
  })

  it('refuses bad input with a clear 4xx and leaves the state untouched', async () => {
    const before = visible(await shard(0))
    expect(await call(0, 'PUT', '/v1/shards/nope/entities/a', { components: { x: 1 } })).toMatchObject({ status: 404, json: { error: { code: 'UNKNOWN_SHARD' } } })
    expect(await call(0, 'PUT', '/v1/shards/default/entities/a', { comps: {} })).toMatchObject({ status: 400 })
    expect(await call(0, 'PUT', '/v1/shards/default/entities/a', { components: { big: 'x'.repeat(70_000) } })).toMatchObject({ status: 413, json: { error: { code: 'VALUE_TOO_LARGE' } } })
    expect(await call(0, 'POST', '/v1/shards/default/counters/c', { by: 1.5 })).toMatchObject({ status: 400 })
    expect(await call(0, 'POST', '/v1/shards/default/batch', { ops: [{ op: 'put', entity: 'ok', components: {} }, { op: 'explode' }] })).toMatchObject({ status: 400 })
    const raw = await fetch(`${bed.nodes[0]!.api}/v1/shards/default/entities/a`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"components":' })
    expect(raw.status).toBe(400)
    expect(visible(await shard(0))).toBe(before)
  })

  it('rejects forged and malformed gossiped deltas, and leaves the state untouched', async () => {
    const victim = bed.nodes[0]!
    const { node: attacker, key } = await startTestPeer()
    try {
      const counted = async (reason: string): Promise<number> => metricValue(await scrape(victim.api), 'metagrid_gossip_invalid_total', { topic: 'shard', reason, action: 'reject' }) ?? 0
      const before = { forged: await counted('FORGED'), malformed: await counted('MALFORMED') }
      const state = visible(await shard(0))
      await attacker.dial(multiaddr(victim.addr))
      const topic = shardTopic('default')
      attacker.services.pubsub.subscribe(topic)
      await waitFor('the victim to show up as a shard subscriber', () => attacker.services.pubsub.getSubscribers(topic).some((peer) => peer.toString() === victim.peerId))
      // A batch claiming to be another replica's writes, signed by the attacker.
      const impostor = new ShardDoc(bed.nodes[1]!.peerId, new HybridClock(60_000))
      // Past every dot node 1 has used, so it is not dismissed as a duplicate before its signature is checked.
      const ahead = new DotContext()
      ahead.addRange(bed.nodes[1]!.peerId, 1, 1_000_000)
      impostor.apply({ kind: 'snapshot', components: [], adds: [], removes: [], counters: [], context: ahead })
      impostor.setComponent('forged', 'owner', 'mallory')
      await attacker.services.pubsub.publish(topic, seal(key, 'default', impostor.takeDelta()!).bytes)
      await attacker.services.pubsub.publish(topic, Uint8Array.of(1, 0, 9, 9, 9))
      await waitFor('both to be counted', async () => (await counted('FORGED')) === before.forged + 1 && (await counted('MALFORMED')) === before.malformed + 1, 10_000)
      expect(visible(await shard(0))).toBe(state)
    } finally {
      await attacker.stop()
    }
  })

  it('cuts off a peer that sends garbage over the sync protocol', async () => {
    const victim = bed.nodes[1]!
    const { node: attacker } = await startTestPeer()
    try {
      const counted = async (): Promise<number> => metricValue(await scrape(victim.api), 'metagrid_wire_rejected_total', { protocol: 'sync', reason: 'MALFORMED' }) ?? 0
      const before = await counted()
      const connection = await attacker.dial(multiaddr(victim.addr))
      const stream = await connection.newStream(SYNC_PROTOCOL)
      const lp = lpStream(stream)
      await lp.write(Uint8Array.of(1, 7, 100, 101, 102, 97, 117, 108, 116, 0xff, 0xff, 0xff))
      await waitFor('the garbage to be counted', async () => (await counted()) === before + 1, 10_000)
      await waitFor('the victim to hang up', () => attacker.getConnections(connection.remotePeer).length === 0, 10_000)
      // And it is not served again for a while.
      const again = await attacker.dial(multiaddr(victim.addr))
      const retry = await again.newStream(SYNC_PROTOCOL)
      const retryLp = lpStream(retry)
      // The victim may abort the stream before the hello is even written: either way no answer comes.
      await expect((async () => {
        await retryLp.write(encodeHelloForTest())
        return retryLp.read({ signal: AbortSignal.timeout(5_000) })
      })()).rejects.toThrow()
    } finally {
      await attacker.stop()
    }
  })

  it('streams changes to subscribers as Server-Sent Events, remote ones included', async () => {
    const controller = new AbortController()
    const response = await fetch(`${bed.nodes[2]!.api}/v1/shards/default/events`, { signal: controller.signal })
    expect(response.headers.get('content-type')).toBe('text/event-stream')
    const reader = response.body!.getReader()
    let text = ''
    const seen = (async () => {
      while (!text.includes('"entity":"sse-probe"')) {
        const { value, done } = await reader.read()
        if (done) break
        text += new TextDecoder().decode(value)
      }
    })()
    await write(0, 'PUT', '/v1/shards/default/entities/sse-probe', { components: { hello: 'world' } })
    await Promise.race([seen, new Promise((resolve) => setTimeout(resolve, 20_000))])
    controller.abort()
    expect(text).toContain('event: entity')
    expect(text).toContain('"origin":"remote"')
    expect(text).toContain('"hello":"world"')
  })
})

function encodeHelloForTest (): Uint8Array {
  return encodeHello('default', 0, new ShardDoc('x', new HybridClock(60_000)).context)
}
