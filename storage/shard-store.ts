/**
 * One shard's replicated state and its durable form in LevelDB.
 *
 * Keys (in the `crdt` sublevel):
 *   s/<shard>              snapshot: crc32, varuint log position it covers, patch bytes
 *   f/<shard>              frontier proofs at that snapshot: crc32, n, n × header (written with it)
 *   l/<shard>/<position>   log record: crc32, then one of
 *                            0x01…  a bare patch (a snapshot without proofs; logs of older versions)
 *                            0x02…  an origin-signed batch (storage/crdt/batch.ts), ours or a peer's
 *                            0x03   n, n × frontier proof, patch: a snapshot a peer served, with its proofs
 * Positions are 13 hex digits so the keys sort in log order. Compaction folds
 * the log into the snapshot but keeps the signed batches that remove
 * entities: a snapshot never removes anything (see ShardDoc.apply), so those
 * batches are how a replica that missed a removal learns of it.
 *
 * Local deltas are sealed (signed by this replica, see `Sealer`) as they are
 * logged, and remote batches are logged as they came, signature and all: the
 * log is what anti-entropy relays, so a relayed operation always carries its
 * origin's signature. The store keeps, per origin, the newest header it has
 * (a *frontier proof*: the origin's signed word that it made operations up to
 * `to`); snapshots it serves carry them, so a receiver believes a snapshot's
 * claims about an origin only as far as that origin signed.
 *
 * Writes are group-committed: every change made within `batchMs` (local
 * writes become one delta; remote patches are logged as they came) goes to
 * LevelDB in one atomic batch, and each waiting writer is answered only after
 * that batch is written. Durable means: the batch is in LevelDB's write-ahead
 * log in the OS, so a crash or kill -9 of the daemon loses nothing that was
 * acknowledged; with `sync` the log is also fsynced, so a power cut does not
 * either. On open, the snapshot and then the log are replayed; the first
 * record whose checksum or encoding is wrong ends the log: it and everything
 * after it are deleted (and counted), never applied. Peers hold the same
 * writes and anti-entropy brings them back.
 */
import { crc32 } from 'node:zlib'
import { TypedEventEmitter } from 'main-event'
import { Decoder, Encoder } from './crdt/codec.ts'
import { HybridClock } from './crdt/hlc.ts'
import { decodePatch, encodePatch } from './crdt/patch-codec.ts'
import { ShardDoc, type ApplyResult, type Patch } from './crdt/shard-doc.ts'
import { decodeBatchHeader, decodeSignedBatch, SIGNED_BATCH_TAG, type BatchHeader, type SignedBatch } from './crdt/batch.ts'
import type { Sublevel } from './database.ts'
import type { AbstractBatchOptions } from 'abstract-level'
import type { Logger } from './logger.ts'

/** Seals one local delta: returns the signed batch bytes (storage/crdt/batch.ts) to log and gossip. */
export type Sealer = (shard: string, patch: Patch, patchBytes: Uint8Array) => Uint8Array

const SNAPSHOT_WITH_PROOFS_TAG = 3

export interface ShardStoreOptions {
  batchMs: number
  sync: boolean
  compactEveryRecords: number
  maxClockDriftMs: number
  /** Largest encoded size of one component value (storage/crdt/codec.ts checkJson); the document refuses larger. */
  maxValueBytes?: number
}

/** What replay found in the log on open. */
export interface Recovery {
  snapshotBytes: number
  records: number
  /** Records from the first bad one on: deleted, not applied. */
  cut: number
}

/** A delta of the shard's own or a peer's, with the log position it was written at (for anti-entropy). */
export interface LogIndexEntry {
  position: number
  kind: 'delta' | 'snapshot'
  origin: string
  from: number
  to: number
  /** An origin-signed batch, which anti-entropy may relay as it is. */
  signed: boolean
  /** A signed batch that removes entities: kept through compaction, since only it can tell a lagging replica of the removal. */
  removes: boolean
}

/** Where the store's records come from, for frontier bookkeeping and replay. */
type LoggedRecord =
  | { kind: 'batch', batch: SignedBatch }
  | { kind: 'snapshot', patch: Patch, proofs: BatchHeader[] }
  | { kind: 'bare', patch: Patch }

