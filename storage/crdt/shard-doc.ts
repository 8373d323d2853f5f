/**
 * The state of one shard as a delta-state CRDT (Almeida, Shoker, Baquero):
 *
 * - components: a last-writer-wins register per (entity, component), ordered
 *   by hybrid logical clock, then replica id; a deleted component is a
 *   tombstone (value undefined) until it is causally stable;
 * - entities: an add-wins observed-remove set (each add a fresh dot; a remove
 *   deletes the dots it observed, so a concurrent add survives);
 * - counters: PN-counters, one monotone (p, n) pair per replica;
 * - a causal context (DotContext) of every dot seen.
 *
 * Every local operation consumes one dot of this replica and is recorded in
 * the pending delta; `takeDelta()` hands it out for persistence and gossip.
 * `apply()` joins a delta or a snapshot; it is commutative, associative and
 * idempotent, so any order and any number of deliveries converge. Overwritten
 * values are dropped, not kept as history: memory follows live state.
 */
import { compareTimestamps, HybridClock } from './hlc.ts'
import { DotContext, type Dot } from './dots.ts'
import { checkJson, CodecError, MAX_STRING_BYTES, type JsonValue } from './codec.ts'

export interface ComponentEntry {
  entity: string
  component: string
  /** undefined for a deleted component (a tombstone). */
  value: JsonValue | undefined
  wall: number
  counter: number
  replica: string
  seq: number
  /** The write this one replaced where it was made: tells an overwrite from a concurrent conflict. Carried in deltas only. */
  prevReplica: string | undefined
  prevSeq: number
}

export interface MemberDot extends Dot {
  entity: string
}

export interface CounterEntry {
  name: string
  replica: string
  p: number
  n: number
  seq: number
}

/** A set of changes: one replica's recent operations (`delta`) or a replica's whole state (`snapshot`). */
export interface Patch {
  kind: 'delta' | 'snapshot'
  /** For a delta: the replica that made it and the range of its dots it covers. */
  origin?: string
  from?: number
  to?: number
  components: ComponentEntry[]
  adds: MemberDot[]
  /** Dots removed from the entity set (deltas only: removals travel in their remover's batch, never in a snapshot). */
  removes: MemberDot[]
  counters: CounterEntry[]
  /** Every dot the patch covers. For a delta: its own range plus the removed dots; for a snapshot: the replica's whole context. */
  context: DotContext
}

export interface ApplyResult {
  /** Entities whose visible state changed. */
  entities: Set<string>
  counters: Set<string>
  /** Remote writes that raced a different concurrent write to the same component (resolved by LWW). */
  conflicts: number
  /** Wall times of the remote writes that took effect, for convergence time. */
  appliedWalls: number[]
}

export class ShardDocError extends Error {
  static override name = 'ShardDocError'
  override name = 'ShardDocError'
  /** What was wrong, bounded: the API answers 413 for a value too large, 400 otherwise. */
  readonly code: 'BAD_NAME' | 'BAD_VALUE' | 'VALUE_TOO_LARGE' | 'BAD_COUNTER'
  constructor (code: ShardDocError['code'], message: string) {
    super(message)
    this.code = code
  }
}

export interface ShardDocLimits {
  /** Largest encoded size of one component value (see checkJson); the same limit the admission layer holds remote writes to. */
  maxValueBytes: number
}

/** Ids and names are short; the patch codec refuses longer ones, so the document does too. */
export const MAX_NAME_LENGTH = 128

/**
 * The document's boundary: an entity id, component or counter name must be
 * 1..MAX_NAME_LENGTH characters of well-formed text, exactly what the patch
 * codec writes and reads back. Checked before anything changes, so nothing
 * enters the document that could not be logged, replicated and replayed.
 */
export function checkName (name: string, what: string): void {
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_NAME_LENGTH || !name.isWellFormed()) {
    throw new ShardDocError('BAD_NAME', `${what} must be 1 to ${MAX_NAME_LENGTH} characters of well-formed text`)
  }
}

/** A component value the codec can write and read back unchanged (see checkJson), of at most `maxValueBytes`; throws ShardDocError. */
export function checkValue (value: unknown, what: string, maxValueBytes: number): void {
  let bytes: number
  try {
    bytes = checkJson(value)
  } catch (err) {
    if (err instanceof CodecError) throw new ShardDocError('BAD_VALUE', `${what}: ${err.message}`)
    throw err
  }
  if (bytes > maxValueBytes) throw new ShardDocError('VALUE_TOO_LARGE', `${what} is ${bytes} bytes; at most ${maxValueBytes} are allowed`)
}

