/**
 * Token revocations, replicated through the mesh: a signed
 * `metagrid.revocation/v1` names the CID of a token (a link of a chain) and
 * is signed by its issuer or an issuer above it (attest/token.ts). Every node
 * keeps every revocation in the system shard `sys.revocations` (entity
 * `rev.<token CID>.<revoker>`, component `r`), append-only, and every token
 * chain a node verifies is checked against them, so a revocation made at one
 * node holds at all of them as soon as it has spread.
 *
 * The admission rules: an entry holds a revocation that verifies, of that
 * CID, by that revoker; never changed, never deleted; at most MAX_REVOCATIONS.
 */
import { StatementError } from '../attest/statement.ts'
import { RevocationList, verifyRevocation, type VerifiedRevocation } from '../attest/token.ts'
import { REVOCATIONS_SHARD } from './constants.ts'
import { ignore, reject } from './admission/refusal.ts'
import type { EntryChange, EntryRules } from './admission/rules.ts'
import type { ShardDoc } from '../storage/crdt/shard-doc.ts'
import type { Replication } from './sync/replication.ts'
import type { Logger } from './logger.ts'

/** Revocations kept at most: a revocation is small, but a stranger could sign many. */
export const MAX_REVOCATIONS = 100_000

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64')
const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'base64'))

export interface RevocationsComponents {
  replication: Replication
  logger: Logger
}

export class RevocationLedger {
  private readonly components: RevocationsComponents
  private readonly log: Logger
  private readonly list = new RevocationList()

  constructor (components: RevocationsComponents) {
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:revocations' })
  }

  async start (): Promise<void> {
    const { replication } = this.components
    const store = await replication.ensure(REVOCATIONS_SHARD)
    replication.admission.setRules(REVOCATIONS_SHARD, this.rules())
    await this.load(store.doc, store.doc.entityIds())
    replication.addEventListener('change', (event) => {
      const { shard, result } = event.detail
      if (shard === REVOCATIONS_SHARD && result != null) void this.load(replication.shard(REVOCATIONS_SHARD).doc, result.entities)
    })
  }

  /** The revocations known now, for token verification. */
  revocations (): RevocationList {
    return this.list
  }

  /** Verifies a revocation and records it (durably, and on its way to every node). */
  async add (bytes: Uint8Array): Promise<VerifiedRevocation> {
    const revocation = await verifyRevocation(bytes, Date.now())
    const store = this.components.replication.shard(REVOCATIONS_SHARD)
    const entity = entityOf(revocation)
    if (store.doc.entity(entity) == null) {
      store.doc.setComponent(entity, 'r', b64(bytes))
      await store.commit()
      this.log.info({ code: 'TOKEN_REVOKED', cid: revocation.cid, by: revocation.revoker }, 'token revoked')
    }
    this.list.record(revocation)
    return revocation
  }

  /** Takes the revocations of these entries into the list, yielding to the event loop now and then (a full load verifies every one). */
  private async load (doc: ShardDoc, entities: Iterable<string>): Promise<void> {
    const now = Date.now()
    let checked = 0
    for (const id of entities) {
      const text = doc.entity(id)?.components.r
      if (typeof text !== 'string') continue
      try {
        this.list.record(await verifyRevocation(unb64(text), now))
      } catch (err) {
        // An expired revocation lapses with the tokens it revoked; anything else was refused on the way in.
        if (!(err instanceof StatementError)) throw err
      }
      if (++checked % 256 === 0) await new Promise((resolve) => setImmediate(resolve))
    }
  }

  rules (): EntryRules {
    return { counters: false, check: async (change, doc) => { await checkEntry(change, doc) } }
  }
}

function entityOf (revocation: VerifiedRevocation): string {
  return `rev.${revocation.cid}.${revocation.revoker}`.slice(0, 128)
}

async function checkEntry (change: EntryChange, doc: ShardDoc): Promise<void> {
  const { entity } = change
  if (!entity.startsWith('rev.')) throw reject('UNKNOWN_ENTRY', `${REVOCATIONS_SHARD} holds rev.* entries only`)
  if (change.removes.length > 0) throw reject('APPEND_ONLY', `${entity} is never removed`)
  if (change.adds.length > 0 && doc.entity(entity) == null && doc.entityIds().length >= MAX_REVOCATIONS) throw ignore('TABLE_FULL', `${MAX_REVOCATIONS} revocations held`)
  for (const c of change.components) {
    if (c.component !== 'r' || typeof c.value !== 'string') throw reject('APPEND_ONLY', `${entity} holds one revocation, r, never deleted`)
    const held = doc.entity(entity)?.components.r
    if (held !== undefined && held !== c.value) throw reject('APPEND_ONLY', `${entity} never changes`)
    let revocation: VerifiedRevocation
    try {
      revocation = await verifyRevocation(unb64(c.value), Date.now())
    } catch (err) {
      if (err instanceof StatementError) throw reject('BAD_REVOCATION', `${entity}: ${err.message}`)
      throw err
    }
    if (entityOf(revocation) !== entity) throw reject('BAD_REVOCATION', `${entity} holds the revocation of ${revocation.cid} by ${revocation.revoker}`)
  }
}
