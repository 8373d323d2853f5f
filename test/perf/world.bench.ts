/**
 * `npm run bench world`: world sessions beside Colyseus, in one run on this
 * machine, then the same world spread over four nodes with one killed.
 *
 * One server, side by side with Colyseus. The server (one
 * metagrid daemon, or one Colyseus 0.18 room) is pinned to core 0; the
 * simulated players, all in this process, to core 1. Players walk at random
 * (30 units/s) in a 1024 × 1024 world and send their position at 20 Hz;
 * both servers send changes every 50 ms (metagrid's layer tick, Colyseus's
 * patch rate).
 *
 * - metagrid, interest radius 100 (the default world: 4 × 4 cells of 256,
 *   each player sees those within 100 units, about 11 at 400 players);
 * - metagrid, everyone sees everyone (a 400 × 400 world of 200-unit cells,
 *   radius 400, `maxVisible` 1024);
 * - Colyseus, one room, everyone sees everyone (its default: the whole state
 *   to every client).
 *
 * Figures per scenario: input-to-visible latency at the other players
 * (p50/p99, ms: each input carries its send time on this process's clock),
 * server CPU (% of one core, /proc), bytes the server wrote per client per
 * second (/proc/<pid>/io wchar: the same count for both), and for metagrid
 * inputs lost or applied twice. One generator core drives every player, so
 * at the larger counts it, not the server, may set the latency: the
 * generator's own CPU is reported too.
 *
 * The grid, which Colyseus cannot do: four daemons on loopback (one mesh,
 * the default 1024 × 1024 world of 16 cells on one host layer with the
 * default majority write concern), the players spread over the four nodes'
 * session endpoints, interest radius 100. Once steady, and once with the
 * node hosting the most shards killed (SIGKILL) halfway: the players it
 * carried reconnect to the next node of their list, and its shards fail over.
 * Nothing is pinned: the four daemons and the players share both cores, and
 * CPU is summed over the daemons.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cleanDaemonEnv, spawnDaemon, type DaemonProcess } from '../../daemon/process.ts'
import { runPlayers, summarize } from '../../daemon/world/players.ts'
import WebSocket from 'ws'
import { decodeFrame, encodeFrame, SESSION_PATH } from '../../client/protocol.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { cpuSeconds, rssMiB, sleep } from './harness.ts'
import { freePort } from '../helpers/daemons.ts'
import type { PlacementView } from '../../p2p/placement/placement.ts'

const COUNTS = (process.env.BENCH_PLAYERS ?? '100,200,400').split(',').map(Number).filter((n) => n > 0)
const GRID_COUNTS = (process.env.BENCH_GRID_PLAYERS ?? '100,200').split(',').map(Number).filter((n) => n > 0)
const GRID_NODES = 4
const SECONDS = Number(process.env.BENCH_SESSION_SECONDS ?? 20)
const RATE_HZ = 20
const SPEED = 30
/** Which parts run (`BENCH_WORLD_PARTS`, comma-separated): one node beside Colyseus, the grid, the slow reader. */
const PARTS = new Set((process.env.BENCH_WORLD_PARTS ?? 'single,grid,slow').split(','))
const SLOW_PAUSE_S = Number(process.env.BENCH_SLOW_PAUSE_S ?? 30)
const SLOW_RADIUS = 300
const SLOW_PLAYERS = 200

const pin = (pid: number, core: number): void => { execFileSync('taskset', ['-a', '-cp', String(core), String(pid)], { stdio: 'ignore' }) }

async function bytesWritten (pid: number): Promise<number> {
  return Number(/^wchar:\s+(\d+)$/m.exec(await readFile(`/proc/${pid}/io`, 'utf8'))?.[1] ?? Number.NaN)
}

/** CPU and bytes written by `pid`, and this process's CPU, over `during`. */
async function measure<T> (pid: number, during: () => Promise<T>): Promise<{ result: T, serverCpuPercent: number, generatorCpuPercent: number, serverBytes: number, seconds: number }> {
  const [cpu0, bytes0, self0, t0] = [await cpuSeconds(pid), await bytesWritten(pid), process.cpuUsage(), performance.now()]
  const result = await during()
  const seconds = (performance.now() - t0) / 1000
  const self = process.cpuUsage(self0)
  return {
    result,
    serverCpuPercent: Number((100 * (await cpuSeconds(pid) - cpu0) / seconds).toFixed(1)),
    generatorCpuPercent: Number((100 * (self.user + self.system) / 1e6 / seconds).toFixed(1)),
    serverBytes: await bytesWritten(pid) - bytes0,
    seconds
  }
}

