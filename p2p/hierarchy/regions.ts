/**
 * The grid's hierarchy: regions, and what crosses between them.
 *
 * A node's **region** is the one it is configured with (`region`, an ISO
 * 3166 code such as `DE` or `US-CA`, the same field placement policies and
 * world areas use); a node with none is in the region `-`. The operator
 * knows where the machine is; nothing here guesses it from coordinates, so a
 * hostile node cannot move itself into a region by faking latency, only by
 * lying in its own descriptor, which policy rules can refuse.
 *
 * Inside a region live membership (SWIM probes and claims), load telemetry,
 * leases and placement: every node of a region tracks every other. Across
 * regions flow only **summaries**: a region's alive count, capacity, load and
 * a few representatives with their coordinates. A node's protocol state is
 * then its region's size plus the number of regions, not the size of the
 * grid.
 *
 * Placement of a shard happens among its home region's candidates; when that
 * region is too small, overloaded or gone, the nearest regions are added
 * (`placementScope`, `assignInRegions`). A shard with no home region (a cell
 * the world names no region for, the system shards) is placed over every
 * region, as in a flat grid.
 *
 * Pure functions: the daemon and the simulator (test/sim) call the same code.
 */
import { estimateRtt, type Coordinate } from '../coordinates/vivaldi.ts'
import { assign, centroid, hash32, rendezvous, type Assignment, type Candidate, type PlacementParams } from '../placement/assign.ts'
import type { Policy } from '../placement/policy.ts'
import type { ShardInfo } from '../placement/world.ts'

/** The region of a node that was configured with none. */
export const UNREGIONED = '-'

export function regionKey (region: string | null | undefined): string {
  return region == null || region === '' ? UNREGIONED : region
}

/**
 * The region a node counts in, given the regions the world names as homes:
 * its configured code, or the home region that code lies in (a node in
 * `DE-BY` counts in `DE` when the world names `DE` and not `DE-BY`).
 */
export function regionOf (region: string | null | undefined, homes: ReadonlySet<string>): string {
  const key = regionKey(region)
  if (homes.has(key)) return key
  const dash = key.indexOf('-')
  return dash > 0 && homes.has(key.slice(0, dash)) ? key.slice(0, dash) : key
}

/** What one region tells the others about itself. */
export interface RegionSummary {
  region: string
  /** Members alive, as the summarising member sees them. */
  alive: number
  /** Cores of those members: the capacity another region's overflow can count on. */
  cores: number
  /** Mean CPU load of those members, 0..1. */
  load: number
  /** Members other regions probe (for coordinates) and ask (for summaries); at most `REPRESENTATIVES`. */
  representatives: Array<{ peerId: string, coordinate: Coordinate | null }>
  /** When it was made, ms on the maker's clock. */
  at: number
}

/** Three representatives: one can die and one can be partitioned away with the region still reachable. */
export const REPRESENTATIVES = 3

export interface RegionMember {
  peerId: string
  cores: number
  /** CPU load, 0..1. */
  load: number
  coordinate: Coordinate | null
}

/**
 * The region's representatives: its `count` members with the highest
 * rendezvous weight for the region's name. Every member that agrees on the
 * region's membership agrees on them, without a vote; a member leaving
 * changes only its own slot.
 */
export function representatives (region: string, members: readonly string[], count = REPRESENTATIVES): string[] {
  const h = hash32(region)
  return members
    .map((peerId) => ({ peerId, w: rendezvous(h, hash32(peerId)) }))
    .sort((a, b) => b.w - a.w || (a.peerId < b.peerId ? -1 : 1))
    .slice(0, count)
    .map((m) => m.peerId)
}

export function summarize (region: string, members: readonly RegionMember[], now: number): RegionSummary {
  const byId = new Map(members.map((m) => [m.peerId, m]))
  const reps = representatives(region, [...byId.keys()])
  let cores = 0
  let load = 0
  for (const m of members) {
    cores += m.cores
    load += m.load
  }
  return {
    region,
    alive: members.length,
    cores,
    load: members.length === 0 ? 0 : load / members.length,
    representatives: reps.map((peerId) => ({ peerId, coordinate: byId.get(peerId)?.coordinate ?? null })),
    at: now
  }
}

export interface ScopeOptions {
  /** Candidates a shard needs: its host and its replicas. */
  need: number
  /** A region whose mean load is above this takes help from its neighbours (the flash-crowd rule). */
  maxLoad: number
  /** Regions a shard is placed over at most, its home included: overflow stays near. */
  maxRegions: number
  /** A summary older than this says nothing: the region is treated as gone. */
  staleAfterMs: number
}

export const defaultScopeOptions: ScopeOptions = {
  need: 3,
  // 0.85: placement's headroom term already steers within a region; beyond this a region's hosts miss ticks.
  maxLoad: 0.85,
  maxRegions: 4,
  // Three summary periods (10 s each): one lost summary is not a lost region.
  staleAfterMs: 30_000
}

/** A region that can host: a fresh summary with members. */
function usable (summary: RegionSummary | undefined, now: number, options: ScopeOptions): summary is RegionSummary {
  return summary != null && summary.alive > 0 && now - summary.at <= options.staleAfterMs
}

/** Where a region is, as the network sees it: the mean of its representatives' coordinates. */
export function regionAnchor (summary: RegionSummary): Coordinate | null {
  return centroid(summary.representatives.map((r) => r.coordinate).filter((c): c is Coordinate => c != null))
}

