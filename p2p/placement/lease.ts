/**
 * Leases: who hosts a shard, at which epoch, until when — safe without a
 * central authority.
 *
 * A claimant signs a lease statement `{ shard, epoch, holder, voters, prev,
 * prevHolder, expiresAt, startedAt }` and asks the voters (its chosen replicas and
 * itself) and the previous lease's voters (`prev`) to grant it. Each voter
 * keeps one durable promise per shard — the highest epoch it granted and to
 * whom — and grants:
 *
 * - a renewal: same epoch, same holder;
 * - a new epoch: only once the holder of the lease it promised went silent
 *   (no keepalive for the liveness timeout on the voter's own clock, see
 *   liveness.ts), or that lease's term ran out (plus a skew margin), or its
 *   holder signed a release for it (a planned handoff). Never a second
 *   holder for an epoch it granted.
 *
 * A lease is valid with grants from a majority of `voters` *and* a majority of
 * `prev` (joint consensus, as in Raft's membership change): two claims for one
 * epoch would need one voter of the previous set to grant twice, which its
 * promise forbids. So there are never two valid holders for one epoch. The
 * epoch is the fencing token: replicas refuse the writes of an older epoch's
 * holder, a voter that granted a newer epoch acknowledges none of the older
 * holder's writes (so none can reach the majority write concern), and a
 * holder stops serving when its keepalives go unanswered or `marginMs`
 * before its term ends.
 *
 * The genesis lease of a shard (no previous lease) has no `prev`; two nodes
 * with very different views could each win epoch 1 from disjoint voter sets.
 * The table then keeps both and readers pick one deterministically (see
 * `LeaseTable`), and the loser steps down when it sees the winner.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { z } from 'zod'
import { CheckError } from '../../attest/envelope.ts'
import { signStatement, StatementError, verifyStatement } from '../../attest/statement.ts'
import type { Sublevel } from '../../storage/database.ts'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'

export const LEASE_TYPE = 'metagrid.lease/v1'
export const GRANT_TYPE = 'metagrid.lease-grant/v1'
export const RELEASE_TYPE = 'metagrid.lease-release/v1'

/** A lease statement's own signature window; the lease's validity is `expiresAt` inside it. */
const STATEMENT_WINDOW_MS = 365 * 86_400_000
const MAX_VOTERS = 16
const peer = z.string().min(1).max(128)

export const leasePredicate = z.strictObject({
  shard: z.string().min(1).max(64),
  epoch: z.int().min(1),
  holder: peer,
  voters: z.array(peer).min(1).max(MAX_VOTERS),
  prev: z.array(peer).max(MAX_VOTERS),
  /** The holder of the epoch before this one (null for a shard's first lease): each lease names its predecessor, so accepted leases chain back. */
  prevHolder: peer.nullable(),
  expiresAt: z.int().min(0),
  /** When this epoch began (kept through renewals): hysteresis counts from here. */
  startedAt: z.int().min(0)
})
const grantPredicate = z.strictObject({ shard: z.string().min(1).max(64), epoch: z.int().min(1), holder: peer, expiresAt: z.int().min(0) })
const releasePredicate = z.strictObject({ shard: z.string().min(1).max(64), epoch: z.int().min(1), to: peer })

export type LeaseTerms = z.infer<typeof leasePredicate>
export type Release = z.infer<typeof releasePredicate>

export type LeaseCheck = 'encoding' | 'lease' | 'holder' | 'grant' | 'quorum' | 'release'

export class LeaseError extends CheckError<LeaseCheck> {
  static override name = 'LeaseError'
  override name = 'LeaseError'
}

export interface VerifiedLease extends LeaseTerms {
  /** When the holder signed this version of the lease (its claim or its latest renewal). */
  issuedAt: number
  /** The record as stored in the table (lease statement plus grants). */
  record: Uint8Array
}

function statementWindow (now: number): { issuedAt: number, notBefore: number, expiresAt: number } {
  return { issuedAt: now, notBefore: now, expiresAt: now + STATEMENT_WINDOW_MS }
}

