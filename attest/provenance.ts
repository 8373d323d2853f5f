/**
 * Asset provenance: who made an asset, what it came from, who holds it and
 * under what licence — from signatures alone.
 *
 * An asset is named by the CID of its bytes (CIDv1, raw, sha-256). Each
 * provenance record is a signed statement (`metagrid.provenance/v1`) by the
 * acting key, about one asset, linked to the record before it by that
 * record's CID (`prev`), so an asset's records form a chain:
 *
 *   created   (prev: none)              the signer makes the asset and owns it
 *   derived   (prev: none, parents)     the same, made from other assets
 *   transferred (prev, to)              the owner hands the asset to `to`
 *   licensed  (prev, to, licence)       the owner grants `to` a licence; ownership stays
 *
 * Actors are keys (peer ids), never names or e-mail addresses.
 *
 * **Genesis: first registration wins.** Anyone can sign a `created` record
 * for any CID, so a genesis record counts only with a *registration receipt*
 * (`metagrid.provenance-receipt/v1`): the ledger's registrar (the holder of
 * the `sys.ledger` lease, elected by placement) witnessed it, under its
 * lease epoch, with a sequence number, and it witnesses only an asset's first
 * registration. Of several registered genesis records (a registrar that lost
 * a registration in a failover), the lowest (epoch, sequence) wins: a later
 * registration can never take an asset, and no grinding of record CIDs
 * helps. Who counts as a registrar is the caller's decision (`isWitness`): a
 * node checks the receipt's signer held the ledger's lease at that epoch; an
 * offline verifier checks the lease records the bundle carries, or keys it
 * was told to trust.
 *
 * **Double transfer.** An owner who signs two records on the same `prev` (two
 * transfers of one asset) forks the chain. The deterministic rule: of the
 * valid records on one `prev`, the one with the smallest record CID (byte
 * order of its text form) continues the chain; the others are kept and
 * reported as `conflicts`, evidence of the double transfer. Records by someone
 * who was not the owner at that point are reported as `invalid`, never followed.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { z } from 'zod'
import { CheckError } from './envelope.ts'
import { signStatement, StatementError, verifyStatement, type StatementCheck } from './statement.ts'
import { statementCid } from './token.ts'
import type { PrivateKey } from '@libp2p/interface'

export const PROVENANCE_TYPE = 'metagrid.provenance/v1'
export const RECEIPT_TYPE = 'metagrid.provenance-receipt/v1'
export const BUNDLE_TYPE = 'metagrid.provenance-bundle/v2'
const RECORD_VALIDITY_MS = 100 * 365 * 86_400_000
export const MAX_CHAIN_RECORDS = 10_000

export type ProvenanceCheck = StatementCheck | 'asset' | 'link' | 'bundle' | 'receipt' | 'unregistered'

export class ProvenanceError extends CheckError<ProvenanceCheck> {
  static override name = 'ProvenanceError'
  override name = 'ProvenanceError'
}

const cidText = z.string().min(8).max(128).refine((value) => { try { CID.parse(value); return true } catch { return false } }, { error: 'expected a CID' })
const peer = z.string().min(1).max(128)

const predicateSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('created'), prev: z.null() }),
  z.strictObject({ kind: z.literal('derived'), prev: z.null(), parents: z.array(cidText).min(1).max(64) }),
  z.strictObject({ kind: z.literal('transferred'), prev: cidText, to: peer }),
  z.strictObject({ kind: z.literal('licensed'), prev: cidText, to: peer, licence: z.string().min(1).max(256) })
])

export type ProvenancePredicate = z.infer<typeof predicateSchema>

export interface ProvenanceRecord {
  /** CID of the record itself (of its envelope bytes): what `prev` points at. */
  cid: string
  asset: string
  signer: string
  issuedAt: number
  predicate: ProvenancePredicate
  bytes: Uint8Array
}

/** The CID of an asset's bytes. */
export async function assetCid (bytes: Uint8Array): Promise<string> {
  return CID.createV1(raw.code, await sha256.digest(bytes)).toString()
}

