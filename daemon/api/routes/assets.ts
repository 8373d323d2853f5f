/**
 * Asset provenance over HTTP.
 *
 * - `POST /v1/assets` `{ data: base64 }` or `{ cid, parents? }`: this node's key
 *   signs a `created` (or, with parents, `derived`) record; answers the asset CID.
 * - `POST /v1/assets/:cid/records` `{ record: base64 }`: appends a record signed
 *   by any key (a client's own); it must verify and be about `:cid`.
 * - `POST /v1/assets/:cid/transfer` `{ to }` and `.../license` `{ to, licence }`:
 *   this node's key signs the next record on the chain (it must own the asset).
 * - `GET /v1/assets/:cid/provenance`: the verified chain, owner, licences, conflicts.
 * - `GET /v1/assets/:cid/bundle`: the self-contained bundle (binary DAG-CBOR) for
 *   `metagrid verify`.
 *
 * Writes check the caller (authorize.ts): from loopback on a loopback API the
 * operator needs nothing; otherwise a token must grant `create`, `transfer` or
 * `license` on `asset:<cid>`.
 */
import { CID } from 'multiformats/cid'
import { z } from 'zod'
import { ApiError, badRequest, notFound, parseInput } from '../errors.ts'
import { assetCid, ProvenanceError, signProvenance, verifyRecord, type ProvenancePredicate } from '../../../attest/provenance.ts'
import { LedgerError, type ProvenanceLedger } from '../../../p2p/provenance.ts'
import type { Authorize } from '../authorize.ts'
import type { PrivateKey } from '@libp2p/interface'
import type { FastifyInstance } from 'fastify'

const cid = z.string().min(8).max(128).refine((value) => { try { CID.parse(value); return true } catch { return false } }, { error: 'expected a CID' })
const peer = z.string().min(1).max(128)
const params = z.strictObject({ cid })
const base64 = z.string().min(1).max(16 * 1024 * 1024).regex(/^[A-Za-z0-9+/_-]+={0,2}$/, { error: 'expected base64' })
const createBody = z.union([
  z.strictObject({ data: base64, parents: z.array(cid).min(1).max(64).optional() }),
  z.strictObject({ cid, parents: z.array(cid).min(1).max(64).optional() })
])
const ABILITY: Record<ProvenancePredicate['kind'], string> = { created: 'create', derived: 'create', transferred: 'transfer', licensed: 'license' }
const LEDGER_STATUS: Record<LedgerError['code'], number> = { ALREADY_REGISTERED: 409, LEDGER_UNAVAILABLE: 503, NOT_GENESIS: 400 }

export interface AssetRouteComponents {
  ledger: ProvenanceLedger
  privateKey: PrivateKey
  nodeId: string
  authorize: Authorize
}

export function registerAssetRoutes (app: FastifyInstance, deps: AssetRouteComponents): void {
  const { ledger } = deps

  const append = async (bytes: Uint8Array): Promise<{ cid: string, asset: string, kind: string, added: boolean }> => {
    try {
      const { record, added } = await ledger.add(bytes)
      return { cid: record.cid, asset: record.asset, kind: record.predicate.kind, added }
    } catch (err) {
      if (err instanceof ProvenanceError) throw badRequest('BAD_RECORD', err.message)
      if (err instanceof LedgerError) throw new ApiError(LEDGER_STATUS[err.code], err.code, err.message)
      throw err
    }
  }

  /** The head of the chain, which the node must own to extend it. */
  const head = async (asset: string): Promise<string> => {
    const chain = await ledger.chain(asset)
    if (chain.chain.length === 0) throw notFound('UNKNOWN_ASSET', `no provenance for ${asset}`)
    if (chain.owner !== deps.nodeId) throw new ApiError(409, 'NOT_OWNER', `${asset} is owned by ${chain.owner ?? 'nobody'}, not this node`)
    return chain.chain.at(-1)!.cid
  }

  app.post('/v1/assets', async (request) => {
    const body = parseInput(createBody, request.body, 'body')
    const asset = 'data' in body ? await assetCid(new Uint8Array(Buffer.from(body.data, 'base64'))) : body.cid
    await deps.authorize(request, `asset:${asset}`, 'create')
    const predicate: ProvenancePredicate = body.parents != null ? { kind: 'derived', prev: null, parents: body.parents } : { kind: 'created', prev: null }
    return append(await signProvenance(deps.privateKey, asset, predicate))
  })

  app.post('/v1/assets/:cid/records', async (request) => {
    const { cid: asset } = parseInput(params, request.params, 'params')
    const { record } = parseInput(z.strictObject({ record: base64 }), request.body, 'body')
    const bytes = new Uint8Array(Buffer.from(record, 'base64'))
    let kind: ProvenancePredicate['kind']
    try {
      const verified = await verifyRecord(bytes)
      if (verified.asset !== asset) throw badRequest('BAD_RECORD', `the record is about ${verified.asset}, not ${asset}`)
      kind = verified.predicate.kind
    } catch (err) {
      if (err instanceof ProvenanceError) throw badRequest('BAD_RECORD', err.message)
      throw err
    }
    await deps.authorize(request, `asset:${asset}`, ABILITY[kind])
    return append(bytes)
  })

  app.post('/v1/assets/:cid/transfer', async (request) => {
    const { cid: asset } = parseInput(params, request.params, 'params')
    const { to } = parseInput(z.strictObject({ to: peer }), request.body, 'body')
    await deps.authorize(request, `asset:${asset}`, 'transfer')
    return append(await signProvenance(deps.privateKey, asset, { kind: 'transferred', prev: await head(asset), to }))
  })

  app.post('/v1/assets/:cid/license', async (request) => {
    const { cid: asset } = parseInput(params, request.params, 'params')
    const { to, licence } = parseInput(z.strictObject({ to: peer, licence: z.string().min(1).max(256) }), request.body, 'body')
    await deps.authorize(request, `asset:${asset}`, 'license')
    return append(await signProvenance(deps.privateKey, asset, { kind: 'licensed', prev: await head(asset), to, licence }))
  })

  app.get('/v1/assets/:cid/provenance', async (request) => {
    const { cid: asset } = parseInput(params, request.params, 'params')
    const chain = await ledger.chain(asset)
    if (chain.chain.length === 0 && chain.invalid.length === 0) throw notFound('UNKNOWN_ASSET', `no provenance for ${asset}`)
    return chain
  })

  app.get('/v1/assets/:cid/bundle', async (request, reply) => {
    const { cid: asset } = parseInput(params, request.params, 'params')
    // An asset this node knows nothing of has no bundle: an empty one would only fail `metagrid verify` later.
    if ((await ledger.records(asset)).records.length === 0) throw notFound('UNKNOWN_ASSET', `no provenance for ${asset}`)
    const bundle = await ledger.bundle(asset)
    return reply.type('application/vnd.metagrid.provenance-bundle+cbor').header('content-disposition', `attachment; filename="${asset}.provenance"`).send(Buffer.from(bundle))
  })
}