export async function signLease (key: PrivateKey, terms: LeaseTerms, now: number): Promise<Uint8Array> {
  return signStatement(key, { type: LEASE_TYPE, subjects: [{ id: terms.shard }], predicate: terms, ...statementWindow(now) })
}

export async function signRelease (key: PrivateKey, release: Release, now: number): Promise<Uint8Array> {
  return signStatement(key, { type: RELEASE_TYPE, subjects: [{ id: release.shard }], predicate: release, ...statementWindow(now) })
}

async function signGrant (key: PrivateKey, terms: LeaseTerms, now: number): Promise<Uint8Array> {
  const predicate = { shard: terms.shard, epoch: terms.epoch, holder: terms.holder, expiresAt: terms.expiresAt }
  return signStatement(key, { type: GRANT_TYPE, subjects: [{ id: terms.shard }], predicate, ...statementWindow(now) })
}

/** Opens a holder-signed lease statement (not yet a valid lease: no grants). */
export async function openLeaseStatement (bytes: Uint8Array, now: number): Promise<LeaseTerms & { issuedAt: number }> {
  let statement
  try {
    statement = await verifyStatement(bytes, { type: LEASE_TYPE, predicate: leasePredicate, now })
  } catch (err) {
    if (err instanceof StatementError) throw new LeaseError('lease', `${err.check}: ${err.detail}`)
    throw err
  }
  const terms = statement.predicate
  if (statement.signer.toString() !== terms.holder) throw new LeaseError('holder', `lease names ${terms.holder} but is signed by ${statement.signer.toString()}`)
  if (new Set(terms.voters).size !== terms.voters.length || !terms.voters.includes(terms.holder)) throw new LeaseError('lease', 'voters must be distinct and include the holder')
  if (new Set(terms.prev).size !== terms.prev.length) throw new LeaseError('lease', 'previous voters must be distinct')
  return { ...terms, issuedAt: statement.issuedAt }
}

export async function openRelease (bytes: Uint8Array, now: number): Promise<Release & { signer: string }> {
  try {
    const statement = await verifyStatement(bytes, { type: RELEASE_TYPE, predicate: releasePredicate, now })
    return { ...statement.predicate, signer: statement.signer.toString() }
  } catch (err) {
    if (err instanceof StatementError) throw new LeaseError('release', `${err.check}: ${err.detail}`)
    throw err
  }
}

export function encodeLeaseRecord (lease: Uint8Array, grants: Uint8Array[]): Uint8Array {
  return dagCbor.encode({ l: lease, g: grants })
}

function majority (set: readonly string[], granted: ReadonlySet<string>): boolean {
  return set.filter((p) => granted.has(p)).length * 2 > set.length
}

/** Whether `granted` holds a majority of the lease's voters and, if it has any, of the previous voters. */
export function hasQuorum (terms: Pick<LeaseTerms, 'voters' | 'prev'>, granted: ReadonlySet<string>): boolean {
  return majority(terms.voters, granted) && (terms.prev.length === 0 || majority(terms.prev, granted))
}

/** Verifies a lease record: the holder's signature and a majority of valid grants from `voters` and from `prev`. */
export async function verifyLeaseRecord (record: Uint8Array, now: number): Promise<VerifiedLease> {
  let decoded: unknown
  try {
    decoded = dagCbor.decode(record)
  } catch {
    throw new LeaseError('encoding', 'record is not DAG-CBOR')
  }
  const { l, g } = (decoded ?? {}) as { l?: unknown, g?: unknown }
  if (!(l instanceof Uint8Array) || !Array.isArray(g) || g.length > 2 * MAX_VOTERS || !g.every((x) => x instanceof Uint8Array)) {
    throw new LeaseError('encoding', 'record fields missing or mistyped')
  }
  const terms = await openLeaseStatement(l, now)
  const electorate = new Set([...terms.voters, ...terms.prev])
  const granted = new Set<string>()
  for (const bytes of g as Uint8Array[]) {
    let grant
    try {
      grant = await verifyStatement(bytes, { type: GRANT_TYPE, predicate: grantPredicate, now })
    } catch (err) {
      if (err instanceof StatementError) throw new LeaseError('grant', `${err.check}: ${err.detail}`)
      throw err
    }
    const signer = grant.signer.toString()
    const p = grant.predicate
    if (!electorate.has(signer)) throw new LeaseError('grant', `grant by ${signer}, who is not a voter`)
    if (p.shard !== terms.shard || p.epoch !== terms.epoch || p.holder !== terms.holder || p.expiresAt < terms.expiresAt) {
      throw new LeaseError('grant', `grant by ${signer} is for another lease`)
    }
    granted.add(signer)
  }
  if (!majority(terms.voters, granted)) throw new LeaseError('quorum', `${granted.size} grants; a majority of ${terms.voters.length} voters is needed`)
  if (terms.prev.length > 0 && !majority(terms.prev, granted)) throw new LeaseError('quorum', `a majority of the ${terms.prev.length} previous voters is needed`)
  return { ...terms, record }
}

