/**
 * Binary form of a Patch (a delta or a snapshot), shared by gossip, the sync
 * protocol and the LevelDB log. Compact by construction: replica ids and
 * component or counter names are written once into tables and referred to by
 * index, components are grouped under their entity, and clock times are
 * offsets from the smallest one in the patch.
 *
 *   version=1, kind (0 delta, 1 snapshot)
 *   replicas: n, string*          names: n, string*
 *   [delta] origin index, from, to
 *   context: n, (replica index, prefix, ranges n, (gap, length - 1)*)*   [snapshot only]
 *   base wall
 *   entities: n, (entity, adds n (replica, seq)*, removes n (replica, seq)*,
 *                 components n (name, flags, [value], wall, counter, replica, seq, [prev replica, prev seq])*)*
 *   counters: n, (name, replica, p, n, seq)*
 *
 * Within the entity list an entity id is written as the length it shares
 * with the previous one plus the rest (ids are usually `prefix-<n>`); a
 * sequence number as the zigzag difference from the previous one (they run
 * in order) and a wall time as the difference from the previous wall time;
 * JSON object keys go through one dictionary for the whole patch.
 */
import { CodecError, Decoder, Encoder } from './codec.ts'
import { DotContext } from './dots.ts'
import { MAX_NAME_LENGTH, type ComponentEntry, type CounterEntry, type MemberDot, type Patch } from './shard-doc.ts'

const VERSION = 1
const KIND_DELTA = 0
const KIND_SNAPSHOT = 1
const FLAG_DELETED = 1
const FLAG_PREV = 2

export { MAX_NAME_LENGTH }

class Table {
  readonly items: string[] = []
  private readonly index = new Map<string, number>()
  private last: string | undefined
  private lastIndex = 0
  ref (value: string): number {
    // Runs of the same replica or name are the rule; skip the map for them.
    if (value === this.last) return this.lastIndex
    let i = this.index.get(value)
    if (i === undefined) {
      i = this.items.length
      this.items.push(value)
      this.index.set(value, i)
    }
    this.last = value
    this.lastIndex = i
    return i
  }
}

interface EntityGroup {
  adds: MemberDot[]
  removes: MemberDot[]
  components: ComponentEntry[]
}

