/**
 * Node attestations and operator membership certificates.
 *
 * A **membership certificate** (`metagrid.membership/v1`) is signed by an
 * operator's key: "node N belongs to operator O, from … until …". Operators
 * issue them offline (`metagrid operator certify`) and renew them.
 *
 * A **node attestation** (`metagrid.attestation/v1`) is signed by the node
 * key. It says what the node runs:
 * - the software name and version, and a digest of the installed code;
 * - a digest of the effective config;
 * - the Node and OS versions, and the hardware summary;
 * - a hardware quote from a pluggable hook (TPM, TEE). A software-only node
 *   says `{ kind: "none", reason }` rather than pretending.
 *
 * It carries the node's membership certificate, so the countersignature
 * travels with it. It is short-lived and re-issued before it expires.
 *
 * Verification names the failed check: the statement's own checks, then
 * `subject` (not about its signer), `certificate` (the certificate does not
 * verify, names another node, or is not signed by the operator it names).
 * Trust is a separate question, asked of a verified attestation:
 * `trustOf(attestation, policy)`.
 */
import { z } from 'zod'
import { CheckError } from './envelope.ts'
import { signStatement, StatementError, verifyStatement, type StatementCheck } from './statement.ts'
import type { PrivateKey } from '@libp2p/interface'

export const ATTESTATION_TYPE = 'metagrid.attestation/v1'
export const MEMBERSHIP_TYPE = 'metagrid.membership/v1'

export type AttestationCheck = StatementCheck | 'subject' | 'certificate'

export class AttestationError extends CheckError<AttestationCheck> {
  static override name = 'AttestationError'
  override name = 'AttestationError'
}

const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, { error: 'expected sha256:<64 hex>' })
const text = (max: number): z.ZodString => z.string().min(1).max(max)

const quoteSchema = z.union([
  z.strictObject({ kind: z.literal('none'), reason: text(256) }),
  z.strictObject({ kind: text(32), evidence: z.string().min(1).max(32_768), nonce: digest })
])

export const attestationPredicate = z.strictObject({
  software: z.strictObject({ name: text(64), version: text(64), codeDigest: digest }),
  configDigest: digest,
  runtime: z.strictObject({ node: text(32), os: text(128), arch: text(32) }),
  hardware: z.strictObject({ cores: z.int().min(1).max(100_000), memoryMiB: z.int().min(0).max(1e12), accelerators: z.array(text(128)).max(16) }),
  quote: quoteSchema,
  /** The operator's membership certificate for this node, or null for a node of no operator. */
  membership: z.custom<Uint8Array>((value) => value instanceof Uint8Array, { error: 'expected bytes' }).nullable()
})

const membershipPredicate = z.strictObject({ operator: text(128), node: text(128) })

export type AttestationBody = z.infer<typeof attestationPredicate>

export interface VerifiedAttestation extends AttestationBody {
  node: string
  /** The operator whose certificate the attestation carries, verified; null without one. */
  operator: string | null
  issuedAt: number
  /** When the attestation, or the certificate inside it if sooner, stops being valid. */
  expiresAt: number
}

export async function signMembership (operatorKey: PrivateKey, operator: string, node: string, now: number, validForMs: number): Promise<Uint8Array> {
  return signStatement(operatorKey, { type: MEMBERSHIP_TYPE, subjects: [{ id: node }], predicate: { operator, node }, issuedAt: now, notBefore: now, expiresAt: now + validForMs })
}

export async function signAttestation (nodeKey: PrivateKey, node: string, body: AttestationBody, now: number, validForMs: number): Promise<Uint8Array> {
  return signStatement(nodeKey, { type: ATTESTATION_TYPE, subjects: [{ id: node }], predicate: attestationPredicate.parse(body), issuedAt: now, notBefore: now, expiresAt: now + validForMs })
}

export async function verifyAttestation (bytes: Uint8Array, now: number): Promise<VerifiedAttestation> {
  let statement
  try {
    statement = await verifyStatement(bytes, { type: ATTESTATION_TYPE, predicate: attestationPredicate, now })
  } catch (err) {
    if (err instanceof StatementError) throw new AttestationError(err.check, err.detail)
    throw err
  }
  const node = statement.signer.toString()
  if (statement.subjects.length !== 1 || statement.subjects[0]!.id !== node) throw new AttestationError('subject', `an attestation is about its signer ${node}`)
  let operator: string | null = null
  let expiresAt = statement.expiresAt
  if (statement.predicate.membership != null) {
    let certificate
    try {
      certificate = await verifyStatement(statement.predicate.membership, { type: MEMBERSHIP_TYPE, predicate: membershipPredicate, now })
    } catch (err) {
      if (err instanceof StatementError) throw new AttestationError('certificate', `${err.check}: ${err.detail}`)
      throw err
    }
    if (certificate.predicate.node !== node || certificate.subjects[0]?.id !== node) throw new AttestationError('certificate', `the certificate is for ${certificate.predicate.node}, not ${node}`)
    if (certificate.signer.toString() !== certificate.predicate.operator) throw new AttestationError('certificate', `the certificate names operator ${certificate.predicate.operator} but is signed by ${certificate.signer.toString()}`)
    operator = certificate.predicate.operator
    expiresAt = Math.min(expiresAt, certificate.expiresAt)
  }
  return { ...statement.predicate, node, operator, issuedAt: statement.issuedAt, expiresAt }
}

export interface FederationPolicy {
  /** Operator keys whose nodes may host shards; empty: an open mesh, everyone may. */
  trustedOperators: ReadonlySet<string>
  /** Code digests accepted from hosts; empty: any. */
  acceptedCodeDigests: ReadonlySet<string>
}

export type Trust = 'trusted' | 'open-mesh' | 'no-attestation' | 'no-operator' | 'unknown-operator' | 'code-not-accepted'

/** Whether placement may choose this node as a host or replica, and why not. */
export function trustOf (attestation: VerifiedAttestation | null, policy: FederationPolicy): Trust {
  if (policy.trustedOperators.size === 0 && policy.acceptedCodeDigests.size === 0) return 'open-mesh'
  if (attestation == null) return 'no-attestation'
  if (policy.trustedOperators.size > 0) {
    if (attestation.operator == null) return 'no-operator'
    if (!policy.trustedOperators.has(attestation.operator)) return 'unknown-operator'
  }
  if (policy.acceptedCodeDigests.size > 0 && !policy.acceptedCodeDigests.has(attestation.software.codeDigest)) return 'code-not-accepted'
  return 'trusted'
}

export const mayHost = (trust: Trust): boolean => trust === 'trusted' || trust === 'open-mesh'
