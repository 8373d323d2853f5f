import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { coalesceUpdates, InterestError, InterestManager, maxRadius, quantize, type Area, type InterestUpdate } from '../../p2p/session/interest.ts'

const make = (overrides: Partial<ConstructorParameters<typeof InterestManager>[0]> = {}): InterestManager => new InterestManager({
  cellSize: 100, maxEntities: 100_000, subscribers: 1_000, maxVisible: 1_000, quantum: (layer) => (layer === 'physics' ? 0.5 : 0), ...overrides
})
const at = (key: string, x: number, y: number, components: Record<string, unknown> = {}, layer = 'physics') => ({ key, layer, x, y, components: components as Record<string, never> })
const area = (x: number, y: number, radius: number, layers: string[] | null = null): Area => ({ x, y, radius, layers })
const kinds = (updates: InterestUpdate[] | undefined): string[] => (updates ?? []).map((u) => `${u.kind}:${u.key}`).sort()

describe('interest management', () => {
  it('a new subscriber gets the entities in its circle and layers, nearest first, and nothing else', () => {
    const im = make({ maxVisible: 2 })
    im.upsert(at('a', 10, 10))
    im.upsert(at('b', 30, 10))
    im.upsert(at('c', 45, 10))
    im.upsert(at('far', 500, 500))
    im.upsert(at('other-layer', 11, 10, {}, 'decor'))
    im.tick()
    im.subscribe('p', area(0, 10, 50, ['physics']))
    const { updates } = im.tick()
    // Three are in reach; the cap keeps the two nearest.
    expect(kinds(updates.get('p'))).toEqual(['enter:a', 'enter:b'])
    expect(im.tick().updates.size).toBe(0)
  })

  it('coalesces a tick\'s changes into the state now and sends nothing a subscriber would not see change', () => {
    const im = make()
    im.subscribe('p', area(0, 0, 100))
    im.upsert(at('a', 1, 1, { hp: 1 }))
    im.tick()
    for (let i = 0; i < 10; i++) im.upsert(at('a', 1 + i, 1, { hp: i }))
    const first = im.tick().updates.get('p')!
    expect(first).toEqual([{ kind: 'update', key: 'a', layer: 'physics', x: 10, y: 1, components: { hp: 9 } }])
    // A move within the layer's quantum (0.5) and the same components: nothing to send.
    im.upsert(at('a', 10.2, 1, { hp: 9 }))
    expect(im.tick().updates.size).toBe(0)
    im.upsert(at('a', 10.2, 1, { hp: 8 }))
    expect(kinds(im.tick().updates.get('p'))).toEqual(['update:a'])
  })

  it('sends leave when an entity walks out, is removed, or the subscriber moves away, and enter when it comes back', () => {
    const im = make()
    im.subscribe('p', area(0, 0, 50))
    im.upsert(at('a', 10, 0))
    im.upsert(at('b', 20, 0))
    expect(kinds(im.tick().updates.get('p'))).toEqual(['enter:a', 'enter:b'])
    im.upsert(at('a', 250, 0)) // into another cell, out of reach
    im.remove('b')
    expect(kinds(im.tick().updates.get('p'))).toEqual(['leave:a', 'leave:b'])
    im.move('p', area(240, 0, 50))
    expect(kinds(im.tick().updates.get('p'))).toEqual(['enter:a'])
    // Added and removed within one tick: nobody hears of it.
    im.upsert(at('ghost', 241, 0))
    im.remove('ghost')
    expect(im.tick().updates.size).toBe(0)
    // Removed and back within one tick: one update, no leave.
    im.remove('a')
    im.upsert(at('a', 251, 0, { back: true }))
    expect(kinds(im.tick().updates.get('p'))).toEqual(['update:a'])
  })

  it('does work in proportion to the changes near subscribers, not to the world', () => {
    const im = make({ maxEntities: 200_000 })
    // 100,000 entities moving across a 10,000 × 10,000 world; one subscriber in a corner.
    for (let i = 0; i < 100_000; i++) im.upsert(at(`e${i}`, (i * 7919) % 10_000, (i * 104_729) % 10_000))
    im.subscribe('p', area(50, 50, 50))
    const snapshot = im.tick()
    expect(snapshot.examined).toBeLessThan(500)
    for (let i = 0; i < 100_000; i += 10) im.upsert(at(`e${i}`, ((i * 7919) % 10_000) + 1, (i * 104_729) % 10_000))
    expect(im.tick().examined).toBeLessThan(500)
  })

  it('is bounded: entities, subscribers and the size of an area', () => {
    const im = make({ maxEntities: 2, subscribers: 1 })
    expect(im.upsert(at('a', 0, 0))).toBe(true)
    expect(im.upsert(at('b', 0, 0))).toBe(true)
    expect(im.upsert(at('c', 0, 0))).toBe(false)
    expect(im.upsert(at('a', Number.NaN, 0))).toBe(false)
    im.subscribe('p', area(0, 0, 10))
    expect(() => { im.subscribe('q', area(0, 0, 10)) }).toThrow(InterestError)
    expect(() => { im.move('p', area(0, 0, maxRadius(100) + 1)) }).toThrow(/radius/)
    expect(() => { im.move('p', area(0, 0, -1)) }).toThrow(/radius/)
    expect(() => { im.move('nobody', area(0, 0, 1)) }).toThrow(InterestError)
    // A subscriber that left frees its place.
    im.unsubscribe('p')
    im.subscribe('q', area(0, 0, 10))
    expect(kinds(im.tick().updates.get('q'))).toEqual(['enter:a', 'enter:b'])
  })

  it('a view built from the updates is always the brute-force view of the world (property)', () => {
    const op = fc.oneof(
      fc.record({ t: fc.constant('upsert' as const), k: fc.integer({ min: 0, max: 7 }), x: fc.integer({ min: -300, max: 300 }), y: fc.integer({ min: -300, max: 300 }), v: fc.integer({ min: 0, max: 2 }), layer: fc.constantFrom('physics', 'decor') }),
      fc.record({ t: fc.constant('remove' as const), k: fc.integer({ min: 0, max: 7 }) }),
      fc.record({ t: fc.constant('move' as const), s: fc.integer({ min: 0, max: 2 }), x: fc.integer({ min: -300, max: 300 }), y: fc.integer({ min: -300, max: 300 }), r: fc.integer({ min: 0, max: 250 }), only: fc.boolean() }),
      fc.constant({ t: 'tick' as const })
    )
    fc.assert(fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
      const im = make()
      const world = new Map<string, { layer: string, x: number, y: number, components: Record<string, number> }>()
      const areas = new Map<string, Area>()
      const views = new Map<string, Map<string, string>>()
      const check = (): void => {
        const { updates } = im.tick()
        for (const [id, list] of updates) {
          const view = views.get(id)!
          for (const u of list) {
            if (u.kind === 'leave') {
              expect(view.has(u.key)).toBe(true)
              view.delete(u.key)
            } else {
              expect(view.has(u.key)).toBe(u.kind === 'update')
              view.set(u.key, JSON.stringify([u.x, u.y, u.components]))
            }
          }
        }
        for (const [id, a] of areas) {
          const expected = new Map<string, string>()
          for (const [key, e] of world) {
            if (a.layers != null && a.layers.length > 0 && !a.layers.includes(e.layer)) continue
            if ((e.x - a.x) ** 2 + (e.y - a.y) ** 2 > a.radius ** 2) continue
            const q = e.layer === 'physics' ? 0.5 : 0
            expected.set(key, JSON.stringify([quantize(e.x, q), quantize(e.y, q), e.components]))
          }
          expect(Object.fromEntries(views.get(id)!)).toEqual(Object.fromEntries(expected))
        }
      }
      for (const o of ops) {
        if (o.t === 'upsert') {
          const state = { layer: o.layer, x: o.x, y: o.y, components: { v: o.v } }
          world.set(`e${o.k}`, state)
          im.upsert({ key: `e${o.k}`, ...state })
        } else if (o.t === 'remove') {
          world.delete(`e${o.k}`)
          im.remove(`e${o.k}`)
        } else if (o.t === 'move') {
          const a = area(o.x, o.y, o.r, o.only ? ['physics'] : null)
          const id = `s${o.s}`
          if (!areas.has(id)) views.set(id, new Map())
          areas.set(id, a)
          im.subscribe(id, a)
        } else {
          check()
        }
      }
      check()
    }), { numRuns: 300 })
  })

  it('a reader held back for any stretch of ticks, then sent what it is owed coalesced, sees the world as it is (property)', () => {
    const op = fc.oneof(
      fc.record({ t: fc.constant('upsert' as const), k: fc.integer({ min: 0, max: 7 }), x: fc.integer({ min: -300, max: 300 }), y: fc.integer({ min: -300, max: 300 }), v: fc.integer({ min: 0, max: 2 }) }),
      fc.record({ t: fc.constant('remove' as const), k: fc.integer({ min: 0, max: 7 }) }),
      fc.record({ t: fc.constant('move' as const), x: fc.integer({ min: -300, max: 300 }), y: fc.integer({ min: -300, max: 300 }), r: fc.integer({ min: 0, max: 250 }) }),
      fc.record({ t: fc.constant('tick' as const), behind: fc.boolean() })
    )
    fc.assert(fc.property(fc.array(op, { maxLength: 80 }), (ops) => {
      const im = make()
      const world = new Map<string, { x: number, y: number, components: Record<string, number> }>()
      let a = area(0, 0, 200)
      im.subscribe('s', a)
      // What the client holds, applied the way the SDK applies a tick (enter and update alike set, leave deletes).
      const view = new Map<string, string>()
      let held: Map<string, InterestUpdate> | null = null
      const tick = (behind: boolean): void => {
        const list = im.tick().updates.get('s') ?? []
        if (behind) {
          coalesceUpdates(held ??= new Map(), list)
          // Bounded by what it could see and what left its view: one entry per key.
          expect(held.size).toBeLessThanOrEqual(8)
          return
        }
        let out = list
        if (held != null) {
          coalesceUpdates(held, list)
          out = [...held.values()]
          held = null
        }
        for (const u of out) {
          if (u.kind === 'leave') view.delete(u.key)
          else view.set(u.key, JSON.stringify([u.x, u.y, u.components]))
        }
        const expected = new Map<string, string>()
        for (const [key, e] of world) {
          if ((e.x - a.x) ** 2 + (e.y - a.y) ** 2 > a.radius ** 2) continue
          expected.set(key, JSON.stringify([quantize(e.x, 0.5), quantize(e.y, 0.5), e.components]))
        }
        expect(Object.fromEntries(view)).toEqual(Object.fromEntries(expected))
      }
      for (const o of ops) {
        if (o.t === 'upsert') {
          const state = { x: o.x, y: o.y, components: { v: o.v } }
          world.set(`e${o.k}`, state)
          im.upsert({ key: `e${o.k}`, layer: 'physics', ...state })
        } else if (o.t === 'remove') {
          world.delete(`e${o.k}`)
          im.remove(`e${o.k}`)
        } else if (o.t === 'move') {
          a = area(o.x, o.y, o.r)
          im.move('s', a)
        } else {
          tick(o.behind)
        }
      }
      tick(false)
    }), { numRuns: 300 })
  })
})
