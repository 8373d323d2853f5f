/**
 * One envelope for everything metagrid signs. A payload of a named, versioned
 * type (`metagrid.load-report/v1`, `metagrid.capability/v1`, ...) is encoded
 * canonically (DAG-CBOR) and signed with Ed25519 over a pre-authentication
 * encoding in the style of DSSE:
 *
 *     "metagrid-envelope/v1" 0x00 len(type) type len(payload) payload
 *
 * so a signature made for one payload type can never verify as another, and
 * a signature made by metagrid can never be replayed into another protocol
 * that signs with the same key.
 *
 * Wire form: DAG-CBOR map `{ k: 32-byte Ed25519 public key, p: payload bytes,
 * s: 64-byte signature, t: payload type }`.
 */
import { createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import * as dagCbor from '@ipld/dag-cbor'
import * as varint from 'uint8-varint'
import { concat } from 'uint8arrays/concat'
import { equals } from 'uint8arrays/equals'
import { fromString } from 'uint8arrays/from-string'
import type { Ed25519PublicKey, PeerId, PrivateKey } from '@libp2p/interface'

const DOMAIN = fromString('metagrid-envelope/v1\u0000')

/** Which check an envelope failed, so callers and counters can say why it was refused. */
/** DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 raw key bytes follow. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')
const keyObjects = new Map<string, KeyObject>()
const MAX_CACHED_KEYS = 4096

/**
 * node:crypto's key object for a raw Ed25519 key, cached: a mesh verifies the
 * same few hundred keys over and over, and building the key object cost as
 * much as the signature check itself (libp2p's `verify` builds one per call).
 */
function keyObject (raw: Uint8Array): KeyObject {
  const id = Buffer.from(raw).toString('base64')
  let key = keyObjects.get(id)
  if (key == null) {
    if (keyObjects.size >= MAX_CACHED_KEYS) keyObjects.clear()
    key = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, raw]), format: 'der', type: 'spki' })
    keyObjects.set(id, key)
  }
  return key
}

/** Checks an Ed25519 signature over `data` by a raw 32-byte public key (its key object cached). */
export function verifyEd25519 (publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.byteLength !== 32 || signature.byteLength !== 64) return false
  return cryptoVerify(null, data, keyObject(publicKey), signature)
}

export type EnvelopeCheck = 'size' | 'encoding' | 'key' | 'type' | 'signature' | 'signer'

/** A verification that failed, naming the check: the base of every attest/ error. */
export class CheckError<C extends string> extends Error {
  static override name = 'CheckError'
  override name = 'CheckError'
  readonly check: C
  /** The message without the check in front. */
  readonly detail: string
  constructor (check: C, message: string) {
    super(`${check}: ${message}`)
    this.check = check
    this.detail = message
  }
}

export class EnvelopeError extends CheckError<EnvelopeCheck> {
  static override name = 'EnvelopeError'
  override name = 'EnvelopeError'
}

export interface Envelope {
  payloadType: string
  payload: Uint8Array
  publicKey: Ed25519PublicKey
  signature: Uint8Array
  /** The signer's peer id, derived from its key. */
  signer: PeerId
}

function lengthPrefixed (bytes: Uint8Array): Uint8Array {
  return concat([varint.encode(bytes.byteLength), bytes])
}

/** The exact bytes an envelope signature covers. */
export function signingInput (payloadType: string, payload: Uint8Array): Uint8Array {
  return concat([DOMAIN, lengthPrefixed(fromString(payloadType)), lengthPrefixed(payload)])
}

export async function sealEnvelope (key: PrivateKey, payloadType: string, payload: Uint8Array): Promise<Uint8Array> {
  if (key.type !== 'Ed25519') throw new EnvelopeError('key', `only Ed25519 keys sign envelopes, not ${key.type}`)
  const signature = await key.sign(signingInput(payloadType, payload))
  return dagCbor.encode({ k: key.publicKey.raw, p: payload, s: signature, t: payloadType })
}

export interface OpenOptions {
  /** Refuse envelopes larger than this many bytes before decoding anything. */
  maxBytes: number
  /** The payload types the caller accepts. */
  payloadTypes: readonly string[]
}

function isBytes (value: unknown, length?: number): value is Uint8Array {
  return value instanceof Uint8Array && (length == null || value.byteLength === length)
}

/**
 * Decodes and verifies an envelope. Throws EnvelopeError naming the failed
 * check; returns the envelope only when every check passed.
 */
export async function openEnvelope (bytes: Uint8Array, options: OpenOptions): Promise<Envelope> {
  if (bytes.byteLength > options.maxBytes) throw new EnvelopeError('size', `${bytes.byteLength} bytes, at most ${options.maxBytes} allowed`)
  let decoded: unknown
  try {
    decoded = dagCbor.decode(bytes)
  } catch (err) {
    throw new EnvelopeError('encoding', `not DAG-CBOR: ${(err as Error).message}`)
  }
  if (decoded == null || typeof decoded !== 'object' || Array.isArray(decoded)) throw new EnvelopeError('encoding', 'not a map')
  const { k, p, s, t, ...extra } = decoded as Record<string, unknown>
  if (Object.keys(extra).length > 0) throw new EnvelopeError('encoding', `unexpected fields ${Object.keys(extra).join(', ')}`)
  if (typeof t !== 'string' || !isBytes(p) || !isBytes(k) || !isBytes(s)) throw new EnvelopeError('encoding', 'missing or mistyped field')
  if (!equals(dagCbor.encode(decoded), bytes)) throw new EnvelopeError('encoding', 'not canonical DAG-CBOR')
  if (!options.payloadTypes.includes(t)) throw new EnvelopeError('type', `payload type ${JSON.stringify(t.slice(0, 64))} is not one of ${options.payloadTypes.join(', ')}`)
  if (k.byteLength !== 32) throw new EnvelopeError('key', `expected a 32-byte Ed25519 public key, got ${k.byteLength} bytes`)
  if (s.byteLength !== 64) throw new EnvelopeError('signature', `expected a 64-byte signature, got ${s.byteLength} bytes`)
  let publicKey: Ed25519PublicKey
  try {
    publicKey = publicKeyFromRaw(k) as Ed25519PublicKey
  } catch (err) {
    throw new EnvelopeError('key', (err as Error).message)
  }
  if (!verifyEd25519(k, signingInput(t, p), s)) throw new EnvelopeError('signature', 'does not verify')
  return { payloadType: t, payload: p, publicKey, signature: s, signer: peerIdFromPublicKey(publicKey) }
}
