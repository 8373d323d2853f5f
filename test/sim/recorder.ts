/**
 * What the simulator measures, while it runs: failover trials, membership
 * agreement after each change, false suspicions, coordinate error, where
 * shards are hosted, and the bytes each node sends and receives.
 */
import { hash32 } from '../../p2p/placement/assign.ts'
import { pick, type Random } from './rng.ts'
import type { SimNode, SimRegion, Simulator } from './simulator.ts'
import type { CrdtModel } from './crdt-model.ts'

/** The voters' liveness timeout and keepalive period (placement.liveness defaults). */
const LIVENESS_TIMEOUT_MS = 1_000
const KEEPALIVE_MS = 250
const SAMPLE_MS = 10_000
const AGREEMENT_CHECK_MS = 500
const COORDINATE_PAIRS = 600
/** Longer than a probe, its indirect round and the gossip of a suspicion: what is suspected later is of this life. */
const FRESH_LIFE_MS = 10_000

export interface Sample {
  t: number
  alive: number
  /** Mean bytes per second a node sent over the last sample period (probes and its share of gossip). */
  bytesOutPerNodePerS: number
  coordinateErrorP50: number
  coordinateErrorInterP50: number
  /** Share of world shards whose host is in their home region. */
  homeShare: number
  /** Shards hosted by the busiest node / the mean over nodes hosting any. */
  shardsMax: number
  shardsMean: number
  /** Mean CPU load of the busiest region / of all. */
  loadMax: number
  loadMean: number
  suspects: number
}

interface FailoverWait {
  t0: number
  shard: string
  newHost: string
  claimRttMs: number
  done: boolean
}

export function quantiles (values: number[]): { n: number, p50: number, p90: number, p99: number, max: number, mean: number } | null {
  if (values.length === 0) return null
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  return { n: sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1]!, mean: sorted.reduce((a, b) => a + b, 0) / sorted.length }
}

export class Recorder {
  private readonly sim: Simulator
  readonly samples: Sample[] = []
  readonly failoverMs: number[] = []
  readonly agreementMs: number[] = []
  readonly placementMs: number[] = []
  /** Failover trials' victims: time from the kill to each other member of the region holding it suspect, and dead. */
  readonly suspectMs: number[] = []
  readonly deadMs: number[] = []
  private readonly detecting = new Map<string, { at: number, suspected: Set<number>, dead: Set<number> }>()
  readonly marks: Array<{ t: number, event: string, region: string }> = []
  falseSuspicions = 0
  falseDeaths = 0
  /** Suspicions and deaths of members across a split in the minute after it healed: its after-effect, not the detector's error. */
  healSuspicions = 0
  healDeaths = 0
  undetected = 0
  /** Hosts that crashed and restarted before their next host had suspected them: nothing to fail over. */
  returnedFirst = 0
  wallMs = 0
  regionRehomeMs: number | null = null
  /** Shard → host, as placement said at the last sample (or kill). */
  private readonly hosts = new Map<string, string>()
  private readonly waits = new Map<string, FailoverWait[]>()
  /** Victim → when its voters may grant its shards on: their timeout after the last keepalive they heard. */
  private readonly grantAfter = new Map<string, number>()
  private readonly idHashes = new Map<string, number>()

  /** A member's hash; a view's hash is the sum of its members', so it needs no sorting. */
  private idHash (id: string): number {
    let h = this.idHashes.get(id)
    if (h == null) {
      h = hash32(id)
      this.idHashes.set(id, h)
    }
    return h
  }

  /** A node (re)started: a takeover still waiting on its previous life has nothing left to take. */
  restarted (node: SimNode): void {
    for (const w of this.waits.get(node.id) ?? []) if (!w.done) this.returnedFirst++
    this.waits.delete(node.id)
    this.grantAfter.delete(node.id)
  }
  private readonly trialVictims = new Set<number>()
  private readonly pendingAgreement = new Map<number, number>()
  private agreementTimer = false
  private window: { t: number, out: Float64Array, in: Float64Array, life: Uint32Array, regionGossip: Float64Array, globalGossip: number, kinds: Record<string, number>, probes: number } | null = null
  private lastSample: { t: number, out: number, gossip: number } | null = null
  lostRegionAt: number | null = null
  lostRegion: SimRegion | null = null
  /** Per partition (a region split inside, a region cut from the rest): how far its CRDT shards' replicas drifted apart, and how soon they were equal after the heal. */
  readonly partitions: Array<{ event: string, region: number, at: number, healedAt: number | null, maxDivergentEntities: number, maxDivergentShards: number, writes0: number, writes: number, equalAfterHealMs: number | null }> = []

  constructor (sim: Simulator) {
    this.sim = sim
  }

