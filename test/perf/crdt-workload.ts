/**
 * One CRDT implementation on the world-state workload, in a process of its
 * own so each starts from a clean heap: `node --expose-gc crdt-workload.ts
 * <metagrid|yjs|automerge> [entities]`. Prints one JSON line.
 *
 * Workload: N entities with two components each (`pos` {x, y}, `hp`), every
 * component overwritten 50 times, in batches of 1,000 updates (one
 * transaction, one encoded update each). Local: make the updates and encode
 * each batch for the wire. Apply: a second replica applies every batch.
 * Each library gets the cheapest fair shape it offers: one flat map keyed
 * `entity/component` for Yjs (Y.Map) and Automerge.
 */
import * as Y from 'yjs'
import * as Automerge from '@automerge/automerge'
import { ShardDoc } from '../../storage/crdt/shard-doc.ts'
import { HybridClock } from '../../storage/crdt/hlc.ts'
import { decodePatch, encodePatch } from '../../storage/crdt/patch-codec.ts'
import { decodeSignedBatch, encodeSignedBatch, patchDigest } from '../../storage/crdt/batch.ts'
import { batchSigner, verifyBatchHeader } from '../../attest/batch-signature.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'

const ROUNDS = 50
const BATCH = 1000
const COMPONENTS = ['pos', 'hp'] as const

interface Update { entity: string, component: string, value: { x: number, y: number } | number }

function * updates (entities: number): Generator<Update> {
  for (let round = 0; round < ROUNDS; round++) {
    for (let e = 0; e < entities; e++) {
      for (const component of COMPONENTS) {
        yield { entity: `e${e}`, component, value: component === 'pos' ? { x: e + round * 0.5, y: round - e * 0.25 } : 100 - round }
      }
    }
  }
}

function batches (entities: number): Update[][] {
  const out: Update[][] = []
  let current: Update[] = []
  for (const update of updates(entities)) {
    current.push(update)
    if (current.length === BATCH) {
      out.push(current)
      current = []
    }
  }
  if (current.length > 0) out.push(current)
  return out
}

interface Implementation {
  /** Applies one batch locally and returns its encoded update. */
  local: (batch: Update[]) => Uint8Array
  /** A second replica applies the updates in order. */
  apply: (encoded: Uint8Array[]) => void
  snapshot: () => Uint8Array
  /** Both replicas agree (checked outside the timed part). */
  check: () => boolean
}

function metagrid (): Implementation {
  const a = new ShardDoc('replica-a', new HybridClock(60_000))
  const b = new ShardDoc('replica-b', new HybridClock(60_000))
  return {
    local: (batch) => {
      for (const u of batch) a.setComponent(u.entity, u.component, u.value)
      return encodePatch(a.takeDelta()!)
    },
    apply: (encoded) => { for (const bytes of encoded) b.apply(decodePatch(bytes)) },
    snapshot: () => encodePatch(a.snapshot()),
    check: () => JSON.stringify(a.entity('e7')) === JSON.stringify(b.entity('e7')) && a.entityIds().length === b.entityIds().length
  }
}

/**
 * metagrid as it runs in the daemon: each batch sealed as an origin-signed
 * batch (one Ed25519 signature and a sha-256 per batch), and each received
 * one checked (digest, signature) before it is joined.
 */
async function metagridSigned (): Promise<Implementation> {
  const key = await generateKeyPair('Ed25519')
  const origin = peerIdFromPrivateKey(key).toString()
  const signer = batchSigner(key)
  const a = new ShardDoc(origin, new HybridClock(60_000))
  const b = new ShardDoc('replica-b', new HybridClock(60_000))
  return {
    local: (batch) => {
      for (const u of batch) a.setComponent(u.entity, u.component, u.value)
      const delta = a.takeDelta()!
      const patchBytes = encodePatch(delta)
      return encodeSignedBatch(signer.seal({ shard: 'bench', epoch: 1, origin, from: delta.from!, to: delta.to!, digest: patchDigest(patchBytes) }), patchBytes)
    },
    apply: (encoded) => {
      for (const bytes of encoded) {
        const batch = decodeSignedBatch(bytes)
        if (!verifyBatchHeader(batch.header)) throw new Error('a batch does not verify')
        b.apply(batch.patch)
      }
    },
    snapshot: () => encodePatch(a.snapshot()),
    check: () => JSON.stringify(a.entity('e7')) === JSON.stringify(b.entity('e7')) && a.entityIds().length === b.entityIds().length
  }
}

