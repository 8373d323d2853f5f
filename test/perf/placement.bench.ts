/**
 * Placement: how many shards move when a node joins or leaves (against the
 * ideal 1/N), the max/mean load, and the time to compute an assignment — for
 * metagrid's bounded-load rendezvous beside plain rendezvous hashing and
 * modulo hashing in the same run — and the failover time after a host is
 * killed on a real 4-daemon testbed, on an idle machine and beside a CPU hog.
 */
import { assign, defaultPlacementParams, hash32, rendezvous, type Candidate } from '../../p2p/placement/assign.ts'
import { Policy } from '../../p2p/placement/policy.ts'
import { World, worldSchema, type ShardInfo } from '../../p2p/placement/world.ts'
import { pickCities } from '../testbed/geo.ts'
import { placementTestEnv } from '../testbed/placement-env.ts'
import { Testbed } from '../testbed/testbed.ts'
import { sleep, summary } from './harness.ts'
import { configSchema, defaultConfig } from '../../daemon/config/schema.ts'
import { startCpuHog } from '../helpers/cpu-hog.ts'
import type { PlacementView } from '../../p2p/placement/placement.ts'

/** The daemon's defaults, so the failover figure names the settings it ran with. */
const DEFAULTS = configSchema.parse(defaultConfig({}))

type Hosts = Map<string, string>

function candidates (n: number, offset = 0): Candidate[] {
  return Array.from({ length: n }, (_, i) => ({
    peerId: `12D3KooWbench${(i + offset).toString(36).padStart(6, '0')}`,
    region: null, operator: null, tags: new Set<string>(), trusted: true, cost: 1, reliability: 1, headroom: 1, coordinate: null
  }))
}

function world (shards: number): ShardInfo[] {
  const side = Math.ceil(Math.sqrt(shards))
  return new World(worldSchema.parse({ maxX: side, maxY: side, cellSize: 1, layers: [{ name: 'w', consistency: 'host' }] })).all().slice(0, shards)
}

const strategies: Record<string, (shards: ShardInfo[], nodes: Candidate[]) => Hosts> = {
  'metagrid (rendezvous, bounded loads ε=0.25)': (shards, nodes) => new Map([...assign(shards, nodes, new Policy(), { ...defaultPlacementParams, replicas: 0 })].map(([s, a]) => [s, a.host!])),
  'rendezvous (unbounded)': (shards, nodes) => {
    const hashes = nodes.map((n) => hash32(n.peerId))
    return new Map(shards.map((s) => {
      const h = hash32(s.id)
      let best = 0
      for (let i = 1; i < nodes.length; i++) if (rendezvous(h, hashes[i]!) > rendezvous(h, hashes[best]!)) best = i
      return [s.id, nodes[best]!.peerId]
    }))
  },
  'modulo hashing': (shards, nodes) => {
    const sorted = [...nodes].sort((a, b) => (a.peerId < b.peerId ? -1 : 1))
    return new Map(shards.map((s) => [s.id, sorted[hash32(s.id) % sorted.length]!.peerId]))
  }
}

function moved (a: Hosts, b: Hosts): number {
  let count = 0
  for (const [shard, host] of a) if (b.get(shard) !== host) count++
  return count / a.size
}

function maxOverMean (hosts: Hosts, n: number): number {
  const counts = new Map<string, number>()
  for (const host of hosts.values()) counts.set(host, (counts.get(host) ?? 0) + 1)
  return Number((Math.max(...counts.values()) / (hosts.size / n)).toFixed(3))
}

function churn (shardCount: number, n: number): Record<string, unknown> {
  const shards = world(shardCount)
  const base = candidates(n)
  const joined = [...base, ...candidates(1, 1_000_000)]
  const left = base.slice(1)
  const rows: Record<string, unknown> = {}
  for (const [name, strategy] of Object.entries(strategies)) {
    const before = strategy(shards, base)
    rows[name] = {
      movedOnJoin: Number(moved(before, strategy(shards, joined)).toFixed(4)),
      movedOnLeave: Number(moved(before, strategy(shards, left)).toFixed(4)),
      maxOverMean: maxOverMean(before, n)
    }
  }
  return { shards: shardCount, nodes: n, idealOnJoin: Number((1 / (n + 1)).toFixed(4)), idealOnLeave: Number((1 / n).toFixed(4)), strategies: rows }
}

