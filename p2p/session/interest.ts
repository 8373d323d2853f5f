/**
 * Interest management for world sessions, as a state machine with no I/O:
 * entity states and subscribers' areas go in, and each tick returns, per
 * subscriber, the updates that bring its view of the world up to date.
 * The daemon feeds it from the shards' change events and sends what it
 * returns; a simulator or a test drives it with a virtual clock.
 *
 * - An entity is a point (`x`, `y`) on a layer with its components; where
 *   it sits is the caller's rule (the daemon reads a `pos` component and
 *   falls back to its shard cell's centre).
 * - A subscriber has an area: a circle (`x`, `y`, `radius`) and the layers
 *   it wants (all when none is named). It sees every entity of those layers
 *   in the circle, the nearest `maxVisible` at most.
 * - Each tick a subscriber gets `enter` (with the whole state), `update`
 *   (the new state) and `leave`. Updates are coalesced: whatever happened to
 *   an entity since the last tick, only its state now counts, and a change
 *   that does not change what the subscriber would see (a move within the
 *   layer's position quantum, the same components written again) sends
 *   nothing.
 *
 * Cost. Entities and subscribers are kept in a uniform grid of `cellSize`
 * cells. A tick looks at each changed entity once (its fingerprint) and at
 * the subscribers whose areas overlap the cell it left or entered, so the
 * work grows with the changes near subscribers, not with the world; a
 * subscriber that moved is re-queried over the cells its circle covers.
 * Every map is bounded (`maxEntities`, `maxSubscribers`, `maxVisible`).
 */
import type { JsonValue } from '../../storage/crdt/codec.ts'

export interface InterestOptions {
  /** Side of the index's square cells, in world units (a subscriber's radius or a little more is a good size). */
  cellSize: number
  /** Entities tracked at most; past it, new ones are refused (upsert returns false). */
  maxEntities: number
  subscribers: number
  /** Entities one subscriber sees at most: the nearest ones. */
  maxVisible: number
  /** Positions are rounded to this step per layer before they are compared or sent (0: exact). */
  quantum: (layer: string) => number
}

export interface EntityState {
  /** Unique across the world: the daemon uses `shard/entity`. */
  key: string
  layer: string
  x: number
  y: number
  components: Record<string, JsonValue>
}

export interface Area {
  x: number
  y: number
  radius: number
  /** Layers to see; null or empty: every layer. */
  layers: readonly string[] | null
}

export type InterestUpdate =
  | { kind: 'enter' | 'update', key: string, layer: string, x: number, y: number, components: Record<string, JsonValue> }
  | { kind: 'leave', key: string }

/**
 * Folds a tick's updates into what a subscriber is still owed (`held`, by
 * key): the latest state of each entity, or that it left. An entity that
 * entered and then changed is still an entry; one that entered and left is a
 * leave the subscriber may not need (a leave of an entity it never had is
 * nothing to it). Keeps at most one entry per key, so what is owed is bounded
 * by what the subscriber can see and what left its view, not by how long it
 * was behind.
 */
export function coalesceUpdates (held: Map<string, InterestUpdate>, updates: readonly InterestUpdate[]): void {
  for (const update of updates) {
    const previous = held.get(update.key)
    held.set(update.key, previous?.kind === 'enter' && update.kind === 'update' ? { ...update, kind: 'enter' } : update)
  }
}

export interface TickResult {
  updates: Map<string, InterestUpdate[]>
  /** How many (entity, subscriber) pairs and grid entries the tick looked at: the work it did. */
  examined: number
}

export class InterestError extends Error {
  static override name = 'InterestError'
  override name = 'InterestError'
  readonly code: 'TOO_MANY_SUBSCRIBERS' | 'BAD_AREA' | 'UNKNOWN_SUBSCRIBER'
  constructor (code: InterestError['code'], message: string) {
    super(message)
    this.code = code
  }
}

interface Tracked extends EntityState {
  cell: string
}

interface Subscriber {
  area: Area
  cells: string[]
  /** What this subscriber was last sent of each entity it sees: its fingerprint. */
  seen: Map<string, string>
  /** Its area changed since the last tick: re-query it whole. */
  moved: boolean
}

export class InterestManager {
  private readonly options: InterestOptions
  private readonly entities = new Map<string, Tracked>()
  private readonly entityCells = new Map<string, Set<string>>()
  private readonly subscribers = new Map<string, Subscriber>()
  private readonly subscriberCells = new Map<string, Set<string>>()
  /** Entities changed since the last tick, with the cell each was in before its first change (null: it is new). */
  private readonly dirty = new Map<string, string | null>()
  /** Entities removed since the last tick. */
  private readonly removed = new Map<string, string>()

