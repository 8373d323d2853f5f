/**
 * Capability tokens at the API: on loopback the operator writes freely; an
 * API bound beyond loopback takes shard writes only with a token rooted in
 * the node's key that grants write on that shard. Reads need none.
 */
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateEd25519Key } from '../../attest/key-file.ts'
import { issueToken, signRevocation, statementCid } from '../../attest/token.ts'
import { TestBed, type TestDaemon } from '../helpers/daemons.ts'
import type { PrivateKey } from '@libp2p/interface'

const bed = new TestBed()
let open: TestDaemon
let api: string
let nodeKey: PrivateKey
afterAll(async () => bed.cleanup())

beforeAll(async () => {
  open = await bed.start({ args: ['--api', '0.0.0.0:0'] })
  api = open.api.replace('0.0.0.0', '127.0.0.1')
  // The operator holds the node key; here the test reads it from the data directory.
  nodeKey = (await loadOrCreateEd25519Key(join(open.dataDir, 'node.key'))).key
})

async function put (entity: string, token?: Uint8Array): Promise<{ status: number, code?: string }> {
  const response = await fetch(`${api}/v1/shards/default/entities/${entity}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', ...(token != null ? { authorization: `Bearer ${Buffer.from(token).toString('base64url')}` } : {}) },
    body: JSON.stringify({ components: { x: 1 } })
  })
  const body = await response.json() as { error?: { code: string } }
  return { status: response.status, ...(body.error != null ? { code: body.error.code } : {}) }
}

describe('capability tokens on the API', () => {
  it('refuses writes without a token when the API is bound beyond loopback, and still serves reads', async () => {
    expect(await put('a')).toEqual({ status: 401, code: 'TOKEN_REQUIRED' })
    expect((await fetch(`${api}/v1/shards/default`)).status).toBe(200)
  })

  it('takes a write with a token addressed to this node, from the node key or delegated from it, for that shard only', async () => {
    const client = await generateKeyPair('Ed25519')
    const clientId = peerIdFromPrivateKey(client).toString()
    const node = open.peerId
    const now = Date.now()
    const write = [{ with: 'shard:default', can: 'write' }]
    // Straight from the node key to the node: a bearer token good here and nowhere else.
    expect(await put('a', await issueToken(nodeKey, { audience: node, capabilities: write, notBefore: now - 1000, expiresAt: now + 60_000 }))).toEqual({ status: 200 })
    // To a client: not an invocation of this node by itself, so a stolen copy is no use without the client's key.
    const toClient = await issueToken(nodeKey, { audience: clientId, capabilities: write, notBefore: now - 1000, expiresAt: now + 60_000 })
    expect(await put('x', toClient)).toEqual({ status: 403, code: 'TOKEN_AUDIENCE' })
    // The client invokes: its own token, addressed to the node, with the node's as proof.
    expect(await put('b', await issueToken(client, { audience: node, capabilities: write, notBefore: now, expiresAt: now + 30_000, proofs: [toClient] }))).toEqual({ status: 200 })
    const otherShard = await issueToken(nodeKey, { audience: node, capabilities: [{ with: 'shard:w9', can: 'write' }], notBefore: now - 1000, expiresAt: now + 60_000 })
    expect(await put('c', otherShard)).toEqual({ status: 403, code: 'TOKEN_SCOPE' })
    const selfIssued = await issueToken(client, { audience: node, capabilities: write, notBefore: now - 1000, expiresAt: now + 60_000 })
    expect(await put('d', selfIssued)).toEqual({ status: 403, code: 'TOKEN_INVALID' })
    const expired = await issueToken(nodeKey, { audience: node, capabilities: write, notBefore: now - 120_000, expiresAt: now - 60_000 })
    expect(await put('e', expired)).toEqual({ status: 403, code: 'TOKEN_INVALID' })
    // Single use: taken once.
    const once = await issueToken(nodeKey, { audience: node, capabilities: write, notBefore: now - 1000, expiresAt: now + 60_000, once: true })
    expect(await put('f', once)).toEqual({ status: 200 })
    expect(await put('g', once)).toEqual({ status: 403, code: 'TOKEN_REPLAYED' })
    const entities = (await (await fetch(`${api}/v1/shards/default`)).json() as { entities: Array<{ entity: string }> }).entities.map((e) => e.entity)
    expect(entities).toEqual(['a', 'b', 'f'])
  })

  it('refuses a revoked token, and a token with a revoked proof, once the revocation is posted', async () => {
    const node = open.peerId
    const now = Date.now()
    const client = await generateKeyPair('Ed25519')
    const toClient = await issueToken(nodeKey, { audience: peerIdFromPrivateKey(client).toString(), capabilities: [{ with: 'shard:default', can: 'write' }], notBefore: now - 1000, expiresAt: now + 60_000 })
    const invocation = async (): Promise<Uint8Array> => issueToken(client, { audience: node, capabilities: [{ with: 'shard:default', can: 'write' }], notBefore: now, expiresAt: now + 30_000, proofs: [toClient] })
    expect(await put('r1', await invocation())).toEqual({ status: 200 })
    // The operator revokes what it gave the client; the revocation is signed, not a password.
    const revocation = await signRevocation(nodeKey, await statementCid(toClient))
    const posted = await fetch(`${api}/v1/tokens/revocations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${Buffer.from(await issueToken(nodeKey, { audience: node, capabilities: [{ with: 'token:*', can: 'revoke' }], notBefore: now - 1000, expiresAt: now + 60_000 })).toString('base64url')}` },
      body: JSON.stringify({ revocation: Buffer.from(revocation).toString('base64url') })
    })
    expect(posted.status).toBe(200)
    expect(await put('r2', await invocation())).toEqual({ status: 403, code: 'TOKEN_REVOKED' })
  })

  it('lets the operator write from loopback without a token when the API is on loopback', async () => {
    const local = await bed.start()
    const response = await fetch(`${local.api}/v1/shards/default/entities/z`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ components: { x: 1 } }) })
    expect(response.status).toBe(200)
  })
})
