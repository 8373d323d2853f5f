/**
 * Placement policy: a declarative rule file the operator can read, review and
 * test. Each rule matches shards (by layer, by shard id pattern, by home
 * region) and constrains who may host or replicate them. Every matching rule
 * applies; a candidate must pass all of them.
 *
 *   {
 *     "version": 1,
 *     "rules": [
 *       { "name": "eu-data-stays-in-eu", "match": { "homeRegions": ["DE", "FR"] }, "allowRegions": ["DE", "FR", "NL"] },
 *       { "name": "npc-needs-gpu", "match": { "layers": ["npc"] }, "require": ["gpu"] }
 *     ]
 *   }
 *
 * Shard patterns use `*` for any run of characters: `physics.*`, `*.0.*`.
 */
import { readFile } from 'node:fs/promises'
import { z } from 'zod'
import type { ShardInfo } from './world.ts'

const region = z.string().regex(/^[A-Z]{2}(?:-[A-Z0-9]{1,3})?$/, { error: 'expected a region code such as DE or US-CA' })

const ruleSchema = z.strictObject({
  name: z.string().min(1).max(128),
  match: z.strictObject({
    layers: z.array(z.string().min(1).max(24)).max(64).optional(),
    shards: z.array(z.string().min(1).max(64).regex(/^[a-z0-9._*-]+$/, { error: 'expected a shard pattern such as physics.*' })).max(256).optional(),
    homeRegions: z.array(region).max(256).optional()
  }).default({}),
  /** Hosts and replicas must be in one of these regions (data locality). A node with no region never qualifies. */
  allowRegions: z.array(region).max(256).optional(),
  /** Hosts and replicas must belong to one of these operators (libp2p key ids). */
  allowOperators: z.array(z.string().min(1).max(128)).max(256).optional(),
  /** These peers never host or replicate the matched shards. */
  denyPeers: z.array(z.string().min(1).max(128)).max(1024).optional(),
  /** Capability tags every host and replica of the matched shards must have, beyond the layer's own. */
  require: z.array(z.string().min(1).max(128)).max(16).optional()
})

export const policySchema = z.strictObject({
  version: z.literal(1),
  rules: z.array(ruleSchema).max(1024).default([])
})

export type PolicyFile = z.infer<typeof policySchema>
export type Rule = z.infer<typeof ruleSchema>

export class PolicyError extends Error {
  static override name = 'PolicyError'
  override name = 'PolicyError'
}

/** What the placement needs to know about a candidate to apply the policy. */
export interface PolicySubject {
  peerId: string
  region: string | null
  operator: string | null
  tags: ReadonlySet<string>
  /** False when federation lists trusted operators and this node's is not one of them. */
  trusted: boolean
}

interface CompiledRule extends Rule {
  patterns: RegExp[] | undefined
}

export class Policy {
  readonly rules: readonly CompiledRule[]

  constructor (file: PolicyFile = { version: 1, rules: [] }) {
    this.rules = file.rules.map((rule) => ({
      ...rule,
      patterns: rule.match.shards?.map((p) => new RegExp(`^${p.replace(/[.+?^${}()|[\]\\-]/g, '\\$&').replace(/\*/g, '.*')}$`))
    }))
  }

  static parse (raw: unknown, source = 'policy'): Policy {
    const parsed = policySchema.safeParse(raw)
    if (!parsed.success) {
      const issue = parsed.error.issues[0]
      throw new PolicyError(`${source}: ${issue?.path.map(String).join('.') ?? ''}: ${issue?.message ?? 'invalid'}`)
    }
    return new Policy(parsed.data)
  }

  static async load (path: string): Promise<Policy> {
    let text: string
    try {
      text = await readFile(path, 'utf8')
    } catch (err) {
      throw new PolicyError(`cannot read placement policy ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    let raw: unknown
    try {
      raw = JSON.parse(text)
    } catch (err) {
      throw new PolicyError(`${path} is not JSON: ${(err as Error).message}`)
    }
    return Policy.parse(raw, path)
  }

  /** Rules that apply to a shard. */
  rulesFor (shard: ShardInfo): CompiledRule[] {
    return this.rules.filter((rule) => {
      const { layers, homeRegions } = rule.match
      if (layers != null && !layers.includes(shard.layer.name)) return false
      if (homeRegions != null && (shard.homeRegion == null || !homeRegions.includes(shard.homeRegion))) return false
      if (rule.patterns != null && !rule.patterns.some((p) => p.test(shard.id))) return false
      return true
    })
  }

  /** Why `subject` may not host or replicate `shard` under `rules`, or null when it may. */
  static refusal (shard: ShardInfo, rules: readonly Rule[], subject: PolicySubject): string | null {
    if (!subject.trusted) return 'untrusted-operator'
    for (const tag of shard.layer.require) if (!subject.tags.has(tag)) return `missing-capability:${tag}`
    for (const rule of rules) {
      if (rule.denyPeers?.includes(subject.peerId) === true) return `denied-by:${rule.name}`
      if (rule.allowRegions != null && (subject.region == null || !rule.allowRegions.includes(subject.region))) return `region-not-allowed-by:${rule.name}`
      if (rule.allowOperators != null && (subject.operator == null || !rule.allowOperators.includes(subject.operator))) return `operator-not-allowed-by:${rule.name}`
      for (const tag of rule.require ?? []) if (!subject.tags.has(tag)) return `missing-capability:${tag}`
    }
    return null
  }
}
