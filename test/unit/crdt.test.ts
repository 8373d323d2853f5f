import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { ShardDoc, ShardDocError, type Patch } from '../../storage/crdt/shard-doc.ts'
import { ClockDriftError, HybridClock } from '../../storage/crdt/hlc.ts'
import { DotContext } from '../../storage/crdt/dots.ts'
import { CodecError, type JsonValue } from '../../storage/crdt/codec.ts'
import { decodePatch, encodePatch } from '../../storage/crdt/patch-codec.ts'

/** A replica whose clock is driven by the test, so runs are reproducible. */
function replica (name: string, time = { now: 1_700_000_000_000 }): ShardDoc {
  return new ShardDoc(name, new HybridClock(60_000, () => time.now))
}

/** Everything visible plus the causal context, in a canonical order. */
function canonical (doc: ShardDoc): string {
  const entities = doc.entityIds().map((id) => {
    const view = doc.entity(id)!
    return [id, Object.entries(view.components).sort(([a], [b]) => a.localeCompare(b))]
  })
  const counters = doc.counterNames().map((name) => [name, doc.counter(name)])
  const context = doc.context.replicas().sort().map((r) => [r, doc.context.max(r), doc.context.cloudOf(r)])
  return JSON.stringify({ entities, counters, context })
}

type Op =
  | { kind: 'set', entity: string, component: string, value: JsonValue }
  | { kind: 'deleteComponent', entity: string, component: string }
  | { kind: 'put', entity: string, components: Record<string, JsonValue> }
  | { kind: 'deleteEntity', entity: string }
  | { kind: 'increment', name: string, by: number }
  | { kind: 'flush' }

const entityArb = fc.constantFrom('e1', 'e2', 'e3')
const componentArb = fc.constantFrom('pos', 'hp', 'name')
const valueArb: fc.Arbitrary<JsonValue> = fc.oneof(fc.integer({ min: -1000, max: 1000 }), fc.string({ maxLength: 6 }), fc.constant(null), fc.record({ x: fc.double({ noNaN: true, noDefaultInfinity: true }), y: fc.integer() }))
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), entity: entityArb, component: componentArb, value: valueArb }),
  fc.record({ kind: fc.constant('deleteComponent' as const), entity: entityArb, component: componentArb }),
  fc.record({ kind: fc.constant('put' as const), entity: entityArb, components: fc.dictionary(componentArb, valueArb, { maxKeys: 2 }) }),
  fc.record({ kind: fc.constant('deleteEntity' as const), entity: entityArb }),
  fc.record({ kind: fc.constant('increment' as const), name: fc.constantFrom('kills', 'gold'), by: fc.integer({ min: -5, max: 5 }).filter((n) => n !== 0) }),
  fc.constant({ kind: 'flush' as const })
)

function run (doc: ShardDoc, op: Op): void {
  switch (op.kind) {
    case 'set': doc.setComponent(op.entity, op.component, op.value); break
    case 'deleteComponent': doc.deleteComponent(op.entity, op.component); break
    case 'put': doc.putEntity(op.entity, op.components); break
    case 'deleteEntity': doc.deleteEntity(op.entity); break
    case 'increment': doc.increment(op.name, op.by); break
    case 'flush': break
  }
}

/**
 * Three or four replicas each run their own operations, interleaved in time
 * and sometimes learning from each other mid-way (so operations are causally
 * related, not only concurrent). Every delta is encoded as it would go on the
 * wire. Then each replica receives every delta in its own random order, some
 * twice, and all must end equal.
 */
const scenarioArb = fc.record({
  replicas: fc.integer({ min: 3, max: 4 }),
  steps: fc.array(fc.record({ who: fc.nat(3), op: opArb, tick: fc.nat(3), learnFrom: fc.option(fc.nat(3), { freq: 4 }) }), { minLength: 1, maxLength: 40 }),
  seed: fc.integer()
})

type Scenario = typeof scenarioArb extends fc.Arbitrary<infer T> ? T : never

