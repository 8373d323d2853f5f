/**
 * A deterministic simulator of the grid: the real protocol cores (SWIM with
 * Lifeguard, Vivaldi, deterministic placement, the region hierarchy) driven
 * by a virtual clock over a modelled network, in one process.
 *
 * What is real: every node runs its own `Swim` and `VivaldiClient`, probes
 * and claims go through them exactly as the daemon feeds them, placement is
 * `assign` over `placementScope`. What is modelled: the network (RTT from
 * geography, loss, partitions), gossipsub (gossip-model.ts: delay and bytes,
 * not each copy), load telemetry (its bytes; its content is the node's true
 * load), and leases (a takeover is the next host suspecting the old one, the
 * voters' liveness timeout and one round trip to a majority: the rule of
 * p2p/placement/liveness.ts, not its messages).
 *
 * Membership, telemetry and placement are per region; across regions flow
 * the regions' summaries, and every node probes another region's
 * representative now and then so coordinates stay comparable across the
 * planet (as Consul's WAN pool does, with every node in it at a low rate).
 */
import * as dagCbor from '@ipld/dag-cbor'
import { Swim, defaultSwimOptions, type Claim, type SwimAction } from '../../p2p/membership/swim.ts'
import { VivaldiClient, estimateRtt } from '../../p2p/coordinates/vivaldi.ts'
import { assign, defaultPlacementParams, type Candidate } from '../../p2p/placement/assign.ts'
import { Policy } from '../../p2p/placement/policy.ts'
import type { Layer, ShardInfo } from '../../p2p/placement/world.ts'
import { encodeLoadReport } from '../../p2p/telemetry/load-report.ts'
import { placementScope, summarize, defaultScopeOptions, type RegionSummary } from '../../p2p/hierarchy/regions.ts'
import { EventQueue } from './event-queue.ts'
import { regionSites, siteNear, siteRtt, type RegionSite, type Site } from './geography.ts'
import { disseminationMs, eagerBytesPerMember, lazyBytesPerMemberPerS, messageWireBytes } from './gossip-model.ts'
import { fork, pick, seeded, type Random } from './rng.ts'
import { Recorder } from './recorder.ts'
import { CrdtModel } from './crdt-model.ts'

export interface SimOptions {
  nodes: number
  regions: number
  seed: number
  durationS: number
  /** World shards homed in each region. */
  shardsPerRegion: number
  /** Share of the nodes that crash, and as many that join, per minute, after the warm-up. */
  churnPerMin: number
  /** Probability that one probe or its answer is lost. */
  lossRate: number
  /** Every node probes another region's representative this often, for coordinates (and only for them). */
  wanProbeMs: number
  telemetryMs: number
  summaryMs: number
  /** gossipsub's gossip factor (the daemon runs its default, 0.25): the share of non-mesh peers sent IHAVE each heartbeat. */
  gossipFactor: number
  /** Load-report and failure-detection faults: hosts killed for failover trials. */
  killTrials: number
  /**
   * A crash closes the node's connections, as kill -9 does (the kernel closes its sockets and every peer sees its
   * connection go, and probes at once), rather than a silent one (power, network), the default. The mesh bench kills
   * with SIGKILL: the calibration runs this way.
   */
  crashCloses: boolean
  /**
   * Nodes spread over this many cities (the testbed's, in its order) whatever their region: a flat grid of 10 in
   * 10 cities is the mesh bench's testbed. 0: each node near its region's city.
   */
  spreadOver: number
  /** CRDT shards tracked per region (crdt-model.ts): their replicas' state, convergence and divergence. */
  crdtShardsPerRegion: number
  crdtWritesPerShardPerS: number
  /** Anti-entropy period (shards.syncIntervalMs). */
  syncIntervalMs: number
  faults: boolean
  progress?: (line: string) => void
}

