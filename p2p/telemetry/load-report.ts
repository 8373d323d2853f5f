/**
 * A node's load report, as published every few seconds on
 * `/metagrid/telemetry/1`, signed in a metagrid envelope.
 *
 * Encoding: DAG-CBOR with one-letter keys and integers only. Fractions are
 * sent in permille and coordinates in microseconds, so the encoding is
 * deterministic (no float formatting) and a report fits in about 300 bytes
 * with its signature.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { z } from 'zod'
import { openEnvelope, sealEnvelope, type Envelope } from '../../attest/envelope.ts'
import { defaultVivaldiOptions, isValidCoordinate, type Coordinate } from '../coordinates/vivaldi.ts'
import type { PrivateKey } from '@libp2p/interface'

export const LOAD_REPORT_TYPE = 'metagrid.load-report/v1'

/** Far above a real report (~300 bytes): anything bigger is abuse and is refused before decoding. */
export const MAX_LOAD_REPORT_BYTES = 1024

export interface LoadReport {
  /** Strictly increasing per node, across restarts (it starts from the wall clock in ms). */
  seq: number
  /** When the report was made, ms since the epoch. */
  timestamp: number
  /** Fractions of capacity in use, 0..1. */
  cpu: number
  memory: number
  accelerators: { utilisation: number, free: number, total: number }
  /** Requests waiting to be served. */
  queue: number
  /** Shards this node hosts. */
  shards: number
  coordinate: Coordinate
}

export class LoadReportError extends Error {
  static override name = 'LoadReportError'
  override name = 'LoadReportError'
}

const permille = z.int().min(0).max(1000)
const count = z.int().min(0).max(1_000_000)
const micros = z.int().min(-1e13).max(1e13)

/** The wire shape, checked field by field before anything is trusted. */
const wireSchema = z.strictObject({
  s: z.int().min(0).max(Number.MAX_SAFE_INTEGER),
  t: z.int().min(0).max(Number.MAX_SAFE_INTEGER),
  c: permille,
  m: permille,
  a: z.tuple([permille, count, count]),
  q: count,
  h: count,
  x: z.strictObject({
    v: z.array(micros).length(defaultVivaldiOptions.dimensions),
    e: z.int().min(0).max(Math.round(defaultVivaldiOptions.maxError * 1000)),
    a: micros,
    h: z.int().min(0).max(1e13)
  })
})

const toPermille = (fraction: number): number => Math.round(Math.min(1, Math.max(0, fraction)) * 1000)
const toMicros = (ms: number): number => Math.round(ms * 1000)

export function encodeLoadReport (report: LoadReport): Uint8Array {
  return dagCbor.encode({
    s: report.seq,
    t: report.timestamp,
    c: toPermille(report.cpu),
    m: toPermille(report.memory),
    a: [toPermille(report.accelerators.utilisation), report.accelerators.free, report.accelerators.total],
    q: report.queue,
    h: report.shards,
    x: {
      v: report.coordinate.vec.map(toMicros),
      e: Math.round(Math.min(Math.max(report.coordinate.error, 0), defaultVivaldiOptions.maxError) * 1000),
      a: toMicros(report.coordinate.adjustment),
      h: toMicros(report.coordinate.height)
    }
  })
}

export function decodeLoadReport (bytes: Uint8Array): LoadReport {
  let decoded: unknown
  try {
    decoded = dagCbor.decode(bytes)
  } catch (err) {
    throw new LoadReportError(`not DAG-CBOR: ${(err as Error).message}`)
  }
  const parsed = wireSchema.safeParse(decoded)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new LoadReportError(`field ${issue?.path.join('.') ?? '?'}: ${issue?.message ?? 'invalid'}`)
  }
  const w = parsed.data
  const coordinate: Coordinate = { vec: w.x.v.map((v) => v / 1000), error: w.x.e / 1000, adjustment: w.x.a / 1000, height: w.x.h / 1000 }
  if (!isValidCoordinate(coordinate)) throw new LoadReportError('field x: coordinate out of range')
  return {
    seq: w.s,
    timestamp: w.t,
    cpu: w.c / 1000,
    memory: w.m / 1000,
    accelerators: { utilisation: w.a[0] / 1000, free: w.a[1], total: w.a[2] },
    queue: w.q,
    shards: w.h,
    coordinate
  }
}

export async function signLoadReport (key: PrivateKey, report: LoadReport): Promise<Uint8Array> {
  return sealEnvelope(key, LOAD_REPORT_TYPE, encodeLoadReport(report))
}

/** Opens a signed report: envelope checks first (size, encoding, signature), then the report itself. */
export async function openLoadReport (bytes: Uint8Array): Promise<{ envelope: Envelope, report: LoadReport }> {
  const envelope = await openEnvelope(bytes, { maxBytes: MAX_LOAD_REPORT_BYTES, payloadTypes: [LOAD_REPORT_TYPE] })
  return { envelope, report: decodeLoadReport(envelope.payload) }
}
