/**
 * Signals and shutdown. The first SIGTERM or SIGINT stops the node in reverse
 * dependency order; if that has not finished before the deadline, or a second
 * signal arrives, the process exits at once with code 1.
 */
import { ExitCode, type ExitCodeValue } from './exit-codes.ts'
import { releaseSignals } from './signals.ts'
import type { Logger } from './log/logger.ts'

/**
 * systemd and the tests expect exit within 5 s of SIGTERM; half a second is
 * kept back for the process itself to exit after the deadline fires.
 */
export const SHUTDOWN_DEADLINE_MS = 4_500

export interface SignalSource {
  on: (event: 'SIGTERM' | 'SIGINT', listener: (signal: NodeJS.Signals) => void) => unknown
}

/** Resolves to the exit code once a signal has stopped the node (or forced the exit). */
export function untilSignalled (stop: () => Promise<void>, logger: Logger, deadlineMs = SHUTDOWN_DEADLINE_MS, signals: SignalSource = process, early: () => NodeJS.Signals[] = releaseSignals): Promise<ExitCodeValue> {
  return new Promise((resolve) => {
    let signalled = false
    const onSignal = (signal: NodeJS.Signals): void => {
      if (signalled) {
        logger.warn({ code: 'FORCED_EXIT', signal }, 'second signal, exiting now')
        resolve(ExitCode.FAILURE)
        return
      }
      signalled = true
      logger.info({ signal }, 'shutting down')
      const timer = setTimeout(() => {
        logger.error({ code: 'SHUTDOWN_TIMEOUT', deadlineMs }, 'shutdown did not finish before the deadline; exiting')
        resolve(ExitCode.FAILURE)
      }, deadlineMs)
      stop().then(() => {
        clearTimeout(timer)
        logger.info('stopped')
        resolve(ExitCode.OK)
      }, (err: unknown) => {
        clearTimeout(timer)
        logger.error({ code: 'SHUTDOWN_FAILED', err }, 'shutdown failed')
        resolve(ExitCode.FAILURE)
      })
    }
    signals.on('SIGTERM', onSignal)
    signals.on('SIGINT', onSignal)
    // Signals that arrived while the process was still loading count as if they came now.
    for (const signal of early()) onSignal(signal)
  })
}

/** Keeps a stray rejection inside a library from killing a node that is otherwise healthy, but says so. */
export function reportUnhandledRejections (logger: Logger): void {
  process.on('unhandledRejection', (reason) => {
    logger.error({ code: 'UNHANDLED_REJECTION', err: reason }, 'unhandled promise rejection')
  })
}
