/**
 * The admission layer: one gate for every remote change to shard state,
 * whatever path brought it (gossip, anti-entropy, an entity handoff). It
 * decides, before anything changes:
 *
 * 1. **bounds**: size, encoding, values within what the API itself allows;
 * 2. **attribution**: a batch is signed by its origin (storage/crdt/batch.ts),
 *    so whoever relays it cannot speak for anyone else;
 * 3. **who may change what**: the shard's write authority (placement: the
 *    lease holder of the batch's epoch for host layers, the replicas for crdt
 *    layers; anyone trusted elsewhere) and, for system shards, per-entry
 *    ownership rules (rules.ts);
 * 4. **time**: a write from too far in the future is ignored.
 *
 * Snapshots, which carry no signature of their own, are taken only from
 * peers allowed to serve the shard, and only as far as their origins signed:
 * every claim about an origin's operations is clipped to the newest frontier
 * proof (that origin's signed batch header) the snapshot carries or this
 * node already holds, and only for the entries it actually holds: its
 * context's claims are never believed. A snapshot never removes anything
 * (ShardDoc.apply): removals arrive only in their remover's signed batch.
 *
 * Work is bounded by the message's size: one signature check per batch (and
 * per new proof, yielding to the event loop between chunks of them), a pass
 * over the operations, never a loop over numbers a peer claims.
 */
import { verifyBatchHeader } from '../../attest/batch-signature.ts'
import { decodeBatchHeader, decodeSignedBatch, type BatchHeader, type SignedBatch } from '../../storage/crdt/batch.ts'
import { checkJson, CodecError } from '../../storage/crdt/codec.ts'
import { DotContext } from '../../storage/crdt/dots.ts'
import { ClockDriftError } from '../../storage/crdt/hlc.ts'
import { decodePatch } from '../../storage/crdt/patch-codec.ts'
import { openAuthority, type WriteAuthority } from './authority.ts'
import { ignore, Refusal, reject } from './refusal.ts'
import { changesOf, type EntryRules } from './rules.ts'
import type { ComponentEntry, Patch } from '../../storage/crdt/shard-doc.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { P2pMetrics } from '../metrics.ts'

/** The ways a remote change reaches a node; a bounded label. */
export type AdmissionPath = 'gossip' | 'sync' | 'handoff' | 'replicate'

export interface AdmissionOptions {
  /** Largest encoded size of one component value (checkJson): the limit local writes are held to applies to writes from anywhere. */
  maxValueBytes: number
}

export interface AdmissionComponents {
  /** This node's peer id. */
  self: string
  metrics: P2pMetrics | null
}

export interface AdmittedSnapshot {
  /** The snapshot's entries within what their origins signed, with a context of just their dots. */
  patch: Patch
  /** The proofs it brought that this node did not have. */
  proofs: BatchHeader[]
}

