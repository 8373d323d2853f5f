/**
 * The planet-scale simulator, and the check of its gossip model.
 *
 * 1. **Calibration.** 10 and 30 real gossipsub nodes (test/perf/gossip-node.ts,
 *    one process each, every node connected to every other as a region's
 *    members are) publish a load-report-sized message every 5 s; the bytes
 *    each process writes to its sockets over 30 s (/proc/PID/io) beside what
 *    the simulator's gossip model (test/sim/gossip-model.ts) says for the
 *    same topic.
 * 2. **The grid at 10,000 nodes in 40 regions** for 600 simulated seconds with
 *    churn, failover trials, a partitioned region, a lost region and a flash
 *    crowd (`npm run sim` with its defaults), beside **the flat grid of
 *    today** (one region: every node tracks, probes and hears every node) at
 *    1,000 nodes, and the hierarchy at the same 1,000 nodes in 4 regions.
 *    Each run is its own process, so its heap is its own. Last, the 10,000
 *    nodes again with load reports every 30 s and gossip factor 0.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { eagerBytesPerMember, lazyBytesPerMemberPerS, messageWireBytes } from '../sim/gossip-model.ts'
import { loadReportPayloadBytes, REGION_TELEMETRY_TOPIC } from '../sim/simulator.ts'
import { sleep, summary } from './harness.ts'

const NODE = process.execPath
const GOSSIP_NODE = new URL('./gossip-node.ts', import.meta.url).pathname
const SIM = new URL('../sim/run.ts', import.meta.url).pathname
const PUBLISH_MS = 5_000
const WINDOW_S = 30

async function writtenBytes (pid: number): Promise<number> {
  const io = await readFile(`/proc/${pid}/io`, 'utf8')
  return Number(/wchar: (\d+)/.exec(io)?.[1] ?? 0)
}

async function startGossipNode (size: number, peers: string[]): Promise<{ child: ChildProcess, addr: string }> {
  const child = spawn(NODE, [GOSSIP_NODE, String(size), String(PUBLISH_MS), ...peers], { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines = createInterface({ input: child.stdout! })
  const addr = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve)
    child.once('exit', (code) => reject(new Error(`gossip node exited with ${code}`)))
  })
  return { child, addr }
}

/** Each node's mesh degree in the topic, as it reports on SIGUSR2. */
async function meshDegrees (children: ChildProcess[]): Promise<number[]> {
  return Promise.all(children.map(async (child) => new Promise<number>((resolve) => {
    const lines = createInterface({ input: child.stderr! })
    const timer = setTimeout(() => resolve(Number.NaN), 5_000)
    lines.on('line', (line) => {
      const m = /mesh=(-?\d+)/.exec(line)
      if (m == null) return
      clearTimeout(timer)
      lines.close()
      resolve(Number(m[1]))
    })
    child.kill('SIGUSR2')
  })))
}

export async function calibrate (nodes: number): Promise<Record<string, unknown>> {
  const size = loadReportPayloadBytes()
  const started: Array<{ child: ChildProcess, addr: string }> = []
  try {
    for (let i = 0; i < nodes; i++) started.push(await startGossipNode(size, started.map((s) => s.addr)))
    // The mesh forms over a few heartbeats; the first publications go out meanwhile.
    await sleep(20_000)
    const before = await Promise.all(started.map(async (s) => writtenBytes(s.child.pid!)))
    const t0 = performance.now()
    await sleep(WINDOW_S * 1_000)
    const after = await Promise.all(started.map(async (s) => writtenBytes(s.child.pid!)))
    const elapsed = (performance.now() - t0) / 1_000
    const mesh = await meshDegrees(started.map((s) => s.child))
    const measured = after.map((v, i) => (v - before[i]!) / elapsed)
    const messagesPerS = nodes / (PUBLISH_MS / 1_000)
    const wire = messageWireBytes(size, REGION_TELEMETRY_TOPIC)
    const modelled = messagesPerS * eagerBytesPerMember(nodes, wire) + lazyBytesPerMemberPerS(nodes, messagesPerS, REGION_TELEMETRY_TOPIC)
    const p50 = summary(measured, 0).p50
    return {
      nodes,
      payloadBytes: size,
      publishEveryMs: PUBLISH_MS,
      measuredBytesSentPerNodePerS: summary(measured, 0),
      // gossipsub keeps between Dlo (4) and Dhi (12) mesh peers; the model takes 7 (GOSSIP_EFFECTIVE_D).
      meshPeersPerNode: summary(mesh, 1),
      modelledBytesSentPerNodePerS: Math.round(modelled),
      modelOverMeasured: Number((modelled / p50).toFixed(2))
    }
  } finally {
    for (const s of started) s.child.kill('SIGKILL')
  }
}

