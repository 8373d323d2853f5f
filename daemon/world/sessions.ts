/**
 * World sessions: the WebSocket end of the session protocol
 * (client/protocol.ts) on the node's API port.
 *
 * The node a client connects to relays; it does not redirect. It replicates,
 * read-only, the shards its sessions' areas cover (they are opened like any
 * shard and follow their hosts' deltas by gossip), feeds their entities into
 * one interest manager per layer (p2p/session/interest.ts), and sends each
 * session what changed in its area at the layer's tick rate. Inputs go to the
 * shard's host: applied here when this node holds the shard, otherwise
 * carried over `/metagrid/input/2.0.0` (p2p/session/forward.ts); the host
 * applies both through inputs.ts. An input is retried while its shard has
 * no reachable host (a failover, a handoff), for `inputTimeoutMs`, and then
 * refused with `retry`.
 *
 * What a session may do is checked once at `hello` (loopback, or a
 * capability token naming this node) and per input (the token's grants on
 * `shard:<id>`), by the same authenticator as the HTTP API. A page of another
 * origin may not open a session (its Origin is checked as the API checks a
 * write's). Every frame is bounded; a bad one ends the session with an
 * `error` frame, counted in `metagrid_session_rejected_total{reason}`.
 */
import { randomBytes } from 'node:crypto'
import { z } from 'zod'
import { decodeFrame, encodeFrame, entityKey, INPUT_COMPONENT, POSITION_COMPONENT, SessionProtocolError, type AckFrame, type ServerFrame, type TickEntry } from '../../client/protocol.ts'
import { coalesceUpdates, InterestError, InterestManager, maxRadius, type InterestUpdate } from '../../p2p/session/interest.ts'
import { MAX_NAME_LENGTH } from '../../storage/crdt/shard-doc.ts'
import type { JsonValue } from '../../storage/crdt/codec.ts'
import { ApiError } from '../api/errors.ts'
import { applyInput, inputMark, refusal } from './inputs.ts'
import type { ForwardedInput, InputAnswer, InputRelay } from '../../p2p/session/forward.ts'
import type { Layer, World } from '../../p2p/placement/world.ts'
import type { Replication } from '../../p2p/sync/replication.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { Authenticator, Caller } from '../api/authorize.ts'
import type { ShardWriter } from './writes.ts'
import type { Metrics } from '../metrics.ts'
import type { Logger } from '../log/logger.ts'
import type { WebSocket } from 'ws'

export interface SessionsOptions {
  maxSessions: number
  maxVisible: number
  maxEntities: number
  inputTimeoutMs: number
  maxInputsInFlight: number
}

export interface SessionsComponents {
  world: World
  self: string
  replication: Replication
  writer: ShardWriter
  relay: InputRelay
  /** The node that takes writes for a shard now (its lease holder), if any. */
  hostOf: (shard: string) => string | null
  authenticator: Authenticator
  metrics: Metrics | null
  logger: Logger
}

/** A reader this far behind is closed rather than buffered for without bound; it can reconnect and get a snapshot. */
const MAX_BUFFERED_BYTES = 1024 * 1024
/** A reader with this much queued gets no more ticks: its changes are held, coalesced, until it is under `RESUME_BYTES`. */
const HOLD_BYTES = 256 * 1024
const RESUME_BYTES = 64 * 1024
const HELLO_TIMEOUT_MS = 5_000
/** How long a closed slow reader's socket (and what it has buffered) is kept for it to read its way to the close. */
const SLOW_READER_GRACE_MS = 5_000
/** Entities of one session whose shard it remembers, so an entity that crossed a border is deleted where it was. */
const MAX_OWN_ENTITIES = 64
/** WebSocket close codes: policy violation (bad frame, refused token), try again later (slow reader, full), going away. */
const CLOSE_POLICY = 1008
const CLOSE_TRY_LATER = 1013
const CLOSE_GOING_AWAY = 1001
/** A layer clock kept for relayed inputs alone stops this long after the last one. */
const CLOCK_IDLE_MS = 2_000

const tickMs = (layer: Layer): number => Math.round(1000 / layer.tickHz)

