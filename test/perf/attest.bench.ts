/**
 * Signing and verifying statements beside raw Ed25519 (node:crypto) in the
 * same run, verifying a 5-deep token chain, and verifying a 10-record
 * provenance chain (as `metagrid verify` does with a bundle). What the envelope costs on
 * top of the signature itself is canonical encoding, decoding and checks.
 */
import { generateKeyPairSync, sign, verify } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { z } from 'zod'
import { signStatement, verifyStatement } from '../../attest/statement.ts'
import { issueToken, verifyToken } from '../../attest/token.ts'
import { assetCid, encodeBundle, signProvenance, signReceipt, verifyBundle, verifyReceipt, verifyRecord, type ProvenanceRecord } from '../../attest/provenance.ts'

const N = Number(process.env.BENCH_ATTEST_N ?? 2000)

async function rate (n: number, fn: (i: number) => unknown): Promise<number> {
  const start = performance.now()
  for (let i = 0; i < n; i++) await fn(i)
  return Math.round(n / ((performance.now() - start) / 1000))
}

export async function run (): Promise<Record<string, unknown>> {
  const message = Buffer.from(JSON.stringify({ version: '0.1.0', digest: 'sha256:' + 'ab'.repeat(32), node: 'v24' }))
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const signature = sign(null, message, privateKey)
  const pub = publicKey
  const rawSign = await rate(N, () => sign(null, message, privateKey))
  const rawVerify = await rate(N, () => verify(null, message, pub, signature))

  const key = await generateKeyPair('Ed25519')
  const now = Date.now()
  const statement = { type: 'metagrid.bench/v1', subjects: [{ id: 'node' }], predicate: { version: '0.1.0', digest: 'sha256:' + 'ab'.repeat(32), node: 'v24' }, issuedAt: now, notBefore: now, expiresAt: now + 3_600_000 }
  const signed = await signStatement(key, statement)
  const predicate = z.strictObject({ version: z.string(), digest: z.string(), node: z.string() })
  const statementSign = await rate(N, async () => signStatement(key, statement))
  const statementVerify = await rate(N, async () => verifyStatement(signed, { type: 'metagrid.bench/v1', predicate, now }))

  const keys = await Promise.all(Array.from({ length: 5 }, async () => generateKeyPair('Ed25519')))
  let token = await issueToken(keys[0]!, { audience: peerIdFromPrivateKey(keys[1]!).toString(), capabilities: [{ with: 'shard:*', can: 'write' }], notBefore: now - 1000, expiresAt: now + 3_600_000 })
  for (let i = 1; i < 5; i++) {
    token = await issueToken(keys[i]!, { audience: peerIdFromPrivateKey(keys[(i + 1) % 5]!).toString(), capabilities: [{ with: 'shard:world-3', can: 'write' }], notBefore: now - 1000, expiresAt: now + 3_600_000, proofs: [token] })
  }
  const root = peerIdFromPrivateKey(keys[0]!).toString()
  const chainN = Math.max(50, Math.round(N / 10))
  const chainStart = performance.now()
  for (let i = 0; i < chainN; i++) await verifyToken(token, { now, isRoot: (issuer) => issuer === root })
  const chainMs = (performance.now() - chainStart) / chainN

  // A 10-record provenance chain: derived, then nine transfers around the five keys.
  const asset = await assetCid(new TextEncoder().encode('bench asset'))
  const records: ProvenanceRecord[] = [await verifyRecord(await signProvenance(keys[0]!, asset, { kind: 'derived', prev: null, parents: [asset] }))]
  for (let i = 1; i < 10; i++) {
    records.push(await verifyRecord(await signProvenance(keys[(i - 1) % 5]!, asset, { kind: 'transferred', prev: records.at(-1)!.cid, to: peerIdFromPrivateKey(keys[i % 5]!).toString() })))
  }
  const receipt = await signReceipt(keys[4]!, asset, { record: records[0]!.cid, epoch: 1, seq: 0 })
  const bundle = encodeBundle(asset, records, [await verifyReceipt(receipt)], [])
  const bundleStart = performance.now()
  for (let i = 0; i < chainN; i++) await verifyBundle(bundle, now)
  const bundleMs = (performance.now() - bundleStart) / chainN

  return {
    provenanceChain10: { verifyMs: Number(bundleMs.toFixed(3)), bundleBytes: bundle.byteLength },
    rawEd25519: { signPerS: rawSign, verifyPerS: rawVerify },
    statement: { signPerS: statementSign, verifyPerS: statementVerify, bytes: signed.byteLength },
    overhead: { sign: Number((rawSign / statementSign).toFixed(2)), verify: Number((rawVerify / statementVerify).toFixed(2)) },
    tokenChain5Deep: { verifyMs: Number(chainMs.toFixed(3)), bytes: token.byteLength }
  }
}
