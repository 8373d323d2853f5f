/**
 * Builds the effective config from four layers, each overriding the one
 * before: embedded defaults < config file < environment < flags. A list from a
 * higher layer replaces the list below it; it is not appended.
 *
 * Any problem is a ConfigError whose message is one line naming the key, the
 * value, where the value came from, and what was expected.
 */
import { readFile } from 'node:fs/promises'
import { dirname, isAbsolute, resolve } from 'node:path'
import { configSchema, defaultConfig, type Config } from './schema.ts'
import { coerce, configLeaves, ENV_PREFIX, NON_CONFIG_ENV, type ConfigLeaf } from './env.ts'
import type { z } from 'zod'

export class ConfigError extends Error {
  static override name = 'ConfigError'
  override name = 'ConfigError'
}

type Layer = Record<string, unknown>

export interface ConfigSources {
  /** Path of a JSON config file, if any. */
  file?: string
  env: NodeJS.ProcessEnv
  /** Values from command-line flags, keyed by config path (`dataDir`), with the flag's name for messages. */
  flags?: Array<{ path: string[], value: unknown, flag: string }>
  cwd?: string
}

export interface LoadedConfig {
  config: Config
  /** For each key that was set, where its value came from (`file ./x.json`, `env METAGRID_API`, `flag --api`, `default`). */
  sources: Map<string, string>
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function setPath (target: Layer, path: string[], value: unknown): void {
  let node = target
  for (const key of path.slice(0, -1)) {
    if (!isPlainObject(node[key])) node[key] = {}
    node = node[key] as Layer
  }
  node[path[path.length - 1] as string] = value
}

/** Merges `over` into `base`; objects merge key by key, everything else (lists too) replaces. */
function merge (base: Layer, over: Layer, label: string, sources: Map<string, string>, prefix: string[] = []): Layer {
  const out: Layer = { ...base }
  for (const [key, value] of Object.entries(over)) {
    const path = [...prefix, key]
    if (isPlainObject(value) && isPlainObject(out[key])) {
      out[key] = merge(out[key] as Layer, value, label, sources, path)
    } else {
      out[key] = value
      recordSources(value, path, label, sources)
    }
  }
  return out
}

function recordSources (value: unknown, path: string[], label: string, sources: Map<string, string>): void {
  if (isPlainObject(value)) {
    for (const [key, child] of Object.entries(value)) recordSources(child, [...path, key], label, sources)
  }
  sources.set(path.join('.'), label)
}

async function readConfigFile (file: string, cwd: string): Promise<Layer> {
  const path = resolve(cwd, file)
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`config error: cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`config error: config file ${path} is not valid JSON: ${(err as Error).message}`)
  }
  if (!isPlainObject(parsed)) {
    throw new ConfigError(`config error: config file ${path} must hold a JSON object, found ${Array.isArray(parsed) ? 'an array' : typeof parsed}`)
  }
  // A relative data directory in a file means relative to that file, not to wherever the daemon was started.
  if (typeof parsed.dataDir === 'string' && !isAbsolute(parsed.dataDir)) {
    parsed.dataDir = resolve(dirname(path), parsed.dataDir)
  }
  return parsed
}

interface Assignment { path: string[], value: unknown, label: string }

/** One assignment per `METAGRID_*` variable; an unknown one is a typo and an error, not something to ignore. */
function envAssignments (env: NodeJS.ProcessEnv, leaves: ConfigLeaf[]): Assignment[] {
  const byName = new Map(leaves.map((leaf) => [leaf.env, leaf]))
  const out: Assignment[] = []
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || NON_CONFIG_ENV.has(name) || raw == null) continue
    const leaf = byName.get(name)
    if (leaf == null) {
      throw new ConfigError(`config error: unknown environment variable ${name}; expected one of: ${[...byName.keys(), ...NON_CONFIG_ENV].join(', ')}`)
    }
    out.push({ path: leaf.path, value: coerce(raw, leaf.kind), label: `env ${name}` })
  }
  return out
}

function show (value: unknown): string {
  const text = JSON.stringify(value) ?? String(value)
  return text.length > 120 ? `${text.slice(0, 117)}...` : text
}

function getPath (root: unknown, path: PropertyKey[]): unknown {
  let node = root
  for (const key of path) {
    if (node == null || typeof node !== 'object') return undefined
    node = (node as Record<PropertyKey, unknown>)[key]
  }
  return node
}

function sourceOf (sources: Map<string, string>, path: PropertyKey[]): string {
  for (let length = path.length; length > 0; length--) {
    const label = sources.get(path.slice(0, length).map(String).join('.'))
    if (label != null) return label
  }
  return 'default'
}

function describeIssue (issue: z.core.$ZodIssue, merged: unknown, sources: Map<string, string>, leaves: ConfigLeaf[]): string {
  if (issue.code === 'unrecognized_keys') {
    const key = [...issue.path, issue.keys[0] as string].map(String).join('.')
    const depth = issue.path.length
    const known = new Set(leaves
      .filter((leaf) => issue.path.every((part, i) => leaf.path[i] === part))
      .map((leaf) => leaf.path[depth]))
    return `config error: unknown key ${show(key)} (from ${sourceOf(sources, [...issue.path, issue.keys[0] as string])}); expected one of: ${[...known].join(', ')}`
  }
  const key = issue.path.map(String).join('.')
  const value = getPath(merged, issue.path)
  return `config error: ${key} = ${show(value)} (from ${sourceOf(sources, issue.path)}): ${issue.message}`
}

/** Builds and validates the effective config; throws ConfigError with a one-line message. */
export async function loadConfig (input: ConfigSources): Promise<LoadedConfig> {
  const cwd = input.cwd ?? process.cwd()
  const leaves = configLeaves(configSchema)
  const sources = new Map<string, string>()
  let merged: Layer = defaultConfig(input.env) as Layer

  const file = input.file ?? input.env.METAGRID_CONFIG
  if (file != null && file !== '') {
    merged = merge(merged, await readConfigFile(file, cwd), `file ${resolve(cwd, file)}`, sources)
  }
  const flags: Assignment[] = (input.flags ?? []).map((flag) => ({ path: flag.path, value: flag.value, label: `flag --${flag.flag}` }))
  for (const { path, value, label } of [...envAssignments(input.env, leaves), ...flags]) {
    const layer: Layer = {}
    setPath(layer, path, value)
    merged = merge(merged, layer, label, sources)
  }

  if (typeof merged.dataDir === 'string' && merged.dataDir !== '') merged.dataDir = resolve(cwd, merged.dataDir)

  const result = configSchema.safeParse(merged)
  if (!result.success) {
    const [first, ...rest] = result.error.issues
    const line = describeIssue(first as z.core.$ZodIssue, merged, sources, leaves)
    throw new ConfigError(rest.length > 0 ? `${line} (and ${rest.length} more problem${rest.length > 1 ? 's' : ''})` : line)
  }
  return { config: result.data, sources }
}