function simulate (scenario: Scenario, shuffle: <T>(items: T[]) => T[]): { docs: ShardDoc[], wire: Uint8Array[] } {
  const time = { now: 1_700_000_000_000 }
  const docs = Array.from({ length: scenario.replicas }, (_, i) => replica(`r${i}`, time))
  const wire: Uint8Array[] = []
  const delivered = docs.map(() => new Set<number>())
  const flush = (doc: ShardDoc): void => {
    const delta = doc.takeDelta()
    if (delta != null) wire.push(encodePatch(delta))
  }
  for (const step of scenario.steps) {
    const doc = docs[step.who % docs.length]!
    time.now += step.tick
    if (step.learnFrom != null) {
      // Learn some of what is on the wire so far (causal history), in random order.
      const me = step.who % docs.length
      for (const i of shuffle([...wire.keys()]).slice(0, step.learnFrom + 1)) {
        doc.apply(decodePatch(wire[i]!))
        delivered[me]!.add(i)
      }
    }
    run(doc, step.op)
    if (step.op.kind === 'flush') flush(doc)
  }
  for (const doc of docs) flush(doc)
  return { docs, wire }
}

function seededShuffle (seed: number): <T>(items: T[]) => T[] {
  let state = seed >>> 0 || 1
  const next = (): number => {
    state ^= state << 13; state >>>= 0
    state ^= state >>> 17
    state ^= state << 5; state >>>= 0
    return state / 2 ** 32
  }
  return <T>(items: T[]): T[] => {
    const out = [...items]
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1))
      ;[out[i], out[j]] = [out[j]!, out[i]!]
    }
    return out
  }
}

describe('ShardDoc convergence (property)', () => {
  it('any interleaving, duplication and reordering of deltas converges on every replica', () => {
    fc.assert(fc.property(scenarioArb, (scenario) => {
      const shuffle = seededShuffle(scenario.seed)
      const { docs, wire } = simulate(scenario, shuffle)
      for (const doc of docs) {
        // Every delta, in this replica's own order, with duplicates.
        const order = shuffle([...wire.keys(), ...shuffle([...wire.keys()]).slice(0, 3)])
        for (const i of order) doc.apply(decodePatch(wire[i]!))
      }
      const first = canonical(docs[0]!)
      for (const doc of docs.slice(1)) expect(canonical(doc)).toBe(first)
    }), { numRuns: 300 })
  })

  it('snapshots and deltas mixed converge too (a replica catching up from a peer\'s snapshot)', () => {
    fc.assert(fc.property(scenarioArb, (scenario) => {
      const shuffle = seededShuffle(scenario.seed)
      const { docs, wire } = simulate(scenario, shuffle)
      // r0 gets everything; a late joiner gets r0's snapshot plus a random half of the deltas again.
      for (const i of shuffle([...wire.keys()])) docs[0]!.apply(decodePatch(wire[i]!))
      const late = replica('late')
      for (const i of shuffle([...wire.keys()]).slice(0, Math.ceil(wire.length / 2))) late.apply(decodePatch(wire[i]!))
      late.apply(decodePatch(encodePatch(docs[0]!.snapshot())))
      for (const i of shuffle([...wire.keys()])) late.apply(decodePatch(wire[i]!))
      expect(canonical(late)).toBe(canonical(docs[0]!))
    }), { numRuns: 200 })
  })

  it('join is commutative, associative and idempotent (states and the removal deltas that travel with them)', () => {
    fc.assert(fc.property(scenarioArb, (scenario) => {
      const shuffle = seededShuffle(scenario.seed)
      const { docs, wire } = simulate(scenario, shuffle)
      const [a, b, c] = docs.map((doc) => encodePatch(doc.snapshot())) as [Uint8Array, Uint8Array, Uint8Array]
      // A snapshot never removes: the deltas that remove travel beside it (the store keeps them through compaction).
      const removals = wire.filter((bytes) => decodePatch(bytes).removes.length > 0)
      const join = (...states: Uint8Array[]): string => {
        const doc = replica('observer')
        for (const state of [...states, ...removals]) doc.apply(decodePatch(state))
        return canonical(doc)
      }
      expect(join(a, b)).toBe(join(b, a))
      expect(join(join2(a, b), c)).toBe(join(a, join2(b, c)))
      expect(join(a, a)).toBe(join(a))
      function join2 (x: Uint8Array, y: Uint8Array): Uint8Array {
        const doc = replica('observer')
        doc.apply(decodePatch(x))
        doc.apply(decodePatch(y))
        return encodePatch(doc.snapshot())
      }
    }), { numRuns: 200 })
  })
})

