/**
 * World sessions on three daemons in emulated cities, a 400 × 400 world of
 * 100-unit cells on one host-authoritative layer: two WorldClients on two
 * different nodes see each other, and see each other move across a shard
 * border; an input sent twice is applied once; after the host of the
 * players' shard is killed, a move made during the failover is acknowledged
 * and seen, and nothing was applied twice. The demo world page in Chromium,
 * on two nodes: each page sees the other player, and moves made with the
 * arrow keys, before and after the failover. Bad frames end a session with a
 * counted reason and the node carries on. All with a CPU hog beside it.
 */
import WebSocket from 'ws'
import { chromium, type Browser, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WorldClient, type VisibleEntity } from '../../client/world-client.ts'
import { decodeFrame, encodeFrame, SESSION_PATH } from '../../client/protocol.ts'
import { startCpuHog, type CpuHog } from '../helpers/cpu-hog.ts'
import { getJson, runCli, waitFor } from '../helpers/daemons.ts'
import { setTimeout as sleep } from 'node:timers/promises'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { pickCities } from '../testbed/geo.ts'
import { placementTestEnv } from '../testbed/placement-env.ts'
import { Testbed } from '../testbed/testbed.ts'
import type { PlacementView } from '../../p2p/placement/placement.ts'

const SIDE = 400
const SHARDS = (SIDE / 100) ** 2

let bed: Testbed
let hog: CpuHog | undefined
let browser: Browser | undefined
const clients: WorldClient[] = []

const sessionUrl = (index: number): string => `${bed.nodes[index]!.api.replace(/^http/, 'ws')}${SESSION_PATH}`
const view = async (index: number): Promise<PlacementView> => getJson<PlacementView>(bed.nodes[index]!.api, '/v1/placement')

function client (index: number, id: string): WorldClient {
  const world = new WorldClient({ urls: [sessionUrl(index)], client: id })
  clients.push(world)
  return world
}

/** Waits until `world` sees `key` and `test` holds for it. */
async function sees (world: WorldClient, key: string, what: string, test: (e: VisibleEntity) => boolean = () => true, timeoutMs = 30_000): Promise<VisibleEntity> {
  return waitFor(what, async () => {
    const entity = world.entities.get(key)
    return entity != null && test(entity) ? entity : undefined
  }, timeoutMs, 50)
}

/** A raw session: frames in and out by hand, for what the SDK never sends. */
async function rawSession (index: number, headers: Record<string, string> = {}): Promise<{ socket: WebSocket, frames: Array<Record<string, unknown>>, closed: Promise<number> }> {
  const socket = new WebSocket(sessionUrl(index), { headers })
  const frames: Array<Record<string, unknown>> = []
  socket.on('message', (data: Buffer) => { frames.push(decodeFrame(new Uint8Array(data))) })
  const closed = new Promise<number>((resolve) => socket.on('close', (code) => { resolve(code) }))
  await new Promise<void>((resolve, reject) => { socket.once('open', () => { resolve() }); socket.once('error', reject) })
  return { socket, frames, closed }
}

beforeAll(async () => {
  hog = await startCpuHog()
  bed = await Testbed.start({ cities: pickCities(3), env: placementTestEnv({ side: SIDE }) })
  // Every shard leased and the same table on every node before the players come.
  await waitFor('every shard leased on every node', async () => {
    const views = await Promise.all([0, 1, 2].map(view))
    const leased = views.map((v) => v.shards.filter((s) => s.shard.startsWith('physics.') && s.lease?.valid === true).length)
    return leased.every((n) => n === SHARDS) ? true : undefined
  }, 90_000, 500)
}, 150_000)

afterAll(async () => {
  for (const world of clients) world.close()
  await browser?.close()
  await bed?.stop()
  await hog?.stop()
})

