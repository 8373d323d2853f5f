/**
 * The daemon's logger: pino, one JSON object per line on stdout, human-readable
 * only when stdout is a terminal (or when asked), so journald, pipes and
 * scripts always get JSON. Levels are written as labels (`"level":"info"`).
 */
import { pino, type Logger, type DestinationStream } from 'pino'
import pretty from 'pino-pretty'
import type { Config } from '../config/schema.ts'

export type { Logger }

export interface LoggerOptions {
  level: Config['logLevel']
  format: Config['logFormat']
  /** Where lines go; stdout when absent. Tests pass a stream to assert on the exact JSON. */
  destination?: DestinationStream
  isTTY?: boolean
}

export function createLogger (options: LoggerOptions): Logger {
  const usePretty = options.format === 'pretty' || (options.format === 'auto' && (options.isTTY ?? process.stdout.isTTY === true))
  const destination = options.destination ??
    (usePretty ? pretty({ sync: true, colorize: true, translateTime: 'SYS:HH:MM:ss.l' }) : pino.destination({ dest: 1, sync: true }))
  return pino({
    level: options.level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) }
  }, destination)
}