export type VoteRefusal = 'STALE_EPOCH' | 'EPOCH_TAKEN' | 'HELD' | 'BAD_LEASE' | 'TOO_LONG' | 'NOT_A_VOTER' | 'NOT_ELIGIBLE'

/** Every code a vote refusal may carry; anything else a peer sends is counted as `other` (metric labels stay bounded). */
export const VOTE_REFUSALS: ReadonlySet<string> = new Set<VoteRefusal>(['STALE_EPOCH', 'EPOCH_TAKEN', 'HELD', 'BAD_LEASE', 'TOO_LONG', 'NOT_A_VOTER', 'NOT_ELIGIBLE'])

/**
 * A refusal names the epoch and holder the voter promised, and how long that promise stands at most (`retryInMs`):
 * for HELD, how long until the voter would grant; 0 when the promise has expired or its holder no longer keeps it.
 */
export type Vote = { ok: true, grant: Uint8Array, state?: Uint8Array } | { ok: false, code: VoteRefusal, detail: string, epoch: number, holder: string | null, retryInMs?: number }

/** What a voter promised for a shard: the epoch, its holder, until when, and (for chain checks) that lease's voters and previous voters. */
interface Promise_ { epoch: number, holder: string, expiresAt: number, voters?: string[], prev?: string[], grantedAt?: number }

export interface VoterOptions {
  /** A lease longer than this from now is refused: nobody may take a shard for a year. */
  maxLeaseMs: number
  /** Clock difference tolerated between voters and holders; a new epoch is granted this long after the old one expired. */
  marginMs: number
}

/** What the voter knows of a holder's keepalives (liveness.ts): whether a lease it promised still stands, and if so for how long at least. */
export interface HolderSilence {
  stands: (holder: string, shard: string, epoch: number, grantedAt: number) => boolean
  remaining: (holder: string) => number
  /** A claim just granted counts as hearing from its holder. */
  alive: (holder: string) => void
}

/**
 * What the voter's own view says of a claim before it promises anything: the
 * shard is one of the world's, and the claimant may hold it (placement's
 * assignment, the current voters, the federation policy). A refusal here
 * names a bounded code.
 */
export type ClaimCheck = (terms: LeaseTerms) => { ok: true } | { ok: false, code: 'NOT_ELIGIBLE' | 'BAD_LEASE', detail: string }

/**
 * One node's votes, persisted before they are sent: a voter that crashes and
 * restarts still remembers every promise, so it never grants one epoch twice.
 */
export class LeaseVoter {
  private readonly queue = new Map<string, Promise<unknown>>()
  private readonly db: Sublevel
  private readonly key: PrivateKey
  private readonly options: VoterOptions
  private readonly now: () => number

  private readonly self: string
  private readonly check: ClaimCheck
  private silence: HolderSilence | null = null
  private stateOf: ((shard: string) => Uint8Array | undefined) | null = null

  constructor (db: Sublevel, key: PrivateKey, options: VoterOptions, check: ClaimCheck, now: () => number = Date.now) {
    this.db = db
    this.key = key
    this.options = options
    this.check = check
    this.now = now
    this.self = peerIdFromPrivateKey(key).toString()
  }

  /** Every promise, loaded at start and written through on every grant (one per world shard, which bounds it); the database is the truth after a restart. */
  private readonly promises = new Map<string, Promise_>()
  /** How many shards each holder holds a promise of here: who may send keepalives. */
  private readonly holders = new Map<string, number>()
  private loaded = false

