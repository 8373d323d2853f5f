/**
 * Placement on six daemons in emulated cities, 64 host-authoritative shards:
 * every node reports the same assignment and lease table; a region policy
 * holds for hosts and replicas; no node hosts more than the load bound; a
 * killed host's shards are taken over under the next epoch, writes naming the
 * old epoch are refused and the data written before the kill is there; the
 * old host, restarted, takes writes no more, and as a (re)joining node takes
 * back about 1/N of the shards and no more; an entity moves across a shard
 * border, and with the target host killed in the middle of the move it stays
 * exactly once, where it was. All of it with a CPU hog burning one of the
 * machine's two cores beside the six daemons.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { z } from 'zod'
import { verifyStatement } from '../../attest/statement.ts'
import { startCpuHog, type CpuHog } from '../helpers/cpu-hog.ts'
import { getJson, makeTempDir, runCli, waitFor } from '../helpers/daemons.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { pickCities } from '../testbed/geo.ts'
import { placementTestEnv } from '../testbed/placement-env.ts'
import { Testbed } from '../testbed/testbed.ts'
import type { PlacementView } from '../../p2p/placement/placement.ts'

const REGIONS = ['DE', 'US', 'JP', 'BR', 'AU', 'IN']
const ALLOWED = new Set(['DE', 'US', 'BR'])
const SHARDS = 64
/** The world's shards and the one system shard placement places beside them (the provenance ledger's registrar). */
const PLACED = SHARDS + 1
const CAP = Math.ceil(1.25 * PLACED / 6)

let bed: Testbed

const view = async (index: number): Promise<PlacementView> => getJson<PlacementView>(bed.nodes[index]!.api, '/v1/placement')
/** shard → "holder@epoch" for every shard with a valid lease. */
const leaseTable = (v: PlacementView): Map<string, string> => new Map(v.shards.filter((s) => s.lease?.valid === true).map((s) => [s.shard, `${s.lease!.holder}@${s.lease!.epoch}`]))
const holders = (v: PlacementView): Map<string, string> => new Map(v.shards.filter((s) => s.lease?.valid === true).map((s) => [s.shard, s.lease!.holder]))