// eslint-disable-next-line no-control-regex
const name = z.string().min(1).max(MAX_NAME_LENGTH).regex(/^[^\u0000-\u001f~]/, { error: 'expected a name with no control characters, not starting with ~' }).regex(/^[^\u0000-\u001f]+$/)
const helloFrame = z.strictObject({ v: z.literal(1), t: z.literal('hello'), client: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, { error: 'a client id is 1 to 64 letters, digits, _ or -' }), token: z.instanceof(Uint8Array).refine((b) => b.byteLength <= 16 * 1024, { error: 'a token is at most 16 KiB' }).optional() })
const areaFrame = z.strictObject({ v: z.literal(1), t: z.literal('area'), x: z.number(), y: z.number(), radius: z.number().min(0), layers: z.array(z.string().max(24)).max(16).optional() })
const inputFrame = z.strictObject({
  v: z.literal(1),
  t: z.literal('input'),
  seq: z.int().min(1).max(Number.MAX_SAFE_INTEGER),
  op: z.enum(['put', 'delete']),
  layer: z.string().max(24),
  entity: name,
  x: z.number(),
  y: z.number(),
  components: z.record(name, z.json()).optional()
})

interface LayerFeed {
  layer: Layer
  interest: InterestManager
  /** key → the shard its state came from and the input mark it carried: a stale copy in a shard it left does not override it. */
  where: Map<string, { shard: string, seq: number }>
  /** Shards whose entities are in `interest` (opened for a session's area). */
  loaded: Set<string>
  /** Sessions that get a tick next time even if nothing changed: their snapshot after an area. */
  fresh: Set<string>
  /** Shards hosted here that took an input since the last tick: committed together just before it. */
  dirty: Set<ShardStore>
  /** Shards whose commit window this layer's clock set (back to `batchMs` when the clock stops). */
  clocked: Set<ShardStore>
  /** When an input last reached a shard of this layer hosted here. */
  lastInputAt: number
  n: number
  timer: NodeJS.Timeout | undefined
  /** A tick is committing; the next timer fire waits for it rather than overlap. */
  busy: boolean
}

/** The connection under a WebSocket: frames written in one turn of the event loop are held and go out in one write. */
export interface Corkable {
  cork: () => void
  uncork: () => void
}

interface Session {
  id: string
  socket: WebSocket
  transport: Corkable | null
  corked: boolean
  remote: string
  client: string | null
  caller: Caller | null
  hello: Promise<void> | null
  layers: Set<string>
  inFlight: number
  /** key → the shard this session last put the entity in. */
  own: Map<string, string>
  /** The area being applied (shards opening); a newer one replaces it when it is done. */
  areaBusy: boolean
  nextArea: z.infer<typeof areaFrame> | null
  /** Per layer, the changes held back while this reader is behind, coalesced to the latest per entity. */
  held: Map<string, Map<string, InterestUpdate>>
  closed: boolean
}

export class WorldSessions {
  private readonly components: SessionsComponents
  private readonly options: SessionsOptions
  private readonly log: Logger
  private readonly feeds = new Map<string, LayerFeed>()
  private readonly sessions = new Map<string, Session>()
  readonly maxRadius: number
  private running = false

  private readonly onChange = (event: CustomEvent<{ shard: string, result: { entities: Set<string> } | null }>): void => {
    const { shard, result } = event.detail
    if (result == null) return
    const feed = this.feedOf(shard)
    if (feed == null || !feed.loaded.has(shard)) return
    const store = this.components.replication.opened(shard)
    if (store == null) return
    for (const entity of result.entities) this.refresh(feed, shard, entity, store)
  }

  constructor (components: SessionsComponents, options: SessionsOptions) {
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:sessions' })
    const { cellSize } = components.world.config
    this.maxRadius = Math.min(2 * cellSize, maxRadius(cellSize))
    for (const layer of components.world.config.layers) {
      this.feeds.set(layer.name, {
        layer,
        interest: new InterestManager({ cellSize, maxEntities: options.maxEntities, subscribers: Math.max(1, options.maxSessions), maxVisible: options.maxVisible, quantum: () => layer.quantum }),
        where: new Map(),
        loaded: new Set(),
        fresh: new Set(),
        dirty: new Set(),
        clocked: new Set(),
        lastInputAt: 0,
        n: 0,
        timer: undefined,
        busy: false
      })
    }
  }

  start (): void {
    this.running = true
    this.components.replication.addEventListener('change', this.onChange)
  }