export async function signProvenance (key: PrivateKey, asset: string, predicate: ProvenancePredicate, now = Date.now()): Promise<Uint8Array> {
  const checked = predicateSchema.parse(predicate)
  cidText.parse(asset)
  return signStatement(key, { type: PROVENANCE_TYPE, subjects: [{ id: asset }], predicate: checked, issuedAt: now, notBefore: now, expiresAt: now + RECORD_VALIDITY_MS })
}

/** Verifies one record's signature, type, encoding and fields; names the failed check. */
export async function verifyRecord (bytes: Uint8Array, now = Date.now()): Promise<ProvenanceRecord> {
  let statement
  try {
    statement = await verifyStatement(bytes, { type: PROVENANCE_TYPE, predicate: predicateSchema, now })
  } catch (err) {
    if (err instanceof StatementError) throw new ProvenanceError(err.check, err.detail)
    throw err
  }
  const subject = statement.subjects[0]
  if (statement.subjects.length !== 1 || subject == null || !cidText.safeParse(subject.id).success) throw new ProvenanceError('asset', 'a record is about exactly one asset, named by its CID')
  return { cid: await statementCid(bytes), asset: subject.id, signer: statement.signer.toString(), issuedAt: statement.issuedAt, predicate: statement.predicate, bytes }
}

const receiptPredicate = z.strictObject({ record: cidText, epoch: z.int().min(0), seq: z.int().min(0) })

/** A registrar's witness that it registered `record` as the genesis of `asset`, at (epoch, seq). */
export interface Receipt {
  asset: string
  record: string
  epoch: number
  seq: number
  /** The registrar that signed it. */
  witness: string
  issuedAt: number
  bytes: Uint8Array
}

export async function signReceipt (key: PrivateKey, asset: string, registration: { record: string, epoch: number, seq: number }, now = Date.now()): Promise<Uint8Array> {
  return signStatement(key, { type: RECEIPT_TYPE, subjects: [{ id: asset }], predicate: receiptPredicate.parse(registration), issuedAt: now, notBefore: now - 1, expiresAt: now + RECORD_VALIDITY_MS })
}

export async function verifyReceipt (bytes: Uint8Array, now = Date.now()): Promise<Receipt> {
  let statement
  try {
    statement = await verifyStatement(bytes, { type: RECEIPT_TYPE, predicate: receiptPredicate, now })
  } catch (err) {
    if (err instanceof StatementError) throw new ProvenanceError('receipt', `${err.check}: ${err.detail}`)
    throw err
  }
  const subject = statement.subjects[0]
  if (statement.subjects.length !== 1 || subject == null || !cidText.safeParse(subject.id).success) throw new ProvenanceError('receipt', 'a receipt is about exactly one asset')
  return { asset: subject.id, ...statement.predicate, witness: statement.signer.toString(), issuedAt: statement.issuedAt, bytes }
}

/** Decides whether a receipt's signer was the ledger's registrar when it signed (see the file comment). */
export type WitnessCheck = (receipt: Receipt) => boolean

export interface ChainStep {
  cid: string
  kind: ProvenancePredicate['kind']
  by: string
  to?: string
  licence?: string
  parents?: string[]
  issuedAt: number
}

export interface Chain {
  asset: string
  /** The registration that made the genesis record count (null when no genesis record is registered). */
  registration: { record: string, epoch: number, seq: number, witness: string, issuedAt: number } | null
  /** Records in order from the genesis record. */
  chain: ChainStep[]
  /** The key that holds the asset now. */
  owner: string | null
  /** Licences granted along the chain, to whom. */
  licences: Array<{ to: string, licence: string, by: string, cid: string }>
  /** Forks: records on one `prev` that lost to the smallest CID (double transfers). */
  conflicts: Array<{ prev: string | null, kept: string, rejected: string[] }>
  /** Records that do not belong in the chain, and why. */
  invalid: Array<{ cid: string, reason: string }>
}

