import * as dagCbor from '@ipld/dag-cbor'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { beforeAll, describe, expect, it } from 'vitest'
import { z } from 'zod'
import { sealEnvelope } from '../../attest/envelope.ts'
import { signStatement, StatementError, verifyStatement } from '../../attest/statement.ts'
import {
  covers, issueToken, ReplayGuard, RevocationList, signRevocation, statementCid, TOKEN_TYPE, TokenError, verifyToken, type Capability
} from '../../attest/token.ts'
import type { PrivateKey } from '@libp2p/interface'

const NOW = 1_800_000_000_000
const HOUR = 3_600_000
let operator: PrivateKey
let node: PrivateKey
let client: PrivateKey
let mallory: PrivateKey
const id = (key: PrivateKey): string => peerIdFromPrivateKey(key).toString()

beforeAll(async () => {
  const keys = await Promise.all([0, 1, 2, 3].map(async () => generateKeyPair('Ed25519')))
  ;[operator, node, client, mallory] = [keys[0]!, keys[1]!, keys[2]!, keys[3]!]
})

describe('signed statements', () => {
  const predicate = z.strictObject({ version: z.string(), digest: z.string() })
  const statement = { type: 'metagrid.test/v1', subjects: [{ id: 'node-a', digest: 'bafy' }], predicate: { version: '1.0.0', digest: 'sha256:ab' }, issuedAt: NOW, notBefore: NOW, expiresAt: NOW + HOUR }

  it('verifies, and names the check that fails for each tampered field', async () => {
    const bytes = await signStatement(operator, statement)
    const ok = await verifyStatement(bytes, { type: 'metagrid.test/v1', predicate, now: NOW + 1 })
    expect(ok.predicate).toEqual(statement.predicate)
    expect(ok.signer.toString()).toBe(id(operator))

    const envelope = dagCbor.decode(bytes) as { k: Uint8Array, p: Uint8Array, s: Uint8Array, t: string }
    const payload = dagCbor.decode(envelope.p) as Record<string, unknown>
    const reseal = (changes: Record<string, unknown>): Uint8Array => dagCbor.encode({ ...envelope, p: dagCbor.encode({ ...payload, ...changes }) })
    const cases: Array<[string, Uint8Array, string]> = [
      ['predicate', reseal({ p: { version: '9.9.9', digest: 'sha256:ab' } }), 'signature'],
      ['subject', reseal({ sub: [{ id: 'node-b' }] }), 'signature'],
      ['expiry', reseal({ exp: NOW + 100 * HOUR }), 'signature'],
      ['not before', reseal({ nbf: NOW - HOUR }), 'signature'],
      ['issued at', reseal({ iat: 0 }), 'signature'],
      ['type', dagCbor.encode({ ...envelope, t: 'metagrid.other/v1' }), 'type'],
      ['key', dagCbor.encode({ ...envelope, k: (await generateKeyPair('Ed25519')).publicKey.raw }), 'signature'],
      ['signature', dagCbor.encode({ ...envelope, s: envelope.s.map((b, i) => (i === 0 ? b ^ 1 : b)) }), 'signature'],
      ['encoding', bytes.subarray(0, bytes.length - 1), 'encoding']
    ]
    for (const [field, tampered, check] of cases) {
      const err = await verifyStatement(tampered, { type: 'metagrid.test/v1', predicate, now: NOW + 1 }).catch((e: unknown) => e)
      expect(err, field).toBeInstanceOf(StatementError)
      expect((err as StatementError).check, field).toBe(check)
    }
  })

  it('refuses a statement outside its window, of the wrong signer, or whose predicate fails its schema', async () => {
    const bytes = await signStatement(operator, statement)
    const check = async (options: Partial<Parameters<typeof verifyStatement>[1]>): Promise<string> =>
      ((await verifyStatement(bytes, { type: 'metagrid.test/v1', predicate, now: NOW, ...options }).catch((e: unknown) => e)) as StatementError).check
    expect(await check({ now: NOW - HOUR })).toBe('not-yet-valid')
    expect(await check({ now: NOW + 2 * HOUR })).toBe('expired')
    expect(await check({ signer: peerIdFromPrivateKey(mallory) })).toBe('signer')
    expect(await check({ predicate: z.strictObject({ version: z.number() }) as never })).toBe('predicate')
    // A correctly signed payload with fields of the wrong shape.
    const odd = await sealEnvelope(operator, 'metagrid.test/v1', dagCbor.encode({ sub: [], p: {}, iat: 1, nbf: 1, exp: 2 }))
    expect(((await verifyStatement(odd, { type: 'metagrid.test/v1', predicate, now: 1 }).catch((e: unknown) => e)) as StatementError).check).toBe('payload')
  })
})

