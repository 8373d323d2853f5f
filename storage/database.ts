/**
 * The node's one LevelDB handle. Each concern gets its own sublevel (key
 * prefix) of this handle rather than its own database, so that a write
 * touching several concerns can be one atomic batch, and so there is one
 * LOCK file that keeps a second daemon away from the same data directory.
 */
import { join } from 'node:path'
import { Level } from 'level'
import type { AbstractSublevel } from 'abstract-level'

export class DataDirLockedError extends Error {
  static override name = 'DataDirLockedError'
  override name = 'DataDirLockedError'
}

export class StorageOpenError extends Error {
  static override name = 'StorageOpenError'
  override name = 'StorageOpenError'
}

export type RootLevel = Level<string, Uint8Array>
export type Sublevel = AbstractSublevel<RootLevel, string | Uint8Array | Buffer, string, Uint8Array>

/** Sublevel names, one per concern; listed here so two concerns never share a prefix by accident. */
export const SUBLEVELS = {
  /** libp2p's datastore: DHT records and provider records (the peer store lives in memory). */
  libp2p: 'libp2p',
  /** The node's own bookkeeping: uptime sessions, the peers to dial again after a restart. */
  node: 'node',
  /** Shard state: a snapshot and a log of deltas per shard. */
  crdt: 'crdt',
  /** Lease votes: the highest epoch this node granted per shard, and to whom. */
  placement: 'placement'
} as const

export type SublevelName = typeof SUBLEVELS[keyof typeof SUBLEVELS]

export class Database {
  readonly path: string
  readonly root: RootLevel

  private constructor (path: string, root: RootLevel) {
    this.path = path
    this.root = root
  }

  static async open (dataDir: string): Promise<Database> {
    const path = join(dataDir, 'db')
    const root = new Level<string, Uint8Array>(path, { valueEncoding: 'view' })
    try {
      await root.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string, message?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') {
        throw new DataDirLockedError(`data directory ${dataDir} is in use by another process (LevelDB lock held)`, { cause: err })
      }
      throw new StorageOpenError(`cannot open database ${path}: ${cause?.message ?? (err as Error).message}`, { cause: err })
    }
    return new Database(path, root)
  }

  sublevel (name: SublevelName): Sublevel {
    return this.root.sublevel<string, Uint8Array>(name, { keyEncoding: 'utf8', valueEncoding: 'view' })
  }

  async close (): Promise<void> {
    await this.root.close()
  }
}