/** Checks a whole write before any of it is applied: a refused write changes nothing. */
export function checkComponents (entity: string, components: Record<string, JsonValue | null>, maxValueBytes: number): void {
  checkName(entity, 'entity id')
  if (components == null || typeof components !== 'object' || Array.isArray(components)) throw new ShardDocError('BAD_VALUE', 'components must be an object')
  for (const [component, value] of Object.entries(components)) {
    checkName(component, 'component name')
    if (value !== null) checkValue(value, `component ${component}`, maxValueBytes)
  }
}

export interface EntityView {
  entity: string
  components: Record<string, JsonValue>
}

export class ShardDoc {
  readonly replica: string
  readonly clock: HybridClock
  private readonly seen = new DotContext()
  /** This replica's own dots up to here are in `seen`; later ones are added when the context is next read. */
  private ownInContext = 0
  private readonly components = new Map<string, Map<string, ComponentEntry>>()
  private readonly members = new Map<string, Dot[]>()
  private readonly counters = new Map<string, Map<string, CounterEntry>>()
  private seq = 0
  private pending: Patch | undefined

  private readonly maxValueBytes: number

  constructor (replica: string, clock: HybridClock, limits: Partial<ShardDocLimits> = {}) {
    this.replica = replica
    this.clock = clock
    this.maxValueBytes = limits.maxValueBytes ?? MAX_STRING_BYTES
  }

  /**
   * Every dot this replica has seen. Its own dots are contiguous, so they are
   * added in one range when the context is read rather than one by one.
   */
  get context (): DotContext {
    if (this.ownInContext < this.seq) {
      this.seen.addRange(this.replica, this.ownInContext + 1, this.seq)
      this.ownInContext = this.seq
    }
    return this.seen
  }

  /** This replica's last dot; the next operation gets seq + 1. */
  get lastSeq (): number {
    return this.seq
  }

  private nextDot (): number {
    const seq = ++this.seq
    const pending = this.pending ??= { kind: 'delta', origin: this.replica, from: seq, to: seq, components: [], adds: [], removes: [], counters: [], context: new DotContext() }
    pending.to = seq
    return seq
  }

  private ensureMember (entity: string): void {
    const dots = this.members.get(entity)
    if (dots != null && dots.length > 0) return
    const seq = this.nextDot()
    const dot = { replica: this.replica, seq }
    this.members.set(entity, [dot])
    this.pending!.adds.push({ entity, replica: this.replica, seq })
  }

  private write (entity: string, component: string, value: JsonValue | undefined): void {
    let byComponent = this.components.get(entity)
    if (byComponent == null) {
      byComponent = new Map()
      this.components.set(entity, byComponent)
    }
    const previous = byComponent.get(component)
    if (previous === undefined && value === undefined) return
    const seq = this.nextDot()
    this.clock.tick()
    const entry: ComponentEntry = {
      entity,
      component,
      value,
      wall: this.clock.wall,
      counter: this.clock.counter,
      replica: this.replica,
      seq,
      prevReplica: previous?.replica,
      prevSeq: previous?.seq ?? 0
    }
    byComponent.set(component, entry)
    this.pending!.components.push(entry)
  }

  /** Sets one component; the entity joins the set if it was not in it. */
  setComponent (entity: string, component: string, value: JsonValue): void {
    checkName(entity, 'entity id')
    checkName(component, 'component name')
    checkValue(value, `component ${component}`, this.maxValueBytes)
    this.ensureMember(entity)
    this.write(entity, component, value)
  }

  deleteComponent (entity: string, component: string): void {
    if (!this.components.get(entity)?.has(component)) return
    this.write(entity, component, undefined)
  }

  /** Replaces an entity: these components, and no others. */
  putEntity (entity: string, components: Record<string, JsonValue>): void {
    checkComponents(entity, components, this.maxValueBytes)
    this.ensureMember(entity)
    for (const [component, entry] of this.components.get(entity) ?? []) {
      if (entry.value !== undefined && !(component in components)) this.write(entity, component, undefined)
    }
    for (const [component, value] of Object.entries(components)) this.write(entity, component, value)
  }

  /** Changes some components; a null value deletes that component. */
  patchEntity (entity: string, components: Record<string, JsonValue | null>): void {
    checkComponents(entity, components, this.maxValueBytes)
    this.ensureMember(entity)
    for (const [component, value] of Object.entries(components)) {
      if (value === null) this.write(entity, component, undefined)
      else this.write(entity, component, value)
    }
  }

