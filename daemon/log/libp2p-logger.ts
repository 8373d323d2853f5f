/**
 * Routes libp2p's component loggers into pino. libp2p logs debug-style format
 * strings with its own placeholders (%p peer id, %a multiaddr, %c CID, %e error,
 * %b/%t/%m base58/base32/base64 bytes, %k datastore key); they are rendered
 * here so a pino line reads like libp2p's own debug output.
 *
 * Levels: libp2p's routine `log()` and `trace()` go to pino `trace`; its
 * `error()` (which it uses for ordinary events such as a failed dial) goes to
 * `debug`. At the default `info` level the daemon's own lines are not drowned.
 */
import { format } from 'node:util'
import { base32 } from 'multiformats/bases/base32'
import { base58btc } from 'multiformats/bases/base58'
import { base64 } from 'multiformats/bases/base64'
import type { ComponentLogger, Logger as Libp2pLogger } from '@libp2p/interface'
import type { Logger } from './logger.ts'

function bytes (encode: (b: Uint8Array) => string, value: unknown): string {
  return value instanceof Uint8Array ? encode(value) : String(value)
}

function errorText (value: unknown): string {
  if (value instanceof AggregateError) {
    return [value.message, ...value.errors.map(errorText)].join('; ')
  }
  if (value instanceof Error) return `${value.name}: ${value.message}`
  return String(value)
}

const PLACEHOLDERS: Record<string, (value: unknown) => string> = {
  p: String,
  a: String,
  c: String,
  k: String,
  b: (v) => bytes((b) => base58btc.baseEncode(b), v),
  t: (v) => bytes((b) => base32.baseEncode(b), v),
  m: (v) => bytes((b) => base64.baseEncode(b), v),
  e: errorText
}

/** Renders a libp2p log call the way its debug logger would, as one string. */
export function renderLibp2pMessage (formatter: unknown, args: unknown[]): string {
  if (typeof formatter !== 'string') return format(formatter, ...args)
  const rest = [...args]
  const text = formatter.replace(/%([a-zA-Z%])/g, (match, letter: string) => {
    if (letter === '%') return '%'
    const render = PLACEHOLDERS[letter]
    if (render == null) {
      if (rest.length === 0) return match
      return format(`%${letter}`, rest.shift())
    }
    return rest.length === 0 ? match : render(rest.shift())
  })
  return rest.length > 0 ? format(text, ...rest) : text
}

function componentLogger (logger: Logger, name: string): Libp2pLogger {
  const log = ((formatter: unknown, ...args: unknown[]) => {
    if (logger.isLevelEnabled('trace')) logger.trace(renderLibp2pMessage(formatter, args))
  }) as Libp2pLogger
  log.error = (formatter: unknown, ...args: unknown[]) => {
    if (logger.isLevelEnabled('debug')) logger.debug(renderLibp2pMessage(formatter, args))
  }
  log.trace = (formatter: unknown, ...args: unknown[]) => {
    if (logger.isLevelEnabled('trace')) logger.trace(renderLibp2pMessage(formatter, args))
  }
  log.enabled = logger.isLevelEnabled('trace')
  log.newScope = (scope: string) => componentLogger(logger.child({ component: `${name}:${scope}` }), `${name}:${scope}`)
  return log
}

export function libp2pComponentLogger (logger: Logger): ComponentLogger {
  return {
    forComponent: (name: string) => componentLogger(logger.child({ component: name }), name)
  }
}
