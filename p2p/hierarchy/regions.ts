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
 * (`placementScope`). A shard with no home region (system shards) gets one by
 * rendezvous hashing of its id over the regions that have members, so they
 * spread rather than pile onto one region.
 *
 * Pure functions: the daemon and the simulator (test/sim) call the same code.
 */
import { estimateRtt, type Coordinate } from '../coordinates/vivaldi.ts'
import { centroid, hash32, rendezvous } from '../placement/assign.ts'

/** The region of a node that was configured with none. */
export const UNREGIONED = '-'

export function regionKey (region: string | null | undefined): string {
  return region == null || region === '' ? UNREGIONED : region
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

/** The home of a shard that the world gives none: rendezvous over the regions that can host, the same on every node that agrees on the summaries. */
export function homeOf (shardId: string, homeRegion: string | null, summaries: ReadonlyMap<string, RegionSummary>, now: number, options: ScopeOptions = defaultScopeOptions): string | null {
  if (homeRegion != null) return homeRegion
  const h = hash32(shardId)
  let best: string | null = null
  let bestWeight = -1
  for (const [region, summary] of summaries) {
    if (!usable(summary, now, options)) continue
    const w = rendezvous(h, hash32(region))
    if (w > bestWeight || (w === bestWeight && best != null && region < best)) {
      best = region
      bestWeight = w
    }
  }
  return best
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
    const rtt = anchor == null || there == null ? Number.POSITIVE_INFINITY : estimateRtt(anchor, there)
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