export interface ShardEvents {
  /** A patch was applied and is durable: local writes (with `local`) and remote ones. */
  /** What changed: a remote batch or snapshot applied, or a local delta made durable (`local`; its entities are those it wrote). */
  change: CustomEvent<{ result: ApplyResult | null, local: boolean }>
  /** A local delta is durable and should go to the other replicas: `bytes` is the signed batch (or the bare patch, unsealed). */
  delta: CustomEvent<{ bytes: Uint8Array, patch: Patch }>
}

export class ShardStoreError extends Error {
  static override name = 'ShardStoreError'
  override name = 'ShardStoreError'
}

const POSITION_DIGITS = 13

function positionKey (shard: string, position: number): string {
  return `l/${shard}/${position.toString(16).padStart(POSITION_DIGITS, '0')}`
}

/** A record as stored: crc32 of everything after it, then `fields` (if any), then the patch bytes. */
function frame (body: Uint8Array, fields?: (e: Encoder) => void): Uint8Array {
  const head = new Encoder(16)
  fields?.(head)
  const headBytes = head.finish()
  const e = new Encoder(4 + headBytes.length + body.length)
  e.writeUint32(crc32(body, crc32(headBytes)))
  e.writeBytesRaw(headBytes)
  e.writeBytesRaw(body)
  return e.finish()
}

/** Checks a record's crc32 and hands back a decoder positioned after it; throws on a mismatch. */
function unframe (value: Uint8Array): Decoder {
  const d = new Decoder(value)
  const crc = d.readUint32()
  if (crc32(value.subarray(4)) !== crc) throw new ShardStoreError('checksum mismatch')
  return d
}

interface PendingWrite {
  key: string
  value: Uint8Array
}

/** Decodes a log record's body (after its crc32). */
function readRecordBody (body: Uint8Array): LoggedRecord {
  if (body[0] === SIGNED_BATCH_TAG) return { kind: 'batch', batch: decodeSignedBatch(body) }
  if (body[0] === SNAPSHOT_WITH_PROOFS_TAG) {
    const d = new Decoder(body)
    d.readByte()
    const count = d.readLength()
    const proofs: BatchHeader[] = []
    for (let i = 0; i < count; i++) proofs.push(decodeBatchHeader(d.readBytes()))
    return { kind: 'snapshot', patch: decodePatch(d.readRest()), proofs }
  }
  return { kind: 'bare', patch: decodePatch(body) }
}

function encodeProofs (e: Encoder, proofs: readonly Uint8Array[]): void {
  e.writeVarUint(proofs.length)
  for (const proof of proofs) e.writeBytes(proof)
}

export class ShardStore extends TypedEventEmitter<ShardEvents> {
  readonly shard: string
  readonly doc: ShardDoc
  private readonly db: Sublevel
  private readonly options: ShardStoreOptions
  private readonly log: Logger
  private readonly seal: Sealer | undefined
  private readonly index: LogIndexEntry[] = []
  /** Per origin, the newest signed header this replica holds: its frontier proof. */
  private readonly frontier = new Map<string, BatchHeader>()
  private nextPosition = 1
  /** The first log position not folded into the snapshot. */
  private snapshotCovers = 0
  private pendingWrites: PendingWrite[] = []
  private pendingIndex: LogIndexEntry[] = []
  private waiters: Array<{ resolve: () => void, reject: (err: Error) => void }> = []
  private flushTimer: NodeJS.Timeout | undefined
  /** The group-commit window now, when a caller set one (a world layer's tick); else `batchMs`. */
  private window: number | null = null
  private flushing: Promise<void> | undefined
  private compacting: Promise<void> | undefined
  private closed = false

  private constructor (shard: string, replica: string, db: Sublevel, options: ShardStoreOptions, logger: Logger, seal: Sealer | undefined) {
    super()
    this.shard = shard
    this.db = db
    this.options = options
    this.seal = seal
    this.log = logger.child({ component: 'metagrid:shard', shard })
    this.doc = new ShardDoc(replica, new HybridClock(options.maxClockDriftMs), options.maxValueBytes != null ? { maxValueBytes: options.maxValueBytes } : {})
  }

  /** Opens a shard: replays its snapshot and log, cutting a bad tail. Local deltas are sealed with `seal` (unsealed without one). */
  static async open (shard: string, replica: string, db: Sublevel, options: ShardStoreOptions, logger: Logger, seal?: Sealer): Promise<{ store: ShardStore, recovery: Recovery }> {
    const store = new ShardStore(shard, replica, db, options, logger, seal)
    const recovery = await store.replay()
    return { store, recovery }
  }

