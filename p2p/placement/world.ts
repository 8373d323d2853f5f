/**
 * The world's partition into spatial shards: a fixed grid of square cells
 * over the world's bounds, and one shard per (layer, cell). A layer is a
 * logical slice of the same cell with its own consistency model:
 *
 * - `host`: host-authoritative (physics). Only the lease holder accepts
 *   writes; replicas take its deltas and refuse those of an older epoch.
 * - `crdt`: multi-writer (presence, content). Every replica accepts writes
 *   and the CRDT merges them; the host is where clients connect.
 *
 * Shard ids are `<layer>.<cx>.<cy>`, valid shard ids for the store and the
 * gossip topic names. A position outside the bounds has no shard.
 */
import { z } from 'zod'

export const layerName = z.string().regex(/^[a-z][a-z0-9-]{0,23}$/, { error: 'expected a layer name such as physics (lowercase, at most 24)' })

export const layerSchema = z.strictObject({
  name: layerName,
  consistency: z.enum(['host', 'crdt']),
  /** Capability tags a host of this layer must have (for example `gpu` for NPC inference). */
  require: z.array(z.string().min(1).max(128)).max(16).default([]),
  /** Decorative layers (effects, ambient props, analytics) are shed first when an SLO burns its budget. */
  decorative: z.boolean().default(false),
  /**
   * When a write is answered: `majority` once a majority of the shard's voters hold it durably (the host's crash loses
   * nothing answered), `local` once this node does. Defaults: majority for host layers, local for crdt layers.
   */
  writeConcern: z.enum(['majority', 'local']).optional(),
  /** World sessions: how many times a second clients get this layer's changes. */
  tickHz: z.int().min(1).max(60).default(20),
  /** World sessions: positions are rounded to this step before they are compared or sent (0: exact). */
  quantum: z.number().min(0).max(1_000_000).default(0)
})

/** A layer's write concern, its default filled in. */
export function writeConcernOf (layer: Layer): 'majority' | 'local' {
  return layer.writeConcern ?? (layer.consistency === 'host' ? 'majority' : 'local')
}

export const regionAreaSchema = z.strictObject({
  /** The region whose users play in this area; shards inside it are placed near that region's nodes. */
  region: z.string().regex(/^[A-Z]{2}(?:-[A-Z0-9]{1,3})?$/),
  minX: z.number(),
  minY: z.number(),
  maxX: z.number(),
  maxY: z.number()
})

export const worldSchema = z.strictObject({
  minX: z.number().default(0),
  minY: z.number().default(0),
  maxX: z.number().default(1024),
  maxY: z.number().default(1024),
  /** Side of a square cell, in world units. */
  cellSize: z.number().positive().default(256),
  layers: z.array(layerSchema).min(1).max(16).default([
    { name: 'physics', consistency: 'host', require: [], decorative: false, tickHz: 20, quantum: 0 },
    { name: 'presence', consistency: 'crdt', require: [], decorative: false, tickHz: 20, quantum: 0 }
  ]),
  /** Areas of the world whose players are in one region (first match wins); elsewhere a shard has no home region. */
  regions: z.array(regionAreaSchema).max(1024).default([])
}).refine((w) => w.maxX > w.minX && w.maxY > w.minY, { error: 'world bounds are empty (max must exceed min)' })
  .refine((w) => Math.ceil((w.maxX - w.minX) / w.cellSize) * Math.ceil((w.maxY - w.minY) / w.cellSize) * w.layers.length <= 100_000, { error: 'world has more than 100000 shards; raise cellSize' })
  .refine((w) => new Set(w.layers.map((l) => l.name)).size === w.layers.length, { error: 'layer names must be unique' })
  .refine((w) => !w.layers.some((l) => l.name === 'sys'), { error: 'layer name sys is reserved for system shards' })

export type WorldConfig = z.infer<typeof worldSchema>
export type Layer = z.infer<typeof layerSchema>

export interface ShardInfo {
  id: string
  layer: Layer
  cx: number
  cy: number
  /** Region of the players of this cell, if the world says. */
  homeRegion: string | null
}

/**
 * The layer of system shards placement elects a host for like any world
 * shard, though they hold no part of the world (the provenance ledger's
 * registrar). Host-authoritative: one writer, fenced by epoch.
 */
export const SYSTEM_LAYER: Layer = { name: 'sys', consistency: 'host', require: [], decorative: false, writeConcern: 'local', tickHz: 1, quantum: 0 }

export class World {
  readonly config: WorldConfig
  readonly columns: number
  readonly rows: number
  private readonly layers: Map<string, Layer>
  private readonly shards = new Map<string, ShardInfo>()

  /** `systemShards` are placed (host, replicas, leases) beside the world's own shards, on SYSTEM_LAYER. */
  constructor (config: WorldConfig, systemShards: readonly string[] = []) {
    this.config = config
    this.columns = Math.ceil((config.maxX - config.minX) / config.cellSize)
    this.rows = Math.ceil((config.maxY - config.minY) / config.cellSize)
    this.layers = new Map(config.layers.map((layer) => [layer.name, layer]))
    for (const layer of config.layers) {
      for (let cy = 0; cy < this.rows; cy++) {
        for (let cx = 0; cx < this.columns; cx++) {
          const id = `${layer.name}.${cx}.${cy}`
          this.shards.set(id, { id, layer, cx, cy, homeRegion: this.regionAt(config.minX + (cx + 0.5) * config.cellSize, config.minY + (cy + 0.5) * config.cellSize) })
        }
      }
    }
    for (const id of systemShards) this.shards.set(id, { id, layer: SYSTEM_LAYER, cx: -1, cy: -1, homeRegion: null })
  }

  layer (name: string): Layer | undefined {
    return this.layers.get(name)
  }

  /** The shard of a position on a layer, or undefined outside the world or for an unknown layer. */
  locate (x: number, y: number, layerName: string): ShardInfo | undefined {
    const { minX, minY, maxX, maxY, cellSize } = this.config
    if (!Number.isFinite(x) || !Number.isFinite(y) || x < minX || y < minY || x >= maxX || y >= maxY) return undefined
    return this.shards.get(`${layerName}.${Math.floor((x - minX) / cellSize)}.${Math.floor((y - minY) / cellSize)}`)
  }

  shard (id: string): ShardInfo | undefined {
    return this.shards.get(id)
  }

  all (): ShardInfo[] {
    return [...this.shards.values()]
  }

  private regionAt (x: number, y: number): string | null {
    for (const area of this.config.regions) {
      if (x >= area.minX && x < area.maxX && y >= area.minY && y < area.maxY) return area.region
    }
    return null
  }
}
