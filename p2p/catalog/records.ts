/**
 * Descriptors in the DHT: the key derived from a peer id, and the validator
 * and selector kad-dht runs for that key namespace. Every DHT server checks a
 * record before storing it and every client before using it, so a forged,
 * mismatched or expired descriptor is refused wherever it turns up.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { fromString } from 'uint8arrays/from-string'
import { toString } from 'uint8arrays/to-string'
import { DescriptorError, openDescriptor } from './descriptor.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { SelectFn, ValidateFn } from '@libp2p/kad-dht'

/** The kad-dht namespace (the first path segment of the key) for capability descriptors. */
export const DESCRIPTOR_NAMESPACE = 'metagrid-cap'

export function descriptorKey (peerId: string): Uint8Array {
  return fromString(`/${DESCRIPTOR_NAMESPACE}/${peerId}`)
}

export function peerIdOfDescriptorKey (key: Uint8Array): string {
  const text = toString(key)
  const prefix = `/${DESCRIPTOR_NAMESPACE}/`
  if (!text.startsWith(prefix) || text.length === prefix.length || text.length > prefix.length + 128) {
    throw new DescriptorError('key-mismatch', 'not a descriptor key')
  }
  return text.slice(prefix.length)
}

/** Counts every refusal by reason, then refuses. */
export function descriptorValidator (metrics: P2pMetrics | null, now: () => number = Date.now): ValidateFn {
  return async (key, value) => {
    try {
      await openDescriptor(value, { now: now(), expectedPeerId: peerIdOfDescriptorKey(key) })
    } catch (err) {
      metrics?.catalogRejected.inc({ reason: err instanceof DescriptorError ? err.reason : 'encoding' })
      throw err
    }
  }
}

/** issuedAt of an envelope already validated, without verifying its signature again; -1 when unreadable. */
function issuedAt (value: Uint8Array): number {
  try {
    const envelope = dagCbor.decode(value) as { p: Uint8Array }
    const descriptor = dagCbor.decode(envelope.p) as { issuedAt?: unknown }
    return typeof descriptor.issuedAt === 'number' ? descriptor.issuedAt : -1
  } catch {
    return -1
  }
}

/** A selector that picks the newest record by `issuedAt`; on a tie, the first seen. Decodes each record once. */
export function newestSelector (issuedAt: (record: Uint8Array) => number): SelectFn {
  return (_key, records) => {
    let best = 0
    let bestIssued = -Infinity
    records.forEach((record, index) => {
      const issued = issuedAt(record)
      if (issued > bestIssued) {
        best = index
        bestIssued = issued
      }
    })
    return best
  }
}

/** Picks the newest descriptor; on a tie, the first seen. */
export const descriptorSelector: SelectFn = newestSelector(issuedAt)
