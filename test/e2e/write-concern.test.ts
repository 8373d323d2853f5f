/**
 * An acknowledged write survives its host, Jepsen-style, on six daemons in
 * emulated cities with the default (majority) write concern of host layers:
 * concurrent writers stream writes at a shard's host; in some trials the
 * host's links to the other voters of its lease are cut while they write;
 * the host is killed (SIGKILL) and never comes back; the links heal; the new
 * host must hold every write that was answered 200, with its value. One
 * trial kills the host in the middle of a stream of group commits instead,
 * with no cut. Writes answered otherwise (503 WRITE_NOT_REPLICATED, 421) were
 * not acknowledged and may or may not survive. A CPU hog burns one core.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startCpuHog, type CpuHog } from '../helpers/cpu-hog.ts'
import { getJson, waitFor } from '../helpers/daemons.ts'
import { pickCities } from '../testbed/geo.ts'
import { placementTestEnv } from '../testbed/placement-env.ts'
import { Testbed } from '../testbed/testbed.ts'
import type { PlacementView } from '../../p2p/placement/placement.ts'

let bed: Testbed
let hog: CpuHog | undefined
const dead = new Set<number>()

beforeAll(async () => {
  hog = await startCpuHog()
  // 2 × 2 cells of one host layer: four shards (and the registrar) over six nodes.
  bed = await Testbed.start({ cities: pickCities(6), env: placementTestEnv({ side: 200 }) })
}, 120_000)

afterAll(async () => {
  await bed?.stop()
  await hog?.stop()
})

const live = (): number[] => bed.nodes.map((n) => n.index).filter((i) => !dead.has(i))
const indexOf = (peerId: string): number => bed.nodes.findIndex((n) => n.peerId === peerId)

interface Lease { shard: string, holder: number, epoch: number, voters: number[] }

/** A world shard whose lease is valid on every live node, held by a live node none of the earlier trials used, with live voters. */
async function stableLease (used: Set<string>): Promise<Lease> {
  return waitFor('a stable lease on a live host', async () => {
    const views = await Promise.all(live().map(async (i) => getJson<PlacementView>(bed.nodes[i]!.api, '/v1/placement').catch(() => undefined)))
    if (views.some((v) => v == null)) return undefined
    for (const s of views[0]!.shards) {
      if (!s.shard.startsWith('physics.') || used.has(s.shard) || s.lease?.valid !== true || s.lease.holder !== s.host) continue
      const holder = indexOf(s.lease.holder)
      const voters = s.lease.voters.map(indexOf)
      // Settled: the voters are the host and its two replicas as placement wants them. A lease taken before the
      // replicas were known (the host alone, or others) is about to be reconfigured, and the cut would miss its new voters.
      const wanted = [s.host!, ...s.replicas].sort().join()
      if (voters.length !== 3 || [...s.lease.voters].sort().join() !== wanted || dead.has(holder) || voters.some((v) => v < 0 || dead.has(v))) continue
      if (!views.every((v) => v!.shards.some((x) => x.shard === s.shard && x.lease?.valid === true && x.lease.holder === s.lease!.holder && x.lease.epoch === s.lease!.epoch))) continue
      return { shard: s.shard, holder, epoch: s.lease.epoch, voters }
    }
    return undefined
  }, 90_000, 500)
}

