/**
 * Who is alive, as this node sees it: SWIM-style failure detection with
 * Lifeguard's first lesson, never evict on one missed probe.
 *
 * - A member is **alive** while it is heard from: a valid load report
 *   (which reaches us through the gossip mesh even when our own link to it
 *   is down), or a successful probe, direct or through another peer.
 * - After `suspectAfterMs` of silence, or when a probe fails, the member is
 *   **checked**: a direct ping, then indirect pings through `k` other
 *   members. Only when all of them fail does it become **suspect**.
 * - A suspect that stays unreachable for `deadAfterMs` (it is re-checked
 *   meanwhile) is **dead**. Any report or successful probe makes it alive
 *   again at once: suspicion is cheap to refute.
 * - Dead members are forgotten after `forgetAfterMs`.
 *
 * Events (`member:alive`, `member:suspect`, `member:dead`, `member:forgotten`)
 * carry the peer id and the reason, for placement and the API.
 */
import { TypedEventEmitter } from 'main-event'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'

export type MemberState = 'alive' | 'suspect' | 'dead'

export interface Member {
  peerId: string
  state: MemberState
  /** Last time (ms, local clock) anything proved the member alive. */
  lastHeard: number
  /** When the member entered its current state. */
  since: number
  /** What last changed its state. */
  reason: string
}

export interface MemberEvent {
  peerId: string
  previous: MemberState | null
  reason: string
}

export interface MembershipEvents {
  'member:alive': CustomEvent<MemberEvent>
  'member:suspect': CustomEvent<MemberEvent>
  'member:dead': CustomEvent<MemberEvent>
  'member:forgotten': CustomEvent<MemberEvent>
}

export interface MembershipOptions {
  suspectAfterMs: number
  deadAfterMs: number
  forgetAfterMs: number
  /** How often timers are evaluated. A quarter of the shortest timeout keeps detection within 25% of the configured time. */
  tickMs: number
}

/** How a member was proved reachable by a check, or null when nobody could reach it. */
export type CheckResult = 'direct' | 'indirect' | null

export interface MembershipComponents {
  /** Direct ping, then indirect pings through other members. */
  check: (peerId: string) => Promise<CheckResult>
  now: () => number
  metrics: P2pMetrics | null
  logger: Logger
}

interface Tracked extends Member {
  checking: boolean
  lastCheck: number
}

export class Membership extends TypedEventEmitter<MembershipEvents> {
  private readonly members = new Map<string, Tracked>()
  private readonly components: MembershipComponents
  private readonly options: MembershipOptions
  private readonly log: Logger
  private timer: NodeJS.Timeout | undefined

  constructor (components: MembershipComponents, options: MembershipOptions) {
    super()
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:membership' })
  }

  start (): void {
    this.timer = setInterval(() => { this.tick() }, this.options.tickMs)
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** Evidence that `peerId` is alive: a valid report, or a successful probe. */
  heard (peerId: string, reason: string): void {
    const now = this.components.now()
    const member = this.members.get(peerId)
    if (member == null) {
      this.members.set(peerId, { peerId, state: 'alive', lastHeard: now, since: now, reason, checking: false, lastCheck: 0 })
      this.transition(peerId, null, 'alive', reason)
      return
    }
    member.lastHeard = now
    if (member.state !== 'alive') this.set(member, 'alive', reason)
  }

  /** A probe of a known member failed: check it now rather than waiting for its silence to time out. */
  probeFailed (peerId: string): void {
    const member = this.members.get(peerId)
    if (member != null && member.state === 'alive') void this.runCheck(member)
  }

  get (peerId: string): Member | undefined {
    const member = this.members.get(peerId)
    return member == null ? undefined : this.view(member)
  }

  list (): Member[] {
    return [...this.members.values()].map((member) => this.view(member))
  }

  /** Members in the given states, for choosing whom to probe or ask. */
  peers (...states: MemberState[]): string[] {
    return [...this.members.values()].filter((member) => states.includes(member.state)).map((member) => member.peerId)
  }

  /** Evaluates every member's timers; runs on an interval, and directly in tests. */
  tick (): void {
    const now = this.components.now()
    for (const member of this.members.values()) {
      switch (member.state) {
        case 'alive':
          if (now - member.lastHeard >= this.options.suspectAfterMs) void this.runCheck(member)
          break
        case 'suspect':
          if (now - member.since >= this.options.deadAfterMs) {
            this.set(member, 'dead', `unreachable for ${now - member.lastHeard} ms, directly and through peers`)
          } else if (now - member.lastCheck >= Math.max(this.options.tickMs, this.options.deadAfterMs / 3)) {
            void this.runCheck(member)
          }
          break
        case 'dead':
          if (now - member.since >= this.options.forgetAfterMs) {
            this.members.delete(member.peerId)
            this.emitEvent('member:forgotten', { peerId: member.peerId, previous: 'dead', reason: 'dead too long' })
          }
          break
      }
    }
    this.updateGauges()
  }

  private async runCheck (member: Tracked): Promise<void> {
    if (member.checking) return
    member.checking = true
    member.lastCheck = this.components.now()
    let result: CheckResult = null
    try {
      result = await this.components.check(member.peerId)
    } catch (err) {
      this.log.warn({ code: 'MEMBER_CHECK_FAILED', err, peer: member.peerId }, 'member check failed unexpectedly')
    } finally {
      member.checking = false
    }
    if (this.members.get(member.peerId) !== member) return
    if (result != null) {
      this.heard(member.peerId, result === 'direct' ? 'probe' : 'indirect probe')
      return
    }
    // A failed check alone does not make a suspect: only one that confirms a silence longer than the timeout.
    const silentFor = this.components.now() - member.lastHeard
    if (member.state === 'alive' && silentFor >= this.options.suspectAfterMs) {
      this.set(member, 'suspect', `silent for ${silentFor} ms and unreachable directly and through peers`)
    }
  }

  private set (member: Tracked, state: MemberState, reason: string): void {
    const previous = member.state
    member.state = state
    member.since = this.components.now()
    member.reason = reason
    this.transition(member.peerId, previous, state, reason)
  }

  private transition (peerId: string, previous: MemberState | null, state: MemberState, reason: string): void {
    this.components.metrics?.memberTransitions.inc({ to: state })
    const level = state === 'dead' ? 'warn' : state === 'suspect' ? 'info' : previous == null ? 'debug' : 'info'
    this.log[level]({ peer: peerId, previous, state, reason }, `member ${state}`)
    this.emitEvent(`member:${state}`, { peerId, previous, reason })
    this.updateGauges()
  }

  private emitEvent (type: keyof MembershipEvents, detail: MemberEvent): void {
    this.safeDispatchEvent(type, { detail })
  }

  private updateGauges (): void {
    const metrics = this.components.metrics
    if (metrics == null) return
    const counts: Record<MemberState, number> = { alive: 0, suspect: 0, dead: 0 }
    for (const member of this.members.values()) counts[member.state]++
    for (const [state, value] of Object.entries(counts)) metrics.members.set({ state }, value)
  }

  private view (member: Tracked): Member {
    return { peerId: member.peerId, state: member.state, lastHeard: member.lastHeard, since: member.since, reason: member.reason }
  }
}
