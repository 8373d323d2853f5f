/**
 * Daemon footprint: time from process start to the ready line (first start,
 * which creates the identity, and restart), resident memory of an idle node,
 * and CPU and resident memory of each node of an idle 5-node devnet (with
 * placement, leases, membership and telemetry at their defaults) sampled
 * over time so a creeping leak shows. Beside it, in the same run: five bare
 * libp2p 3 nodes with the same services (bare-libp2p.ts) and an empty Node
 * process on the same runtime.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cleanDaemonEnv, spawnDaemon, type DaemonProcess } from '../../daemon/process.ts'
import { cpuSeconds, rssMiB, sleep, summary } from './harness.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'

const START_RUNS = Number(process.env.BENCH_START_RUNS ?? 7)
const DEVNET_NODES = 5
/** How long the devnet idles while RSS and CPU are sampled; long enough for DHT self-queries, gossip heartbeats and V8's first major collections. */
const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 180)
/** CPU is measured after this warm-up (start-up, first placement and lease rounds). */
const WARMUP_SECONDS = 30
const SAMPLE_EVERY_S = 5

function daemon (dataDir: string, bootstrap: string[] = []): DaemonProcess {
  return spawnDaemon({
    args: ['--data-dir', dataDir, '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--log-format', 'json', ...bootstrap.flatMap((a) => ['--bootstrap', a])],
    env: cleanDaemonEnv(process.env)
  })
}

async function timeToReady (dataDir: string): Promise<number> {
  const node = daemon(dataDir)
  await node.ready
  const ms = node.readyAt! - node.spawnedAt
  await node.stop()
  return ms
}

/** Samples RSS (and optionally heap) of the processes every few seconds while they idle; CPU over the time after the warm-up. */
async function idle (pids: number[], heap?: () => Promise<number[]>): Promise<Record<string, unknown>> {
  const samples: Array<Record<string, number>> = []
  let cpuAtWarm: number[] | undefined
  let warmAt = 0
  for (let t = 0; t <= IDLE_SECONDS; t += SAMPLE_EVERY_S) {
    if (t === WARMUP_SECONDS) {
      cpuAtWarm = await Promise.all(pids.map(cpuSeconds))
      warmAt = performance.now()
    }
    const rss = await Promise.all(pids.map(rssMiB))
    const heapUsed = heap != null ? await heap() : undefined
    samples.push({ t, meanRssPerNode: summary(rss).mean, maxRssPerNode: summary(rss).max, ...(heapUsed != null ? { heapUsedMeanPerNode: summary(heapUsed).mean } : {}) })
    if (t < IDLE_SECONDS) await sleep(SAMPLE_EVERY_S * 1000)
  }
  const cpuNow = await Promise.all(pids.map(cpuSeconds))
  const seconds = (performance.now() - warmAt) / 1000
  const cpuPercent = cpuNow.map((c, i) => (100 * (c - cpuAtWarm![i]!)) / seconds)
  const rssEnd = await Promise.all(pids.map(rssMiB))
  return {
    cpuPercentPerNode: summary(cpuPercent),
    rssMiBPerNodeAtEnd: summary(rssEnd),
    rssGrowthPerNodeFromWarmUp: Number((samples[samples.length - 1]!.meanRssPerNode! - samples[WARMUP_SECONDS / SAMPLE_EVERY_S]!.meanRssPerNode!).toFixed(1)),
    overTime: samples
  }
}

/** Starts `count` bare libp2p nodes, each dialling the ones before it. */
async function bareLibp2pNodes (count: number): Promise<ChildProcess[]> {
  const script = new URL('./bare-libp2p.ts', import.meta.url).pathname
  const children: ChildProcess[] = []
  const addrs: string[] = []
  for (let i = 0; i < count; i++) {
    const child = spawn(process.execPath, [script, ...addrs], { stdio: ['ignore', 'pipe', 'inherit'] })
    children.push(child)
    addrs.push(await new Promise<string>((resolve, reject) => {
      let out = ''
      child.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString()
        if (out.includes('\n')) resolve(out.trim())
      })
      child.once('exit', (code) => { reject(new Error(`bare libp2p node exited ${code}`)) })
    }))
  }
  return children
}

async function emptyNodeRss (): Promise<number> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  await sleep(1000)
  const rss = await rssMiB(child.pid!)
  child.kill()
  return rss
}

export async function run (): Promise<Record<string, unknown>> {
  const root = await mkdtemp(join(tmpdir(), 'metagrid-bench-'))
  try {
    const first: number[] = []
    const restart: number[] = []
    for (let i = 0; i < START_RUNS; i++) {
      const dir = join(root, `start-${i}`)
      first.push(await timeToReady(dir))
      restart.push(await timeToReady(dir))
    }

    const single = daemon(join(root, 'idle'))
    await single.ready
    await sleep(10_000)
    const idleRss = await rssMiB(single.pid!)
    await single.stop()

    const seed = daemon(join(root, 'devnet-0'))
    const seedReady = await seed.ready
    const nodes = [seed]
    for (let i = 1; i < DEVNET_NODES; i++) nodes.push(daemon(join(root, `devnet-${i}`), [seedReady.addrs[0]!]))
    const apis = (await Promise.all(nodes.map(async (node) => node.ready))).map((ready) => ready.api)
    const devnet = await idle(nodes.map((node) => node.pid!), async () => Promise.all(apis.map(async (api) => (metricValue(await scrape(api), 'nodejs_heap_size_used_bytes') ?? Number.NaN) / 2 ** 20)))
    const stopCodes = await Promise.all(nodes.map(async (node) => node.stop()))

    const bare = await bareLibp2pNodes(DEVNET_NODES)
    const bareFigures = await idle(bare.map((child) => child.pid!))
    for (const child of bare) child.kill('SIGTERM')

    return {
      timeToReadyMs: { firstStart: summary(first), restart: summary(restart) },
      rssMiB: { emptyNodeProcess: await emptyNodeRss(), idleNodeAlone: idleRss },
      idleDevnet5: {
        note: `${DEVNET_NODES} nodes on loopback idle for ${IDLE_SECONDS} s; CPU from /proc after ${WARMUP_SECONDS} s of warm-up, % of one core per node`,
        metagrid: devnet,
        bareLibp2p: bareFigures
      },
      devnetStopExitCodes: stopCodes
    }
  } finally {
    await rm(root, { recursive: true, force: true })
  }
}
