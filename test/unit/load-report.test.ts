import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { originCoordinate } from '../../p2p/coordinates/vivaldi.ts'
import { decodeLoadReport, encodeLoadReport, LoadReportError, signLoadReport, type LoadReport } from '../../p2p/telemetry/load-report.ts'
import { ReportValidator } from '../../p2p/telemetry/report-validator.ts'
import { Refusal } from '../../p2p/admission/refusal.ts'
import type { SignedMessage } from '@libp2p/gossipsub'

const key = await generateKeyPair('Ed25519')
const peerId = peerIdFromPrivateKey(key)
const NOW = 1_800_000_000_000

function report (overrides: Partial<LoadReport> = {}): LoadReport {
  return {
    seq: NOW,
    timestamp: NOW,
    cpu: 0.25,
    memory: 0.5,
    accelerators: { utilisation: 0.125, free: 1, total: 2 },
    queue: 3,
    shards: 4,
    coordinate: { vec: [1.5, -2.25, 0, 0, 0, 0, 0, 0.001], error: 0.4, adjustment: -0.5, height: 2 },
    ...overrides
  }
}

function message (data: Uint8Array, from = peerId): SignedMessage {
  return { type: 'signed', from, topic: '/metagrid/telemetry/1', data, sequenceNumber: 1n, signature: new Uint8Array(64), key: key.publicKey }
}

async function refusal (validator: ReportValidator, msg: SignedMessage): Promise<string> {
  const err = await validator.validate(msg).then(() => undefined, (e: unknown) => e)
  expect(err).toBeInstanceOf(Refusal)
  return `${(err as Refusal).action}:${(err as Refusal).code}`
}

const validator = (): ReportValidator => new ReportValidator({ staleAfterMs: 30_000, maxClockSkewMs: 30_000, maxTrackedPeers: 2, now: () => NOW })

describe('load report encoding', () => {
  it('round-trips at the precision of the wire (permille, microseconds)', () => {
    expect(decodeLoadReport(encodeLoadReport(report()))).toEqual(report())
    const rounded = decodeLoadReport(encodeLoadReport(report({ cpu: 0.12345, coordinate: { ...report().coordinate, height: 1.23456789 } })))
    expect(rounded.cpu).toBe(0.123)
    expect(rounded.coordinate.height).toBe(1.235)
  })

  it('is deterministic and compact', async () => {
    expect(encodeLoadReport(report())).toEqual(encodeLoadReport(report()))
    expect((await signLoadReport(key, report())).byteLength).toBeLessThan(320)
  })

  it('clamps fractions outside 0..1 instead of sending them', () => {
    expect(decodeLoadReport(encodeLoadReport(report({ cpu: 1.7, memory: -0.2 })))).toMatchObject({ cpu: 1, memory: 0 })
  })

  it('refuses garbage and out-of-range fields with a typed error', () => {
    const wire = dagCbor.decode(encodeLoadReport(report())) as Record<string, unknown>
    for (const bad of [{ ...wire, c: 1001 }, { ...wire, q: -1 }, { ...wire, x: { ...(wire.x as object), v: [1, 2] } }, { ...wire, extra: 1 }, { ...wire, s: 'one' }]) {
      expect(() => decodeLoadReport(dagCbor.encode(bad))).toThrow(LoadReportError)
    }
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      try {
        decodeLoadReport(bytes)
        return false
      } catch (err) {
        return err instanceof LoadReportError
      }
    }), { numRuns: 500 })
  })
})

describe('load report validation', () => {
  it('accepts a fresh report signed by its sender', async () => {
    const received = await validator().validate(message(await signLoadReport(key, report())))
    expect(received.peerId).toBe(peerId.toString())
    expect(received.report).toEqual(report())
  })

  it('rejects malformed, oversized, badly signed and forged reports', async () => {
    const v = validator()
    expect(await refusal(v, message(Uint8Array.of(1, 2, 3)))).toBe('reject:MALFORMED')
    expect(await refusal(v, message(new Uint8Array(2000)))).toBe('reject:OVERSIZED')
    const signed = await signLoadReport(key, report())
    const tampered = dagCbor.decode(signed) as Record<string, Uint8Array>
    tampered.p = encodeLoadReport(report({ cpu: 0.99 }))
    expect(await refusal(v, message(dagCbor.encode(tampered)))).toBe('reject:BAD_SIGNATURE')
    const stranger = await generateKeyPair('Ed25519')
    expect(await refusal(v, message(await signLoadReport(stranger, report())))).toBe('reject:FORGED')
    const notAReport = await (await import('../../attest/envelope.ts')).sealEnvelope(key, 'metagrid.load-report/v1', Uint8Array.of(0xa0))
    expect(await refusal(v, message(notAReport))).toBe('reject:MALFORMED')
  })

  it('rejects a replayed or out-of-order sequence and ignores stale or future reports', async () => {
    const v = validator()
    await v.validate(message(await signLoadReport(key, report({ seq: NOW + 5 }))))
    expect(await refusal(v, message(await signLoadReport(key, report({ seq: NOW + 5 }))))).toBe('reject:REPLAYED')
    expect(await refusal(v, message(await signLoadReport(key, report({ seq: NOW + 4 }))))).toBe('reject:OUT_OF_ORDER')
    expect(await refusal(v, message(await signLoadReport(key, report({ seq: NOW + 6, timestamp: NOW - 31_000 }))))).toBe('ignore:STALE')
    expect(await refusal(v, message(await signLoadReport(key, report({ seq: NOW + 6, timestamp: NOW + 31_000 }))))).toBe('ignore:FROM_FUTURE')
    await v.validate(message(await signLoadReport(key, report({ seq: NOW + 6 }))))
  })

  it('bounds the table of senders it tracks', async () => {
    const v = validator()
    for (let i = 0; i < 2; i++) {
      const k = await generateKeyPair('Ed25519')
      await v.validate(message(await signLoadReport(k, report()), peerIdFromPrivateKey(k)))
    }
    const late = await generateKeyPair('Ed25519')
    expect(await refusal(v, message(await signLoadReport(late, report()), peerIdFromPrivateKey(late)))).toBe('ignore:TOO_MANY_PEERS')
  })

  it('keeps origin coordinates valid on the wire', () => {
    expect(decodeLoadReport(encodeLoadReport(report({ coordinate: originCoordinate() }))).coordinate).toEqual(originCoordinate())
  })
})
