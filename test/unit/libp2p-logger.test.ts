import { Writable } from 'node:stream'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { describe, expect, it } from 'vitest'
import { libp2pComponentLogger, renderLibp2pMessage } from '../../daemon/log/libp2p-logger.ts'
import { createLogger } from '../../daemon/log/logger.ts'

const PEER = '12D3KooWNFBn5sWgNob1oDEUEkPbomk8gWA39jVo8QBQSF42p4PR'

function capture (): { lines: Array<Record<string, unknown>>, stream: Writable } {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk, _encoding, callback) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line))
      callback()
    }
  })
  return { lines, stream }
}

describe('libp2p logger adapter', () => {
  it('renders libp2p placeholders', () => {
    expect(renderLibp2pMessage('dial %p at %a', [peerIdFromString(PEER), multiaddr('/ip4/127.0.0.1/tcp/1')]))
      .toBe(`dial ${PEER} at /ip4/127.0.0.1/tcp/1`)
    expect(renderLibp2pMessage('bytes %b %t %m', [Uint8Array.of(1, 2), Uint8Array.of(1, 2), Uint8Array.of(1, 2)])).toBe('bytes 5T aeba AQI')
    expect(renderLibp2pMessage('failed - %e', [new TypeError('boom')])).toBe('failed - TypeError: boom')
    expect(renderLibp2pMessage('%d peers, 100%%', [3])).toBe('3 peers, 100%')
    expect(renderLibp2pMessage('missing %p', [])).toBe('missing %p')
    expect(renderLibp2pMessage('extra', ['a', 1])).toBe('extra a 1')
  })

  it('writes libp2p lines into pino with the component, at trace and debug', () => {
    const { lines, stream } = capture()
    const logger = createLogger({ level: 'trace', format: 'json', destination: stream })
    const log = libp2pComponentLogger(logger).forComponent('libp2p:dialer')
    log('dialing %p', peerIdFromString(PEER))
    log.error('dial failed - %e', new Error('refused'))
    log.newScope('queue')('queued')
    expect(lines.map(({ level, component, msg }) => ({ level, component, msg }))).toEqual([
      { level: 'trace', component: 'libp2p:dialer', msg: `dialing ${PEER}` },
      { level: 'debug', component: 'libp2p:dialer', msg: 'dial failed - Error: refused' },
      { level: 'trace', component: 'libp2p:dialer:queue', msg: 'queued' }
    ])
  })

  it('stays silent and cheap at the default level', () => {
    const { lines, stream } = capture()
    const logger = createLogger({ level: 'info', format: 'json', destination: stream })
    const log = libp2pComponentLogger(logger).forComponent('libp2p:dialer')
    expect(log.enabled).toBe(false)
    log('dialing')
    log.error('failed')
    expect(lines).toEqual([])
  })

  it('writes the daemon lines as JSON with a level label and ISO time', () => {
    const { lines, stream } = capture()
    createLogger({ level: 'info', format: 'json', destination: stream }).info({ peerId: PEER }, 'ready')
    expect(lines[0]).toMatchObject({ level: 'info', msg: 'ready', peerId: PEER, pid: process.pid })
    expect(String(lines[0]?.time)).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  })
})
