/**
 * Per-entry ownership rules for system shards, which every node replicates
 * and anyone may write to: each entry has an owner (the node a descriptor
 * describes, the holder of a lease record, nobody for an append-only
 * record), and a rule set says who may add, change or remove which entry.
 * The parts that own a system shard (placement, provenance, revocations)
 * install their rules; the admission layer runs them on every path.
 */
import type { Patch, ShardDoc } from '../../storage/crdt/shard-doc.ts'

/** What one entity receives in one patch, grouped so a rule sees it whole. */
export interface EntryChange {
  entity: string
  /** Add-dots of the entity set (the writer is `replica`). */
  adds: Array<{ replica: string, seq: number }>
  /** Removed add-dots (delta only). */
  removes: Array<{ replica: string, seq: number }>
  /** Component writes; `value` undefined is a deletion (a tombstone). */
  components: Array<{ component: string, value: unknown, replica: string, seq: number }>
}

export interface EntryRules {
  /** Checks one entity's changes; throws a Refusal (admission/refusal.ts) to refuse the whole patch. */
  check: (change: EntryChange, doc: ShardDoc, kind: Patch['kind']) => Promise<void> | void
  /** Counters are not part of any system shard; a patch with counters is refused. */
  counters: boolean
}

/** A patch's changes grouped by entity, in first-seen order. */
export function changesOf (patch: Patch): EntryChange[] {
  const byEntity = new Map<string, EntryChange>()
  const change = (entity: string): EntryChange => {
    let c = byEntity.get(entity)
    if (c == null) {
      c = { entity, adds: [], removes: [], components: [] }
      byEntity.set(entity, c)
    }
    return c
  }
  for (const add of patch.adds) change(add.entity).adds.push({ replica: add.replica, seq: add.seq })
  for (const remove of patch.removes) change(remove.entity).removes.push({ replica: remove.replica, seq: remove.seq })
  for (const entry of patch.components) change(entry.entity).components.push({ component: entry.component, value: entry.value, replica: entry.replica, seq: entry.seq })
  return [...byEntity.values()]
}
