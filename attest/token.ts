/**
 * Capability tokens in the style of UCAN: a signed statement that the issuer
 * grants the audience some capabilities (a resource such as `shard:world-3`
 * or `asset:<cid>`, an ability such as `write` or `transfer`) for a time
 * window, carrying the tokens it was itself granted by (its proofs) inline,
 * so anyone can check the whole chain from signatures alone.
 *
 *   predicate: { aud: peer id, att: [{ with, can }], nnc: nonce, prf: [token bytes] }
 *
 * A chain is valid when every link verifies, each proof's audience is the
 * issuer of the link it supports, every capability of a link is covered by a
 * capability of its proofs and its window lies within theirs (a delegation
 * can only narrow), the chain is no deeper than `maxDepth`, its root issuers
 * are trusted for what they grant, no link was revoked by its issuer or an
 * issuer above it, and (for single-use invocations) its nonce is fresh.
 */
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { z } from 'zod'
import { CheckError } from './envelope.ts'
import { signStatement, StatementError, verifyStatement, type StatementCheck } from './statement.ts'
import type { PrivateKey } from '@libp2p/interface'

export const TOKEN_TYPE = 'metagrid.token/v1'
export const REVOCATION_TYPE = 'metagrid.revocation/v1'
export const DEFAULT_MAX_DEPTH = 5

export type TokenCheck = StatementCheck | 'depth' | 'proof-audience' | 'escalation' | 'untrusted-root' | 'revoked' | 'replayed'

export class TokenError extends CheckError<TokenCheck> {
  static override name = 'TokenError'
  override name = 'TokenError'
  /** How many links above the presented token the failure is (0: the token itself). */
  readonly depth: number
  constructor (check: TokenCheck, message: string, depth = 0) {
    super(check, depth > 0 ? `${message} (proof at depth ${depth})` : message)
    this.depth = depth
  }
}

export interface Capability {
  /** `shard:<id>`, `asset:<cid>`, a prefix with `*` (`shard:*`), or `*`. */
  with: string
  /** `read`, `write`, `transfer`, ... or `*`. */
  can: string
}

const capabilitySchema = z.strictObject({ with: z.string().min(1).max(256), can: z.string().min(1).max(64) })
const predicateSchema = z.strictObject({
  aud: z.string().min(1).max(128),
  att: z.array(capabilitySchema).min(1).max(64),
  nnc: z.string().min(8).max(64),
  prf: z.array(z.custom<Uint8Array>((value) => value instanceof Uint8Array, { error: 'expected bytes' })).max(8),
  /** A single-use token: a verifier with a replay guard takes it once. */
  one: z.literal(true).optional()
})
type TokenPredicate = z.infer<typeof predicateSchema>

export interface IssueTokenOptions {
  audience: string
  capabilities: Capability[]
  notBefore: number
  expiresAt: number
  proofs?: Uint8Array[]
  nonce?: string
  /** Single use: refused when presented again (to a verifier with a replay guard). */
  once?: boolean
  now?: number
}

export async function issueToken (key: PrivateKey, options: IssueTokenOptions): Promise<Uint8Array> {
  const predicate: TokenPredicate = {
    aud: options.audience,
    att: options.capabilities,
    nnc: options.nonce ?? Buffer.from(crypto.getRandomValues(new Uint8Array(12))).toString('base64url'),
    prf: options.proofs ?? [],
    ...(options.once === true ? { one: true as const } : {})
  }
  return signStatement(key, {
    type: TOKEN_TYPE,
    subjects: [{ id: options.audience }],
    predicate,
    issuedAt: options.now ?? Date.now(),
    notBefore: options.notBefore,
    expiresAt: options.expiresAt
  })
}

/** Content address of a token (or any statement): CIDv1, raw, sha2-256 over its bytes. */
export async function statementCid (bytes: Uint8Array): Promise<string> {
  return CID.createV1(raw.code, await sha256.digest(bytes)).toString()
}

export function covers (parent: Capability, child: Capability): boolean {
  const resource = parent.with === '*' || parent.with === child.with ||
    (parent.with.endsWith('*') && child.with.startsWith(parent.with.slice(0, -1)))
  return resource && (parent.can === '*' || parent.can === child.can)
}

export interface VerifiedRevocation {
  /** The CID of the revoked token (a link of a chain). */
  cid: string
  revoker: string
  expiresAt: number
}

/** Verifies a signed revocation: who revokes which token's CID. Throws StatementError. */
export async function verifyRevocation (bytes: Uint8Array, now: number): Promise<VerifiedRevocation> {
  const statement = await verifyStatement(bytes, { type: REVOCATION_TYPE, predicate: z.strictObject({ cid: z.string().min(1).max(128) }), now })
  return { cid: statement.predicate.cid, revoker: statement.signer.toString(), expiresAt: statement.expiresAt }
}

/** Revocations: a token's CID, revoked by the signer of the revocation (its issuer, or an issuer above it). */
export class RevocationList {
  private readonly revokers = new Map<string, Set<string>>()

  /** Verifies a signed revocation and records it. */
  async add (bytes: Uint8Array, now: number): Promise<VerifiedRevocation> {
    const revocation = await verifyRevocation(bytes, now)
    this.record(revocation)
    return revocation
  }

