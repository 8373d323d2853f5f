/**
 * CRDT shard replication in the simulator. Real: every replica holds its own
 * `ShardDoc` (storage/crdt/shard-doc.ts, the daemon's merge, causal context
 * and `stateFor`), on a hybrid clock that reads the virtual clock. Modelled,
 * after p2p/sync (its messages are not run): the two ways a write travels.
 *
 * - Delta gossip: a write's delta is pushed once to the shard's other
 *   replicas (the shard's topic holds just them), arriving after the one-way
 *   delay, unless the link is cut or the message lost. A delta that arrives
 *   with a gap before it (the origin's earlier dots unseen) starts an
 *   anti-entropy session with its sender at once, as delta-gossip.ts does.
 * - Anti-entropy: every `syncIntervalMs` (the daemon's 30 s) each replica
 *   runs a push-pull session with one other replica picked at random: both
 *   send what the other's context lacks (`stateFor`), after a round trip. A
 *   replica whose SWIM view sees a peer replica back from suspect or dead,
 *   and a replica that restarts, start one at once (the daemon does so on a
 *   peer back from suspect or dead and on a new connection).
 *
 * Replica sets are fixed: the host and replicas placement gave each tracked
 * shard at the end of the warm-up. A replica that crashes keeps its state
 * (LevelDB) and takes part again when it restarts.
 */
import { HybridClock } from '../../storage/crdt/hlc.ts'
import { ShardDoc, type Patch } from '../../storage/crdt/shard-doc.ts'
import { encodePatch } from '../../storage/crdt/patch-codec.ts'
import type { Random } from './rng.ts'
import type { SimNode } from './simulator.ts'

export interface CrdtHost {
  now: () => number
  after: (ms: number, fn: () => void) => void
  reachable: (a: SimNode, b: SimNode) => boolean
  rtt: (a: SimNode, b: SimNode) => number
  lost: (from: SimNode) => boolean
  random: Random
}

interface Replica {
  node: SimNode
  doc: ShardDoc
  /** This replica's SWIM state of each peer replica at the last look: a peer back from doubt gets a session at once. */
  seen: Map<string, string>
}

interface PendingWrite { origin: string, seq: number, entity: string, wall: number, counter: number, t0: number, inSplit: boolean }

export interface TrackedShard {
  id: string
  region: number
  replicas: Replica[]
  pending: PendingWrite[]
}

/** Entities each tracked shard's writes land on: a room of a dozen and a half avatars. */
const ENTITIES = 16
/** Processing at the far end of a message (the simulator's PROCESSING_MS). */
const PROCESSING_MS = 0.5

export interface CrdtOptions {
  writesPerShardPerS: number
  syncIntervalMs: number
}

export class CrdtModel {
  readonly shards: TrackedShard[] = []
  /** Time from a write to every alive replica of its shard holding it, for writes outside a partition. */
  readonly convergenceMs: number[] = []
  /** The same, for writes made inside a split region while it was split. */
  readonly splitConvergenceMs: number[] = []
  writes = 0
  deltaBytes = 0
  syncBytes = 0
  sessions = 0
  private readonly host: CrdtHost
  private readonly options: CrdtOptions

  constructor (host: CrdtHost, options: CrdtOptions) {
    this.host = host
    this.options = options
  }

  track (id: string, region: number, nodes: SimNode[]): void {
    const replicas = nodes.map((node) => ({ node, doc: new ShardDoc(node.id, new HybridClock(60_000, () => this.host.now())), seen: new Map<string, string>() }))
    const shard: TrackedShard = { id, region, replicas, pending: [] }
    this.shards.push(shard)
    for (const r of replicas) this.scheduleSync(shard, r, this.host.random() * this.options.syncIntervalMs)
    this.scheduleWrite(shard)
  }

  private scheduleWrite (shard: TrackedShard): void {
    // Poisson arrivals at the shard's write rate.
    const gap = -Math.log(1 - this.host.random()) * 1_000 / this.options.writesPerShardPerS
    this.host.after(gap, () => {
      this.write(shard)
      this.scheduleWrite(shard)
    })
  }

  /** One client write at a replica that is up (a crdt layer takes writes at every replica). */
  private write (shard: TrackedShard): void {
    const up = shard.replicas.filter((r) => r.node.alive)
    if (up.length === 0) return
    const at = up[Math.floor(this.host.random() * up.length)]!
    const entity = `avatar-${Math.floor(this.host.random() * ENTITIES)}`
    at.doc.setComponent(entity, 'pos', [Math.round(this.host.random() * 1_000), Math.round(this.host.random() * 1_000)])
    const delta = at.doc.takeDelta()
    if (delta == null) return
    this.writes++
    const written = at.doc.entry(entity, 'pos')!
    shard.pending.push({ origin: at.node.id, seq: delta.to!, entity, wall: written.wall, counter: written.counter, t0: this.host.now(), inSplit: this.inSplit?.(shard) ?? false })
    const bytes = encodePatch(delta).byteLength
    for (const r of shard.replicas) {
      if (r === at) continue
      this.deltaBytes += bytes
      if (!r.node.alive || !this.host.reachable(at.node, r.node) || this.host.lost(at.node)) continue
      const life = r.node.life
      this.host.after(this.host.rtt(at.node, r.node) / 2 + PROCESSING_MS, () => {
        if (r.node.life !== life || !r.node.alive) return
        const gap = delta.from! > r.doc.context.max(delta.origin!) + 1
        this.apply(shard, r, delta)
        if (gap) this.session(shard, r, at)
      })
    }
    this.settle(shard)
  }

