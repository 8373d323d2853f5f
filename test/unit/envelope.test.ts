import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { EnvelopeError, openEnvelope, sealEnvelope } from '../../attest/envelope.ts'

const key = await generateKeyPair('Ed25519')
const other = await generateKeyPair('Ed25519')
const TYPE = 'metagrid.test/v1'
const open = async (bytes: Uint8Array): Promise<unknown> => openEnvelope(bytes, { maxBytes: 4096, payloadTypes: [TYPE] })

async function failedCheck (bytes: Uint8Array, options = { maxBytes: 4096, payloadTypes: [TYPE] }): Promise<string> {
  const err = await openEnvelope(bytes, options).then(() => undefined, (e: unknown) => e)
  expect(err).toBeInstanceOf(EnvelopeError)
  return (err as EnvelopeError).check
}

function rewrite (bytes: Uint8Array, change: (map: Record<string, unknown>) => void): Uint8Array {
  const map = dagCbor.decode(bytes) as Record<string, unknown>
  change(map)
  return dagCbor.encode(map)
}

describe('signed envelope', () => {
  it('round-trips and names the signer', async () => {
    const sealed = await sealEnvelope(key, TYPE, Uint8Array.of(1, 2, 3))
    const envelope = await openEnvelope(sealed, { maxBytes: 4096, payloadTypes: [TYPE] })
    expect([...envelope.payload]).toEqual([1, 2, 3])
    expect(envelope.payloadType).toBe(TYPE)
    expect(envelope.signer.equals(peerIdFromPrivateKey(key))).toBe(true)
  })

  it('names the check each tampered field fails', async () => {
    const sealed = await sealEnvelope(key, TYPE, Uint8Array.of(1, 2, 3))
    expect(await failedCheck(rewrite(sealed, (m) => { m.p = Uint8Array.of(1, 2, 4) }))).toBe('signature')
    expect(await failedCheck(rewrite(sealed, (m) => { m.k = other.publicKey.raw }))).toBe('signature')
    expect(await failedCheck(rewrite(sealed, (m) => { (m.s as Uint8Array)[0]! ^= 1 }))).toBe('signature')
    expect(await failedCheck(rewrite(sealed, (m) => { m.t = 'metagrid.other/v1' }))).toBe('type')
    expect(await failedCheck(rewrite(sealed, (m) => { m.k = Uint8Array.of(1, 2) }))).toBe('key')
    expect(await failedCheck(rewrite(sealed, (m) => { m.x = 1 }))).toBe('encoding')
    expect(await failedCheck(rewrite(sealed, (m) => { delete m.s }))).toBe('encoding')
    expect(await failedCheck(sealed, { maxBytes: 10, payloadTypes: [TYPE] })).toBe('size')
  })

  it('refuses a signature made for another payload type, even with the same bytes', async () => {
    const sealed = await sealEnvelope(key, 'metagrid.other/v1', Uint8Array.of(9))
    const relabelled = rewrite(sealed, (m) => { m.t = TYPE })
    expect(await failedCheck(relabelled)).toBe('signature')
  })

  it('refuses non-canonical encodings of a valid envelope', async () => {
    const sealed = await sealEnvelope(key, TYPE, Uint8Array.of(1))
    // Same map, but the first key's length written in a longer form than needed.
    const noncanonical = new Uint8Array([sealed[0]!, 0x78, 0x01, ...sealed.subarray(2)])
    expect(await failedCheck(noncanonical)).toBe('encoding')
  })

  it('rejects any garbage with an EnvelopeError and nothing else', async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (bytes) => {
      const err = await open(bytes).then(() => undefined, (e: unknown) => e)
      return err instanceof EnvelopeError
    }), { numRuns: 500 })
  })
})