async function put (node: number, shard: string, entity: string, value: number): Promise<number> {
  try {
    const response = await fetch(`${bed.nodes[node]!.api}/v1/shards/${shard}/entities/${entity}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ components: { v: value } }),
      signal: AbortSignal.timeout(5_000)
    })
    await response.body?.cancel()
    return response.status
  } catch {
    return 0
  }
}

/** Writers streaming writes at one node until stopped: which writes were answered 200, and the other answers by status. */
function writers (node: number, shard: string, count: number, tag: string): { stop: () => Promise<void>, acked: Map<string, number>, ackedAt: number[], statuses: Map<number, number> } {
  const acked = new Map<string, number>()
  const ackedAt: number[] = []
  const statuses = new Map<number, number>()
  let running = true
  const loops = Array.from({ length: count }, async (_, w) => {
    for (let seq = 0; running; seq++) {
      const entity = `${tag}-${w}-${seq}`
      const status = await put(node, shard, entity, seq)
      statuses.set(status, (statuses.get(status) ?? 0) + 1)
      if (status === 200) {
        acked.set(entity, seq)
        ackedAt.push(Date.now())
      }
      // A refused node answers at once; do not spin on it.
      if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 20))
    }
  })
  return { acked, ackedAt, statuses, stop: async () => { running = false; await Promise.all(loops) } }
}

/** Every entity of a shard as one node holds it. */
async function entities (node: number, shard: string): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  let after: string | undefined
  for (;;) {
    const page = await getJson<{ entities: Array<{ entity: string, components: { v?: number } }>, next?: string }>(bed.nodes[node]!.api, `/v1/shards/${shard}?limit=10000${after != null ? `&after=${after}` : ''}`)
    for (const e of page.entities) if (typeof e.components.v === 'number') out.set(e.entity, e.components.v)
    if (page.next == null) return out
    after = page.next
  }
}

/** Waits for a new host of the shard among the survivors, then checks it holds every acknowledged write. */
async function checkSurvived (lease: Lease, acked: Map<string, number>): Promise<{ newHost: number, lost: string[] }> {
  const deadline = Date.now() + 55_000
  const next = await waitFor(`a new host of ${lease.shard}`, async () => {
    // What the survivors saw, for the log, when the takeover is about to time out.
    if (Date.now() > deadline) {
      for (const i of live()) {
        const row = (await getJson<PlacementView>(bed.nodes[i]!.api, '/v1/placement')).shards.find((x) => x.shard === lease.shard)
        console.log(`node ${i}: host ${indexOf(row?.host ?? '')}, replicas ${row?.replicas.map(indexOf).join(',')}, lease ${row?.lease == null ? '-' : `${indexOf(row.lease.holder)}@${row.lease.epoch} valid=${row.lease.valid} voters ${row.lease.voters.map(indexOf).join(',')}`}`)
      }
    }
    const v = await getJson<PlacementView>(bed.nodes[live()[0]!]!.api, '/v1/placement')
    const s = v.shards.find((x) => x.shard === lease.shard)
    if (s?.lease?.valid !== true || s.lease.epoch <= lease.epoch || dead.has(indexOf(s.lease.holder))) return undefined
    // Served: the new host takes a write (it has pulled the state of a majority of the previous voters).
    const host = indexOf(s.lease.holder)
    return (await put(host, lease.shard, 'probe', 0)) === 200 ? host : undefined
  }, 60_000, 250)
  const held = await entities(next, lease.shard)
  const lost = [...acked].filter(([entity, value]) => held.get(entity) !== value).map(([entity]) => entity)
  return { newHost: next, lost }
}

describe('acknowledged writes survive their host', () => {
  const used = new Set<string>()

  for (const trial of [1, 2]) {
    it(`trial ${trial}: the host's links to its voters are cut while writers write, then it is killed and never returns; no answered write is lost`, async () => {
      const lease = await stableLease(used)
      used.add(lease.shard)
      const run = writers(lease.holder, lease.shard, 4, `t${trial}`)
      // Enough answered writes before the cut for the trial to mean something (how long that takes depends on the machine's load).
      await waitFor('a dozen answered writes before the cut', async () => run.acked.size > 10, 30_000, 100)
      const beforeCut = run.acked.size
      const others = lease.voters.filter((v) => v !== lease.holder)
      for (const v of others) bed.cut(lease.holder, v)
      const cutAt = Date.now()
      await new Promise((resolve) => setTimeout(resolve, 2_500))
      await bed.kill(lease.holder)
      dead.add(lease.holder)
      await run.stop()
      for (const v of others) bed.heal(lease.holder, v)
      const { newHost, lost } = await checkSurvived(lease, run.acked)
      const lateAcks = run.ackedAt.filter((t) => t > cutAt + 500).length
      console.log(`trial ${trial} (${lease.shard}, host ${lease.holder} → ${newHost}, voters ${lease.voters.join(',')}): ${run.acked.size} writes answered (${beforeCut} before the cut, ${lateAcks} more than 500 ms after it), answers ${JSON.stringify(Object.fromEntries(run.statuses))}, ${lost.length} lost`)
      expect(beforeCut).toBeGreaterThan(10)
      // The cut took: no write was answered once the voters could no longer hear of it (a write in flight at the cut may still be).
      expect(lateAcks).toBe(0)
      expect(lost).toEqual([])
    }, 180_000)
  }

  it('trial 3: the host is killed in the middle of a stream of group commits; no answered write is lost', async () => {
    const lease = await stableLease(used)
    used.add(lease.shard)
    const run = writers(lease.holder, lease.shard, 16, 't3')
    // Long enough for many group commits; the kill lands while sixteen writes are in flight.
    await waitFor('writes flowing', async () => (run.acked.size > 200 ? true : undefined), 30_000, 20)
    await bed.kill(lease.holder)
    dead.add(lease.holder)
    await run.stop()
    const { newHost, lost } = await checkSurvived(lease, run.acked)
    console.log(`trial 3 (${lease.shard}, host ${lease.holder} → ${newHost}): ${run.acked.size} writes answered, answers ${JSON.stringify(Object.fromEntries(run.statuses))}, ${lost.length} lost`)
    expect(lost).toEqual([])
  }, 180_000)
})
