/**
 * Origin-signed batches for tests, made the way a node seals its own deltas
 * (p2p/sync/shard-set.ts): one signature over the header, the patch after it.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { batchSigner } from '../../attest/batch-signature.ts'
import { decodeSignedBatch, encodeSignedBatch, patchDigest, type SignedBatch } from '../../storage/crdt/batch.ts'
import { HybridClock } from '../../storage/crdt/hlc.ts'
import { encodePatch } from '../../storage/crdt/patch-codec.ts'
import { ShardDoc, type Patch } from '../../storage/crdt/shard-doc.ts'
import type { PrivateKey } from '@libp2p/interface'

/** Seals a delta of `patch.origin` with `key` (which need not be the origin's: a forged batch). */
export function seal (key: PrivateKey, shard: string, patch: Patch, epoch = 0): SignedBatch {
  const patchBytes = encodePatch(patch)
  const header = batchSigner(key).seal({ shard, epoch, origin: patch.origin!, from: patch.from!, to: patch.to!, digest: patchDigest(patchBytes) })
  return decodeSignedBatch(encodeSignedBatch(header, patchBytes))
}

/** A replica with a real key: its replica id is its peer id, so its batches verify. */
export async function keyedReplica (clock = new HybridClock(60_000)): Promise<{ key: PrivateKey, id: string, doc: ShardDoc }> {
  const key = await generateKeyPair('Ed25519')
  const id = peerIdFromPrivateKey(key).toString()
  return { key, id, doc: new ShardDoc(id, clock) }
}
