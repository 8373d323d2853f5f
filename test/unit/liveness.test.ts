import { describe, expect, it } from 'vitest'
import { LoopMonitor } from '../../p2p/health/loop-monitor.ts'
import { guardOf, VoterLiveness } from '../../p2p/placement/liveness.ts'

const OPTIONS = { intervalMs: 250, timeoutMs: 1_500 }

describe('holder liveness, as a voter sees it', () => {
  it('a holder lapses after the timeout of silence, counted from its last keepalive (or the voter\'s start)', () => {
    let now = 10_000
    const holders = new Set(['h'])
    const liveness = new VoterLiveness('self', OPTIONS, (peer) => holders.has(peer) || peer === 'self', null, () => false, () => now)
    // Nothing heard since the voter started: a full timeout from its start.
    now += 1_400
    expect(liveness.lapsed('h')).toBe(false)
    now += 200
    expect(liveness.lapsed('h')).toBe(true)
    liveness.alive('h')
    expect(liveness.lapsed('h')).toBe(false)
    expect(liveness.remaining('h')).toBe(1_501)
    now += 1_501
    expect(liveness.lapsed('h')).toBe(true)
    // The voter itself never lapses, and peers it promised nothing are not tracked.
    now += 60_000
    expect(liveness.lapsed('self')).toBe(false)
    liveness.alive('stranger')
    expect(liveness.silentFor('stranger')).toBeGreaterThan(60_000)
  })

  it('a voter whose own loop stalled does not count the stall as the holder\'s silence', () => {
    let now = 0
    const loop = new LoopMonitor(() => now)
    const liveness = new VoterLiveness('self', OPTIONS, () => true, loop, () => false, () => now)
    liveness.alive('h')
    now += 1_000
    // A stall of 800 ms just ended: the keepalives sent meanwhile may be unread in the socket.
    loop.record({ ms: 800, endedAt: now })
    now += 600
    expect(liveness.silentFor('h')).toBe(800)
    expect(liveness.lapsed('h')).toBe(false)
    now += 800
    expect(liveness.lapsed('h')).toBe(true)
  })

  it('a promise stands while its holder lists it; a claim that failed half-way, or a lease moved elsewhere, stops standing', () => {
    let now = 0
    let selfHolds = true
    const liveness = new VoterLiveness('self', OPTIONS, () => true, null, () => selfHolds, () => now)
    liveness.alive('h')
    // Just granted: the claim is still being made, so it stands whatever the holder's list says.
    expect(liveness.stands('h', 'w.1.1', 4, now)).toBe(true)
    expect(liveness.keepalive('h', { seq: 1, version: 1, held: [['w.0.0', 2]] })).toBe(1)
    expect(liveness.stands('h', 'w.1.1', 4, now)).toBe(true)
    now += 2_000
    liveness.keepalive('h', { seq: 2, version: 1 })
    // The holder is alive and keeps sending, but no longer stands behind epoch 4 of w.1.1: it may go to another.
    expect(liveness.lapsed('h')).toBe(false)
    expect(liveness.stands('h', 'w.1.1', 4, 0)).toBe(false)
    expect(liveness.stands('h', 'w.0.0', 2, 0)).toBe(true)
    // This node's own promise stands while it holds that epoch itself (it never goes silent to itself), and not after.
    expect(liveness.stands('self', 'w.2.2', 1, 0)).toBe(true)
    selfHolds = false
    expect(liveness.stands('self', 'w.2.2', 1, 0)).toBe(false)
    // A holder that is not one of this voter's is refused.
    const strict = new VoterLiveness('self', OPTIONS, (peer) => peer === 'h', null, () => true, () => now)
    expect(() => strict.keepalive('x', { seq: 1, version: 0 })).toThrow(/promised that peer no lease/)
  })

  it('the holder stops serving a quarter of the timeout before any voter could grant its shards', () => {
    expect(guardOf(OPTIONS)).toBe(375)
  })
})
