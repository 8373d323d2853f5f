import { describe, expect, it } from 'vitest'
import { createLogger } from '../../daemon/log/logger.ts'
import { Membership, type CheckResult } from '../../p2p/membership/membership.ts'
import { decodeProbeRequest, decodeProbeResponse, encodeProbeRequest, encodeProbeResponse, ProbeProtocolError } from '../../p2p/membership/probe-protocol.ts'
import { peerIdFromString } from '@libp2p/peer-id'
import fc from 'fast-check'

const OPTIONS = { suspectAfterMs: 6_000, deadAfterMs: 10_000, forgetAfterMs: 60_000, tickMs: 500 }

function setup (reachable: (peer: string) => CheckResult) {
  let now = 0
  const checks: string[] = []
  const events: string[] = []
  const membership = new Membership({
    check: async (peer) => { checks.push(peer); return reachable(peer) },
    now: () => now,
    metrics: null,
    logger: createLogger({ level: 'silent', format: 'json' })
  }, OPTIONS)
  for (const type of ['member:alive', 'member:suspect', 'member:dead', 'member:forgotten'] as const) {
    membership.addEventListener(type, (event) => { events.push(`${event.detail.peerId}:${type.slice(7)}`) })
  }
  /** Advances the clock in ticks, letting the async checks settle after each. */
  const advance = async (ms: number): Promise<void> => {
    for (let t = 0; t < ms; t += OPTIONS.tickMs) {
      now += OPTIONS.tickMs
      membership.tick()
      await new Promise((resolve) => setImmediate(resolve))
    }
  }
  return { membership, checks, events, advance, heard: (peer: string) => membership.heard(peer, 'report') }
}

describe('membership', () => {
  it('keeps a member alive while its reports arrive, without checking it', async () => {
    const { membership, checks, advance, heard } = setup(() => null)
    for (let i = 0; i < 20; i++) {
      heard('a')
      await advance(2_000)
    }
    expect(membership.get('a')?.state).toBe('alive')
    expect(checks).toEqual([])
  })

  it('suspects a silent, unreachable member after the timeout, then declares it dead', async () => {
    const { membership, events, advance, heard } = setup(() => null)
    heard('a')
    await advance(5_500)
    expect(membership.get('a')?.state).toBe('alive')
    await advance(500)
    expect(membership.get('a')?.state).toBe('suspect')
    await advance(9_500)
    expect(membership.get('a')?.state).toBe('suspect')
    await advance(500)
    expect(membership.get('a')?.state).toBe('dead')
    expect(events).toEqual(['a:alive', 'a:suspect', 'a:dead'])
  })

  it('does not suspect a silent member that others can still reach (one bad link)', async () => {
    const { membership, checks, advance, heard } = setup(() => 'indirect')
    heard('a')
    await advance(60_000)
    expect(membership.get('a')?.state).toBe('alive')
    expect(checks.length).toBeGreaterThan(5)
  })

  it('lets a report refute suspicion and revive the dead', async () => {
    const { membership, events, advance, heard } = setup(() => null)
    heard('a')
    await advance(7_000)
    expect(membership.get('a')?.state).toBe('suspect')
    heard('a')
    expect(membership.get('a')?.state).toBe('alive')
    await advance(17_000)
    expect(membership.get('a')?.state).toBe('dead')
    heard('a')
    expect(membership.get('a')?.state).toBe('alive')
    expect(events).toEqual(['a:alive', 'a:suspect', 'a:alive', 'a:suspect', 'a:dead', 'a:alive'])
  })

  it('does not suspect on one failed probe of a member heard from recently', async () => {
    const { membership, advance, heard } = setup(() => null)
    heard('a')
    membership.probeFailed('a')
    await advance(1_000)
    expect(membership.get('a')?.state).toBe('alive')
  })

  it('forgets the dead after a while', async () => {
    const { membership, events, advance, heard } = setup(() => null)
    heard('a')
    await advance(16_000 + 60_000)
    expect(membership.get('a')).toBeUndefined()
    expect(events.at(-1)).toBe('a:forgotten')
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
