/**
 * The logging interface of every layer below daemon/: fields first, then a
 * message, as pino takes them. The daemon's pino logger satisfies it, so
 * storage/ and p2p/ log into the daemon's stream without importing it; a
 * library user (the light client) can pass any logger of this shape.
 */
export interface LogFn {
  (fields: object, message?: string): void
  (message: string): void
}

export interface Logger {
  trace: LogFn
  debug: LogFn
  info: LogFn
  warn: LogFn
  error: LogFn
  child: (bindings: Record<string, unknown>) => Logger
}

const nothing: LogFn = () => {}

/** A logger that drops everything, for library use without a log. */
export const silentLogger: Logger = { trace: nothing, debug: nothing, info: nothing, warn: nothing, error: nothing, child: () => silentLogger }