/** One daemon pinned to core 0 with every shard leased: what the single-node scenarios run against. */
async function oneNode (env: Record<string, string>): Promise<{ node: DaemonProcess, api: string, url: string, stop: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'metagrid-bench-sessions-'))
  const node = spawnDaemon({
    args: ['--data-dir', dir, '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--log-format', 'json', '--log-level', 'warn'],
    env: cleanDaemonEnv(process.env, { METAGRID_PLACEMENT_SETTLE_MS: '500', METAGRID_PLACEMENT_WORLD_LAYERS: JSON.stringify([{ name: 'physics', consistency: 'host', tickHz: RATE_HZ }]), METAGRID_SESSIONS_MAX_INPUTS_IN_FLIGHT: '256', ...env })
  })
  const stop = async (): Promise<void> => {
    await node.stop()
    await rm(dir, { recursive: true, force: true })
  }
  try {
    const ready = await node.ready
    pin(node.pid!, 0)
    // Every shard held before the players come.
    for (let i = 0; i < 100; i++) {
      const view = await (await fetch(`${ready.api}/v1/placement`)).json() as { shards: Array<{ lease: { valid: boolean } | null }> }
      if (view.shards.every((s) => s.lease?.valid === true)) break
      await sleep(200)
    }
    return { node, api: ready.api, url: `${ready.api.replace(/^http/, 'ws')}${SESSION_PATH}`, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

async function metagrid (players: number, world: 'radius100' | 'everyone'): Promise<Record<string, unknown>> {
  const env: Record<string, string> = world === 'everyone'
    ? { METAGRID_PLACEMENT_WORLD_MAX_X: '400', METAGRID_PLACEMENT_WORLD_MAX_Y: '400', METAGRID_PLACEMENT_WORLD_CELL_SIZE: '200', METAGRID_SESSIONS_MAX_VISIBLE: '1024' }
    : {}
  const { node, url, stop } = await oneNode(env)
  try {
    const radius = world === 'everyone' ? 400 : 100
    const m = await measure(node.pid!, async () => runPlayers({ urls: [url], count: players, rateHz: RATE_HZ, durationMs: SECONDS * 1000, radius, speed: SPEED, layer: 'physics', seed: players, drainMs: 10_000 }))
    const report = m.result
    return {
      system: 'metagrid',
      scenario: world === 'everyone' ? 'everyone sees everyone' : 'interest radius 100',
      players,
      inputToVisibleMs: { p50: report.inputToVisibleMs.p50, p99: report.inputToVisibleMs.p99, samples: report.inputToVisibleMs.samples },
      ackMs: { p50: report.ackMs.p50, p99: report.ackMs.p99 },
      serverCpuPercent: m.serverCpuPercent,
      generatorCpuPercent: m.generatorCpuPercent,
      serverBytesPerClientPerS: Math.round(m.serverBytes / players / m.seconds),
      clientBytesInPerS: report.perClient.bytesInPerS,
      updatesPerClientPerS: report.perClient.updatesPerS,
      inputs: report.inputs
    }
  } finally {
    await stop()
  }
}

/**
 * A client that stops reading for `SLOW_PAUSE_S` while `players` walk around
 * it (one node, radius 100 for the players; the slow client watches a wider
 * area, radius `SLOW_RADIUS`, so more is queued for it). Reported: what the
 * node held for its sessions at most (the buffered-bytes gauge, sampled each
 * second), the ticks it held back from the reader (sent later, coalesced, once
 * it read again), the node's RSS before and at the end of the pause, whether the
 * node closed it (SLOW_READER, its last resort), the
 * frames it could not decode after it resumed (must be 0), how stale the
 * first update it read after resuming was, and how long until what it reads
 * is current again (an update less than 250 ms old), by reading its backlog
 * or, if it was closed, by reconnecting to a snapshot.
 */
async function slowReader (players: number): Promise<Record<string, unknown>> {
  const { node, api, url, stop } = await oneNode({})
  try {
    const walk = runPlayers({ urls: [url], count: players, rateHz: RATE_HZ, durationMs: (SLOW_PAUSE_S + 15) * 1000, radius: 100, speed: SPEED, layer: 'physics', seed: players, drainMs: 5_000 })
    await sleep(3_000)
    const reader = new WebSocket(url)
    const received: Array<{ at: number, bytes: number, stalenessMs: number | null, corrupt: boolean }> = []
    reader.on('message', (data: Buffer) => {
      const at = performance.timeOrigin + performance.now()
      let stalenessMs: number | null = null
      let corrupt = false
      try {
        const frame = decodeFrame(new Uint8Array(data)) as { t: string, u?: unknown[][] }
        for (const [, , , , components] of frame.t === 'tick' ? frame.u ?? [] : []) {
          const t = (components as { t?: unknown } | undefined)?.t
          if (typeof t === 'number') stalenessMs = Math.max(stalenessMs ?? 0, at - t)
        }
      } catch {
        corrupt = true
      }
      received.push({ at, bytes: data.byteLength, stalenessMs, corrupt })
    })
    const closed = new Promise<number>((resolve) => reader.on('close', (code) => { resolve(code) }))
    await new Promise<void>((resolve, reject) => { reader.once('open', () => { resolve() }); reader.once('error', reject) })
    reader.send(encodeFrame({ v: 1, t: 'hello', client: 'bench-slow-reader' }))
    reader.send(encodeFrame({ v: 1, t: 'area', x: 512, y: 512, radius: SLOW_RADIUS }))
    await sleep(2_000)
    const beforePause = received.length
    const rssBefore = await rssMiB(node.pid!)
    const tcp = (reader as unknown as { _socket: import('node:net').Socket })._socket
    tcp.pause()
    const pausedAt = performance.timeOrigin + performance.now()
    let maxBuffered = 0
    let heldTicks = 0
    let closedByNodeAfterS: number | null = null
    for (let s = 0; s < SLOW_PAUSE_S; s++) {
      await sleep(1_000)
      const text = await scrape(api)
      maxBuffered = Math.max(maxBuffered, metricValue(text, 'metagrid_session_buffered_bytes') ?? 0)
      heldTicks = metricValue(text, 'metagrid_session_held_ticks_total') ?? 0
      if (closedByNodeAfterS == null && (metricValue(text, 'metagrid_session_rejected_total', { reason: 'SLOW_READER' }) ?? 0) > 0) closedByNodeAfterS = s + 1
    }
    const rssPaused = await rssMiB(node.pid!)
    const resumedAt = performance.timeOrigin + performance.now()
    tcp.resume()
    // What it reads now: the backlog, then (if it was not closed) current ticks.
    let currentAfterMs: number | null = null
    let code: number | null = null
    void closed.then((c) => { code = c })
    for (let i = 0; i < 200 && currentAfterMs == null && code == null; i++) {
      await sleep(50)
      const fresh = received.slice(beforePause).find((r) => r.at >= resumedAt && r.stalenessMs != null && r.stalenessMs < 250)
      if (fresh != null) currentAfterMs = Math.round(fresh.at - resumedAt)
    }
    let reconnectedAfterMs: number | null = null
    if (code != null || currentAfterMs == null) {
      // Closed by the node: a new session's first tick is the snapshot.
      const again = new WebSocket(url)
      const first = new Promise<void>((resolve) => again.on('message', (data: Buffer) => { if ((decodeFrame(new Uint8Array(data)) as { t: string }).t === 'tick') resolve() }))
      await new Promise<void>((resolve, reject) => { again.once('open', () => { resolve() }); again.once('error', reject) })
      again.send(encodeFrame({ v: 1, t: 'hello', client: 'bench-slow-reader' }))
      again.send(encodeFrame({ v: 1, t: 'area', x: 512, y: 512, radius: SLOW_RADIUS }))
      await first
      reconnectedAfterMs = Math.round(performance.timeOrigin + performance.now() - resumedAt)
      again.close()
    }
    reader.close()
    await walk
    const after = received.slice(beforePause)
    const firstAfter = after.find((r) => r.stalenessMs != null)
    return {
      system: 'metagrid',
      scenario: `one client stops reading for ${SLOW_PAUSE_S} s`,
      players,
      slowRadius: SLOW_RADIUS,
      pausedS: Math.round((resumedAt - pausedAt) / 1000),
      nodeBufferedMaxBytes: maxBuffered,
      ticksHeldBack: heldTicks,
      nodeRssMiB: { beforePause: rssBefore, endOfPause: rssPaused },
      closedByNode: closedByNodeAfterS != null,
      closedAfterS: closedByNodeAfterS,
      closeCode: code,
      backlogFrames: after.length,
      backlogBytes: after.reduce((sum, r) => sum + r.bytes, 0),
      corruptFrames: after.filter((r) => r.corrupt).length,
      firstUpdateAfterResumeStaleMs: firstAfter?.stalenessMs != null ? Math.round(firstAfter.stalenessMs) : null,
      currentAgainAfterMs: currentAfterMs,
      reconnectedToSnapshotAfterMs: reconnectedAfterMs
    }
  } finally {
    await stop()
  }
}

/** Four daemons in one mesh, every shard leased with its voters: the grid the players spread over. */
async function startGrid (dir: string): Promise<{ nodes: DaemonProcess[], apis: string[] }> {
  const env = cleanDaemonEnv(process.env, {
    METAGRID_PLACEMENT_WORLD_LAYERS: JSON.stringify([{ name: 'physics', consistency: 'host', tickHz: RATE_HZ }]),
    METAGRID_SESSIONS_MAX_INPUTS_IN_FLIGHT: '256',
    // Shards stay where they are while the players' load moves (the placement bench measures moves).
    METAGRID_PLACEMENT_WEIGHTS_HEADROOM: '0',
    METAGRID_PLACEMENT_WEIGHTS_RELIABILITY: '0'
  })
  const args = (i: number, bootstrap: string[]): string[] => ['--data-dir', join(dir, `node-${i}`), '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--log-format', 'json', '--log-level', 'warn', ...bootstrap.flatMap((a) => ['--bootstrap', a])]
  const seed = spawnDaemon({ args: args(0, []), env })
  const seedReady = await seed.ready
  const nodes = [seed]
  for (let i = 1; i < GRID_NODES; i++) nodes.push(spawnDaemon({ args: args(i, [seedReady.addrs[0]!]), env }))
  const apis = (await Promise.all(nodes.map(async (node) => node.ready))).map((ready) => ready.api)
  for (let i = 0; ; i++) {
    const views = await Promise.all(apis.map(async (api) => (await fetch(`${api}/v1/placement`)).json() as Promise<PlacementView>))
    const settled = views.every((v) => {
      const world = v.shards.filter((s) => s.shard.startsWith('physics.'))
      return world.length === 16 && world.every((s) => s.lease?.valid === true && s.lease.voters.length === 3)
    })
    if (settled) break
    if (i > 600) throw new Error('the grid did not lease every shard with three voters in 120 s')
    await sleep(200)
  }
  return { nodes, apis }
}

async function grid (players: number, kill: boolean): Promise<Record<string, unknown>> {
  const dir = await mkdtemp(join(tmpdir(), 'metagrid-bench-grid-'))
  const { nodes, apis } = await startGrid(dir)
  try {
    const urls = apis.map((api) => `${api.replace(/^http/, 'ws')}${SESSION_PATH}`)
    // The victim: the node holding the most world shards (not the seed, which the others bootstrapped from).
    const view = await (await fetch(`${apis[0]}/v1/placement`)).json() as PlacementView
    const peerIds = await Promise.all(apis.map(async (api) => ((await (await fetch(`${api}/v1/status`)).json()) as { peerId: string }).peerId))
    const held = peerIds.map((id) => view.shards.filter((s) => s.shard.startsWith('physics.') && s.lease?.holder === id).length)
    const victim = held.slice(1).reduce((best, n, i) => (n > held[best]! ? i + 1 : best), 1)
    let killedAt: number | null = null
    const pids = nodes.map((node) => node.pid!)
    const cpu0 = await Promise.all(pids.map(cpuSeconds))
    const self0 = process.cpuUsage()
    const t0 = performance.now()
    const report = await runPlayers({
      urls, count: players, rateHz: RATE_HZ, durationMs: SECONDS * 1000, radius: 100, speed: SPEED, layer: 'physics', seed: players, drainMs: 15_000,
      onProgress: (progress) => {
        if (kill && killedAt == null && progress.elapsedS >= SECONDS / 2) {
          killedAt = progress.elapsedS
          nodes[victim]!.child.kill('SIGKILL')
        }
      }
    })
    const seconds = (performance.now() - t0) / 1000
    const alive = pids.filter((_, i) => !kill || i !== victim)
    const cpu1 = await Promise.all(pids.map(async (pid, i) => (alive.includes(pid) ? cpuSeconds(pid) : cpu0[i]!)))
    const daemonCpu = cpu1.reduce((sum, c, i) => sum + (c - cpu0[i]!), 0)
    const self = process.cpuUsage(self0)
    const rss = await Promise.all(alive.map(rssMiB))
    return {
      system: 'metagrid grid',
      scenario: kill ? `${GRID_NODES} nodes, one killed at ${killedAt ?? '?'} s` : `${GRID_NODES} nodes`,
      players,
      ...(kill ? { killed: { node: victim, shardsItHeld: held[victim] } } : {}),
      inputToVisibleMs: report.inputToVisibleMs,
      ackMs: report.ackMs,
      daemonCpuPercentTotal: Number((100 * daemonCpu / seconds).toFixed(1)),
      daemonCpuPercentPer100Players: Number((100 * daemonCpu / seconds / (players / 100)).toFixed(1)),
      generatorCpuPercent: Number((100 * (self.user + self.system) / 1e6 / seconds).toFixed(1)),
      rssMiBPerNode: Math.round(rss.reduce((a, b) => a + b, 0) / rss.length),
      clientBytesInPerS: report.perClient.bytesInPerS,
      updatesPerClientPerS: report.perClient.updatesPerS,
      stalledInputs: report.stalledInputs,
      reconnects: report.reconnects,
      inputs: report.inputs
    }
  } finally {
    await Promise.all(nodes.map(async (node) => node.stop('SIGTERM').catch(() => null)))
    await rm(dir, { recursive: true, force: true })
  }
}

const COLYSEUS_SERVER = `
import { Room, Server } from '@colyseus/core'
import { WebSocketTransport } from '@colyseus/ws-transport'
import { schema, t } from '@colyseus/schema'
const Player = schema({ x: t.number(), y: t.number(), t: t.number() }, 'Player')
const State = schema({ players: t.map(Player) }, 'State')
class World extends Room {
  maxClients = 100000
  onCreate () {
    this.setPatchRate(50)
    this.state = new State()
    this.onMessage('move', (client, m) => {
      const p = this.state.players.get(client.sessionId)
      if (p != null && typeof m?.x === 'number') { p.x = m.x; p.y = m.y; p.t = m.t }
    })
  }
  onJoin (client) { this.state.players.set(client.sessionId, new Player()) }
  onLeave (client) { this.state.players.delete(client.sessionId) }
}
const server = new Server({ transport: new WebSocketTransport(), greet: false })
server.define('world', World)
await server.listen(Number(process.env.PORT), '127.0.0.1')
process.stdout.write('ready\\n')
`

async function colyseus (players: number): Promise<Record<string, unknown>> {
  const port = await freePort()
  const child: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', COLYSEUS_SERVER], { env: { ...process.env, PORT: String(port), NODE_ENV: 'production' }, stdio: ['ignore', 'pipe', 'inherit'], cwd: process.cwd() })
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (data: Buffer) => { if (data.toString().includes('ready')) resolve() })
      child.once('exit', (code) => { reject(new Error(`colyseus server exited ${code}`)) })
    })
    pin(child.pid!, 0)
    const { Client, getStateCallbacks } = await import('@colyseus/sdk')
    const now = (): number => performance.timeOrigin + performance.now()
    const visible: number[] = []
    const rooms: any[] = []
    let measuring = false
    for (let i = 0; i < players; i++) {
      const room: any = await new Client(`ws://127.0.0.1:${port}`).joinOrCreate('world')
      const $: any = getStateCallbacks(room)
      $(room.state).players.onAdd((player: any, key: string) => {
        if (key === room.sessionId) return
        $(player).onChange(() => { if (measuring && player.t > 0) visible.push(now() - player.t) })
      })
      rooms.push(room)
    }
    const walkers = rooms.map((room, i) => ({ room, x: (i * 97) % 1024, y: (i * 389) % 1024, heading: i }))
    const interval = 1000 / RATE_HZ
    const m = await measure(child.pid!, async () => {
      measuring = true
      const timers = walkers.map((w, i) => setTimeout(() => {
        const send = (): void => {
          w.heading += (Math.sin(i + now()) - 0.5) * 0.6
          w.x = Math.min(1023, Math.max(0, w.x + Math.cos(w.heading) * SPEED / RATE_HZ))
          w.y = Math.min(1023, Math.max(0, w.y + Math.sin(w.heading) * SPEED / RATE_HZ))
          w.room.send('move', { x: w.x, y: w.y, t: now() })
        }
        send()
        timers[i] = setInterval(send, interval) as unknown as ReturnType<typeof setTimeout>
      }, (i / walkers.length) * interval))
      await sleep(SECONDS * 1000)
      for (const timer of timers) clearInterval(timer)
      measuring = false
    })
    for (const room of rooms) await room.leave().catch(() => {})
    const s = summarize(visible)
    return {
      system: 'colyseus 0.18',
      scenario: 'everyone sees everyone',
      players,
      inputToVisibleMs: { p50: s.p50, p99: s.p99, samples: s.samples },
      serverCpuPercent: m.serverCpuPercent,
      generatorCpuPercent: m.generatorCpuPercent,
      serverBytesPerClientPerS: Math.round(m.serverBytes / players / m.seconds)
    }
  } finally {
    child.kill('SIGKILL')
  }
}

