/**
 * Service level objectives, evaluated continuously on this node, and the
 * circuit breaker that sheds decorative work when an error budget burns.
 *
 * Each objective counts good and total events in slots of `slotMs` over a
 * rolling `windowMs`:
 * - `api-latency`: an API request answered within `apiLatencyMs` (a p99
 *   objective is "99% of requests within the threshold");
 * - `convergence`: a remote write applied here within `convergenceMs` of its
 *   origin (writes made before this node started are catching up, not
 *   convergence, and are not counted);
 * - `shard-availability`: sampled once a slot (not while the node is still
 *   settling), the world shards that have a host with a valid lease.
 *
 * The SLI is good/total over the window; the error budget left is
 * 1 − (bad/total)/(1 − target); the burn rate is the share of bad events over
 * the last `burnWindowMs` divided by the share the objective allows (1 means
 * the budget lasts exactly the window). When any objective burns faster than
 * `shedAboveBurnRate`, the `decorative` breaker opens: writes to decorative
 * layers are refused with 503 `SHED_LOAD` until every burn rate is back under
 * 1. Opening and closing are logged.
 */
import type { Logger } from './log/logger.ts'
import type { Metrics } from './metrics.ts'

export interface SloOptions {
  windowMs: number
  slotMs: number
  burnWindowMs: number
  apiLatencyMs: number
  apiLatencyTarget: number
  convergenceMs: number
  convergenceTarget: number
  shardAvailabilityTarget: number
  shedAboveBurnRate: number
  /** Fewer events than this in the burn window never open the breaker (one slow request is not a trend). */
  minEvents: number
}

export type ObjectiveName = 'api-latency' | 'convergence' | 'shard-availability'

export interface ObjectiveReport {
  name: ObjectiveName
  description: string
  target: number
  thresholdMs: number | null
  /** good / total over the window; null with no events. */
  sli: number | null
  good: number
  total: number
  /** Fraction of the error budget left over the window, 1 (untouched) down to 0 (spent) and below. */
  budgetRemaining: number
  burnRate: number
  status: 'ok' | 'burning' | 'exhausted' | 'no-data'
}

export interface BreakerReport {
  name: 'decorative'
  open: boolean
  since: number | null
  reason: string | null
}

export interface SloReport {
  windowMs: number
  burnWindowMs: number
  evaluatedAt: number
  objectives: ObjectiveReport[]
  breakers: BreakerReport[]
}

interface Slot { start: number, good: number, total: number }

class Objective {
  readonly name: ObjectiveName
  readonly description: string
  readonly target: number
  readonly thresholdMs: number | null
  private readonly slots: Slot[] = []

  constructor (name: ObjectiveName, description: string, target: number, thresholdMs: number | null) {
    this.name = name
    this.description = description
    this.target = target
    this.thresholdMs = thresholdMs
  }

  add (now: number, slotMs: number, windowMs: number, good: number, total: number): void {
    const start = now - (now % slotMs)
    let slot = this.slots.at(-1)
    if (slot == null || slot.start !== start) {
      slot = { start, good: 0, total: 0 }
      this.slots.push(slot)
      while (this.slots.length > 0 && this.slots[0]!.start <= now - windowMs - slotMs) this.slots.shift()
    }
    slot.good += good
    slot.total += total
  }

  /** Events in the slots that overlap the last `spanMs`. */
  counts (now: number, spanMs: number, slotMs: number): { good: number, total: number } {
    let good = 0
    let total = 0
    for (const slot of this.slots) {
      if (slot.start + slotMs <= now - spanMs) continue
      good += slot.good
      total += slot.total
    }
    return { good, total }
  }
}

export class SloTracker {
  private readonly options: SloOptions
  private readonly log: Logger
  private readonly metrics: Metrics | null
  private readonly now: () => number
  private readonly objectives = new Map<ObjectiveName, Objective>()
  private breaker: BreakerReport = { name: 'decorative', open: false, since: null, reason: null }
  private timer: NodeJS.Timeout | undefined
  private sampler: (() => { good: number, total: number } | null) | undefined

  constructor (options: SloOptions, logger: Logger, metrics: Metrics | null, now: () => number = Date.now) {
    this.options = options
    this.log = logger.child({ component: 'metagrid:slo' })
    this.metrics = metrics
    this.now = now
    const add = (objective: Objective): void => { this.objectives.set(objective.name, objective) }
    add(new Objective('api-latency', `API requests answered within ${options.apiLatencyMs} ms`, options.apiLatencyTarget, options.apiLatencyMs))
    add(new Objective('convergence', `remote writes applied within ${options.convergenceMs} ms of their origin`, options.convergenceTarget, options.convergenceMs))
    add(new Objective('shard-availability', 'world shards with a host holding a valid lease, sampled every slot', options.shardAvailabilityTarget, null))
  }

