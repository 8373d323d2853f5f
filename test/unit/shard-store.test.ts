import { afterAll, describe, expect, it } from 'vitest'
import { Database, SUBLEVELS } from '../../storage/database.ts'
import { ShardStore, ShardStoreError, type ShardStoreOptions } from '../../storage/shard-store.ts'
import { createLogger } from '../../daemon/log/logger.ts'
import { decodePatch, encodePatch } from '../../storage/crdt/patch-codec.ts'
import { ShardDoc } from '../../storage/crdt/shard-doc.ts'
import { HybridClock } from '../../storage/crdt/hlc.ts'
import { TestBed } from '../helpers/daemons.ts'
import { keyedReplica, seal } from '../helpers/batches.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { batchSigner } from '../../attest/batch-signature.ts'
import { encodeSignedBatch, patchDigest } from '../../storage/crdt/batch.ts'
import type { Patch } from '../../storage/crdt/shard-doc.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())
const logger = createLogger({ level: 'silent', format: 'json' })
const options: ShardStoreOptions = { batchMs: 2, sync: false, compactEveryRecords: 10_000, maxClockDriftMs: 60_000 }

/** Seals this store's own deltas as a node does (with a throwaway key: the store itself checks no signature). */
const sealer = (async () => {
  const key = await generateKeyPair('Ed25519')
  return (shard: string, patch: Patch, patchBytes: Uint8Array): Uint8Array => encodeSignedBatch(batchSigner(key).seal({ shard, epoch: 0, origin: patch.origin!, from: patch.from!, to: patch.to!, digest: patchDigest(patchBytes) }), patchBytes)
})()

async function open (dir: string, overrides: Partial<ShardStoreOptions> = {}): Promise<{ db: Database, store: ShardStore, recovery: Awaited<ReturnType<typeof ShardStore.open>>['recovery'] }> {
  const db = await Database.open(dir)
  const { store, recovery } = await ShardStore.open('w1', 'me', db.sublevel(SUBLEVELS.crdt), { ...options, ...overrides }, logger, await sealer)
  return { db, store, recovery }
}