  /** Records a revocation already verified. */
  record (revocation: VerifiedRevocation): void {
    const set = this.revokers.get(revocation.cid) ?? new Set()
    set.add(revocation.revoker)
    this.revokers.set(revocation.cid, set)
  }

  get size (): number {
    return this.revokers.size
  }

  revokedBy (cid: string): ReadonlySet<string> {
    return this.revokers.get(cid) ?? new Set()
  }
}

export async function signRevocation (key: PrivateKey, cid: string, now = Date.now(), validForMs = 365 * 86_400_000): Promise<Uint8Array> {
  return signStatement(key, { type: REVOCATION_TYPE, subjects: [{ id: cid }], predicate: { cid }, issuedAt: now, notBefore: now - 1, expiresAt: now + validForMs })
}

/** Remembers (issuer, nonce) of single-use tokens until they expire; bounded. */
export class ReplayGuard {
  private readonly seen = new Map<string, number>()
  private readonly max: number
  constructor (max = 100_000) {
    this.max = max
  }

  /** Throws TokenError('replayed') if this token was presented before. */
  use (issuer: string, nonce: string, expiresAt: number, now: number): void {
    const key = `${issuer}\u0000${nonce}`
    const until = this.seen.get(key)
    if (until != null && until > now) throw new TokenError('replayed', `nonce ${nonce} of ${issuer} was already used`)
    if (this.seen.size >= this.max) {
      for (const [k, expiry] of this.seen) if (expiry <= now) this.seen.delete(k)
      // Still full of live nonces: refuse rather than forget one and allow its replay.
      if (this.seen.size >= this.max) throw new TokenError('replayed', 'too many single-use tokens in flight')
    }
    this.seen.set(key, expiresAt)
  }
}

export interface VerifyTokenOptions {
  now: number
  /** Whether `issuer` may grant `capability` on its own authority (a chain's root). */
  isRoot: (issuer: string, capability: Capability) => boolean
  revocations?: RevocationList
  maxDepth?: number
  /** The token must be addressed to this peer (the verifier, or the client presenting it). */
  audience?: string
  /** Takes each single-use token once (tokens without `once` are not tracked). */
  replay?: ReplayGuard
  skewMs?: number
}

export interface VerifiedToken {
  cid: string
  issuer: string
  audience: string
  capabilities: Capability[]
  notBefore: number
  expiresAt: number
  nonce: string
  /** Single use (see IssueTokenOptions.once). */
  once: boolean
  /** Issuers from this token up to the root, this one first. */
  chain: string[]
}

export async function verifyToken (bytes: Uint8Array, options: VerifyTokenOptions): Promise<VerifiedToken> {
  const token = await verifyLink(bytes, options, 0)
  if (options.audience != null && token.audience !== options.audience) {
    throw new TokenError('proof-audience', `token is for ${token.audience}, not ${options.audience}`)
  }
  if (token.once) options.replay?.use(token.issuer, token.nonce, token.expiresAt, options.now)
  return token
}

async function verifyLink (bytes: Uint8Array, options: VerifyTokenOptions, depth: number): Promise<VerifiedToken> {
  const maxDepth = options.maxDepth ?? DEFAULT_MAX_DEPTH
  if (depth > maxDepth) throw new TokenError('depth', `chain deeper than ${maxDepth}`, depth)
  let statement
  try {
    statement = await verifyStatement(bytes, { type: TOKEN_TYPE, predicate: predicateSchema, now: options.now, ...(options.skewMs != null ? { skewMs: options.skewMs } : {}) })
  } catch (err) {
    if (err instanceof StatementError) throw new TokenError(err.check, err.detail, depth)
    throw err
  }
  const issuer = statement.signer.toString()
  const { aud, att, nnc, prf, one } = statement.predicate
  const cid = await statementCid(bytes)
  let chain = [issuer]
  if (prf.length === 0) {
    for (const capability of att) {
      if (!options.isRoot(issuer, capability)) throw new TokenError('untrusted-root', `${issuer} may not grant ${capability.can} on ${capability.with} by itself`, depth)
    }
  } else {
    const proofs = []
    for (const proof of prf) proofs.push(await verifyLink(proof, options, depth + 1))
    for (const proof of proofs) {
      if (proof.audience !== issuer) throw new TokenError('proof-audience', `a proof is addressed to ${proof.audience}, not to the issuer ${issuer}`, depth)
      if (statement.notBefore < proof.notBefore || statement.expiresAt > proof.expiresAt) {
        throw new TokenError('escalation', 'the token outlives (or precedes) a proof it relies on', depth)
      }
    }
    for (const capability of att) {
      if (!proofs.some((proof) => proof.capabilities.some((granted) => covers(granted, capability)))) {
        throw new TokenError('escalation', `no proof grants ${capability.can} on ${capability.with}`, depth)
      }
    }
    chain = [issuer, ...new Set(proofs.flatMap((proof) => proof.chain))]
  }
  // Revoked by its own issuer or by anyone above it in the chain.
  for (const revoker of options.revocations?.revokedBy(cid) ?? []) {
    if (chain.includes(revoker)) throw new TokenError('revoked', `revoked by ${revoker}`, depth)
  }
  return { cid, issuer, audience: aud, capabilities: att, notBefore: statement.notBefore, expiresAt: statement.expiresAt, nonce: nnc, once: one === true, chain }
}
