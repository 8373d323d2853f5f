import * as dagCbor from '@ipld/dag-cbor'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterEach, describe, expect, it } from 'vitest'
import { encodeLeaseRecord, LeaseError, LeaseVoter, signLease, signRelease, verifyLeaseRecord, type ClaimCheck, type LeaseTerms, type Vote } from '../../p2p/placement/lease.ts'
import { Database } from '../../storage/database.ts'
import { makeTempDir } from '../helpers/daemons.ts'
import type { PrivateKey } from '@libp2p/interface'

const LEASE_MS = 10_000
const opened: Database[] = []
afterEach(async () => { for (const db of opened.splice(0)) await db.close() })

async function node (dir?: string): Promise<{ key: PrivateKey, id: string, dir: string, db: Database }> {
  const key = await generateKeyPair('Ed25519')
  const where = dir ?? await makeTempDir('metagrid-lease-')
  const db = await Database.open(where)
  opened.push(db)
  return { key, id: peerIdFromPrivateKey(key).toString(), dir: where, db }
}

function voterOf (n: { key: PrivateKey, db: Database }, now: () => number, check: ClaimCheck = () => ({ ok: true })): LeaseVoter {
  return new LeaseVoter(n.db.sublevel('placement'), n.key, { maxLeaseMs: LEASE_MS, marginMs: 500 }, check, now)
}

const grants = (votes: Vote[]): Uint8Array[] => votes.flatMap((v) => (v.ok ? [v.grant] : []))

