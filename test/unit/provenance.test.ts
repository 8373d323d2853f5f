import * as dagCbor from '@ipld/dag-cbor'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { assetCid, encodeBundle, ProvenanceError, resolveChain, signProvenance, signReceipt, verifyBundle, verifyReceipt, verifyRecord, type ProvenanceRecord, type Receipt } from '../../attest/provenance.ts'
import type { PrivateKey } from '@libp2p/interface'

const [alice, bob, carol, mallory, registrar] = await Promise.all([0, 1, 2, 3, 4].map(async () => generateKeyPair('Ed25519')))
const id = (key: PrivateKey): string => peerIdFromPrivateKey(key).toString()
const asset = await assetCid(new TextEncoder().encode('a castle, 3 MB of glTF'))
const parent = await assetCid(new TextEncoder().encode('a tower'))

/** The registrar's receipt for a genesis record, at (epoch, seq). */
async function registered (record: ProvenanceRecord, epoch = 1, seq = 0, by = registrar!): Promise<Receipt> {
  return verifyReceipt(await signReceipt(by, record.asset, { record: record.cid, epoch, seq }))
}
const byRegistrar = (receipt: Receipt): boolean => receipt.witness === id(registrar!)

async function chainOf (length: number): Promise<ProvenanceRecord[]> {
  const records = [await verifyRecord(await signProvenance(alice!, asset, { kind: 'derived', prev: null, parents: [parent] }))]
  const keys = [alice!, bob!, carol!]
  for (let i = 1; i < length; i++) {
    const owner = keys[(i - 1) % 3]!
    records.push(await verifyRecord(await signProvenance(owner, asset, { kind: 'transferred', prev: records.at(-1)!.cid, to: id(keys[i % 3]!) })))
  }
  return records
}