describe('ShardDoc semantics', () => {
  it('last writer wins by HLC, then replica id; the later write survives on both sides', () => {
    const time = { now: 1000 }
    const a = replica('a', time)
    const b = replica('b', time)
    a.setComponent('e', 'pos', 1)
    b.setComponent('e', 'pos', 2) // same wall and counter: replica id decides, b > a
    const da = a.takeDelta()!
    const db = b.takeDelta()!
    const ra = a.apply(db)
    b.apply(da)
    expect(a.entity('e')!.components.pos).toBe(2)
    expect(b.entity('e')!.components.pos).toBe(2)
    expect(ra.conflicts).toBe(1)
  })

  it('a sequential overwrite is not counted as a conflict', () => {
    const a = replica('a')
    const b = replica('b')
    a.setComponent('e', 'pos', 1)
    b.apply(a.takeDelta()!)
    b.setComponent('e', 'pos', 2)
    expect(a.apply(b.takeDelta()!).conflicts).toBe(0)
    expect(a.entity('e')!.components.pos).toBe(2)
  })

  it('add wins over a concurrent remove; a remove of what was observed removes it', () => {
    const a = replica('a')
    const b = replica('b')
    a.setComponent('e', 'hp', 10)
    b.apply(a.takeDelta()!)
    b.deleteEntity('e')
    a.setComponent('e', 'hp', 9) // concurrent with b's remove, but does not re-add: e already had a's dot
    a.deleteEntity('e')
    a.setComponent('e', 'hp', 8) // a fresh add, concurrent with b's remove
    const da = a.takeDelta()!
    const db = b.takeDelta()!
    a.apply(db)
    b.apply(da)
    expect(a.entity('e')).toEqual({ entity: 'e', components: { hp: 8 } })
    expect(canonical(a)).toBe(canonical(b))
  })

  it('PN-counters count every increment exactly once, however often deltas arrive', () => {
    const a = replica('a')
    const b = replica('b')
    a.increment('gold', 5)
    a.increment('gold', -2)
    const d1 = a.takeDelta()!
    b.increment('gold', 10)
    b.apply(d1)
    b.apply(d1)
    a.apply(b.takeDelta()!)
    a.apply(b.snapshot())
    expect(a.counter('gold')).toBe(13)
    expect(b.counter('gold')).toBe(13)
    expect(() => a.increment('gold', 0.5)).toThrow(/non-zero integer/)
  })

  it('overwrites keep no history: entries stay one per live component', () => {
    const a = replica('a')
    for (let i = 0; i < 1000; i++) a.setComponent(`e${i % 10}`, 'pos', i)
    expect(a.entryCount).toBe(10)
    expect(a.takeDelta()!.components.length).toBe(1000)
  })

  it('tombstones are collected once every writer has seen them, and a stale write cannot resurrect', () => {
    const a = replica('a')
    const b = replica('b')
    a.setComponent('e', 'hp', 1)
    const old = a.takeDelta()!
    b.apply(old)
    a.deleteComponent('e', 'hp')
    b.apply(a.takeDelta()!)
    const stable = new DotContext()
    stable.merge(a.context)
    expect(b.collectGarbage(stable)).toBe(1)
    expect(b.entryCount).toBe(0)
    b.apply(old)
    expect(b.entity('e')).toEqual({ entity: 'e', components: {} })
  })

  it('a restarted replica never reuses a dot it handed out before', () => {
    const a = replica('a')
    a.setComponent('e', 'x', 1)
    const snapshot = encodePatch(a.snapshot())
    const again = replica('a')
    again.apply(decodePatch(snapshot))
    again.setComponent('e', 'x', 2)
    expect(again.lastSeq).toBeGreaterThan(a.lastSeq)
  })

  it('a patch from too far in the future is refused whole with ClockDriftError', () => {
    const future = { now: 1_000_000 + 120_000 }
    const a = replica('a', future)
    a.setComponent('e', 'x', 1)
    const b = replica('b', { now: 1_000_000 })
    expect(() => b.apply(a.takeDelta()!)).toThrow(ClockDriftError)
    expect(b.hasEntity('e')).toBe(false)
    expect(b.context.max('a')).toBe(0)
  })
})

