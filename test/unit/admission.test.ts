/**
 * The admission layer on its own, against a real shard store: batches are
 * taken only when their origin signed them, snapshots only as far as their
 * origins signed, and every refusal has a bounded code. Property: random
 * honest histories with hostile insertions (forged batches, poisoned
 * snapshots) converge to the honest state.
 */
import { afterAll, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { Admission } from '../../p2p/admission/admission.ts'
import { Refusal } from '../../p2p/admission/refusal.ts'
import { Database, SUBLEVELS } from '../../storage/database.ts'
import { ShardStore } from '../../storage/shard-store.ts'
import { DotContext } from '../../storage/crdt/dots.ts'
import { HybridClock } from '../../storage/crdt/hlc.ts'
import { encodePatch } from '../../storage/crdt/patch-codec.ts'
import { silentLogger } from '../../storage/logger.ts'
import { keyedReplica, seal } from '../helpers/batches.ts'
import { TestBed } from '../helpers/daemons.ts'
import { decodeSignedBatch } from '../../storage/crdt/batch.ts'
import { ShardDoc, type Patch } from '../../storage/crdt/shard-doc.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())
const options = { batchMs: 1, sync: false, compactEveryRecords: 10_000, maxClockDriftMs: 60_000 }

async function victim (shard = 'w1'): Promise<{ store: ShardStore, admission: Admission, close: () => Promise<void> }> {
  const db = await Database.open(await bed.tempDir())
  const me = await keyedReplica()
  const { store } = await ShardStore.open(shard, me.id, db.sublevel(SUBLEVELS.crdt), options, silentLogger)
  const admission = new Admission({ self: me.id, metrics: null }, { maxValueBytes: 1024 })
  return { store, admission, close: async () => { await store.close(); await db.close() } }
}

async function refusal (promise: Promise<unknown>): Promise<string> {
  try {
    await promise
  } catch (err) {
    if (err instanceof Refusal) return `${err.action}:${err.code}`
    throw err
  }
  return 'admitted'
}

describe('admission of batches', () => {
  it('takes a batch its origin signed, from whoever relays it, and refuses forged, misdirected and oversized ones', async () => {
    const { store, admission, close } = await victim()
    try {
      const alice = await keyedReplica()
      const mallory = await keyedReplica()
      alice.doc.setComponent('ship', 'pos', { x: 1 })
      const batch = seal(alice.key, 'w1', alice.doc.takeDelta()!)
      expect(await refusal(admission.admitBatch(store, batch.bytes, 'gossip'))).toBe('admitted')
      await store.applyBatch(batch)
      expect(await refusal(admission.admitBatch(store, batch.bytes, 'sync'))).toBe('ignore:DUPLICATE')

      alice.doc.setComponent('ship', 'pos', { x: 2 })
      const next = alice.doc.takeDelta()!
      // Mallory signs Alice's operations: the signature is not the origin's.
      expect(await refusal(admission.admitBatch(store, seal(mallory.key, 'w1', next).bytes, 'sync'))).toBe('reject:FORGED')
      expect(await refusal(admission.admitBatch(store, seal(alice.key, 'w2', next).bytes, 'gossip'))).toBe('reject:WRONG_SHARD')
      expect(await refusal(admission.admitBatch(store, Uint8Array.of(2, 9, 9, 9), 'gossip'))).toBe('reject:MALFORMED')
      // A tampered patch no longer matches the digest its header signs.
      const tampered = seal(alice.key, 'w1', next).bytes.slice()
      tampered[tampered.length - 2] = tampered[tampered.length - 2]! ^ 0x01
      expect(await refusal(admission.admitBatch(store, tampered, 'gossip'))).toBe('reject:MALFORMED')
      alice.doc.setComponent('ship', 'cargo', 'x'.repeat(2000))
      expect(await refusal(admission.admitBatch(store, seal(alice.key, 'w1', alice.doc.takeDelta()!).bytes, 'gossip'))).toBe('reject:VALUE_TOO_LARGE')
      expect(store.doc.entity('ship')?.components).toEqual({ pos: { x: 1 } })
    } finally {
      await close()
    }
  })

  it('ignores a write from too far in the future', async () => {
    const { store, admission, close } = await victim()
    try {
      const ahead = await keyedReplica(new HybridClock(60_000, () => Date.now() + 3_600_000))
      ahead.doc.setComponent('ship', 'pos', 1)
      expect(await refusal(admission.admitBatch(store, seal(ahead.key, 'w1', ahead.doc.takeDelta()!).bytes, 'gossip'))).toBe('ignore:CLOCK_DRIFT')
    } finally {
      await close()
    }
  })
})

/** A snapshot of nothing whose context claims whatever the attacker likes: the 47-byte poison. */
function poison (claims: Array<[string, number]>): Uint8Array {
  const context = new DotContext()
  for (const [replica, upTo] of claims) context.addRange(replica, 1, upTo)
  return encodePatch({ kind: 'snapshot', components: [], adds: [], removes: [], counters: [], context } satisfies Patch)
}

describe('admission of snapshots', () => {
  it('clips every claim to what its origins signed: no erasure, no swallowed future writes, no runaway sequence numbers', async () => {
    const { store, admission, close } = await victim()
    try {
      const alice = await keyedReplica()
      for (let i = 0; i < 3; i++) {
        alice.doc.setComponent(`a${i}`, 'hp', i)
        await store.applyBatch(seal(alice.key, 'w1', alice.doc.takeDelta()!))
      }
      store.doc.setComponent('mine', 'hp', 1)
      await store.commit()
      const own = store.doc.replica
      const admitted = await admission.admitSnapshot(store, [], poison([[alice.id, 1e9], [own, 2 ** 52]]), 'sync', 'mallory')
      await store.applySnapshot(admitted.patch, admitted.proofs)
      // Nothing beyond what Alice signed (and what this node made) is believed.
      expect(store.doc.context.highest(alice.id)).toBe(alice.doc.lastSeq)
      expect(store.doc.lastSeq).toBeLessThan(10)
      // Alice's next write is new, not "already seen".
      alice.doc.setComponent('a9', 'hp', 9)
      expect(await refusal(admission.admitBatch(store, seal(alice.key, 'w1', alice.doc.takeDelta()!).bytes, 'gossip'))).toBe('admitted')
    } finally {
      await close()
    }
  })

  it('believes a claim as far as a proof its origin signed, and refuses a forged proof', async () => {
    const { store, admission, close } = await victim()
    try {
      const alice = await keyedReplica()
      const mallory = await keyedReplica()
      alice.doc.setComponent('a', 'hp', 1)
      const first = seal(alice.key, 'w1', alice.doc.takeDelta()!)
      alice.doc.setComponent('b', 'hp', 2)
      const second = seal(alice.key, 'w1', alice.doc.takeDelta()!)
      // A replica that has both serves a snapshot with Alice's newest header as proof.
      const server = await keyedReplica()
      server.doc.apply(first.patch)
      server.doc.apply(second.patch)
      const snapshot = encodePatch(server.doc.snapshot())
      const admitted = await admission.admitSnapshot(store, [second.header.bytes], snapshot, 'sync', server.id)
      expect(admitted.proofs).toHaveLength(1)
      await store.applySnapshot(admitted.patch, admitted.proofs)
      expect(store.doc.entityIds()).toEqual(['a', 'b'])
      expect(store.proofOf(alice.id)?.to).toBe(second.header.to)
      // A proof "by Alice" that Mallory signed is refused, and with it the snapshot.
      alice.doc.setComponent('c', 'hp', 3)
      const forged = seal(mallory.key, 'w1', alice.doc.takeDelta()!)
      expect(await refusal(admission.admitSnapshot(store, [forged.header.bytes], snapshot, 'sync', server.id))).toBe('reject:FORGED')
    } finally {
      await close()
    }
  })

  it('takes snapshots only from peers the authority lets serve the shard', async () => {
    const { store, admission, close } = await victim()
    try {
      admission.setAuthority({ mayWrite: () => ({ ok: true }), mayServe: (_shard, peer) => peer === 'replica', epochFor: () => 0 })
      expect(await refusal(admission.admitSnapshot(store, [], poison([]), 'sync', 'stranger'))).toBe('ignore:NOT_A_SERVER')
      expect(await refusal(admission.admitSnapshot(store, [], poison([]), 'sync', 'replica'))).toBe('admitted')
    } finally {
      await close()
    }
  })
})

describe('admission (property)', () => {
  it('random honest histories with hostile insertions converge to the honest state', async () => {
    const writers = await Promise.all([keyedReplica(), keyedReplica(), keyedReplica()])
    const mallory = await keyedReplica()
    type Step = { kind: 'write', writer: number, entity: number, value: number } | { kind: 'delete', writer: number, entity: number } | { kind: 'forge', writer: number, entity: number } | { kind: 'poison', writer: number, upTo: number }
    const step: fc.Arbitrary<Step> = fc.oneof(
      fc.record({ kind: fc.constant('write' as const), writer: fc.integer({ min: 0, max: 2 }), entity: fc.integer({ min: 0, max: 4 }), value: fc.integer() }),
      fc.record({ kind: fc.constant('delete' as const), writer: fc.integer({ min: 0, max: 2 }), entity: fc.integer({ min: 0, max: 4 }) }),
      fc.record({ kind: fc.constant('forge' as const), writer: fc.integer({ min: 0, max: 2 }), entity: fc.integer({ min: 0, max: 4 }) }),
      fc.record({ kind: fc.constant('poison' as const), writer: fc.integer({ min: 0, max: 2 }), upTo: fc.integer({ min: 1, max: 2 ** 40 }) })
    )
    await fc.assert(fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 25 }), fc.infiniteStream(fc.nat()), async (steps, order) => {
      const honest: Uint8Array[] = []
      const hostile: Array<{ kind: 'batch' | 'snapshot', bytes: Uint8Array }> = []
      // Fresh documents per run, with the writers' keys: what they make is the honest history.
      const docs = writers.map((w) => ({ ...w, doc: new ShardDoc(w.id, new HybridClock(60_000)) }))
      for (const s of steps) {
        const w = docs[s.writer]!
        if (s.kind === 'write') {
          w.doc.setComponent(`e${s.entity}`, 'v', s.value)
          honest.push(seal(w.key, 'w1', w.doc.takeDelta()!).bytes)
        } else if (s.kind === 'delete') {
          if (w.doc.deleteEntity(`e${s.entity}`)) honest.push(seal(w.key, 'w1', w.doc.takeDelta()!).bytes)
        } else if (s.kind === 'forge') {
          // Mallory makes a write in the writer's name and signs it herself.
          const impostor = new ShardDoc(w.id, new HybridClock(60_000))
          for (const bytes of honest) impostor.apply(decodeSignedBatch(bytes).patch)
          impostor.setComponent(`e${s.entity}`, 'v', 'forged')
          hostile.push({ kind: 'batch', bytes: seal(mallory.key, 'w1', impostor.takeDelta()!).bytes })
        } else {
          hostile.push({ kind: 'snapshot', bytes: poison([[docs[s.writer]!.id, s.upTo]]) })
        }
        // Honest replicas also learn from each other as they go, from the batches so far.
        for (const other of docs) if (other !== w) for (const bytes of honest) other.doc.apply(decodeSignedBatch(bytes).patch)
      }
      const { store, admission, close } = await victim()
      try {
        const deliveries = [...honest.map((bytes) => ({ kind: 'batch' as const, bytes })), ...hostile]
        const iterator = order[Symbol.iterator]()
        for (let i = deliveries.length - 1; i > 0; i--) {
          const j = iterator.next().value! % (i + 1)
          ;[deliveries[i], deliveries[j]] = [deliveries[j]!, deliveries[i]!]
        }
        // Every delivery twice: duplicates are harmless.
        for (const delivery of [...deliveries, ...deliveries]) {
          try {
            if (delivery.kind === 'batch') await store.applyBatch(await admission.admitBatch(store, delivery.bytes, 'sync'))
            else {
              const admitted = await admission.admitSnapshot(store, [], delivery.bytes, 'sync', 'mallory')
              await store.applySnapshot(admitted.patch, admitted.proofs)
            }
          } catch (err) {
            if (!(err instanceof Refusal)) throw err
          }
        }
        const expected = new ShardDoc('expected', new HybridClock(60_000))
        for (const bytes of honest) expected.apply(decodeSignedBatch(bytes).patch)
        const view = (ids: string[], get: (id: string) => unknown): string => JSON.stringify(ids.map((id) => [id, get(id)]))
        expect(view(store.doc.entityIds(), (id) => store.doc.entity(id))).toBe(view(expected.entityIds(), (id) => expected.entity(id)))
      } finally {
        await close()
      }
    }), { numRuns: 40 })
  })
})