  /** Reads every promise from the database; the voter answers nothing before. */
  async load (): Promise<void> {
    if (this.loaded) return
    for await (const [key, raw] of this.db.iterator({ gt: 'promise/', lt: 'promise/~' })) {
      try {
        this.remember(key.slice('promise/'.length), JSON.parse(Buffer.from(raw).toString('utf8')) as Promise_)
      } catch {
        // A promise that does not parse cannot have been written by this code; refusing every claim for that shard would be safer
        // than forgetting it, so keep an epoch no claim can reach.
        this.remember(key.slice('promise/'.length), { epoch: Number.MAX_SAFE_INTEGER, holder: '', expiresAt: Number.MAX_SAFE_INTEGER })
      }
    }
    this.loaded = true
  }

  /**
   * What a grant to a new holder carries: the voter's causal context of the
   * shard, taken after the grant fenced it at the old epoch, so the claimant
   * can skip pulling state it already has (lease-keeper.ts, takeState).
   */
  setStateOf (stateOf: (shard: string) => Uint8Array | undefined): void {
    this.stateOf = stateOf
  }

  /** Where the voter learns of holders' silence; without it only a term's end or a release frees a shard. */
  setSilence (silence: HolderSilence): void {
    this.silence = silence
  }

  private remember (shard: string, promise: Promise_): void {
    const previous = this.promises.get(shard)
    if (previous != null) {
      const count = (this.holders.get(previous.holder) ?? 1) - 1
      if (count <= 0) this.holders.delete(previous.holder)
      else this.holders.set(previous.holder, count)
    }
    this.promises.set(shard, promise)
    this.holders.set(promise.holder, (this.holders.get(promise.holder) ?? 0) + 1)
  }

  async promised (shard: string): Promise<Promise_ | undefined> {
    await this.load()
    return this.promises.get(shard)
  }

  /** The epoch this voter promised for a shard, now (0 for none): the fence the replicate protocol checks before it applies a write. */
  promisedEpoch (shard: string): number {
    return this.promises.get(shard)?.epoch ?? 0
  }

  /** Whether the lease this voter promised for `shard`, if it is `epoch` of `holder`, still stands (see liveness.ts); undefined if it promised something else. */
  promiseStands (shard: string, holder: string, epoch: number): boolean | undefined {
    const promise = this.promises.get(shard)
    if (promise == null || promise.epoch !== epoch || promise.holder !== holder || this.silence == null) return undefined
    return this.silence.stands(holder, shard, epoch, promise.grantedAt ?? 0)
  }

  /** Whether `peer` holds a lease this voter promised (and so may send it keepalives). */
  isHolder (peer: string): boolean {
    return this.holders.has(peer)
  }

  /** Holders of leases this voter promised. */
  holderIds (): IterableIterator<string> {
    return this.holders.keys()
  }

  /** Decides on a signed lease claim; `release` is the previous holder's signed release, for a handoff. */
  async vote (lease: Uint8Array, release?: Uint8Array): Promise<Vote> {
    const now = this.now()
    let terms: LeaseTerms
    try {
      terms = await openLeaseStatement(lease, now)
    } catch (err) {
      if (err instanceof LeaseError) return { ok: false, code: 'BAD_LEASE', detail: err.message, epoch: 0, holder: null }
      throw err
    }
    if (terms.expiresAt > now + this.options.maxLeaseMs + this.options.marginMs) {
      return { ok: false, code: 'TOO_LONG', detail: `lease runs ${terms.expiresAt - now} ms; at most ${this.options.maxLeaseMs}`, epoch: terms.epoch, holder: null }
    }
    // A promise is kept per shard, durably: only claims this node is asked to vote on, for shards of the world, get one.
    if (!terms.voters.includes(this.self) && !terms.prev.includes(this.self)) {
      return { ok: false, code: 'NOT_A_VOTER', detail: 'this node is not among the voters of that lease', epoch: terms.epoch, holder: null }
    }
    const verdict = this.check(terms)
    if (!verdict.ok) return { ok: false, code: verdict.code, detail: verdict.detail, epoch: terms.epoch, holder: null }
    let released: { by: string, epoch: number } | undefined
    if (release != null) {
      try {
        const r = await openRelease(release, now)
        // The claim may skip epochs past the released one (claims that failed half-way left promises of their own).
        if (r.shard === terms.shard && r.to === terms.holder && r.epoch < terms.epoch) released = { by: r.signer, epoch: r.epoch }
      } catch (err) {
        if (!(err instanceof LeaseError)) throw err
      }
    }
    // One decision per shard at a time: read, decide and persist without interleaving.
    const previous = this.queue.get(terms.shard) ?? Promise.resolve()
    const decision = previous.then(async () => this.decide(terms, now, released))
    const tail = decision.catch(() => {})
    this.queue.set(terms.shard, tail)
    void tail.then(() => { if (this.queue.get(terms.shard) === tail) this.queue.delete(terms.shard) })
    return decision
  }

