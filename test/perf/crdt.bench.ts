/**
 * Shard state: this CRDT beside Yjs and Automerge on the same world-state
 * workload (each in a child process of its own, see crdt-workload.ts), and
 * convergence time across five replicas (real daemons on loopback) while
 * writes arrive at 1,000 and 10,000 updates per second.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { cleanDaemonEnv, spawnDaemon, type DaemonProcess } from '../../daemon/process.ts'
import { cpuSeconds, sleep } from './harness.ts'

const execFileAsync = promisify(execFile)
const WORKLOAD = new URL('./crdt-workload.ts', import.meta.url).pathname
const REPLICAS = 5
const RATES = (process.env.BENCH_CRDT_RATES ?? '1000,10000').split(',').map(Number)
const WINDOW_S = Number(process.env.BENCH_CRDT_WINDOW_S ?? 20)
const TICKS_PER_S = 50
const ENTITIES = 10_000

async function workload (implementation: string, entities: number): Promise<Record<string, unknown>> {
  const { stdout } = await execFileAsync(process.execPath, ['--expose-gc', WORKLOAD, implementation, String(entities)], { maxBuffer: 1 << 20, timeout: 900_000 })
  return JSON.parse(stdout) as Record<string, unknown>
}

/** Cumulative histogram buckets of a metric, summed over several scrapes' texts. */
function buckets (texts: string[], name: string): Map<number, number> {
  const out = new Map<number, number>()
  for (const text of texts) {
    for (const match of text.matchAll(new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\S+)$`, 'gm'))) {
      const le = match[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(match[1])
      out.set(le, (out.get(le) ?? 0) + Number(match[2]))
    }
  }
  return out
}

/** A quantile from cumulative buckets, interpolating linearly inside a bucket (as Prometheus' histogram_quantile). */
function histogramQuantile (cumulative: Array<[number, number]>, q: number): number {
  const total = cumulative[cumulative.length - 1]?.[1] ?? 0
  if (total === 0) return Number.NaN
  const rank = q * total
  let previousLe = 0
  let previousCount = 0
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      if (!Number.isFinite(le)) return previousLe
      return previousLe + (le - previousLe) * ((rank - previousCount) / Math.max(1, count - previousCount))
    }
    previousLe = le
    previousCount = count
  }
  return previousLe
}

async function scrapeAll (nodes: Array<{ api: string }>): Promise<string[]> {
  return Promise.all(nodes.map(async (node) => (await fetch(`${node.api}/metrics`)).text()))
}

async function shardDigest (api: string): Promise<string> {
  const view = await (await fetch(`${api}/v1/shards/default?limit=10000`)).json() as { entities: unknown, counters: unknown }
  return JSON.stringify([view.entities, view.counters])
}

async function convergence (rate: number): Promise<Record<string, unknown>> {
  const root = await mkdtemp(join(tmpdir(), 'metagrid-bench-crdt-'))
  const processes: DaemonProcess[] = []
  const start = (bootstrap: string[]): DaemonProcess => {
    const child = spawnDaemon({
      args: ['--data-dir', join(root, `n${processes.length}`), '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--log-format', 'json', '--log-level', 'warn', ...bootstrap.flatMap((a) => ['--bootstrap', a])],
      env: cleanDaemonEnv(process.env)
    })
    processes.push(child)
    return child
  }
  try {
    const first = await start([]).ready
    for (let i = 1; i < REPLICAS; i++) start([first.addrs[0]!])
    const nodes = await Promise.all(processes.map(async (p) => p.ready))
    // Every replica in every other's gossip mesh for the shard before the clock starts.
    await sleep(8_000)
    const perTick = Math.max(1, Math.round(rate / TICKS_PER_S))
    const before = await scrapeAll(nodes)
    const cpuBefore = await Promise.all(processes.map(async (p) => cpuSeconds(p.pid!)))
    const began = performance.now()
    let sent = 0
    let failed = 0
    let tick = 0
    const inFlight = new Set<Promise<void>>()
    while (performance.now() - began < WINDOW_S * 1000) {
      tick++
      // Each tick's updates go to one replica in turn, as one batch.
      const node = nodes[tick % nodes.length]!
      const ops = Array.from({ length: perTick }, (_, i) => {
        const entity = `e${(tick * perTick + i) % ENTITIES}`
        return { op: 'patch', entity, components: { pos: { x: tick, y: i } } }
      })
      const request = fetch(`${node.api}/v1/shards/default/batch`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ops }) })
        .then(async (response) => { if (response.ok) sent += perTick; else failed += perTick; await response.arrayBuffer() }, () => { failed += perTick })
      inFlight.add(request)
      void request.finally(() => inFlight.delete(request))
      const due = began + (tick * 1000) / TICKS_PER_S
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
    }
    await Promise.all([...inFlight])
    const elapsedS = (performance.now() - began) / 1000
    // Until every replica holds the same state.
    const stopped = performance.now()
    let equalAfterMs: number | null = null
    while (performance.now() - stopped < 60_000) {
      const digests = await Promise.all(nodes.map(async (node) => shardDigest(node.api)))
      if (digests.every((digest) => digest === digests[0])) {
        equalAfterMs = Math.round(performance.now() - stopped)
        break
      }
      await sleep(100)
    }
    const after = await scrapeAll(nodes)
    const cpuAfter = await Promise.all(processes.map(async (p) => cpuSeconds(p.pid!)))
    const name = 'metagrid_crdt_convergence_seconds'
    const b0 = buckets(before, name)
    const b1 = buckets(after, name)
    const cumulative = [...b1.entries()].sort(([a], [b]) => a - b).map(([le, count]) => [le, count - (b0.get(le) ?? 0)] as [number, number])
    const applied = cumulative[cumulative.length - 1]?.[1] ?? 0
    return {
      targetUpdatesPerS: rate,
      achievedUpdatesPerS: Math.round(sent / elapsedS),
      failedUpdates: failed,
      remoteApplies: applied,
      expectedRemoteApplies: sent * (REPLICAS - 1),
      convergenceMs: {
        p50: Number((histogramQuantile(cumulative, 0.5) * 1000).toFixed(1)),
        p90: Number((histogramQuantile(cumulative, 0.9) * 1000).toFixed(1)),
        p99: Number((histogramQuantile(cumulative, 0.99) * 1000).toFixed(1))
      },
      allReplicasEqualMsAfterLastWrite: equalAfterMs,
      cpuPercentPerReplica: Number((cpuAfter.reduce((sum, c, i) => sum + c - cpuBefore[i]!, 0) / REPLICAS / elapsedS * 100).toFixed(1))
    }
  } finally {
    await Promise.all(processes.map(async (p) => p.stop()))
    await rm(root, { recursive: true, force: true })
  }
}

export async function run (): Promise<Record<string, unknown>> {
  const sideBySide = {
    workload: '10,000 entities x 2 components (pos {x,y}, hp), each overwritten 50 times = 1,000,000 updates, batches of 1,000',
    metagrid: await workload('metagrid', ENTITIES),
    // As the daemon runs it: every batch signed by its origin and checked by the receiver.
    metagridSigned: await workload('metagrid-signed', ENTITIES),
    yjs: await workload('yjs', ENTITIES),
    // Automerge needs minutes for the full workload; a tenth of it shows its rate (it only gets slower as the document grows).
    automergeTenth: await workload('automerge', ENTITIES / 10),
    metagridTenth: await workload('metagrid', ENTITIES / 10),
    yjsTenth: await workload('yjs', ENTITIES / 10)
  }
  const m = sideBySide.metagrid as Record<string, number>
  const y = sideBySide.yjs as Record<string, number>
  const ratios = {
    localThroughputVsYjs: Number((m.localUpdatesPerS! / y.localUpdatesPerS!).toFixed(2)),
    applyThroughputVsYjs: Number((m.applyUpdatesPerS! / y.applyUpdatesPerS!).toFixed(2)),
    snapshotSizeVsYjs: Number((m.snapshotBytes! / y.snapshotBytes!).toFixed(3))
  }
  const convergenceRuns = []
  for (const rate of RATES) convergenceRuns.push(await convergence(rate))
  return { sideBySide, ratios, convergence: { replicas: REPLICAS, windowS: WINDOW_S, network: 'loopback, no emulated delay', runs: convergenceRuns } }
}