function computeTime (shardCount: number, n: number, rounds: number): Record<string, unknown> {
  const shards = world(shardCount)
  const nodes = candidates(n)
  const times: Record<string, number[]> = {}
  for (const [name, strategy] of Object.entries(strategies)) {
    times[name] = []
    for (let r = 0; r < rounds; r++) {
      const started = process.hrtime.bigint()
      strategy(shards, nodes)
      times[name].push(Number(process.hrtime.bigint() - started) / 1e6)
    }
  }
  // With the default two replicas, which is what a node computes each tick.
  const withReplicas: number[] = []
  for (let r = 0; r < rounds; r++) {
    const started = process.hrtime.bigint()
    assign(shards, nodes, new Policy(), defaultPlacementParams)
    withReplicas.push(Number(process.hrtime.bigint() - started) / 1e6)
  }
  return {
    shards: shardCount,
    nodes: n,
    ms: { ...Object.fromEntries(Object.entries(times).map(([k, v]) => [k, summary(v)])), 'metagrid with 2 replicas': summary(withReplicas) }
  }
}

/**
 * kill -9 of a shard's host on a 4-daemon testbed with the default failure
 * detection and liveness settings, until another node answers a write to
 * that shard (200): the client's view of failover. Also when another node
 * first sees a valid lease of the next epoch.
 */
async function failover (trials: number, hog: boolean): Promise<Record<string, unknown>> {
  const cpuHog = hog ? await startCpuHog() : null
  const bed = await Testbed.start({ cities: pickCities(4), env: placementTestEnv({ side: 400 }) })
  const writes: number[] = []
  const leases: number[] = []
  try {
    const view = async (i: number): Promise<PlacementView> => (await fetch(`${bed.nodes[i]!.api}/v1/placement`)).json() as Promise<PlacementView>
    const settled = async (live: number[]): Promise<PlacementView> => {
      for (;;) {
        const views = await Promise.all(live.map(view))
        const v = views[0]!
        if (v.candidates.length === live.length && v.shards.every((s) => s.lease?.valid === true && s.lease.holder === s.host) && views.every((x) => x.digest === v.digest)) return v
        await sleep(250)
      }
    }
    const write = async (i: number, shard: string): Promise<boolean> => {
      try {
        const response = await fetch(`${bed.nodes[i]!.api}/v1/shards/${shard}/entities/probe`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ components: { t: Date.now() } }), signal: AbortSignal.timeout(1_000) })
        await response.arrayBuffer()
        return response.status === 200
      } catch {
        return false
      }
    }
    for (let trial = 0; trial < trials; trial++) {
      const victim = 1 + (trial % 3)
      const before = await settled([0, 1, 2, 3])
      const shard = before.shards.find((s) => s.lease!.holder === bed.nodes[victim]!.peerId)!
      const live = [0, 1, 2, 3].filter((i) => i !== victim)
      const killedAt = Date.now()
      await bed.kill(victim)
      let leaseAt: number | null = null
      for (;;) {
        const [served, s] = await Promise.all([
          Promise.all(live.map(async (i) => write(i, shard.shard))),
          view(0).then((v) => v.shards.find((x) => x.shard === shard.shard)!)
        ])
        if (leaseAt == null && s.lease?.valid === true && s.lease.holder !== shard.lease!.holder) leaseAt = Date.now()
        if (served.some((ok) => ok)) break
        await sleep(25)
      }
      writes.push(Date.now() - killedAt)
      leases.push((leaseAt ?? Date.now()) - killedAt)
      await bed.restart(victim)
    }
  } finally {
    await bed.stop()
    await cpuHog?.stop()
  }
  return { trials, hog, writeServedMs: summary(writes, 0), nextEpochSeenMs: summary(leases, 0) }
}