export const defaultSimOptions: SimOptions = {
  nodes: 1_000,
  regions: 10,
  seed: 1,
  durationS: 600,
  shardsPerRegion: 32,
  churnPerMin: 0.01,
  lossRate: 0.001,
  wanProbeMs: 5_000,
  telemetryMs: 5_000,
  summaryMs: 10_000,
  gossipFactor: 0.25,
  killTrials: 20,
  crashCloses: false,
  spreadOver: 0,
  crdtShardsPerRegion: 2,
  crdtWritesPerShardPerS: 2,
  syncIntervalMs: 30_000,
  faults: true
}

/** A probe and its answer, each way: the ping (32 bytes) in a yamux frame on a Noise channel, and the stream's open and close. */
const PROBE_BYTES = 120
/** An indirect probe request or answer: the target's peer id and a timeout. */
const INDIRECT_BYTES = 160
/** Lifeguard's and the lease's timers run on a loaded machine: answering a probe takes this long at the far end. */
const PROCESSING_MS = 0.5
/** Round trips a probe or a request takes: multistream-select on a new stream, then the exchange itself. */
const STREAM_RTTS = 2
/** Connections a node keeps to other regions' representatives (libp2p closes idle ones; its WAN probes renew a few). */
const WAN_CONNECTIONS = 8
const PHYSICS: Layer = { name: 'physics', consistency: 'host', require: [], decorative: false, tickHz: 20, quantum: 0 }
const REGION_TOPIC = 'metagrid/region/telemetry/1'
const SUMMARY_TOPIC = 'metagrid/regions/summary/1'
const CLAIM_TOPIC = 'metagrid/region/membership/1'

/** A load report as the daemon publishes it: the DAG-CBOR report and its sealed envelope (signLoadReport: payload type, public key, signature; 135 bytes, measured). */
export function loadReportPayloadBytes (): number {
  const coordinate = new VivaldiClient().current
  coordinate.vec = coordinate.vec.map((_, i) => 12.345 + i)
  return encodeLoadReport({ seq: 1_790_000_000_000, timestamp: 1_790_000_000_000, cpu: 0.42, memory: 0.3, accelerators: { utilisation: 0, free: 0, total: 0 }, queue: 0, shards: 3, coordinate }).byteLength + 135
}

export const REGION_TELEMETRY_TOPIC = REGION_TOPIC

export interface SimNode {
  index: number
  id: string
  region: number
  site: Site
  alive: boolean
  /** Bumped at every crash and restart: callbacks of an earlier life are ignored. */
  life: number
  swim: Swim
  vivaldi: VivaldiClient
  load: number
  cores: number
  scheduled: number
  random: Random
  bytesOut: number
  bytesIn: number
  /** When the current life began, ms. */
  startedAt: number
}

export interface SimRegion {
  index: number
  site: RegionSite
  members: Set<number>
  shards: ShardInfo[]
  meanOneWayMs: number
  /** Per-member gossip bytes (each way) accumulated so far in this region's topics. */
  gossipBytesPerMember: number
  /** The region's side of a partition: cut from every other region while true. */
  cut: boolean
  /** Split inside: its members' two halves cannot reach each other while true. */
  split: boolean
  /** When its last split healed: for a minute its members feed each other's load reports to SWIM (a dead member heard is told so, and refutes). */
  healedAt: number | null
  lost: boolean
}

export class Simulator {
  readonly options: SimOptions
  readonly queue = new EventQueue()
  readonly nodes: SimNode[] = []
  readonly regions: SimRegion[] = []
  /** Summaries as the regions outside a partition see them. */
  readonly summaries = new Map<string, RegionSummary>()
  readonly recorder: Recorder
  /** Per-member bytes in the global summary topic. */
  globalGossipBytesPerMember = 0
  private readonly random: Random
  private readonly policy = new Policy()
  private readonly loadReportWire: number
  private readonly claimWire: number
  /** CRDT shards and their replicas, from the end of the warm-up. */
  crdt: CrdtModel | undefined
  events = 0
  claimsDelivered = 0
  /** Bytes sent over all nodes, by what they carried (probes are counted per node, in SimNode.bytesOut). */
  readonly sentByKind = { loadReports: 0, claims: 0, ihave: 0, summaries: 0 }

