import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { createLogger } from '../../daemon/log/logger.ts'
import { Metrics } from '../../daemon/metrics.ts'
import { SloTracker, type SloOptions } from '../../daemon/slo.ts'

const options: SloOptions = {
  windowMs: 3_600_000,
  slotMs: 10_000,
  burnWindowMs: 300_000,
  apiLatencyMs: 100,
  apiLatencyTarget: 0.99,
  convergenceMs: 1_000,
  convergenceTarget: 0.99,
  shardAvailabilityTarget: 0.999,
  shedAboveBurnRate: 10,
  minEvents: 20
}

function tracker (): { slo: SloTracker, clock: { now: number }, lines: Array<Record<string, unknown>>, metrics: Metrics } {
  const clock = { now: 1_000_000_000 }
  const lines: Array<Record<string, unknown>> = []
  const destination = new Writable({ write (chunk, _encoding, done) { lines.push(JSON.parse(String(chunk))); done() } })
  const metrics = new Metrics()
  return { slo: new SloTracker(options, createLogger({ level: 'info', format: 'json', destination }), metrics, () => clock.now), clock, lines, metrics }
}

const objective = (slo: SloTracker, name: string) => slo.evaluate().objectives.find((o) => o.name === name)!

describe('SLO tracker', () => {
  it('computes the indicator, the budget left and the burn rate', () => {
    const { slo, clock } = tracker()
    expect(objective(slo, 'api-latency').status).toBe('no-data')
    for (let i = 0; i < 990; i++) slo.observeApiLatency(20)
    for (let i = 0; i < 5; i++) slo.observeApiLatency(500)
    const o = objective(slo, 'api-latency')
    expect(o).toMatchObject({ good: 990, total: 995, status: 'ok' })
    // 5 bad of 995 is 0.5%: half the 1% budget is spent, and it burns at half the allowed rate.
    expect(o.budgetRemaining).toBeCloseTo(0.4975, 3)
    expect(o.burnRate).toBeCloseTo(0.5025, 3)
    // Later, a bad patch: the recent burn is fast, the window's budget not yet spent.
    clock.now += options.burnWindowMs + options.slotMs
    for (let i = 0; i < 10; i++) slo.observeApiLatency(20)
    slo.observeApiLatency(500)
    expect(objective(slo, 'api-latency')).toMatchObject({ status: 'burning' })
    expect(objective(slo, 'api-latency').burnRate).toBeCloseTo(9.09, 1)
    for (let i = 0; i < 100; i++) slo.observeApiLatency(500)
    expect(objective(slo, 'api-latency').status).toBe('exhausted')
  })

  it('forgets events older than the window', () => {
    const { slo, clock } = tracker()
    for (let i = 0; i < 100; i++) slo.observeConvergence(5_000)
    clock.now += options.windowMs + 2 * options.slotMs
    slo.observeConvergence(10)
    expect(objective(slo, 'convergence')).toMatchObject({ good: 1, total: 1, sli: 1 })
  })

  it('opens the decorative breaker on a fast burn, logs it, and closes it when the burn stops', () => {
    const { slo, clock, lines, metrics } = tracker()
    for (let i = 0; i < 10; i++) slo.observeApiLatency(500)
    // Ten events: below minEvents, a blip rather than a trend.
    slo.tick()
    expect(slo.shedding()).toBe(false)
    for (let i = 0; i < 20; i++) slo.observeApiLatency(500)
    slo.tick()
    expect(slo.shedding()).toBe(true)
    expect(slo.evaluate().breakers[0]).toMatchObject({ name: 'decorative', open: true })
    expect(lines.find((l) => l.code === 'SHEDDING_DECORATIVE')).toMatchObject({ level: 'warn', objective: 'api-latency' })
    // The burn window moves on; good traffic only.
    clock.now += options.burnWindowMs + options.slotMs
    for (let i = 0; i < 50; i++) slo.observeApiLatency(10)
    slo.tick()
    expect(slo.shedding()).toBe(false)
    expect(lines.some((l) => l.code === 'SHEDDING_STOPPED')).toBe(true)
    return metrics.render().then(({ body }) => {
      expect(body).toContain('metagrid_breaker_open{breaker="decorative"} 0')
      expect(body).toMatch(/metagrid_slo_error_budget_remaining\{objective="api-latency"\} -?\d/)
    })
  })

  it('samples shard availability once a slot', () => {
    const { slo, clock } = tracker()
    let good = 64
    slo.setAvailabilitySampler(() => ({ good, total: 64 }))
    slo.tick()
    clock.now += options.slotMs
    good = 60
    slo.tick()
    const o = objective(slo, 'shard-availability')
    expect(o).toMatchObject({ good: 124, total: 128 })
    expect(o.status).toBe('exhausted')
  })
})