export async function run (): Promise<Record<string, unknown>> {
  // The players run on core 1, the servers on core 0.
  pin(process.pid, 1)
  const rows: Array<Record<string, unknown>> = []
  for (const players of PARTS.has('single') ? COUNTS : []) {
    for (const scenario of [() => metagrid(players, 'radius100'), () => metagrid(players, 'everyone'), () => colyseus(players)]) {
      const row = await scenario()
      process.stderr.write(`  ${JSON.stringify(row)}\n`)
      rows.push(row)
    }
  }
  // The grid shares both cores with its players: nothing pinned.
  execFileSync('taskset', ['-a', '-cp', '0,1', String(process.pid)], { stdio: 'ignore' })
  const gridRows: Array<Record<string, unknown>> = []
  for (const players of PARTS.has('grid') ? GRID_COUNTS : []) {
    for (const kill of [false, true]) {
      const row = await grid(players, kill)
      process.stderr.write(`  ${JSON.stringify(row)}\n`)
      gridRows.push(row)
    }
  }
  const slowRows: Array<Record<string, unknown>> = []
  if (PARTS.has('slow')) {
    pin(process.pid, 1)
    const row = await slowReader(SLOW_PLAYERS)
    process.stderr.write(`  ${JSON.stringify(row)}\n`)
    slowRows.push(row)
  }
  return {
    slowReaderNote: `one node pinned to core 0, ${SLOW_PLAYERS} players at radius 100 on core 1; one more client watches radius ${SLOW_RADIUS} around the centre and stops reading (its TCP socket paused) for ${SLOW_PAUSE_S} s; past 256 KiB queued the node holds its ticks back, coalesced per entity, and sends them as one tick once it is under 64 KiB (it closes a session only if what it is owed outgrows 4 x maxVisible entities or its queue passes 1 MiB); Colyseus was not run with a slow reader here`,
    slowReader: slowRows,
    gridNote: `${GRID_NODES} daemons on loopback, 16 shards on one host layer (majority write concern), players spread over the nodes, radius 100, ${SECONDS} s at ${RATE_HZ} Hz; nothing pinned; the kill is SIGKILL of the node holding the most shards, halfway; stalledInputs are inputs acknowledged more than 500 ms after they were sent`,
    grid: gridRows,
    note: `players on random walks (${SPEED} units/s) sending their position at ${RATE_HZ} Hz for ${SECONDS} s; changes sent every 50 ms; server pinned to core 0, every player in one process on core 1; ms from an input to another player seeing it`,
    rows
  }
}