  private async decide (terms: LeaseTerms, now: number, release: { by: string, epoch: number } | undefined): Promise<Vote> {
    const promise = await this.promised(terms.shard)
    if (promise != null) {
      const expired = now > promise.expiresAt + this.options.marginMs
      const silent = this.silence != null && !this.silence.stands(promise.holder, terms.shard, promise.epoch, promise.grantedAt ?? 0)
      // How long the promise stands at most: its term, or less if its holder's keepalives stop naming it.
      const standsMs = expired || silent ? 0 : Math.max(0, Math.ceil(Math.min(promise.expiresAt + this.options.marginMs - now, this.silence?.remaining(promise.holder) ?? Number.POSITIVE_INFINITY)))
      // The refusals that name a higher or equal epoch say how long it stands, so a claimant that has no record
      // of that epoch knows how long to wait for one (lease-keeper.ts, `unseenUntil`).
      const refuse = (code: VoteRefusal, detail: string): Vote => ({ ok: false, code, detail, epoch: promise.epoch, holder: promise.holder, retryInMs: standsMs })
      if (terms.epoch < promise.epoch) return refuse('STALE_EPOCH', `epoch ${promise.epoch} was already granted`)
      if (terms.epoch === promise.epoch && terms.holder !== promise.holder) return refuse('EPOCH_TAKEN', `epoch ${promise.epoch} belongs to ${promise.holder}`)
      // One epoch, one voter set: a renewal changes only the term. (Two records of one epoch with different voters would fork the chain.)
      if (terms.epoch === promise.epoch && promise.voters != null && (!sameMembers(terms.voters, promise.voters) || !sameMembers(terms.prev, promise.prev ?? []))) {
        return refuse('EPOCH_TAKEN', `epoch ${promise.epoch} was granted with other voters; a new voter set takes a new epoch`)
      }
      if (terms.epoch > promise.epoch) {
        // A release by the holder this voter promised, of that epoch (or a later one it was not asked about).
        const released = release != null && release.by === promise.holder && release.epoch >= promise.epoch
        if (!expired && !silent && !released && promise.holder !== terms.holder) {
          return refuse('HELD', `held by ${promise.holder} at epoch ${promise.epoch}, which still stands behind it`)
        }
      }
    }
    const next: Promise_ = { epoch: terms.epoch, holder: terms.holder, expiresAt: Math.max(terms.expiresAt, promise?.epoch === terms.epoch ? promise.expiresAt : 0), voters: terms.voters, prev: terms.prev, grantedAt: now }
    await this.db.put(`promise/${terms.shard}`, Buffer.from(JSON.stringify(next)))
    this.remember(terms.shard, next)
    this.silence?.alive(terms.holder)
    const grant = await signGrant(this.key, terms, now)
    // A renewal, or a claim by the shard's own previous holder, pulls nothing: no state to say.
    const takeover = promise?.epoch !== terms.epoch && terms.prevHolder != null && terms.prevHolder !== terms.holder
    const state = takeover && terms.holder !== this.self ? this.stateOf?.(terms.shard) : undefined
    return state == null ? { ok: true, grant } : { ok: true, grant, state }
  }
}

function sameMembers (a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((peer) => b.includes(peer))
}