  private async replay (): Promise<Recovery> {
    const recovery: Recovery = { snapshotBytes: 0, records: 0, cut: 0 }
    const snapshot = await this.db.get(`s/${this.shard}`)
    if (snapshot != null) {
      // A bad snapshot is not a tail that can be cut: refuse to start rather than serve partial state.
      let patch: Patch
      let proofs: BatchHeader[] = []
      try {
        const d = unframe(snapshot)
        const covers = d.readVarUint()
        patch = decodePatch(d.readRest())
        this.snapshotCovers = covers
        const stored = await this.db.get(`f/${this.shard}`)
        if (stored != null) {
          const f = unframe(stored)
          const count = f.readLength()
          for (let i = 0; i < count; i++) proofs.push(decodeBatchHeader(f.readBytes()))
        }
      } catch (err) {
        throw new ShardStoreError(`snapshot of shard ${this.shard} is corrupt (${(err as Error).message}); move the data directory aside and let the node resync from its peers`, { cause: err })
      }
      this.doc.apply(patch)
      for (const proof of proofs) this.learn(proof)
      recovery.snapshotBytes = snapshot.byteLength
    }
    this.nextPosition = this.snapshotCovers + 1
    const prefix = `l/${this.shard}/`
    const bad: string[] = []
    for await (const [key, value] of this.db.iterator({ gt: prefix, lt: `${prefix}~` })) {
      const position = Number.parseInt(key.slice(prefix.length), 16)
      if (bad.length > 0 || !Number.isSafeInteger(position) || key.length !== prefix.length + POSITION_DIGITS) {
        bad.push(key)
        continue
      }
      let record: LoggedRecord
      try {
        record = readRecordBody(unframe(value).readRest())
        this.applyRecord(record)
      } catch (err) {
        this.log.warn({ code: 'LOG_TAIL_CUT', position, err }, 'shard log record is corrupt; cutting the log here')
        bad.push(key)
        continue
      }
      this.index.push(indexEntry(position, record))
      recovery.records++
      this.nextPosition = Math.max(this.nextPosition, position + 1)
    }
    if (bad.length > 0) {
      await this.db.batch(bad.map((key) => ({ type: 'del' as const, key })), durability(true))
      recovery.cut = bad.length
    }
    // Local writes made before a crash but never flushed were never acknowledged; nothing is pending now.
    this.doc.takeDelta()
    return recovery
  }

  private applyRecord (record: LoggedRecord): ApplyResult {
    switch (record.kind) {
      case 'batch':
        this.learn(record.batch.header)
        return this.doc.apply(record.batch.patch)
      case 'snapshot':
        for (const proof of record.proofs) this.learn(proof)
        return this.doc.apply(record.patch)
      case 'bare':
        return this.doc.apply(record.patch)
    }
  }

  /** Keeps the newest frontier proof of an origin. */
  private learn (header: BatchHeader): void {
    if (header.shard !== this.shard) return
    const known = this.frontier.get(header.origin)
    if (known == null || header.to > known.to) this.frontier.set(header.origin, header)
  }

  /** The newest signed header held for an origin: how far this replica can prove the origin wrote. */
  proofOf (origin: string): BatchHeader | undefined {
    return this.frontier.get(origin)
  }

  /** Frontier proofs for every origin in the causal context, to go with a snapshot. */
  proofs (): BatchHeader[] {
    const proofs: BatchHeader[] = []
    for (const replica of this.doc.context.replicas()) {
      const proof = this.frontier.get(replica)
      if (proof != null) proofs.push(proof)
    }
    return proofs
  }

  /**
   * Local changes made through `doc` since the last flush become one durable
   * delta (shared by every commit in the same `batchMs` window); resolves once
   * it is written.
   */
  async commit (): Promise<void> {
    this.assertOpen()
    return this.whenDurable()
  }

  /**
   * Joins a peer's signed batch (already admitted: see p2p/admission) and logs
   * it as it came. Throws ClockDriftError without changing anything if it
   * comes from too far ahead.
   */
  async applyBatch (batch: SignedBatch): Promise<ApplyResult> {
    return this.applyLogged({ kind: 'batch', batch }, batch.patch, () => batch.bytes)
  }