export function encodePatch (patch: Patch): Uint8Array {
  const replicas = new Table()
  const names = new Table()
  // Entities and their changes, in groups. A snapshot has one group per entity, sorted by id; a delta has
  // one group per run of consecutive writes to the same entity (the decoder accepts an entity in several
  // groups), which saves building a map for the thousand writes of a typical batch.
  const groups: Array<[string, EntityGroup]> = []
  const byEntity = new Map<string, EntityGroup>()
  const group = (entity: string): EntityGroup => {
    let g = byEntity.get(entity)
    if (g == null) {
      g = { adds: [], removes: [], components: [] }
      byEntity.set(entity, g)
      groups.push([entity, g])
    }
    return g
  }
  const snapshot = patch.kind === 'snapshot'
  let run: EntityGroup | undefined
  let runEntity: string | undefined
  let baseWall = Number.POSITIVE_INFINITY
  for (const add of patch.adds) { group(add.entity).adds.push(add); replicas.ref(add.replica) }
  for (const remove of patch.removes) { group(remove.entity).removes.push(remove); replicas.ref(remove.replica) }
  for (const entry of patch.components) {
    if (snapshot) {
      group(entry.entity).components.push(entry)
    } else {
      if (entry.entity !== runEntity) {
        run = { adds: [], removes: [], components: [] }
        runEntity = entry.entity
        groups.push([entry.entity, run])
      }
      run!.components.push(entry)
    }
    replicas.ref(entry.replica)
    if (entry.prevReplica !== undefined) replicas.ref(entry.prevReplica)
    names.ref(entry.component)
    if (entry.wall < baseWall) baseWall = entry.wall
  }
  for (const counter of patch.counters) { replicas.ref(counter.replica); names.ref(counter.name) }
  if (patch.origin !== undefined) replicas.ref(patch.origin)
  const contextReplicas = patch.kind === 'snapshot' ? patch.context.replicas().sort() : []
  for (const replica of contextReplicas) replicas.ref(replica)
  if (baseWall === Number.POSITIVE_INFINITY) baseWall = 0

  const e = new Encoder(64 + patch.components.length * 24)
  e.writeByte(VERSION)
  e.writeByte(patch.kind === 'delta' ? KIND_DELTA : KIND_SNAPSHOT)
  e.writeVarUint(replicas.items.length)
  for (const replica of replicas.items) e.writeString(replica)
  e.writeVarUint(names.items.length)
  for (const name of names.items) e.writeString(name)
  if (patch.kind === 'delta') {
    e.writeVarUint(replicas.ref(patch.origin!))
    e.writeVarUint(patch.from!)
    e.writeVarUint(patch.to!)
  } else {
    e.writeVarUint(contextReplicas.length)
    for (const replica of contextReplicas) {
      e.writeVarUint(replicas.ref(replica))
      e.writeVarUint(patch.context.max(replica))
      // Ranges seen out of order: (gap from the previous end, length - 1) each.
      const cloud = patch.context.cloudOf(replica)
      e.writeVarUint(cloud.length)
      let previous = patch.context.max(replica)
      for (const [from, to] of cloud) {
        e.writeVarUint(from - previous)
        e.writeVarUint(to - from)
        previous = to
      }
    }
  }
  e.writeVarUint(baseWall)
  e.writeVarUint(groups.length)
  // A snapshot lists entities sorted, so neighbouring ids share the longest prefixes.
  if (snapshot) groups.sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
  const keys = new Map<string, number>()
  let previousEntity = ''
  let previousSeq = 0
  let previousWall = baseWall
  const writeSeq = (seq: number): void => { e.writeVarInt(seq - previousSeq); previousSeq = seq }
  for (const [entity, g] of groups) {
    let shared = 0
    const limit = Math.min(entity.length, previousEntity.length, 255)
    while (shared < limit && entity.charCodeAt(shared) === previousEntity.charCodeAt(shared)) shared++
    e.writeVarUint(shared)
    e.writeString(entity.slice(shared))
    previousEntity = entity
    e.writeVarUint(g.adds.length)
    for (const add of g.adds) { e.writeVarUint(replicas.ref(add.replica)); writeSeq(add.seq) }
    e.writeVarUint(g.removes.length)
    for (const remove of g.removes) { e.writeVarUint(replicas.ref(remove.replica)); writeSeq(remove.seq) }
    e.writeVarUint(g.components.length)
    for (const entry of g.components) {
      const hasPrev = patch.kind === 'delta' && entry.prevReplica !== undefined
      e.writeVarUint(names.ref(entry.component))
      e.writeByte((entry.value === undefined ? FLAG_DELETED : 0) | (hasPrev ? FLAG_PREV : 0))
      if (entry.value !== undefined) e.writeJson(entry.value, 0, keys)
      e.writeVarInt(entry.wall - previousWall)
      previousWall = entry.wall
      e.writeVarUint(entry.counter)
      e.writeVarUint(replicas.ref(entry.replica))
      writeSeq(entry.seq)
      if (hasPrev) { e.writeVarUint(replicas.ref(entry.prevReplica!)); e.writeVarUint(entry.prevSeq) }
    }
  }
  e.writeVarUint(patch.counters.length)
  for (const counter of patch.counters) {
    e.writeVarUint(names.ref(counter.name))
    e.writeVarUint(replicas.ref(counter.replica))
    e.writeVarUint(counter.p)
    e.writeVarUint(counter.n)
    e.writeVarUint(counter.seq)
  }
  return e.finish()
}

function readName (d: Decoder, what: string): string {
  const value = d.readString()
  if (value.length === 0 || value.length > MAX_NAME_LENGTH) throw new CodecError(`${what} must be 1 to ${MAX_NAME_LENGTH} characters`)
  return value
}

function readIndex (d: Decoder, table: string[], what: string): string {
  const index = d.readVarUint()
  const value = table[index]
  if (value === undefined) throw new CodecError(`${what} index ${index} outside a table of ${table.length}`)
  return value
}

function readSeq (d: Decoder): number {
  const seq = d.readVarUint()
  if (seq < 1) throw new CodecError('sequence numbers start at 1')
  return seq
}

