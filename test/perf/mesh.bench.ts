/**
 * The mesh signal on the latency-emulating testbed, with production timers:
 *
 * - coordinate error against the emulated matrix over time, beside what a
 *   node would know without coordinates (one constant guess: the mean RTT)
 *   and with a direct ping to every peer (the cost coordinates avoid);
 * - time until the median error settles under 15%;
 * - gossip bytes per node per second at 10 and 30 nodes (gossipsub's own
 *   traffic, from libp2p's per-protocol counters) and all P2P bytes;
 * - time from SIGKILL to suspect and to dead on every other node.
 */
import { getJson } from '../helpers/daemons.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { pickCities } from '../testbed/geo.ts'
import { Testbed } from '../testbed/testbed.ts'
import { cpuSeconds, sleep, summary } from './harness.ts'
import type { MeshView } from '../../p2p/mesh.ts'

const COORD_SECONDS = Number(process.env.BENCH_COORD_SECONDS ?? 240)
const SAMPLE_EVERY_S = 10
const GOSSIP_WINDOW_S = Number(process.env.BENCH_GOSSIP_WINDOW_S ?? 30)
const SETTLE_THRESHOLD = 0.15

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN
}

function p90 (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length * 0.9)] ?? Number.NaN
}

const round3 = (x: number): number => Number(x.toFixed(3))

async function coordinateErrors (bed: Testbed): Promise<{ estimated: number[], measured: number[], constant: number[] }> {
  const index = new Map(bed.nodes.map((node) => [node.peerId, node.index]))
  const estimated: number[] = []
  const measured: number[] = []
  const pairs: Array<{ truth: number, measured: number }> = []
  for (const node of bed.nodes) {
    const view = await getJson<MeshView>(node.api, '/v1/mesh')
    for (const peer of view.peers) {
      const truth = bed.rttMs(node.index, index.get(peer.peerId)!)
      if (peer.rttEstimateMs != null) estimated.push(Math.abs(peer.rttEstimateMs - truth) / truth)
      if (peer.rttMeasuredMs != null) {
        measured.push(Math.abs(peer.rttMeasuredMs - truth) / truth)
        pairs.push({ truth, measured: peer.rttMeasuredMs })
      }
    }
  }
  const guess = pairs.reduce((sum, pair) => sum + pair.measured, 0) / Math.max(1, pairs.length)
  return { estimated, measured, constant: pairs.map((pair) => Math.abs(guess - pair.truth) / pair.truth) }
}

async function gossipRate (bed: Testbed, seconds: number): Promise<Record<string, unknown>> {
  const read = async (): Promise<number[]> => Promise.all(bed.nodes.map(async (node) => metricValue(await scrape(node.api), 'libp2p_data_transfer_bytes_total', { protocol: '/meshsub/1.2.0 sent' }) ?? 0))
  const cpu = async (): Promise<number[]> => Promise.all(bed.nodes.map(async (node) => cpuSeconds(node.process.pid!)))
  const relayBefore = bed.bytesRelayed()
  const before = await read()
  const cpuBefore = await cpu()
  const started = performance.now()
  await sleep(seconds * 1000)
  const after = await read()
  const cpuAfter = await cpu()
  const elapsed = (performance.now() - started) / 1000
  const perNode = after.map((value, i) => (value - before[i]!) / elapsed)
  return {
    nodes: bed.nodes.length,
    windowS: Number(elapsed.toFixed(1)),
    gossipsubBytesSentPerNodePerS: summary(perNode, 0),
    // Each relayed byte was sent by one node: all P2P protocols (gossip, DHT, ping, probes, identify).
    allP2pBytesSentPerNodePerS: Math.round((bed.bytesRelayed() - relayBefore) / elapsed / bed.nodes.length),
    // All nodes share this machine's cores, so at 30 nodes the figures are taken under CPU pressure.
    cpuPercentPerNode: summary(cpuAfter.map((value, i) => (value - cpuBefore[i]!) / elapsed * 100))
  }
}

async function detection (bed: Testbed): Promise<Record<string, unknown>> {
  const victim = bed.nodes[bed.nodes.length - 1]!
  const survivors = bed.nodes.slice(0, -1)
  const killedAt = performance.now()
  await bed.kill(victim.index)
  const suspectAt = new Map<number, number>()
  const deadAt = new Map<number, number>()
  while (deadAt.size < survivors.length && performance.now() - killedAt < 120_000) {
    await Promise.all(survivors.map(async (node) => {
      if (deadAt.has(node.index)) return
      const state = (await getJson<MeshView>(node.api, '/v1/mesh')).peers.find((peer) => peer.peerId === victim.peerId)?.state
      const at = performance.now() - killedAt
      if (state === 'suspect' && !suspectAt.has(node.index)) suspectAt.set(node.index, at)
      if (state === 'dead') deadAt.set(node.index, at)
    }))
    await sleep(100)
  }
  return {
    timers: { probeIntervalMs: 500, probeTimeoutMs: 300, indirect: 3, suspicionMult: 4, suspicionMaxMult: 6, note: 'SWIM with Lifeguard, the defaults' },
    // Measured by this bench on main before the SWIM/Lifeguard membership (fixed 6 s silence, then 10 s of suspicion).
    before: { suspectMsMean: 6700, deadMsMean: 17300 },
    suspectMs: summary([...suspectAt.values()], 0),
    deadMs: summary([...deadAt.values()], 0),
    deadOnEveryNode: deadAt.size === survivors.length
  }
}

export async function run (): Promise<Record<string, unknown>> {
  const ten = await Testbed.start({ cities: pickCities(10) })
  let coordinates: Record<string, unknown>
  let gossip10: Record<string, unknown>
  let failure: Record<string, unknown>
  try {
    const start = performance.now()
    const series: Array<Record<string, number>> = []
    while ((performance.now() - start) / 1000 < COORD_SECONDS) {
      await sleep(SAMPLE_EVERY_S * 1000)
      const errors = await coordinateErrors(ten)
      series.push({
        t: Math.round((performance.now() - start) / 1000),
        estimatedMedian: round3(median(errors.estimated)),
        estimatedP90: round3(p90(errors.estimated)),
        measuredMedian: round3(median(errors.measured)),
        constantGuessMedian: round3(median(errors.constant))
      })
    }
    // Settled: from this sample on, the median stays under the threshold.
    let settleIndex = series.length
    while (settleIndex > 0 && series[settleIndex - 1]!.estimatedMedian! <= SETTLE_THRESHOLD) settleIndex--
    const last = series[series.length - 1]!
    coordinates = {
      nodes: 10,
      probeIntervalMs: 500,
      settleTimeS: settleIndex < series.length ? series[settleIndex]!.t : null,
      final: last,
      series
    }
    gossip10 = await gossipRate(ten, GOSSIP_WINDOW_S)
    failure = await detection(ten)
  } finally {
    await ten.stop()
  }

  const thirty = await Testbed.start({ cities: pickCities(30) })
  let gossip30: Record<string, unknown>
  try {
    await sleep(20_000)
    gossip30 = await gossipRate(thirty, GOSSIP_WINDOW_S)
  } finally {
    await thirty.stop()
  }
  return { coordinates, gossip: { nodes10: gossip10, nodes30: gossip30 }, failureDetection: failure }
}