describe('leases', () => {
  it('a voter grants one holder per epoch, renewals to that holder, and a new epoch only after expiry or a release', async () => {
    let now = 1_000_000
    const [a, b, v] = [await node(), await node(), await node()]
    const voter = voterOf(v, () => now)
    const terms = (holder: string, epoch: number, extra: Partial<LeaseTerms> = {}): LeaseTerms => ({ shard: 'physics.0.0', epoch, holder, voters: [holder, v.id], prev: [], prevHolder: null, expiresAt: now + LEASE_MS, startedAt: now, ...extra })
    expect((await voter.vote(await signLease(a.key, terms(a.id, 1), now))).ok).toBe(true)
    const taken = await voter.vote(await signLease(b.key, terms(b.id, 1), now))
    // The refusal says how long the promise stands: its term plus the margin, so a claimant without the record knows how long to wait.
    expect(taken).toMatchObject({ ok: false, code: 'EPOCH_TAKEN', epoch: 1, holder: a.id, retryInMs: LEASE_MS + 500 })
    const afterA = { prevHolder: a.id, prev: [a.id, v.id] }
    expect(await voter.vote(await signLease(b.key, terms(b.id, 2, afterA), now))).toMatchObject({ ok: false, code: 'HELD' })
    expect((await voter.vote(await signLease(a.key, terms(a.id, 1), now))).ok).toBe(true)
    // A release by the holder lets the named successor in at once.
    const release = await signRelease(a.key, { shard: 'physics.0.0', epoch: 1, to: b.id }, now)
    expect((await voter.vote(await signLease(b.key, terms(b.id, 2, afterA), now), release)).ok).toBe(true)
    expect(await voter.vote(await signLease(a.key, terms(a.id, 1), now))).toMatchObject({ ok: false, code: 'STALE_EPOCH', epoch: 2 })
    // After expiry plus the margin, the next epoch is anyone's.
    now += LEASE_MS + 501
    // A promise past its term no longer stands: a claimant that never saw its record need not wait for one.
    expect(await voter.vote(await signLease(a.key, terms(a.id, 2, afterA), now))).toMatchObject({ ok: false, code: 'EPOCH_TAKEN', epoch: 2, retryInMs: 0 })
    const afterB = { prevHolder: b.id, prev: [b.id, v.id] }
    expect((await voter.vote(await signLease(a.key, terms(a.id, 3, afterB), now))).ok).toBe(true)
    expect(await voter.vote(await signLease(a.key, terms(a.id, 4, { expiresAt: now + 10 * LEASE_MS }), now))).toMatchObject({ ok: false, code: 'TOO_LONG' })
    // A release signed by someone else, or for another epoch, does not count.
    const forged = await signRelease(b.key, { shard: 'physics.0.0', epoch: 3, to: b.id }, now)
    const afterA3 = { prevHolder: a.id, prev: [a.id, v.id] }
    expect(await voter.vote(await signLease(b.key, terms(b.id, 4, afterA3), now), forged)).toMatchObject({ ok: false, code: 'HELD' })
    // A real release still counts when the claim skips epochs (a claim that failed half-way elsewhere took one).
    const skipping = await signRelease(a.key, { shard: 'physics.0.0', epoch: 3, to: b.id }, now)
    expect((await voter.vote(await signLease(b.key, terms(b.id, 5, afterA3), now), skipping)).ok).toBe(true)
  })

  it('grants a silent holder\'s shards to another and keeps one voter set per epoch', async () => {
    let now = 2_000_000
    const [a, b, c, v] = [await node(), await node(), await node(), await node()]
    const voter = voterOf(v, () => now)
    const silent = new Set<string>()
    voter.setSilence({ stands: (holder) => !silent.has(holder), remaining: (holder) => (silent.has(holder) ? 0 : 700), alive: (holder) => { silent.delete(holder) } })
    const terms = (holder: string, epoch: number, extra: Partial<LeaseTerms> = {}): LeaseTerms => ({ shard: 'w.0.0', epoch, holder, voters: [holder, v.id], prev: [], prevHolder: null, expiresAt: now + LEASE_MS, startedAt: now, ...extra })
    expect((await voter.vote(await signLease(a.key, terms(a.id, 1), now))).ok).toBe(true)
    now += LEASE_MS + 501
    expect((await voter.vote(await signLease(a.key, terms(a.id, 2, { prevHolder: c.id, prev: [c.id, v.id] }), now))).ok).toBe(true)
    // The same epoch with other voters is not a renewal.
    expect(await voter.vote(await signLease(a.key, terms(a.id, 2, { prevHolder: c.id, prev: [c.id, v.id], voters: [a.id, v.id, c.id] }), now))).toMatchObject({ ok: false, code: 'EPOCH_TAKEN' })
    // While the holder keeps its voters' keepalives coming, nobody else gets the next epoch; the refusal says when to ask again.
    const afterA = { prevHolder: a.id, prev: [a.id, v.id] }
    expect(await voter.vote(await signLease(b.key, terms(b.id, 3, afterA), now))).toMatchObject({ ok: false, code: 'HELD', retryInMs: 700 })
    silent.add(a.id)
    now += 10
    // A takeover's grant carries the voter's state of the shard (taken after the grant), so the new holder can skip pulling it.
    voter.setStateOf((shard) => new TextEncoder().encode(`state of ${shard}`))
    const takeover = await voter.vote(await signLease(b.key, terms(b.id, 3, afterA), now))
    expect(takeover.ok).toBe(true)
    expect(takeover.ok && new TextDecoder().decode(takeover.state)).toBe('state of w.0.0')
    // A renewal carries none.
    const renewal = await voter.vote(await signLease(b.key, terms(b.id, 3, { ...afterA, expiresAt: now + LEASE_MS / 2 }), now))
    expect(renewal.ok && renewal.state).toBe(undefined)
    // Granting heard the new holder: it is not silent.
    expect(await voter.vote(await signLease(c.key, terms(c.id, 4, { prevHolder: b.id, prev: [b.id, v.id] }), now))).toMatchObject({ ok: false, code: 'HELD' })
    expect(voter.promisedEpoch('w.0.0')).toBe(3)
    expect(voter.isHolder(b.id)).toBe(true)
    expect(voter.isHolder(a.id)).toBe(false)
  })

  it('remembers its promises across a restart', async () => {
    const now = 5_000_000
    const [a, b] = [await node(), await node()]
    const v = await node()
    const t = (holder: string): LeaseTerms => ({ shard: 's', epoch: 1, holder, voters: [holder, v.id], prev: [], prevHolder: null, expiresAt: now + LEASE_MS, startedAt: now })
    expect((await voterOf(v, () => now).vote(await signLease(a.key, t(a.id), now))).ok).toBe(true)
    await v.db.close()
    opened.splice(opened.indexOf(v.db), 1)
    const reopened = await Database.open(v.dir)
    opened.push(reopened)
    expect(await voterOf({ key: v.key, db: reopened }, () => now).vote(await signLease(b.key, t(b.id), now))).toMatchObject({ ok: false, code: 'EPOCH_TAKEN' })
  })

  it('a record is valid with a majority of voters and of previous voters, and names the failing check otherwise', async () => {
    const now = Date.now()
    const nodes = await Promise.all([0, 1, 2, 3, 4].map(async () => node()))
    const [h, x, y, p1, p2] = nodes
    const voters = [h!.id, x!.id, y!.id]
    const terms: LeaseTerms = { shard: 'w.1.1', epoch: 2, holder: h!.id, voters, prev: [p1!.id, p2!.id, x!.id], prevHolder: p1!.id, expiresAt: now + LEASE_MS, startedAt: now }
    const lease = await signLease(h!.key, terms, now)
    const votes = await Promise.all(nodes.map(async (n) => voterOf(n, () => now).vote(lease)))
    const all = grants(votes)
    expect((await verifyLeaseRecord(encodeLeaseRecord(lease, all), now)).holder).toBe(h!.id)
    // Holder and x: a majority of voters, but of prev only x: refused.
    const check = async (record: Uint8Array): Promise<string> => verifyLeaseRecord(record, now).then(() => 'valid', (err: unknown) => (err instanceof LeaseError ? err.check : 'other'))
    expect(await check(encodeLeaseRecord(lease, [all[0]!, all[1]!]))).toBe('quorum')
    expect(await check(encodeLeaseRecord(lease, [all[0]!, all[3]!, all[4]!]))).toBe('quorum')
    // Every field of the lease tampered: the signature check fails.
    for (const field of ['shard', 'epoch', 'holder', 'voters', 'prev', 'prevHolder', 'expiresAt', 'startedAt'] as const) {
      const envelope = dagCbor.decode(lease) as Record<string, Uint8Array>
      const payload = dagCbor.decode(envelope.p!) as { p: Record<string, unknown> }
      const value = payload.p[field]
      payload.p[field] = typeof value === 'number' ? value + 1 : Array.isArray(value) ? [...value, x!.id].slice(1) : `${String(value)}x`
      const tampered = dagCbor.encode({ ...envelope, p: dagCbor.encode(payload) })
      expect(await check(encodeLeaseRecord(tampered, all)), field).toBe('lease')
    }
    // A grant for another lease, or by a non-voter, is refused by name.
    const stray = await node()
    const other = await signLease(h!.key, { ...terms, epoch: 3, voters: [...voters, stray.id] }, now)
    const strayGrant = grants([await voterOf(stray, () => now).vote(other)])
    expect(await check(encodeLeaseRecord(lease, [...all, ...strayGrant]))).toBe('grant')
    // An outsider's grant for the same shard, epoch, holder and expiry (of a lease that listed it): still not a voter of this one.
    const outsider = await node()
    const listingIt = await signLease(h!.key, { ...terms, voters: [...voters, outsider.id] }, now)
    expect(await check(encodeLeaseRecord(lease, [...all, ...grants([await voterOf(outsider, () => now).vote(listingIt)])]))).toBe('grant')
    expect(await check(new Uint8Array([1, 2, 3]))).toBe('encoding')
    // A lease signed by someone other than the holder it names.
    expect(await check(encodeLeaseRecord(await signLease(x!.key, terms, now), all))).toBe('holder')
  })

  it('a voter promises nothing for a lease it is not a voter of, or that its own view finds ineligible', async () => {
    const now = 7_000_000
    const [a, v] = [await node(), await node()]
    const refuseB: ClaimCheck = (terms) => terms.holder === a.id ? { ok: true } : { ok: false, code: 'NOT_ELIGIBLE', detail: 'not assigned' }
    const voter = voterOf(v, () => now, refuseB)
    const lease = (holder: PrivateKey, id: string, voters: string[]): Promise<Uint8Array> => signLease(holder, { shard: 'physics.0.0', epoch: 1, holder: id, voters, prev: [], prevHolder: null, expiresAt: now + LEASE_MS, startedAt: now }, now)
    expect(await voter.vote(await lease(a.key, a.id, [a.id]))).toMatchObject({ ok: false, code: 'NOT_A_VOTER' })
    const b = await node()
    expect(await voter.vote(await lease(b.key, b.id, [b.id, v.id]))).toMatchObject({ ok: false, code: 'NOT_ELIGIBLE' })
    // Neither refusal left a promise behind: the eligible claimant still gets epoch 1.
    expect((await voter.vote(await lease(a.key, a.id, [a.id, v.id]))).ok).toBe(true)
  })
})
