import { mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, describe, expect, it } from 'vitest'
import { KeyFileError, loadOrCreateEd25519Key } from '../../attest/key-file.ts'
import { TestBed } from '../helpers/daemons.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())

describe('key file', () => {
  it('creates an Ed25519 key once, mode 0600, and loads the same key after', async () => {
    const path = join(await bed.tempDir(), 'node.key')
    const first = await loadOrCreateEd25519Key(path)
    expect(first.created).toBe(true)
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    const second = await loadOrCreateEd25519Key(path)
    expect(second.created).toBe(false)
    expect(second.looseMode).toBeUndefined()
    expect(peerIdFromPrivateKey(second.key).equals(peerIdFromPrivateKey(first.key))).toBe(true)
    expect(await readFile(path)).toEqual(Buffer.from(privateKeyToProtobuf(first.key)))
  })

  it('refuses a corrupt key file instead of making a new identity', async () => {
    const path = join(await bed.tempDir(), 'node.key')
    await writeFile(path, 'not a key', { mode: 0o600 })
    const err = await loadOrCreateEd25519Key(path).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(KeyFileError)
    expect((err as Error).message).toMatch(/key file is corrupt.*node\.key$/)
    expect(await readFile(path, 'utf8')).toBe('not a key')
  })

  it('refuses a truncated key file', async () => {
    const path = join(await bed.tempDir(), 'node.key')
    const key = await generateKeyPair('Ed25519')
    await writeFile(path, privateKeyToProtobuf(key).subarray(0, 20), { mode: 0o600 })
    await expect(loadOrCreateEd25519Key(path)).rejects.toThrow(/corrupt/)
  })

  it('refuses a key of another type', async () => {
    const path = join(await bed.tempDir(), 'node.key')
    await writeFile(path, privateKeyToProtobuf(await generateKeyPair('secp256k1')), { mode: 0o600 })
    await expect(loadOrCreateEd25519Key(path)).rejects.toThrow(/holds a secp256k1 key, expected Ed25519/)
  })

  it('reports an unreadable key path with its error code', async () => {
    const path = join(await bed.tempDir(), 'node.key')
    await mkdir(path)
    await expect(loadOrCreateEd25519Key(path)).rejects.toThrow(/cannot read key file \(EISDIR\)/)
  })

  it('reports a key readable by others', async () => {
    const path = join(await bed.tempDir(), 'node.key')
    await writeFile(path, privateKeyToProtobuf(await generateKeyPair('Ed25519')), { mode: 0o644 })
    expect((await loadOrCreateEd25519Key(path)).looseMode).toBe(0o644)
  })
})

describe('cached signing', () => {
  it('signs the same bytes as libp2p\'s key wrapper, for a buffer and a list, and honours an aborted signal', async () => {
    const path = join(await bed.tempDir(), 'node.key')
    const { key } = await loadOrCreateEd25519Key(path)
    const plain = privateKeyFromProtobuf(privateKeyToProtobuf(key))
    expect(key.sign).not.toBe(plain.sign)
    for (const message of [new Uint8Array(0), new TextEncoder().encode('a gossip message'), new Uint8Array(70_000).fill(7)]) {
      const signature = key.sign(message) as Uint8Array
      expect(signature).toEqual(new Uint8Array(await plain.sign(message)))
      expect(await key.publicKey.verify(message, signature)).toBe(true)
    }
    // A Uint8ArrayList (what a stream hands over) is signed as its bytes joined.
    const list = { subarray: () => new Uint8Array([1, 2, 3]) } as unknown as Parameters<typeof key.sign>[0]
    expect(key.sign(list)).toEqual(new Uint8Array(await plain.sign(new Uint8Array([1, 2, 3]))))
    expect(() => key.sign(new Uint8Array(1), { signal: AbortSignal.abort() })).toThrow()
  })
})
