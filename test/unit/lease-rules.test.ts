/**
 * The readers' rules for leases (lease-rules.ts), the history they keep
 * (lease-history.ts) and the write authority built on it
 * (write-authority.ts), on plain values: no network, no clock.
 */
import { describe, expect, it } from 'vitest'
import { openAuthority } from '../../p2p/admission/authority.ts'
import { LeaseHistory } from '../../p2p/placement/lease-history.ts'
import { followedBy, judgeLease, type LeaseRuleContext } from '../../p2p/placement/lease-rules.ts'
import { placementAuthority } from '../../p2p/placement/write-authority.ts'
import { World, worldSchema } from '../../p2p/placement/world.ts'
import type { VerifiedLease } from '../../p2p/placement/lease.ts'

const T = 1_000_000
function lease (epoch: number, holder: string, voters: string[], extra: Partial<VerifiedLease> = {}): VerifiedLease {
  return { shard: 'physics.0.0', epoch, holder, voters, prev: [], prevHolder: null, expiresAt: T + 10_000, startedAt: T, issuedAt: T, record: new Uint8Array(0), ...extra }
}

const context = (previous?: VerifiedLease, eligible: string[] = ['a', 'b', 'c', 'd']): LeaseRuleContext => ({
  leaseMs: 10_000, marginMs: 500, maxEpochGap: 64, previous, eligible: (p) => eligible.includes(p), mayHost: (p) => p !== 'untrusted'
})

describe('the readers\' lease rules', () => {
  it('refuses a lease that runs too long, an untrusted holder, a holder the policy rules out', () => {
    expect(judgeLease(lease(1, 'a', ['a', 'b']), context())).toEqual({ ok: true })
    expect(judgeLease(lease(1, 'a', ['a'], { expiresAt: T + 365 * 86_400_000 }), context())).toMatchObject({ ok: false, code: 'TOO_LONG' })
    expect(judgeLease(lease(1, 'untrusted', ['untrusted']), context())).toMatchObject({ ok: false, code: 'UNTRUSTED' })
    expect(judgeLease(lease(1, 'mallory', ['mallory']), context())).toMatchObject({ ok: false, code: 'NOT_ELIGIBLE' })
    expect(judgeLease(lease(1, 'a', ['a', 'mallory']), context())).toMatchObject({ ok: false, code: 'NOT_ELIGIBLE' })
  })

  it('takes only a lease that follows the one before: its holder, its voters, not far ahead', () => {
    const before = lease(4, 'a', ['a', 'b', 'c'])
    expect(judgeLease(lease(5, 'b', ['b', 'c', 'd'], { prev: ['a', 'b'], prevHolder: 'a' }), context(before))).toEqual({ ok: true })
    // Claimed as if the epoch before were someone else's, or with previous voters it did not have, or none.
    expect(judgeLease(lease(5, 'b', ['b', 'c'], { prev: ['a', 'b'], prevHolder: 'c' }), context(before))).toMatchObject({ code: 'BROKEN_CHAIN' })
    expect(judgeLease(lease(5, 'b', ['b', 'c'], { prev: ['d'], prevHolder: 'a' }), context(before))).toMatchObject({ code: 'BROKEN_CHAIN' })
    expect(judgeLease(lease(5, 'b', ['b', 'c'], { prev: [], prevHolder: 'a' }), context(before))).toMatchObject({ code: 'BROKEN_CHAIN' })
    // The epoch 1e9.
    expect(judgeLease(lease(1e9, 'b', ['b'], { prev: ['b'], prevHolder: 'b' }), context(before))).toMatchObject({ code: 'EPOCH_GAP' })
    // A replica of the lease before may take over even where the policy no longer lists it (a failover mid-change).
    expect(judgeLease(lease(5, 'c', ['c'], { prev: ['c'], prevHolder: 'a' }), context(before, ['a']))).toEqual({ ok: true })
  })

  it('accepts an older epoch backwards only when its accepted successor names its holder', () => {
    const next = lease(5, 'b', ['b'], { prev: ['a'], prevHolder: 'a' })
    expect(followedBy(lease(4, 'a', ['a']), next)).toBe(true)
    expect(followedBy(lease(4, 'mallory', ['mallory']), next)).toBe(false)
    expect(followedBy(lease(3, 'a', ['a']), next)).toBe(false)
  })
})

