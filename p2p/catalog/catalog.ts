/**
 * Advertises this node in the DHT: its signed descriptor under a key derived
 * from its peer id, and a provider record for each capability tag. Both are
 * renewed when a third of the descriptor's lifetime has passed since it was
 * issued (so two attempts fit before it expires, however long the last one
 * took), and whenever the descriptor changes;
 * nothing is sent before the routing table has a peer (kad-dht holds queries
 * until then); on stop the node stops providing.
 */
import { buildDescriptor, type DescriptorInputs } from './build.ts'
import { signDescriptor, type CapabilityDescriptor } from './descriptor.ts'
import { descriptorKey } from './records.ts'
import { tagCid, tagsOf } from './tags.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PrivateKey } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'

export interface CatalogComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  /** Everything the descriptor is built from except the time, read fresh for each publication. */
  inputs: () => Omit<DescriptorInputs, 'now'>
  metrics: P2pMetrics | null
  logger: Logger
}

export interface CatalogOptions {
  ttlMs: number
  /** How often the node looks whether it must publish (routing table ready, descriptor changed, half-life passed). */
  checkEveryMs: number
}

/** One publication (put plus provides) may take this long, at most, before it is abandoned and retried. */
const MAX_PUBLISH_TIMEOUT_MS = 30_000

export class Catalog {
  private readonly components: CatalogComponents
  private readonly options: CatalogOptions
  private readonly log: Logger
  private timer: NodeJS.Timeout | undefined
  private publishing: Promise<void> | undefined
  private descriptor: CapabilityDescriptor | undefined
  private signed: Uint8Array | undefined
  /** issuedAt of the descriptor last published successfully. */
  private publishedIssuedAt = 0
  private publishedFingerprint = ''
  private provided: CID[] = []
  private readonly shutdown = new AbortController()

  constructor (components: CatalogComponents, options: CatalogOptions) {
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:catalog' })
  }

  /** The descriptor this node last built, and its signed bytes. */
  current (): { descriptor: CapabilityDescriptor, signed: Uint8Array } | undefined {
    return this.descriptor == null || this.signed == null ? undefined : { descriptor: this.descriptor, signed: this.signed }
  }

  async start (): Promise<void> {
    await this.refresh()
    this.timer = setInterval(() => { void this.tick() }, this.options.checkEveryMs)
    void this.tick()
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    this.shutdown.abort()
    await this.publishing?.catch(() => {})
    // Stop providing: drop our own provider entries so they are neither served nor reprovided.
    await Promise.all(this.provided.map(async (cid) => this.components.libp2p.services.dht.cancelReprovide(cid).catch(() => {})))
  }

  /** Rebuilds and re-signs the descriptor from the current inputs. */
  private async refresh (): Promise<void> {
    this.descriptor = buildDescriptor({ ...this.components.inputs(), now: Date.now() })
    this.signed = await signDescriptor(this.components.privateKey, this.descriptor)
  }

  /** What, if it changes, calls for a new publication (everything but the timestamps). */
  private fingerprint (): string {
    const { issuedAt: _issued, expiresAt: _expires, reliability: _reliability, ...rest } = buildDescriptor({ ...this.components.inputs(), now: 0 })
    return JSON.stringify(rest)
  }

  private routingTableSize (): number {
    return (this.components.libp2p.services.dht as unknown as { routingTable?: { size: number } }).routingTable?.size ?? 0
  }

  private async tick (): Promise<void> {
    if (this.publishing != null || this.shutdown.signal.aborted || this.routingTableSize() === 0) return
    const due = Date.now() - this.publishedIssuedAt >= this.options.ttlMs / 3
    if (!due && this.fingerprint() === this.publishedFingerprint) return
    this.publishing = this.publish().finally(() => { this.publishing = undefined })
    await this.publishing
  }

  /** Puts the descriptor and provides every tag. Failures are logged and retried at the next check. */
  async publish (): Promise<void> {
    const { libp2p, metrics } = this.components
    const fingerprint = this.fingerprint()
    await this.refresh()
    const descriptor = this.descriptor!
    // A publication that hangs is cut at a third of the lifetime, leaving time for the next before expiry.
    const signal = AbortSignal.any([AbortSignal.timeout(Math.min(MAX_PUBLISH_TIMEOUT_MS, this.options.ttlMs / 3)), this.shutdown.signal])
    try {
      await libp2p.contentRouting.put(descriptorKey(descriptor.peerId), this.signed!, { signal })
      const tags = tagsOf(descriptor)
      const cids = await Promise.all(tags.map(tagCid))
      await Promise.all(cids.map(async (cid) => libp2p.contentRouting.provide(cid, { signal })))
      const dropped = this.provided.filter((old) => !cids.some((cid) => cid.equals(old)))
      await Promise.all(dropped.map(async (cid) => libp2p.services.dht.cancelReprovide(cid).catch(() => {})))
      this.provided = cids
      this.publishedIssuedAt = descriptor.issuedAt
      this.publishedFingerprint = fingerprint
      metrics?.catalogPublished.inc({ result: 'ok' })
      this.log.debug({ tags, expiresAt: descriptor.expiresAt }, 'descriptor published')
    } catch (err) {
      metrics?.catalogPublished.inc({ result: 'failed' })
      if (!this.shutdown.signal.aborted) this.log.warn({ code: 'CATALOG_PUBLISH', err }, 'could not publish the capability descriptor; will retry')
    }
  }
}