  constructor (options: InterestOptions) {
    if (!(options.cellSize > 0)) throw new RangeError('cellSize must be positive')
    this.options = options
  }

  /** An entity's state now; false when it is new and the index is full. */
  upsert (state: EntityState): boolean {
    if (!Number.isFinite(state.x) || !Number.isFinite(state.y)) return false
    const existing = this.entities.get(state.key)
    if (existing == null && this.entities.size >= this.options.maxEntities) return false
    const cell = this.cellOf(state.x, state.y)
    if (existing != null) {
      if (!this.dirty.has(state.key)) this.dirty.set(state.key, existing.cell)
      if (existing.cell !== cell) {
        this.unindex(this.entityCells, existing.cell, state.key)
        this.index(this.entityCells, cell, state.key)
      }
    } else {
      // Removed and back within one tick: it is a change from where it was.
      const before = this.removed.get(state.key) ?? null
      this.removed.delete(state.key)
      if (!this.dirty.has(state.key)) this.dirty.set(state.key, before)
      this.index(this.entityCells, cell, state.key)
    }
    this.entities.set(state.key, { ...state, cell })
    return true
  }

  remove (key: string): void {
    const existing = this.entities.get(key)
    if (existing == null) return
    this.entities.delete(key)
    this.unindex(this.entityCells, existing.cell, key)
    const before = this.dirty.get(key)
    this.dirty.delete(key)
    // It was new this tick: nobody saw it, nothing to take back.
    if (before === null) return
    this.removed.set(key, before ?? existing.cell)
  }

  subscribe (id: string, area: Area): void {
    checkArea(area, this.options.cellSize)
    if (!this.subscribers.has(id) && this.subscribers.size >= this.options.subscribers) {
      throw new InterestError('TOO_MANY_SUBSCRIBERS', `at most ${this.options.subscribers} subscribers`)
    }
    const existing = this.subscribers.get(id)
    if (existing != null) {
      this.move(id, area)
      return
    }
    const subscriber: Subscriber = { area, cells: [], seen: new Map(), moved: true }
    this.subscribers.set(id, subscriber)
    this.place(id, subscriber)
  }

  /** The subscriber's area changed (it moved, or wants other layers); the next tick sends what entered and left. */
  move (id: string, area: Area): void {
    checkArea(area, this.options.cellSize)
    const subscriber = this.subscribers.get(id)
    if (subscriber == null) throw new InterestError('UNKNOWN_SUBSCRIBER', `no subscriber ${id}`)
    for (const cell of subscriber.cells) this.unindex(this.subscriberCells, cell, id)
    subscriber.area = area
    subscriber.moved = true
    this.place(id, subscriber)
  }

  unsubscribe (id: string): void {
    const subscriber = this.subscribers.get(id)
    if (subscriber == null) return
    for (const cell of subscriber.cells) this.unindex(this.subscriberCells, cell, id)
    this.subscribers.delete(id)
  }

  /** What each subscriber must be sent to see the world as it is now; subscribers with nothing new are left out. */
  tick (): TickResult {
    const updates = new Map<string, InterestUpdate[]>()
    let examined = 0
    const out = (id: string, update: InterestUpdate): void => {
      let list = updates.get(id)
      if (list == null) updates.set(id, list = [])
      list.push(update)
    }
    // Fingerprints once per changed entity, shared by every subscriber that sees it.
    const prints = new Map<string, string>()
    const printOf = (entity: Tracked): string => {
      let print = prints.get(entity.key)
      if (print == null) prints.set(entity.key, print = this.fingerprint(entity))
      return print
    }
    for (const [id, subscriber] of this.subscribers) {
      if (!subscriber.moved) continue
      subscriber.moved = false
      const visible = this.query(subscriber)
      examined += visible.examined
      const keep = new Set(visible.keys)
      for (const key of subscriber.seen.keys()) {
        if (keep.has(key)) continue
        subscriber.seen.delete(key)
        out(id, { kind: 'leave', key })
      }
      for (const key of visible.keys) {
        const entity = this.entities.get(key)!
        const print = printOf(entity)
        const before = subscriber.seen.get(key)
        if (before === print) continue
        subscriber.seen.set(key, print)
        out(id, this.stateUpdate(before == null ? 'enter' : 'update', entity))
      }
    }
    for (const [key, cell] of this.removed) {
      for (const id of this.subscriberCells.get(cell) ?? []) {
        examined++
        const subscriber = this.subscribers.get(id)!
        if (subscriber.seen.delete(key)) out(id, { kind: 'leave', key })
      }
    }
    for (const [key, before] of this.dirty) {
      const entity = this.entities.get(key)!
      const near = new Set<string>(this.subscriberCells.get(entity.cell) ?? [])
      if (before != null && before !== entity.cell) for (const id of this.subscriberCells.get(before) ?? []) near.add(id)
      for (const id of near) {
        examined++
        const subscriber = this.subscribers.get(id)!
        const sees = subscriber.seen.get(key)
        if (!this.within(subscriber.area, entity)) {
          if (sees != null) {
            subscriber.seen.delete(key)
            out(id, { kind: 'leave', key })
          }
          continue
        }
        if (sees == null && subscriber.seen.size >= this.options.maxVisible) continue
        const print = printOf(entity)
        if (sees === print) continue
        subscriber.seen.set(key, print)
        out(id, this.stateUpdate(sees == null ? 'enter' : 'update', entity))
      }
    }
    this.dirty.clear()
    this.removed.clear()
    return { updates, examined }
  }

