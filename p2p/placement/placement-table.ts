/**
 * The system shard `sys.placement`, which every node replicates: each node's
 * signed capability descriptor and attestation (`node.<peer>`, components `d`
 * and `att`) and every shard's lease records (`lease.<shard>`, one component
 * per epoch and holder, `e<epoch>.<holder>`, so a late write of an old epoch
 * never overwrites a newer one).
 *
 * This file reads it (verifying every record, caching by its bytes, which a
 * signature makes immutable) and says who may write what in it, the rules the
 * admission layer enforces on every path:
 *
 * - `node.<peer>` is written and removed by that peer alone;
 * - `lease.<shard>/e<N>.<holder>` holds a lease record of that shard, epoch
 *   and holder that verifies, written by its holder (a component per holder,
 *   so the two valid leases of a genesis race both stay, and the next epoch
 *   can name which one it followed); an epoch's components are deleted only
 *   by the holder of a newer epoch (keeping the table short); the entry
 *   itself is never removed;
 * - nothing else lives there, and at most MAX_NODES nodes do.
 */
import { AttestationError, trustOf, verifyAttestation, type FederationPolicy, type Trust, type VerifiedAttestation } from '../../attest/attestation.ts'
import { openDescriptor, type CapabilityDescriptor } from '../catalog/descriptor.ts'
import { PLACEMENT_SHARD } from '../constants.ts'
import { ignore, reject } from '../admission/refusal.ts'
import { LeaseError, verifyLeaseRecord, type VerifiedLease } from './lease.ts'
import type { EntryChange, EntryRules } from '../admission/rules.ts'
import type { ShardDoc } from '../../storage/crdt/shard-doc.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { Replication } from '../sync/replication.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'

/** Nodes the table holds at most: a mesh this large needs the regional hierarchy, and one stranger cannot fill memory with keys. */
export const MAX_NODES = 10_000
/** Verified records kept by their bytes; past it the cache starts over (records verify again on the next read). */
const MAX_CACHED = 4 * MAX_NODES
/** Epochs of a shard kept in the table; older components are deleted by the holder storing a new epoch. */
export const TABLE_EPOCHS = 8
/**
 * Live epoch records one shard's entry holds at most. Honest holders keep
 * TABLE_EPOCHS; a record that verifies but that no reader will accept (a
 * self-voted lease at an epoch far ahead) still takes a slot until its holder
 * deletes it, so the slots are bounded. (Whether a holder is eligible is the
 * readers' judgement, lease-rules.ts, not the table's: the table is what
 * readers judge from, so it takes records before it can judge them.)
 */
const MAX_LIVE_EPOCHS = 64
/** Epoch numbers beyond this are garbage, not history. */
const MAX_EPOCH = 2 ** 40
/** A lease component's name: `e<epoch>.<holder>`. */
const COMPONENT = /^e([1-9][0-9]{0,15})\.([1-9A-HJ-NP-Za-km-z]{1,100})$/

function leaseComponent (epoch: number, holder: string): string {
  return `e${epoch}.${holder}`
}

/** The epoch a lease component names, or undefined when it is not one. */
function epochOf (component: string): number | undefined {
  const match = COMPONENT.exec(component)
  return match == null ? undefined : Number(match[1])
}

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64')
const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'base64'))

export interface TableNode {
  descriptor: CapabilityDescriptor
  attestation: VerifiedAttestation | null
  trust: Trust
}

export interface TableRead {
  nodes: TableNode[]
  /** Every valid lease record per shard (any epoch), not yet judged against this node's view. */
  leases: Map<string, VerifiedLease[]>
}

export interface PlacementTableComponents {
  replication: Replication
  federation: FederationPolicy
  /** Whether a shard id is one of the world's (only those have leases). */
  isWorldShard: (shard: string) => boolean
  /** Shards whose every epoch stays in the table (the ledger's registrar). */
  keepsAllEpochs: (shard: string) => boolean

  metrics: P2pMetrics | null
  logger: Logger
}

export class PlacementTable {
  private readonly components: PlacementTableComponents
  private readonly log: Logger
  private readonly descriptors = new Map<string, CapabilityDescriptor | null>()
  private readonly leaseRecords = new Map<string, VerifiedLease | null>()
  private readonly attestations = new Map<string, VerifiedAttestation | null>()
  /** Each node's standing under the federation policy, and its addresses, as of the last read. */
  private trust = new Map<string, { trust: Trust, operator: string | null, codeDigest: string | null }>()
  private addrs = new Map<string, string[]>()

  constructor (components: PlacementTableComponents) {
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:placement-table' })
  }

  private store (): ShardStore {
    return this.components.replication.shard(PLACEMENT_SHARD)
  }

  /** Puts this node's signed descriptor in the table, if it changed. */
  async publishDescriptor (self: string, signed: Uint8Array): Promise<void> {
    const store = this.store()
    const text = b64(signed)
    const entity = `node.${self}`
    if (store.doc.entity(entity)?.components.d === text) return
    store.doc.setComponent(entity, 'd', text)
    await store.commit()
  }