  constructor (options: Partial<SimOptions> = {}) {
    this.options = { ...defaultSimOptions, ...options }
    if (this.options.regions < 1 || this.options.nodes < this.options.regions) throw new Error('need at least one region and one node per region')
    this.random = seeded(this.options.seed)
    this.recorder = new Recorder(this)
    this.loadReportWire = messageWireBytes(loadReportPayloadBytes(), REGION_TOPIC)
    // A claim: kind, subject's peer id, incarnation (membership.ts encodeClaim), about 50 bytes.
    this.claimWire = messageWireBytes(52, CLAIM_TOPIC)
    const sites = regionSites(this.options.regions, this.random)
    for (const site of sites) {
      const index = this.regions.length
      const shards: ShardInfo[] = []
      for (let k = 0; k < this.options.shardsPerRegion; k++) shards.push({ id: `physics.${index}.${k}`, layer: PHYSICS, cx: index, cy: k, homeRegion: site.code })
      this.regions.push({ index, site, members: new Set(), shards, meanOneWayMs: 0, gossipBytesPerMember: 0, cut: false, split: false, healedAt: null, lost: false })
    }
    const spread = this.options.spreadOver > 0 ? regionSites(this.options.spreadOver, this.random) : null
    for (let i = 0; i < this.options.nodes; i++) {
      const region = this.regions[i % this.regions.length]!
      const random = fork(this.random)
      const node: SimNode = {
        index: i,
        id: `n${i}`,
        region: region.index,
        site: siteNear(spread == null ? region.site : spread[i % spread.length]!, random),
        alive: false,
        life: 0,
        swim: undefined as unknown as Swim,
        vivaldi: new VivaldiClient({}, random),
        load: 0.2 + random() * 0.3,
        cores: 2 + Math.floor(random() * 3) * 2,
        scheduled: Number.POSITIVE_INFINITY,
        random,
        bytesOut: 0,
        bytesIn: 0,
        startedAt: 0
      }
      this.nodes.push(node)
    }
    for (const region of this.regions) region.meanOneWayMs = this.meanOneWay(region)
  }

  rtt (a: SimNode, b: SimNode): number {
    return siteRtt(a.site, b.site)
  }

  /** Whether a message from a can reach b: a partitioned region reaches only itself, and a split one not its other half. */
  reachable (a: SimNode, b: SimNode): boolean {
    if (a.region === b.region) return !this.regions[a.region]!.split || this.half(a) === this.half(b)
    return !this.regions[a.region]!.cut && !this.regions[b.region]!.cut
  }

  /** Which side of a split region a node is on: alternate members by their order in the region. */
  half (node: SimNode): number {
    return Math.floor(node.index / this.regions.length) % 2
  }

  /** Runs the whole scenario. */
  run (): void {
    const { durationS } = this.options
    const end = durationS * 1_000
    // Joins over the first 20 s (or a tenth of a short run), as operators start their daemons.
    const joinSpread = Math.min(20_000, end / 10)
    for (const node of this.nodes) this.queue.at(this.random() * joinSpread, () => this.start(node))
    this.queue.at(1_000, () => this.summariesTick())
    for (const region of this.regions) this.queue.at(this.random() * this.options.telemetryMs, () => this.telemetryTick(region))
    this.recorder.schedule(end)
    this.queue.at(Math.min(Math.max(30_000, end * 0.1), end), () => this.trackCrdt())
    if (this.options.faults) this.scheduleFaults(end)
    const started = performance.now()
    let lastLine = started
    for (let t = 0; t < end;) {
      t = Math.min(end, t + 1_000)
      this.events += this.queue.runUntil(t)
      const wall = performance.now()
      if (this.options.progress != null && (wall - lastLine >= 5_000 || t === end)) {
        lastLine = wall
        const alive = this.nodes.reduce((n, node) => n + (node.alive ? 1 : 0), 0)
        this.options.progress(`sim t=${(t / 1_000).toFixed(0)}/${durationS} s  nodes alive ${alive}  events ${this.events}  ${((t / 1_000) / ((wall - started) / 1_000)).toFixed(1)}x real time`)
      }
    }
    this.recorder.wallMs = performance.now() - started
  }

