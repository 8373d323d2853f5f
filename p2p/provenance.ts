/**
 * The mesh's provenance ledger: every verified provenance record, kept in the
 * system shard `sys.provenance` that every node replicates (persisted in
 * LevelDB by the shard store, spread by the CRDT layer), and the registrar
 * that decides which `created` record of an asset counts.
 *
 * - `sys.provenance` is an append-only set: entity `rec.<record CID>` holds
 *   the record (`r`), its asset (`a`) and, for a genesis record, its
 *   registration receipt (`w`). The admission layer enforces it on every
 *   path: a record that verifies under its own CID, a receipt for that
 *   record, never changed, never deleted (rules below).
 * - The registrar is the holder of the `sys.ledger` lease (placement elects
 *   it like any host-authoritative shard). Registering a genesis record goes
 *   to it over `/metagrid/ledger/1.0.0`; it refuses an asset already
 *   registered, and signs a receipt with its lease epoch and a sequence
 *   number, having made the registration durable in `sys.ledger` first (its
 *   replicas hold it, and a new registrar pulls it before it serves). The
 *   lowest (epoch, seq) registration is the asset's genesis on every node
 *   (attest/provenance.ts).
 */
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { encodeBundle, ProvenanceError, resolveChain, signReceipt, verifyReceipt, verifyRecord, type Chain, type ProvenanceRecord, type Receipt } from '../attest/provenance.ts'
import { LEDGER_PROTOCOL, LEDGER_SHARD, PROVENANCE_SHARD } from './constants.ts'
import { ignore, reject } from './admission/refusal.ts'
import { decodeWire, WireProtocolError } from './wire-error.ts'
import { answerRequests, requestOnce } from './request.ts'
import type { EntryChange, EntryRules } from './admission/rules.ts'
import type { ShardDoc } from '../storage/crdt/shard-doc.ts'
import type { MetagridLibp2p } from './libp2p.ts'
import type { Replication } from './sync/replication.ts'
import type { Logger } from './logger.ts'
import type { P2pMetrics } from './metrics.ts'
import type { PrivateKey } from '@libp2p/interface'

const PREFIX = 'rec.'
const REGISTERED_PREFIX = 'gen.'
const MAX_CACHED = 50_000
/** Records the ledger holds at most; a stranger signing records for random CIDs cannot fill a node's disk past it. */
export const MAX_RECORDS = 1_000_000
const MAX_FRAME_BYTES = 64 * 1024
const MAX_STREAMS = 16
const REQUEST_TIMEOUT_MS = 5_000

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64')
const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'base64'))

/** Who the registrar is, as placement's accepted leases of `sys.ledger` say. */
export interface Registrar {
  /** The registrar now and its epoch, or null while the ledger has no host. */
  current: () => { peer: string, epoch: number } | null
  /** The epoch this node holds the ledger's lease under, if it does. */
  heldEpoch: () => number | undefined
  /** Whether `receipt` was signed by the registrar of its epoch, before a newer epoch began. */
  witnessed: (receipt: Receipt) => boolean
  /** The ledger's lease record of an epoch, for bundles (offline verifiers check receipts against it). */
  leaseRecord: (epoch: number) => Uint8Array | undefined
}

export class LedgerError extends Error {
  static override name = 'LedgerError'
  override name = 'LedgerError'
  readonly code: 'ALREADY_REGISTERED' | 'LEDGER_UNAVAILABLE' | 'NOT_GENESIS'
  constructor (code: LedgerError['code'], message: string) {
    super(message)
    this.code = code
  }
}

class LedgerProtocolError extends WireProtocolError {
  static override name = 'LedgerProtocolError'
  override name = 'LedgerProtocolError'
}

export interface ProvenanceComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  replication: Replication
  registrar: Registrar
  metrics: P2pMetrics | null
  logger: Logger
}

export class ProvenanceLedger {
  private readonly components: ProvenanceComponents
  private readonly log: Logger
  private readonly self: string
  private readonly verified = new Map<string, ProvenanceRecord | null>()
  private readonly receipts = new Map<string, Receipt | null>()