  schedule (end: number): void {
    const warm = Math.max(30_000, end * 0.1)
    this.sim.queue.at(Math.min(warm, end), () => this.openWindow())
    for (let t = SAMPLE_MS; t <= end; t += SAMPLE_MS) this.sim.queue.at(t, () => this.sample())
  }

  mark (event: string, region: SimRegion): void {
    this.marks.push({ t: this.sim.queue.now, event, region: region.site.code })
    if (event === 'split' || event === 'partition') {
      this.partitions.push({ event, region: region.index, at: this.sim.queue.now, healedAt: null, maxDivergentEntities: 0, maxDivergentShards: 0, writes0: this.sim.crdt?.writes ?? 0, writes: 0, equalAfterHealMs: null })
    }
    if (event === 'split-heal' || event === 'heal') {
      const open = this.partitions.find((p) => p.region === region.index && p.healedAt == null)
      if (open != null) {
        open.healedAt = this.sim.queue.now
        open.writes = (this.sim.crdt?.writes ?? 0) - open.writes0
      }
    }
    if (event === 'region-lost') {
      this.lostRegionAt = this.sim.queue.now
      this.lostRegion = region
    }
  }

  isTrialVictim (node: SimNode): boolean {
    return this.trialVictims.has(node.index)
  }

  trial (node: SimNode): void {
    this.trialVictims.add(node.index)
    this.detecting.set(node.id, { at: this.sim.queue.now, suspected: new Set(), dead: new Set() })
    this.sim.queue.after(30_000, () => this.detecting.delete(node.id))
    this.sim.queue.after(31_000, () => this.trialVictims.delete(node.index))
  }

  /** A random alive node that hosts a shard. */
  pickHost (random: Random): SimNode | undefined {
    const hosting = new Set(this.hosts.values())
    const candidates = this.sim.nodes.filter((n) => n.alive && hosting.has(n.id) && !this.trialVictims.has(n.index))
    return candidates.length === 0 ? undefined : pick(candidates, random)
  }

  /** A host died: its shards go to the next host of each, once that host suspects it and the voters' timeout ran out. */
  killed (node: SimNode): void {
    const region = this.sim.regions[node.region]!
    if (region.lost) return
    const mine = [...this.hosts].filter(([, host]) => host === node.id).map(([shard]) => shard)
    if (mine.length === 0) return
    const byRegion = new Map<number, string[]>()
    for (const shard of mine) {
      const r = Number(shard.split('.')[1])
      byRegion.set(r, [...(byRegion.get(r) ?? []), shard])
    }
    const t0 = this.sim.queue.now
    // The last keepalive the voters heard went out up to one period before the crash.
    const lastKeepalive = t0 - node.random() * KEEPALIVE_MS
    const waits: FailoverWait[] = []
    for (const [r, shards] of byRegion) {
      const placed = this.sim.placeRegion(this.sim.regions[r]!)
      for (const shard of shards) {
        const newHost = placed.hosts.get(shard)
        if (newHost == null) continue
        const host = this.sim.nodeOf(newHost)!
        // A majority of three voters is the claimant and its nearest other voter: one round trip.
        const voters = (placed.replicas.get(shard) ?? []).map((id) => this.sim.nodeOf(id)!).filter((v) => v.alive)
        const claimRttMs = voters.length === 0 ? 0 : Math.min(...voters.map((v) => this.sim.rtt(host, v)))
        waits.push({ t0, shard, newHost, claimRttMs, done: false })
        this.hosts.set(shard, newHost)
      }
    }
    this.waits.set(node.id, waits)
    // The voters grant the next epoch no sooner than their timeout after the last keepalive they heard.
    this.grantAfter.set(node.id, lastKeepalive + LIVENESS_TIMEOUT_MS)
    this.sim.queue.after(30_000, () => {
      if (this.waits.get(node.id) !== waits) return
      // A new host that crashed itself meanwhile passes the shard on again: that is another trial, not this one's miss.
      for (const w of waits) if (!w.done && this.sim.nodeOf(w.newHost)!.alive) this.undetected++
      this.waits.delete(node.id)
      this.grantAfter.delete(node.id)
    })
  }

  /** Every quarter second: divergence of the partitioned regions' CRDT shards, and whether they are equal again after a heal. */
  crdtTick (crdt: CrdtModel): void {
    const now = this.sim.queue.now
    for (const p of this.partitions) {
      if (p.equalAfterHealMs != null) continue
      let entities = 0
      let shards = 0
      for (const shard of crdt.shards) {
        if (shard.region !== p.region) continue
        const d = crdt.divergence(shard)
        entities += d
        if (d > 0) shards++
      }
      p.maxDivergentEntities = Math.max(p.maxDivergentEntities, entities)
      p.maxDivergentShards = Math.max(p.maxDivergentShards, shards)
      if (p.healedAt != null && entities === 0) p.equalAfterHealMs = now - p.healedAt
    }
  }

