/**
 * Deterministic placement: every node that runs `assign` on the same inputs
 * gets the same host and replicas for every shard, with no coordination.
 *
 * 1. **Eligibility** — the policy and the layer's required capabilities
 *    (policy.ts) rule candidates out, each with a named reason.
 * 2. **Score** — a weighted sum of terms in [0, 1]: closeness to the shard's
 *    players (RTT from the candidate's network coordinate to the centroid of
 *    the coordinates of the nodes in the shard's home region), load headroom,
 *    measured reliability, and cost (relative to the dearest candidate, as a
 *    penalty). Inputs are quantized and scores are cut into buckets of
 *    `scoreStep` counted down from the best eligible score, so small
 *    disagreements between nodes' views (a coordinate that moved a
 *    millisecond) do not change the answer.
 * 3. **Rendezvous hashing** orders candidates within a bucket by a hash of
 *    (shard, peer): ties and near-ties break the same way everywhere, and a
 *    node joining or leaving moves only the shards it wins or held, about 1/N.
 * 4. **Bounded loads** (consistent hashing with bounded loads, Mirrokni,
 *    Thorup and Zadimoghaddam 2018): shards are visited in hash order and each
 *    takes its best candidate that still has room under ⌈(1+ε)·S/N⌉ hosted
 *    shards (and ⌈(1+ε)·S·k/N⌉ replicas). When every eligible candidate is
 *    full, the best one takes it anyway and the shard is marked `overflow`.
 */
import { estimateRtt, type Coordinate } from '../coordinates/vivaldi.ts'
import { Policy, type PolicySubject } from './policy.ts'
import type { ShardInfo } from './world.ts'

export interface Candidate extends PolicySubject {
  /** Price of a core-hour, in the mesh's unit. */
  cost: number
  /** Measured uptime fraction, 0..1. */
  reliability: number
  /** 1 − CPU load, 0..1. */
  headroom: number
  coordinate: Coordinate | null
}

export interface Weights {
  rtt: number
  headroom: number
  reliability: number
  cost: number
}

export interface PlacementParams {
  /** Replicas per shard besides the host. */
  replicas: number
  /** Load bound: no node hosts more than (1 + epsilon) times the mean. */
  epsilon: number
  /** Width of a score bucket; candidates in one bucket are ordered by rendezvous hash. */
  scoreStep: number
  /** An RTT of this many ms or more scores 0 on closeness. */
  rttScaleMs: number
  weights: Weights
}

export const defaultPlacementParams: PlacementParams = {
  replicas: 2,
  epsilon: 0.25,
  scoreStep: 0.25,
  rttScaleMs: 200,
  weights: { rtt: 1, headroom: 0.5, reliability: 0.5, cost: 0.25 }
}

export interface Assignment {
  shard: string
  host: string | null
  replicas: string[]
  /** Every eligible candidate was at its load bound; the best took the shard anyway. */
  overflow: boolean
}

export interface Terms { rtt: number, headroom: number, reliability: number, cost: number }

export interface Explained {
  peerId: string
  refusal: string | null
  terms: Terms
  score: number
  bucket: number
  /** Rendezvous weight of (shard, peer), the tie-breaker within a bucket. */
  weight: number
  /** 1-based rank among eligible candidates before load bounds; null when refused. */
  rank: number | null
}

