/**
 * Measures what this node runs and keeps a fresh signed attestation of it
 * (attest/attestation.ts): in the placement table `sys.placement`, where
 * every node reads it, and in the DHT under `/metagrid-att/<peer id>`, for
 * peers and clients outside the mesh. It is re-issued at half its lifetime.
 *
 * - Code digest: sha-256 over the installed sources and lockfile (path and
 *   bytes of each file, in path order), so two nodes running the same release
 *   report the same digest.
 * - Config digest: sha-256 over the canonical DAG-CBOR of the effective
 *   config, with file paths of secrets left out (their contents never enter).
 * - Quote: `attestation.quoteCommand`, if set, is run with the nonce (a digest
 *   of everything above) as its argument and must print
 *   `{ "kind": "tpm2" | "sev-snp" | …, "evidence": "<base64>" }`. Without it,
 *   or when it fails, the attestation says `kind: none` and why.
 */
import { createHash } from 'node:crypto'
import { execFile } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import { arch, platform, release } from 'node:os'
import { join, relative } from 'node:path'
import { promisify } from 'node:util'
import * as dagCbor from '@ipld/dag-cbor'
import { fromString } from 'uint8arrays/from-string'
import { signAttestation, type AttestationBody } from '../attest/attestation.ts'
import { PLACEMENT_SHARD } from '../p2p/constants.ts'
import type { Config } from './config/schema.ts'
import type { Logger } from './log/logger.ts'
import type { MetagridLibp2p } from '../p2p/libp2p.ts'
import type { Replication } from '../p2p/sync/replication.ts'
import type { PrivateKey } from '@libp2p/interface'

export const ATTESTATION_NAMESPACE = 'metagrid-att'
const ROOT = new URL('../', import.meta.url).pathname
const CODE_DIRS = ['daemon', 'p2p', 'storage', 'attest']
const CODE_FILES = ['package.json', 'package-lock.json']

export function attestationKey (peerId: string): Uint8Array {
  return fromString(`/${ATTESTATION_NAMESPACE}/${peerId}`)
}

const sha = (bytes: Uint8Array | string): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

/** sha-256 over the installed code: every source file under the code directories and the manifests, in path order. */
export async function codeDigest (root = ROOT): Promise<string> {
  const files: string[] = CODE_FILES.map((f) => join(root, f))
  for (const dir of CODE_DIRS) {
    for (const entry of await readdir(join(root, dir), { recursive: true, withFileTypes: true })) {
      if (entry.isFile() && /\.(ts|html|yml|json)$/.test(entry.name)) files.push(join(entry.parentPath, entry.name))
    }
  }
  const hash = createHash('sha256')
  for (const file of files.sort()) {
    const bytes = await readFile(file).catch(() => null)
    if (bytes == null) continue
    hash.update(relative(root, file)).update('\u0000').update(String(bytes.byteLength)).update('\u0000').update(bytes)
  }
  return `sha256:${hash.digest('hex')}`
}

/** Config keys whose values name secrets; their paths are left out of the digest, their contents never read. */
const SECRET_KEYS = new Set(['privateNetworkKeyFile', 'certificateFile', 'quoteCommand'])

export function configDigest (config: Config): string {
  const strip = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(strip)
    if (value == null || typeof value !== 'object') return value === undefined ? null : value
    return Object.fromEntries(Object.entries(value).filter(([k, v]) => !SECRET_KEYS.has(k) && v !== undefined).map(([k, v]) => [k, strip(v)]))
  }
  return sha(dagCbor.encode(strip(config)))
}

export interface AttesterComponents {
  libp2p: MetagridLibp2p
  privateKey: PrivateKey
  replication: Replication
  config: Config
  hardware: { cores: number, memoryMiB: number, accelerators: string[] }
  version: string
  /** This node's membership certificate from its operator, if it has one. */
  certificate: Uint8Array | null
  logger: Logger
}

