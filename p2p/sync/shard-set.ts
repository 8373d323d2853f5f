/**
 * The shards this node replicates: opens each one's store from disk (served
 * shards at start, placed ones when placement assigns them), seals each local
 * delta as a batch signed by this node under the epoch the admission layer
 * names, and re-emits every store's changes as one event stream.
 */
import { TypedEventEmitter } from 'main-event'
import { batchSigner } from '../../attest/batch-signature.ts'
import { encodeSignedBatch, patchDigest } from '../../storage/crdt/batch.ts'
import { SUBLEVELS, type Database } from '../../storage/database.ts'
import { ShardStore, type Sealer, type ShardStoreOptions } from '../../storage/shard-store.ts'
import type { ApplyResult, Patch } from '../../storage/crdt/shard-doc.ts'
import type { Admission } from '../admission/admission.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PrivateKey } from '@libp2p/interface'

export interface ShardChange {
  shard: string
  /** Null for a local write (the API knows what it wrote). */
  result: ApplyResult | null
  local: boolean
}

export interface ShardSetEvents {
  change: CustomEvent<ShardChange>
  /** A local delta is durable: `bytes` is the signed batch to gossip. */
  delta: CustomEvent<{ shard: string, bytes: Uint8Array, patch: Patch }>
  /** A shard was opened at runtime (after start). */
  opened: CustomEvent<{ shard: string, store: ShardStore }>
}

export interface ShardSetComponents {
  database: Database
  privateKey: PrivateKey
  /** Peer id of this node: the replica id of its own operations. */
  self: string
  admission: Admission
  metrics: P2pMetrics | null
  logger: Logger
}

export class UnknownShardError extends Error {
  static override name = 'UnknownShardError'
  override name = 'UnknownShardError'
}

export class ShardSet extends TypedEventEmitter<ShardSetEvents> {
  private readonly components: ShardSetComponents
  private readonly options: ShardStoreOptions
  private readonly log: Logger
  private readonly stores = new Map<string, ShardStore>()
  private readonly opening = new Map<string, Promise<ShardStore>>()
  private readonly seal: Sealer

  constructor (components: ShardSetComponents, options: ShardStoreOptions) {
    super()
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:shards' })
    const signer = batchSigner(components.privateKey)
    this.seal = (shard, patch, patchBytes) => encodeSignedBatch(signer.seal({
      shard,
      epoch: components.admission.epochFor(shard),
      origin: components.self,
      from: patch.from!,
      to: patch.to!,
      digest: patchDigest(patchBytes)
    }), patchBytes)
  }

  /** Opens shards from disk at start; one summary line, the per-shard detail at debug. */
  async openAll (shards: readonly string[]): Promise<void> {
    let entities = 0
    let records = 0
    for (const shard of shards) {
      const store = await this.openStore(shard)
      entities += store.doc.entityIds().length
      records += store.logIndex().length
    }
    this.log.info({ shards: shards.length, entities, records }, 'shards loaded')
  }

  private async openStore (shard: string): Promise<ShardStore> {
    const db = this.components.database.sublevel(SUBLEVELS.crdt)
    const { store, recovery } = await ShardStore.open(shard, this.components.self, db, this.options, this.components.logger, this.seal)
    if (recovery.cut > 0) {
      this.components.metrics?.crdtLogCut.inc(recovery.cut)
      this.log.warn({ code: 'LOG_TAIL_CUT', shard, cut: recovery.cut, kept: recovery.records }, 'cut a corrupt shard log tail; peers will resend what it held')
    }
    this.log.debug({ shard, records: recovery.records, snapshotBytes: recovery.snapshotBytes, entities: store.doc.entityIds().length }, 'shard loaded')
    store.addEventListener('delta', (event) => { this.safeDispatchEvent('delta', { detail: { shard, ...event.detail } }) })
    store.addEventListener('change', (event) => { this.safeDispatchEvent('change', { detail: { shard, result: event.detail.result, local: event.detail.local } }) })
    this.stores.set(shard, store)
    return store
  }

  /** Opens a shard at runtime (placement assigned it); concurrent calls share one opening. */
  async ensure (shard: string): Promise<ShardStore> {
    const open = this.stores.get(shard)
    if (open != null) return open
    let opening = this.opening.get(shard)
    if (opening == null) {
      opening = this.openStore(shard).then((store) => {
        this.safeDispatchEvent('opened', { detail: { shard, store } })
        return store
      }).finally(() => this.opening.delete(shard))
      this.opening.set(shard, opening)
    }
    return opening
  }

  shard (id: string): ShardStore {
    const store = this.stores.get(id)
    if (store == null) throw new UnknownShardError(`this node does not serve shard ${id}`)
    return store
  }

  get (id: string): ShardStore | undefined {
    return this.stores.get(id)
  }

  served (): string[] {
    return [...this.stores.keys()]
  }

  entries (): IterableIterator<[string, ShardStore]> {
    return this.stores.entries()
  }

  /** Writes what is pending and closes every shard. */
  async close (): Promise<void> {
    for (const store of this.stores.values()) await store.close()
  }
}