describe('the lease history', () => {
  it('keeps, of two leases of one epoch, the one the next epoch followed, and renewals in place', () => {
    const history = new LeaseHistory(4)
    expect(history.add(lease(1, 'b', ['b']))).toBe('new-epoch')
    // Without a successor the smaller holder id stands.
    expect(history.add(lease(1, 'a', ['a']))).toBe('new-epoch')
    expect(history.add(lease(1, 'b', ['b']))).toBe('unchanged')
    history.add(lease(2, 'c', ['c'], { prev: ['b'], prevHolder: 'b' }))
    // The successor names b: b stands, whatever the ids.
    history.replace(lease(1, 'b', ['b']))
    expect(history.add(lease(1, 'a', ['a']))).toBe('unchanged')
    expect(history.at('physics.0.0', 1)?.holder).toBe('b')
    expect(history.add(lease(2, 'c', ['c'], { expiresAt: T + 20_000 }))).toBe('renewed')
    for (let e = 3; e <= 8; e++) history.add(lease(e, 'c', ['c']))
    expect(history.oldest('physics.0.0')).toBe(5)
    expect(history.current('physics.0.0')?.epoch).toBe(8)
    expect(history.after('physics.0.0', 6)?.epoch).toBe(7)
    expect(history.before('physics.0.0', 6)?.epoch).toBe(5)
  })
})

describe('the write authority of world shards', () => {
  const world = new World(worldSchema.parse({ maxX: 200, maxY: 200, cellSize: 100, layers: [{ name: 'physics', consistency: 'host' }, { name: 'presence', consistency: 'crdt' }] }))
  const history = new LeaseHistory()
  history.add(lease(1, 'a', ['a', 'b'], { startedAt: T }))
  history.add(lease(2, 'b', ['b', 'c'], { startedAt: T + 60_000, prev: ['a', 'b'], prevHolder: 'a' }))
  history.add({ ...lease(1, 'a', ['a', 'b']), shard: 'presence.0.0' })
  const authority = placementAuthority({ world, history, assigned: () => false, heldEpoch: () => undefined, self: 'a', marginMs: 500, fallback: openAuthority() })

  it('takes a host shard\'s writes from the holder of their epoch, and a superseded holder\'s only from before it was', () => {
    expect(authority.mayWrite('physics.0.0', 'b', 2, T + 70_000)).toEqual({ ok: true })
    expect(authority.mayWrite('physics.0.0', 'a', 1, T + 1_000)).toEqual({ ok: true })
    expect(authority.mayWrite('physics.0.0', 'a', 1, T + 61_000)).toMatchObject({ ok: false, code: 'STALE_EPOCH' })
    expect(authority.mayWrite('physics.0.0', 'c', 2, T + 70_000)).toMatchObject({ ok: false, code: 'NOT_HOLDER' })
    expect(authority.mayWrite('physics.0.0', 'b', 3, T + 70_000)).toMatchObject({ ok: false, code: 'UNKNOWN_EPOCH', action: 'ignore' })
    expect(authority.mayWrite('physics.0.0', 'b', 0, T)).toMatchObject({ ok: false, code: 'NO_EPOCH' })
  })

  it('takes a crdt shard\'s writes from its replicas, and any served shard\'s from anyone', () => {
    expect(authority.mayWrite('presence.0.0', 'b', 1, T)).toEqual({ ok: true })
    expect(authority.mayWrite('presence.0.0', 'mallory', 1, T)).toMatchObject({ ok: false, code: 'NOT_REPLICA' })
    expect(authority.mayWrite('default', 'mallory', 0, T)).toEqual({ ok: true })
    expect(authority.mayServe('physics.0.0', 'c')).toBe(true)
    expect(authority.mayServe('physics.0.0', 'mallory')).toBe(false)
  })
})