  private stateUpdate (kind: 'enter' | 'update', entity: Tracked): InterestUpdate {
    const q = this.options.quantum(entity.layer)
    return { kind, key: entity.key, layer: entity.layer, x: quantize(entity.x, q), y: quantize(entity.y, q), components: entity.components }
  }

  /** What a subscriber would be sent of an entity: its quantized position and its components. */
  private fingerprint (entity: Tracked): string {
    const q = this.options.quantum(entity.layer)
    return `${quantize(entity.x, q)},${quantize(entity.y, q)},${JSON.stringify(entity.components)}`
  }

  private within (area: Area, entity: EntityState): boolean {
    if (area.layers != null && area.layers.length > 0 && !area.layers.includes(entity.layer)) return false
    const dx = entity.x - area.x
    const dy = entity.y - area.y
    return dx * dx + dy * dy <= area.radius * area.radius
  }

  /** The entities a subscriber sees now, nearest first, at most maxVisible. */
  private query (subscriber: Subscriber): { keys: string[], examined: number } {
    const found: Array<[number, string]> = []
    let examined = 0
    const { area } = subscriber
    for (const cell of subscriber.cells) {
      for (const key of this.entityCells.get(cell) ?? []) {
        examined++
        const entity = this.entities.get(key)!
        if (!this.within(area, entity)) continue
        found.push([(entity.x - area.x) ** 2 + (entity.y - area.y) ** 2, key])
      }
    }
    found.sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1))
    return { keys: found.slice(0, this.options.maxVisible).map(([, key]) => key), examined }
  }

  private place (id: string, subscriber: Subscriber): void {
    const { x, y, radius } = subscriber.area
    const size = this.options.cellSize
    const cells: string[] = []
    for (let cx = Math.floor((x - radius) / size); cx <= Math.floor((x + radius) / size); cx++) {
      for (let cy = Math.floor((y - radius) / size); cy <= Math.floor((y + radius) / size); cy++) cells.push(`${cx},${cy}`)
    }
    subscriber.cells = cells
    for (const cell of cells) this.index(this.subscriberCells, cell, id)
  }

  private cellOf (x: number, y: number): string {
    return `${Math.floor(x / this.options.cellSize)},${Math.floor(y / this.options.cellSize)}`
  }

  private index (map: Map<string, Set<string>>, cell: string, key: string): void {
    let set = map.get(cell)
    if (set == null) map.set(cell, set = new Set())
    set.add(key)
  }

  private unindex (map: Map<string, Set<string>>, cell: string, key: string): void {
    const set = map.get(cell)
    if (set == null) return
    set.delete(key)
    if (set.size === 0) map.delete(cell)
  }
}

/** Areas are bounded so one subscriber cannot make a tick walk the whole grid: at most 4,096 cells. */
const MAX_AREA_CELLS = 4096

function checkArea (area: Area, cellSize: number): void {
  if (!Number.isFinite(area.x) || !Number.isFinite(area.y) || !Number.isFinite(area.radius) || area.radius < 0) {
    throw new InterestError('BAD_AREA', 'an area is a finite centre and a radius of 0 or more')
  }
  if (area.radius > maxRadius(cellSize)) throw new InterestError('BAD_AREA', `an area's radius is at most ${maxRadius(cellSize)}`)
  if (area.layers != null && area.layers.length > 16) throw new InterestError('BAD_AREA', 'at most 16 layers per area')
}

export function quantize (value: number, quantum: number): number {
  return quantum > 0 ? Math.round(value / quantum) * quantum : value
}

/** The largest radius an area may have for a given index cell size (MAX_AREA_CELLS cells). */
export function maxRadius (cellSize: number): number {
  return (Math.sqrt(MAX_AREA_CELLS) / 2 - 1) * cellSize
}