  /** A node starts (or restarts, with the same identity and a higher incarnation). */
  start (node: SimNode): void {
    if (node.alive) return
    const region = this.regions[node.region]!
    if (region.lost) return
    node.alive = true
    node.life++
    node.startedAt = this.queue.now
    this.recorder.restarted(node)
    this.crdt?.restarted(node)
    node.scheduled = Number.POSITIVE_INFINITY
    const now = this.queue.now
    node.swim = new Swim(node.id, Math.floor(now), {}, node.random, (peer) => {
      const other = this.nodeOf(peer)
      return other == null ? undefined : node.vivaldi.estimateTo(other.vivaldi.current)
    })
    region.members.add(node.index)
    this.recorder.changed(region)
    // It learns its region's members from their load reports within a telemetry period.
    const life = node.life
    this.queue.after(node.random() * this.options.telemetryMs, () => {
      if (node.life !== life || !node.alive) return
      for (const m of region.members) if (m !== node.index) node.swim.heard(this.nodes[m]!.id, this.queue.now)
      this.drive(node)
    })
    this.wanProbe(node, life)
    this.drive(node)
  }

  /** A crash: the process is gone, its timers with it. */
  kill (node: SimNode): void {
    if (!node.alive) return
    node.alive = false
    node.life++
    const region = this.regions[node.region]!
    region.members.delete(node.index)
    this.recorder.killed(node)
    this.recorder.changed(region)
    if (!this.options.crashCloses) return
    // Every member is connected to it (probes keep the connections): each sees its connection close.
    for (const m of region.members) {
      const member = this.nodes[m]!
      if (!this.reachable(member, node)) continue
      const life = member.life
      this.queue.after(this.rtt(member, node) / 2, () => {
        if (member.life !== life || !member.alive) return
        member.swim.disconnected(node.id, this.queue.now)
        this.drive(member)
      })
    }
  }

  nodeOf (id: string): SimNode | undefined {
    return this.nodes[Number(id.slice(1))]
  }

  /** Runs what the node's SWIM asks for, and wakes it when it next wants. */
  drive (node: SimNode, forceReschedule = true): void {
    const actions = node.swim.drain()
    for (const action of actions) this.act(node, action)
    if (!forceReschedule && actions.length === 0) return
    const now = this.queue.now
    const at = node.swim.nextWakeup(now)
    if (at >= node.scheduled) return
    node.scheduled = at
    const life = node.life
    this.queue.at(at, () => {
      if (node.life !== life || node.scheduled !== at) return
      node.scheduled = Number.POSITIVE_INFINITY
      node.swim.tick(this.queue.now)
      this.drive(node)
    })
  }

  private act (node: SimNode, action: SwimAction): void {
    switch (action.t) {
      case 'probe': this.probe(node, action.id, action.peer, action.timeoutMs); break
      case 'probe-indirect': this.indirect(node, action.id, action.peer, action.helpers, action.timeoutMs); break
      case 'broadcast': this.broadcast(node, action.claim); break
      case 'changed': this.recorder.memberChanged(node, action.peer, action.state); break
      case 'forgotten': break
    }
  }

  /** How soon a dial to a dead node fails: a round trip when its process died and the machine refuses (crashCloses), never otherwise. */
  private refusedAfter (from: SimNode, to: SimNode): number {
    return this.options.crashCloses && !to.alive && this.reachable(from, to) ? this.rtt(from, to) : Number.POSITIVE_INFINITY
  }