async function call (index: number, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number, json: any }> {
  const response = await fetch(`${bed.nodes[index]!.api}${path}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {})
  })
  return { status: response.status, json: await response.json() }
}

/** Waits until every live node reports all shards leased, the same digest and the same lease table. */
async function agreement (live: number[], what: string, timeoutMs = 90_000): Promise<PlacementView> {
  return waitFor(what, async () => {
    if (Date.now() > deadlineFor(what, timeoutMs) - 1_000) await explainDisagreement(live)
    const views = await Promise.all(live.map(async (i) => view(i)))
    const first = views[0]!
    if (first.candidates.length !== live.length) return undefined
    if (leaseTable(first).size !== PLACED) return undefined
    const table = JSON.stringify([...leaseTable(first)].sort())
    // The desired host of every shard is its lease holder (nothing left to move), on every node.
    if (!first.shards.every((s) => s.lease?.holder === s.host)) return undefined
    return views.every((v) => v.digest === first.digest && JSON.stringify([...leaseTable(v)].sort()) === table) ? first : undefined
  }, timeoutMs, 500)
}

const deadlines = new Map<string, number>()
function deadlineFor (what: string, timeoutMs: number): number {
  if (!deadlines.has(what)) deadlines.set(what, Date.now() + timeoutMs)
  return deadlines.get(what)!
}

/** What a failed agreement looked like, for the log: per node, leased and settled shards and the shards they see differently. */
async function explainDisagreement (live: number[]): Promise<void> {
  const views = await Promise.all(live.map(async (i) => view(i)))
  // Leases a node refused to accept, by reason: a chain it cannot follow shows here.
  const refusals = await Promise.all(live.map(async (i) => (await scrape(bed.nodes[i]!.api)).split('\n').filter((line) => line.startsWith('metagrid_admission_rejected_total{') && line.includes('path="lease"')).map((line) => line.replace(/^.*reason="([^"]+)".* (\S+)$/, '$1=$2')).join(' ')))
  console.log(views.map((v, i) => `node ${live[i]}: ${v.candidates.length} candidates, ${leaseTable(v).size} leased, ${v.shards.filter((s) => s.lease?.holder === s.host).length} settled, digest ${v.digest.slice(0, 8)}, leases refused: ${refusals[i] || 'none'}`).join('\n'))
  for (const s of views[0]!.shards) {
    const rows = views.map((v) => { const x = v.shards.find((y) => y.shard === s.shard)!; return `${x.host?.slice(-4) ?? '-'}/${x.lease?.valid === true ? `${x.lease.holder.slice(-4)}@${x.lease.epoch}` : '-'}` })
    if (new Set(rows).size > 1 || rows[0]!.split('/')[0] !== rows[0]!.split('/')[1]!.split('@')[0]) console.log(`${s.shard}: ${rows.join(' ')}`)
  }
}

const cli = async (args: string[]): Promise<string> => {
  const run = await runCli(args)
  if (run.code !== 0) throw new Error(`metagrid ${args.join(' ')} exited ${run.code}: ${run.stderr}`)
  return run.stdout
}

const indexOf = (peerId: string): number => bed.nodes.findIndex((n) => n.peerId === peerId)

function checkPolicy (v: PlacementView): void {
  for (const s of v.shards) {
    if (!/^physics\.[01]\./.test(s.shard)) continue
    for (const peer of [s.host!, ...s.replicas, ...(s.lease?.voters ?? [])]) expect(ALLOWED.has(REGIONS[indexOf(peer)]!), `${s.shard} placed on ${REGIONS[indexOf(peer)]}`).toBe(true)
  }
}

function loads (v: PlacementView): Map<string, number> {
  const counts = new Map<string, number>()
  for (const holder of holders(v).values()) counts.set(holder, (counts.get(holder) ?? 0) + 1)
  return counts
}

let hog: CpuHog | undefined

beforeAll(async () => {
  // An edge box runs other work: one of this machine's two cores is burnt by another process the whole time.
  hog = await startCpuHog()
  const dir = await makeTempDir('metagrid-policy-')
  const policyFile = join(dir, 'policy.json')
  await writeFile(policyFile, JSON.stringify({ version: 1, rules: [{ name: 'west-stays-west', match: { shards: ['physics.0.*', 'physics.1.*'] }, allowRegions: [...ALLOWED] }] }))
  bed = await Testbed.start({
    cities: pickCities(6),
    nodeArgs: (i) => ['--region', REGIONS[i]!],
    env: {
      ...placementTestEnv({ side: 800 }),
      METAGRID_SHARDS_SYNC_INTERVAL_MS: '2000',
      METAGRID_PLACEMENT_POLICY_FILE: policyFile
    }
  })
}, 120_000)

afterAll(async () => {
  await bed?.stop()
  await hog?.stop()
})

describe('placement on six nodes', () => {
  let before: PlacementView
  let victim: number
  let shard: string
  let epoch: number

  it('every node reports the same assignment and lease table, within policy and load bound', async () => {
    before = await agreement([0, 1, 2, 3, 4, 5], 'all six nodes to agree on 65 leased shards')
    checkPolicy(before)
    // Settled means settled: with nothing changing, no shard moves (no flapping).
    await new Promise((resolve) => setTimeout(resolve, 4_000))
    expect([...holders(await view(1))].sort()).toEqual([...holders(before)].sort())
    expect(Math.max(...loads(before).values())).toBeLessThanOrEqual(CAP)
    // Replicas are distinct from the host and from each other.
    for (const s of before.shards) expect(new Set([s.host, ...s.replicas]).size).toBe(3)
    // The locate API answers with the lease holder and its addresses.
    const located = await getJson(bed.nodes[0]!.api, '/v1/shards/locate?x=150&y=720&layer=physics')
    const row = before.shards.find((s) => s.shard === 'physics.1.7')!
    expect(located).toMatchObject({ shard: 'physics.1.7', epoch: row.lease!.epoch, host: { peerId: row.lease!.holder } })
    expect(located.host.addrs.length).toBeGreaterThan(0)
    expect(located.replicas).toHaveLength(2)
    expect((await call(0, 'GET', '/v1/shards/locate?x=9000&y=1&layer=physics')).status).toBe(404)
    expect((await call(0, 'GET', '/v1/shards/locate?x=1&y=1&layer=nope')).json.error.code).toBe('UNKNOWN_LAYER')
    // explain names the policy rule that refused the other regions.
    const explained = await getJson(bed.nodes[0]!.api, '/v1/placement/explain/physics.0.3')
    expect(explained.rules).toEqual(['west-stays-west'])
    expect(explained.candidates.filter((c: { refusal: string | null }) => c.refusal === 'region-not-allowed-by:west-stays-west')).toHaveLength(3)
  }, 120_000)

  it('`metagrid placement` on any node shows the same signed, explainable assignment', async () => {
    const show = async (i: number): Promise<PlacementView> => JSON.parse(await cli(['placement', '--json', '--api', bed.nodes[i]!.api])) as PlacementView
    const [a, b] = [await show(2), await show(5)]
    expect(a.digest).toBe(b.digest)
    expect(a.self).not.toBe(b.self)
    // Each node's signature over the digest verifies against its own key.
    for (const v of [a, b]) {
      const statement = await verifyStatement(new Uint8Array(Buffer.from(v.signature, 'base64url')), { type: 'metagrid.placement-view/v1', predicate: z.unknown(), now: Date.now() })
      expect(statement.signer.toString()).toBe(v.self)
      expect(statement.subjects[0]!.digest).toBe(v.digest)
    }
    const table = await cli(['placement', '--api', bed.nodes[3]!.api])
    expect(table).toContain(`digest ${a.digest.slice(0, 16)}`)
    expect(table.split('\n').filter((line) => line.startsWith('physics.'))).toHaveLength(SHARDS)
    const explained = await cli(['placement', 'explain', 'physics.0.3', '--api', bed.nodes[3]!.api])
    expect(explained).toContain('west-stays-west')
    expect(explained).toContain('region-not-allowed-by:west-stays-west')
  }, 60_000)

  it('only the lease holder takes writes, under its epoch', async () => {
    // A shard held by a node other than 0, which the test keeps as its observer.
    const row = (await view(0)).shards.find((s) => s.lease?.valid === true && s.lease.holder !== bed.nodes[0]!.peerId && s.shard.startsWith('physics.5'))!
    shard = row.shard
    epoch = row.lease!.epoch
    victim = indexOf(row.lease!.holder)
    const replica = indexOf(row.replicas[0]!)
    const ok = await call(victim, 'PUT', `/v1/shards/${shard}/entities/crate`, { components: { pos: [1, 2] } }, { 'x-metagrid-epoch': String(epoch) })
    expect(ok.status).toBe(200)
    const misdirected = await call(replica, 'PUT', `/v1/shards/${shard}/entities/crate`, { components: { pos: [9, 9] } })
    expect(misdirected.status).toBe(421)
    expect(misdirected.json.error).toMatchObject({ code: 'NOT_HOST', host: { peerId: row.lease!.holder }, epoch })
    const stale = await call(victim, 'PUT', `/v1/shards/${shard}/entities/crate`, { components: { pos: [9, 9] } }, { 'x-metagrid-epoch': String(epoch + 7) })
    expect(stale.status).toBe(409)
    expect((await call(victim, 'PUT', `/v1/shards/${shard}/entities/crate`, { components: { pos: [9, 9] } }, { 'x-metagrid-epoch': 'soon' })).status).toBe(400)
    // The write reached the replicas through gossip from the holder.
    await waitFor('the replica to have the write', async () => (await call(replica, 'GET', `/v1/shards/${shard}/entities/crate`)).json?.components?.pos?.[0] === 1)
  }, 30_000)

  it('a killed host is replaced under the next epoch; writes under the old one are refused', async () => {
    const dead = bed.nodes[victim]!.peerId
    const killedAt = Date.now()
    await bed.kill(victim)
    const live = [0, 1, 2, 3, 4, 5].filter((i) => i !== victim)
    const after = await waitFor('a new holder at the next epoch', async () => {
      const v = await view(live[0]!)
      const s = v.shards.find((x) => x.shard === shard)!
      return s.lease?.valid === true && s.lease.holder !== dead ? s : undefined
    }, 60_000, 200)
    const failoverMs = Date.now() - killedAt
    console.log(`failover of ${shard} with the default liveness timeout: ${failoverMs} ms (the placement bench measures it properly)`)
    // Measured in the bench; this bound only catches a failover that waits for something it should not (a lease term, a death).
    expect(failoverMs).toBeLessThan(15_000)
    expect(after.lease!.epoch).toBe(epoch + 1)
    const host = indexOf(after.lease!.holder)
    // The new host has what the old one acknowledged.
    expect((await call(host, 'GET', `/v1/shards/${shard}/entities/crate`)).json.components.pos).toEqual([1, 2])
    const stale = await call(host, 'PUT', `/v1/shards/${shard}/entities/crate`, { components: { pos: [3, 3] } }, { 'x-metagrid-epoch': String(epoch) })
    expect(stale.status).toBe(409)
    // The new host may already have moved its lease to a fresh voter set (one more epoch) by now.
    expect(stale.json.error).toMatchObject({ code: 'STALE_EPOCH' })
    const current = stale.json.error.epoch as number
    expect(current).toBeGreaterThanOrEqual(epoch + 1)
    expect((await call(host, 'PUT', `/v1/shards/${shard}/entities/crate`, { components: { pos: [4, 4] } }, { 'x-metagrid-epoch': String(current) })).status).toBe(200)
    // Every shard the dead node held is held again, within policy and bound, and all five agree.
    const settled = await agreement(live, 'the five survivors to agree', 90_000)
    checkPolicy(settled)
    expect([...holders(settled).values()]).not.toContain(dead)
    expect(Math.max(...loads(settled).values())).toBeLessThanOrEqual(Math.ceil(1.25 * PLACED / 5))
    // The node that took over may have handed the shard on since: count failovers across the survivors.
    const failovers = await Promise.all(live.map(async (i) => metricValue(await scrape(bed.nodes[i]!.api), 'metagrid_placement_moves_total', { reason: 'failover' }) ?? 0))
    expect(failovers.reduce((a, b) => a + b, 0)).toBeGreaterThan(0)
    before = settled
  }, 180_000)

  it('the old host, back, takes no write under its old lease and then takes about 1/N of the shards', async () => {
    const returning = await bed.restart(victim)
    // From its first answer on, a write under its old epoch is refused: it holds no lease until it wins a new one.
    for (let i = 0; i < 20; i++) {
      const r = await call(victim, 'PUT', `/v1/shards/${shard}/entities/crate`, { components: { pos: [6, 6] } }, { 'x-metagrid-epoch': String(epoch) })
      expect([421, 409, 503]).toContain(r.status)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const all = [0, 1, 2, 3, 4, 5]
    const rejoined = await agreement(all, 'six nodes to agree after the rejoin', 120_000)
    checkPolicy(rejoined)
    const was = holders(before)
    const now = holders(rejoined)
    const moved = [...now].filter(([s, h]) => was.get(s) !== h)
    const taken = moved.filter(([, h]) => h === returning.peerId).length
    console.log(`rejoin: the returning node took ${taken} shards; ${moved.length} moved in all (ideal ${(SHARDS / 6).toFixed(1)})`)
    expect(taken).toBeGreaterThan(0)
    expect(taken).toBeLessThanOrEqual(CAP)
    // Moves other than to the joining node are the load bound's doing (it drops from 16 to 14 per node); few.
    expect(moved.length - taken).toBeLessThanOrEqual(10)
    expect(Math.max(...loads(rejoined).values())).toBeLessThanOrEqual(CAP)
    // The data followed the shard through every move.
    const holder = indexOf(now.get(shard)!)
    expect((await call(holder, 'GET', `/v1/shards/${shard}/entities/crate`)).json.components.pos).toEqual([4, 4])
  }, 240_000)

  it('hands an entity across a shard border, and leaves it exactly once when the target dies mid-way', async () => {
    const v = await agreement([0, 1, 2, 3, 4, 5], 'six nodes to agree before the entity handoff')
    const held = holders(v)
    const from = 'physics.4.4'
    const source = indexOf(held.get(from)!)
    // A target held by another node than the source and node 0.
    const to = [...held].find(([s, h]) => s.startsWith('physics.5') && h !== held.get(from) && h !== bed.nodes[0]!.peerId)![0]
    const target = indexOf(held.get(to)!)
    const entity = async (index: number, shard: string, id: string): Promise<number> => (await call(index, 'GET', `/v1/shards/${shard}/entities/${id}`)).status

    expect((await call(source, 'PUT', `/v1/shards/${from}/entities/npc-1`, { components: { hp: 10 } })).status).toBe(200)
    const moved = await call(source, 'POST', `/v1/shards/${from}/entities/npc-1/handoff`, { to })
    expect(moved.status).toBe(200)
    expect(moved.json).toMatchObject({ entity: 'npc-1', from, to, state: 'committed', delivered: true })
    expect(await entity(source, from, 'npc-1')).toBe(404)
    expect((await call(target, 'GET', `/v1/shards/${to}/entities/npc-1`)).json.components).toEqual({ hp: 10 })
    // Only the source's host starts a handoff; elsewhere the write is misdirected.
    expect((await call(target, 'POST', `/v1/shards/${from}/entities/npc-1/handoff`, { to })).status).toBe(421)

    // The target freezes with the PREPARE in flight and is then killed: the source compensates.
    expect((await call(source, 'PUT', `/v1/shards/${from}/entities/npc-2`, { components: { hp: 20 } })).status).toBe(200)
    bed.nodes[target]!.process.child.kill('SIGSTOP')
    const pending = call(source, 'POST', `/v1/shards/${from}/entities/npc-2/handoff`, { to })
    await new Promise((resolve) => setTimeout(resolve, 500))
    await bed.kill(target)
    const aborted = await pending
    expect(aborted.status).toBe(503)
    expect(aborted.json.error.code).toBe('HANDOFF_ABORTED')
    expect((await call(source, 'GET', `/v1/shards/${from}/entities/npc-2`)).json.components).toEqual({ hp: 20 })
    await bed.restart(target)
    // Wherever the target shard is hosted now, npc-2 is not there, and no half-done transfer is left.
    await waitFor('the target shard to settle with no pending transfer', async () => {
      const now = await view(0)
      const host = now.shards.find((s) => s.shard === to)?.lease
      if (host?.valid !== true) return false
      const shard = await getJson<{ entities: Array<{ entity: string }> }>(bed.nodes[indexOf(host.holder)]!.api, `/v1/shards/${to}?limit=10000`)
      const ids = shard.entities.map((e) => e.entity)
      return ids.includes('npc-1') && !ids.includes('npc-2') && !ids.some((id) => id.startsWith('~pending.'))
    }, 60_000, 500)
    expect(await entity(source, from, 'npc-2')).toBe(200)
  }, 120_000)
})
