/**
 * Discovery in a 20-node mesh whose links carry emulated latency: time to the
 * first and to the complete answer, and precision@k of the nearest nodes
 * returned against the true nearest by the emulated matrix. Beside it, in the
 * same run: a random order (what a catalog without latency knowledge gives)
 * and the order of directly measured RTTs (what pinging every candidate
 * gives, at the cost coordinates avoid).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getJson, waitFor } from '../helpers/daemons.ts'
import { pickCities } from '../testbed/geo.ts'
import { Testbed } from '../testbed/testbed.ts'
import { sleep, summary } from './harness.ts'
import type { DiscoveryAnswer } from '../../p2p/catalog/discovery.ts'
import type { MeshView } from '../../p2p/mesh.ts'

const NODES = 20
/** Half the nodes declare a GPU, so a `need=gpu` query has 10 candidates to rank. */
const hasGpu = (index: number): boolean => index % 2 === 0
const KS = [1, 3, 5]
const SETTLE_S = Number(process.env.BENCH_SETTLE_S ?? 90)

function precisionAt (k: number, returned: string[], truth: string[]): number {
  const top = new Set(truth.slice(0, k))
  return returned.slice(0, k).filter((peer) => top.has(peer)).length / Math.min(k, truth.length)
}

export async function run (): Promise<Record<string, unknown>> {
  const root = await mkdtemp(join(tmpdir(), 'metagrid-catalog-bench-'))
  const configs: string[] = []
  for (let i = 0; i < NODES; i++) {
    const file = join(root, `node-${i}.json`)
    await writeFile(file, JSON.stringify({
      catalog: hasGpu(i) ? { accelerators: [{ kind: 'gpu', model: 'nvidia-l4', count: 1 }], cost: { perAcceleratorHour: 1 } } : {}
    }))
    configs.push(file)
  }
  // Probes twice a second so coordinates settle within the minute and a half the bench waits (the mesh bench has the production curve).
  const bed = await Testbed.start({ cities: pickCities(NODES), env: { METAGRID_PROBES_INTERVAL_MS: '500' }, nodeArgs: (i) => ['--config', configs[i]!] })
  try {
    await waitFor('the catalog to fill', async () => (await getJson<DiscoveryAnswer>(bed.nodes[0]!.api, '/v1/discover?limit=100')).results.length === NODES, 120_000, 1000)
    await sleep(SETTLE_S * 1000)
    const index = new Map(bed.nodes.map((node) => [node.peerId, node.index]))
    const first: number[] = []
    const complete: number[] = []
    const found: number[] = []
    const precision: Record<string, Record<number, number[]>> = { coordinates: {}, random: {}, measured: {} }
    for (const method of Object.keys(precision)) for (const k of KS) precision[method]![k] = []

    for (const asker of bed.nodes) {
      const answer = await getJson<DiscoveryAnswer>(asker.api, '/v1/discover?need=gpu&limit=100')
      if (answer.timings.firstMs != null) first.push(answer.timings.firstMs)
      complete.push(answer.timings.completeMs)
      found.push(answer.results.length)
      const others = (peers: string[]): string[] => peers.filter((peer) => peer !== asker.peerId)
      const truth = others(bed.nodes.filter((node) => hasGpu(node.index)).map((node) => node.peerId))
        .sort((a, b) => bed.rttMs(asker.index, index.get(a)!) - bed.rttMs(asker.index, index.get(b)!))
      const byCoordinates = others(answer.results.map((result) => result.peerId))
      const mesh = await getJson<MeshView>(asker.api, '/v1/mesh')
      const measured = new Map(mesh.peers.map((peer) => [peer.peerId, peer.rttMeasuredMs ?? Number.POSITIVE_INFINITY]))
      const byMeasured = [...truth].sort((a, b) => measured.get(a)! - measured.get(b)!)
      const byRandom = [...truth].sort(() => Math.random() - 0.5)
      for (const k of KS) {
        precision.coordinates![k]!.push(precisionAt(k, byCoordinates, truth))
        precision.measured![k]!.push(precisionAt(k, byMeasured, truth))
        precision.random![k]!.push(precisionAt(k, byRandom, truth))
      }
    }
    const mean = (values: number[]): number => Number((values.reduce((a, b) => a + b, 0) / values.length).toFixed(3))
    return {
      nodes: NODES,
      query: 'need=gpu (10 of 20 nodes match)',
      askers: bed.nodes.length,
      coordinatesSettleS: SETTLE_S,
      timeToFirstAnswerMs: summary(first, 0),
      timeToCompleteAnswerMs: summary(complete, 0),
      // Of the 10 matching nodes, how many each answer held (a query cut by the 15 s deadline holds fewer).
      matchesFound: summary(found, 0),
      precisionAtK: Object.fromEntries(Object.entries(precision).map(([method, byK]) => [method, Object.fromEntries(KS.map((k) => [`p@${k}`, mean(byK[k]!)]))]))
    }
  } finally {
    await bed.stop()
    await rm(root, { recursive: true, force: true })
  }
}