  private lost (node: SimNode): boolean {
    return node.random() < this.options.lossRate
  }

  /** One ping there and back; what a probe that arrives feeds the coordinate. */
  private pingOutcome (from: SimNode, to: SimNode): number | null {
    if (!to.alive || !this.reachable(from, to) || this.lost(from)) return null
    return this.rtt(from, to) * (1 + 0.05 * from.random()) + PROCESSING_MS
  }

  private probe (node: SimNode, id: number, peer: string, timeoutMs: number): void {
    const target = this.nodeOf(peer)
    if (target == null) return
    node.bytesOut += PROBE_BYTES
    target.bytesIn += PROBE_BYTES
    const rtt = this.pingOutcome(node, target)
    const life = node.life
    if (rtt != null) {
      target.bytesOut += PROBE_BYTES
      node.bytesIn += PROBE_BYTES
    }
    // A probe opens a stream (a round trip for multistream-select) and pings (another): the daemon's prober, and
    // why swim.ts gives a far member three of its round trips. The ping's own round trip is the RTT sample.
    const ok = rtt != null && STREAM_RTTS * rtt < timeoutMs
    // A process that died on a machine still up: its port refuses the dial one round trip later.
    const refusedAfter = this.refusedAfter(node, target)
    this.queue.after(ok ? STREAM_RTTS * rtt : Math.min(timeoutMs, refusedAfter), () => {
      if (node.life !== life) return
      const now = this.queue.now
      if (ok) {
        try {
          node.vivaldi.update(target.id, target.vivaldi.current, rtt)
        } catch { /* a sample the core refuses is the core's to refuse */ }
      }
      node.swim.probeDone(id, { ok }, now)
      this.drive(node, false)
    })
  }

  private indirect (node: SimNode, id: number, peer: string, helpers: string[], timeoutMs: number): void {
    const target = this.nodeOf(peer)
    if (target == null) return
    let firstAck = Number.POSITIVE_INFINITY
    let nacks = 0
    // When every helper has answered (a nack for a target that refused them), the round ends then, not at the timeout.
    let lastNack = 0
    for (const h of helpers) {
      const helper = this.nodeOf(h)
      if (helper == null) continue
      node.bytesOut += INDIRECT_BYTES
      helper.bytesIn += INDIRECT_BYTES
      const helperRtt = this.pingOutcome(node, helper)
      if (helperRtt == null) continue
      // The request to the helper opens a stream too; the helper's probe of the target is a probe like any.
      const toHelper = STREAM_RTTS * helperRtt
      helper.bytesOut += INDIRECT_BYTES + PROBE_BYTES
      node.bytesIn += INDIRECT_BYTES
      const onwardRtt = this.pingOutcome(helper, target)
      const onward = onwardRtt == null ? null : STREAM_RTTS * onwardRtt
      if (onward != null && onward < defaultSwimOptions.probeTimeoutMs) firstAck = Math.min(firstAck, toHelper + onward)
      else {
        const answered = toHelper + Math.min(defaultSwimOptions.probeTimeoutMs, this.refusedAfter(helper, target))
        if (answered < timeoutMs) {
          nacks++
          lastNack = Math.max(lastNack, answered)
        }
      }
    }
    const life = node.life
    const acked = firstAck < timeoutMs
    const allNacked = nacks === helpers.length && helpers.length > 0
    this.queue.after(acked ? firstAck : allNacked ? lastNack : timeoutMs, () => {
      if (node.life !== life) return
      node.swim.indirectDone(id, { asked: helpers.length, acks: acked ? 1 : 0, nacks }, this.queue.now)
      this.drive(node, false)
    })
  }