  /** Set by the simulator: whether a shard's region is split now. */
  inSplit: ((shard: TrackedShard) => boolean) | undefined

  private apply (shard: TrackedShard, r: Replica, patch: Patch): void {
    try {
      r.doc.apply(patch)
    } catch { /* a patch the core refuses is the core's to refuse */ }
    this.settle(shard)
  }

  /**
   * Records every pending write of the shard that each alive replica now
   * reflects: it holds the write, or a later one of the same component (a
   * session sends current entries only, so a write overwritten before it
   * arrived never does, and needs not).
   */
  private settle (shard: TrackedShard): void {
    if (shard.pending.length === 0) return
    const now = this.host.now()
    const up = shard.replicas.filter((r) => r.node.alive)
    const reflects = (r: Replica, w: PendingWrite): boolean => {
      if (r.doc.context.has(w.origin, w.seq)) return true
      const e = r.doc.entry(w.entity, 'pos')
      return e != null && (e.wall > w.wall || (e.wall === w.wall && (e.counter > w.counter || (e.counter === w.counter && e.replica > w.origin))))
    }
    shard.pending = shard.pending.filter((w) => {
      if (!up.every((r) => reflects(r, w))) return true
      ;(w.inSplit ? this.splitConvergenceMs : this.convergenceMs).push(now - w.t0)
      return false
    })
  }

  private scheduleSync (shard: TrackedShard, r: Replica, ms: number): void {
    const life = r.node.life
    this.host.after(ms, () => {
      if (r.node.life === life && r.node.alive) {
        const others = shard.replicas.filter((o) => o !== r)
        if (others.length > 0) this.session(shard, r, others[Math.floor(this.host.random() * others.length)]!)
      }
      // Rescheduled in the node's current life (a restart started its own).
      if (r.node.life === life) this.scheduleSync(shard, r, this.options.syncIntervalMs)
    })
  }

  /** A push-pull session from `a` to `b`: each gets what its context lacks, one round trip later. */
  private session (shard: TrackedShard, a: Replica, b: Replica): void {
    if (!a.node.alive || !b.node.alive || !this.host.reachable(a.node, b.node) || this.host.lost(a.node)) return
    this.sessions++
    const rtt = this.host.rtt(a.node, b.node) + 2 * PROCESSING_MS
    const [la, lb] = [a.node.life, b.node.life]
    this.host.after(rtt, () => {
      if (a.node.life !== la || b.node.life !== lb || !a.node.alive || !b.node.alive) return
      const forA = b.doc.stateFor(a.doc.context)
      const forB = a.doc.stateFor(b.doc.context)
      this.syncBytes += encodePatch(forA).byteLength + encodePatch(forB).byteLength
      this.apply(shard, a, forA)
      this.apply(shard, b, forB)
    })
  }

  /** A replica's node restarted: it syncs with a peer at once (a new connection starts a session). */
  restarted (node: SimNode): void {
    for (const shard of this.shards) {
      for (const r of shard.replicas) {
        if (r.node !== node) continue
        r.seen.clear()
        const others = shard.replicas.filter((o) => o !== r && o.node.alive)
        if (others.length > 0) this.session(shard, r, others[Math.floor(this.host.random() * others.length)]!)
        this.scheduleSync(shard, r, this.host.random() * this.options.syncIntervalMs)
      }
    }
  }

  /** Once a second: a replica whose SWIM view has a peer replica back from suspect or dead syncs with it at once. */
  watch (): void {
    for (const shard of this.shards) {
      for (const r of shard.replicas) {
        if (!r.node.alive) continue
        for (const o of shard.replicas) {
          if (o === r) continue
          const state = r.node.swim.get(o.node.id)?.state ?? 'unknown'
          const before = r.seen.get(o.node.id)
          r.seen.set(o.node.id, state)
          if (state === 'alive' && (before === 'suspect' || before === 'dead')) this.session(shard, r, o)
        }
      }
    }
  }

  /** Entities whose visible state differs between the shard's alive replicas (0: the replicas are equal). */
  divergence (shard: TrackedShard): number {
    const up = shard.replicas.filter((r) => r.node.alive)
    if (up.length < 2) return 0
    let differ = 0
    for (let e = 0; e < ENTITIES; e++) {
      const entity = `avatar-${e}`
      const first = up[0]!.doc.entry(entity, 'pos')
      for (const r of up.slice(1)) {
        const other = r.doc.entry(entity, 'pos')
        if (first?.replica !== other?.replica || first?.seq !== other?.seq) {
          differ++
          break
        }
      }
    }
    return differ
  }
}