const byCid = (a: ProvenanceRecord, b: ProvenanceRecord): number => (a.cid < b.cid ? -1 : a.cid > b.cid ? 1 : 0)

const byRegistration = (a: Receipt, b: Receipt): number => a.epoch - b.epoch || a.seq - b.seq || (a.record < b.record ? -1 : a.record > b.record ? 1 : 0)

/**
 * Resolves an asset's chain from its verified records and receipts (any
 * order, duplicates allowed). The genesis is the registered genesis record
 * with the lowest (epoch, seq), counting only receipts `isWitness` accepts.
 */
export function resolveChain (asset: string, records: readonly ProvenanceRecord[], receipts: readonly Receipt[], isWitness: WitnessCheck): Chain {
  const unique = new Map<string, ProvenanceRecord>()
  for (const r of records) unique.set(r.cid, r)
  const result: Chain = { asset, registration: null, chain: [], owner: null, licences: [], conflicts: [], invalid: [] }
  const children = new Map<string | null, ProvenanceRecord[]>()
  for (const r of unique.values()) {
    if (r.asset !== asset) {
      result.invalid.push({ cid: r.cid, reason: `about asset ${r.asset}` })
      continue
    }
    const list = children.get(r.predicate.prev) ?? []
    list.push(r)
    children.set(r.predicate.prev, list)
  }
  const followed = new Set<string>()
  const pick = (prev: string | null, candidates: ProvenanceRecord[]): ProvenanceRecord | undefined => {
    const sorted = [...candidates].sort(byCid)
    const [kept, ...rest] = sorted
    if (kept != null && rest.length > 0) result.conflicts.push({ prev, kept: kept.cid, rejected: rest.map((r) => r.cid) })
    return kept
  }
  // Genesis: the first registration among the genesis records; unregistered ones never count.
  const genesis = children.get(null) ?? []
  const registered = receipts.filter((r) => r.asset === asset && unique.get(r.record)?.predicate.prev === null && isWitness(r)).sort(byRegistration)
  const first = registered[0]
  let current = first != null ? unique.get(first.record) : undefined
  if (first != null) {
    result.registration = { record: first.record, epoch: first.epoch, seq: first.seq, witness: first.witness, issuedAt: first.issuedAt }
    const later = [...new Set(registered.slice(1).map((r) => r.record))].filter((cid) => cid !== first.record)
    if (later.length > 0) result.conflicts.push({ prev: null, kept: first.record, rejected: later })
  }
  for (const r of genesis) {
    if (r.cid !== current?.cid && !registered.some((x) => x.record === r.cid)) result.invalid.push({ cid: r.cid, reason: 'a genesis record the ledger never registered' })
  }
  let owner: string | null = null
  while (current != null && result.chain.length < MAX_CHAIN_RECORDS) {
    followed.add(current.cid)
    const p = current.predicate
    if (p.kind === 'created' || p.kind === 'derived') owner = current.signer
    if (p.kind === 'transferred') owner = p.to
    if (p.kind === 'licensed') result.licences.push({ to: p.to, licence: p.licence, by: current.signer, cid: current.cid })
    result.chain.push({
      cid: current.cid, kind: p.kind, by: current.signer, issuedAt: current.issuedAt,
      ...(p.kind === 'transferred' || p.kind === 'licensed' ? { to: p.to } : {}),
      ...(p.kind === 'licensed' ? { licence: p.licence } : {}),
      ...(p.kind === 'derived' ? { parents: p.parents } : {})
    })
    const next = children.get(current.cid) ?? []
    const valid = next.filter((r) => r.signer === owner)
    for (const r of next) if (r.signer !== owner) result.invalid.push({ cid: r.cid, reason: `signed by ${r.signer}, who did not own the asset then` })
    current = pick(current.cid, valid)
  }
  for (const r of unique.values()) {
    if (r.asset === asset && !followed.has(r.cid) && !result.invalid.some((x) => x.cid === r.cid) && !result.conflicts.some((c) => c.rejected.includes(r.cid))) {
      result.invalid.push({ cid: r.cid, reason: 'not linked to the chain' })
    }
  }
  result.owner = owner
  return result
}