  /** A claim, gossiped over the region's membership topic. */
  private broadcast (node: SimNode, claim: Claim): void {
    const region = this.regions[node.region]!
    this.gossip(region, this.claimWire, 'claims')
    const from = node.id
    const life = node.life
    this.queue.after(disseminationMs(region.members.size, region.meanOneWayMs), () => {
      if (node.life !== life) return
      const now = this.queue.now
      for (const m of region.members) {
        if (m === node.index) continue
        const member = this.nodes[m]!
        if (!this.reachable(node, member)) continue
        this.claimsDelivered++
        const verdict = member.swim.claim(from, claim, now)
        if (verdict === 'applied') this.drive(member)
      }
    })
  }

  /** Counts one message in a region topic: every member forwards it to its mesh. */
  private gossip (region: SimRegion, wireBytes: number, kind: 'loadReports' | 'claims'): void {
    const bytes = eagerBytesPerMember(region.members.size, wireBytes)
    region.gossipBytesPerMember += bytes
    this.sentByKind[kind] += bytes * region.members.size
  }

  /** Every member's load report, once a telemetry period (its bytes; its content is the truth). */
  private telemetryTick (region: SimRegion): void {
    const n = region.members.size
    for (let i = 0; i < n; i++) this.gossip(region, this.loadReportWire, 'loadReports')
    // The IHAVE traffic of the region's telemetry topic.
    const ihave = lazyBytesPerMemberPerS(n, n / (this.options.telemetryMs / 1_000), REGION_TOPIC, this.options.gossipFactor) * this.options.telemetryMs / 1_000
    region.gossipBytesPerMember += ihave
    this.sentByKind.ihave += ihave * n
    // A split healed: members hear each other's load reports again, and SWIM tells a member it holds dead so.
    if (region.healedAt != null && this.queue.now - region.healedAt < 60_000) {
      const now = this.queue.now
      for (const m of region.members) {
        const member = this.nodes[m]!
        for (const o of region.members) if (o !== m && this.reachable(this.nodes[o]!, member)) member.swim.heard(this.nodes[o]!.id, now)
        this.drive(member)
      }
    }
    this.queue.after(this.options.telemetryMs, () => this.telemetryTick(region))
  }

  /** Each region's first representative publishes its summary to every node. */
  private summariesTick (): void {
    const now = this.queue.now
    let published = 0
    let bytes = 0
    for (const region of this.regions) {
      if (region.members.size === 0) continue
      const members = [...region.members].map((m) => {
        const node = this.nodes[m]!
        return { peerId: node.id, cores: node.cores, load: node.load, coordinate: node.vivaldi.current }
      })
      const summary = summarize(region.site.code, members, now)
      const wire = messageWireBytes(dagCbor.encode(JSON.parse(JSON.stringify(summary))).byteLength, SUMMARY_TOPIC)
      published++
      bytes += eagerBytesPerMember(this.globalTopicPeers(), wire)
      // Outside a partition, a cut region's summary does not arrive.
      if (!region.cut) this.summaries.set(region.site.code, summary)
    }
    const ihave = lazyBytesPerMemberPerS(this.globalTopicPeers(), published / (this.options.summaryMs / 1_000), SUMMARY_TOPIC, this.options.gossipFactor) * this.options.summaryMs / 1_000
    this.globalGossipBytesPerMember += bytes + ihave
    this.sentByKind.summaries += (bytes + ihave) * this.aliveCount()
    this.queue.after(this.options.summaryMs, () => this.summariesTick())
  }

  /**
   * The peers a node is connected to in the summary topic, every node being
   * in it: its region's members (its probes keep those connections) and the
   * representatives it probes in other regions. A flat grid (one region) is
   * connected to everyone.
   */
  private globalTopicPeers (): number {
    const n = this.aliveCount()
    return Math.min(n, Math.ceil(n / this.regions.length) + (this.regions.length > 1 ? WAN_CONNECTIONS : 0))
  }

  aliveCount (): number {
    let n = 0
    for (const region of this.regions) n += region.members.size
    return n
  }