/** Decodes a patch; any malformed input throws CodecError. */
export function decodePatch (bytes: Uint8Array): Patch {
  const d = new Decoder(bytes)
  const version = d.readByte()
  if (version !== VERSION) throw new CodecError(`unknown patch version ${version}`)
  const kindByte = d.readByte()
  if (kindByte !== KIND_DELTA && kindByte !== KIND_SNAPSHOT) throw new CodecError(`unknown patch kind ${kindByte}`)
  const kind = kindByte === KIND_DELTA ? 'delta' : 'snapshot'
  const replicas: string[] = new Array(d.readLength(2))
  for (let i = 0; i < replicas.length; i++) replicas[i] = readName(d, 'replica id')
  const names: string[] = new Array(d.readLength(2))
  for (let i = 0; i < names.length; i++) names[i] = readName(d, 'name')

  const context = new DotContext()
  const patch: Patch = { kind, components: [], adds: [], removes: [], counters: [], context }
  if (kind === 'delta') {
    patch.origin = readIndex(d, replicas, 'origin')
    patch.from = readSeq(d)
    patch.to = d.readVarUint()
    if (patch.to < patch.from || patch.to - patch.from > 1_000_000) throw new CodecError(`bad dot range ${patch.from}..${patch.to}`)
    context.addRange(patch.origin, patch.from, patch.to)
  } else {
    const count = d.readLength(3)
    for (let i = 0; i < count; i++) {
      const replica = readIndex(d, replicas, 'context replica')
      const prefix = d.readVarUint()
      if (prefix > 0) context.addRange(replica, 1, prefix)
      const cloud = d.readLength()
      let previous = prefix
      for (let j = 0; j < cloud; j++) {
        const from = previous + d.readVarUint()
        const to = from + d.readVarUint()
        if (from <= previous || !Number.isSafeInteger(to)) throw new CodecError('context ranges must ascend with gaps')
        context.addRange(replica, from, to)
        previous = to
      }
    }
  }
  const baseWall = d.readVarUint()
  const entities = d.readLength(4)
  const keys: string[] = []
  let previousEntity = ''
  let previousSeq = 0
  let previousWall = baseWall
  const readDeltaSeq = (): number => {
    const seq = previousSeq + d.readVarInt()
    if (seq < 1 || !Number.isSafeInteger(seq)) throw new CodecError('sequence numbers start at 1')
    previousSeq = seq
    return seq
  }
  for (let i = 0; i < entities; i++) {
    const shared = d.readVarUint()
    if (shared > previousEntity.length) throw new CodecError('entity id shares more than the previous one has')
    const entity = previousEntity.slice(0, shared) + d.readString()
    if (entity.length === 0 || entity.length > MAX_NAME_LENGTH) throw new CodecError(`entity id must be 1 to ${MAX_NAME_LENGTH} characters`)
    previousEntity = entity
    const adds = d.readLength(2)
    for (let j = 0; j < adds; j++) patch.adds.push({ entity, replica: readIndex(d, replicas, 'add replica'), seq: readDeltaSeq() })
    const removes = d.readLength(2)
    if (kind === 'snapshot' && removes > 0) throw new CodecError('a snapshot carries no removes')
    for (let j = 0; j < removes; j++) {
      const remove = { entity, replica: readIndex(d, replicas, 'remove replica'), seq: readDeltaSeq() }
      patch.removes.push(remove)
      context.add(remove.replica, remove.seq)
    }
    const components = d.readLength(6)
    for (let j = 0; j < components; j++) {
      const component = readIndex(d, names, 'component name')
      const flags = d.readByte()
      if (flags > (FLAG_DELETED | FLAG_PREV)) throw new CodecError(`unknown component flags ${flags}`)
      const value = (flags & FLAG_DELETED) !== 0 ? undefined : d.readJson(0, keys)
      const wall = previousWall + d.readVarInt()
      if (wall < 0 || wall > Number.MAX_SAFE_INTEGER) throw new CodecError('clock time out of range')
      previousWall = wall
      const counter = d.readVarUint()
      const replica = readIndex(d, replicas, 'writer')
      const seq = readDeltaSeq()
      let prevReplica: string | undefined
      let prevSeq = 0
      if ((flags & FLAG_PREV) !== 0) {
        prevReplica = readIndex(d, replicas, 'previous writer')
        prevSeq = readSeq(d)
      }
      patch.components.push({ entity, component, value, wall, counter, replica, seq, prevReplica, prevSeq })
    }
  }
  const counters = d.readLength(5)
  for (let i = 0; i < counters; i++) {
    const entry: CounterEntry = { name: readIndex(d, names, 'counter name'), replica: readIndex(d, replicas, 'counter replica'), p: d.readVarUint(), n: d.readVarUint(), seq: readSeq(d) }
    patch.counters.push(entry)
  }
  d.end()
  if (kind === 'delta') {
    // A delta may only carry its origin's own operations, and each within its range.
    const own = (replica: string, seq: number): boolean => replica === patch.origin && seq >= patch.from! && seq <= patch.to!
    if (!patch.adds.every((a) => own(a.replica, a.seq)) || !patch.components.every((c) => own(c.replica, c.seq)) || !patch.counters.every((c) => own(c.replica, c.seq))) {
      throw new CodecError('a delta carries an operation outside its origin and range')
    }
  }
  return patch
}