  /** Removes an entity: the adds this replica has observed, and its components. A concurrent re-add wins. */
  deleteEntity (entity: string): boolean {
    const dots = this.members.get(entity)
    if (dots == null || dots.length === 0) return false
    this.nextDot()
    for (const dot of dots) {
      this.pending!.removes.push({ entity, replica: dot.replica, seq: dot.seq })
      this.pending!.context.add(dot.replica, dot.seq)
    }
    this.members.delete(entity)
    for (const [component, entry] of this.components.get(entity) ?? []) {
      if (entry.value !== undefined) this.write(entity, component, undefined)
    }
    return true
  }

  increment (name: string, by: number): void {
    checkName(name, 'counter name')
    if (!Number.isSafeInteger(by) || by === 0) throw new ShardDocError('BAD_COUNTER', 'a counter changes by a non-zero integer')
    let byReplica = this.counters.get(name)
    if (byReplica == null) {
      byReplica = new Map()
      this.counters.set(name, byReplica)
    }
    const current = byReplica.get(this.replica)
    const seq = this.nextDot()
    const entry: CounterEntry = {
      name,
      replica: this.replica,
      p: (current?.p ?? 0) + (by > 0 ? by : 0),
      n: (current?.n ?? 0) + (by < 0 ? -by : 0),
      seq
    }
    byReplica.set(this.replica, entry)
    this.pending!.counters.push(entry)
  }

  /** The local changes since the last call, as one delta; undefined if there were none. */
  takeDelta (): Patch | undefined {
    const delta = this.pending
    this.pending = undefined
    if (delta != null) delta.context.addRange(delta.origin!, delta.from!, delta.to!)
    return delta
  }

  /**
   * Joins a delta or a snapshot into this state. Only a delta removes: a
   * snapshot adds what it holds, but never takes an entity away by what its
   * context claims, so removals always arrive as the remover's own signed
   * batch (which the store keeps, see shard-store.ts) and no snapshot,
   * whoever served it, erases what a replica has.
   */
  apply (patch: Patch): ApplyResult {
    const result: ApplyResult = { entities: new Set(), counters: new Set(), conflicts: 0, appliedWalls: [] }
    const seen = this.context
    // A write from too far in the future is refused whole, before anything changes (ClockDriftError).
    let latest: ComponentEntry | undefined
    for (const incoming of patch.components) {
      if (latest == null || compareTimestamps(incoming.wall, incoming.counter, latest.wall, latest.counter) > 0) latest = incoming
    }
    if (latest != null) this.clock.check(latest.wall)

    // Entity set, add-wins: an add whose dot was already seen (present, or removed) changes nothing.
    for (const add of patch.adds) {
      if (seen.has(add.replica, add.seq)) continue
      const dots = this.members.get(add.entity)
      if (dots == null) this.members.set(add.entity, [{ replica: add.replica, seq: add.seq }])
      else dots.push({ replica: add.replica, seq: add.seq })
      result.entities.add(add.entity)
    }
    for (const remove of patch.removes) {
      const dots = this.members.get(remove.entity)
      if (dots == null) continue
      const kept = dots.filter((dot) => dot.replica !== remove.replica || dot.seq !== remove.seq)
      if (kept.length !== dots.length) {
        if (kept.length === 0) this.members.delete(remove.entity)
        else this.members.set(remove.entity, kept)
        result.entities.add(remove.entity)
      }
    }
    for (const incoming of patch.components) {
      // A write whose dot we have seen is already in our state, or was overwritten (its tombstone perhaps
      // collected since): applying it again could only resurrect something.
      if (seen.has(incoming.replica, incoming.seq)) continue
      let byComponent = this.components.get(incoming.entity)
      if (byComponent == null) {
        byComponent = new Map()
        this.components.set(incoming.entity, byComponent)
      }
      const current = byComponent.get(incoming.component)
      if (current != null) {
        if (current.replica === incoming.replica && current.seq === incoming.seq) continue
        const order = compareTimestamps(incoming.wall, incoming.counter, current.wall, current.counter) || (incoming.replica < current.replica ? -1 : incoming.replica > current.replica ? 1 : 0)
        const sequential = (incoming.prevReplica === current.replica && incoming.prevSeq === current.seq) ||
          (current.prevReplica === incoming.replica && current.prevSeq === incoming.seq)
        if (!sequential && current.replica !== incoming.replica) result.conflicts++
        if (order <= 0) continue
      }
      byComponent.set(incoming.component, incoming)
      result.entities.add(incoming.entity)
      result.appliedWalls.push(incoming.wall)
    }

    for (const incoming of patch.counters) {
      let byReplica = this.counters.get(incoming.name)
      if (byReplica == null) {
        byReplica = new Map()
        this.counters.set(incoming.name, byReplica)
      }
      const current = byReplica.get(incoming.replica)
      if (current != null && current.seq >= incoming.seq) continue
      byReplica.set(incoming.replica, incoming)
      result.counters.add(incoming.name)
    }

    this.context.merge(patch.context)
    // Every later local write orders after what we have now seen.
    if (latest != null) this.clock.observe(latest.wall, latest.counter)
    // Our own dots can come back (a restart replaying its log, a peer echoing a snapshot): never reuse one.
    this.seq = Math.max(this.seq, this.context.highest(this.replica))
    // Dots of ours learnt from a peer are in the context already; the ones between them we may never have had.
    this.ownInContext = this.seq
    return result
  }

