/**
 * Load gossip, coordinates and failure detection on the latency-emulating
 * testbed: ten daemon processes in ten real cities, links delayed by
 * great-circle distance at the speed of light in fibre.
 */
import { execFile } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BIN_PATH } from '../../daemon/process.ts'
import { TELEMETRY_TOPIC } from '../../p2p/constants.ts'
import { originCoordinate } from '../../p2p/coordinates/vivaldi.ts'
import { signLoadReport, type LoadReport } from '../../p2p/telemetry/load-report.ts'
import { startCpuHog, type CpuHog } from '../helpers/cpu-hog.ts'
import { getJson, waitFor } from '../helpers/daemons.ts'
import { startTestPeer } from '../helpers/libp2p.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { pickCities } from '../testbed/geo.ts'
import { Testbed } from '../testbed/testbed.ts'
import type { MeshView } from '../../p2p/mesh.ts'
import type { PrivateKey } from '@libp2p/interface'

/** Failure detection runs with its defaults; only load reports come faster, so the coordinate test has samples sooner. */
const TIMERS = {
  METAGRID_TELEMETRY_INTERVAL_MS: '500',
  // Ten daemons on two cores: placement (tested on its own testbed) would only add background load here.
  METAGRID_PLACEMENT_ENABLED: 'false'
}
/**
 * The longest detection can take by design with the defaults: a full probe
 * round before the first probe of the victim (9 members × 500 ms), a direct
 * and an indirect probe timeout, and the longest, unconfirmed suspicion
 * (β · α · 500 ms = 12 s). The measured time is logged (and benched).
 */
const DETECTION_BOUND_MS = 9 * 500 + 2 * 300 + 12_000
/** Room for a two-core machine running ten daemons beside a CPU hog. */
const SLACK_MS = 4000

/** The node whose event loop the stall test freezes. */
const STALLED = 3

let bed: Testbed

const mesh = async (index: number): Promise<MeshView> => getJson<MeshView>(bed.nodes[index]!.api, '/v1/mesh')
const stateOf = (view: MeshView, peerId: string): string | undefined => view.peers.find((peer) => peer.peerId === peerId)?.state

let hog: CpuHog | undefined

beforeAll(async () => {
  // An edge box runs other work: one of the two cores is burnt by another process throughout.
  hog = await startCpuHog()
  bed = await Testbed.start({ cities: pickCities(10), env: TIMERS })
  await Promise.all(bed.nodes.map(async (node, i) => waitFor(`node ${i} to see all 9 others alive`, async () => {
    const view = await mesh(i)
    return view.peers.filter((peer) => peer.state === 'alive').length === 9
  }, 60_000)))
})
afterAll(async () => {
  await bed?.stop()
  await hog?.stop()
})

