import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { assignInRegions, placementScope, regionKey, regionOf, representatives, summarize, UNREGIONED, type RegionSummary } from '../../p2p/hierarchy/regions.ts'
import { assign, defaultPlacementParams, type Assignment, type Candidate } from '../../p2p/placement/assign.ts'
import { Policy } from '../../p2p/placement/policy.ts'
import { World, worldSchema } from '../../p2p/placement/world.ts'

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

  it('counts a node of a subdivision in the world\'s region around it', () => {
    const homes = new Set(['DE', 'US-CA'])
    expect(regionOf('DE-BY', homes)).toBe('DE')
    expect(regionOf('DE', homes)).toBe('DE')
    expect(regionOf('US-CA', homes)).toBe('US-CA')
    // US-NY is not in US-CA, and US is not a home: it counts as itself.
    expect(regionOf('US-NY', homes)).toBe('US-NY')
    expect(regionOf(null, homes)).toBe(UNREGIONED)
  })
})

describe('placement over regions', () => {
  const world = new World(worldSchema.parse({
    maxX: 800,
    maxY: 800,
    cellSize: 100,
    layers: [{ name: 'physics', consistency: 'host' }],
    // The west half is Europe's, the east half America's; the middle column names no region.
    regions: [{ region: 'EU', minX: 0, minY: 0, maxX: 300, maxY: 800 }, { region: 'US', minX: 500, minY: 0, maxX: 800, maxY: 800 }]
  }))
  const shards = world.all()
  const node = (region: string, i: number, extra: Partial<Candidate> = {}): Candidate => ({
    peerId: `12D3Koo${region}${i}`, region, operator: null, tags: new Set(), trusted: true, cost: 1, reliability: 1, headroom: 1,
    coordinate: at(region.startsWith('EU') ? 0 : 90), ...extra
  })
  const eu = [0, 1, 2].map((i) => node('EU', i))
  const us = [0, 1, 2].map((i) => node('US', i))
  const regionOfPeer = (peer: string): string => peer.slice(7, 9)
  const placedIn = (a: Map<string, Assignment>, home: string): Set<string> => new Set(shards.filter((s) => s.homeRegion === home).flatMap((s) => [a.get(s.id)!.host!, ...a.get(s.id)!.replicas].map(regionOfPeer)))

  it('places each region\'s shards on its own members, host and replicas, the same whatever the order of the candidates', () => {
    const { assignment, scopes } = assignInRegions(shards, [...eu, ...us], new Policy(), defaultPlacementParams)
    expect(placedIn(assignment, 'EU')).toEqual(new Set(['EU']))
    expect(placedIn(assignment, 'US')).toEqual(new Set(['US']))
    expect(scopes).toEqual(new Map([['EU', ['EU']], ['US', ['US']]]))
    // Cells with no home region are placed over everyone, as in a flat grid.
    expect(new Set(shards.filter((s) => s.homeRegion == null).map((s) => regionOfPeer(assignment.get(s.id)!.host!)))).toEqual(new Set(['EU', 'US']))
    const reversed = assignInRegions(shards, [...us, ...eu].reverse(), new Policy(), defaultPlacementParams)
    expect(JSON.stringify([...reversed.assignment].sort())).toBe(JSON.stringify([...assignment].sort()))
  })

  it('overflows a region short of host + replicas into the nearest one, and a lost region\'s shards go next door', () => {
    const short = assignInRegions(shards, [...eu, ...us.slice(0, 2)], new Policy(), defaultPlacementParams)
    expect(short.scopes.get('US')).toEqual(['US', 'EU'])
    expect(placedIn(short.assignment, 'EU')).toEqual(new Set(['EU']))
    const lost = assignInRegions(shards, eu, new Policy(), defaultPlacementParams)
    expect(lost.scopes.get('US')).toEqual(['EU'])
    expect(placedIn(lost.assignment, 'US')).toEqual(new Set(['EU']))
    // With its members back, the region takes its shards home.
    expect(placedIn(assignInRegions(shards, [...eu, ...us], new Policy(), defaultPlacementParams).assignment, 'US')).toEqual(new Set(['US']))
  })

  it('takes help from the next region when its members are loaded (the flash-crowd rule), in placement\'s quarter steps of load', () => {
    const busy = us.map((c) => ({ ...c, headroom: 0.05 }))
    expect(assignInRegions(shards, [...eu, ...busy], new Policy(), defaultPlacementParams).scopes.get('US')).toEqual(['US', 'EU'])
    // 20% load rounds to 25%: well under 85%, no help.
    const light = us.map((c) => ({ ...c, headroom: 0.8 }))
    expect(assignInRegions(shards, [...eu, ...light], new Policy(), defaultPlacementParams).scopes.get('US')).toEqual(['US'])
  })

  it('keeps a subdivision\'s nodes in their region, and lets a policy that keeps shards elsewhere win over the region', () => {
    const bavaria = [0, 1, 2].map((i) => node('EU', i, { peerId: `12D3KooEU-BY${i}`, region: 'EU-BY' }))
    const { assignment } = assignInRegions(shards, [...bavaria, ...us], new Policy(), defaultPlacementParams)
    for (const s of shards.filter((x) => x.homeRegion === 'EU')) expect(assignment.get(s.id)!.host).toMatch(/EU-BY/)
    const policy = Policy.parse({ version: 1, rules: [{ name: 'us-data-in-eu', match: { homeRegions: ['US'] }, allowRegions: ['EU'] }] })
    const kept = assignInRegions(shards, [...eu, ...us], policy, defaultPlacementParams)
    expect(placedIn(kept.assignment, 'US')).toEqual(new Set(['EU']))
  })

  it('is the flat assignment when the world names no region', () => {
    const flat = new World(worldSchema.parse({ maxX: 400, maxY: 400, cellSize: 100, layers: [{ name: 'physics', consistency: 'host' }] })).all()
    const all = [...eu, ...us]
    expect(JSON.stringify([...assignInRegions(flat, all, new Policy(), defaultPlacementParams).assignment])).toBe(JSON.stringify([...assign(flat, all, new Policy(), defaultPlacementParams)]))
  })
})
