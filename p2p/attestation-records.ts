/**
 * Attestations in the DHT, beside the capability descriptors: the record
 * under `/metagrid-att/<peer id>` must be a valid attestation signed by that
 * peer; of several, the newest wins.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { toString } from 'uint8arrays/to-string'
import { AttestationError, verifyAttestation } from '../attest/attestation.ts'
import { newestSelector } from './catalog/records.ts'
import type { P2pMetrics } from './metrics.ts'
import type { SelectFn, ValidateFn } from '@libp2p/kad-dht'

const PREFIX = '/metagrid-att/'

export function attestationValidator (metrics: P2pMetrics | null, now: () => number = Date.now): ValidateFn {
  return async (key, value) => {
    const text = toString(key)
    try {
      if (!text.startsWith(PREFIX)) throw new AttestationError('subject', 'not an attestation key')
      const attestation = await verifyAttestation(value, now())
      if (attestation.node !== text.slice(PREFIX.length)) throw new AttestationError('subject', `the record under ${text} attests ${attestation.node}`)
    } catch (err) {
      metrics?.catalogRejected.inc({ reason: err instanceof AttestationError ? `attestation-${err.check}` : 'attestation-encoding' })
      throw err
    }
  }
}

function issuedAt (value: Uint8Array): number {
  try {
    const envelope = dagCbor.decode(value) as { p: Uint8Array }
    const payload = dagCbor.decode(envelope.p) as { iat?: unknown }
    return typeof payload.iat === 'number' ? payload.iat : -1
  } catch {
    return -1
  }
}

/** Picks the newest attestation; on a tie, the first seen. */
export const attestationSelector: SelectFn = newestSelector(issuedAt)
