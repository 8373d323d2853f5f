/**
 * The mesh's provenance ledger: every verified provenance record, kept in the
 * system shard `sys.provenance` that every node replicates (persisted in
 * LevelDB by the shard store, spread by the CRDT layer). Records form an
 * append-only set: entity `rec.<record CID>` holds the record and its asset,
 * is never changed and never deleted, so replicas converge on the union.
 *
 * Records are verified when they are added here and again when read (a
 * record that arrived through a peer is only bytes until it verifies); reads
 * cache verified records by CID.
 */
import { resolveChain, verifyRecord, encodeBundle, ProvenanceError, type Chain, type ProvenanceRecord } from '../attest/provenance.ts'
import { PROVENANCE_SHARD } from './constants.ts'
import type { Replication } from './sync/replication.ts'
import type { Logger } from './logger.ts'
import type { P2pMetrics } from './metrics.ts'

const PREFIX = 'rec.'
const MAX_CACHED = 50_000

export interface ProvenanceComponents {
  replication: Replication
  metrics: P2pMetrics | null
  logger: Logger
}

export class ProvenanceLedger {
  private readonly components: ProvenanceComponents
  private readonly log: Logger
  private readonly verified = new Map<string, ProvenanceRecord | null>()

  constructor (components: ProvenanceComponents) {
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:provenance' })
  }

  async start (): Promise<void> {
    await this.components.replication.ensure(PROVENANCE_SHARD)
  }

  /** Verifies a record and appends it (durably) unless it is already there. */
  async add (bytes: Uint8Array): Promise<{ record: ProvenanceRecord, added: boolean }> {
    const record = await verifyRecord(bytes)
    const store = this.components.replication.shard(PROVENANCE_SHARD)
    const entity = `${PREFIX}${record.cid}`
    if (store.doc.entity(entity) != null) return { record, added: false }
    store.doc.putEntity(entity, { r: Buffer.from(bytes).toString('base64'), a: record.asset })
    await store.commit()
    this.verified.set(record.cid, record)
    this.log.info({ code: 'PROVENANCE_RECORD', cid: record.cid, asset: record.asset, kind: record.predicate.kind }, 'provenance record added')
    return { record, added: true }
  }

  /** Every record about `asset` that verifies; those that do not are counted and skipped. */
  async records (asset: string): Promise<ProvenanceRecord[]> {
    const doc = this.components.replication.shard(PROVENANCE_SHARD).doc
    if (this.verified.size > MAX_CACHED) this.verified.clear()
    const out: ProvenanceRecord[] = []
    for (const id of doc.entityIds()) {
      if (!id.startsWith(PREFIX)) continue
      const components = doc.entity(id)?.components
      if (components?.a !== asset || typeof components.r !== 'string') continue
      const cid = id.slice(PREFIX.length)
      let record = this.verified.get(cid)
      if (record === undefined) {
        try {
          record = await verifyRecord(new Uint8Array(Buffer.from(components.r, 'base64')))
          if (record.cid !== cid) throw new ProvenanceError('link', `stored under ${cid} but its CID is ${record.cid}`)
        } catch (err) {
          if (!(err instanceof ProvenanceError)) throw err
          this.components.metrics?.wireRejected.inc({ protocol: 'provenance', reason: err.check.toUpperCase() })
          this.log.warn({ code: 'BAD_PROVENANCE_RECORD', cid, check: err.check, reason: err.detail }, 'a replicated provenance record does not verify; ignored')
          record = null
        }
        this.verified.set(cid, record)
      }
      if (record != null) out.push(record)
    }
    return out
  }

  async chain (asset: string): Promise<Chain> {
    return resolveChain(asset, await this.records(asset))
  }

  async bundle (asset: string): Promise<Uint8Array> {
    return encodeBundle(asset, await this.records(asset))
  }
}
