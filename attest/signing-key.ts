/**
 * The node key, signing at node:crypto's speed. libp2p's Ed25519 key wrapper
 * imports the raw key into a new node:crypto key object on every `sign`
 * (about two thirds of the call); gossipsub signs every message it publishes
 * with it, one per delta batch, load report and membership message. The key
 * object is built here once and `sign` uses it; Ed25519 is deterministic, so
 * the signatures are the same bytes.
 */
import { createPrivateKey, sign, type KeyObject } from 'node:crypto'
import type { Ed25519PrivateKey } from '@libp2p/interface'

/** DER prefix of an Ed25519 PKCS#8 private key; the 32-byte seed follows. */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

/** A node:crypto key object for an Ed25519 key's seed. */
export function ed25519KeyObject (key: { type: string, raw: Uint8Array }): KeyObject {
  if (key.type !== 'Ed25519') throw new TypeError(`expected an Ed25519 key, not ${key.type}`)
  return createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, key.raw.subarray(0, 32)]), format: 'der', type: 'pkcs8' })
}

/** Makes `key.sign` use a key object built once; returns the same key. */
export function withCachedSigning (key: Ed25519PrivateKey): Ed25519PrivateKey {
  const keyObject = ed25519KeyObject(key)
  key.sign = (message, options) => {
    options?.signal?.throwIfAborted()
    return new Uint8Array(sign(null, message instanceof Uint8Array ? message : message.subarray(), keyObject))
  }
  return key
}
