/**
 * The voter's side of the write concern (p2p/sync/write-concern.ts) between
 * two real libp2p nodes on loopback, against a real shard store with a long
 * commit window: a voter says it holds a batch only once that batch is in its
 * LevelDB, whether the request brought it or gossip did a moment before (the
 * batch is then a duplicate whose commit is still pending).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import * as dagCbor from '@ipld/dag-cbor'
import { Admission } from '../../p2p/admission/admission.ts'
import { RequestChannel } from '../../p2p/channel.ts'
import { REPLICATE_PROTOCOL } from '../../p2p/constants.ts'
import { encodeReplicateRequest, handleReplicate } from '../../p2p/sync/write-concern.ts'
import { Database, SUBLEVELS } from '../../storage/database.ts'
import { ShardStore } from '../../storage/shard-store.ts'
import { silentLogger } from '../../storage/logger.ts'
import { keyedReplica, seal } from '../helpers/batches.ts'
import { TestBed } from '../helpers/daemons.ts'
import { startTestPeer } from '../helpers/libp2p.ts'
import type { MetagridLibp2p } from '../../p2p/libp2p.ts'

const WINDOW_MS = 1_500
const bed = new TestBed()
let writer: MetagridLibp2p
let voter: MetagridLibp2p
let db: Database
let store: ShardStore
let channel: RequestChannel

beforeAll(async () => {
  voter = (await startTestPeer(undefined, ['/ip4/127.0.0.1/tcp/0'])).node
  writer = (await startTestPeer()).node
  db = await Database.open(await bed.tempDir())
  const me = await keyedReplica()
  store = (await ShardStore.open('w1', me.id, db.sublevel(SUBLEVELS.crdt), { batchMs: WINDOW_MS, sync: false, compactEveryRecords: 10_000, maxClockDriftMs: 60_000 }, silentLogger)).store
  await handleReplicate({
    libp2p: voter,
    admission: new Admission({ self: me.id, metrics: null }, { maxValueBytes: 1024 }),
    storeOf: (shard) => (shard === 'w1' ? store : undefined),
    fence: () => null,
    onGap: () => {},
    metrics: null,
    logger: silentLogger
  })
  await writer.dial(voter.getMultiaddrs()[0]!)
  channel = new RequestChannel(writer, { protocol: REPLICATE_PROTOCOL, maxFrameBytes: 1024, maxPending: 16 })
})

afterAll(async () => {
  channel?.stop()
  await writer?.stop()
  await voter?.stop()
  await store?.close()
  await db?.close()
  await bed.cleanup()
})

async function ask (batches: Uint8Array[]): Promise<{ n: number, c?: string }> {
  return dagCbor.decode(await channel.request(voter.peerId, encodeReplicateRequest('w1', batches), 10_000))
}

describe('replicate (voter side)', () => {
  it('answers a batch it already applied from gossip only once that batch is durable', async () => {
    const host = await keyedReplica()
    host.doc.setComponent('ship', 'pos', { x: 1 })
    const batch = seal(host.key, 'w1', host.doc.takeDelta()!)
    // Gossip brought it first: applied in memory, its commit waits for the window.
    let durableAt = 0
    const gossip = store.applyBatch(batch).then(() => { durableAt = performance.now() })
    const answer = await ask([batch.bytes])
    const answeredAt = performance.now()
    expect(answer).toEqual({ n: 1 })
    expect(durableAt).toBeGreaterThan(0)
    expect(answeredAt).toBeGreaterThanOrEqual(durableAt)
    await gossip
    // Nothing pending: a duplicate is answered at once, well inside a commit window.
    const started = performance.now()
    expect(await ask([batch.bytes])).toEqual({ n: 1 })
    expect(performance.now() - started).toBeLessThan(WINDOW_MS)
  }, 30_000)

  it('answers fresh batches once their one group commit is durable, and says which shard it does not know', async () => {
    const host = await keyedReplica()
    const batches = [1, 2, 3].map((x) => {
      host.doc.setComponent('ship', 'pos', { x })
      return seal(host.key, 'w1', host.doc.takeDelta()!)
    })
    await store.settled()
    const before = store.logIndex().length
    expect(await ask(batches.map((b) => b.bytes))).toEqual({ n: 3 })
    // Held means written: the log has the three batches by the time the answer came.
    expect(store.logIndex().length).toBe(before + 3)
    expect(dagCbor.decode(await channel.request(voter.peerId, encodeReplicateRequest('w9', [batches[0]!.bytes]), 10_000))).toEqual({ n: 0, c: 'UNKNOWN_SHARD' })
  }, 30_000)
})