/**
 * What the majority write concern costs: PUT latency at a shard's host on a
 * 4-daemon testbed in emulated cities, for a host layer with the default
 * `majority` concern beside the same layer set to `local`, one writer at a
 * time and 16 at once (group commit shares the round trip to the voters).
 */
async function writeConcern (): Promise<Record<string, unknown>> {
  const layers = [{ name: 'physics', consistency: 'host' }, { name: 'quick', consistency: 'host', writeConcern: 'local' }]
  const bed = await Testbed.start({ cities: pickCities(4), env: { ...placementTestEnv({ side: 400 }), METAGRID_PLACEMENT_WORLD_LAYERS: JSON.stringify(layers) } })
  try {
    // Settled: every shard leased to its desired host, with the voters placement wants.
    let v: PlacementView
    for (;;) {
      v = await (await fetch(`${bed.nodes[0]!.api}/v1/placement`)).json() as PlacementView
      if (v.candidates.length === 4 && v.shards.every((x) => x.lease?.valid === true && x.lease.holder === x.host && x.lease.voters.length === 3)) break
      await sleep(500)
    }
    await sleep(5_000)
    const indexOf = (peer: string): number => bed.nodes.findIndex((n) => n.peerId === peer)
    const put = async (node: number, shard: string, entity: string): Promise<number> => {
      const started = performance.now()
      const response = await fetch(`${bed.nodes[node]!.api}/v1/shards/${shard}/entities/${entity}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ components: { v: 1 } }) })
      await response.arrayBuffer()
      if (response.status !== 200) throw new Error(`write to ${shard} answered ${response.status}`)
      return performance.now() - started
    }
    // The same cell in both layers, with the same host when there is one, so the two differ only in the concern.
    const cells = v.shards.filter((x) => x.shard.startsWith('physics.')).map((x) => x.shard.slice('physics.'.length))
    const holderOf = (id: string): string | undefined => v.shards.find((x) => x.shard === id)?.lease?.holder
    const cell = cells.find((c) => holderOf(`physics.${c}`) === holderOf(`quick.${c}`)) ?? cells[0]!
    const measure = async (layer: string): Promise<Record<string, unknown>> => {
      const shard = v.shards.find((x) => x.shard === `${layer}.${cell}`)!
      const host = indexOf(shard.lease!.holder)
      const voterRtts = shard.lease!.voters.filter((p) => p !== shard.lease!.holder).map((p) => Math.round(bed.rttMs(host, indexOf(p))))
      const sequential: number[] = []
      for (let i = 0; i < 200; i++) sequential.push(await put(host, shard.shard, `s${i}`))
      const concurrent: number[] = []
      const started = performance.now()
      await Promise.all(Array.from({ length: 16 }, async (_, w) => { for (let i = 0; i < 25; i++) concurrent.push(await put(host, shard.shard, `c${w}-${i}`)) }))
      const seconds = (performance.now() - started) / 1000
      return { shard: shard.shard, emulatedRttToVotersMs: voterRtts, oneWriterMs: summary(sequential), sixteenWritersMs: summary(concurrent), sixteenWritersPerS: Math.round(concurrent.length / seconds) }
    }
    return { majority: await measure('physics'), local: await measure('quick') }
  } finally {
    await bed.stop()
  }
}

export async function run (): Promise<Record<string, unknown>> {
  return {
    churn: [churn(10_000, 10), churn(10_000, 100), churn(10_000, 1_000)],
    compute: computeTime(10_000, 1_000, 5),
    writeConcern: await writeConcern(),
    failover: {
      settings: `defaults: probes every ${DEFAULTS.probes.intervalMs} ms (${DEFAULTS.probes.timeoutMs} ms timeout), Lifeguard suspicion, keepalives every ${DEFAULTS.placement.liveness.intervalMs} ms, liveness timeout ${DEFAULTS.placement.liveness.timeoutMs} ms`,
      idle: await failover(12, false),
      // One core of two burnt by another process: what an edge box running other work looks like.
      cpuHog: await failover(12, true)
    }
  }
}
