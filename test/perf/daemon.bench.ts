/**
 * Daemon footprint: time from process start to the ready line (first start,
 * which creates the identity, and restart), resident memory of an idle node,
 * and of each node in a 10-node devnet sampled over time so a creeping leak
 * shows. The baseline beside it is an empty Node process on the same runtime.
 */
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cleanDaemonEnv, spawnDaemon, type DaemonProcess } from '../../daemon/process.ts'
import { rssMiB, sleep, summary } from './harness.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'

const START_RUNS = Number(process.env.BENCH_START_RUNS ?? 7)
const DEVNET_NODES = 10
/** How long the devnet idles while RSS is sampled; long enough for several DHT self-queries and gossip heartbeats. */
/** Long enough to pass V8's first major collections, so heap growth before them is not mistaken for a leak. */
const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 300)
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
    const samples: Array<{ t: number, perNode: ReturnType<typeof summary>, totalMiB: number, heapUsedMiB: ReturnType<typeof summary> }> = []
    for (let t = 0; t <= IDLE_SECONDS; t += SAMPLE_EVERY_S) {
      const rss = await Promise.all(nodes.map(async (node) => rssMiB(node.pid!)))
      const heap = await Promise.all(apis.map(async (api) => (metricValue(await scrape(api), 'nodejs_heap_size_used_bytes') ?? Number.NaN) / 2 ** 20))
      samples.push({ t, perNode: summary(rss), totalMiB: Number(rss.reduce((a, b) => a + b, 0).toFixed(1)), heapUsedMiB: summary(heap) })
      if (t < IDLE_SECONDS) await sleep(SAMPLE_EVERY_S * 1000)
    }
    const stopCodes = await Promise.all(nodes.map(async (node) => node.stop()))
    const last = samples[samples.length - 1]!
    return {
      timeToReadyMs: { firstStart: summary(first), restart: summary(restart) },
      rssMiB: {
        emptyNodeProcess: await emptyNodeRss(),
        idleNodeAlone: idleRss,
        devnet10: { perNodeAtEnd: last.perNode, totalAtEnd: last.totalMiB, perNodeGrowthFromFirstSample: Number((last.perNode.mean - samples[0]!.perNode.mean).toFixed(1)) },
        devnet10OverTime: samples.map(({ t, perNode, totalMiB, heapUsedMiB }) => ({ t, meanPerNode: perNode.mean, maxPerNode: perNode.max, totalMiB, heapUsedMeanPerNode: heapUsedMiB.mean, heapUsedMaxPerNode: heapUsedMiB.max }))
      },
      devnetStopExitCodes: stopCodes
    }
  } finally {
    await rm(root, { recursive: true, force: true })
  }
}
