import { EventEmitter } from 'node:events'
import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { untilSignalled } from '../../daemon/lifecycle.ts'
import { createLogger } from '../../daemon/log/logger.ts'

function setup (): { signals: EventEmitter, lines: Array<Record<string, unknown>>, logger: ReturnType<typeof createLogger> } {
  const lines: Array<Record<string, unknown>> = []
  const destination = new Writable({ write (chunk, _e, callback) { lines.push(JSON.parse(String(chunk))); callback() } })
  return { signals: new EventEmitter(), lines, logger: createLogger({ level: 'info', format: 'json', destination }) }
}

describe('shutdown on signals', () => {
  it('stops once on the first signal and exits 0', async () => {
    const { signals, lines, logger } = setup()
    let stops = 0
    const code = untilSignalled(async () => { stops++ }, logger, 1000, signals, () => [])
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await code).toBe(0)
    expect(stops).toBe(1)
    expect(lines.map((line) => line.msg)).toEqual(['shutting down', 'stopped'])
  })

  it('exits 1 at once on a second signal while stopping', async () => {
    const { signals, lines, logger } = setup()
    const code = untilSignalled(async () => new Promise(() => {}), logger, 60_000, signals, () => [])
    signals.emit('SIGINT', 'SIGINT')
    signals.emit('SIGINT', 'SIGINT')
    expect(await code).toBe(1)
    expect(lines[1]).toMatchObject({ level: 'warn', code: 'FORCED_EXIT', msg: 'second signal, exiting now' })
  })

  it('exits 1 when stopping outlives the deadline', async () => {
    const { signals, lines, logger } = setup()
    const code = untilSignalled(async () => new Promise(() => {}), logger, 20, signals, () => [])
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await code).toBe(1)
    expect(lines[1]).toMatchObject({ level: 'error', code: 'SHUTDOWN_TIMEOUT', deadlineMs: 20 })
  })

  it('acts on a signal that arrived before the handlers were installed', async () => {
    const { signals, lines, logger } = setup()
    let stops = 0
    expect(await untilSignalled(async () => { stops++ }, logger, 1000, signals, () => ['SIGTERM'])).toBe(0)
    expect(stops).toBe(1)
    expect(lines[0]).toMatchObject({ msg: 'shutting down', signal: 'SIGTERM' })
  })

  it('exits 1 when stopping fails', async () => {
    const { signals, lines, logger } = setup()
    const code = untilSignalled(async () => { throw new Error('disk gone') }, logger, 1000, signals, () => [])
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await code).toBe(1)
    expect(lines[1]).toMatchObject({ level: 'error', code: 'SHUTDOWN_FAILED' })
  })
})
