/**
 * Simulated players: N headless WorldClients in this process, each on a
 * random walk that crosses shard borders, sending its position at `rateHz`
 * and following the area around it. What `metagrid players` runs and the
 * world bench measures.
 *
 * Each input carries the time it was sent (`t`, this process's clock, shared
 * by every simulated player), so when another player sees it the time from
 * input to visible is a subtraction. Every input is tracked to its
 * acknowledgement: `lost` are inputs never acknowledged by the end (after a
 * drain), `appliedTwice` inputs acknowledged as applied more than once
 * (both must be 0); the longest acknowledgement is the stall a failover
 * caused.
 */
import { WorldClient, type WorldBounds } from '../../client/world-client.ts'

export interface PlayersOptions {
  urls: string[]
  count: number
  rateHz: number
  durationMs: number
  /** Area of interest around each player. */
  radius: number
  /** World units per second. */
  speed: number
  layer: string
  seed: number
  /** How long to wait for acknowledgements after the last input. */
  drainMs: number
  onProgress?: (progress: PlayersProgress) => void
}

export interface PlayersProgress {
  elapsedS: number
  connected: number
  sent: number
  acknowledged: number
  pending: number
  visibleP50Ms: number | null
  visibleP99Ms: number | null
  bytesInPerClientPerS: number
}

export interface PlayersReport {
  players: number
  rateHz: number
  durationS: number
  nodes: number
  inputs: { sent: number, acknowledged: number, duplicates: number, refused: number, lost: number, appliedTwice: number }
  /** Milliseconds from an input being sent to another player seeing it. */
  inputToVisibleMs: Summary
  /** Milliseconds from an input being sent to its acknowledgement (durable where its layer says). */
  ackMs: Summary
  /** Inputs whose acknowledgement took over 500 ms: stalls (failovers, handoffs, overload). */
  stalledInputs: number
  perClient: { updatesPerS: number, framesInPerS: number, bytesInPerS: number, bytesOutPerS: number }
  reconnects: number
}

export interface Summary { samples: number, p50: number | null, p90: number | null, p99: number | null, max: number | null }

interface Player {
  id: string
  world: WorldClient
  x: number
  y: number
  heading: number
  areaX: number
  areaY: number
  /** seq → applied acknowledgements seen. */
  applied: Map<number, number>
}

/** mulberry32: a small seeded generator, so a run's walks can be repeated. */
function random (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function summarize (values: number[]): Summary {
  if (values.length === 0) return { samples: 0, p50: null, p90: null, p99: null, max: null }
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q: number): number => Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! * 10) / 10
  return { samples: sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: Math.round(sorted[sorted.length - 1]! * 10) / 10 }
}

const now = (): number => performance.timeOrigin + performance.now()