  /** Where availability samples come from (placement); without it the objective has no data. */
  setAvailabilitySampler (sampler: () => { good: number, total: number } | null): void {
    this.sampler = sampler
  }

  start (): void {
    this.timer = setInterval(() => { this.tick() }, this.options.slotMs)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
  }

  observeApiLatency (ms: number): void {
    this.record('api-latency', ms <= this.options.apiLatencyMs)
  }

  observeConvergence (ms: number): void {
    this.record('convergence', ms <= this.options.convergenceMs)
  }

  private record (name: ObjectiveName, good: boolean): void {
    this.objectives.get(name)!.add(this.now(), this.options.slotMs, this.options.windowMs, good ? 1 : 0, 1)
  }

  /** Samples availability, evaluates, moves the breaker and the gauges. Runs every slot. */
  tick (): SloReport {
    const sample = this.sampler?.()
    if (sample != null && sample.total > 0) this.objectives.get('shard-availability')!.add(this.now(), this.options.slotMs, this.options.windowMs, sample.good, sample.total)
    return this.evaluate()
  }

  /** True while decorative work is being shed. */
  shedding (): boolean {
    return this.breaker.open
  }

  /** Why the breaker is open, as of the last evaluation; null when it is closed. */
  shedReason (): string | null {
    return this.breaker.open ? this.breaker.reason : null
  }

  evaluate (): SloReport {
    const now = this.now()
    const { windowMs, burnWindowMs } = this.options
    const reports = [...this.objectives.values()].map((o): ObjectiveReport => {
      const window = o.counts(now, windowMs, this.options.slotMs)
      const recent = o.counts(now, burnWindowMs, this.options.slotMs)
      const allowed = 1 - o.target
      const badShare = window.total === 0 ? 0 : (window.total - window.good) / window.total
      const recentBad = recent.total === 0 ? 0 : (recent.total - recent.good) / recent.total
      const budgetRemaining = allowed > 0 ? 1 - badShare / allowed : (badShare > 0 ? Number.NEGATIVE_INFINITY : 1)
      const burnRate = allowed > 0 ? recentBad / allowed : (recentBad > 0 ? Number.POSITIVE_INFINITY : 0)
      const status = window.total === 0 ? 'no-data' : budgetRemaining <= 0 ? 'exhausted' : burnRate > 1 ? 'burning' : 'ok'
      return { name: o.name, description: o.description, target: o.target, thresholdMs: o.thresholdMs, sli: window.total === 0 ? null : window.good / window.total, good: window.good, total: window.total, budgetRemaining: round(budgetRemaining), burnRate: round(burnRate), status }
    })
    this.moveBreaker(reports, now)
    if (this.metrics != null) {
      for (const r of reports) {
        if (r.sli != null) this.metrics.sloSli.set({ objective: r.name }, r.sli)
        this.metrics.sloBudgetRemaining.set({ objective: r.name }, Number.isFinite(r.budgetRemaining) ? r.budgetRemaining : -1)
        this.metrics.sloBurnRate.set({ objective: r.name }, Number.isFinite(r.burnRate) ? r.burnRate : 1e9)
      }
      this.metrics.breakerOpen.set({ breaker: 'decorative' }, this.breaker.open ? 1 : 0)
    }
    return { windowMs, burnWindowMs, evaluatedAt: now, objectives: reports, breakers: [{ ...this.breaker }] }
  }

  private moveBreaker (reports: ObjectiveReport[], now: number): void {
    const burning = reports.find((r) => r.burnRate > this.options.shedAboveBurnRate && this.recentEvents(r.name, now) >= this.options.minEvents)
    if (!this.breaker.open && burning != null) {
      const reason = `${burning.name} burns its error budget ${burning.burnRate}× too fast`
      this.breaker = { name: 'decorative', open: true, since: now, reason }
      this.log.warn({ code: 'SHEDDING_DECORATIVE', objective: burning.name, burnRate: burning.burnRate }, `shedding decorative work: ${reason}`)
    } else if (this.breaker.open && reports.every((r) => r.burnRate <= 1)) {
      this.log.info({ code: 'SHEDDING_STOPPED', shedMs: now - (this.breaker.since ?? now) }, 'stopped shedding decorative work: every objective is within its budget again')
      this.breaker = { name: 'decorative', open: false, since: now, reason: null }
    }
  }

  private recentEvents (name: ObjectiveName, now: number): number {
    return this.objectives.get(name)!.counts(now, this.options.burnWindowMs, this.options.slotMs).total
  }
}

const round = (x: number): number => (Number.isFinite(x) ? Number(x.toFixed(4)) : x)