  /** A ping to another region's representative, now and then, for the coordinate only. */
  private wanProbe (node: SimNode, life: number): void {
    this.queue.after(this.options.wanProbeMs * (0.5 + node.random()), () => {
      if (node.life !== life || !node.alive) return
      const others = [...this.summaries.values()].filter((s) => s.region !== this.regions[node.region]!.site.code)
      if (others.length > 0) {
        const rep = pick(pick(others, node.random).representatives, node.random)
        const target = rep == null ? undefined : this.nodeOf(rep.peerId)
        if (target != null) {
          node.bytesOut += PROBE_BYTES
          target.bytesIn += PROBE_BYTES
          const rtt = this.pingOutcome(node, target)
          if (rtt != null) {
            target.bytesOut += PROBE_BYTES
            node.bytesIn += PROBE_BYTES
            this.queue.after(rtt, () => {
              if (node.life !== life) return
              try {
                node.vivaldi.update(target.id, target.vivaldi.current, rtt)
              } catch { /* refused sample */ }
            })
          }
        }
      }
      this.wanProbe(node, life)
    })
  }

  /** Where a region's shards go now: the scope from the summaries, then `assign` over the scope's alive members. */
  placeRegion (region: SimRegion): { hosts: Map<string, string>, replicas: Map<string, string[]>, scope: string[], ms: number } {
    const now = this.queue.now
    // A cut region places its own shards from its own view: itself.
    const scope = region.cut ? [region.site.code] : placementScope(region.site.code, this.summaries, now, defaultScopeOptions)
    const candidates: Candidate[] = []
    const codes = new Map(this.regions.map((r) => [r.site.code, r]))
    for (const code of scope) {
      const r = codes.get(code)
      if (r == null) continue
      for (const m of r.members) candidates.push(this.candidate(this.nodes[m]!))
    }
    const started = performance.now()
    const result = assign(region.shards, candidates, this.policy, defaultPlacementParams)
    const ms = performance.now() - started
    const hosts = new Map<string, string>()
    const replicas = new Map<string, string[]>()
    for (const [shard, a] of result) {
      if (a.host != null) hosts.set(shard, a.host)
      replicas.set(shard, a.replicas)
    }
    return { hosts, replicas, scope, ms }
  }

  /** The flat alternative: every shard over every node, as each node computes today. */
  placeFlat (): number {
    const candidates: Candidate[] = []
    for (const node of this.nodes) if (node.alive) candidates.push(this.candidate(node))
    const shards = this.regions.flatMap((r) => r.shards)
    const started = performance.now()
    assign(shards, candidates, this.policy, defaultPlacementParams)
    return performance.now() - started
  }

  candidate (node: SimNode): Candidate {
    return { peerId: node.id, region: this.regions[node.region]!.site.code, operator: null, tags: new Set(), trusted: true, cost: 1, reliability: 1, headroom: 1 - node.load, coordinate: node.vivaldi.current }
  }

  private meanOneWay (region: SimRegion): number {
    const members = this.nodes.filter((n) => n.region === region.index).slice(0, 40)
    let sum = 0
    let count = 0
    for (const a of members) for (const b of members) if (a !== b) { sum += this.rtt(a, b) / 2; count++ }
    return count === 0 ? 1 : sum / count
  }

