/**
 * Signed statements, in the spirit of in-toto statements in DSSE envelopes:
 * a subject (what the statement is about), a predicate type (what kind of
 * claim) and a predicate (the claim), with a validity window. The payload is
 * canonical DAG-CBOR sealed in the metagrid envelope, whose payload type is
 * the predicate type, so a signature made for one kind of claim never
 * verifies as another.
 *
 *   payload: { sub: [{ id, d? }], p: predicate, iat, nbf, exp }   (ms since the epoch)
 *
 * Verification names the check that failed: the envelope's (size, encoding,
 * key, type, signature), then `payload` (does not decode or has the wrong
 * fields), `predicate` (fails its schema), `not-yet-valid`, `expired`, or
 * `signer` (not the key the caller expected).
 */
import * as dagCbor from '@ipld/dag-cbor'
import { z } from 'zod'
import { CheckError, EnvelopeError, openEnvelope, sealEnvelope, type EnvelopeCheck } from './envelope.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'

export type StatementCheck = EnvelopeCheck | 'payload' | 'predicate' | 'not-yet-valid' | 'expired' | 'window'

export class StatementError extends CheckError<StatementCheck> {
  static override name = 'StatementError'
  override name = 'StatementError'
}

export interface Subject {
  /** What the statement is about: a peer id, a CID, a shard id. */
  id: string
  /** A digest of it, where one applies (multibase). */
  digest?: string
}

export interface Statement<P> {
  type: string
  subjects: Subject[]
  predicate: P
  issuedAt: number
  notBefore: number
  expiresAt: number
}

export interface VerifiedStatement<P> extends Statement<P> {
  signer: PeerId
  /** The envelope bytes as received, for chaining and evidence. */
  bytes: Uint8Array
}

/** A statement larger than this is refused before it is decoded. */
export const MAX_STATEMENT_BYTES = 64 * 1024

const payloadSchema = z.strictObject({
  sub: z.array(z.strictObject({ id: z.string().min(1).max(256), d: z.string().min(1).max(256).optional() })).min(1).max(64),
  p: z.unknown(),
  iat: z.int().min(0),
  nbf: z.int().min(0),
  exp: z.int().min(0)
})

export async function signStatement<P> (key: PrivateKey, statement: Statement<P>): Promise<Uint8Array> {
  if (statement.expiresAt <= statement.notBefore) throw new StatementError('window', 'expiresAt must be after notBefore')
  const payload = dagCbor.encode({
    sub: statement.subjects.map((s) => (s.digest != null ? { id: s.id, d: s.digest } : { id: s.id })),
    p: statement.predicate,
    iat: statement.issuedAt,
    nbf: statement.notBefore,
    exp: statement.expiresAt
  })
  return sealEnvelope(key, statement.type, payload)
}

export interface VerifyStatementOptions<P> {
  type: string
  predicate: z.ZodType<P>
  now: number
  /** Tolerated clock difference at both ends of the window. */
  skewMs?: number
  /** If given, the statement must be signed by this peer. */
  signer?: PeerId
  maxBytes?: number
}

export async function verifyStatement<P> (bytes: Uint8Array, options: VerifyStatementOptions<P>): Promise<VerifiedStatement<P>> {
  let envelope
  try {
    envelope = await openEnvelope(bytes, { maxBytes: options.maxBytes ?? MAX_STATEMENT_BYTES, payloadTypes: [options.type] })
  } catch (err) {
    if (err instanceof EnvelopeError) throw new StatementError(err.check, err.detail)
    throw err
  }
  let raw: unknown
  try {
    raw = dagCbor.decode(envelope.payload)
  } catch (err) {
    throw new StatementError('payload', `not DAG-CBOR: ${(err as Error).message}`)
  }
  const parsed = payloadSchema.safeParse(raw)
  if (!parsed.success) throw new StatementError('payload', parsed.error.issues[0]?.message ?? 'wrong fields')
  const predicate = options.predicate.safeParse(parsed.data.p)
  if (!predicate.success) {
    const issue = predicate.error.issues[0]
    throw new StatementError('predicate', `${issue?.path.map(String).join('.') ?? ''}: ${issue?.message ?? 'invalid'}`)
  }
  const skew = options.skewMs ?? 30_000
  const { nbf, exp, iat } = parsed.data
  if (exp <= nbf) throw new StatementError('window', 'expires before it becomes valid')
  if (options.now + skew < nbf) throw new StatementError('not-yet-valid', `valid from ${new Date(nbf).toISOString()}`)
  if (options.now - skew >= exp) throw new StatementError('expired', `expired at ${new Date(exp).toISOString()}`)
  if (options.signer != null && !options.signer.equals(envelope.signer)) {
    throw new StatementError('signer', `signed by ${envelope.signer.toString()}, expected ${options.signer.toString()}`)
  }
  return {
    type: envelope.payloadType,
    subjects: parsed.data.sub.map((s) => (s.d != null ? { id: s.id, digest: s.d } : { id: s.id })),
    predicate: predicate.data,
    issuedAt: iat,
    notBefore: nbf,
    expiresAt: exp,
    signer: envelope.signer,
    bytes
  }
}
