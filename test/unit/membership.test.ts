import fc from 'fast-check'
import { peerIdFromString } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { decodeClaim, encodeClaim } from '../../p2p/membership/membership.ts'
import { decodeProbeRequest, decodeProbeResponse, encodeProbeRequest, encodeProbeResponse, ProbeProtocolError } from '../../p2p/membership/probe-protocol.ts'
import { Swim } from '../../p2p/membership/swim.ts'
import { Refusal } from '../../p2p/admission/refusal.ts'
import { SwimSim } from '../helpers/swim-sim.ts'

const IDS = ['a', 'b', 'c', 'd', 'e']
/** The daemon's defaults (config schema): one probe each 500 ms, 300 ms timeout, 3 helpers, α 4, β 6. */
const DEFAULTS = { probeIntervalMs: 500, probeTimeoutMs: 300, indirect: 3, suspicionMult: 4, suspicionMaxMult: 6 }

const deadTransitions = (sim: SwimSim): string[] => sim.transitions.filter((t) => t.state === 'dead').map((t) => `${t.node} saw ${t.peer} dead at ${t.at}`)

describe('SWIM with Lifeguard (simulated, virtual time)', () => {
  it('suspects a crashed member within a probe cycle and declares it dead after the suspicion timeout, on every node', () => {
    const sim = new SwimSim(IDS, DEFAULTS)
    sim.run(10_000)
    expect(deadTransitions(sim)).toEqual([])
    sim.crash('e')
    const crashedAt = sim.now
    sim.run(crashedAt + 20_000)
    for (const id of IDS.slice(0, 4)) {
      const seen = sim.transitions.filter((t) => t.node === id && t.peer === 'e' && t.at >= crashedAt)
      const suspect = seen.find((t) => t.state === 'suspect')!.at - crashedAt
      const dead = seen.find((t) => t.state === 'dead')!.at - crashedAt
      // A cycle of probes over 4 members is 2 s; then the minimum suspicion, 2 s at this size, once two others confirm.
      expect(suspect).toBeLessThanOrEqual(2 * 500 * 4)
      expect(dead - suspect).toBeGreaterThanOrEqual(2_000)
      expect(dead).toBeLessThanOrEqual(2 * 500 * 4 + 2_000 + 1_000)
    }
  })

  it('announces again soon after start and after a join, so suspicions of a crash are confirmed even when the first announcement was lost', () => {
    const sim = new SwimSim(IDS, DEFAULTS)
    // Everyone's first announcement reaches no one (the gossip mesh is still forming); the next ones, a second later, do.
    sim.broadcastsLostUntil = 1
    sim.run(3_000)
    sim.crash('e')
    const crashedAt = sim.now
    sim.run(crashedAt + 20_000)
    const deaths = sim.transitions.filter((t) => t.peer === 'e' && t.state === 'dead')
    expect(deaths).toHaveLength(4)
    // Confirmed: the minimum suspicion, not the 12 s an unconfirmed one lasts.
    for (const death of deaths) expect(death.at - crashedAt).toBeLessThanOrEqual(2 * 500 * 4 + 2_000 + 1_000)
  })

  it('declares nobody dead when one node stalls for 500 ms every 10 s for two minutes', () => {
    const sim = new SwimSim(IDS, DEFAULTS)
    sim.run(5_000)
    for (let t = 5_000; t < 125_000; t += 10_000) {
      sim.stall('c', 500)
      sim.run(t + 10_000)
    }
    expect(deadTransitions(sim)).toEqual([])
    // The stalled node was suspected at times and refuted each time (its incarnation rose), or was never suspected at all.
    const suspicions = sim.transitions.filter((t) => t.peer === 'c' && t.state === 'suspect').length
    const refutations = sim.swim('c').incarnation - 1_002
    expect(suspicions === 0 || refutations > 0).toBe(true)
  })

  it('a stalled node accuses nobody: what timed out while it was stuck proves nothing', () => {
    const sim = new SwimSim(IDS, DEFAULTS)
    sim.run(5_000)
    for (let t = 5_000; t < 65_000; t += 3_000) {
      sim.stallWhenProbing('a', 1_500)
      sim.run(t + 3_000)
    }
    const accused = sim.claims.filter((c) => c.from === 'a' && c.claim.kind !== 'alive')
    expect(accused).toEqual([])
    expect(deadTransitions(sim)).toEqual([])
  })

  it('a slow node widens its own timeouts (local health), and narrows them again once probes succeed', () => {
    const swim = new Swim('a', 1, DEFAULTS)
    for (const peer of ['b', 'c', 'd']) swim.heard(peer, 0)
    swim.tick(0)
    const first = swim.drain().find((action) => action.t === 'probe')
    expect(first).toMatchObject({ timeoutMs: 300 })
    swim.stalled(1_000, 600)
    swim.stalled(2_000, 600)
    expect(swim.localHealth).toBe(2)
    swim.tick(10_000)
    const slow = swim.drain().find((action) => action.t === 'probe')
    expect(slow).toMatchObject({ timeoutMs: 900 })
    if (slow?.t !== 'probe') throw new Error('expected a probe')
    // A probe whose timer fired far too late (this node was stuck) is not a failure of the member.
    swim.probeDone(slow.id, { ok: false }, 10_000 + 5_000)
    expect(swim.drain().filter((action) => action.t === 'probe-indirect')).toEqual([])
    expect(swim.localHealth).toBe(3)
    for (let t = 20_000; swim.localHealth > 0 && t < 100_000; t += 5_000) {
      swim.tick(t)
      const probe = swim.drain().find((action) => action.t === 'probe')
      if (probe?.t === 'probe') swim.probeDone(probe.id, { ok: true }, t + 1)
    }
    expect(swim.localHealth).toBe(0)
  })

  it('times a direct probe by the member\'s round trip when it is known, in whole milliseconds, within three times the configured timeout', () => {
    const probeTimeout = (rtt: number | undefined): number | undefined => {
      const swim = new Swim('a', 1, DEFAULTS, Math.random, () => rtt)
      swim.heard('b', 0)
      swim.tick(0)
      const probe = swim.drain().find((action) => action.t === 'probe')
      return probe?.t === 'probe' ? probe.timeoutMs : undefined
    }
    expect(probeTimeout(undefined)).toBe(300)
    expect(probeTimeout(40)).toBe(300)
    expect(probeTimeout(123.4)).toBe(371)
    expect(probeTimeout(5_000)).toBe(900)
    expect(probeTimeout(Number.NaN)).toBe(300)
  })

  it('a suspect refutes with a higher incarnation, and everyone takes it back', () => {
    const sim = new SwimSim(IDS, DEFAULTS)
    sim.run(3_000)
    const before = sim.swim('d').incarnation
    // b claims d is suspect (a mistake, or a lie): the others suspect d until d, hearing of it, refutes.
    const claim = { kind: 'suspect' as const, subject: 'd', incarnation: before }
    for (const id of ['a', 'c', 'd', 'e']) sim.swim(id).claim('b', claim, sim.now)
    expect(sim.stateOf('a', 'd')).toBe('suspect')
    expect(sim.swim('d').incarnation).toBe(before + 1)
    const refutation = sim.swim('d').drain().find((action) => action.t === 'broadcast')
    expect(refutation).toMatchObject({ claim: { kind: 'alive', subject: 'd', incarnation: before + 1 } })
    for (const id of ['a', 'b', 'c', 'e']) sim.swim(id).claim('d', (refutation as { claim: typeof claim }).claim, sim.now)
    for (const id of ['a', 'b', 'c', 'e']) expect(sim.stateOf(id, 'd')).toBe('alive')
  })

  it('refuses claims that would let one node kill or revive another on its own say', () => {
    const swim = new Swim('a', 1, DEFAULTS)
    swim.heard('b', 0)
    expect(swim.claim('b', { kind: 'alive', subject: 'b', incarnation: 7 }, 0)).toBe('applied')
    // Only b may say b is alive; an incarnation b never announced is refused; a death claim is one confirmation, not a death.
    expect(swim.claim('c', { kind: 'alive', subject: 'b', incarnation: 99 }, 0)).toBe('implausible')
    expect(swim.claim('c', { kind: 'suspect', subject: 'b', incarnation: 8 }, 0)).toBe('implausible')
    expect(swim.claim('c', { kind: 'suspect', subject: 'b', incarnation: 6 }, 0)).toBe('stale')
    expect(swim.claim('c', { kind: 'dead', subject: 'b', incarnation: 7 }, 0)).toBe('applied')
    expect(swim.get('b')?.state).toBe('suspect')
    expect(swim.claim('c', { kind: 'suspect', subject: 'b', incarnation: Date.now() + 2 * 86_400_000 }, Date.now())).toBe('implausible')
    // About a member that never announced an incarnation: not believed, looked at instead.
    swim.heard('z', 0)
    swim.drain()
    expect(swim.claim('c', { kind: 'suspect', subject: 'z', incarnation: 1 }, 0)).toBe('unknown')
    expect(swim.drain().some((action) => action.t === 'probe' && action.peer === 'z')).toBe(true)
  })

  it('announces itself again on a join only in a small mesh: in a large one the newcomer waits for the periodic announcement', () => {
    const announcementsAfterJoin = (members: number): number => {
      const swim = new Swim('a', 1, DEFAULTS)
      for (let i = 0; i < members; i++) swim.claim(`p${i}`, { kind: 'alive', subject: `p${i}`, incarnation: 1 }, 0)
      // Past the first announcements (1 s, 3 s, 9 s apart), into the 30 s period.
      for (let t = 0; t <= 40_000; t += 100) swim.tick(t)
      swim.drain()
      swim.claim('new', { kind: 'alive', subject: 'new', incarnation: 1 }, 40_000)
      for (let t = 40_000; t <= 42_000; t += 100) swim.tick(t)
      return swim.drain().filter((a) => a.t === 'broadcast' && a.claim.kind === 'alive' && a.claim.subject === 'a').length
    }
    expect(announcementsAfterJoin(10)).toBe(1)
    expect(announcementsAfterJoin(100)).toBe(0)
  })

  it('counts the members that are not dead through deaths and refutations, wakes for the dead only to forget them, and forgets them', () => {
    const peers = Array.from({ length: 20 }, (_, i) => `p${i}`)
    const swim = new Swim('a', 1, { ...DEFAULTS, forgetAfterMs: 60_000 })
    for (const peer of peers) swim.claim(peer, { kind: 'alive', subject: peer, incarnation: 1 }, 0)
    // α · log10 21 · 500 ms: Lifeguard's N is every member not dead, this node included.
    const minimum = (n: number): number => 4 * Math.max(1, Math.log10(n)) * 500
    expect(swim.suspicionTimeout(2)).toBeCloseTo(minimum(21))
    for (const peer of peers.slice(0, 5)) {
      swim.claim('p10', { kind: 'suspect', subject: peer, incarnation: 1 }, 1_000)
      swim.claim('p11', { kind: 'suspect', subject: peer, incarnation: 1 }, 1_000)
      swim.claim('p12', { kind: 'suspect', subject: peer, incarnation: 1 }, 1_000)
    }
    swim.tick(20_000)
    expect(swim.counts()).toEqual({ alive: 15, suspect: 0, dead: 5 })
    expect(swim.suspicionTimeout(2)).toBeCloseTo(minimum(16))
    // One of them was only cut off: it refutes with a higher incarnation and counts again.
    swim.claim('p0', { kind: 'alive', subject: 'p0', incarnation: 2 }, 21_000)
    expect(swim.suspicionTimeout(2)).toBeCloseTo(minimum(17))
    swim.drain()
    // The next timer is a probe or an announcement, never later than a probe interval away; the dead are forgotten at their time.
    expect(swim.nextWakeup(21_000)).toBeLessThanOrEqual(21_500)
    swim.tick(20_000 + 60_000)
    const forgotten = swim.drain().filter((a) => a.t === 'forgotten').map((a) => (a as { peer: string }).peer).sort()
    expect(forgotten).toEqual(['p1', 'p2', 'p3', 'p4'])
    expect(swim.get('p1')).toBeUndefined()
    expect(swim.counts()).toEqual({ alive: 16, suspect: 0, dead: 0 })
    expect(swim.suspicionTimeout(2)).toBeCloseTo(minimum(17))
  })

  it('confirmations from other members bring the suspicion timeout down from its maximum to its minimum', () => {
    const swim = new Swim('a', 1, DEFAULTS)
    for (const peer of ['b', 'c', 'd', 'e', 'f']) swim.heard(peer, 0)
    // α · max(1, log10 6) · 500 ms = 2 s; β = 6 makes the unconfirmed one 12 s; K = α − 2 = 2 confirmations.
    expect(swim.suspicionTimeout(0)).toBe(12_000)
    expect(swim.suspicionTimeout(1)).toBeLessThan(12_000)
    expect(swim.suspicionTimeout(1)).toBeGreaterThan(2_000)
    expect(swim.suspicionTimeout(2)).toBe(2_000)
    expect(swim.suspicionTimeout(10)).toBe(2_000)
  })

  it('does not suspect a member that others can still reach (one bad link)', () => {
    const sim = new SwimSim(IDS, DEFAULTS)
    sim.setLink('a', 'b', false)
    sim.run(60_000)
    expect(sim.transitions.filter((t) => t.peer === 'b' && t.state !== 'alive')).toEqual([])
  })

  it('gives a far member room for its round trip: direct probes of a member 340 ms away succeed, and its crash is still found', () => {
    const far = (knowRtts: boolean): SwimSim => {
      const sim = new SwimSim(IDS, DEFAULTS)
      sim.knowRtts = knowRtts
      for (const id of IDS) if (id !== 'e') sim.setDelay(id, 'e', 170)
      sim.run(60_000)
      return sim
    }
    // With the configured 300 ms alone, every direct probe of it fails and only the indirect ones save it.
    expect(far(false).indirectProbes.get('e') ?? 0).toBeGreaterThan(20)
    const sim = far(true)
    expect(sim.indirectProbes.get('e') ?? 0).toBe(0)
    expect(sim.transitions.filter((t) => t.peer === 'e' && t.state !== 'alive')).toEqual([])
    sim.crash('e')
    sim.run(80_000)
    // Found by all four, within a probe round, a direct and an indirect probe of the far member, and the longest suspicion.
    const deaths = sim.transitions.filter((t) => t.peer === 'e' && t.state === 'dead')
    expect(deaths.map((t) => t.node).sort()).toEqual(['a', 'b', 'c', 'd'])
    for (const death of deaths) expect(death.at - 60_000).toBeLessThan(4 * 500 + 3 * 900 + 12_000)
  })

  it('a member cut off from everyone, and declared dead, comes back once it is heard from again', () => {
    const sim = new SwimSim(IDS, DEFAULTS)
    sim.run(3_000)
    for (const other of IDS) if (other !== 'e') sim.setLink('e', other, false)
    sim.run(30_000)
    expect(sim.stateOf('a', 'e')).toBe('dead')
    for (const other of IDS) if (other !== 'e') sim.setLink('e', other, true)
    // Its next load report reaches a: a tells it it is dead, it refutes, everyone revives it.
    sim.swim('a').heard('e', sim.now)
    sim.run(sim.now + 1)
    sim.run(sim.now + 2_000)
    for (const id of ['a', 'b', 'c', 'd']) expect(sim.stateOf(id, 'e')).toBe('alive')
  })
})