  constructor (components: ProvenanceComponents) {
    this.components = components
    this.self = components.libp2p.peerId.toString()
    this.log = components.logger.child({ component: 'metagrid:provenance' })
  }

  async start (): Promise<void> {
    const { replication, libp2p, metrics } = this.components
    await replication.ensure(PROVENANCE_SHARD)
    replication.admission.setRules(PROVENANCE_SHARD, this.rules())
    await answerRequests(libp2p, LEDGER_PROTOCOL, { name: 'ledger', timeoutMs: REQUEST_TIMEOUT_MS * 2, maxFrameBytes: MAX_FRAME_BYTES, maxStreams: MAX_STREAMS, metrics, log: this.log }, async (bytes) => {
      const request = decodeRegisterRequest(bytes)
      let answer: Record<string, unknown>
      try {
        answer = { ok: true, w: (await this.witness(request)).bytes }
      } catch (err) {
        if (!(err instanceof LedgerError) && !(err instanceof ProvenanceError)) throw err
        const code = err instanceof LedgerError ? err.code : 'BAD_RECORD'
        metrics?.admissionRejected.inc({ path: 'ledger', reason: code, action: 'ignore' })
        answer = { ok: false, c: code, d: err.message.slice(0, 256) }
      }
      return dagCbor.encode(answer)
    })
  }

  async stop (): Promise<void> {
    await this.components.libp2p.unhandle(LEDGER_PROTOCOL).catch(() => {})
  }

  /**
   * Verifies a record and appends it (durably) unless it is already there. A
   * genesis record (`created`, `derived`) is registered with the ledger's
   * registrar first; LedgerError when the asset is someone else's already or
   * the registrar cannot be reached.
   */
  async add (bytes: Uint8Array): Promise<{ record: ProvenanceRecord, added: boolean }> {
    const record = await verifyRecord(bytes)
    const store = this.components.replication.shard(PROVENANCE_SHARD)
    const entity = `${PREFIX}${record.cid}`
    if (store.doc.entity(entity) != null) return { record, added: false }
    const components: Record<string, string> = { r: b64(bytes), a: record.asset }
    if (record.predicate.prev === null) components.w = b64((await this.register(record)).bytes)
    store.doc.putEntity(entity, components)
    await store.commit()
    this.verified.set(record.cid, record)
    this.log.info({ code: 'PROVENANCE_RECORD', cid: record.cid, asset: record.asset, kind: record.predicate.kind }, 'provenance record added')
    return { record, added: true }
  }

  /** Registers a genesis record at the registrar (this node, or over the ledger protocol). */
  private async register (record: ProvenanceRecord): Promise<Receipt> {
    const registrar = this.components.registrar.current()
    if (registrar == null) throw new LedgerError('LEDGER_UNAVAILABLE', 'the ledger has no registrar right now; retry shortly')
    if (registrar.peer === this.self) return this.witness({ record: record.bytes })
    let answer: Record<string, unknown>
    try {
      answer = dagCbor.decode(await requestOnce(this.components.libp2p, peerIdFromString(registrar.peer), LEDGER_PROTOCOL, dagCbor.encode({ t: 'register', r: record.bytes }), { timeoutMs: REQUEST_TIMEOUT_MS, maxFrameBytes: MAX_FRAME_BYTES })) as Record<string, unknown>
    } catch (err) {
      throw new LedgerError('LEDGER_UNAVAILABLE', `the ledger's registrar ${registrar.peer} did not answer: ${(err as Error).message}`)
    }
    if (answer.ok === true && answer.w instanceof Uint8Array) {
      const receipt = await verifyReceipt(answer.w)
      if (receipt.record !== record.cid || receipt.asset !== record.asset || !this.components.registrar.witnessed(receipt)) {
        throw new LedgerError('LEDGER_UNAVAILABLE', 'the registrar answered with a receipt that does not hold')
      }
      return receipt
    }
    if (answer.c === 'ALREADY_REGISTERED') throw new LedgerError('ALREADY_REGISTERED', typeof answer.d === 'string' ? answer.d : `${record.asset} is registered already`)
    throw new LedgerError('LEDGER_UNAVAILABLE', `the registrar refused: ${typeof answer.c === 'string' ? answer.c.slice(0, 32) : 'no reason'}`)
  }