describe('HybridClock', () => {
  it('never goes backwards, and orders after what it observed', () => {
    const time = { now: 100 }
    const clock = new HybridClock(1000, () => time.now)
    clock.tick()
    expect([clock.wall, clock.counter]).toEqual([100, 0])
    time.now = 50 // the wall clock steps back
    clock.tick()
    expect([clock.wall, clock.counter]).toEqual([100, 1])
    clock.observe(500, 7)
    expect([clock.wall, clock.counter]).toEqual([500, 8])
    expect(() => clock.observe(5000, 0)).toThrow(ClockDriftError)
    expect(() => clock.check(5000)).toThrow(/ahead of ours/)
  })
})

describe('patch codec', () => {
  it('round-trips deltas and snapshots to the same state', () => {
    fc.assert(fc.property(scenarioArb, (scenario) => {
      const { docs, wire } = simulate(scenario, seededShuffle(scenario.seed))
      for (const bytes of wire) {
        const patch = decodePatch(bytes)
        expect(decodePatch(encodePatch(patch))).toEqual(patch)
      }
      const snapshot = docs[0]!.snapshot()
      const copy = replica('copy')
      copy.apply(decodePatch(encodePatch(snapshot)))
      const direct = replica('copy')
      direct.apply(snapshot)
      expect(canonical(copy)).toBe(canonical(direct))
    }), { numRuns: 150 })
  })

  it('rejects garbage with CodecError, and nothing else', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      expectCodecErrorOrPatch(bytes)
    }), { numRuns: 2000 })
  })

  it('rejects corrupted encodings with CodecError, and nothing else', () => {
    const a = replica('a')
    for (let i = 0; i < 20; i++) a.setComponent(`e${i}`, 'pos', { x: i, y: [i, 'z'] })
    a.increment('n', 3)
    a.deleteEntity('e3')
    const bytes = encodePatch(a.takeDelta()!)
    fc.assert(fc.property(fc.nat(bytes.length - 1), fc.integer({ min: 1, max: 255 }), fc.nat(bytes.length), (at, xor, cut) => {
      const flipped = bytes.slice()
      flipped[at] = flipped[at]! ^ xor
      expectCodecErrorOrPatch(flipped)
      expectCodecErrorOrPatch(bytes.subarray(0, cut))
    }), { numRuns: 2000 })
    expect(() => decodePatch(bytes.subarray(0, bytes.length - 1))).toThrow(CodecError)
  })

  it('a delta that carries another replica\'s operation is refused', () => {
    const a = replica('a')
    a.setComponent('e', 'x', 1)
    const delta: Patch = a.takeDelta()!
    delta.components[0]!.replica = 'mallory'
    expect(() => decodePatch(encodePatch(delta))).toThrow(/outside its origin/)
  })
})

function expectCodecErrorOrPatch (bytes: Uint8Array): void {
  try {
    const patch = decodePatch(bytes)
    // Whatever decodes must be a patch a replica can apply.
    replica('z').apply(patch)
  } catch (err) {
    if (!(err instanceof CodecError) && !(err instanceof ClockDriftError)) throw err
  }
}

describe('DotContext', () => {
  it('agrees with a plain set of dots under any ranges added, merged and compared', () => {
    const rangeArb = fc.tuple(fc.constantFrom('a', 'b'), fc.integer({ min: 1, max: 60 }), fc.integer({ min: 0, max: 8 }))
    fc.assert(fc.property(fc.array(rangeArb, { maxLength: 30 }), fc.array(rangeArb, { maxLength: 30 }), (first, second) => {
      const build = (ranges: Array<[string, number, number]>): { context: DotContext, model: Set<string> } => {
        const context = new DotContext()
        const model = new Set<string>()
        for (const [replica, from, length] of ranges) {
          context.addRange(replica, from, from + length)
          for (let seq = from; seq <= from + length; seq++) model.add(`${replica}:${seq}`)
        }
        return { context, model }
      }
      const x = build(first)
      const y = build(second)
      for (const replica of ['a', 'b']) {
        for (let seq = 1; seq <= 70; seq++) expect(x.context.has(replica, seq)).toBe(x.model.has(`${replica}:${seq}`))
        const highest = Math.max(0, ...[...x.model].filter((dot) => dot.startsWith(`${replica}:`)).map((dot) => Number(dot.split(':')[1])))
        expect(x.context.highest(replica)).toBe(highest)
      }
      expect(x.context.covers(y.context)).toBe([...y.model].every((dot) => x.model.has(dot)))
      expect(x.context.missingFrom(y.context)).toBe([...x.model].filter((dot) => !y.model.has(dot)).length)
      const merged = x.context.clone()
      merged.merge(y.context)
      for (const replica of ['a', 'b']) {
        for (let seq = 1; seq <= 70; seq++) expect(merged.has(replica, seq)).toBe(x.model.has(`${replica}:${seq}`) || y.model.has(`${replica}:${seq}`))
      }
      const snapshot = decodePatch(encodePatch({ kind: 'snapshot', components: [], adds: [], removes: [], counters: [], context: merged })).context
      expect(snapshot.equals(merged)).toBe(true)
    }), { numRuns: 500 })
  })
})