  stop (): void {
    this.running = false
    this.components.replication.removeEventListener('change', this.onChange)
    for (const session of this.sessions.values()) this.close(session, CLOSE_GOING_AWAY, 'SHUTDOWN', 'the node is shutting down')
    this.ticking(false)
  }

  /**
   * A layer's clock runs while a session is open here or inputs reach its
   * shards here (relayed by other nodes' sessions): an idle node has no timer
   * firing 20 times a second per layer.
   */
  private ticking (on: boolean, only?: LayerFeed): void {
    for (const feed of only != null ? [only] : this.feeds.values()) {
      if (on && feed.timer == null) feed.timer = setInterval(() => { void this.tick(feed) }, tickMs(feed.layer))
      if (!on && feed.timer != null) {
        clearInterval(feed.timer)
        feed.timer = undefined
        // Writes go back to the store's own window; what waited for a tick is committed now.
        for (const store of feed.clocked) {
          store.commitWindowMs = null
          void store.flushNow().catch(() => {})
        }
        feed.clocked.clear()
        feed.dirty.clear()
      }
    }
  }

  /**
   * Applies an input to a shard this node hosts: from a session here or one
   * relayed by another node. Inputs are committed on the layer's clock: every
   * input a shard took during a tick goes to LevelDB (and to the voters, and
   * by gossip to the relaying nodes) as one batch, just before the tick that
   * shows it; each is acknowledged once that batch meets the write concern.
   * If the clock stalls, a write waits at most one tick interval (the
   * store's commit window), as it would for the next tick.
   */
  async applyHere (input: ForwardedInput): Promise<InputAnswer> {
    const feed = this.running ? this.feedOf(input.shard) : undefined
    const store = feed == null ? undefined : this.components.replication.opened(input.shard)
    if (feed != null && store != null) {
      feed.lastInputAt = Date.now()
      if (!feed.clocked.has(store)) {
        store.commitWindowMs = tickMs(feed.layer)
        feed.clocked.add(store)
      }
      feed.dirty.add(store)
      this.ticking(true, feed)
    }
    return applyInput(this.components.writer, input)
  }

  private feedOf (shard: string): LayerFeed | undefined {
    const info = this.components.world.shard(shard)
    return info == null ? undefined : this.feeds.get(info.layer.name)
  }

