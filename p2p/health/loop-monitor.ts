/**
 * Watches this process's own event loop: a timer that should fire every
 * `intervalMs` and fires late measures a stall (a busy loop, a long GC, the
 * process stopped by SIGSTOP or a paused VM). Whoever judges others by
 * timeouts asks here first whether it was itself too slow to judge
 * (Lifeguard's "a slow node doubts itself before it accuses others").
 */
import { TypedEventEmitter } from 'main-event'

export interface Stall {
  /** How long the loop was stuck, ms. */
  ms: number
  /** When the stall ended (ms, local clock). */
  endedAt: number
}

export interface LoopMonitorEvents {
  stall: CustomEvent<Stall>
}

/** Stalls shorter than this are noise on a busy machine, not a reason for doubt. */
export const MIN_STALL_MS = 100
const INTERVAL_MS = 50
/** Stalls remembered, newest last. */
const KEEP = 32

export class LoopMonitor extends TypedEventEmitter<LoopMonitorEvents> {
  private readonly now: () => number
  private readonly stalls: Stall[] = []
  private timer: NodeJS.Timeout | undefined
  private last = 0

  constructor (now: () => number = Date.now) {
    super()
    this.now = now
  }

  start (): void {
    if (this.timer != null) return
    this.last = this.now()
    this.timer = setInterval(() => { this.check() }, INTERVAL_MS)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** Measures the time since the last check; public so a caller about to judge a timeout can catch a stall that just ended. */
  check (): void {
    const now = this.now()
    const late = now - this.last - INTERVAL_MS
    this.last = now
    if (late >= MIN_STALL_MS) this.record({ ms: late, endedAt: now })
  }

  /** Records a stall measured elsewhere (tests, or a caller's own late timer). */
  record (stall: Stall): void {
    this.stalls.push(stall)
    if (this.stalls.length > KEEP) this.stalls.shift()
    this.safeDispatchEvent('stall', { detail: stall })
  }

  /** The longest stall that ended within the last `windowMs`, or 0. */
  longestWithin (windowMs: number): number {
    const since = this.now() - windowMs
    let longest = 0
    for (const stall of this.stalls) if (stall.endedAt >= since) longest = Math.max(longest, stall.ms)
    return longest
  }
}
