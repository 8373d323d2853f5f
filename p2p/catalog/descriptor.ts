/**
 * A node's capability descriptor, `metagrid.capability/v1`: what it has, what
 * it serves, where it is and what it costs, signed by the node's key in a
 * metagrid envelope and encoded as canonical DAG-CBOR so no peer can forge or
 * alter another's. Hardware fields say whether they were measured on the
 * machine or declared by the operator.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'
import { EnvelopeError, openEnvelope, sealEnvelope } from '../../attest/envelope.ts'
import type { PrivateKey } from '@libp2p/interface'

export const CAPABILITY_TYPE = 'metagrid.capability/v1'

/** A descriptor with every list full is about 6 KiB; anything over 16 KiB is refused unread. */
export const MAX_DESCRIPTOR_BYTES = 16 * 1024

/** A descriptor issued further in the future than this comes from a clock that is wrong. */
const MAX_CLOCK_SKEW_MS = 60_000

const text = (max: number): z.ZodString => z.string().min(1).max(max)
/** Shared with the config schema, which declares what a descriptor then carries. */
export const nonNegative = z.number().min(0).max(1e12)
const source = z.enum(['measured', 'declared'])

/** ISO 3166-1 alpha-2 country code with an optional ISO 3166-2 subdivision: `DE`, `DE-BY`, `US-CA`. */
export const regionCode = z.string().regex(/^[A-Z]{2}(?:-[A-Z0-9]{1,3})?$/, {
  error: 'expected an ISO 3166 region code such as DE or US-CA'
})

export const capabilityTag = z.string().regex(/^[a-z0-9][a-z0-9:._/-]{0,127}$/, { error: 'expected a lowercase tag such as edge or gpu:nvidia-h100' })

export const isMultiaddr = (value: string): boolean => {
  try {
    multiaddr(value)
    return value.startsWith('/')
  } catch {
    return false
  }
}

export const acceleratorSchema = z.strictObject({
  kind: text(32),
  model: text(128),
  count: z.int().min(1).max(1024),
  memoryMiB: z.int().min(0).max(1e9),
  free: z.int().min(0).max(1024),
  source
})

export const servedModelSchema = z.strictObject({
  name: text(128),
  /** Latency of one inference as profiled on this node, ms. */
  p50Ms: nonNegative,
  p99Ms: nonNegative,
  throughputPerS: nonNegative
})

export const costSchema = z.strictObject({
  /** ISO 4217 code or another unit the mesh agrees on ("USD", "EUR", "credit"). */
  currency: text(16),
  perCoreHour: nonNegative,
  perAcceleratorHour: nonNegative,
  perGiBEgress: nonNegative
})

export const descriptorSchema = z.strictObject({
  schema: z.literal(CAPABILITY_TYPE),
  peerId: text(128),
  /** The operator's public key (as a libp2p key id), or null for a node of no declared operator. */
  operator: text(128).nullable(),
  /** ISO 3166 code with optional subdivision: DE, DE-BY, US-CA. */
  region: regionCode.nullable(),
  geo: z.strictObject({ lat: z.number().min(-90).max(90), lon: z.number().min(-180).max(180) }).nullable(),
  cpu: z.strictObject({ cores: z.int().min(1).max(100_000), arch: text(32), model: text(256) }),
  memoryMiB: z.int().min(0).max(1e12),
  storageGiB: z.int().min(0).max(1e12),
  accelerators: z.array(acceleratorSchema).max(16),
  models: z.array(servedModelSchema).max(64),
  cost: costSchema,
  /** Fraction of the window the node was up, measured by the node itself. */
  reliability: z.strictObject({ uptime: z.number().min(0).max(1), windowS: z.int().min(0).max(1e10) }),
  software: z.strictObject({ name: text(64), version: text(64) }),
  addrs: z.array(z.string().max(256).refine(isMultiaddr)).max(32),
  /** Capability tags the operator declares beyond those derived from the fields above. */
  tags: z.array(capabilityTag).max(64),
  /** Which fields were measured on the machine and which were declared in the config. */
  measured: z.array(text(32)).max(32),
  declared: z.array(text(32)).max(32),
  issuedAt: z.int().min(0),
  expiresAt: z.int().min(0)
})

export type CapabilityDescriptor = z.infer<typeof descriptorSchema>
export type Accelerator = z.infer<typeof acceleratorSchema>

/** Why a descriptor was refused; bounded, for `metagrid_catalog_rejected_total{reason}`. */
export type DescriptorRejection = 'oversized' | 'encoding' | 'signature' | 'schema' | 'peer-id' | 'expired' | 'not-yet-valid' | 'key-mismatch'

export class DescriptorError extends Error {
  static override name = 'DescriptorError'
  override name = 'DescriptorError'
  readonly reason: DescriptorRejection
  constructor (reason: DescriptorRejection, message: string) {
    super(`${reason}: ${message}`)
    this.reason = reason
  }
}

export function encodeDescriptor (descriptor: CapabilityDescriptor): Uint8Array {
  return dagCbor.encode(descriptor)
}

export async function signDescriptor (key: PrivateKey, descriptor: CapabilityDescriptor): Promise<Uint8Array> {
  return sealEnvelope(key, CAPABILITY_TYPE, encodeDescriptor(descriptor))
}

const ENVELOPE_REASONS: Record<EnvelopeError['check'], DescriptorRejection> = {
  size: 'oversized',
  encoding: 'encoding',
  type: 'encoding',
  key: 'encoding',
  signature: 'signature',
  signer: 'peer-id'
}

export interface OpenDescriptorOptions {
  now: number
  /** When set, the descriptor must be this node's: a record under one peer's key cannot carry another's. */
  expectedPeerId?: string
}

/** Verifies a signed descriptor: envelope, schema, signer equals `peerId`, and the validity window. */
export async function openDescriptor (bytes: Uint8Array, options: OpenDescriptorOptions): Promise<CapabilityDescriptor> {
  let payload: Uint8Array
  let signer: string
  try {
    const envelope = await openEnvelope(bytes, { maxBytes: MAX_DESCRIPTOR_BYTES, payloadTypes: [CAPABILITY_TYPE] })
    payload = envelope.payload
    signer = envelope.signer.toString()
  } catch (err) {
    if (err instanceof EnvelopeError) throw new DescriptorError(ENVELOPE_REASONS[err.check], err.message)
    throw err
  }
  let decoded: unknown
  try {
    decoded = dagCbor.decode(payload)
  } catch (err) {
    throw new DescriptorError('encoding', (err as Error).message)
  }
  const parsed = descriptorSchema.safeParse(decoded)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new DescriptorError('schema', `${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`)
  }
  const descriptor = parsed.data
  if (descriptor.peerId !== signer) throw new DescriptorError('peer-id', `descriptor names ${descriptor.peerId} but is signed by ${signer}`)
  if (options.expectedPeerId != null && descriptor.peerId !== options.expectedPeerId) {
    throw new DescriptorError('key-mismatch', `record for ${options.expectedPeerId} holds the descriptor of ${descriptor.peerId}`)
  }
  if (descriptor.expiresAt <= options.now) throw new DescriptorError('expired', `expired ${options.now - descriptor.expiresAt} ms ago`)
  if (descriptor.issuedAt > options.now + MAX_CLOCK_SKEW_MS) throw new DescriptorError('not-yet-valid', `issued ${descriptor.issuedAt - options.now} ms in the future`)
  return descriptor
}