  /** Stores a lease record this node holds, keeping the last TABLE_EPOCHS epochs of the shard. */
  async storeLease (shard: string, epoch: number, record: Uint8Array): Promise<void> {
    const store = this.store()
    const entity = `lease.${shard}`
    if (!this.components.keepsAllEpochs(shard)) {
      for (const component of Object.keys(store.doc.entity(entity)?.components ?? {})) {
        const old = epochOf(component)
        if (old != null && old <= epoch - TABLE_EPOCHS) store.doc.deleteComponent(entity, component)
      }
    }
    const holder = (await verifyLeaseRecord(record, Date.now())).holder
    store.doc.setComponent(entity, leaseComponent(epoch, holder), b64(record))
    await store.commit()
    this.leaseRecords.set(b64(record), await verifyLeaseRecord(record, Date.now()))
  }

  /** Reads every node and lease record, verifying what it has not verified before. */
  async read (now: number): Promise<TableRead> {
    const doc = this.store().doc
    for (const cache of [this.descriptors, this.leaseRecords, this.attestations]) if (cache.size > MAX_CACHED) cache.clear()
    const nodes: TableNode[] = []
    const leases = new Map<string, VerifiedLease[]>()
    const trust = new Map<string, { trust: Trust, operator: string | null, codeDigest: string | null }>()
    const addrs = new Map<string, string[]>()
    for (const id of doc.entityIds()) {
      const components = doc.entity(id)?.components ?? {}
      if (id.startsWith('node.')) {
        const text = components.d
        if (typeof text !== 'string') continue
        const descriptor = await this.descriptor(id.slice(5), text, now)
        if (descriptor == null || descriptor.expiresAt <= now) continue
        addrs.set(descriptor.peerId, descriptor.addrs)
        const att = components.att
        const attestation = typeof att === 'string' ? await this.attestation(descriptor.peerId, att, now) : null
        const standing = trustOf(attestation, this.components.federation)
        trust.set(descriptor.peerId, { trust: standing, operator: attestation?.operator ?? null, codeDigest: attestation?.software.codeDigest ?? null })
        nodes.push({ descriptor, attestation, trust: standing })
      } else if (id.startsWith('lease.')) {
        const shard = id.slice(6)
        const list: VerifiedLease[] = []
        for (const [component, value] of Object.entries(components)) {
          if (epochOf(component) == null || typeof value !== 'string') continue
          const lease = await this.leaseRecord(value, now)
          if (lease != null && lease.shard === shard && leaseComponent(lease.epoch, lease.holder) === component) list.push(lease)
        }
        if (list.length > 0) leases.set(shard, list.sort((a, b) => a.epoch - b.epoch))
      }
    }
    this.trust = trust
    this.addrs = addrs
    return { nodes, leases }
  }

  /** A node's standing under the federation policy (for the mesh view), or undefined if it has published nothing. */
  trustOf (peerId: string): { trust: Trust, operator: string | null, codeDigest: string | null } | undefined {
    return this.trust.get(peerId)
  }

  /** A node's addresses from its descriptor. */
  addressesOf (peerId: string): string[] {
    return this.addrs.get(peerId) ?? []
  }

  private async descriptor (peerId: string, text: string, now: number): Promise<CapabilityDescriptor | null> {
    if (this.descriptors.has(text)) return this.descriptors.get(text)!
    let descriptor: CapabilityDescriptor | null = null
    try {
      descriptor = await openDescriptor(unb64(text), { now, expectedPeerId: peerId })
    } catch (err) {
      this.components.metrics?.catalogRejected.inc({ reason: (err as { reason?: string }).reason ?? 'encoding' })
    }
    this.descriptors.set(text, descriptor)
    return descriptor
  }

  private async attestation (peerId: string, text: string, now: number): Promise<VerifiedAttestation | null> {
    const cached = this.attestations.get(text)
    if (cached !== undefined) return cached != null && cached.expiresAt > now ? cached : null
    let attestation: VerifiedAttestation | null = null
    try {
      attestation = await verifyAttestation(unb64(text), now)
      if (attestation.node !== peerId) throw new AttestationError('subject', `the entry of ${peerId} holds the attestation of ${attestation.node}`)
    } catch (err) {
      if (!(err instanceof AttestationError)) throw err
      this.components.metrics?.catalogRejected.inc({ reason: `attestation-${err.check}` })
      this.log.warn({ code: 'BAD_ATTESTATION', peer: peerId, check: err.check, reason: err.detail }, 'a node\'s attestation does not verify; it cannot host shards')
      attestation = null
    }
    this.attestations.set(text, attestation)
    return attestation
  }

