/**
 * Readiness and liveness for systemd (`Type=notify`, `WatchdogSec=`), through
 * the `systemd-notify` program that ships with systemd.
 *
 * Node has no AF_UNIX datagram sockets, so the notification protocol cannot
 * be spoken from JavaScript; the npm packages that do it (`sd-notify`) are
 * native addons that need a compiler on every edge machine. `systemd-notify`
 * is present wherever systemd runs the unit. It sends from its own PID, so the
 * unit sets `NotifyAccess=all`, and each message names the daemon with
 * `--pid`. systemd 252 can drop a message from a process that exited before
 * it was looked up, so the watchdog is kicked three times per `WatchdogSec`:
 * one lost kick never kills a healthy node. The kick runs on the event loop,
 * so a node whose loop is stuck stops kicking and is restarted.
 */
import { execFile } from 'node:child_process'
import type { Logger } from './log/logger.ts'

export class SystemdNotifier {
  private readonly log: Logger
  private readonly env: NodeJS.ProcessEnv
  private readonly command: string
  private timer: NodeJS.Timeout | undefined
  private warned = false

  private constructor (env: NodeJS.ProcessEnv, logger: Logger, command: string) {
    this.env = env
    this.log = logger.child({ component: 'metagrid:systemd' })
    this.command = command
  }

  /** A notifier when systemd asked for notifications (NOTIFY_SOCKET is set), else null. */
  static fromEnv (env: NodeJS.ProcessEnv, logger: Logger, command = 'systemd-notify'): SystemdNotifier | null {
    return env.NOTIFY_SOCKET != null && env.NOTIFY_SOCKET !== '' ? new SystemdNotifier(env, logger, command) : null
  }

  /** The watchdog interval systemd asked for, in ms, if it is meant for this process. */
  watchdogMs (): number | undefined {
    const usec = Number(this.env.WATCHDOG_USEC)
    const pid = this.env.WATCHDOG_PID
    if (!(usec > 0) || (pid != null && pid !== '' && Number(pid) !== process.pid)) return undefined
    return usec / 1000
  }

  ready (status: string): void {
    this.send(['--ready', `--status=${status}`])
    const interval = this.watchdogMs()
    if (interval != null && this.timer == null) {
      this.timer = setInterval(() => { this.send(['WATCHDOG=1']) }, Math.max(100, interval / 3))
      this.timer.unref()
    }
  }

  stopping (): void {
    clearInterval(this.timer)
    this.timer = undefined
    this.send(['STOPPING=1', '--status=stopping'])
  }

  private send (args: string[]): void {
    execFile(this.command, [`--pid=${process.pid}`, ...args], { env: this.env, timeout: 5_000 }, (err) => {
      if (err == null || this.warned) return
      this.warned = true
      this.log.warn({ code: 'SYSTEMD_NOTIFY', err: err.message }, 'could not notify systemd; is systemd-notify installed?')
    })
  }
}