  /**
   * Takes a new WebSocket; `crossOrigin` says whether a browser page of
   * another origin opened it; `transport` is the connection under it.
   */
  attach (socket: WebSocket, remote: string, crossOrigin: boolean, transport: Corkable | null = null): void {
    const metrics = this.components.metrics
    const session: Session = { id: randomBytes(8).toString('hex'), socket, transport, corked: false, remote, client: null, caller: null, hello: null, layers: new Set(), inFlight: 0, own: new Map(), areaBusy: false, nextArea: null, held: new Map(), closed: false }
    if (crossOrigin) {
      this.close(session, CLOSE_POLICY, 'CROSS_ORIGIN', 'a page of another origin may not open a session on this node')
      return
    }
    if (!this.running || this.sessions.size >= this.options.maxSessions) {
      this.close(session, CLOSE_TRY_LATER, 'TOO_MANY_SESSIONS', `this node takes at most ${this.options.maxSessions} sessions`)
      return
    }
    this.sessions.set(session.id, session)
    metrics?.sessions.set(this.sessions.size)
    this.ticking(true)
    const hello = setTimeout(() => { if (session.client == null) this.close(session, CLOSE_POLICY, 'NO_HELLO', `no hello within ${HELLO_TIMEOUT_MS} ms`) }, HELLO_TIMEOUT_MS)
    socket.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      if (session.closed) return
      const bytes = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data
      metrics?.sessionBytes.inc({ direction: 'in' }, bytes.byteLength)
      if (!isBinary) {
        this.close(session, CLOSE_POLICY, 'NOT_BINARY', 'session frames are binary (DAG-CBOR)')
        return
      }
      this.receive(session, bytes).catch((err: unknown) => {
        this.log.error({ code: 'SESSION_INTERNAL', err }, 'session frame failed')
        this.close(session, CLOSE_POLICY, 'INTERNAL', 'the node failed on a frame')
      })
    })
    const gone = (): void => {
      clearTimeout(hello)
      session.closed = true
      this.drop(session)
    }
    socket.on('close', gone)
    socket.on('error', gone)
  }

  private async receive (session: Session, bytes: Uint8Array): Promise<void> {
    let frame
    try {
      frame = decodeFrame(bytes)
    } catch (err) {
      if (err instanceof SessionProtocolError) {
        this.close(session, CLOSE_POLICY, err.code, err.message)
        return
      }
      throw err
    }
    this.components.metrics?.sessionFrames.inc({ direction: 'in', type: ['hello', 'area', 'input'].includes(frame.t) ? frame.t : 'unknown' })
    if (session.client == null) {
      // Frames sent right behind the hello wait for its token check.
      if (session.hello != null) {
        await session.hello
        if (session.client == null) return
      } else if (frame.t === 'hello') {
        session.hello = this.hello(session, frame)
        await session.hello
        return
      } else {
        this.close(session, CLOSE_POLICY, 'HELLO_FIRST', 'the first frame is a hello')
        return
      }
    }
    if (frame.t === 'hello') {
      this.close(session, CLOSE_POLICY, 'HELLO_TWICE', 'a session says hello once')
      return
    }
    switch (frame.t) {
      case 'area': {
        const parsed = areaFrame.safeParse(frame)
        if (!parsed.success) {
          this.close(session, CLOSE_POLICY, 'BAD_AREA', `bad area: ${parsed.error.issues[0]?.message ?? 'invalid'}`)
          return
        }
        session.nextArea = parsed.data
        if (!session.areaBusy) await this.applyAreas(session)
        return
      }
      case 'input': {
        const parsed = inputFrame.safeParse(frame)
        if (!parsed.success) {
          this.close(session, CLOSE_POLICY, 'BAD_INPUT', `bad input: ${parsed.error.issues[0]?.message ?? 'invalid'}`)
          return
        }
        await this.input(session, parsed.data)
        return
      }
      default:
        this.close(session, CLOSE_POLICY, 'UNKNOWN_FRAME', `no frame type ${JSON.stringify(frame.t.slice(0, 32))} in session protocol 1`)
    }
  }

  private async hello (session: Session, frame: Record<string, unknown>): Promise<void> {
    const parsed = helloFrame.safeParse(frame)
    if (!parsed.success) {
      this.close(session, CLOSE_POLICY, 'BAD_HELLO', `bad hello: ${parsed.error.issues[0]?.message ?? 'invalid'}`)
      return
    }
    try {
      session.caller = await this.components.authenticator.authenticate(session.remote, parsed.data.token ?? null)
    } catch (err) {
      if (!(err instanceof ApiError)) throw err
      this.close(session, CLOSE_POLICY, err.code, err.message)
      return
    }
    session.client = parsed.data.client
    const tickHz = Object.fromEntries([...this.feeds.values()].map((feed) => [feed.layer.name, feed.layer.tickHz]))
    const { minX, minY, maxX, maxY, cellSize, layers } = this.components.world.config
    const world = { minX, minY, maxX, maxY, cellSize, layers: layers.map((layer) => layer.name) }
    this.send(session, { v: 1, t: 'welcome', node: this.components.self, session: session.id, tickHz, maxRadius: this.maxRadius, world })
  }

  /** Applies the session's newest area: opens the shards it covers, then (re)subscribes it on each layer. */
  private async applyAreas (session: Session): Promise<void> {
    session.areaBusy = true
    try {
      while (session.nextArea != null && !session.closed) {
        const area = session.nextArea
        session.nextArea = null
        const wanted = new Set(area.layers ?? this.feeds.keys())
        const unknown = [...wanted].find((layer) => !this.feeds.has(layer))
        if (unknown != null) {
          this.close(session, CLOSE_POLICY, 'BAD_AREA', `the world has no layer ${JSON.stringify(unknown)}`)
          return
        }
        if (!Number.isFinite(area.x) || !Number.isFinite(area.y) || area.radius > this.maxRadius) {
          this.close(session, CLOSE_POLICY, 'BAD_AREA', `an area is a finite point and a radius of at most ${this.maxRadius}`)
          return
        }
        for (const layer of wanted) {
          const feed = this.feeds.get(layer)!
          for (const shard of this.shardsIn(area, layer)) await this.load(feed, shard)
        }
        if (session.closed) return
        for (const [layer, feed] of this.feeds) {
          if (!wanted.has(layer)) {
            if (session.layers.delete(layer)) feed.interest.unsubscribe(session.id)
            session.held.delete(layer)
            continue
          }
          const circle = { x: area.x, y: area.y, radius: area.radius, layers: null }
          try {
            if (session.layers.has(layer)) feed.interest.move(session.id, circle)
            else feed.interest.subscribe(session.id, circle)
          } catch (err) {
            if (!(err instanceof InterestError)) throw err
            this.close(session, CLOSE_TRY_LATER, err.code, err.message)
            return
          }
          session.layers.add(layer)
          feed.fresh.add(session.id)
        }
      }
    } finally {
      session.areaBusy = false
    }
  }

  /** The world shards of `layer` whose cells a circle overlaps (its bounding square: at most 5 × 5 for the largest radius). */
  private shardsIn (area: { x: number, y: number, radius: number }, layer: string): string[] {
    const { world } = this.components
    const { minX, minY, cellSize } = world.config
    const clamp = (value: number, max: number): number => Math.max(0, Math.min(max - 1, value))
    const x0 = clamp(Math.floor((area.x - area.radius - minX) / cellSize), world.columns)
    const x1 = clamp(Math.floor((area.x + area.radius - minX) / cellSize), world.columns)
    const y0 = clamp(Math.floor((area.y - area.radius - minY) / cellSize), world.rows)
    const y1 = clamp(Math.floor((area.y + area.radius - minY) / cellSize), world.rows)
    const shards: string[] = []
    for (let cy = y0; cy <= y1; cy++) for (let cx = x0; cx <= x1; cx++) shards.push(`${layer}.${cx}.${cy}`)
    return shards
  }

  private async load (feed: LayerFeed, shard: string): Promise<void> {
    if (feed.loaded.has(shard)) return
    const store = await this.components.replication.ensure(shard)
    if (feed.loaded.has(shard)) return
    feed.loaded.add(shard)
    for (const entity of store.doc.entityIds()) this.refresh(feed, shard, entity, store)
  }

  /** Brings one entity of a loaded shard into the layer's interest manager as the shard has it now. */
  private refresh (feed: LayerFeed, shard: string, entity: string, store: ShardStore): void {
    // Transfer records (~handoff., ~pending.) are the handoff protocol's, not the world's.
    if (entity.startsWith('~')) return
    const key = entityKey(feed.layer.name, entity)
    const known = feed.where.get(key)
    const view = store.doc.entity(entity)
    if (view == null) {
      // Deleted here: gone, unless it lives on in the shard it moved to.
      if (known == null || known.shard === shard) {
        feed.interest.remove(key)
        feed.where.delete(key)
      }
      return
    }
    const { [INPUT_COMPONENT]: markValue, ...components } = view.components
    const seq = inputMark(markValue)?.s ?? 0
    // A copy in a shard the entity left, written by an older input: not what the entity is now.
    if (known != null && known.shard !== shard && seq < known.seq) return
    const { x, y } = positionOf(components, this.cellCentre(shard))
    if (feed.interest.upsert({ key, layer: feed.layer.name, x, y, components })) feed.where.set(key, { shard, seq })
  }

  private cellCentre (shard: string): { x: number, y: number } {
    const info = this.components.world.shard(shard)
    const { minX, minY, cellSize } = this.components.world.config
    return { x: minX + ((info?.cx ?? 0) + 0.5) * cellSize, y: minY + ((info?.cy ?? 0) + 0.5) * cellSize }
  }

  private async tick (feed: LayerFeed): Promise<void> {
    if (!this.running || feed.busy) return
    if (feed.dirty.size > 0) {
      const dirty = [...feed.dirty]
      feed.dirty.clear()
      feed.busy = true
      this.components.metrics?.sessionTickCommits.inc(dirty.length)
      try {
        // A failed commit is answered to its inputs by the store; the tick goes on.
        await Promise.all(dirty.map(async (store) => store.flushNow().catch(() => {})))
      } finally {
        feed.busy = false
      }
      if (!this.running) return
    }
    if (this.sessions.size === 0) {
      // Kept for relayed inputs only: stops a while after the last one.
      if (Date.now() - feed.lastInputAt > CLOCK_IDLE_MS) this.ticking(false, feed)
      return
    }
    feed.n++
    const { updates } = feed.interest.tick()
    for (const id of feed.fresh) if (!updates.has(id)) updates.set(id, [])
    feed.fresh.clear()
    for (const [id, list] of updates) {
      const session = this.sessions.get(id)
      if (session == null || session.closed) continue
      this.sendTick(session, feed, list)
    }
    let buffered = 0
    for (const session of this.sessions.values()) {
      // A reader that was behind gets what it is owed once it has caught up, even on a tick with nothing new for it.
      if (!session.closed && !updates.has(session.id) && session.held.has(feed.layer.name)) this.sendTick(session, feed, [])
      buffered += session.socket.bufferedAmount
    }
    this.components.metrics?.sessionBufferedBytes.set(buffered)
  }

  /**
   * One tick's changes to one session. A reader with more than `HOLD_BYTES`
   * queued is sent nothing more: its changes are held, coalesced to the
   * latest state per entity, and sent as one tick once its queue is under
   * `RESUME_BYTES`. What a slow reader costs is then bounded by what it can
   * see, and what it reads when it comes back is current, not a backlog.
   */
  private sendTick (session: Session, feed: LayerFeed, list: InterestUpdate[]): void {
    const layer = feed.layer.name
    const held = session.held.get(layer)
    if (session.socket.bufferedAmount > (held != null ? RESUME_BYTES : HOLD_BYTES)) {
      const owed = held ?? new Map<string, InterestUpdate>()
      coalesceUpdates(owed, list)
      session.held.set(layer, owed)
      this.components.metrics?.sessionHeldTicks.inc()
      if (owed.size > this.options.maxVisible * 4) this.close(session, CLOSE_TRY_LATER, 'SLOW_READER', 'the client read too slowly; reconnect for a fresh snapshot')
      return
    }
    if (held != null) {
      coalesceUpdates(held, list)
      session.held.delete(layer)
      list = [...held.values()]
    }
    this.send(session, { v: 1, t: 'tick', layer, n: feed.n, u: list.map(toEntry) })
  }

  private async input (session: Session, frame: z.infer<typeof inputFrame>): Promise<void> {
    const started = performance.now()
    const metrics = this.components.metrics
    const ack = (answer: InputAnswer, shard?: string): void => {
      if (answer.ok) {
        metrics?.sessionInputs.inc({ result: answer.dup ? 'duplicate' : 'applied' })
        metrics?.sessionInputSeconds.observe((performance.now() - started) / 1000)
        this.send(session, { v: 1, t: 'ack', seq: frame.seq, ok: true, ...(answer.dup ? { dup: true } : {}), ...(shard != null ? { shard } : {}) })
      } else {
        metrics?.sessionInputs.inc({ result: answer.code })
        const refused: AckFrame = { v: 1, t: 'ack', seq: frame.seq, ok: false, code: answer.code, message: answer.message, retry: answer.retry }
        this.send(session, refused)
      }
    }
    const layer = this.feeds.get(frame.layer)?.layer
    const info = layer == null ? undefined : this.components.world.locate(frame.x, frame.y, layer.name)
    if (info == null) {
      ack({ ok: false, code: 'OUTSIDE_WORLD', message: `no shard of layer ${frame.layer} at (${frame.x}, ${frame.y})`, retry: false })
      return
    }
    if (frame.components != null && INPUT_COMPONENT in frame.components) {
      ack({ ok: false, code: 'RESERVED_COMPONENT', message: `${INPUT_COMPONENT} is the node's input mark`, retry: false })
      return
    }
    const key = entityKey(info.layer.name, frame.entity)
    const previous = session.own.get(key)
    const shard = frame.op === 'delete' ? previous ?? info.id : info.id
    try {
      this.components.authenticator.permits(session.caller!, `shard:${shard}`, 'write')
    } catch (err) {
      ack(refusal(err))
      return
    }
    if (session.inFlight >= this.options.maxInputsInFlight) {
      ack({ ok: false, code: 'TOO_MANY_INPUTS', message: `at most ${this.options.maxInputsInFlight} inputs in flight per session`, retry: true })
      return
    }
    session.inFlight++
    try {
      const client = session.client!
      const input: ForwardedInput = frame.op === 'put'
        ? { shard, op: 'put', entity: frame.entity, components: { ...frame.components, [POSITION_COMPONENT]: { x: frame.x, y: frame.y } }, client, seq: frame.seq }
        : { shard, op: 'delete', entity: frame.entity, client, seq: frame.seq }
      const answer = await this.deliver(input)
      if (answer.ok && frame.op === 'put') {
        // Crossed a border: the copy it left behind goes (an input mark as old as this one, so never a newer copy).
        if (previous != null && previous !== shard) void this.deliver({ shard: previous, op: 'delete', entity: frame.entity, client, seq: frame.seq })
        if (session.own.has(key) || session.own.size < MAX_OWN_ENTITIES) session.own.set(key, shard)
      } else if (answer.ok) {
        session.own.delete(key)
      }
      ack(answer, shard)
    } finally {
      session.inFlight--
    }
  }

  /** Applies an input where its shard is hosted, retrying while the shard has no reachable host, for `inputTimeoutMs`. */
  private async deliver (input: ForwardedInput): Promise<InputAnswer> {
    const deadline = Date.now() + this.options.inputTimeoutMs
    for (let attempt = 0; ; attempt++) {
      const host = this.components.hostOf(input.shard)
      const answer: InputAnswer = host == null
        ? { ok: false, code: 'NO_HOST', message: `shard ${input.shard} has no host right now`, retry: true }
        : host === this.components.self ? await this.applyHere(input) : await this.components.relay.send(host, input)
      const delay = Math.min(100 * 2 ** attempt, 1_000)
      if (answer.ok || !answer.retry || Date.now() + delay > deadline || !this.running) return answer
      await new Promise((resolve) => setTimeout(resolve, delay))
    }
  }

  private send (session: Session, frame: ServerFrame): void {
    if (session.closed) return
    if (session.socket.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.close(session, CLOSE_TRY_LATER, 'SLOW_READER', 'the client read too slowly; reconnect for a fresh snapshot')
      return
    }
    this.write(session, frame)
  }

  /**
   * One frame out, a fresh buffer each (none is reused while the socket may
   * still hold it). The frames of one turn of the event loop (a tick's
   * acknowledgements and the tick itself) leave in one write to the kernel.
   */
  private write (session: Session, frame: ServerFrame): void {
    const bytes = encodeFrame(frame)
    this.components.metrics?.sessionFrames.inc({ direction: 'out', type: frame.t })
    this.components.metrics?.sessionBytes.inc({ direction: 'out' }, bytes.byteLength)
    const { transport } = session
    if (transport != null && !session.corked) {
      session.corked = true
      transport.cork()
      setImmediate(() => {
        session.corked = false
        transport.uncork()
      })
    }
    session.socket.send(bytes)
  }

  /** Ends a session: an error frame says why (counted by reason), then the socket closes. */
  private close (session: Session, code: number, reason: string, message: string): void {
    if (!session.closed) {
      session.closed = true
      if (code !== CLOSE_GOING_AWAY) this.components.metrics?.sessionRejected.inc({ reason })
      if (session.socket.bufferedAmount <= MAX_BUFFERED_BYTES) this.write(session, { v: 1, t: 'error', code: reason, message })
    }
    this.drop(session)
    session.socket.close(code, reason.slice(0, 120))
    // A reader that stopped reading may never answer the close: what it left buffered goes after a grace period, not after ws's 30 s.
    if (reason === 'SLOW_READER') setTimeout(() => { session.socket.terminate() }, SLOW_READER_GRACE_MS).unref()
  }

  private drop (session: Session): void {
    if (!this.sessions.delete(session.id)) return
    for (const layer of session.layers) this.feeds.get(layer)?.interest.unsubscribe(session.id)
    session.layers.clear()
    // The layer clocks stop at their next tick once no session is open and no relayed input came for a while.
    this.components.metrics?.sessions.set(this.sessions.size)
  }
}

function toEntry (update: InterestUpdate): TickEntry {
  return update.kind === 'leave' ? ['l', update.key] : [update.kind === 'enter' ? 'e' : 'u', update.key, update.x, update.y, update.components]
}

/** An entity's position: its `pos` component ({ x, y }), else its shard cell's centre. */
function positionOf (components: Record<string, JsonValue>, fallback: { x: number, y: number }): { x: number, y: number } {
  const pos = components[POSITION_COMPONENT]
  if (pos != null && typeof pos === 'object' && !Array.isArray(pos)) {
    const { x, y } = pos
    if (typeof x === 'number' && typeof y === 'number' && Number.isFinite(x) && Number.isFinite(y)) return { x, y }
  }
  return fallback
}