export class Attester {
  private readonly components: AttesterComponents
  private readonly log: Logger
  private readonly validityMs: number
  private timer: NodeJS.Timeout | undefined
  private issuedAt = 0
  private current: Uint8Array | undefined
  private body: AttestationBody | undefined
  private inDht = false
  private publishing = false

  constructor (components: AttesterComponents) {
    this.components = components
    this.validityMs = components.config.attestation.validityMs
    this.log = components.logger.child({ component: 'metagrid:attestation' })
  }

  /** The last signed attestation. */
  signed (): Uint8Array | undefined {
    return this.current
  }

  async start (): Promise<void> {
    await this.components.replication.ensure(PLACEMENT_SHARD)
    this.body = await this.measure()
    await this.issue()
    this.timer = setInterval(() => { void this.tick() }, Math.max(1_000, Math.min(60_000, this.validityMs / 10)))
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
  }

  private async measure (): Promise<AttestationBody> {
    const { config, hardware, version } = this.components
    const partial = {
      software: { name: 'metagrid', version, codeDigest: await codeDigest() },
      configDigest: configDigest(config),
      runtime: { node: process.version, os: `${platform()} ${release()}`, arch: arch() },
      hardware: { cores: Math.max(1, hardware.cores), memoryMiB: hardware.memoryMiB, accelerators: hardware.accelerators.slice(0, 16) }
    }
    const nonce = sha(dagCbor.encode(partial))
    return { ...partial, quote: await this.quote(nonce), membership: this.components.certificate }
  }

  private async quote (nonce: string): Promise<AttestationBody['quote']> {
    const command = this.components.config.attestation.quoteCommand
    if (command == null) return { kind: 'none', reason: 'software-only: no hardware quote hook is configured' }
    try {
      const { stdout } = await promisify(execFile)(command, [nonce], { timeout: 30_000, maxBuffer: 64 * 1024 })
      const parsed = JSON.parse(stdout) as { kind?: unknown, evidence?: unknown }
      if (typeof parsed.kind !== 'string' || typeof parsed.evidence !== 'string' || parsed.kind === 'none') throw new Error('expected {"kind": "...", "evidence": "<base64>"}')
      return { kind: parsed.kind.slice(0, 32), evidence: parsed.evidence, nonce }
    } catch (err) {
      this.log.warn({ code: 'QUOTE_FAILED', command, err: (err as Error).message }, 'the hardware quote hook failed; attesting as software-only')
      return { kind: 'none', reason: `software-only: the quote hook failed (${(err as Error).message.slice(0, 160)})` }
    }
  }

  private async tick (): Promise<void> {
    if (Date.now() - this.issuedAt >= this.validityMs / 2) await this.issue()
    else if (!this.inDht) this.publish()
  }

  /** Puts the current attestation in the DHT; a node alone (no routing table yet) tries again next tick. */
  private publish (): void {
    const { libp2p } = this.components
    const signed = this.current
    if (signed == null || this.publishing) return
    this.publishing = true
    libp2p.contentRouting.put(attestationKey(libp2p.peerId.toString()), signed, { signal: AbortSignal.timeout(30_000) })
      .then(() => { this.inDht = this.current === signed })
      .catch((err: unknown) => { this.log.debug({ code: 'ATTESTATION_PUBLISH', err }, 'could not put the attestation in the DHT yet') })
      .finally(() => { this.publishing = false })
  }

  private async issue (): Promise<void> {
    const { privateKey, libp2p, replication } = this.components
    const now = Date.now()
    this.current = await signAttestation(privateKey, libp2p.peerId.toString(), this.body!, now, this.validityMs)
    this.issuedAt = now
    const store = replication.shard(PLACEMENT_SHARD)
    store.doc.setComponent(`node.${libp2p.peerId.toString()}`, 'att', Buffer.from(this.current).toString('base64'))
    await store.commit()
    // The DHT copy is for peers and clients outside the mesh.
    this.inDht = false
    this.publish()
  }
}