describe('membership claim codec', () => {
  const subject = '12D3KooWNFBn5sWgNob1oDEUEkPbomk8gWA39jVo8QBQSF42p4PR'

  it('round-trips claims', () => {
    for (const kind of ['alive', 'suspect', 'dead'] as const) {
      expect(decodeClaim(encodeClaim({ kind, subject, incarnation: 1_764_000_000_123 }))).toEqual({ kind, subject, incarnation: 1_764_000_000_123 })
    }
  })

  it('refuses garbage with a refusal, never a crash', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      try {
        decodeClaim(bytes)
        return false
      } catch (err) {
        return err instanceof Refusal && err.action === 'reject'
      }
    }), { numRuns: 500 })
  })
})

describe('probe protocol codec', () => {
  const target = peerIdFromString('12D3KooWNFBn5sWgNob1oDEUEkPbomk8gWA39jVo8QBQSF42p4PR')

  it('round-trips requests and responses, capping the timeout', () => {
    const request = decodeProbeRequest(encodeProbeRequest({ target, timeoutMs: 1_500 }))
    expect(request.target.equals(target)).toBe(true)
    expect(request.timeoutMs).toBe(1_500)
    expect(decodeProbeRequest(encodeProbeRequest({ target, timeoutMs: 10 ** 9 })).timeoutMs).toBe(10_000)
    expect(decodeProbeResponse(encodeProbeResponse({ ok: true, rttMs: 42.4 }))).toEqual({ ok: true, rttMs: 42 })
  })

  it('refuses garbage with a typed error', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 100 }), (bytes) => {
      for (const decode of [decodeProbeRequest, decodeProbeResponse]) {
        try {
          decode(bytes)
          return false
        } catch (err) {
          if (!(err instanceof ProbeProtocolError)) return false
        }
      }
      return true
    }), { numRuns: 500 })
  })
})