describe('world sessions', () => {
  // The players start in cell (1, 1); its host is killed later, so they connect to the other two nodes.
  let host: number
  let a: WorldClient
  let b: WorldClient
  let others: number[]

  it('two clients on two nodes see each other, and a move across a border', async () => {
    const shard = (await view(0)).shards.find((s) => s.shard === 'physics.1.1')!
    host = bed.nodes.findIndex((n) => n.peerId === shard.lease!.holder)
    others = [0, 1, 2].filter((i) => i !== host)
    a = client(others[0]!, 'player-a')
    b = client(others[1]!, 'player-b')
    await Promise.all([a.ready(), b.ready()])
    expect(a.node).toBe(bed.nodes[others[0]!]!.peerId)
    for (const world of [a, b]) world.setArea({ x: 150, y: 150, radius: 180 })
    const ackA = await a.put('physics', 'a', 150, 150, { name: 'ada' })
    const ackB = await b.put('physics', 'b', 160, 150, { name: 'bo' })
    expect(ackA).toMatchObject({ ok: true, shard: 'physics.1.1' })
    expect(ackB.ok).toBe(true)
    expect((await sees(a, 'physics/b', 'a sees b')).components).toMatchObject({ name: 'bo' })
    expect((await sees(b, 'physics/a', 'b sees a')).x).toBe(150)

    // Across the border into cell (2, 1): the entity is there, and no longer in the cell it left.
    expect(await b.put('physics', 'b', 250, 150, { name: 'bo' })).toMatchObject({ ok: true, shard: 'physics.2.1' })
    await sees(a, 'physics/b', 'a sees b across the border', (e) => e.x === 250)
    await waitFor('b gone from the cell it left', async () => {
      const response = await fetch(`${bed.nodes[host]!.api}/v1/shards/physics.1.1/entities/b`)
      return response.status === 404 ? true : undefined
    }, 15_000, 200)
  }, 90_000)

  it('applies an input sent twice once, and acknowledges both', async () => {
    const { socket, frames } = await rawSession(others[0]!)
    socket.send(encodeFrame({ v: 1, t: 'hello', client: 'raw-client' }))
    const seq = Date.now() * 1000
    const input = { v: 1 as const, t: 'input' as const, seq, op: 'put' as const, layer: 'physics', entity: 'raw', x: 120, y: 120, components: { hits: 1 } }
    socket.send(encodeFrame(input))
    socket.send(encodeFrame(input))
    const acks = await waitFor('two acks', async () => {
      const list = frames.filter((f) => f.t === 'ack')
      return list.length === 2 ? list : undefined
    }, 20_000, 50)
    expect(acks.every((f) => f.ok === true && f.seq === seq)).toBe(true)
    expect(acks.filter((f) => f.dup === true)).toHaveLength(1)
    // An older input of the same client after a newer one is superseded: acknowledged, not applied.
    socket.send(encodeFrame({ ...input, seq: seq - 5, components: { hits: 99 } }))
    await waitFor('third ack', async () => (frames.filter((f) => f.t === 'ack').length === 3 ? true : undefined), 20_000, 50)
    expect(frames.filter((f) => f.t === 'ack')[2]).toMatchObject({ ok: true, dup: true })
    const entity = await getJson<{ components: Record<string, unknown> }>(bed.nodes[host]!.api, '/v1/shards/physics.1.1/entities/raw')
    expect(entity.components).toMatchObject({ hits: 1, _in: { c: 'raw-client', s: seq } })
    socket.close()
  }, 60_000)

  it('commits the inputs a shard took during a tick together, just before the tick', async () => {
    // Summed over the nodes: the shard's lease may have moved since the first test (a better-placed node took it).
    const commits = async (): Promise<number[]> => Promise.all([0, 1, 2].map(async (i) => metricValue(await scrape(bed.nodes[i]!.api), 'metagrid_session_tick_commits_total') ?? 0))
    const before = await commits()
    const started = performance.now()
    // 30 inputs 10 ms apart into cell (1, 1), relayed to its host: about six ticks at 20 Hz.
    const acks = []
    for (let i = 0; i < 30; i++) {
      acks.push(a.put('physics', `burst-${i}`, 110 + i, 180, {}))
      await sleep(10)
    }
    expect((await Promise.all(acks)).every((ack) => ack.ok)).toBe(true)
    const ticks = Math.ceil((performance.now() - started) / 50)
    const perNode = (await commits()).map((n, i) => n - before[i]!)
    const made = perNode.reduce((sum, n) => sum + n, 0)
    console.log(`30 inputs over ${ticks} ticks: ${made} commits (per node ${perNode.join(', ')}; host at the first test: node ${host})`)
    // One commit per tick that had inputs, not one per input (each had its own with a 5 ms group-commit window).
    expect(made).toBeGreaterThan(0)
    expect(made).toBeLessThanOrEqual(Math.min(ticks + 2, 15))
    await Promise.all(Array.from({ length: 30 }, async (_, i) => a.delete('physics', `burst-${i}`, 110 + i, 180)))
  }, 60_000)

  it('ends a session on a bad frame, with a counted reason, and the node carries on', async () => {
    const before = metricValue(await scrape(bed.nodes[others[0]!]!.api), 'metagrid_session_rejected_total', { reason: 'MALFORMED' }) ?? 0
    const garbage = await rawSession(others[0]!)
    garbage.socket.send(Buffer.from([0xff, 0x00, 0x13]))
    expect(await garbage.closed).toBe(1008)
    expect(garbage.frames.at(-1)).toMatchObject({ t: 'error', code: 'MALFORMED' })

    const text = await rawSession(others[0]!)
    text.socket.send('{"t":"hello"}')
    expect(await text.closed).toBe(1008)
    expect(text.frames.at(-1)).toMatchObject({ t: 'error', code: 'NOT_BINARY' })

    const early = await rawSession(others[0]!)
    early.socket.send(encodeFrame({ v: 1, t: 'area', x: 1, y: 1, radius: 10 }))
    expect(await early.closed).toBe(1008)
    expect(early.frames.at(-1)).toMatchObject({ t: 'error', code: 'HELLO_FIRST' })

    // A page of another origin may not open a session on the operator's loopback node.
    const page = await rawSession(others[0]!, { origin: 'https://evil.example' })
    expect(await page.closed).toBe(1008)
    expect(page.frames.at(-1)).toMatchObject({ t: 'error', code: 'CROSS_ORIGIN' })

    const after = await scrape(bed.nodes[others[0]!]!.api)
    expect(metricValue(after, 'metagrid_session_rejected_total', { reason: 'MALFORMED' })).toBe(before + 1)
    expect(metricValue(after, 'metagrid_session_rejected_total', { reason: 'CROSS_ORIGIN' })).toBe(1)
    // The players' sessions are untouched.
    expect(a.node).not.toBeNull()
    expect((await fetch(`${bed.nodes[others[0]!]!.api}/v1/status`)).status).toBe(200)
  }, 60_000)

  it('holds back ticks from a reader that stopped reading, counted and bounded, and sends it the latest state, coalesced, once it reads again', async () => {
    const node = others[0]!
    const api = bed.nodes[node]!.api
    const held = async (): Promise<number> => metricValue(await scrape(api), 'metagrid_session_held_ticks_total') ?? 0
    const heldBefore = await held()
    const reader = await rawSession(node)
    let corrupt = 0
    let closed = false
    void reader.closed.then(() => { closed = true })
    const ticks: Array<{ n: number, u: unknown[][] }> = []
    // What the reader holds, applied as the SDK applies a tick.
    const view = new Map<string, { i?: number, blob?: string }>()
    reader.socket.removeAllListeners('message')
    reader.socket.on('message', (data: Buffer) => {
      try {
        const frame = decodeFrame(new Uint8Array(data))
        if (frame.t !== 'tick') return
        const tick = frame as unknown as { n: number, u: unknown[][] }
        ticks.push(tick)
        // [kind, key, x, y, components] for an entity that entered or changed; [kind, key] for one that left.
        for (const [kind, key, , , components] of tick.u) {
          if (kind === 'l') view.delete(key as string)
          else view.set(key as string, components as { i?: number, blob?: string })
        }
      } catch {
        corrupt++
      }
    })
    reader.socket.send(encodeFrame({ v: 1, t: 'hello', client: 'slow-reader' }))
    reader.socket.send(encodeFrame({ v: 1, t: 'area', x: 150, y: 150, radius: 180 }))
    await waitFor('the reader\'s first tick', async () => (ticks.length > 0 ? true : undefined), 20_000, 50)
    // The reader stops reading: the kernel's buffers fill, then the node's.
    const tcp = (reader.socket as unknown as { _socket: import('node:net').Socket })._socket
    tcp.pause()
    // Four 48 kB entities rewritten as fast as they are acknowledged: each tick carries their latest state to the reader.
    const blob = (i: number): string => String(i % 10).repeat(48_000)
    let writing = true
    let written = 0
    const last = [-1, -1, -1, -1]
    const writers = [0, 1, 2, 3].map(async (w) => {
      for (let i = 0; writing; i++) {
        if ((await a.put('physics', `bulk-${w}`, 120 + w, 130, { i, blob: blob(i) })).ok) {
          written++
          last[w] = i
        }
      }
    })
    let maxBuffered = 0
    const sample = async (): Promise<number> => {
      const text = await scrape(api)
      maxBuffered = Math.max(maxBuffered, metricValue(text, 'metagrid_session_buffered_bytes') ?? 0)
      return metricValue(text, 'metagrid_session_held_ticks_total') ?? 0
    }
    await waitFor('the node holds ticks back from the reader', async () => (await sample() > heldBefore + 20 ? true : undefined), 60_000, 200)
    // A few more seconds of writes the reader is not sent, only owed.
    for (let k = 0; k < 10; k++) {
      await sample()
      await sleep(200)
    }
    writing = false
    await Promise.all(writers)
    const readBeforeResume = ticks.length
    tcp.resume()
    await waitFor('the reader holds the latest state of every bulk entity', async () => (last.every((i, w) => i < 0 || view.get(`physics/bulk-${w}`)?.i === i) ? true : undefined), 30_000, 50)
    console.log(`slow reader: ${written} 48 kB writes, ${await held() - heldBefore} ticks held back, ${ticks.length - readBeforeResume} ticks read after resuming, node buffered at most ${maxBuffered} bytes for its sessions`)
    expect(closed).toBe(false)
    expect(corrupt).toBe(0)
    // Ticks in order, and every bulk entity's state one some write gave it.
    for (let k = 1; k < ticks.length; k++) expect(ticks[k]!.n).toBeGreaterThan(ticks[k - 1]!.n)
    for (const [key, state] of view) if (key.includes('bulk-')) expect(state.blob).toBe(blob(state.i!))
    // What the node queues for its sessions stays far under the 1 MiB at which it would close one.
    expect(maxBuffered).toBeLessThan(1024 * 1024)
    reader.socket.close()
    await Promise.all([0, 1, 2, 3].map(async (w) => a.delete('physics', `bulk-${w}`, 120 + w, 130)))
  }, 120_000)

  const pages: Page[] = []
  /** The player ids the page sees, and where it sees `player`. */
  const seenBy = async (page: Page, player: string): Promise<{ x: number, y: number } | null> => page.evaluate((id) => {
    const entity = (globalThis as any).world.entities.get(`physics/${id}`)
    return entity == null ? null : { x: entity.x, y: entity.y }
  }, player)
  const playerOf = async (page: Page): Promise<string> => page.evaluate(() => (globalThis as any).player as string)

  it('shows two players on the world page of two nodes to each other, moving with the arrow keys', async () => {
    browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'] })
    for (const [i, index] of others.entries()) {
      const page = await browser.newPage()
      const errors: string[] = []
      page.on('pageerror', (err) => { errors.push(err.message) })
      await page.goto(`${bed.nodes[index]!.api}/world?x=${130 + 20 * i}&y=130&name=page${i}`)
      await page.waitForFunction(() => (globalThis as any).me?.acked > 0, undefined, { timeout: 20_000 })
      expect(errors).toEqual([])
      pages.push(page)
    }
    const [p0, p1] = pages as [Page, Page]
    const [id0, id1] = [await playerOf(p0), await playerOf(p1)]
    await waitFor('each page sees the other player', async () => ((await seenBy(p0, id1)) != null && (await seenBy(p1, id0)) != null ? true : undefined), 20_000, 100)
    await p0.keyboard.press('ArrowRight')
    await waitFor('page 1 sees page 0 move right', async () => ((await seenBy(p1, id0))?.x === 140 ? true : undefined), 20_000, 100)
  }, 90_000)

  it('runs simulated players across the nodes: every input acknowledged, none lost or applied twice', async () => {
    const run = await runCli(['players', '--count', '6', '--rate', '10', '--duration', '4', '--radius', '150', '--json', ...[0, 1, 2].flatMap((i) => ['--url', sessionUrl(i)])])
    expect(run.code, run.stderr).toBe(0)
    expect(run.stderr).toMatch(/\d+ s: 6\/6 connected/)
    const report = JSON.parse(run.stdout)
    expect(report.players).toBe(6)
    expect(report.inputs.sent).toBeGreaterThan(100)
    expect(report.inputs).toMatchObject({ acknowledged: report.inputs.sent, lost: 0, appliedTwice: 0, refused: 0 })
    expect(report.perClient.framesInPerS).toBeGreaterThan(0)
  }, 90_000)

  it('keeps both players seeing each other through the failover of their shard\'s host', async () => {
    // A host can fail over only to voters that are alive: the players' shard has all three before the kill.
    await waitFor('physics.1.1 replicated on all three nodes', async () => ((await view(others[0]!)).shards.find((s) => s.shard === 'physics.1.1')?.lease?.voters.length === 3 ? true : undefined), 30_000, 200)
    // Both back in cell (1, 1), which the node about to die hosts.
    await b.put('physics', 'b', 160, 150, { name: 'bo' })
    await sees(a, 'physics/b', 'a sees b back', (e) => e.x === 160)
    const killedAt = Date.now()
    await bed.kill(host)
    // A move made while the shard has no host: acknowledged once a new host took the shard over.
    const ack = await Promise.race([a.put('physics', 'a', 140, 150, { name: 'ada' }), sleep(40_000).then(async () => {
      // What each live node knew, for the log, before the test fails.
      for (const i of others) {
        const lease = (await view(i)).shards.find((s) => s.shard === 'physics.1.1')?.lease
        const text = await scrape(bed.nodes[i]!.api)
        const inputs = text.split('\n').filter((line) => line.startsWith('metagrid_session_inputs_total') || line.startsWith('metagrid_write_concern_seconds_count')).join(' ')
        console.log(`node ${i}: lease of physics.1.1 ${lease?.holder.slice(-4)}@${lease?.epoch} valid ${lease?.valid}; ${inputs}`)
      }
      throw new Error(`the move made after the kill was not acknowledged within 40 s (${a.unacknowledged} inputs pending)`)
    })])
    expect(ack.ok).toBe(true)
    await sees(b, 'physics/a', 'b sees a move after the failover', (e) => e.x === 140)
    const stallMs = Date.now() - killedAt
    console.log(`input during failover acknowledged and seen after ${stallMs} ms`)
    const newHost = (await view(others[0]!)).shards.find((s) => s.shard === 'physics.1.1')!.lease!
    expect(newHost.holder).not.toBe(bed.nodes[host]!.peerId)
    // The pages too: a move with the arrow keys after the kill reaches the other page.
    const [p0, p1] = pages as [Page, Page]
    await p0.keyboard.press('ArrowDown')
    await waitFor('page 1 sees page 0 move after the failover', async () => ((await seenBy(p1, await playerOf(p0)))?.y === 140 ? true : undefined), 20_000, 100)
    // Each client's inputs: applied or duplicate, never lost (every put was acknowledged) and never applied twice.
    const inputs = await scrape(bed.nodes[others[0]!]!.api)
    expect(metricValue(inputs, 'metagrid_session_inputs_total', { result: 'applied' })).toBeGreaterThan(0)
    expect(a.unacknowledged + b.unacknowledged).toBe(0)
  }, 90_000)
})