  /** A member's view changed: a takeover may start, or a live member was suspected. */
  memberChanged (observer: SimNode, peer: string, state: string): void {
    if (state !== 'suspect' && state !== 'dead') return
    const detection = this.detecting.get(peer)
    if (detection != null) {
      // What the mesh bench measures on real daemons: kill → suspect, and → dead, on each other member.
      const ms = this.sim.queue.now - detection.at
      if (!detection.suspected.has(observer.index)) {
        detection.suspected.add(observer.index)
        this.suspectMs.push(ms)
      }
      if (state === 'dead' && !detection.dead.has(observer.index)) {
        detection.dead.add(observer.index)
        this.deadMs.push(ms)
      }
    }
    const subject = this.sim.nodeOf(peer)
    // A suspicion of a node that restarted moments ago is of its previous life, which did die.
    // A member the observer cannot reach (a split region's other half) is rightly in doubt.
    if (subject?.alive === true && this.sim.queue.now - subject.startedAt > FRESH_LIFE_MS && this.sim.reachable(observer, subject)) {
      // For a minute after a split heals, each half's doubts of the other reach across it, to both halves (until each
      // member refutes): counted apart.
      const region = this.sim.regions[subject.region]!
      if (region.healedAt != null && this.sim.queue.now - region.healedAt < 60_000 && observer.region === subject.region) {
        if (state === 'suspect') this.healSuspicions++
        else this.healDeaths++
        return
      }
      if (state === 'suspect') this.falseSuspicions++
      else this.falseDeaths++
      return
    }
    const waits = this.waits.get(peer)
    if (waits == null) return
    const grant = this.grantAfter.get(peer) ?? 0
    const now = this.sim.queue.now
    for (const w of waits) {
      if (w.done || w.newHost !== observer.id) continue
      w.done = true
      this.failoverMs.push(Math.max(now, grant) + w.claimRttMs - w.t0)
    }
  }

  /** Membership changed in a region: measure how long until every member sees the same members. */
  changed (region: SimRegion): void {
    if (this.window == null) return
    this.pendingAgreement.set(region.index, this.sim.queue.now)
    if (!this.agreementTimer) {
      this.agreementTimer = true
      this.sim.queue.after(AGREEMENT_CHECK_MS, () => this.checkAgreement())
    }
  }

  private checkAgreement (): void {
    const now = this.sim.queue.now
    for (const [r, since] of [...this.pendingAgreement]) {
      const region = this.sim.regions[r]!
      if (region.members.size === 0) {
        this.pendingAgreement.delete(r)
        continue
      }
      let truth = 0
      for (const m of region.members) truth = (truth + this.idHash(this.sim.nodes[m]!.id)) >>> 0
      let agreed = true
      for (const m of region.members) {
        const node = this.sim.nodes[m]!
        const seen = node.swim.peers('alive', 'suspect')
        let view = this.idHash(node.id)
        for (const id of seen) view = (view + this.idHash(id)) >>> 0
        if (seen.length + 1 !== region.members.size || view !== truth) {
          agreed = false
          break
        }
      }
      if (agreed) {
        this.agreementMs.push(now - since)
        this.pendingAgreement.delete(r)
      } else if (now - since > 60_000) {
        this.pendingAgreement.delete(r)
      }
    }
    if (this.pendingAgreement.size > 0) this.sim.queue.after(AGREEMENT_CHECK_MS, () => this.checkAgreement())
    else this.agreementTimer = false
  }

  private openWindow (): void {
    const n = this.sim.nodes.length
    const w = { t: this.sim.queue.now, out: new Float64Array(n), in: new Float64Array(n), life: new Uint32Array(n), regionGossip: new Float64Array(this.sim.regions.length), globalGossip: this.sim.globalGossipBytesPerMember, kinds: { ...this.sim.sentByKind }, probes: this.sim.nodes.reduce((a, n) => a + n.bytesOut, 0) }
    for (const node of this.sim.nodes) {
      w.out[node.index] = node.bytesOut
      w.in[node.index] = node.bytesIn
      w.life[node.index] = node.life
    }
    for (const region of this.sim.regions) w.regionGossip[region.index] = region.gossipBytesPerMember
    this.window = w
  }

  /** Bytes per second each node that stayed up through the window sent and received: its probes and its share of every topic it is in. */
  bandwidth (): { out: number[], in: number[], windowS: number } {
    const w = this.window
    if (w == null) return { out: [], in: [], windowS: 0 }
    const s = (this.sim.queue.now - w.t) / 1_000
    const out: number[] = []
    const inn: number[] = []
    const global = this.sim.globalGossipBytesPerMember - w.globalGossip
    for (const node of this.sim.nodes) {
      if (!node.alive || node.life !== w.life[node.index]) continue
      const gossip = this.sim.regions[node.region]!.gossipBytesPerMember - w.regionGossip[node.region]! + global
      out.push((node.bytesOut - w.out[node.index]! + gossip) / s)
      inn.push((node.bytesIn - w.in[node.index]! + gossip) / s)
    }
    return { out, in: inn, windowS: s }
  }