describe('shard store', () => {
  it('says which entities and counters a local commit changed', async () => {
    const { db, store } = await open(await bed.tempDir())
    const changes: Array<{ entities: string[], counters: string[], local: boolean }> = []
    store.addEventListener('change', (event) => { changes.push({ entities: [...event.detail.result!.entities].sort(), counters: [...event.detail.result!.counters], local: event.detail.local }) })
    store.doc.putEntity('a', { pos: { x: 1, y: 2 } })
    store.doc.setComponent('b', 'hp', 3)
    store.doc.increment('gold', 2)
    await store.commit()
    store.doc.deleteEntity('a')
    await store.commit()
    expect(changes).toEqual([{ entities: ['a', 'b'], counters: ['gold'], local: true }, { entities: ['a'], counters: [], local: true }])
    await store.close()
    await db.close()
  })

  it('replays snapshot and log on open: local and remote writes, counters, deletions', async () => {
    const dir = await bed.tempDir()
    const { db, store } = await open(dir, { compactEveryRecords: 10 })
    const peer = await keyedReplica()
    peer.doc.setComponent('p1', 'pos', [1, 2])
    peer.doc.increment('gold', 7)
    await store.applyBatch(seal(peer.key, 'w1', peer.doc.takeDelta()!))
    for (let i = 0; i < 25; i++) {
      store.doc.setComponent(`e${i % 5}`, 'pos', { x: i })
      store.doc.increment('gold', 1)
      await store.commit()
    }
    store.doc.deleteEntity('e0')
    await store.commit()
    expect(store.logIndex().length).toBeLessThan(10) // compaction ran
    const before = encodePatch(store.doc.snapshot())
    await store.close()
    await db.close()

    const again = await open(dir)
    try {
      expect(again.recovery.snapshotBytes).toBeGreaterThan(0)
      expect(again.recovery.cut).toBe(0)
      expect(again.store.doc.entityIds()).toEqual(['e1', 'e2', 'e3', 'e4', 'p1'])
      expect(again.store.doc.counter('gold')).toBe(32)
      expect(again.store.doc.entity('e4')).toEqual({ entity: 'e4', components: { pos: { x: 24 } } })
      const replayed = new ShardDoc('x', new HybridClock(60_000))
      replayed.apply(decodePatch(before))
      expect(again.store.doc.context.equals(replayed.context)).toBe(true)
      // Its own next write continues after the dots it handed out before the restart.
      const last = again.store.doc.lastSeq
      again.store.doc.setComponent('e9', 'hp', 1)
      expect(again.store.doc.lastSeq).toBe(last + 2)
    } finally {
      await again.store.close()
      await again.db.close()
    }
  })

  it('group-commits concurrent writes into one batch and answers each after it is written', async () => {
    const dir = await bed.tempDir()
    const { db, store } = await open(dir, { batchMs: 20 })
    const commits: Array<Promise<void>> = []
    for (let i = 0; i < 100; i++) {
      store.doc.setComponent(`e${i}`, 'hp', i)
      commits.push(store.commit())
    }
    await Promise.all(commits)
    expect(store.logIndex().length).toBe(1)
    await store.close()
    await db.close()
  })

  it('holds commits for a caller\'s window and commits them at once on flushNow, one batch for the window', async () => {
    const dir = await bed.tempDir()
    const { db, store } = await open(dir)
    store.commitWindowMs = 60_000
    let answered = 0
    const commits: Array<Promise<void>> = []
    for (let i = 0; i < 10; i++) {
      store.doc.setComponent(`e${i}`, 'hp', i)
      commits.push(store.commit().then(() => { answered++ }))
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
    // batchMs is 2: without the wider window these would long be written.
    expect(answered).toBe(0)
    expect(store.logIndex().length).toBe(0)
    await store.flushNow()
    await Promise.all(commits)
    expect(answered).toBe(10)
    expect(store.logIndex().length).toBe(1)
    await store.flushNow()
    expect(store.logIndex().length).toBe(1)
    store.commitWindowMs = null
    expect(store.commitWindowMs).toBe(2)
    store.doc.setComponent('late', 'hp', 1)
    await store.commit()
    expect(store.logIndex().length).toBe(2)
    await store.close()
    await db.close()
    const reopened = await open(dir)
    expect(reopened.store.doc.entity('e9')?.components.hp).toBe(9)
    await reopened.store.close()
    await reopened.db.close()
  })

  it('cuts a corrupt log tail instead of trusting it, and keeps what came before', async () => {
    const dir = await bed.tempDir()
    const { db, store } = await open(dir)
    store.doc.setComponent('a', 'hp', 1)
    await store.commit()
    store.doc.setComponent('b', 'hp', 2)
    await store.commit()
    store.doc.setComponent('c', 'hp', 3)
    await store.commit()
    const [, second] = store.logIndex()
    await store.close()
    // Flip a byte in the middle record; the record after it goes too (the log ends at the first bad record).
    const crdt = db.sublevel(SUBLEVELS.crdt)
    const key = `l/w1/${second!.position.toString(16).padStart(13, '0')}`
    const value = (await crdt.get(key))!
    value[value.length - 1] = value[value.length - 1]! ^ 0xff
    await crdt.put(key, value)
    await crdt.put('l/w1/garbage', Uint8Array.of(1))
    await db.close()

    const again = await open(dir)
    try {
      expect(again.recovery).toMatchObject({ records: 1, cut: 3 })
      expect(again.store.doc.entityIds()).toEqual(['a'])
      const keys = await again.db.sublevel(SUBLEVELS.crdt).keys().all()
      expect(keys).toHaveLength(1)
    } finally {
      await again.store.close()
      await again.db.close()
    }
  })

  it('refuses to open over a corrupt snapshot rather than serve part of the state', async () => {
    const dir = await bed.tempDir()
    const { db, store } = await open(dir)
    store.doc.setComponent('a', 'hp', 1)
    await store.commit()
    await store.compact()
    await store.close()
    const crdt = db.sublevel(SUBLEVELS.crdt)
    const value = (await crdt.get('s/w1'))!
    value[6] = value[6]! ^ 0x55
    await crdt.put('s/w1', value)
    await db.close()
    const db2 = await Database.open(dir)
    try {
      await expect(ShardStore.open('w1', 'me', db2.sublevel(SUBLEVELS.crdt), options, logger)).rejects.toThrow(ShardStoreError)
    } finally {
      await db2.close()
    }
  })

  it('keeps frontier proofs and removal batches through compaction and a restart', async () => {
    const dir = await bed.tempDir()
    const { db, store } = await open(dir, { compactEveryRecords: 10 })
    const peer = await keyedReplica()
    peer.doc.setComponent('doomed', 'hp', 1)
    await store.applyBatch(seal(peer.key, 'w1', peer.doc.takeDelta()!))
    peer.doc.deleteEntity('doomed')
    const removal = seal(peer.key, 'w1', peer.doc.takeDelta()!)
    await store.applyBatch(removal)
    for (let i = 0; i < 30; i++) {
      store.doc.setComponent('mine', 'hp', i)
      await store.commit()
    }
    await store.compact()
    // Folded, except the batch that removes: a snapshot never removes, so that batch is how a lagging replica learns of it.
    expect(store.logIndex().map((entry) => entry.removes)).toEqual([true])
    expect(store.proofOf(peer.id)?.to).toBe(removal.header.to)
    await store.close()
    await db.close()
    const again = await open(dir)
    try {
      expect(again.store.proofOf(peer.id)?.to).toBe(removal.header.to)
      expect(again.store.proofOf(again.store.doc.replica)?.to).toBe(again.store.doc.lastSeq)
      expect(again.store.doc.entityIds()).toEqual(['mine'])
      expect(again.store.logIndex()).toHaveLength(1)
    } finally {
      await again.store.close()
      await again.db.close()
    }
  })
})
