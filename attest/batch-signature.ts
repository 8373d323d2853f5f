/**
 * Signatures on delta batches (storage/crdt/batch.ts): made once per group
 * commit with the node key, checked by every receiver against the origin's
 * own key, which an Ed25519 peer id carries. node:crypto signs with a key
 * object built once (attest/signing-key.ts), at about 25,000 signatures a
 * second on one core.
 */
import { sign } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { batchSigningInput, encodeBatchHeader, type BatchHeader, type BatchTerms } from '../storage/crdt/batch.ts'
import { verifyEd25519 } from './envelope.ts'
import type { PrivateKey } from '@libp2p/interface'
import { ed25519KeyObject } from './signing-key.ts'

const originKeys = new Map<string, Uint8Array | null>()
/** Origins whose keys are kept parsed; past it the cache starts over (a mesh has far fewer writers per node). */
const MAX_CACHED_ORIGINS = 4096

export interface BatchSigner {
  /** Signs a batch's terms; returns the encoded header (the frontier proof). */
  seal: (terms: BatchTerms) => Uint8Array
}

export function batchSigner (key: PrivateKey): BatchSigner {
  const keyObject = ed25519KeyObject(key)
  return {
    seal: (terms) => encodeBatchHeader(terms, new Uint8Array(sign(null, batchSigningInput(terms), keyObject)))
  }
}

/** The raw Ed25519 key a peer id carries, or null when the id is not an Ed25519 peer id. */
function originKey (origin: string): Uint8Array | null {
  let key = originKeys.get(origin)
  if (key === undefined) {
    try {
      const peerId = peerIdFromString(origin)
      key = peerId.type === 'Ed25519' && peerId.publicKey != null ? peerId.publicKey.raw : null
    } catch {
      key = null
    }
    if (originKeys.size >= MAX_CACHED_ORIGINS) originKeys.clear()
    originKeys.set(origin, key)
  }
  return key
}

/** Whether the header's signature is its origin's, over exactly its terms. */
export function verifyBatchHeader (header: BatchHeader): boolean {
  const key = originKey(header.origin)
  return key != null && verifyEd25519(key, batchSigningInput(header), header.signature)
}