async function simulate (args: string[]): Promise<Record<string, unknown>> {
  const dir = await mkdtemp(join(tmpdir(), 'metagrid-sim-'))
  try {
    const out = join(dir, 'sim.json')
    const child = spawn(NODE, ['--expose-gc', '--max-old-space-size=16384', SIM, ...args, '--out', out, '--no-pictures'], { stdio: ['ignore', 'inherit', 'pipe'] })
    let last = ''
    child.stderr!.on('data', (chunk: Buffer) => {
      last = chunk.toString().trim().split('\n').at(-1) ?? last
      process.stderr.write(chunk)
    })
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
    if (code !== 0) throw new Error(`sim ${args.join(' ')} exited with ${code}: ${last}`)
    const result = JSON.parse(await readFile(out, 'utf8')) as Record<string, unknown>
    // The time series are for the pictures; the bench keeps the figures.
    delete result.samples
    return result
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/**
 * Failure detection beside the real daemons: the simulator's kill -9 (a crash that closes the node's connections)
 * in a flat 10-node grid spread over the testbed's first 10 cities, as the mesh bench's daemons are, and its figures for 10 daemons on the testbed (its latest run, read from
 * results/mesh.json: the daemons are not run twice).
 */
async function detection (): Promise<Record<string, unknown>> {
  const sim = await simulate(['--nodes', '10', '--regions', '1', '--seed', '1', '--duration', '400', '--kill-trials', '12', '--churn', '0', '--crash-closes', '--spread-over', '10'])
  const mesh = JSON.parse(await readFile(new URL('./results/mesh.json', import.meta.url), 'utf8')) as { startedAt: string, figures: { failureDetection: { suspectMs: unknown, deadMs: unknown } } }
  const d = sim.detection as { suspectMs: { p50: number } | null, deadMs: { p50: number } | null }
  const real = mesh.figures.failureDetection as { suspectMs: { p50: number }, deadMs: { p50: number } }
  return {
    sim: d,
    daemons: { measuredAt: mesh.startedAt, suspectMs: real.suspectMs, deadMs: real.deadMs },
    ratio: { suspectP50: d.suspectMs == null ? null : d.suspectMs.p50 / real.suspectMs.p50, deadP50: d.deadMs == null ? null : d.deadMs.p50 / real.deadMs.p50 }
  }
}

export async function run (): Promise<Record<string, unknown>> {
  const calibration = { nodes10: await calibrate(10), nodes30: await calibrate(30), detection: await detection() }
  const hierarchy10k = await simulate(['--nodes', '10000', '--regions', '40', '--seed', '1', '--duration', '600'])
  const flat1k = await simulate(['--nodes', '1000', '--regions', '1', '--seed', '1', '--duration', '600'])
  const hierarchy1k = await simulate(['--nodes', '1000', '--regions', '4', '--seed', '1', '--duration', '600'])
  // The small end of the growth table: 100 nodes flat, and in 4 regions of 25.
  const flat100 = await simulate(['--nodes', '100', '--regions', '1', '--seed', '1', '--duration', '600'])
  const hierarchy100 = await simulate(['--nodes', '100', '--regions', '4', '--seed', '1', '--duration', '600'])
  // The two settings the runs above point at: load reports every 30 s (placement moves shards only after minutes of
  // hysteresis) and IHAVE to Dlazy peers only; not the daemon's defaults yet.
  const hierarchy10kQuiet = await simulate(['--nodes', '10000', '--regions', '40', '--seed', '1', '--duration', '600', '--telemetry-ms', '30000', '--gossip-factor', '0'])
  return { calibration, hierarchy10k, flat1k, hierarchy1k, flat100, hierarchy100, hierarchy10kQuiet }
}