describe('provenance', () => {
  it('follows a chain of transfers and licences to the current owner', async () => {
    const records = await chainOf(4)
    // alice derives it, hands it to bob, bob to carol, carol back to alice; alice licenses it to carol.
    const licence = await verifyRecord(await signProvenance(alice!, asset, { kind: 'licensed', prev: records.at(-1)!.cid, to: id(carol!), licence: 'CC-BY-4.0' }))
    const chain = resolveChain(asset, [licence, ...records].reverse(), [await registered(records[0]!)], byRegistrar)
    expect(chain.chain.map((s) => s.kind)).toEqual(['derived', 'transferred', 'transferred', 'transferred', 'licensed'])
    expect(chain.chain[0]!.parents).toEqual([parent])
    expect(chain.owner).toBe(id(alice!))
    expect(chain.licences).toEqual([{ to: id(carol!), licence: 'CC-BY-4.0', by: id(alice!), cid: licence.cid }])
    expect(chain.conflicts).toEqual([])
    expect(chain.invalid).toEqual([])
  })

  it('resolves a double transfer by the smallest record CID and keeps both as evidence', async () => {
    const [genesis] = await chainOf(1)
    const toBob = await verifyRecord(await signProvenance(alice!, asset, { kind: 'transferred', prev: genesis!.cid, to: id(bob!) }))
    const toCarol = await verifyRecord(await signProvenance(alice!, asset, { kind: 'transferred', prev: genesis!.cid, to: id(carol!) }))
    const [winner, loser] = [toBob, toCarol].sort((a, b) => (a.cid < b.cid ? -1 : 1))
    const receipt = await registered(genesis!)
    for (const order of [[genesis!, toBob, toCarol], [toCarol, genesis!, toBob]]) {
      const chain = resolveChain(asset, order, [receipt], byRegistrar)
      expect(chain.owner).toBe(winner!.predicate.kind === 'transferred' ? winner!.predicate.to : null)
      expect(chain.conflicts).toEqual([{ prev: genesis!.cid, kept: winner!.cid, rejected: [loser!.cid] }])
    }
  })

  it('never follows a record by someone who did not own the asset', async () => {
    const [genesis] = await chainOf(1)
    const theft = await verifyRecord(await signProvenance(mallory!, asset, { kind: 'transferred', prev: genesis!.cid, to: id(mallory!) }))
    const chain = resolveChain(asset, [genesis!, theft], [await registered(genesis!)], byRegistrar)
    expect(chain.owner).toBe(id(alice!))
    expect(chain.invalid).toEqual([{ cid: theft.cid, reason: `signed by ${id(mallory!)}, who did not own the asset then` }])
  })

  it('names the failed check for each tampered field of a record', async () => {
    const bytes = await signProvenance(alice!, asset, { kind: 'transferred', prev: (await chainOf(1))[0]!.cid, to: id(bob!) })
    const envelope = dagCbor.decode(bytes) as { k: Uint8Array, p: Uint8Array, s: Uint8Array, t: string }
    const payload = dagCbor.decode(envelope.p) as { p: Record<string, unknown>, sub: unknown }
    const reseal = (changes: Record<string, unknown>): Uint8Array => dagCbor.encode({ ...envelope, p: dagCbor.encode({ ...payload, ...changes }) })
    const cases: Array<[string, Uint8Array, string]> = [
      ['asset', reseal({ sub: [{ id: parent }] }), 'signature'],
      ['kind', reseal({ p: { ...payload.p, kind: 'licensed' } }), 'signature'],
      ['prev', reseal({ p: { ...payload.p, prev: parent } }), 'signature'],
      ['to', reseal({ p: { ...payload.p, to: id(mallory!) } }), 'signature'],
      ['issued at', reseal({ iat: 1 }), 'signature'],
      ['signer key', dagCbor.encode({ ...envelope, k: mallory!.publicKey.raw }), 'signature'],
      ['type', dagCbor.encode({ ...envelope, t: 'metagrid.token/v1' }), 'type'],
      ['signature', dagCbor.encode({ ...envelope, s: envelope.s.map((b, i) => (i === 9 ? b ^ 0x40 : b)) }), 'signature']
    ]
    for (const [field, tampered, check] of cases) {
      const err = await verifyRecord(tampered).catch((e: unknown) => e)
      expect(err, field).toBeInstanceOf(ProvenanceError)
      expect((err as ProvenanceError).check, field).toBe(check)
    }
    // Correctly signed, but the fields are wrong: a transfer with no recipient, a record about two assets.
    const badFields = await (await import('../../attest/statement.ts')).signStatement(alice!, { type: 'metagrid.provenance/v1', subjects: [{ id: asset }], predicate: { kind: 'transferred', prev: asset }, issuedAt: 1, notBefore: 1, expiresAt: Date.now() + 1e9 })
    expect(((await verifyRecord(badFields).catch((e: unknown) => e)) as ProvenanceError).check).toBe('predicate')
    const twoAssets = await (await import('../../attest/statement.ts')).signStatement(alice!, { type: 'metagrid.provenance/v1', subjects: [{ id: asset }, { id: parent }], predicate: { kind: 'created', prev: null }, issuedAt: 1, notBefore: 1, expiresAt: Date.now() + 1e9 })
    expect(((await verifyRecord(twoAssets).catch((e: unknown) => e)) as ProvenanceError).check).toBe('asset')
  })

  it('takes the first registration as the genesis: a later created record, however ground, never takes the asset', async () => {
    const [genesis] = await chainOf(1)
    const first = await registered(genesis!, 3, 17)
    // Mallory signs her own created records until one has a smaller CID than the genesis (the old rule's weakness).
    let ground = await verifyRecord(await signProvenance(mallory!, asset, { kind: 'created', prev: null }))
    // Each try has the chance that the genesis CID is above a random one; a genesis low in the order takes many tries.
    for (let i = 0; ground.cid > genesis!.cid && i < 20_000; i++) ground = await verifyRecord(await signProvenance(mallory!, asset, { kind: 'created', prev: null }, Date.now() + i))
    expect(ground.cid < genesis!.cid).toBe(true)
    // Unregistered, it does not count.
    const unregistered = resolveChain(asset, [ground, genesis!], [first], byRegistrar)
    expect(unregistered.owner).toBe(id(alice!))
    expect(unregistered.invalid).toContainEqual({ cid: ground.cid, reason: 'a genesis record the ledger never registered' })
    // Registered later (a higher epoch or sequence), it loses, and is kept as evidence.
    const later = resolveChain(asset, [ground, genesis!], [first, await registered(ground, 3, 18)], byRegistrar)
    expect(later.owner).toBe(id(alice!))
    expect(later.registration).toMatchObject({ record: genesis!.cid, epoch: 3, seq: 17, witness: id(registrar!) })
    expect(later.conflicts).toEqual([{ prev: null, kept: genesis!.cid, rejected: [ground.cid] }])
    // A "receipt" from a key that was never the registrar counts for nothing.
    const selfWitnessed = resolveChain(asset, [ground, genesis!], [first, await registered(ground, 0, 0, mallory!)], byRegistrar)
    expect(selfWitnessed.owner).toBe(id(alice!))
  })

  it('exports a bundle that verifies offline, and fails after any one-byte change', async () => {
    const records = await chainOf(10)
    const receipts = [await registered(records[0]!)]
    const bundle = encodeBundle(asset, records, receipts, [])
    const chain = await verifyBundle(bundle)
    expect(chain.chain).toHaveLength(10)
    let failures = 0
    const positions = Array.from({ length: 200 }, (_, i) => Math.floor((i * bundle.length) / 200))
    for (const at of positions) {
      const changed = Uint8Array.from(bundle)
      changed[at] = changed[at]! ^ 0x01
      const err = await verifyBundle(changed).catch((e: unknown) => e)
      if (err instanceof ProvenanceError) failures++
      else expect.fail(`a change at byte ${at} of ${bundle.length} still verified`)
    }
    expect(failures).toBe(positions.length)
    // A record of another asset slipped in, or a missing link, fails by name.
    const stray = await verifyRecord(await signProvenance(alice!, parent, { kind: 'created', prev: null }))
    expect(((await verifyBundle(encodeBundle(asset, [...records, stray], receipts, [])).catch((e: unknown) => e)) as ProvenanceError).check).toBe('link')
    // Without its genesis record, nothing in the chain is registered.
    expect(((await verifyBundle(encodeBundle(asset, records.slice(1), receipts, [])).catch((e: unknown) => e)) as ProvenanceError).check).toBe('unregistered')
    // No registration, or one by a key the verifier does not accept: nothing counts as the genesis.
    expect(((await verifyBundle(encodeBundle(asset, records, [], [])).catch((e: unknown) => e)) as ProvenanceError).check).toBe('unregistered')
    expect(((await verifyBundle(bundle, Date.now(), async () => (r) => r.witness === id(mallory!)).catch((e: unknown) => e)) as ProvenanceError).check).toBe('unregistered')
  })
})
