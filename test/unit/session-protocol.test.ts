/**
 * The session protocol's envelope and the relayed-input wire format refuse
 * what is not theirs with a bounded code, whatever the bytes.
 */
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { decodeFrame, encodeFrame, MAX_SESSION_FRAME_BYTES, SessionProtocolError } from '../../client/protocol.ts'
import { decodeInput, decodeInputs, InputProtocolError } from '../../p2p/session/forward.ts'

const codeOf = (fn: () => unknown): string => {
  try {
    fn()
    return 'OK'
  } catch (err) {
    if (err instanceof SessionProtocolError || err instanceof InputProtocolError) return err.code
    throw err
  }
}

describe('session frames', () => {
  it('round-trips a frame and refuses other envelopes by code', () => {
    expect(decodeFrame(encodeFrame({ v: 1, t: 'area', x: 1.5, y: 2, radius: 10 }))).toEqual({ v: 1, t: 'area', x: 1.5, y: 2, radius: 10 })
    expect(codeOf(() => decodeFrame(new Uint8Array([0xff, 0x00])))).toBe('MALFORMED')
    expect(codeOf(() => decodeFrame(dagCbor.encode([1, 2])))).toBe('MALFORMED')
    expect(codeOf(() => decodeFrame(dagCbor.encode({ v: 2, t: 'hello' })))).toBe('VERSION')
    expect(codeOf(() => decodeFrame(dagCbor.encode({ v: 1, t: 7 })))).toBe('MALFORMED')
    expect(codeOf(() => decodeFrame(new Uint8Array(MAX_SESSION_FRAME_BYTES + 1)))).toBe('TOO_LARGE')
  })

  it('never throws anything but a protocol error on arbitrary bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 256 }), (bytes) => {
      expect(['OK', 'MALFORMED', 'VERSION', 'TOO_LARGE']).toContain(codeOf(() => decodeFrame(bytes)))
    }), { numRuns: 2000 })
  })
})

describe('relayed inputs', () => {
  const put = { shard: 'physics.1.1', op: 'put', entity: 'a', components: { pos: { x: 1, y: 2 } }, client: 'c', seq: 5 }

  it('takes a put and a delete, and nothing with a field too many, too few or mistyped', () => {
    expect(decodeInput(dagCbor.encode(put))).toEqual(put)
    expect(decodeInput(dagCbor.encode({ shard: 's', op: 'delete', entity: 'a', client: 'c', seq: 1 })).op).toBe('delete')
    for (const bad of [
      { ...put, extra: 1 },
      { ...put, seq: 0 },
      { ...put, seq: 1.5 },
      { ...put, entity: '' },
      { ...put, shard: 'x'.repeat(65) },
      { ...put, components: [1] },
      { ...put, op: 'patch' },
      { shard: 's', op: 'delete', entity: 'a', client: 'c', seq: 1, components: {} }
    ]) expect(codeOf(() => decodeInput(dagCbor.encode(bad))), JSON.stringify(bad)).toBe('MALFORMED')
    expect(codeOf(() => decodeInput(new Uint8Array([0x9f])))).toBe('MALFORMED')
  })

  it('takes a request of 1 to 256 inputs, in order, and refuses it whole for one bad input or a bad shape', () => {
    const other = { ...put, entity: 'b', seq: 6 }
    expect(decodeInputs(dagCbor.encode({ b: [dagCbor.encode(put), dagCbor.encode(other)] }))).toEqual([put, other])
    for (const bad of [
      { b: [] },
      { b: Array.from({ length: 257 }, () => dagCbor.encode(put)) },
      { b: [dagCbor.encode(put), dagCbor.encode({ ...put, seq: 0 })] },
      { b: [put] },
      { b: [dagCbor.encode(put)], extra: 1 },
      { b: [new Uint8Array(320 * 1024 + 1)] },
      [dagCbor.encode(put)]
    ]) expect(codeOf(() => decodeInputs(dagCbor.encode(bad)))).toBe('MALFORMED')
  })
})