  /** Mean bytes a node sent per second over the window, by what they carried. */
  sentByKind (): Record<string, number> {
    const w = this.window
    if (w == null) return {}
    const s = (this.sim.queue.now - w.t) / 1_000
    const alive = Math.max(1, this.sim.aliveCount())
    const out: Record<string, number> = { probes: Math.round((this.sim.nodes.reduce((a, n) => a + n.bytesOut, 0) - w.probes) / s / alive) }
    for (const [kind, total] of Object.entries(this.sim.sentByKind)) out[kind] = Math.round((total - w.kinds[kind]!) / s / alive)
    return out
  }

  private sample (): void {
    const sim = this.sim
    const now = sim.queue.now
    const alive = sim.nodes.filter((n) => n.alive)
    // Placement now, region by region, as each region's members compute it.
    let home = 0
    let total = 0
    const perHost = new Map<string, number>()
    for (const region of sim.regions) {
      const placed = sim.placeRegion(region)
      this.placementMs.push(placed.ms)
      const codeOf = (id: string): string => sim.regions[sim.nodeOf(id)!.region]!.site.code
      for (const shard of region.shards) {
        const host = placed.hosts.get(shard.id)
        if (host == null) {
          this.hosts.delete(shard.id)
          continue
        }
        this.hosts.set(shard.id, host)
        total++
        if (codeOf(host) === region.site.code) home++
        perHost.set(host, (perHost.get(host) ?? 0) + 1)
      }
      if (region === this.lostRegion && this.regionRehomeMs == null && this.lostRegionAt != null && placed.hosts.size === region.shards.length) {
        this.regionRehomeMs = now - this.lostRegionAt
      }
    }
    // Coordinate error over pairs drawn with a fixed stream, so every sample looks at comparable pairs.
    const random = seededPairs(now)
    const intra: number[] = []
    const inter: number[] = []
    for (let i = 0; i < COORDINATE_PAIRS && alive.length > 1; i++) {
      const a = alive[Math.floor(random() * alive.length)]!
      const sameRegion = i % 2 === 0
      const pool = sameRegion ? [...sim.regions[a.region]!.members] : null
      const b = pool != null ? sim.nodes[pool[Math.floor(random() * pool.length)]!]! : alive[Math.floor(random() * alive.length)]!
      if (a === b || (!sameRegion && a.region === b.region)) continue
      if (a.vivaldi.updates === 0 || b.vivaldi.updates === 0) continue;
      (sameRegion ? intra : inter).push(sim.coordinateError(a, b))
    }
    const loads = sim.regions.filter((r) => r.members.size > 0).map((r) => [...r.members].reduce((s, m) => s + sim.nodes[m]!.load, 0) / r.members.size)
    const counts = [...perHost.values()]
    const gossip = sim.regions.reduce((s, r) => s + r.gossipBytesPerMember * r.members.size, 0) / Math.max(1, alive.length) + sim.globalGossipBytesPerMember
    const out = alive.reduce((s, n) => s + n.bytesOut, 0) / Math.max(1, alive.length)
    const last = this.lastSample
    this.lastSample = { t: now, out, gossip }
    let suspects = 0
    for (const node of alive) suspects += node.swim.counts().suspect
    this.samples.push({
      t: now / 1_000,
      alive: alive.length,
      bytesOutPerNodePerS: last == null ? 0 : Math.max(0, (out - last.out + gossip - last.gossip) / ((now - last.t) / 1_000)),
      coordinateErrorP50: quantiles(intra.concat(inter))?.p50 ?? 1,
      coordinateErrorInterP50: quantiles(inter)?.p50 ?? 1,
      homeShare: total === 0 ? 0 : home / total,
      shardsMax: counts.length === 0 ? 0 : Math.max(...counts),
      shardsMean: counts.length === 0 ? 0 : counts.reduce((a, b) => a + b, 0) / counts.length,
      loadMax: loads.length === 0 ? 0 : Math.max(...loads),
      loadMean: loads.length === 0 ? 0 : loads.reduce((a, b) => a + b, 0) / loads.length,
      suspects
    })
  }
}



/** A small generator seeded by the sample time: the sim's own stream is not disturbed by measuring. */
function seededPairs (t: number): () => number {
  let s = (Math.floor(t) ^ 0x5bd1e995) >>> 0
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0
    s ^= s >>> 12
    return (s >>> 0) / 4294967296
  }
}
