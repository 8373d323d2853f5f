/**
 * Origin-signed delta batches: what a replica's own operations look like on
 * every path (gossip, anti-entropy, the log), so a peer that relays another
 * replica's operations can never speak for it.
 *
 * A batch is one delta (one group commit of one replica) with a header the
 * origin signs:
 *
 *   header   shard, epoch, origin, from, to, sha-256 of the patch bytes, Ed25519 signature
 *   batch    0x02, varuint header length, header, patch bytes
 *
 * The signature covers "metagrid-delta/v1" 0x00 and every header field but
 * itself, so it binds the operations (through the digest) to one shard, one
 * lease epoch (the fencing token the origin wrote under) and one range of the
 * origin's dots. The header alone is a *frontier proof*: the origin's own
 * word that it made operations up to `to`, which bounds what a snapshot may
 * claim about that origin. One signature per batch, not per operation: a
 * group commit of a thousand writes costs one signature.
 *
 * The signature itself is made and checked in attest/ (batch-signature.ts);
 * this file is only the bytes.
 */
import { createHash } from 'node:crypto'
import { CodecError, Decoder, Encoder } from './codec.ts'
import { decodePatch } from './patch-codec.ts'
import { MAX_NAME_LENGTH, type Patch } from './shard-doc.ts'

/** First byte of a signed batch; a bare patch starts with its own version (1). */
export const SIGNED_BATCH_TAG = 2
const DOMAIN = new TextEncoder().encode('metagrid-delta/v1\u0000')
const DIGEST_BYTES = 32
const SIGNATURE_BYTES = 64
/** A header is a few hundred bytes at most; a longer length is garbage. */
const MAX_HEADER_BYTES = 1024

export interface BatchTerms {
  shard: string
  /** Lease epoch the origin wrote under (0 where a shard has no leases). */
  epoch: number
  origin: string
  from: number
  to: number
  /** sha-256 of the patch bytes. */
  digest: Uint8Array
}

export interface BatchHeader extends BatchTerms {
  signature: Uint8Array
  /** The encoded header, as signed and as relayed: a frontier proof on its own. */
  bytes: Uint8Array
}

export interface SignedBatch {
  header: BatchHeader
  patch: Patch
  patchBytes: Uint8Array
  /** The whole batch as it travels and is logged. */
  bytes: Uint8Array
}

export function patchDigest (patchBytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(patchBytes).digest())
}

function writeTerms (e: Encoder, terms: BatchTerms): void {
  e.writeString(terms.shard)
  e.writeVarUint(terms.epoch)
  e.writeString(terms.origin)
  e.writeVarUint(terms.from)
  e.writeVarUint(terms.to)
  e.writeBytesRaw(terms.digest)
}

/** The exact bytes the origin signs. */
export function batchSigningInput (terms: BatchTerms): Uint8Array {
  const e = new Encoder(DOMAIN.length + 160)
  e.writeBytesRaw(DOMAIN)
  writeTerms(e, terms)
  return e.finish()
}

export function encodeBatchHeader (terms: BatchTerms, signature: Uint8Array): Uint8Array {
  if (signature.byteLength !== SIGNATURE_BYTES) throw new CodecError(`a batch signature is ${SIGNATURE_BYTES} bytes`)
  const e = new Encoder(224)
  writeTerms(e, terms)
  e.writeBytesRaw(signature)
  return e.finish()
}

function readName (d: Decoder, what: string): string {
  const value = d.readString()
  if (value.length === 0 || value.length > MAX_NAME_LENGTH) throw new CodecError(`${what} must be 1 to ${MAX_NAME_LENGTH} characters`)
  return value
}

/** Decodes a header (a frontier proof); CodecError on anything malformed. The signature is not checked here. */
export function decodeBatchHeader (bytes: Uint8Array): BatchHeader {
  if (bytes.byteLength > MAX_HEADER_BYTES) throw new CodecError(`a batch header of ${bytes.byteLength} bytes is too long`)
  const d = new Decoder(bytes)
  const shard = readName(d, 'shard id')
  const epoch = d.readVarUint()
  const origin = readName(d, 'origin')
  const from = d.readVarUint()
  const to = d.readVarUint()
  if (from < 1 || to < from) throw new CodecError(`bad dot range ${from}..${to}`)
  const digest = d.readFixed(DIGEST_BYTES)
  const signature = d.readFixed(SIGNATURE_BYTES)
  d.end()
  return { shard, epoch, origin, from, to, digest, signature, bytes }
}

/** Seals a patch with its header: the batch as it is gossiped, relayed and logged. */
export function encodeSignedBatch (headerBytes: Uint8Array, patchBytes: Uint8Array): Uint8Array {
  const e = new Encoder(headerBytes.length + patchBytes.length + 8)
  e.writeByte(SIGNED_BATCH_TAG)
  e.writeBytes(headerBytes)
  e.writeBytesRaw(patchBytes)
  return e.finish()
}

/**
 * Decodes a signed batch and checks that header and patch agree: a delta, of
 * the header's origin and range, whose bytes hash to the digest. The
 * signature is not checked here (attest/batch-signature.ts does). CodecError
 * on anything else.
 */
export function decodeSignedBatch (bytes: Uint8Array): SignedBatch {
  const d = new Decoder(bytes)
  if (d.readByte() !== SIGNED_BATCH_TAG) throw new CodecError('not a signed batch')
  const header = decodeBatchHeader(d.readBytes())
  const patchBytes = d.readRest()
  const digest = patchDigest(patchBytes)
  if (!digest.every((byte, i) => byte === header.digest[i])) throw new CodecError('the patch does not match the digest its header signs')
  const patch = decodePatch(patchBytes)
  if (patch.kind !== 'delta') throw new CodecError('a signed batch carries a delta')
  if (patch.origin !== header.origin || patch.from !== header.from || patch.to !== header.to) {
    throw new CodecError(`the header signs ${header.origin} ${header.from}..${header.to}, the patch is ${patch.origin ?? '?'} ${patch.from ?? 0}..${patch.to ?? 0}`)
  }
  return { header, patch, patchBytes, bytes }
}

/** The terms of a header, for signing and checking. */
export function termsOf (header: BatchHeader): BatchTerms {
  return { shard: header.shard, epoch: header.epoch, origin: header.origin, from: header.from, to: header.to, digest: header.digest }
}
