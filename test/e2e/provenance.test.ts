/**
 * Asset provenance and tokens through real daemons and the real CLI: an asset
 * created on one node is transferred to the other and to a client key, the
 * chain replicates, a client's own signed transfer is taken (with a token,
 * on an API bound beyond loopback), a double transfer is resolved and kept
 * as evidence, and an exported bundle verifies offline with `metagrid
 * verify` and fails after a one-byte change.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadOrCreateEd25519Key } from '../../attest/key-file.ts'
import { signProvenance } from '../../attest/provenance.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { getJson, runCli, TestBed, waitFor, type TestDaemon } from '../helpers/daemons.ts'

const bed = new TestBed()
let a: TestDaemon
let b: TestDaemon
/** node b's API on its non-loopback binding: every write there needs a token. */
let bApi: string
let dir: string

const metagrid = runCli

async function post (api: string, path: string, body: unknown, token?: string): Promise<{ status: number, json: any }> {
  const response = await fetch(`${api}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...(token != null ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) })
  return { status: response.status, json: await response.json() }
}

/** Placement elects the ledger's registrar; a one-cell world keeps the rest of it small. */
const PLACEMENT = {
  METAGRID_PLACEMENT_WORLD_MAX_X: '100',
  METAGRID_PLACEMENT_WORLD_MAX_Y: '100',
  METAGRID_PLACEMENT_WORLD_CELL_SIZE: '100',
  METAGRID_PLACEMENT_SETTLE_MS: '1000',
  METAGRID_PLACEMENT_TICK_MS: '500'
}

beforeAll(async () => {
  a = await bed.start({ env: PLACEMENT })
  b = await bed.start({ args: ['--bootstrap', a.addrs[0]!, '--api', '0.0.0.0:0'], env: PLACEMENT })
  bApi = b.api.replace('0.0.0.0', '127.0.0.1')
  dir = await bed.tempDir()
  await waitFor('the two nodes to connect', async () => (await getJson(a.api, '/v1/status')).peers === 1)
  // Both nodes agree who the ledger's registrar is.
  await waitFor('a registrar both nodes accept', async () => {
    const holders = await Promise.all([a.api, bApi].map(async (api) => (await getJson(api, '/v1/placement')).shards.find((s: { shard: string }) => s.shard === 'sys.ledger')?.lease))
    return holders.every((l) => l?.valid === true && l.holder === holders[0]?.holder)
  }, 60_000)
}, 90_000)

afterAll(async () => bed.cleanup())

describe('asset provenance', () => {
  let asset: string

  it('creates, transfers and licenses an asset; the chain replicates to the other node', async () => {
    const created = await post(a.api, '/v1/assets', { data: Buffer.from('a castle, in glTF').toString('base64') })
    expect(created.status).toBe(200)
    asset = created.json.asset
    // Registered once: another key's created record for it, through the other node, is refused.
    const [other] = await Promise.all([generateKeyPair('Ed25519')])
    const claim = await signProvenance(other!, asset, { kind: 'created', prev: null })
    expect((await post(a.api, `/v1/assets/${asset}/records`, { record: Buffer.from(claim).toString('base64') })).json.error.code).toBe('ALREADY_REGISTERED')
    expect(asset).toMatch(/^bafk/)
    expect((await post(a.api, `/v1/assets/${asset}/license`, { to: b.peerId, licence: 'CC-BY-4.0' })).status).toBe(200)
    expect((await post(a.api, `/v1/assets/${asset}/transfer`, { to: b.peerId })).status).toBe(200)
    // a no longer owns it.
    expect((await post(a.api, `/v1/assets/${asset}/transfer`, { to: a.peerId })).json.error.code).toBe('NOT_OWNER')
    const chain = await waitFor('the chain on node b', async () => {
      const c = await getJson(bApi, `/v1/assets/${asset}/provenance`)
      return c.chain.length === 3 ? c : undefined
    })
    expect(chain.owner).toBe(b.peerId)
    expect(chain.chain.map((s: { kind: string }) => s.kind)).toEqual(['created', 'licensed', 'transferred'])
    expect(chain.licences[0]).toMatchObject({ to: b.peerId, licence: 'CC-BY-4.0' })
  })

  it('takes a client-signed transfer only with a token, and resolves a double transfer by the documented rule', async () => {
    const clientPath = join(dir, 'client.key')
    const made = await metagrid(['key', 'new', clientPath])
    expect(made.code).toBe(0)
    const clientId = made.stdout.trim()
    const client = (await loadOrCreateEd25519Key(clientPath)).key
    // b owns the asset; its API is bound beyond loopback, so even its operator's transfer needs a token, addressed to b.
    const issued = await metagrid(['token', 'issue', '--key', join(b.dataDir, 'node.key'), '--audience', clientId, '--cap', `asset:${asset}=transfer`, '--ttl', '10m'])
    expect(issued.code).toBe(0)
    const toClient = issued.stdout.trim()
    // The client invokes b with it: its own token to b, the node's as proof.
    const token = (await metagrid(['token', 'issue', '--key', clientPath, '--audience', b.peerId, '--cap', `asset:${asset}=transfer`, '--ttl', '5m', '--proof', toClient])).stdout.trim()
    expect((await post(bApi, `/v1/assets/${asset}/transfer`, { to: clientId })).json.error.code).toBe('TOKEN_REQUIRED')
    expect((await post(bApi, `/v1/assets/${asset}/transfer`, { to: clientId }, toClient)).json.error.code).toBe('TOKEN_AUDIENCE')
    const wrongScope = (await metagrid(['token', 'issue', '--key', join(b.dataDir, 'node.key'), '--audience', b.peerId, '--cap', 'asset:bafkother=transfer'])).stdout.trim()
    expect((await post(bApi, `/v1/assets/${asset}/transfer`, { to: clientId }, wrongScope)).json.error.code).toBe('TOKEN_SCOPE')
    expect((await post(bApi, `/v1/assets/${asset}/transfer`, { to: clientId }, token)).status).toBe(200)

    // The client now signs two transfers of the same asset, to a and to b.
    const head = (await getJson(bApi, `/v1/assets/${asset}/provenance`)).chain.at(-1).cid
    const toA = await signProvenance(client, asset, { kind: 'transferred', prev: head, to: a.peerId })
    const toB = await signProvenance(client, asset, { kind: 'transferred', prev: head, to: b.peerId })
    const again = async (): Promise<string> => (await metagrid(['token', 'issue', '--key', clientPath, '--audience', b.peerId, '--cap', `asset:${asset}=transfer`, '--ttl', '5m', '--proof', toClient])).stdout.trim()
    for (const record of [toA, toB]) expect((await post(bApi, `/v1/assets/${asset}/records`, { record: Buffer.from(record).toString('base64') }, await again())).status).toBe(200)
    // A record about another asset, or not signed at all, is refused by name.
    const garbage = await post(bApi, `/v1/assets/${asset}/records`, { record: Buffer.from('not a record').toString('base64') }, await again())
    expect(garbage.status).toBe(400)
    expect(garbage.json.error.code).toBe('BAD_RECORD')

    const chain = await waitFor('both transfers on node a', async () => {
      const c = await getJson(a.api, `/v1/assets/${asset}/provenance`)
      return c.conflicts.length === 1 ? c : undefined
    })
    const [kept, rejected] = [chain.conflicts[0].kept, chain.conflicts[0].rejected[0]]
    expect(kept < rejected).toBe(true)
    expect(chain.chain.at(-1).cid).toBe(kept)
    expect([a.peerId, b.peerId]).toContain(chain.owner)
    // The same answer on both nodes.
    expect((await getJson(bApi, `/v1/assets/${asset}/provenance`)).owner).toBe(chain.owner)

    const shown = await metagrid(['provenance', asset, '--api', a.api])
    expect(shown.code).toBe(0)
    expect(shown.stdout).toMatch(new RegExp(`owner +${chain.owner as string}`))
  })

  it('exports a bundle that `metagrid verify` accepts offline, and rejects after a one-byte change', async () => {
    const file = join(dir, 'castle.provenance')
    const exported = await metagrid(['provenance', 'export', asset, '--out', file, '--api', a.api])
    expect(exported.code).toBe(0)
    const ok = await metagrid(['verify', file, '--json'])
    expect(ok.code).toBe(0)
    const verified = JSON.parse(ok.stdout)
    expect(verified).toMatchObject({ valid: true, asset })
    // The registrar checked against the ledger lease the bundle carries; pinned to another key, nothing counts.
    expect(verified.registration.witness).toMatch(/^12D3KooW/)
    const pinned = await metagrid(['verify', file, '--witness', a.peerId === verified.registration.witness ? b.peerId : a.peerId])
    expect(pinned.code).toBe(1)
    expect(pinned.stderr).toContain('unregistered')
    // An asset this node knows nothing of has no bundle: exit 1 and nothing written.
    const unknown = await metagrid(['provenance', 'export', 'bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy', '--out', join(dir, 'nothing'), '--api', a.api])
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toContain('UNKNOWN_ASSET')
    await expect(readFile(join(dir, 'nothing'))).rejects.toThrow()
    const bytes = await readFile(file)
    bytes[Math.floor(bytes.length / 2)]! ^= 0x20
    await writeFile(file, bytes)
    const bad = await metagrid(['verify', file])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/^invalid bundle: (signature|encoding|bundle|payload|predicate|asset|link|type|key): /)
  })

  it('issues, inspects and verifies tokens on the command line, naming the failed check', async () => {
    const key = join(a.dataDir, 'node.key')
    const token = (await metagrid(['token', 'issue', '--key', key, '--audience', b.peerId, '--cap', 'shard:default=write', '--ttl', '5m'])).stdout.trim()
    const inspected = JSON.parse((await metagrid(['token', 'inspect', token])).stdout)
    expect(inspected).toMatchObject({ type: 'metagrid.token/v1', audience: b.peerId, capabilities: [{ with: 'shard:default', can: 'write' }] })
    const ok = await metagrid(['token', 'verify', token, '--root', a.peerId])
    expect(ok.code).toBe(0)
    expect(ok.stdout).toContain('write on shard:default')
    const untrusted = await metagrid(['token', 'verify', token, '--root', b.peerId])
    expect(untrusted.code).toBe(1)
    expect(untrusted.stderr).toContain('untrusted-root')
    // A delegation that widens what it was given is refused.
    const wider = (await metagrid(['token', 'issue', '--key', join(b.dataDir, 'node.key'), '--audience', a.peerId, '--cap', 'shard:*=write', '--proof', token])).stdout.trim()
    const escalated = await metagrid(['token', 'verify', wider, '--root', a.peerId])
    expect(escalated.code).toBe(1)
    expect(escalated.stderr).toContain('escalation')
    expect((await metagrid(['token', 'issue', '--key', key, '--audience', b.peerId, '--cap', 'nonsense'])).code).toBe(2)
  })
})
