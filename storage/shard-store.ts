/**
 * One shard's replicated state and its durable form in LevelDB.
 *
 * Keys (in the `crdt` sublevel):
 *   s/<shard>              snapshot: crc32, varuint log position it covers, patch bytes
 *   l/<shard>/<position>   log record: crc32, patch bytes (a delta, or a snapshot a peer sent)
 * Positions are 13 hex digits so the keys sort in log order.
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
import type { Sublevel } from './database.ts'
import type { AbstractBatchOptions } from 'abstract-level'
import type { Logger } from './logger.ts'

export interface ShardStoreOptions {
  batchMs: number
  sync: boolean
  compactEveryRecords: number
  maxClockDriftMs: number
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
}

export interface ShardEvents {
  /** A patch was applied and is durable: local writes (with `local`) and remote ones. */
  change: CustomEvent<{ result: ApplyResult | null, local: boolean }>
  /** A local delta is durable and should go to the other replicas. */
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

export class ShardStore extends TypedEventEmitter<ShardEvents> {
  readonly shard: string
  readonly doc: ShardDoc
  private readonly db: Sublevel
  private readonly options: ShardStoreOptions
  private readonly log: Logger
  private readonly index: LogIndexEntry[] = []
  private nextPosition = 1
  /** The first log position not folded into the snapshot. */
  private snapshotCovers = 0
  private pendingWrites: PendingWrite[] = []
  private pendingIndex: LogIndexEntry[] = []
  private waiters: Array<{ resolve: () => void, reject: (err: Error) => void }> = []
  private flushTimer: NodeJS.Timeout | undefined
  private flushing: Promise<void> | undefined
  private compacting: Promise<void> | undefined
  private closed = false

  private constructor (shard: string, replica: string, db: Sublevel, options: ShardStoreOptions, logger: Logger) {
    super()
    this.shard = shard
    this.db = db
    this.options = options
    this.log = logger.child({ component: 'metagrid:shard', shard })
    this.doc = new ShardDoc(replica, new HybridClock(options.maxClockDriftMs))
  }

  /** Opens a shard: replays its snapshot and log, cutting a bad tail. */
  static async open (shard: string, replica: string, db: Sublevel, options: ShardStoreOptions, logger: Logger): Promise<{ store: ShardStore, recovery: Recovery }> {
    const store = new ShardStore(shard, replica, db, options, logger)
    const recovery = await store.replay()
    return { store, recovery }
  }

  private async replay (): Promise<Recovery> {
    const recovery: Recovery = { snapshotBytes: 0, records: 0, cut: 0 }
    const snapshot = await this.db.get(`s/${this.shard}`)
    if (snapshot != null) {
      // A bad snapshot is not a tail that can be cut: refuse to start rather than serve partial state.
      let patch: Patch
      try {
        const d = unframe(snapshot)
        const covers = d.readVarUint()
        patch = decodePatch(d.readRest())
        this.snapshotCovers = covers
      } catch (err) {
        throw new ShardStoreError(`snapshot of shard ${this.shard} is corrupt (${(err as Error).message}); move the data directory aside and let the node resync from its peers`, { cause: err })
      }
      this.doc.apply(patch)
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
      let patch: Patch
      try {
        patch = decodePatch(unframe(value).readRest())
        this.doc.apply(patch)
      } catch (err) {
        this.log.warn({ code: 'LOG_TAIL_CUT', position, err }, 'shard log record is corrupt; cutting the log here')
        bad.push(key)
        continue
      }
      this.index.push(indexEntry(position, patch))
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
   * Joins a peer's patch (already decoded and validated) and logs it. Throws
   * ClockDriftError without changing anything if it comes from too far ahead.
   */
  async applyRemote (patch: Patch, bytes: Uint8Array): Promise<ApplyResult> {
    this.assertOpen()
    // Only a patch with operations we had not seen is worth a log record (a losing write still is: peers may ask for it).
    const fresh = !this.doc.context.covers(patch.context)
    const result = this.doc.apply(patch)
    if (fresh) this.enqueue(bytes, patch)
    const durable = this.whenDurable()
    if (result.entities.size > 0 || result.counters.size > 0) {
      void durable.then(() => { this.safeDispatchEvent('change', { detail: { result, local: false } }) }, () => {})
    }
    await durable
    return result
  }

  /** Log records since the last compaction, oldest first. */
  logIndex (): readonly LogIndexEntry[] {
    return this.index
  }

  async readRecord (position: number): Promise<Uint8Array | undefined> {
    const value = await this.db.get(positionKey(this.shard, position))
    if (value == null) return undefined
    try {
      return unframe(value).readRest()
    } catch {
      return undefined
    }
  }

  private enqueue (bytes: Uint8Array, patch: Patch): void {
    const position = this.nextPosition++
    const value = frame(bytes)
    this.pendingWrites.push({ key: positionKey(this.shard, position), value })
    this.pendingIndex.push(indexEntry(position, patch))
  }

  private whenDurable (): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject })
      this.flushTimer ??= setTimeout(() => { this.flushTimer = undefined; void this.flush() }, this.options.batchMs)
    })
  }

  /** Writes what is pending as one batch; one flush at a time, the next picks up what arrived meanwhile. */
  private async flush (): Promise<void> {
    while (this.flushing != null) await this.flushing
    if (this.waiters.length === 0) return
    const delta = this.doc.takeDelta()
    let deltaBytes: Uint8Array | undefined
    if (delta != null) {
      deltaBytes = encodePatch(delta)
      this.enqueue(deltaBytes, delta)
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
          this.safeDispatchEvent('change', { detail: { result: null, local: true } })
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
    if (this.index.length >= this.options.compactEveryRecords) void this.compact()
  }

  /** Folds the log into a new snapshot, in one atomic batch. */
  async compact (): Promise<void> {
    this.compacting ??= (async () => {
      try {
        // The snapshot holds at least everything logged so far (it may hold more: writes still pending are idempotent to replay).
        const covered = this.index.length > 0 ? this.index[this.index.length - 1]!.position : this.snapshotCovers
        const count = this.index.length
        const snapshot = frame(encodePatch(this.doc.snapshot()), (e) => e.writeVarUint(covered))
        const operations: Array<{ type: 'put', key: string, value: Uint8Array } | { type: 'del', key: string }> = [{ type: 'put', key: `s/${this.shard}`, value: snapshot }]
        for (const entry of this.index.slice(0, count)) operations.push({ type: 'del', key: positionKey(this.shard, entry.position) })
        await this.db.batch(operations, durability(this.options.sync))
        this.index.splice(0, count)
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

function indexEntry (position: number, patch: Patch): LogIndexEntry {
  return { position, kind: patch.kind, origin: patch.origin ?? '', from: patch.from ?? 0, to: patch.to ?? 0 }
}
