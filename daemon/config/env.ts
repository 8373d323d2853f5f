/**
 * Environment variables for every config key, derived from the schema so the
 * two cannot drift: `connections.maxConnections` is
 * `METAGRID_CONNECTIONS_MAX_CONNECTIONS`. Lists are comma-separated.
 */
import type { z } from 'zod'

export const ENV_PREFIX = 'METAGRID_'

/** Environment variables that are not config keys but are read by the CLI. */
export const NON_CONFIG_ENV = new Set(['METAGRID_CONFIG'])

export type LeafKind = 'string' | 'number' | 'boolean' | 'list' | 'json'

export interface ConfigLeaf {
  path: string[]
  env: string
  kind: LeafKind
}

interface ZodDefLike { type: string, innerType?: z.ZodType, shape?: Record<string, z.ZodType>, element?: z.ZodType }

function def (schema: z.ZodType): ZodDefLike {
  return (schema as unknown as { _zod: { def: ZodDefLike } })._zod.def
}

const WRAPPERS = new Set(['optional', 'default', 'prefault', 'nullable', 'readonly'])

function unwrap (schema: z.ZodType): z.ZodType {
  let current = schema
  while (WRAPPERS.has(def(current).type) && def(current).innerType != null) {
    current = def(current).innerType as z.ZodType
  }
  return current
}

export function envName (path: string[]): string {
  return ENV_PREFIX + path.map((part) => part
    // Binary units are one word: memoryMiB is MEMORY_MIB, perGiBEgress is PER_GIB_EGRESS.
    .replace(/([KMGT])iB/g, (_, p: string) => `${p}ib`)
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .toUpperCase()).join('_')
}

/** Every leaf key of an object schema, with its environment variable and how to coerce a string into it. */
export function configLeaves (schema: z.ZodType, prefix: string[] = []): ConfigLeaf[] {
  const inner = unwrap(schema)
  const d = def(inner)
  if (d.type === 'object' && d.shape != null) {
    return Object.entries(d.shape).flatMap(([key, child]) => configLeaves(child, [...prefix, key]))
  }
  // A list of objects cannot be comma-separated: its variable holds JSON.
  const objectList = d.type === 'array' && d.element != null && def(unwrap(d.element)).type === 'object'
  const kind: LeafKind = objectList ? 'json' : d.type === 'array' ? 'list' : d.type === 'number' ? 'number' : d.type === 'boolean' ? 'boolean' : 'string'
  return [{ path: prefix, env: envName(prefix), kind }]
}

/**
 * Turns a string from the environment or the command line into the type the
 * schema wants. A string that does not look like the type is passed through
 * unchanged, so the schema reports it with the value the user typed.
 */
export function coerce (raw: string, kind: LeafKind): unknown {
  switch (kind) {
    case 'list':
      return raw.split(',').map((item) => item.trim()).filter((item) => item !== '')
    case 'json':
      try {
        return JSON.parse(raw)
      } catch {
        return raw
      }
    case 'number':
      return /^-?\d+(?:\.\d+)?$/.test(raw.trim()) ? Number(raw.trim()) : raw
    case 'boolean': {
      const lower = raw.trim().toLowerCase()
      if (['true', '1', 'yes'].includes(lower)) return true
      if (['false', '0', 'no'].includes(lower)) return false
      return raw
    }
    default:
      return raw
  }
}