describe('capability tokens', () => {
  const shardWrite: Capability = { with: 'shard:world-3', can: 'write' }
  const isRoot = (issuer: string, capability: Capability): boolean => issuer === id(operator) && capability.with.startsWith('shard:')
  const window = { notBefore: NOW, expiresAt: NOW + HOUR, now: NOW }
  const verify = async (bytes: Uint8Array, extra: Partial<Parameters<typeof verifyToken>[1]> = {}): Promise<TokenError | Awaited<ReturnType<typeof verifyToken>>> =>
    verifyToken(bytes, { now: NOW + 1, isRoot, ...extra }).catch((e: unknown) => e as TokenError)

  it('verifies a delegation chain operator -> node -> client that only narrows', async () => {
    const root = await issueToken(operator, { ...window, audience: id(node), capabilities: [{ with: 'shard:*', can: '*' }] })
    const delegated = await issueToken(node, { ...window, expiresAt: NOW + HOUR / 2, audience: id(client), capabilities: [shardWrite], proofs: [root] })
    const token = await verify(delegated, { audience: id(client) })
    expect(token).not.toBeInstanceOf(TokenError)
    expect(token).toMatchObject({ issuer: id(node), audience: id(client), capabilities: [shardWrite], chain: [id(node), id(operator)] })
  })

  it('refuses escalation: a wider capability, a longer window, a proof addressed to someone else', async () => {
    const root = await issueToken(operator, { ...window, audience: id(node), capabilities: [shardWrite] })
    const wider = await issueToken(node, { ...window, audience: id(client), capabilities: [{ with: 'shard:*', can: 'write' }], proofs: [root] })
    expect(await verify(wider)).toMatchObject({ check: 'escalation' })
    const otherAbility = await issueToken(node, { ...window, audience: id(client), capabilities: [{ with: 'shard:world-3', can: 'transfer' }], proofs: [root] })
    expect(await verify(otherAbility)).toMatchObject({ check: 'escalation' })
    const longer = await issueToken(node, { ...window, expiresAt: NOW + 2 * HOUR, audience: id(client), capabilities: [shardWrite], proofs: [root] })
    expect(await verify(longer)).toMatchObject({ check: 'escalation' })
    const stolen = await issueToken(mallory, { ...window, audience: id(mallory), capabilities: [shardWrite], proofs: [root] })
    expect(await verify(stolen)).toMatchObject({ check: 'proof-audience' })
    const selfMade = await issueToken(mallory, { ...window, audience: id(client), capabilities: [shardWrite] })
    expect(await verify(selfMade)).toMatchObject({ check: 'untrusted-root' })
    const delegated = await issueToken(node, { ...window, audience: id(client), capabilities: [shardWrite], proofs: [root] })
    expect(await verify(delegated, { audience: id(mallory) })).toMatchObject({ check: 'proof-audience' })
  })

  it('refuses expired, not-yet-valid and over-deep chains, naming the link', async () => {
    const root = await issueToken(operator, { ...window, audience: id(node), capabilities: [shardWrite] })
    expect(await verify(root, { now: NOW + 2 * HOUR })).toMatchObject({ check: 'expired', depth: 0 })
    expect(await verify(root, { now: NOW - HOUR })).toMatchObject({ check: 'not-yet-valid' })
    const keys = [node, client, mallory, node, client, mallory, node]
    let token = root
    let holder = node
    for (const next of keys.slice(1)) {
      token = await issueToken(holder, { ...window, audience: id(next), capabilities: [shardWrite], proofs: [token] })
      holder = next
    }
    expect(await verify(token, { maxDepth: 3 })).toMatchObject({ check: 'depth' })
    expect(await verify(token, { maxDepth: 6 })).not.toBeInstanceOf(TokenError)
    // A proof whose signature was broken fails at its own depth.
    const envelope = dagCbor.decode(root) as Record<string, Uint8Array>
    const broken = dagCbor.encode({ ...envelope, s: envelope.s!.map((b, i) => (i === 5 ? b ^ 0xff : b)) })
    const onBroken = await issueToken(node, { ...window, audience: id(client), capabilities: [shardWrite], proofs: [broken] })
    expect(await verify(onBroken)).toMatchObject({ check: 'signature', depth: 1 })
  })

  it('stops a token early when its issuer or an issuer above it revokes it, and not when a stranger does', async () => {
    const root = await issueToken(operator, { ...window, audience: id(node), capabilities: [shardWrite] })
    const delegated = await issueToken(node, { ...window, audience: id(client), capabilities: [shardWrite], proofs: [root] })
    const cid = await statementCid(delegated)
    const stranger = new RevocationList()
    await stranger.add(await signRevocation(mallory, cid, NOW), NOW)
    expect(await verify(delegated, { revocations: stranger })).not.toBeInstanceOf(TokenError)
    const byOperator = new RevocationList()
    await byOperator.add(await signRevocation(operator, cid, NOW), NOW)
    expect(await verify(delegated, { revocations: byOperator })).toMatchObject({ check: 'revoked' })
    const rootRevoked = new RevocationList()
    await rootRevoked.add(await signRevocation(operator, await statementCid(root), NOW), NOW)
    expect(await verify(delegated, { revocations: rootRevoked })).toMatchObject({ check: 'revoked', depth: 1 })
  })

  it('refuses a single-use token presented twice, and tracks only single-use ones', async () => {
    const once = await issueToken(operator, { ...window, audience: id(client), capabilities: [shardWrite], once: true })
    const guard = new ReplayGuard()
    expect(await verify(once, { replay: guard })).toMatchObject({ once: true })
    expect(await verify(once, { replay: guard })).toMatchObject({ check: 'replayed' })
    const reusable = await issueToken(operator, { ...window, audience: id(client), capabilities: [shardWrite] })
    expect(await verify(reusable, { replay: guard })).toMatchObject({ once: false })
    expect(await verify(reusable, { replay: guard })).not.toBeInstanceOf(TokenError)
  })

  it('matches resources and abilities by exact name, prefix wildcard or *', () => {
    expect(covers({ with: 'shard:*', can: 'write' }, shardWrite)).toBe(true)
    expect(covers({ with: '*', can: '*' }, shardWrite)).toBe(true)
    expect(covers({ with: 'shard:world-3', can: 'read' }, shardWrite)).toBe(false)
    expect(covers({ with: 'asset:*', can: 'write' }, shardWrite)).toBe(false)
    expect(TOKEN_TYPE).toBe('metagrid.token/v1')
  })
})