  /** A lease record's verification, cached by its text; null when it does not verify. */
  async leaseRecord (text: string, now: number): Promise<VerifiedLease | null> {
    if (this.leaseRecords.has(text)) return this.leaseRecords.get(text)!
    let lease: VerifiedLease | null = null
    try {
      lease = await verifyLeaseRecord(unb64(text), now)
    } catch (err) {
      if (!(err instanceof LeaseError)) throw err
      this.components.metrics?.wireRejected.inc({ protocol: 'lease', reason: `RECORD_${err.check.toUpperCase()}` })
      this.log.warn({ code: 'BAD_LEASE_RECORD', check: err.check, reason: err.detail }, 'ignored an invalid lease record in the table')
    }
    this.leaseRecords.set(text, lease)
    return lease
  }

  /** Who may write what in the table; installed in the admission layer for `sys.placement`. */
  rules (): EntryRules {
    return {
      counters: false,
      check: async (change, doc) => { await this.checkEntry(change, doc) }
    }
  }

  private async checkEntry (change: EntryChange, doc: ShardDoc): Promise<void> {
    const { entity } = change
    if (entity.startsWith('node.')) {
      const owner = entity.slice(5)
      const writers = [...change.adds.map((a) => a.replica), ...change.components.map((c) => c.replica)]
      if (writers.some((w) => w !== owner)) throw reject('NOT_OWNER', `${entity} is written by ${owner} alone`)
      if (change.removes.some((r) => r.replica !== owner)) throw reject('NOT_OWNER', `${entity} is removed by ${owner} alone`)
      for (const c of change.components) {
        if ((c.component !== 'd' && c.component !== 'att') || (c.value !== undefined && typeof c.value !== 'string')) throw reject('BAD_ENTRY', `${entity} holds d and att, as text`)
      }
      if (change.adds.length > 0 && doc.entity(entity) == null && doc.entityIds().length >= MAX_NODES) throw ignore('TABLE_FULL', `the table holds ${MAX_NODES} nodes`)
      return
    }
    if (entity.startsWith('lease.')) {
      const shard = entity.slice(6)
      if (!this.components.isWorldShard(shard)) throw ignore('UNKNOWN_SHARD', `${shard} is not a shard of this node's world`)
      if (change.removes.length > 0) throw reject('NOT_OWNER', `${entity} is never removed`)
      const now = Date.now()
      const written = new Map<string, VerifiedLease>()
      for (const c of change.components) {
        if (c.value === undefined) continue
        if (epochOf(c.component) == null || typeof c.value !== 'string') throw reject('BAD_ENTRY', `${entity} holds e<epoch>.<holder> lease records, as text`)
        const lease = await this.leaseRecord(c.value, now)
        if (lease == null) throw reject('BAD_LEASE', `${entity}/${c.component} holds a lease record that does not verify`)
        if (lease.shard !== shard || leaseComponent(lease.epoch, lease.holder) !== c.component) throw reject('BAD_LEASE', `${entity}/${c.component} holds the lease of ${lease.shard} epoch ${lease.epoch} held by ${lease.holder}`)
        if (lease.holder !== c.replica) throw reject('NOT_OWNER', `the lease of ${shard} epoch ${lease.epoch} is stored by its holder ${lease.holder}, not ${c.replica}`)
        if (lease.epoch > MAX_EPOCH) throw reject('BAD_LEASE', `epoch ${lease.epoch} of ${shard} is beyond any real history`)
        written.set(c.component, lease)
      }
      const live = Object.entries(doc.entity(entity)?.components ?? {}).filter(([component, value]) => value !== undefined && !change.components.some((c) => c.component === component && c.value === undefined)).length
      const added = [...written.values()].filter((lease) => doc.entity(entity)?.components[leaseComponent(lease.epoch, lease.holder)] === undefined).length
      if (added > 0 && live + added > MAX_LIVE_EPOCHS) throw ignore('TOO_MANY_EPOCHS', `${entity} holds ${live} epoch records already`)
      for (const c of change.components) {
        if (c.value !== undefined) continue
        const epoch = epochOf(c.component)
        if (epoch == null) throw reject('BAD_ENTRY', `${entity} holds e<epoch>.<holder> lease records`)
        if (!(await this.holdsNewer(doc, entity, written, c.replica, epoch, now))) throw reject('NOT_OWNER', `epoch ${epoch} of ${shard} is deleted only by the holder of a newer epoch`)
      }
      return
    }
    throw reject('UNKNOWN_ENTRY', `${PLACEMENT_SHARD} holds node.* and lease.* entries only, not ${entity}`)
  }

  /** Whether `writer` holds an epoch newer than `epoch` of the entry, in this patch or in the table. */
  private async holdsNewer (doc: ShardDoc, entity: string, written: Map<string, VerifiedLease>, writer: string, epoch: number, now: number): Promise<boolean> {
    for (const lease of written.values()) if (lease.epoch > epoch && lease.holder === writer) return true
    for (const [component, value] of Object.entries(doc.entity(entity)?.components ?? {})) {
      if (typeof value !== 'string' || (epochOf(component) ?? 0) <= epoch) continue
      const lease = await this.leaseRecord(value, now)
      if (lease?.holder === writer) return true
    }
    return false
  }
}