  /**
   * What a replica whose context is `theirs` lacks of this state: every
   * component entry, entity dot and counter entry whose dot it has not seen,
   * as a snapshot patch whose context is exactly those dots. A snapshot claims
   * nothing it does not hold (and a receiver believes nothing else; see
   * p2p/admission), so overwritten writes it never saw stay unseen there, and
   * what a peer lacks is counted in entries, not in dots.
   */
  stateFor (theirs: DotContext): Patch {
    const context = new DotContext()
    const components: ComponentEntry[] = []
    for (const byComponent of this.components.values()) {
      for (const entry of byComponent.values()) {
        if (theirs.has(entry.replica, entry.seq)) continue
        components.push(entry)
        context.add(entry.replica, entry.seq)
      }
    }
    const adds: MemberDot[] = []
    for (const [entity, dots] of this.members) {
      for (const dot of dots) {
        if (theirs.has(dot.replica, dot.seq)) continue
        adds.push({ entity, replica: dot.replica, seq: dot.seq })
        context.add(dot.replica, dot.seq)
      }
    }
    const counters: CounterEntry[] = []
    for (const byReplica of this.counters.values()) {
      for (const entry of byReplica.values()) {
        if (theirs.has(entry.replica, entry.seq)) continue
        counters.push(entry)
        context.add(entry.replica, entry.seq)
      }
    }
    return { kind: 'snapshot', components, adds, removes: [], counters, context }
  }

  /** The whole state as a snapshot patch. */
  snapshot (): Patch {
    const components: ComponentEntry[] = []
    for (const byComponent of this.components.values()) for (const entry of byComponent.values()) components.push(entry)
    const adds: MemberDot[] = []
    for (const [entity, dots] of this.members) for (const dot of dots) adds.push({ entity, replica: dot.replica, seq: dot.seq })
    const counters: CounterEntry[] = []
    for (const byReplica of this.counters.values()) for (const entry of byReplica.values()) counters.push(entry)
    return { kind: 'snapshot', components, adds, removes: [], counters, context: this.context.clone() }
  }

  hasEntity (entity: string): boolean {
    return (this.members.get(entity)?.length ?? 0) > 0
  }

  entity (entity: string): EntityView | undefined {
    if (!this.hasEntity(entity)) return undefined
    const components: Record<string, JsonValue> = {}
    for (const [component, entry] of this.components.get(entity) ?? []) {
      if (entry.value !== undefined) components[component] = entry.value
    }
    return { entity, components }
  }

  /** The write a component holds now (its value, its timestamp and dot), tombstones included. */
  entry (entity: string, component: string): Readonly<ComponentEntry> | undefined {
    return this.components.get(entity)?.get(component)
  }

  entityIds (): string[] {
    return [...this.members.keys()].filter((entity) => this.hasEntity(entity)).sort()
  }

  counter (name: string): number {
    let value = 0
    for (const entry of this.counters.get(name)?.values() ?? []) value += entry.p - entry.n
    return value
  }

  counterNames (): string[] {
    return [...this.counters.keys()].sort()
  }

  /** Live component values plus tombstones: what memory holds. */
  get entryCount (): number {
    let count = 0
    for (const byComponent of this.components.values()) count += byComponent.size
    return count
  }

  /**
   * Drops tombstones every replica is known to have seen: `stable` holds the
   * dots seen by all of the shard's writers, and this replica has every dot
   * those writers had made when they said so, so no older write can still
   * arrive to be resurrected by the missing tombstone.
   */
  collectGarbage (stable: DotContext): number {
    let dropped = 0
    for (const [entity, byComponent] of this.components) {
      for (const [component, entry] of byComponent) {
        if (entry.value === undefined && stable.has(entry.replica, entry.seq)) {
          byComponent.delete(component)
          dropped++
        }
      }
      if (byComponent.size === 0 && !this.hasEntity(entity)) this.components.delete(entity)
    }
    return dropped
  }
}