function yjs (): Implementation {
  const a = new Y.Doc()
  const b = new Y.Doc()
  const mapA = a.getMap<unknown>('world')
  let last: Uint8Array | undefined
  a.on('update', (update: Uint8Array) => { last = update })
  return {
    local: (batch) => {
      a.transact(() => {
        for (const u of batch) mapA.set(`${u.entity}/${u.component}`, u.value)
      })
      return last!
    },
    apply: (encoded) => { for (const update of encoded) Y.applyUpdate(b, update) },
    snapshot: () => Y.encodeStateAsUpdate(a),
    check: () => JSON.stringify(mapA.get('e7/pos')) === JSON.stringify(b.getMap('world').get('e7/pos'))
  }
}

function automerge (): Implementation {
  let a = Automerge.from<{ world: Record<string, unknown> }>({ world: {} })
  let b = Automerge.clone(a)
  return {
    local: (batch) => {
      a = Automerge.change(a, (doc) => {
        for (const u of batch) doc.world[`${u.entity}/${u.component}`] = u.value
      })
      return Automerge.getLastLocalChange(a)!
    },
    apply: (encoded) => { [b] = Automerge.applyChanges(b, encoded) },
    snapshot: () => Automerge.save(a),
    check: () => JSON.stringify(a.world['e7/pos']) === JSON.stringify(b.world['e7/pos'])
  }
}

const name = process.argv[2] ?? 'metagrid'
const entities = Number(process.argv[3] ?? 10_000)
const implementation = ({ metagrid, 'metagrid-signed': metagridSigned, yjs, automerge } as Record<string, () => Implementation | Promise<Implementation>>)[name]
if (implementation == null) {
  process.stderr.write(`unknown implementation ${name}\n`)
  process.exit(2)
}
const gc = (globalThis as { gc?: () => void }).gc
const work = batches(entities)
const totalUpdates = work.reduce((sum, batch) => sum + batch.length, 0)
gc?.()
const heapBefore = process.memoryUsage().heapUsed
const impl = await implementation()

const localStart = performance.now()
const encoded: Uint8Array[] = []
for (const batch of work) encoded.push(impl.local(batch))
const localMs = performance.now() - localStart

const applyStart = performance.now()
impl.apply(encoded)
const applyMs = performance.now() - applyStart

const snapshotStart = performance.now()
const snapshot = impl.snapshot()
const snapshotMs = performance.now() - snapshotStart
const converged = impl.check()
const wireBytes = encoded.reduce((sum, bytes) => sum + bytes.byteLength, 0)
encoded.length = 0
gc?.()
const heapAfter = process.memoryUsage().heapUsed

process.stdout.write(`${JSON.stringify({
  implementation: name,
  entities,
  updates: totalUpdates,
  localUpdatesPerS: Math.round(totalUpdates / (localMs / 1000)),
  applyUpdatesPerS: Math.round(totalUpdates / (applyMs / 1000)),
  wireBytesPerUpdate: Number((wireBytes / totalUpdates).toFixed(2)),
  snapshotBytes: snapshot.byteLength,
  snapshotMs: Number(snapshotMs.toFixed(1)),
  // Both replicas and the snapshot are alive here; the encoded batches are not.
  heapAfterMiB: Number(((heapAfter - heapBefore) / 2 ** 20).toFixed(1)),
  converged
})}\n`)