/**
 * The regions whose members are candidates for a shard homed in `home`,
 * home first. The home region alone while it has `need` members and its
 * load is at most `maxLoad`. Otherwise the nearest usable regions (by the
 * estimated RTT between region anchors; ties by name) are added one at a
 * time while the scope is short of members or its mean load, weighted by
 * cores, stays above `maxLoad`, up to `maxRegions`. A home region with no
 * fresh summary is gone: its shards are placed over its nearest regions
 * (nearest to its last known anchor), so players are served from next door
 * rather than not at all.
 */
export function placementScope (home: string, summaries: ReadonlyMap<string, RegionSummary>, now: number, options: ScopeOptions = defaultScopeOptions): string[] {
  const own = summaries.get(home)
  const homeUsable = usable(own, now, options)
  if (homeUsable && own.alive >= options.need && own.load <= options.maxLoad) return [home]
  const anchor = own == null ? null : regionAnchor(own)
  const others: Array<{ region: string, rtt: number, summary: RegionSummary }> = []
  for (const [region, summary] of summaries) {
    if (region === home || !usable(summary, now, options)) continue
    const there = regionAnchor(summary)
    // 10 ms steps, as placement's closeness term: two nodes whose coordinates differ by a millisecond order regions alike.
    const rtt = anchor == null || there == null ? Number.POSITIVE_INFINITY : Math.round(estimateRtt(anchor, there) / 10) * 10
    others.push({ region, rtt, summary })
  }
  others.sort((a, b) => a.rtt - b.rtt || (a.region < b.region ? -1 : 1))
  const scope: string[] = []
  let alive = 0
  let cores = 0
  let busy = 0
  const add = (region: string, summary: RegionSummary): void => {
    scope.push(region)
    alive += summary.alive
    cores += summary.cores
    busy += summary.load * summary.cores
  }
  if (homeUsable) add(home, own)
  for (const other of others) {
    if (scope.length >= options.maxRegions) break
    const short = alive < options.need
    const loaded = cores > 0 && busy / cores > options.maxLoad
    if (scope.length > 0 && !short && !loaded) break
    add(other.region, other.summary)
  }
  return scope
}

export interface RegionalAssignment {
  assignment: Map<string, Assignment>
  /** Each home region's placement scope (home first); shards with no home region are placed over every candidate. */
  scopes: Map<string, string[]>
}

/**
 * Places shards region by region, on one node's view of every candidate (the
 * daemon, which still knows every node): summaries are made from the
 * candidates themselves (their region, cores are not known so each counts
 * one, load from their headroom in placement's quarter steps), each home
 * region's shards go to `assign` over the candidates of its
 * `placementScope`, and shards with no home region over every candidate.
 * A shard its scope leaves with no eligible candidate (a policy that keeps
 * it elsewhere) is placed over every candidate instead: the policy is a
 * rule, the region a preference.
 *
 * Every node with the same candidates gets the same answer. The load bound
 * of `assign` holds within each home region's group; a node a full region
 * overflows onto can host that group's shards beside its own.
 */
export function assignInRegions (shards: readonly ShardInfo[], candidates: readonly Candidate[], policy: Policy, params: PlacementParams, options: Partial<ScopeOptions> = {}): RegionalAssignment {
  const scopeOptions: ScopeOptions = { ...defaultScopeOptions, need: params.replicas + 1, ...options }
  const homes = new Set<string>()
  for (const shard of shards) if (shard.homeRegion != null) homes.add(shard.homeRegion)
  const scopes = new Map<string, string[]>()
  if (homes.size === 0) return { assignment: assign(shards, candidates, policy, params), scopes }

  const byRegion = new Map<string, Candidate[]>()
  for (const c of candidates) {
    const region = regionOf(c.region, homes)
    const list = byRegion.get(region) ?? []
    list.push(c)
    byRegion.set(region, list)
  }
  const summaries = new Map<string, RegionSummary>()
  for (const [region, members] of byRegion) {
    summaries.set(region, summarize(region, members.map((c) => ({
      peerId: c.peerId,
      cores: 1,
      load: 1 - Math.floor(Math.min(1, Math.max(0, c.headroom)) * 4 + 1e-9) / 4,
      coordinate: c.coordinate
    })), 0))
  }

  const groups = new Map<string | null, ShardInfo[]>()
  for (const shard of shards) {
    const list = groups.get(shard.homeRegion) ?? []
    list.push(shard)
    groups.set(shard.homeRegion, list)
  }
  const assignment = new Map<string, Assignment>()
  const homeless: ShardInfo[] = []
  for (const [home, group] of groups) {
    if (home == null) {
      homeless.push(...group)
      continue
    }
    const scope = placementScope(home, summaries, 0, scopeOptions)
    scopes.set(home, scope)
    const inScope = scope.flatMap((region) => byRegion.get(region) ?? [])
    const placed = assign(group, inScope, policy, params)
    for (const shard of group) {
      const a = placed.get(shard.id)!
      if (a.host == null) homeless.push(shard)
      else assignment.set(shard.id, a)
    }
  }
  if (homeless.length > 0) for (const [shard, a] of assign(homeless, candidates, policy, params)) assignment.set(shard, a)
  return { assignment, scopes }
}
