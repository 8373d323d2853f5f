/**
 * When a planned move is worth it. A host keeps a shard at least `minHoldMs`;
 * after that the shard moves when
 * - the host is no longer eligible (policy, capabilities), or
 * - the host carries more than the load bound, or
 * - the better node is in the same score bucket and wins on rendezvous (a
 *   stable tie-break: this is how joins and leaves move ~1/N shards), or
 * - the better node's score beats the host's by at least `minGain`.
 * A node in a higher bucket by less than `minGain` does not get the shard:
 * inputs that wobble across a bucket edge do not move shards back and forth.
 */
export interface MoveInputs {
  /** The host's row for this shard (refusal, score, bucket, rendezvous weight). */
  host: { refusal: string | null, score: number, bucket: number, weight: number } | undefined
  target: { refusal: string | null, score: number, bucket: number, weight: number } | undefined
  heldMs: number
  /** The host holds more shards than the load bound allows. */
  overloaded: boolean
  minGain: number
  minHoldMs: number
}

export function shouldMove (inputs: MoveInputs): boolean {
  const { host, target } = inputs
  if (inputs.heldMs < inputs.minHoldMs) return false
  if (host == null || host.refusal != null) return target != null && target.refusal == null
  if (target == null || target.refusal != null) return false
  if (inputs.overloaded) return true
  if (target.bucket === host.bucket) return target.weight > host.weight
  return target.score - host.score >= inputs.minGain
}
