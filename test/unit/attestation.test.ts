import * as dagCbor from '@ipld/dag-cbor'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { AttestationError, mayHost, signAttestation, signMembership, trustOf, verifyAttestation, type AttestationBody } from '../../attest/attestation.ts'
import { codeDigest, configDigest } from '../../daemon/attestation.ts'
import { configSchema } from '../../daemon/config/schema.ts'
import type { PrivateKey } from '@libp2p/interface'

const [node, operator, other] = await Promise.all([0, 1, 2].map(async () => generateKeyPair('Ed25519')))
const id = (key: PrivateKey): string => peerIdFromPrivateKey(key).toString()
const NOW = Date.now()
const DAY = 86_400_000
const body = (membership: Uint8Array | null): AttestationBody => ({
  software: { name: 'metagrid', version: '0.1.0', codeDigest: `sha256:${'a'.repeat(64)}` },
  configDigest: `sha256:${'b'.repeat(64)}`,
  runtime: { node: 'v24.21.0', os: 'linux 6.18', arch: 'x64' },
  hardware: { cores: 2, memoryMiB: 24_000, accelerators: [] },
  quote: { kind: 'none', reason: 'software-only: no hardware quote hook is configured' },
  membership
})

async function check (bytes: Uint8Array, now = NOW): Promise<string> {
  return verifyAttestation(bytes, now).then(() => 'valid', (err: unknown) => (err instanceof AttestationError ? err.check : `other: ${String(err)}`))
}

describe('attestation and membership certificate', () => {
  it('verifies, carries the operator its certificate proves, and names the check each tampered field fails', async () => {
    const certificate = await signMembership(operator!, id(operator!), id(node!), NOW, 30 * DAY)
    const bytes = await signAttestation(node!, id(node!), body(certificate), NOW, DAY)
    const verified = await verifyAttestation(bytes, NOW)
    expect(verified).toMatchObject({ node: id(node!), operator: id(operator!), quote: { kind: 'none' } })

    const envelope = dagCbor.decode(bytes) as { k: Uint8Array, p: Uint8Array, s: Uint8Array, t: string }
    const payload = dagCbor.decode(envelope.p) as { p: Record<string, unknown>, sub: unknown, exp: number }
    const reseal = (changes: Record<string, unknown>): Uint8Array => dagCbor.encode({ ...envelope, p: dagCbor.encode({ ...payload, ...changes }) })
    const field = (name: string, value: unknown): Uint8Array => reseal({ p: { ...payload.p, [name]: value } })
    const cases: Array<[string, Uint8Array, string]> = [
      ['software', field('software', { name: 'metagrid', version: '0.1.1', codeDigest: `sha256:${'c'.repeat(64)}` }), 'signature'],
      ['configDigest', field('configDigest', `sha256:${'d'.repeat(64)}`), 'signature'],
      ['runtime', field('runtime', { node: 'v20.0.0', os: 'linux', arch: 'x64' }), 'signature'],
      ['hardware', field('hardware', { cores: 64, memoryMiB: 1, accelerators: ['H100'] }), 'signature'],
      ['quote', field('quote', { kind: 'tpm2', evidence: 'AAAA', nonce: `sha256:${'e'.repeat(64)}` }), 'signature'],
      ['membership', field('membership', null), 'signature'],
      ['subject', reseal({ sub: [{ id: id(other!) }] }), 'signature'],
      ['expiry', reseal({ exp: payload.exp + DAY }), 'signature'],
      ['key', dagCbor.encode({ ...envelope, k: other!.publicKey.raw }), 'signature'],
      ['type', dagCbor.encode({ ...envelope, t: 'metagrid.membership/v1' }), 'type'],
      ['signature', dagCbor.encode({ ...envelope, s: envelope.s.map((b, i) => (i === 3 ? b ^ 1 : b)) }), 'signature']
    ]
    for (const [name, tampered, expected] of cases) expect(await check(tampered), name).toBe(expected)
    expect(await check(bytes, NOW + 2 * DAY)).toBe('expired')
  })

  it('refuses a certificate that is tampered, expired, for another node, or not signed by the operator it names', async () => {
    const attest = async (membership: Uint8Array): Promise<string> => check(await signAttestation(node!, id(node!), body(membership), NOW, DAY))
    const good = await signMembership(operator!, id(operator!), id(node!), NOW, 30 * DAY)
    const envelope = dagCbor.decode(good) as { k: Uint8Array, p: Uint8Array, s: Uint8Array, t: string }
    const payload = dagCbor.decode(envelope.p) as { p: Record<string, unknown> }
    const tamper = (p: Record<string, unknown>): Uint8Array => dagCbor.encode({ ...envelope, p: dagCbor.encode({ ...payload, p }) })
    expect(await attest(tamper({ ...payload.p, operator: id(other!) }))).toBe('certificate')
    expect(await attest(tamper({ ...payload.p, node: id(other!) }))).toBe('certificate')
    expect(await attest(dagCbor.encode({ ...envelope, s: envelope.s.map((b, i) => (i === 0 ? b ^ 1 : b)) }))).toBe('certificate')
    expect(await attest(await signMembership(operator!, id(operator!), id(other!), NOW, DAY))).toBe('certificate')
    expect(await attest(await signMembership(other!, id(operator!), id(node!), NOW, DAY))).toBe('certificate')
    expect(await attest(await signMembership(operator!, id(operator!), id(node!), NOW - 10 * DAY, DAY))).toBe('certificate')
  })

  it('decides who may host under the federation policy', async () => {
    const certified = await verifyAttestation(await signAttestation(node!, id(node!), body(await signMembership(operator!, id(operator!), id(node!), NOW, DAY)), NOW, DAY), NOW)
    const bare = await verifyAttestation(await signAttestation(node!, id(node!), body(null), NOW, DAY), NOW)
    const open = { trustedOperators: new Set<string>(), acceptedCodeDigests: new Set<string>() }
    const federated = { trustedOperators: new Set([id(operator!)]), acceptedCodeDigests: new Set<string>() }
    expect(trustOf(null, open)).toBe('open-mesh')
    expect(trustOf(certified, federated)).toBe('trusted')
    expect(trustOf(bare, federated)).toBe('no-operator')
    expect(trustOf(null, federated)).toBe('no-attestation')
    expect(trustOf(certified, { trustedOperators: new Set([id(other!)]), acceptedCodeDigests: new Set() })).toBe('unknown-operator')
    expect(trustOf(certified, { ...federated, acceptedCodeDigests: new Set([`sha256:${'f'.repeat(64)}`]) })).toBe('code-not-accepted')
    expect([mayHost('trusted'), mayHost('open-mesh'), mayHost('unknown-operator'), mayHost('no-attestation')]).toEqual([true, true, false, false])
  })

  it('measures the installed code and the config with stable digests that leave secrets out', async () => {
    const a = await codeDigest()
    expect(a).toMatch(/^sha256:[0-9a-f]{64}$/)
    expect(await codeDigest()).toBe(a)
    const config = configSchema.parse({ dataDir: '/d', listen: ['/ip4/0.0.0.0/tcp/0'], announce: [], api: '127.0.0.1:7311', bootstrap: [], logLevel: 'info', logFormat: 'json' })
    const withSecret = { ...config, federation: { ...config.federation, privateNetworkKeyFile: '/etc/metagrid/swarm.key' } }
    expect(configDigest(withSecret)).toBe(configDigest(config))
    expect(configDigest({ ...config, region: 'DE' })).not.toBe(configDigest(config))
  })
})