/** FNV-1a over UTF-16 code units: fast, stable across machines, good enough before the mixer. */
export function hash32 (text: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/** MurmurHash3's finalizer: a bijection on 32 bits with full avalanche. */
function fmix32 (h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** Rendezvous weight of a (shard, peer) pair from their precomputed hashes. */
export function rendezvous (shardHash: number, peerHash: number): number {
  return fmix32(shardHash ^ fmix32(peerHash ^ 0x9e3779b9))
}

const quantize = (value: number, steps: number): number => Math.floor(Math.min(1, Math.max(0, value)) * steps + 1e-9) / steps

/** Mean of the coordinates of a region's nodes: where that region's players are, as the network sees it. */
export function centroid (coordinates: Coordinate[]): Coordinate | null {
  if (coordinates.length === 0) return null
  const dims = coordinates[0]!.vec.length
  const vec = new Array<number>(dims).fill(0)
  let height = 0
  for (const c of coordinates) {
    for (let i = 0; i < dims; i++) vec[i]! += (c.vec[i] ?? 0) / coordinates.length
    height += c.height / coordinates.length
  }
  return { vec, height, error: 0, adjustment: 0 }
}

interface Prepared {
  candidates: Candidate[]
  hashes: Uint32Array
  maxCost: number
  anchors: Map<string, Coordinate | null>
}

function prepare (candidates: readonly Candidate[]): Prepared {
  // Sorted so the input order (which differs between nodes) never matters.
  const sorted = [...candidates].sort((a, b) => (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0))
  const byRegion = new Map<string, Coordinate[]>()
  for (const c of sorted) {
    if (c.region == null || c.coordinate == null) continue
    const list = byRegion.get(c.region) ?? []
    list.push(c.coordinate)
    byRegion.set(c.region, list)
  }
  const anchors = new Map<string, Coordinate | null>()
  for (const [region, list] of byRegion) anchors.set(region, centroid(list))
  return {
    candidates: sorted,
    hashes: Uint32Array.from(sorted, (c) => hash32(c.peerId)),
    maxCost: Math.max(0, ...sorted.map((c) => c.cost)),
    anchors
  }
}

function termsOf (shard: ShardInfo, candidate: Candidate, prepared: Prepared, params: PlacementParams): Terms {
  const anchor = shard.homeRegion == null ? null : prepared.anchors.get(shard.homeRegion) ?? null
  let rtt = 0
  if (anchor != null && candidate.coordinate != null) {
    // 10 ms steps: coordinates wobble by a few ms between nodes' views.
    const ms = Math.round(estimateRtt(candidate.coordinate, anchor) / 10) * 10
    rtt = 1 - Math.min(1, ms / params.rttScaleMs)
  }
  return {
    rtt,
    headroom: quantize(candidate.headroom, 4),
    reliability: quantize(candidate.reliability, 10),
    cost: prepared.maxCost > 0 ? quantize(candidate.cost / prepared.maxCost, 10) : 0
  }
}

function scoreOf (terms: Terms, weights: Weights): number {
  return weights.rtt * terms.rtt + weights.headroom * terms.headroom + weights.reliability * terms.reliability - weights.cost * terms.cost
}

function bestScore (scores: ArrayLike<number>, refusals: ReadonlyArray<string | null>): number {
  let best = Number.NEGATIVE_INFINITY
  for (let i = 0; i < scores.length; i++) if (refusals[i] === null && scores[i]! > best) best = scores[i]!
  return best
}

/**
 * Buckets count down from the best eligible score: 0 within `step` of it,
 * −1 within the next step, and so on. Relative to the best rather than on a
 * fixed grid, so the top candidates are not split by a grid line they happen
 * to straddle (a node whose uptime fell from 1.0 to 0.97 stays tied).
 */
function bucketOf (score: number, best: number, step: number): number {
  return best === Number.NEGATIVE_INFINITY ? 0 : -Math.floor((best - score) / step + 1e-9)
}

/** Eligibility and score bucket of every candidate, for every distinct (layer, home region, rules) group of shards. */
class ScoreCache {
  private readonly groups = new Map<string, { refusals: (string | null)[], scores: Float64Array, buckets: Float64Array }>()
  private readonly prepared: Prepared
  private readonly policy: Policy
  private readonly params: PlacementParams

  constructor (prepared: Prepared, policy: Policy, params: PlacementParams) {
    this.prepared = prepared
    this.policy = policy
    this.params = params
  }

  get (shard: ShardInfo): { refusals: (string | null)[], scores: Float64Array, buckets: Float64Array } {
    const rules = this.policy.rulesFor(shard)
    const key = `${shard.layer.name}\u0000${shard.homeRegion ?? ''}\u0000${rules.map((r) => r.name).join('\u0000')}`
    let group = this.groups.get(key)
    if (group == null) {
      const { candidates } = this.prepared
      const scores = new Float64Array(candidates.length)
      const buckets = new Float64Array(candidates.length)
      const refusals = candidates.map((c, i) => {
        scores[i] = scoreOf(termsOf(shard, c, this.prepared, this.params), this.params.weights)
        return Policy.refusal(shard, rules, c)
      })
      const best = bestScore(scores, refusals)
      for (let i = 0; i < candidates.length; i++) buckets[i] = bucketOf(scores[i]!, best, this.params.scoreStep)
      group = { refusals, scores, buckets }
      this.groups.set(key, group)
    }
    return group
  }
}

/** True when candidate i ranks above candidate j for a shard. */
function better (bi: number, wi: number, bj: number, wj: number): boolean {
  return bi > bj || (bi === bj && wi > wj)
}

/** The k best candidates passing `ok`, best first, kept in a small sorted array: O(n·k). */
function bestOthers (n: number, k: number, ok: (i: number) => boolean, buckets: Float64Array, weights: Uint32Array): number[] {
  const top: number[] = []
  for (let i = 0; i < n; i++) {
    if (!ok(i)) continue
    let at = top.length
    while (at > 0 && better(buckets[i]!, weights[i]!, buckets[top[at - 1]!]!, weights[top[at - 1]!]!)) at--
    if (at < k) {
      top.splice(at, 0, i)
      if (top.length > k) top.pop()
    }
  }
  return top
}

/** Host and replicas for every shard. */
export function assign (shards: readonly ShardInfo[], candidates: readonly Candidate[], policy: Policy, params: PlacementParams): Map<string, Assignment> {
  const prepared = prepare(candidates)
  const n = prepared.candidates.length
  const result = new Map<string, Assignment>()
  if (n === 0) {
    for (const shard of shards) result.set(shard.id, { shard: shard.id, host: null, replicas: [], overflow: false })
    return result
  }
  const cache = new ScoreCache(prepared, policy, params)
  const hostCap = Math.ceil((1 + params.epsilon) * shards.length / n)
  const replicaCap = Math.ceil((1 + params.epsilon) * shards.length * params.replicas / n)
  const hosted = new Uint32Array(n)
  const replicated = new Uint32Array(n)
  const weights = new Uint32Array(n)
  const order = shards.map((shard) => ({ shard, h: hash32(shard.id) })).sort((a, b) => a.h - b.h || (a.shard.id < b.shard.id ? -1 : 1))
  const k = params.replicas

  for (const { shard, h } of order) {
    const { refusals, buckets } = cache.get(shard)
    for (let i = 0; i < n; i++) weights[i] = rendezvous(h, prepared.hashes[i]!)
    let host = -1
    let fallback = -1
    for (let i = 0; i < n; i++) {
      if (refusals[i] !== null) continue
      if (fallback < 0 || better(buckets[i]!, weights[i]!, buckets[fallback]!, weights[fallback]!)) fallback = i
      if (hosted[i]! < hostCap && (host < 0 || better(buckets[i]!, weights[i]!, buckets[host]!, weights[host]!))) host = i
    }
    const overflow = host < 0 && fallback >= 0
    if (host < 0) host = fallback
    if (host < 0) {
      result.set(shard.id, { shard: shard.id, host: null, replicas: [], overflow: false })
      continue
    }
    hosted[host]!++
    const top = bestOthers(n, k, (i) => i !== host && refusals[i] === null && replicated[i]! < replicaCap, buckets, weights)
    // Where the policy leaves few eligible nodes, they take replicas beyond the bound rather than leave the shard short.
    if (top.length < k) {
      for (const i of bestOthers(n, k, (i) => i !== host && refusals[i] === null && !top.includes(i), buckets, weights)) if (top.length < k) top.push(i)
    }
    for (const i of top) replicated[i]!++
    result.set(shard.id, { shard: shard.id, host: prepared.candidates[host]!.peerId, replicas: top.map((i) => prepared.candidates[i]!.peerId), overflow })
  }
  return result
}

/** Every candidate for one shard with its terms, score, bucket, rendezvous weight and rank (before load bounds). */
export function explain (shard: ShardInfo, candidates: readonly Candidate[], policy: Policy, params: PlacementParams): Explained[] {
  const prepared = prepare(candidates)
  const h = hash32(shard.id)
  const rules = policy.rulesFor(shard)
  const rows: Explained[] = prepared.candidates.map((c, i) => {
    const terms = termsOf(shard, c, prepared, params)
    return { peerId: c.peerId, refusal: Policy.refusal(shard, rules, c), terms, score: scoreOf(terms, params.weights), bucket: 0, weight: rendezvous(h, prepared.hashes[i]!), rank: null }
  })
  const best = bestScore(rows.map((r) => r.score), rows.map((r) => r.refusal))
  for (const row of rows) row.bucket = bucketOf(row.score, best, params.scoreStep)
  rows.sort((a, b) => (a.refusal === null ? 0 : 1) - (b.refusal === null ? 0 : 1) || b.bucket - a.bucket || b.weight - a.weight)
  let rank = 0
  for (const row of rows) if (row.refusal === null) row.rank = ++rank
  return rows
}