  /** The CRDT shards of each region, replicated where placement puts the region's first shards at the end of the warm-up. */
  private trackCrdt (): void {
    const host = {
      now: () => this.queue.now,
      after: (ms: number, fn: () => void) => { this.queue.after(ms, fn) },
      reachable: (a: SimNode, b: SimNode) => this.reachable(a, b),
      rtt: (a: SimNode, b: SimNode) => this.rtt(a, b),
      lost: (from: SimNode) => this.lost(from),
      random: fork(this.random)
    }
    const crdt = new CrdtModel(host, { writesPerShardPerS: this.options.crdtWritesPerShardPerS, syncIntervalMs: this.options.syncIntervalMs })
    crdt.inSplit = (shard) => this.regions[shard.region]!.split
    for (const region of this.regions) {
      const placed = this.placeRegion(region)
      for (const shard of region.shards.slice(0, this.options.crdtShardsPerRegion)) {
        const host = placed.hosts.get(shard.id)
        if (host == null) continue
        const nodes = [host, ...(placed.replicas.get(shard.id) ?? [])].map((id) => this.nodeOf(id)!)
        crdt.track(`presence.${region.index}.${shard.cy}`, region.index, nodes)
      }
    }
    this.crdt = crdt
    const watch = (): void => {
      crdt.watch()
      this.recorder.crdtTick(crdt)
      this.queue.after(250, watch)
    }
    this.queue.after(250, watch)
  }

  private scheduleFaults (end: number): void {
    const warm = Math.max(30_000, end * 0.1)
    const { killTrials, churnPerMin } = this.options
    // Failover trials: a host is killed every few seconds between the warm-up and half-way, and restarts 30 s later.
    const trialsEnd = end * 0.5
    const gap = (trialsEnd - warm) / Math.max(1, killTrials)
    for (let i = 0; i < killTrials; i++) {
      this.queue.at(warm + i * gap, () => {
        const victim = this.recorder.pickHost(this.random)
        if (victim == null) return
        this.recorder.trial(victim)
        this.kill(victim)
        this.queue.after(30_000, () => this.start(victim))
      })
    }
    // Churn: crashes and as many fresh starts, spread over every minute after the warm-up.
    const perMin = Math.round(churnPerMin * this.options.nodes)
    if (perMin > 0) {
      const step = 60_000 / perMin
      for (let t = warm; t < end; t += step) {
        this.queue.at(t, () => {
          const down = this.nodes.filter((n) => !n.alive && !this.regions[n.region]!.lost && !this.recorder.isTrialVictim(n))
          const up = this.nodes.filter((n) => n.alive && !this.recorder.isTrialVictim(n))
          if (down.length > 0) this.start(pick(down, this.random))
          if (up.length > 0) this.kill(pick(up, this.random))
        })
      }
    }
    if (this.regions.length < 4) return
    if (this.regions.length >= 5) {
      // A region split in two inside (its members' halves cannot reach each other), then healed.
      const split = this.regions[4]!
      this.queue.at(end * 0.4, () => { split.split = true; this.recorder.mark('split', split) })
      this.queue.at(end * 0.47, () => { split.split = false; split.healedAt = this.queue.now; this.recorder.mark('split-heal', split) })
    }
    // A region partitioned from the rest, then healed; one lost for good; a flash crowd on a third.
    const [cut, gone, crowd] = [this.regions[1]!, this.regions[2]!, this.regions[3]!]
    this.queue.at(end * 0.53, () => { cut.cut = true; this.recorder.mark('partition', cut) })
    this.queue.at(end * 0.63, () => { cut.cut = false; this.recorder.mark('heal', cut) })
    this.queue.at(end * 0.7, () => {
      this.recorder.mark('region-lost', gone)
      gone.lost = true
      for (const m of [...gone.members]) this.kill(this.nodes[m]!)
    })
    this.queue.at(end * 0.8, () => {
      this.recorder.mark('flash-crowd', crowd)
      for (const m of crowd.members) this.nodes[m]!.load = 0.95
    })
    this.queue.at(end * 0.9, () => {
      this.recorder.mark('flash-crowd-over', crowd)
      for (const m of crowd.members) this.nodes[m]!.load = 0.2 + this.random() * 0.3
    })
  }

  /** Coordinate error of a pair: |estimate − true| / true. */
  coordinateError (a: SimNode, b: SimNode): number {
    const truth = this.rtt(a, b)
    return Math.abs(estimateRtt(a.vivaldi.current, b.vivaldi.current) - truth) / truth
  }
}