/**
 * A self-contained bundle: the asset's CID, every record, the registration
 * receipts, and the ledger's lease records the receipts' epochs were held
 * under, in canonical DAG-CBOR. Anyone can verify it offline; any changed
 * byte breaks the encoding, the canonical form, a signature or a binding.
 */
export function encodeBundle (asset: string, records: readonly ProvenanceRecord[], receipts: readonly Receipt[], leases: readonly Uint8Array[]): Uint8Array {
  const sorted = (items: Uint8Array[]): Uint8Array[] => items.sort((a, b) => Buffer.compare(a, b))
  return dagCbor.encode({
    type: BUNDLE_TYPE,
    asset,
    records: [...records].sort(byCid).map((r) => r.bytes),
    receipts: sorted(receipts.map((r) => r.bytes)),
    leases: sorted([...leases])
  })
}

export interface VerifiedBundle extends Chain {
  /** The lease records the bundle carried, for a caller that checks the registrar against them. */
  leases: Uint8Array[]
}

/**
 * Verifies a bundle offline: every record and receipt, the links, and that a
 * registered genesis exists. `witnesses` makes, from the lease records the
 * bundle carries, the check of who counts as the registrar (by default every
 * receipt's signer does: a caller that cares passes the keys it trusts, or
 * checks the lease records; see metagrid verify).
 */
export async function verifyBundle (bytes: Uint8Array, now = Date.now(), witnesses: (leases: readonly Uint8Array[]) => Promise<WitnessCheck> = async () => () => true): Promise<VerifiedBundle> {
  let decoded: unknown
  try {
    decoded = dagCbor.decode(bytes)
  } catch (err) {
    throw new ProvenanceError('bundle', `not DAG-CBOR: ${(err as Error).message}`)
  }
  const { type, asset, records, receipts, leases, ...rest } = (decoded ?? {}) as Record<string, unknown>
  const bytesList = (value: unknown): value is Uint8Array[] => Array.isArray(value) && value.every((r) => r instanceof Uint8Array)
  if (type !== BUNDLE_TYPE || typeof asset !== 'string' || !bytesList(records) || !bytesList(receipts) || !bytesList(leases) || Object.keys(rest).length > 0) {
    throw new ProvenanceError('bundle', 'not a provenance bundle')
  }
  if (!equalBytes(dagCbor.encode(decoded), bytes)) throw new ProvenanceError('bundle', 'not canonical DAG-CBOR')
  if (records.length > MAX_CHAIN_RECORDS || receipts.length > MAX_CHAIN_RECORDS || leases.length > MAX_CHAIN_RECORDS) throw new ProvenanceError('bundle', `more than ${MAX_CHAIN_RECORDS} entries`)
  const verified: ProvenanceRecord[] = []
  for (const [i, r] of records.entries()) {
    try {
      verified.push(await verifyRecord(r, now))
    } catch (err) {
      if (err instanceof ProvenanceError) throw new ProvenanceError(err.check, `record ${i}: ${err.detail}`)
      throw err
    }
  }
  const witnessed: Receipt[] = []
  for (const [i, r] of receipts.entries()) {
    try {
      witnessed.push(await verifyReceipt(r, now))
    } catch (err) {
      if (err instanceof ProvenanceError) throw new ProvenanceError(err.check, `receipt ${i}: ${err.detail}`)
      throw err
    }
  }
  const chain = resolveChain(asset, verified, witnessed, await witnesses(leases))
  if (chain.chain.length === 0) throw new ProvenanceError('unregistered', 'no genesis record registered by a registrar the verifier accepts')
  if (chain.invalid.length > 0) throw new ProvenanceError('link', `record ${chain.invalid[0]!.cid}: ${chain.invalid[0]!.reason}`)
  return { ...chain, leases }
}

function equalBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((x, i) => x === b[i])
}
