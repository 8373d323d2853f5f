import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { homeOf, placementScope, regionKey, representatives, summarize, UNREGIONED, type RegionSummary } from '../../p2p/hierarchy/regions.ts'

/** A coordinate on a line: regions `ms` apart are that far in estimated RTT. */
const at = (ms: number): { vec: number[], error: number, adjustment: number, height: number } => ({ vec: [ms, 0, 0, 0, 0, 0, 0, 0], error: 0.2, adjustment: 0, height: 0.01 })

function region (name: string, where: number, alive: number, load = 0.3, at0 = 0): RegionSummary {
  const members = Array.from({ length: alive }, (_, i) => ({ peerId: `${name}-${i}`, cores: 4, load, coordinate: at(where) }))
  return { ...summarize(name, members, at0), region: name }
}

const map = (...summaries: RegionSummary[]): Map<string, RegionSummary> => new Map(summaries.map((s) => [s.region, s]))

describe('regions', () => {
  it('names the region of a node without one', () => {
    expect(regionKey(null)).toBe(UNREGIONED)
    expect(regionKey('')).toBe(UNREGIONED)
    expect(regionKey('DE')).toBe('DE')
  })

  it('picks the same representatives whatever the order of the members, and a leaving member changes only its own slot', () => {
    fc.assert(fc.property(fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), { minLength: 4, maxLength: 60 }), fc.nat(), (members, cut) => {
      const k = cut % members.length
      const shuffled = [...members.slice(k), ...members.slice(0, k)].reverse()
      const reps = representatives('DE', members)
      expect(representatives('DE', shuffled)).toEqual(reps)
      expect(reps).toHaveLength(3)
      const gone = reps[0]!
      const after = representatives('DE', members.filter((m) => m !== gone))
      expect(after.slice(0, 2)).toEqual(reps.slice(1))
    }))
  })

  it('places a healthy region\'s shards at home only', () => {
    const summaries = map(region('DE', 0, 50), region('FR', 10, 50), region('US', 90, 50))
    expect(placementScope('DE', summaries, 1_000)).toEqual(['DE'])
  })

  it('adds the nearest regions, nearest first, while home is too small, overloaded or gone, and no more than maxRegions', () => {
    const others = [region('FR', 10, 50), region('PL', 12, 50, 0.3), region('US', 90, 50), region('JP', 250, 50), region('BR', 180, 50)]
    expect(placementScope('DE', map(region('DE', 0, 2), ...others), 1_000)).toEqual(['DE', 'FR'])
    // A flash crowd: home at 95% load needs help until the scope's mean load is at most 85%.
    expect(placementScope('DE', map(region('DE', 0, 50, 0.95), ...others), 1_000)).toEqual(['DE', 'FR'])
    expect(placementScope('DE', map(region('DE', 0, 50, 0.95), region('FR', 10, 50, 0.95), region('PL', 12, 50, 0.95), region('US', 90, 50, 0.95), region('JP', 250, 50)), 1_000)).toEqual(['DE', 'FR', 'PL', 'US'])
    // Home lost: its summary went stale 30 s ago; the nearest region to where it was takes its shards.
    expect(placementScope('DE', map(region('DE', 0, 50, 0.3, -40_000), ...others), 1_000)).toEqual(['FR'])
  })

  it('skips a region whose summary is stale or empty when looking for help', () => {
    const summaries = map(region('DE', 0, 1), region('FR', 10, 50, 0.3, -40_000), region('PL', 12, 0), region('US', 90, 50))
    expect(placementScope('DE', summaries, 1_000)).toEqual(['DE', 'US'])
  })

  it('gives shards with no home a region by rendezvous, the same on every node, spread over the regions', () => {
    const summaries = map(region('DE', 0, 5), region('FR', 10, 5), region('US', 90, 5), region('JP', 250, 5))
    const homes = new Map<string, number>()
    for (let i = 0; i < 400; i++) {
      const home = homeOf(`sys.${i}`, null, summaries, 1_000)!
      expect(homeOf(`sys.${i}`, null, new Map([...summaries].reverse()), 1_000)).toBe(home)
      homes.set(home, (homes.get(home) ?? 0) + 1)
    }
    expect(homes.size).toBe(4)
    for (const count of homes.values()) expect(count).toBeGreaterThan(60)
    expect(homeOf('physics.0.0', 'DE', summaries, 1_000)).toBe('DE')
  })
})