  /**
   * The registrar's side: witnesses the first genesis record of an asset.
   * Registering the same record again returns its receipt; another record of
   * a registered asset is refused.
   */
  private async witness (request: { record: Uint8Array }): Promise<Receipt> {
    const epoch = this.components.registrar.heldEpoch()
    if (epoch == null) throw new LedgerError('LEDGER_UNAVAILABLE', 'this node is not the ledger\'s registrar')
    const record = await verifyRecord(request.record)
    if (record.predicate.prev !== null) throw new LedgerError('NOT_GENESIS', 'only created and derived records are registered')
    const ledger = await this.components.replication.ensure(LEDGER_SHARD)
    const entity = `${REGISTERED_PREFIX}${record.asset}`
    const existing = ledger.doc.entity(entity)?.components.receipt
    if (typeof existing === 'string') {
      const receipt = await verifyReceipt(unb64(existing))
      if (receipt.record === record.cid) return receipt
      throw new LedgerError('ALREADY_REGISTERED', `${record.asset} was registered by record ${receipt.record} at epoch ${receipt.epoch}, sequence ${receipt.seq}`)
    }
    const next = ledger.doc.entity('meta')?.components.next
    const seq = typeof next === 'number' ? next : 0
    const bytes = await signReceipt(this.components.privateKey, record.asset, { record: record.cid, epoch, seq })
    ledger.doc.setComponent('meta', 'next', seq + 1)
    ledger.doc.setComponent(entity, 'receipt', b64(bytes))
    // Durable (and on its way to the replicas) before anyone holds the receipt.
    await ledger.commit()
    this.log.info({ code: 'ASSET_REGISTERED', asset: record.asset, record: record.cid, epoch, seq }, 'registered an asset')
    return verifyReceipt(bytes)
  }

  /** Every record about `asset` that verifies, and the receipts of its genesis records; what does not verify is counted and skipped. */
  async records (asset: string): Promise<{ records: ProvenanceRecord[], receipts: Receipt[] }> {
    const doc = this.components.replication.shard(PROVENANCE_SHARD).doc
    for (const cache of [this.verified, this.receipts]) if (cache.size > MAX_CACHED) cache.clear()
    const records: ProvenanceRecord[] = []
    const receipts: Receipt[] = []
    for (const id of doc.entityIds()) {
      if (!id.startsWith(PREFIX)) continue
      const components = doc.entity(id)?.components
      if (components?.a !== asset || typeof components.r !== 'string') continue
      const cid = id.slice(PREFIX.length)
      let record = this.verified.get(cid)
      if (record === undefined) {
        record = await this.checked(async () => {
          const verified = await verifyRecord(unb64(components.r as string))
          if (verified.cid !== cid) throw new ProvenanceError('link', `stored under ${cid} but its CID is ${verified.cid}`)
          return verified
        }, cid)
        this.verified.set(cid, record)
      }
      if (record == null) continue
      records.push(record)
      if (typeof components.w === 'string') {
        const text = components.w
        let receipt = this.receipts.get(text)
        if (receipt === undefined) {
          receipt = await this.checked(async () => verifyReceipt(unb64(text)), cid)
          this.receipts.set(text, receipt)
        }
        if (receipt != null) receipts.push(receipt)
      }
    }
    return { records, receipts }
  }

  private async checked<T> (verify: () => Promise<T>, cid: string): Promise<T | null> {
    try {
      return await verify()
    } catch (err) {
      if (!(err instanceof ProvenanceError)) throw err
      this.components.metrics?.wireRejected.inc({ protocol: 'provenance', reason: err.check.toUpperCase() })
      this.log.warn({ code: 'BAD_PROVENANCE_RECORD', cid, check: err.check, reason: err.detail }, 'a replicated provenance record does not verify; ignored')
      return null
    }
  }