describe('bounded work on contexts a peer claims', () => {
  it('counts what a claimed context lacks over ranges, whatever sequence numbers it names', () => {
    const claim = new DotContext()
    claim.add('victim', 2 ** 52)
    claim.addRange('other', 5e7, 5e7 + 10)
    const mine = new DotContext()
    mine.addRange('victim', 1, 1000)
    // The naive count looped once per sequence number (2^52 iterations): this test would never end.
    expect(claim.missingFrom(mine)).toBe(12)
    expect(mine.missingFrom(claim)).toBe(1000)
    expect(claim.missingFrom(mine, 3)).toBeGreaterThan(3)
  })
})

describe('the document boundary', () => {
  const rejects = (write: (doc: ShardDoc) => void): void => {
    const doc = replica('a')
    doc.setComponent('kept', 'hp', 1)
    doc.takeDelta()
    const before = canonical(doc)
    expect(() => { write(doc) }).toThrow(ShardDocError)
    expect(canonical(doc)).toBe(before)
    expect(doc.takeDelta()).toBeUndefined()
  }
  let deep: JsonValue = 1
  for (let i = 0; i < 40; i++) deep = [deep]

  it('refuses ids, names and values the codec could not write and read back, changing nothing', () => {
    rejects((doc) => { doc.setComponent('x'.repeat(129), 'hp', 1) })
    rejects((doc) => { doc.setComponent('ship', 'c'.repeat(129), 1) })
    rejects((doc) => { doc.setComponent('', 'hp', 1) })
    rejects((doc) => { doc.setComponent('ship', 'hp', deep) })
    rejects((doc) => { doc.setComponent('ship', 'hp', Number.NaN) })
    rejects((doc) => { doc.setComponent('ship', 'hp', 'x'.repeat(2 ** 20 + 1)) })
    rejects((doc) => { doc.setComponent('ship\ud800', 'hp', 1) })
    rejects((doc) => { doc.setComponent('ship', 'hp', { name: 'lone \udc00 surrogate' }) })
    rejects((doc) => { doc.setComponent('ship', 'hp', JSON.parse('{"__proto__": 1}') as JsonValue) })
    // A write of several components is refused whole when one of them is bad.
    rejects((doc) => { doc.putEntity('ship', { pos: 1, hp: deep }) })
    rejects((doc) => { doc.patchEntity('kept', { pos: 1, ['n'.repeat(200)]: 2 }) })
    rejects((doc) => { doc.increment('c'.repeat(129), 1) })
  })

  it('whatever the document takes encodes, decodes and replays to the same state', () => {
    const json: fc.Arbitrary<JsonValue> = fc.jsonValue({ maxDepth: 6 }) as fc.Arbitrary<JsonValue>
    fc.assert(fc.property(fc.array(fc.tuple(fc.string({ minLength: 1, maxLength: 12 }), fc.string({ minLength: 1, maxLength: 8 }), json), { minLength: 1, maxLength: 8 }), (writes) => {
      const doc = replica('a')
      for (const [entity, component, value] of writes) {
        try {
          doc.setComponent(entity, component, value)
        } catch (err) {
          if (!(err instanceof ShardDocError)) throw err
        }
      }
      const delta = doc.takeDelta()
      if (delta == null) return
      const copy = replica('b')
      copy.apply(decodePatch(encodePatch(delta)))
      const again = replica('c')
      again.apply(decodePatch(encodePatch(copy.snapshot())))
      // Compared as the API shows them, JSON (where -0 is 0, as the codec writes it).
      const json = (view: unknown): unknown => JSON.parse(JSON.stringify(view))
      for (const id of doc.entityIds()) {
        expect(json(copy.entity(id))).toEqual(json(doc.entity(id)))
        expect(json(again.entity(id))).toEqual(json(doc.entity(id)))
      }
    }), { numRuns: 300 })
  })
})

