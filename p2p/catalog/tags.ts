/**
 * Capability tags: the words discovery searches by. Each is derived from the
 * signed descriptor (so a provider record cannot claim what the descriptor
 * does not say) or declared by the operator, and each maps to a CID under
 * which the node is a provider in the DHT.
 */
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import type { CapabilityDescriptor } from './descriptor.ts'

/** Every node provides this tag, so a query with no constraint still finds nodes. */
export const ANY_NODE_TAG = 'node'

/** Tags are lowercase words with `:` separating a kind from a value: `gpu:nvidia-h100`. */
export function normalizeTagValue (value: string): string {
  return value.trim().toLowerCase().replace(/[^a-z0-9._/-]+/g, '-').replace(/^-+|-+$/g, '')
}

export function tagsOf (descriptor: CapabilityDescriptor): string[] {
  const tags = new Set<string>([ANY_NODE_TAG, `arch:${normalizeTagValue(descriptor.cpu.arch)}`])
  if (descriptor.region != null) {
    tags.add(`region:${descriptor.region.toLowerCase()}`)
    // A node in DE-BY is also in DE.
    tags.add(`region:${descriptor.region.slice(0, 2).toLowerCase()}`)
  }
  for (const accelerator of descriptor.accelerators) {
    const kind = normalizeTagValue(accelerator.kind)
    tags.add(kind)
    tags.add(`${kind}:${normalizeTagValue(accelerator.model)}`)
  }
  for (const model of descriptor.models) tags.add(`model:${normalizeTagValue(model.name)}`)
  for (const tag of descriptor.tags) tags.add(tag)
  return [...tags].sort()
}

/** The DHT key a tag's providers are stored under. */
export async function tagCid (tag: string): Promise<CID> {
  const digest = await sha256.digest(new TextEncoder().encode(`metagrid/tag/v1/${tag}`))
  return CID.createV1(raw.code, digest)
}