/** New proofs verified between yields to the event loop, so a snapshot with thousands never stalls it. */
const PROOFS_PER_TURN = 64
const turn = async (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

export class Admission {
  private readonly components: AdmissionComponents
  private readonly options: AdmissionOptions
  private authority: WriteAuthority = openAuthority()
  private readonly rules = new Map<string, EntryRules>()

  constructor (components: AdmissionComponents, options: AdmissionOptions) {
    this.components = components
    this.options = options
  }

  /** Placement installs itself here once it runs; before that every peer may write (see authority.ts). */
  setAuthority (authority: WriteAuthority): void {
    this.authority = authority
  }

  /** The epoch this node stamps on its own batches of a shard. */
  epochFor (shard: string): number {
    return this.authority.epochFor(shard)
  }

  /** Per-entry ownership rules for a system shard. */
  setRules (shard: string, rules: EntryRules): void {
    this.rules.set(shard, rules)
  }

  rulesOf (shard: string): EntryRules | undefined {
    return this.rules.get(shard)
  }

  /** Admits one origin-signed batch for `store` (from its origin or a relay: it makes no difference), or throws a Refusal. */
  async admitBatch (store: ShardStore, bytes: Uint8Array, path: AdmissionPath): Promise<SignedBatch> {
    try {
      let batch: SignedBatch
      try {
        batch = decodeSignedBatch(bytes)
      } catch (err) {
        if (err instanceof CodecError) throw reject('MALFORMED', err.message)
        throw err
      }
      const { header, patch } = batch
      if (header.shard !== store.shard) throw reject('WRONG_SHARD', `a batch of ${header.shard} sent for ${store.shard}`)
      // Before the signature check: a copy of what we have costs nothing more.
      if (store.doc.context.hasRange(header.origin, header.from, header.to)) throw ignore('DUPLICATE', 'every operation already applied')
      if (!verifyBatchHeader(header)) throw reject('FORGED', `batch ${header.origin} ${header.from}..${header.to} is not signed by its origin`)
      const verdict = this.authority.mayWrite(store.shard, header.origin, header.epoch, latestWall(patch.components))
      if (!verdict.ok) throw new Refusal(verdict.code, verdict.action, verdict.detail)
      this.checkValues(patch.components)
      await this.checkEntries(store, patch)
      this.checkClock(store, patch)
      return batch
    } catch (err) {
      throw this.counted(err, path)
    }
  }

  /**
   * Admits a snapshot `from` served, with the frontier proofs it carried, or
   * throws a Refusal. What comes back is clipped: every dot of an origin
   * beyond the newest proof of that origin (brought or already held) is taken
   * out of the context and the entries.
   */
  async admitSnapshot (store: ShardStore, proofBytes: readonly Uint8Array[], patchBytes: Uint8Array, path: AdmissionPath, from: string): Promise<AdmittedSnapshot> {
    try {
      if (!this.authority.mayServe(store.shard, from)) throw ignore('NOT_A_SERVER', `${from} does not serve ${store.shard} in this node's view`)
      let patch: Patch
      const offered: BatchHeader[] = []
      try {
        patch = decodePatch(patchBytes)
        for (const bytes of proofBytes) offered.push(decodeBatchHeader(bytes))
      } catch (err) {
        if (err instanceof CodecError) throw reject('MALFORMED', err.message)
        throw err
      }
      if (patch.kind !== 'snapshot') throw reject('NOT_A_SNAPSHOT', 'a SNAPSHOT frame carries a delta')
      const proofs = await this.newProofs(store, offered)
      const clipped = clip(store, patch, proofs)
      this.checkValues(clipped.components)
      await this.checkEntries(store, clipped)
      this.checkClock(store, clipped)
      return { patch: clipped, proofs }
    } catch (err) {
      throw this.counted(err, path)
    }
  }

  /** The offered proofs that say more than this node holds, each verified; a forged one refuses the snapshot. */
  private async newProofs (store: ShardStore, offered: readonly BatchHeader[]): Promise<BatchHeader[]> {
    const best = new Map<string, BatchHeader>()
    for (const proof of offered) {
      if (proof.shard !== store.shard) throw reject('WRONG_SHARD', `a proof of ${proof.shard} in a snapshot of ${store.shard}`)
      const known = Math.max(store.proofOf(proof.origin)?.to ?? 0, best.get(proof.origin)?.to ?? 0)
      if (proof.to > known) best.set(proof.origin, proof)
    }
    let checked = 0
    for (const proof of best.values()) {
      if (!verifyBatchHeader(proof)) throw reject('FORGED', `a frontier proof of ${proof.origin} is not signed by it`)
      if (++checked % PROOFS_PER_TURN === 0) await turn()
    }
    return [...best.values()]
  }

  /** Values by the one measure of size (checkJson), the same the document holds local writes to. */
  private checkValues (components: readonly ComponentEntry[]): void {
    for (const entry of components) {
      if (entry.value === undefined || entry.value === null || typeof entry.value !== 'object' && typeof entry.value !== 'string') continue
      const bytes = checkJson(entry.value)
      if (bytes > this.options.maxValueBytes) throw reject('VALUE_TOO_LARGE', `component ${entry.component} of ${entry.entity} is ${bytes} bytes; at most ${this.options.maxValueBytes}`)
    }
  }

  private async checkEntries (store: ShardStore, patch: Patch): Promise<void> {
    const rules = this.rules.get(store.shard)
    if (rules == null) return
    if (!rules.counters && patch.counters.length > 0) throw reject('NOT_OWNER', `${store.shard} holds no counters`)
    for (const change of changesOf(patch)) await rules.check(change, store.doc, patch.kind)
  }

  private checkClock (store: ShardStore, patch: Patch): void {
    try {
      store.doc.clock.check(latestWall(patch.components))
    } catch (err) {
      if (err instanceof ClockDriftError) throw ignore('CLOCK_DRIFT', err.message)
      throw err
    }
  }

  /** Counts a refusal once, under its bounded code; anything else is passed on untouched. */
  private counted (err: unknown, path: AdmissionPath): unknown {
    if (err instanceof Refusal && err.code !== 'DUPLICATE') this.components.metrics?.admissionRejected.inc({ path, reason: err.code, action: err.action })
    return err
  }
}

function latestWall (components: readonly ComponentEntry[]): number {
  let latest = 0
  for (const entry of components) if (entry.wall > latest) latest = entry.wall
  return latest
}

/**
 * A snapshot reduced to what it can be believed for: its entries, each only
 * if its dot is within what its origin signed (the newest proof this node
 * holds or was just given, or, for this node's own dots, what it made), and a
 * context of exactly the dots of the entries kept. Whatever else the
 * snapshot's context claims is dropped: a receiver's context grows only by
 * what it actually received, so no claim can make it skip an operation.
 */
function clip (store: ShardStore, patch: Patch, proofs: readonly BatchHeader[]): Patch {
  const brought = new Map(proofs.map((proof) => [proof.origin, proof.to]))
  const own = store.doc.replica
  const limits = new Map<string, number>()
  const limit = (replica: string): number => {
    let value = limits.get(replica)
    if (value === undefined) {
      value = Math.max(brought.get(replica) ?? 0, store.proofOf(replica)?.to ?? 0, store.doc.context.highest(replica), replica === own ? store.doc.lastSeq : 0)
      limits.set(replica, value)
    }
    return value
  }
  const context = new DotContext()
  const keep = (replica: string, seq: number): boolean => {
    if (seq > limit(replica)) return false
    context.add(replica, seq)
    return true
  }
  return {
    kind: 'snapshot',
    components: patch.components.filter((entry) => keep(entry.replica, entry.seq)),
    adds: patch.adds.filter((add) => keep(add.replica, add.seq)),
    removes: [],
    counters: patch.counters.filter((counter) => keep(counter.replica, counter.seq)),
    context
  }
}