  /**
   * Joins a snapshot a peer served (already admitted and clipped to what its
   * proofs allow) and logs it with its proofs.
   */
  async applySnapshot (patch: Patch, proofs: BatchHeader[]): Promise<ApplyResult> {
    return this.applyLogged({ kind: 'snapshot', patch, proofs }, patch, () => {
      const e = new Encoder(1024)
      e.writeByte(SNAPSHOT_WITH_PROOFS_TAG)
      encodeProofs(e, proofs.map((proof) => proof.bytes))
      e.writeBytesRaw(encodePatch(patch))
      return e.finish()
    })
  }

  private async applyLogged (record: LoggedRecord, patch: Patch, body: () => Uint8Array): Promise<ApplyResult> {
    this.assertOpen()
    // Only a patch with operations we had not seen is worth a log record (a losing write still is: peers may ask for it).
    const fresh = !this.doc.context.covers(patch.context)
    const result = this.applyRecord(record)
    if (fresh) this.enqueue(body(), record)
    const durable = this.whenDurable()
    if (result.entities.size > 0 || result.counters.size > 0) {
      void durable.then(() => { this.safeDispatchEvent('change', { detail: { result, local: false } }) }, () => {})
    }
    await durable
    return result
  }

  /**
   * Widens (or narrows) the group-commit window from `batchMs`; null goes back
   * to it. A caller that commits on its own clock (a world layer flushing with
   * `flushNow` just before each tick) sets its clock's period here, as the
   * longest a write waits if that clock stops.
   */
  set commitWindowMs (ms: number | null) {
    this.window = ms
  }

  get commitWindowMs (): number {
    return this.window ?? this.options.batchMs
  }

  /**
   * Resolves once every record applied so far is durable: at once when nothing
   * is waiting to be written, else with the flush that writes it. A voter asked
   * to hold a batch it already applied (from gossip) answers only after this.
   */
  async settled (): Promise<void> {
    this.assertOpen()
    if (this.pendingWrites.length > 0) return this.whenDurable()
    if (this.flushing != null) return this.flushing
  }

  /** Commits what is pending now instead of at the end of the window; resolves once it is durable. */
  async flushNow (): Promise<void> {
    if (this.closed || this.waiters.length === 0) return this.flushing
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    return this.flush()
  }

  /** Log records since the last compaction, oldest first. */
  logIndex (): readonly LogIndexEntry[] {
    return this.index
  }

  /** A logged record's body as stored (a signed batch for a signed delta entry); undefined if it was compacted meanwhile. */
  async readRecord (position: number): Promise<Uint8Array | undefined> {
    const value = await this.db.get(positionKey(this.shard, position))
    if (value == null) return undefined
    try {
      return unframe(value).readRest()
    } catch {
      return undefined
    }
  }

  private enqueue (bytes: Uint8Array, record: LoggedRecord): void {
    const position = this.nextPosition++
    this.pendingWrites.push({ key: positionKey(this.shard, position), value: frame(bytes) })
    this.pendingIndex.push(indexEntry(position, record))
  }