describe('a 10-node mesh in emulated cities', () => {
  it('shows live load, states and RTT in `metagrid mesh`', async () => {
    const row = / alive .* \d+%\s+\d+%\s+0\s+0\s+[\d.]+ms\s+[\d.]+ms /
    // A measured RTT needs one probe of each peer: a round over nine members at two probes a second.
    let last = ''
    const rows = await waitFor('every peer probed once', async () => {
      const { stdout } = await promisify(execFile)(process.execPath, [BIN_PATH, 'mesh', '--api', bed.nodes[0]!.api])
      last = stdout
      const lines = stdout.split('\n').filter((line) => line.startsWith('12D3Koo'))
      return lines.length === 9 && lines.every((line) => row.test(line)) ? lines : undefined
    }, 30_000, 1_000).catch((err: unknown) => {
      // What the table showed last says which column never filled.
      console.info(`last \`metagrid mesh\` output:\n${last}`)
      throw err
    })
    for (const line of rows) expect(line).toMatch(row)
  })

  it('does not declare a node dead when only its link to one peer is cut', async () => {
    const [a, b] = [bed.nodes[1]!, bed.nodes[2]!]
    bed.cut(1, 2)
    try {
      const until = Date.now() + DETECTION_BOUND_MS + SLACK_MS
      while (Date.now() < until) {
        expect(stateOf(await mesh(1), b.peerId)).not.toBe('dead')
        expect(stateOf(await mesh(2), a.peerId)).not.toBe('dead')
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
      expect(stateOf(await mesh(1), b.peerId)).toBe('alive')
      expect(stateOf(await mesh(2), a.peerId)).toBe('alive')
    } finally {
      bed.heal(1, 2)
    }
  })

  it('declares no one dead over two minutes while one node\'s event loop stalls 500 ms every five seconds', async () => {
    const stalled = bed.nodes[STALLED]!
    const pid = stalled.process.child.pid!
    const deaths = async (): Promise<number> => (await Promise.all(bed.nodes.map(async (node) => metricValue(await scrape(node.api), 'metagrid_member_transitions_total', { to: 'dead' }) ?? 0))).reduce((a, b) => a + b, 0)
    const before = await deaths()
    const until = Date.now() + 120_000
    let stalls = 0
    while (Date.now() < until) {
      // SIGSTOP freezes the whole process: its event loop, its timers and its sockets, as a 500 ms GC pause or a blocking call would.
      process.kill(pid, 'SIGSTOP')
      await new Promise((resolve) => setTimeout(resolve, 500))
      process.kill(pid, 'SIGCONT')
      stalls++
      await new Promise((resolve) => setTimeout(resolve, 4_500))
      for (const node of bed.nodes) expect(stateOf(await mesh(node.index), node.index === STALLED ? bed.nodes[0]!.peerId : stalled.peerId), `node ${node.index}`).not.toBe('dead')
    }
    const health = metricValue(await scrape(stalled.api), 'metagrid_local_health') ?? 0
    console.info(`${stalls} stalls of 500 ms on node 3: no death; its local health is ${health}`)
    // Neither the stalled node accused anyone nor did anyone declare it dead.
    expect(await deaths()).toBe(before)
  }, 180_000)

  it('estimates RTT from coordinates within 15% (median relative error)', async () => {
    const index = new Map(bed.nodes.map((node) => [node.peerId, node.index]))
    const measure = async (): Promise<{ median: number, p90: number, pairs: number }> => {
      const errors: number[] = []
      // Node 3 was stalled 500 ms every five seconds in the test before: every RTT measured to or by it was
      // inflated on purpose, so pairs with it are left out (72 of the 90).
      for (const node of bed.nodes) {
        if (node.index === STALLED) continue
        for (const peer of (await mesh(node.index)).peers) {
          if (peer.rttEstimateMs == null || index.get(peer.peerId) === STALLED) continue
          const truth = bed.rttMs(node.index, index.get(peer.peerId)!)
          errors.push(Math.abs(peer.rttEstimateMs - truth) / truth)
        }
      }
      errors.sort((a, b) => a - b)
      return { median: errors[Math.floor(errors.length / 2)]!, p90: errors[Math.floor(errors.length * 0.9)]!, pairs: errors.length }
    }
    // Settled: this runs after the two-minute stall test, so each node has made about 300 probes at the
    // default two a second (the bench tracks the whole curve). Vivaldi keeps moving a little around its
    // fit, so five snapshots two seconds apart are read and their median kept.
    const snapshots = []
    for (let i = 0; i < 5; i++) {
      snapshots.push(await measure())
      await new Promise((resolve) => setTimeout(resolve, 2_000))
    }
    const medians = snapshots.map((snapshot) => snapshot.median).sort((a, b) => a - b)
    const median = medians[2]!
    console.info(`coordinate error after about 3 minutes on 10 emulated cities: median ${(median * 100).toFixed(1)}% (snapshots ${medians.map((m) => (m * 100).toFixed(1)).join(', ')}%), p90 ${(snapshots[2]!.p90 * 100).toFixed(1)}%`)
    await mkdir('test/artifacts', { recursive: true })
    await writeFile('test/artifacts/coordinate-error.json', JSON.stringify({ median, snapshots }, null, 2))
    expect(snapshots.every((snapshot) => snapshot.pairs === 72)).toBe(true)
    expect(median).toBeLessThanOrEqual(0.15)
  })

  it.each([
    ['MALFORMED', async () => [Uint8Array.of(0xde, 0xad, 0xbe, 0xef)]],
    ['OVERSIZED', async () => [new Uint8Array(4096)]],
    ['FORGED', async () => [await signLoadReport(await generateKeyPair('Ed25519'), report(Date.now()))]],
    ['REPLAYED', async (own: PrivateKey) => { const valid = await signLoadReport(own, report(Date.now())); return [valid, valid] }]
  ] as const)('rejects %s reports, counts them, and drops the sender\'s score', async (reason, messages) => {
    const victim = bed.nodes[0]!
    const { node: attacker, key } = await startTestPeer()
    try {
      const counted = async (): Promise<number> => metricValue(await scrape(victim.api), 'metagrid_gossip_invalid_total', { topic: 'telemetry', reason, action: 'reject' }) ?? 0
      const before = await counted()
      await attacker.dial(multiaddr(victim.addr))
      attacker.services.pubsub.subscribe(TELEMETRY_TOPIC)
      await waitFor('the victim to show up as a telemetry subscriber', () => attacker.services.pubsub.getSubscribers(TELEMETRY_TOPIC).some((peer) => peer.toString() === victim.peerId))
      for (const data of await messages(key)) {
        await attacker.services.pubsub.publish(TELEMETRY_TOPIC, data)
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
      await waitFor(`${reason} to be counted`, async () => (await counted()) === before + 1, 10_000)
      const attackerId = attacker.peerId.toString()
      const score = await waitFor('the attacker\'s score to drop', async () => {
        const { peers } = await getJson<{ peers: Array<{ peerId: string, gossipScore: number }> }>(victim.api, '/v1/peers')
        const seen = peers.find((peer) => peer.peerId === attackerId)?.gossipScore
        return seen != null && seen < 0 ? seen : undefined
      }, 20_000)
      expect(score).toBeLessThanOrEqual(-5)
    } finally {
      await attacker.stop()
    }
  })

  it('suspects and then declares dead a killed node on every other node, within the configured time', async () => {
    const victim = bed.nodes[9]!
    const killedAt = Date.now()
    await bed.kill(9)
    const survivors = bed.nodes.slice(0, 9)
    const seenSuspect = new Set<number>()
    const deadAfter = new Map<number, number>()
    while (deadAfter.size < survivors.length && Date.now() - killedAt < DETECTION_BOUND_MS + SLACK_MS) {
      await Promise.all(survivors.map(async (node) => {
        if (deadAfter.has(node.index)) return
        const state = stateOf(await mesh(node.index), victim.peerId)
        if (state === 'suspect') seenSuspect.add(node.index)
        if (state === 'dead') deadAfter.set(node.index, Date.now() - killedAt)
      }))
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    console.info(`failure detection after SIGKILL: dead on every node after ${Math.max(...deadAfter.values())} ms (bound ${DETECTION_BOUND_MS} ms + ${SLACK_MS} ms slack)`)
    expect(deadAfter.size).toBe(survivors.length)
    // Every node passed through suspect on the way (a suspicion lasts at least 2 s, polled every 100 ms).
    expect(seenSuspect.size).toBe(survivors.length)
  })
})

function report (seq: number): LoadReport {
  return { seq, timestamp: Date.now(), cpu: 0, memory: 0, accelerators: { utilisation: 0, free: 0, total: 0 }, queue: 0, shards: 0, coordinate: originCoordinate() }
}