export async function runPlayers (options: PlayersOptions): Promise<PlayersReport> {
  const rand = random(options.seed)
  // Player ids differ from run to run (the walks, from the seed, do not): what an earlier run left behind is not counted.
  const run = `r${Date.now().toString(36)}`
  const players: Player[] = []
  const visible: number[] = []
  const acks: number[] = []
  let sent = 0
  let refused = 0
  for (let i = 0; i < options.count; i++) {
    const id = `${run}-${i}`
    const world = new WorldClient({ urls: [options.urls[i % options.urls.length]!, ...options.urls.filter((_, j) => j !== i % options.urls.length)], client: id })
    const player: Player = { id, world, x: 0, y: 0, heading: rand() * 2 * Math.PI, areaX: Number.NaN, areaY: Number.NaN, applied: new Map() }
    world.addEventListener('update', (event) => { observe(player, (event as CustomEvent).detail) })
    world.addEventListener('enter', (event) => { observe(player, (event as CustomEvent).detail) })
    world.addEventListener('ack', (event) => {
      const ack = (event as CustomEvent<{ seq: number, ok: boolean, dup?: boolean }>).detail
      if (ack.ok && ack.dup !== true) player.applied.set(ack.seq, (player.applied.get(ack.seq) ?? 0) + 1)
    })
    players.push(player)
  }
  function observe (observer: Player, entity: { entity: string, components: Record<string, unknown> }): void {
    // Players of this run only: entities a run before left in the world say nothing of this one.
    if (entity.entity === observer.id || !entity.entity.startsWith(`${run}-`)) return
    const t = entity.components.t
    if (typeof t === 'number') visible.push(now() - t)
  }

  await Promise.all(players.map(async (p) => p.world.ready()))
  const bounds: WorldBounds = players[0]!.world.welcome!.world
  for (const p of players) {
    p.x = bounds.minX + rand() * (bounds.maxX - bounds.minX)
    p.y = bounds.minY + rand() * (bounds.maxY - bounds.minY)
  }
  const startedAt = now()
  const step = options.speed / options.rateHz
  const interval = 1000 / options.rateHz

  const send = (p: Player): void => {
    // A random walk: the heading drifts, and the walls of the world turn the player back.
    p.heading += (rand() - 0.5) * 0.6
    let x = p.x + Math.cos(p.heading) * step
    let y = p.y + Math.sin(p.heading) * step
    if (x < bounds.minX || x >= bounds.maxX) { p.heading = Math.PI - p.heading; x = p.x }
    if (y < bounds.minY || y >= bounds.maxY) { p.heading = -p.heading; y = p.y }
    p.x = x
    p.y = y
    // The area follows the player, re-sent once it has moved a quarter of its radius.
    if (!(Math.hypot(p.x - p.areaX, p.y - p.areaY) < options.radius / 4)) {
      p.areaX = p.x
      p.areaY = p.y
      p.world.setArea({ x: p.x, y: p.y, radius: options.radius, layers: [options.layer] })
    }
    const t = now()
    sent++
    p.world.put(options.layer, p.id, p.x, p.y, { t }).then(() => { acks.push(now() - t) }, () => { refused++ })
  }

  // Each player sends on its own phase of the interval, so inputs are spread over it, as real clients' are.
  const timers = players.map((p, i) => setTimeout(() => {
    send(p)
    timers[i] = setInterval(() => { send(p) }, interval) as unknown as ReturnType<typeof setTimeout>
  }, (i / players.length) * interval))
  const progress = setInterval(() => {
    if (options.onProgress == null) return
    const elapsedS = (now() - startedAt) / 1000
    const recent = summarize(visible.slice(-5000))
    options.onProgress({
      elapsedS,
      connected: players.filter((p) => p.world.node != null).length,
      sent,
      acknowledged: acks.length,
      pending: players.reduce((n, p) => n + p.world.unacknowledged, 0),
      visibleP50Ms: recent.p50,
      visibleP99Ms: recent.p99,
      bytesInPerClientPerS: players.reduce((n, p) => n + p.world.stats.bytesIn, 0) / players.length / Math.max(elapsedS, 0.001)
    })
  }, 1000)
  await new Promise((resolve) => setTimeout(resolve, options.durationMs))
  for (const timer of timers) clearInterval(timer)
  const durationS = (now() - startedAt) / 1000
  const totals = { updates: 0, framesIn: 0, bytesIn: 0, bytesOut: 0 }
  for (const p of players) {
    totals.updates += p.world.stats.updates
    totals.framesIn += p.world.stats.framesIn
    totals.bytesIn += p.world.stats.bytesIn
    totals.bytesOut += p.world.stats.bytesOut
  }
  const drainUntil = now() + options.drainMs
  while (now() < drainUntil && players.some((p) => p.world.unacknowledged > 0)) await new Promise((resolve) => setTimeout(resolve, 50))
  clearInterval(progress)
  const lost = players.reduce((n, p) => n + p.world.unacknowledged, 0)
  const duplicates = players.reduce((n, p) => n + p.world.stats.duplicates, 0)
  const appliedTwice = players.reduce((n, p) => n + [...p.applied.values()].filter((count) => count > 1).length, 0)
  const reconnects = players.reduce((n, p) => n + p.world.reconnects, 0)
  // Refused for good before the end; closing rejects what is still pending, which `lost` counts.
  const refusedForGood = refused
  for (const p of players) p.world.close()
  const perS = (value: number): number => Math.round(value / players.length / durationS * 10) / 10
  return {
    players: players.length,
    rateHz: options.rateHz,
    durationS: Math.round(durationS * 10) / 10,
    nodes: options.urls.length,
    inputs: { sent, acknowledged: acks.length, duplicates, refused: refusedForGood, lost, appliedTwice },
    inputToVisibleMs: summarize(visible),
    ackMs: summarize(acks),
    stalledInputs: acks.filter((ms) => ms > 500).length,
    perClient: { updatesPerS: perS(totals.updates), framesInPerS: perS(totals.framesIn), bytesInPerS: perS(totals.bytesIn), bytesOutPerS: perS(totals.bytesOut) },
    reconnects
  }
}