  private whenDurable (): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject })
      this.flushTimer ??= setTimeout(() => { this.flushTimer = undefined; void this.flush() }, this.commitWindowMs)
    })
  }

  /** The local delta, sealed: a signed batch when the store has a sealer, else the bare patch. */
  private sealDelta (delta: Patch): { bytes: Uint8Array, record: LoggedRecord } {
    const patchBytes = encodePatch(delta)
    if (this.seal == null) return { bytes: patchBytes, record: { kind: 'bare', patch: delta } }
    const bytes = this.seal(this.shard, delta, patchBytes)
    const batch = decodeSignedBatch(bytes)
    this.learn(batch.header)
    return { bytes, record: { kind: 'batch', batch } }
  }

  /** Writes what is pending as one batch; one flush at a time, the next picks up what arrived meanwhile. */
  private async flush (): Promise<void> {
    while (this.flushing != null) await this.flushing
    if (this.waiters.length === 0) return
    const delta = this.doc.takeDelta()
    let deltaBytes: Uint8Array | undefined
    if (delta != null) {
      const sealed = this.sealDelta(delta)
      deltaBytes = sealed.bytes
      this.enqueue(sealed.bytes, sealed.record)
    }
    const writes = this.pendingWrites
    const index = this.pendingIndex
    const waiters = this.waiters
    this.pendingWrites = []
    this.pendingIndex = []
    this.waiters = []
    this.flushing = (async () => {
      try {
        if (writes.length > 0) await this.db.batch(writes.map(({ key, value }) => ({ type: 'put' as const, key, value })), durability(this.options.sync))
        this.index.push(...index)
        for (const waiter of waiters) waiter.resolve()
        if (delta != null) {
          this.safeDispatchEvent('change', { detail: { result: touchedBy(delta), local: true } })
          this.safeDispatchEvent('delta', { detail: { bytes: deltaBytes!, patch: delta } })
        }
      } catch (err) {
        this.log.error({ code: 'LOG_WRITE', err }, 'could not write shard log')
        const error = new ShardStoreError(`could not persist to shard ${this.shard}: ${(err as Error).message}`, { cause: err })
        for (const waiter of waiters) waiter.reject(error)
      }
    })()
    try {
      await this.flushing
    } finally {
      this.flushing = undefined
    }
    if (this.index.length - this.kept() >= this.options.compactEveryRecords) void this.compact()
  }

  /** Log records compaction keeps (removal batches). */
  private kept (): number {
    let kept = 0
    for (const entry of this.index) if (entry.removes) kept++
    return kept
  }

  /** Folds the log into a new snapshot (and its frontier proofs), in one atomic batch; removal batches stay. */
  async compact (): Promise<void> {
    this.compacting ??= (async () => {
      try {
        // The snapshot holds at least everything logged so far (it may hold more: writes still pending are idempotent to replay).
        const covered = this.index.length > 0 ? this.index[this.index.length - 1]!.position : this.snapshotCovers
        const count = this.index.length
        const patchBytes = encodePatch(this.doc.snapshot())
        // Never fold the log into a snapshot that would not open again: a bug here must not stop every later start.
        decodePatch(patchBytes)
        const snapshot = frame(patchBytes, (e) => e.writeVarUint(covered))
        const proofs = frame(new Uint8Array(0), (e) => { encodeProofs(e, [...this.frontier.values()].map((proof) => proof.bytes)) })
        const operations: Array<{ type: 'put', key: string, value: Uint8Array } | { type: 'del', key: string }> = [
          { type: 'put', key: `s/${this.shard}`, value: snapshot },
          { type: 'put', key: `f/${this.shard}`, value: proofs }
        ]
        // Batches that remove entities stay: a snapshot never removes, so they are how a lagging replica learns of a removal.
        const folded = this.index.slice(0, count)
        for (const entry of folded) if (!entry.removes) operations.push({ type: 'del', key: positionKey(this.shard, entry.position) })
        await this.db.batch(operations, durability(this.options.sync))
        this.index.splice(0, count, ...folded.filter((entry) => entry.removes))
        this.snapshotCovers = covered
        this.log.debug({ records: count, snapshotBytes: snapshot.byteLength }, 'shard log compacted')
      } catch (err) {
        if (!this.closed) this.log.warn({ code: 'COMPACT', err }, 'shard log compaction failed; will retry')
      } finally {
        this.compacting = undefined
      }
    })()
    return this.compacting
  }

  /** Writes what is pending and stops taking writes. */
  async close (): Promise<void> {
    if (this.closed) return
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    await this.flush()
    await this.compacting
    this.closed = true
  }

  private assertOpen (): void {
    if (this.closed) throw new ShardStoreError(`shard ${this.shard} is closed`)
  }
}

/** classic-level's batch takes `sync` (fsync the write-ahead log); abstract-level's types do not list it. */
function durability (sync: boolean): AbstractBatchOptions<string, Uint8Array> {
  return { sync } as AbstractBatchOptions<string, Uint8Array>
}

function indexEntry (position: number, record: LoggedRecord): LogIndexEntry {
  const patch = record.kind === 'batch' ? record.batch.patch : record.patch
  return { position, kind: patch.kind, origin: patch.origin ?? '', from: patch.from ?? 0, to: patch.to ?? 0, signed: record.kind === 'batch', removes: record.kind === 'batch' && patch.removes.length > 0 }
}

/** The entities and counters a local delta wrote: what listeners of a local change look at again. */
function touchedBy (delta: Patch): ApplyResult {
  const entities = new Set<string>()
  for (const entry of delta.components) entities.add(entry.entity)
  for (const dot of delta.adds) entities.add(dot.entity)
  for (const dot of delta.removes) entities.add(dot.entity)
  return { entities, counters: new Set(delta.counters.map((counter) => counter.name)), conflicts: 0, appliedWalls: [] }
}
