/**
 * The node's own record of when it ran, kept in LevelDB, from which it states
 * its reliability: the fraction of a window (7 days by default, or since the
 * node first started if that is shorter) during which the daemon was up.
 * The current session's end is moved forward every minute, so a crash costs
 * at most a minute of recorded uptime.
 */
import * as dagCbor from '@ipld/dag-cbor'
import type { Sublevel } from './database.ts'

export interface UptimeOptions {
  windowMs: number
  /** How often the running session is written down. */
  tickMs: number
  now: () => number
}

type Session = [start: number, end: number]

/** Older sessions are merged away beyond this many; a week of restarts every ten minutes fits. */
const MAX_SESSIONS = 1_000
const KEY = 'uptime-sessions'

export class UptimeLog {
  private readonly db: Sublevel
  private readonly options: UptimeOptions
  private sessions: Session[] = []
  private timer: NodeJS.Timeout | undefined

  constructor (db: Sublevel, options: UptimeOptions) {
    this.db = db
    this.options = options
  }

  async start (): Promise<void> {
    const stored = await this.db.get(KEY)
    if (stored != null) {
      try {
        const decoded = dagCbor.decode(stored)
        if (Array.isArray(decoded)) {
          this.sessions = decoded.filter((s): s is Session => Array.isArray(s) && s.length === 2 && s.every(Number.isSafeInteger) && s[0] <= s[1])
        }
      } catch {
        // A damaged log only loses history: the node starts counting afresh.
        this.sessions = []
      }
    }
    const now = this.options.now()
    this.sessions.push([now, now])
    if (this.sessions.length > MAX_SESSIONS) this.sessions = this.sessions.slice(-MAX_SESSIONS)
    await this.persist()
    this.timer = setInterval(() => { void this.touch() }, this.options.tickMs)
    this.timer.unref()
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    if (this.sessions.length > 0) await this.touch()
  }

  private async touch (): Promise<void> {
    const current = this.sessions[this.sessions.length - 1]
    if (current == null) return
    current[1] = this.options.now()
    await this.persist().catch(() => {})
  }

  private async persist (): Promise<void> {
    await this.db.put(KEY, dagCbor.encode(this.sessions))
  }

  /** Uptime fraction over the window, and the window actually covered (seconds). */
  reliability (): { uptime: number, windowS: number } {
    const now = this.options.now()
    const first = this.sessions[0]?.[0] ?? now
    const windowStart = Math.max(first, now - this.options.windowMs)
    const window = now - windowStart
    if (window <= 0) return { uptime: 1, windowS: 0 }
    let up = 0
    for (const [start, end] of this.sessions) {
      const last = this.sessions[this.sessions.length - 1]
      const effectiveEnd = last != null && start === last[0] ? now : end
      up += Math.max(0, Math.min(effectiveEnd, now) - Math.max(start, windowStart))
    }
    return { uptime: Math.min(1, up / window), windowS: Math.round(window / 1000) }
  }
}
