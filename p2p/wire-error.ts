/**
 * What every direct-stream protocol (probe, sync) does with a refused
 * message: a typed error with a bounded code, and one mapping from any error
 * a stream can end with to the `reason` of `metagrid_wire_rejected_total`.
 */
import * as dagCbor from '@ipld/dag-cbor'

/** One DAG-CBOR value from a wire message, or the refusal `malformed` makes when the bytes are not DAG-CBOR. */
export function decodeWire (bytes: Uint8Array, malformed: () => Error): unknown {
  try {
    return dagCbor.decode(bytes)
  } catch {
    throw malformed()
  }
}

export class WireProtocolError extends Error {
  static override name = 'WireProtocolError'
  override name = 'WireProtocolError'
  readonly code: string
  constructor (code: string, message: string) {
    super(message)
    this.code = code
  }
}

/** The bounded code for an error a protocol handler caught. */
export function wireErrorCode (err: unknown): string {
  if (err instanceof WireProtocolError) return err.code
  const name = (err as Error).name
  return name === 'InvalidDataLengthError' ? 'OVERSIZED' : name === 'TimeoutError' ? 'TIMEOUT' : 'STREAM_ERROR'
}
