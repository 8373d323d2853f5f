/**
 * Shard deltas over gossipsub: each durable local delta (a batch signed by
 * this node) goes out on the shard's topic, `/metagrid/shard/<id>/2`; each
 * one received passes the admission layer, exactly as one arriving by
 * anti-entropy does, before it is applied. A batch that reveals a gap (the
 * origin's earlier operations never arrived) asks anti-entropy to fill it.
 *
 * One topic per shard: a subscriber receives only the shards it replicates,
 * and gossipsub's mesh per topic is the shard's replica set.
 */
import { shardTopic } from '../constants.ts'
import { topicValidator } from '../gossip/validation.ts'
import { reject } from '../admission/refusal.ts'
import { ClockDriftError } from '../../storage/crdt/hlc.ts'
import type { Admission } from '../admission/admission.ts'
import type { SignedBatch } from '../../storage/crdt/batch.ts'
import type { ApplyResult } from '../../storage/crdt/shard-doc.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'

/** A gossiped batch larger than this is refused; bigger local batches go by anti-entropy instead. */
export const MAX_GOSSIP_DELTA_BYTES = 512 * 1024

export interface DeltaGossipComponents {
  libp2p: MetagridLibp2p
  admission: Admission
  /** Called when a batch shows a gap only anti-entropy can fill. */
  onGap: (shard: string, peer: PeerId) => void
  /** Called with what applying an admitted batch changed. */
  onApplied: (result: ApplyResult) => void
  metrics: P2pMetrics | null
  logger: Logger
}

export class DeltaGossip {
  private readonly components: DeltaGossipComponents
  private readonly log: Logger
  private running = false

  constructor (components: DeltaGossipComponents) {
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:delta-gossip' })
  }

  start (): void {
    this.running = true
  }

  stop (shards: Iterable<string>): void {
    this.running = false
    const pubsub = this.components.libp2p.services.pubsub
    for (const shard of shards) {
      pubsub.unsubscribe(shardTopic(shard))
      pubsub.topicValidators.delete(shardTopic(shard))
    }
  }

  /** Subscribes to a shard's topic; what arrives on it is admitted, then applied. */
  attach (store: ShardStore): void {
    const { libp2p, metrics } = this.components
    const pubsub = libp2p.services.pubsub
    const topic = shardTopic(store.shard)
    pubsub.topicValidators.set(topic, topicValidator({
      topicLabel: 'shard',
      validate: async (message, source) => this.validate(store, message.data, source),
      onAccept: (batch, message) => {
        metrics?.crdtDeltaBytes.inc({ direction: 'received', path: 'gossip' }, message.data.byteLength)
        void this.apply(store, batch)
      },
      metrics,
      logger: this.log
    }))
    pubsub.subscribe(topic)
  }

  private async validate (store: ShardStore, data: Uint8Array, source: PeerId): Promise<SignedBatch> {
    if (data.byteLength > MAX_GOSSIP_DELTA_BYTES) throw reject('OVERSIZED', `batch of ${data.byteLength} bytes`)
    const batch = await this.components.admission.admitBatch(store, data, 'gossip')
    // Operations of this origin newer than any we have, yet not the next ones: a gap only anti-entropy can fill.
    // (Against the highest dot, not the contiguous prefix: writes overwritten before we saw them leave holes for good.)
    if (batch.header.from > store.doc.context.highest(batch.header.origin) + 1) this.components.onGap(store.shard, source)
    return batch
  }

  private async apply (store: ShardStore, batch: SignedBatch): Promise<void> {
    try {
      this.components.onApplied(await store.applyBatch(batch))
    } catch (err) {
      this.log.warn({ code: err instanceof ClockDriftError ? 'CLOCK_DRIFT' : 'APPLY', shard: store.shard, err }, 'could not apply a remote patch')
    }
  }

  /** Gossips a durable local batch; one too large for gossip is left to anti-entropy. */
  async publish (shard: string, bytes: Uint8Array): Promise<void> {
    if (!this.running) return
    const metrics = this.components.metrics
    if (bytes.byteLength > MAX_GOSSIP_DELTA_BYTES) {
      metrics?.crdtGossipSkipped.inc({ reason: 'oversized' })
      return
    }
    try {
      await this.components.libp2p.services.pubsub.publish(shardTopic(shard), bytes)
      metrics?.crdtDeltaBytes.inc({ direction: 'sent', path: 'gossip' }, bytes.byteLength)
    } catch (err) {
      metrics?.crdtGossipSkipped.inc({ reason: 'publish_failed' })
      this.log.debug({ code: 'DELTA_PUBLISH', shard, err }, 'could not gossip a delta; anti-entropy will deliver it')
    }
  }
}
