/**
 * Catches SIGTERM and SIGINT from the first line of the process, before the
 * half second it takes to load the daemon's modules: a supervisor may signal
 * at any moment, and Node's default action would kill the process without a
 * clean stop. Commands that handle signals take the buffered ones over;
 * the others release them so Ctrl-C works as usual.
 *
 * Signals are process-wide, so this module keeps process-wide state on purpose.
 */
const pending: NodeJS.Signals[] = []
const record = (signal: NodeJS.Signals): void => { pending.push(signal) }

export function bufferSignals (): void {
  process.on('SIGTERM', record)
  process.on('SIGINT', record)
}

/** Stops buffering and returns the signals that arrived meanwhile, oldest first. */
export function releaseSignals (): NodeJS.Signals[] {
  process.off('SIGTERM', record)
  process.off('SIGINT', record)
  return pending.splice(0)
}
