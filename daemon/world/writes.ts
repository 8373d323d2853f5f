/**
 * The one way a client's write reaches a shard, whichever door it came in by
 * (the HTTP routes, a world session, an input another node forwarded):
 *
 * 1. refuse system shards (their entries are written by the node that owns
 *    them, never by a client);
 * 2. check every value by the document's own rules, before anything changes;
 * 3. the lease rules (`guardWrite`: the host of a host layer under the epoch
 *    the client names, a replica of a crdt layer) and load shedding;
 * 4. apply, commit to LevelDB, then wait for the layer's write concern;
 * 5. tell the change's listeners (the SSE stream, the sessions).
 *
 * Who the caller is and what it may touch is checked before this (the API's
 * `authorize`, the session's token, the forwarding peer's federation
 * standing): this module does not know callers, only writes.
 */
import { ApiError, badRequest, notFound } from '../api/errors.ts'
import { checkComponents, ShardDocError } from '../../storage/crdt/shard-doc.ts'
import type { JsonValue } from '../../storage/crdt/codec.ts'
import { UnknownShardError, type Replication } from '../../p2p/sync/replication.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { Metrics } from '../metrics.ts'

export type WriteOp =
  | { op: 'put', entity: string, components: Record<string, JsonValue> }
  | { op: 'patch', entity: string, components: Record<string, JsonValue | null> }
  | { op: 'delete', entity: string }
  | { op: 'increment', counter: string, by: number }

export interface WriteOutcome {
  store: ShardStore
  /** Entities and counters the write changed (a delete of nothing changes nothing). */
  entities: Set<string>
  counters: Set<string>
}

export interface ShardWriterComponents {
  replication: Replication
  metrics: Metrics | null
  maxValueBytes: number
  /** Refuses a write this node may not take under the lease rules (placement.ts) or while shedding; throws an ApiError. */
  guardWrite?: (shard: string, epoch: number | undefined) => void
  /** After a write is durable here: waits for the shard's write concern; throws an ApiError when it is not met. */
  writeConcern?: (shard: string) => Promise<void>
}

export type WriteListener = (shard: string, store: ShardStore, entities: ReadonlySet<string>, counters: ReadonlySet<string>) => void

/** A write's kind for `metagrid_crdt_writes_total`: one op counts as itself, several as a batch. */
type WriteKind = 'put' | 'patch' | 'delete' | 'increment' | 'batch'

export class ShardWriter {
  private readonly components: ShardWriterComponents
  private readonly listeners = new Set<WriteListener>()

  constructor (components: ShardWriterComponents) {
    this.components = components
  }

  /** Called after every acknowledged local write, with what it changed. */
  onWritten (listener: WriteListener): () => void {
    this.listeners.add(listener)
    return () => { this.listeners.delete(listener) }
  }

  store (shard: string): ShardStore {
    try {
      return this.components.replication.shard(shard)
    } catch (err) {
      if (err instanceof UnknownShardError) throw notFound('UNKNOWN_SHARD', err.message)
      throw err
    }
  }

  /** Refuses before anything is read: a system shard, or a write the lease rules do not let this node take. */
  guard (shard: string, epoch: number | undefined): void {
    if (shard.startsWith('sys.')) throw new ApiError(403, 'SYSTEM_SHARD', `${shard} is a system shard; its entries are written by the node that owns them`)
    this.components.guardWrite?.(shard, epoch)
  }

  /** Resolves once everything this node wrote to `shard` so far is durable here and meets the layer's write concern. */
  async durable (shard: string): Promise<void> {
    await this.store(shard).commit()
    await this.components.writeConcern?.(shard)
  }

  /**
   * Applies `ops` to `shard` as one commit: all are acknowledged together or
   * none is. Resolves once durable here and the layer's write concern is met.
   */
  async write (shard: string, ops: readonly WriteOp[], epoch?: number): Promise<WriteOutcome> {
    this.guard(shard, epoch)
    const target = this.store(shard)
    for (const op of ops) if (op.op === 'put' || op.op === 'patch') checkValues(op.entity, op.components, this.components.maxValueBytes)
    const entities = new Set<string>()
    const counters = new Set<string>()
    const { doc } = target
    for (const op of ops) {
      switch (op.op) {
        case 'put': doc.putEntity(op.entity, op.components); entities.add(op.entity); break
        case 'patch': doc.patchEntity(op.entity, op.components); entities.add(op.entity); break
        case 'delete': if (doc.deleteEntity(op.entity)) entities.add(op.entity); break
        case 'increment': doc.increment(op.counter, op.by); counters.add(op.counter); break
      }
    }
    await target.commit()
    await this.components.writeConcern?.(shard)
    const kind: WriteKind = ops.length === 1 ? ops[0]!.op : 'batch'
    if (kind !== 'delete' || entities.size > 0) this.components.metrics?.crdtWrites.inc({ kind }, kind === 'batch' ? ops.length : 1)
    for (const listener of this.listeners) listener(shard, target, entities, counters)
    return { store: target, entities, counters }
  }
}

/**
 * Checks a write's names and values by the document's own rules (the same
 * the admission layer holds remote writes to) before anything is written.
 */
export function checkValues (entity: string, values: Record<string, unknown>, maxValueBytes: number): void {
  try {
    checkComponents(entity, values as Record<string, JsonValue | null>, maxValueBytes)
  } catch (err) {
    if (err instanceof ShardDocError) throw err.code === 'VALUE_TOO_LARGE' ? new ApiError(413, err.code, err.message) : badRequest(err.code, err.message)
    throw err
  }
}