  async chain (asset: string): Promise<Chain> {
    const { records, receipts } = await this.records(asset)
    return resolveChain(asset, records, receipts, (receipt) => this.components.registrar.witnessed(receipt))
  }

  /** The offline bundle: records, receipts, and the ledger lease records of the receipts' epochs. */
  async bundle (asset: string): Promise<Uint8Array> {
    const { records, receipts } = await this.records(asset)
    const leases = [...new Set(receipts.map((r) => r.epoch))].map((epoch) => this.components.registrar.leaseRecord(epoch)).filter((l): l is Uint8Array => l != null)
    return encodeBundle(asset, records, receipts, leases)
  }

  /** The append-only rules of `sys.provenance`, for the admission layer. */
  rules (): EntryRules {
    return { counters: false, check: async (change, doc) => { await this.checkEntry(change, doc) } }
  }

  private async checkEntry (change: EntryChange, doc: ShardDoc): Promise<void> {
    const { entity } = change
    if (!entity.startsWith(PREFIX)) throw reject('UNKNOWN_ENTRY', `${PROVENANCE_SHARD} holds rec.* entries only, not ${entity}`)
    if (change.removes.length > 0) throw reject('APPEND_ONLY', `${entity} is never removed`)
    const cid = entity.slice(PREFIX.length)
    const held = doc.entity(entity)?.components ?? {}
    if (change.adds.length > 0 && doc.entity(entity) == null && doc.entityIds().length >= MAX_RECORDS) throw ignore('TABLE_FULL', `the ledger holds ${MAX_RECORDS} records`)
    const incoming = new Map(change.components.map((c) => [c.component, c.value]))
    for (const [component, value] of incoming) {
      if (component !== 'r' && component !== 'a' && component !== 'w') throw reject('BAD_ENTRY', `${entity} holds r, a and w`)
      if (typeof value !== 'string') throw reject('APPEND_ONLY', `${entity}/${component} is never deleted`)
      if (held[component] !== undefined && held[component] !== value) throw reject('APPEND_ONLY', `${entity}/${component} never changes`)
    }
    const recordText = incoming.get('r') ?? held.r
    if (typeof recordText !== 'string') {
      if (incoming.size > 0) throw reject('BAD_ENTRY', `${entity} is written with its record`)
      return
    }
    let record: ProvenanceRecord
    try {
      record = this.verified.get(cid) ?? await verifyRecord(unb64(recordText))
    } catch (err) {
      if (err instanceof ProvenanceError) throw reject('BAD_RECORD', `${entity}: ${err.message}`)
      throw err
    }
    if (record.cid !== cid) throw reject('BAD_RECORD', `${entity} holds record ${record.cid}`)
    const asset = incoming.get('a') ?? held.a
    if (asset !== undefined && asset !== record.asset) throw reject('BAD_RECORD', `${entity} names asset ${String(asset)}, its record ${record.asset}`)
    const receiptText = incoming.get('w')
    if (typeof receiptText === 'string') {
      let receipt: Receipt
      try {
        receipt = await verifyReceipt(unb64(receiptText))
      } catch (err) {
        if (err instanceof ProvenanceError) throw reject('BAD_RECEIPT', `${entity}: ${err.message}`)
        throw err
      }
      if (receipt.record !== cid || receipt.asset !== record.asset) throw reject('BAD_RECEIPT', `${entity} holds the receipt of ${receipt.record}`)
    }
  }
}

function decodeRegisterRequest (bytes: Uint8Array): { record: Uint8Array } {
  const value = decodeWire(bytes, () => new LedgerProtocolError('MALFORMED', 'not DAG-CBOR'))
  const { t, r, ...rest } = (value ?? {}) as Record<string, unknown>
  if (t !== 'register' || !(r instanceof Uint8Array) || Object.keys(rest).length > 0) throw new LedgerProtocolError('MALFORMED', 'request fields missing or mistyped')
  return { record: r }
}
