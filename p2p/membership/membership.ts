/**
 * Who is alive, as this node sees it: the SWIM and Lifeguard state machine
 * (swim.ts) driven over libp2p.
 *
 * - Probes are libp2p pings (their RTT feeds the coordinate) and indirect
 *   probes through other members (probe-protocol.ts).
 * - Claims (alive, suspect, dead, with the subject's incarnation) travel on
 *   the gossipsub topic `/metagrid/members/1`, signed by their origin; every
 *   claim passes the topic's validator, which hands it to the state machine
 *   and refuses what it finds implausible.
 * - A closed connection triggers a probe of that peer at once; signed load
 *   reports introduce members and let a member that missed a claim about
 *   itself hear it again.
 * - The event loop's own stalls (loop-monitor.ts) feed the local health.
 *
 * Events (`member:alive`, `member:suspect`, `member:dead`, `member:forgotten`)
 * carry the peer id and the reason, for placement and the API.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromMultihash, peerIdFromString } from '@libp2p/peer-id'
import { TypedEventEmitter } from 'main-event'
import * as Digest from 'multiformats/hashes/digest'
import { MEMBERS_TOPIC } from '../constants.ts'
import { reject, ignore } from '../admission/refusal.ts'
import { topicValidator } from '../gossip/validation.ts'
import { Swim, type Claim, type ClaimKind, type MemberState, type MemberView, type SwimAction, type SwimOptions } from './swim.ts'
import type { LoopMonitor } from '../health/loop-monitor.ts'
import type { Prober } from './prober.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { PeerId } from '@libp2p/interface'
import { decodeWire } from '../wire-error.ts'

export type { MemberState } from './swim.ts'

export type Member = MemberView

export interface MemberEvent {
  peerId: string
  previous: MemberState | null
  reason: string
}

export interface MembershipEvents {
  'member:alive': CustomEvent<MemberEvent>
  'member:suspect': CustomEvent<MemberEvent>
  'member:dead': CustomEvent<MemberEvent>
  'member:forgotten': CustomEvent<MemberEvent>
}

export type MembershipOptions = Pick<SwimOptions, 'probeIntervalMs' | 'probeTimeoutMs' | 'indirect' | 'suspicionMult' | 'suspicionMaxMult' | 'maxHealth' | 'forgetAfterMs'>

export interface MembershipComponents {
  libp2p: MetagridLibp2p
  prober: Prober
  loop: LoopMonitor
  now: () => number
  metrics: P2pMetrics | null
  logger: Logger
}

/** A claim is a few dozen bytes; anything longer is refused unread. */
const MAX_CLAIM_BYTES = 256
/** Claims one origin may publish per second (a refutation storm is a few), and in a burst. */
const CLAIMS_PER_S = 20
const CLAIM_BURST = 40
const KIND_CODES: Record<ClaimKind, string> = { alive: 'a', suspect: 's', dead: 'd' }
const CODE_KINDS: Record<string, ClaimKind> = { a: 'alive', s: 'suspect', d: 'dead' }

export function encodeClaim (claim: Claim): Uint8Array {
  return dagCbor.encode({ k: KIND_CODES[claim.kind], p: peerIdFromString(claim.subject).toMultihash().bytes, i: claim.incarnation })
}

/** Decodes a claim; throws a Refusal (reject) on anything malformed. */
export function decodeClaim (bytes: Uint8Array): Claim {
  if (bytes.byteLength > MAX_CLAIM_BYTES) throw reject('TOO_LARGE', `claim of ${bytes.byteLength} bytes`)
  const value = decodeWire(bytes, () => reject('MALFORMED', 'claim is not DAG-CBOR'))
  const { k, p, i, ...rest } = (value ?? {}) as Record<string, unknown>
  const kind = typeof k === 'string' ? CODE_KINDS[k] : undefined
  if (typeof value !== 'object' || Object.keys(rest).length > 0 || kind == null || !(p instanceof Uint8Array) || !Number.isSafeInteger(i) || (i as number) < 0) {
    throw reject('MALFORMED', 'claim fields missing or mistyped')
  }
  let subject: string
  try {
    subject = peerIdFromMultihash(Digest.decode(p)).toString()
  } catch {
    throw reject('BAD_PEER_ID', 'claim subject is not a peer id')
  }
  return { kind, subject, incarnation: i as number }
}

interface Bucket { tokens: number, at: number }

export class Membership extends TypedEventEmitter<MembershipEvents> {
  private readonly components: MembershipComponents
  private readonly log: Logger
  private readonly swim: Swim
  private readonly buckets = new Map<string, Bucket>()
  private readonly maxMembers: number
  private timer: NodeJS.Timeout | undefined
  private running = false

  constructor (components: MembershipComponents, options: MembershipOptions) {
    super()
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:membership' })
    // Incarnations start at the wall clock, so a restarted node outranks what it said before without storing anything.
    this.swim = new Swim(components.libp2p.peerId.toString(), components.now(), options, Math.random, (peer) => components.prober.expectedRtt(peer))
    this.maxMembers = 10_000
  }

  private readonly onDisconnect = (event: CustomEvent<PeerId>): void => {
    this.swim.disconnected(event.detail.toString(), this.components.now())
    this.pump()
  }

  private readonly onStall = (event: CustomEvent<{ ms: number, endedAt: number }>): void => {
    this.swim.stalled(event.detail.endedAt, event.detail.ms)
    this.components.metrics?.localHealth.set(this.swim.localHealth)
    this.pump()
  }

  start (): void {
    const { libp2p, metrics } = this.components
    const pubsub = libp2p.services.pubsub
    pubsub.topicValidators.set(MEMBERS_TOPIC, topicValidator({
      topicLabel: 'members',
      validate: (message) => {
        const from = message.from.toString()
        if (!this.allow(from)) throw ignore('RATE_LIMITED', 'too many claims from this origin')
        const claim = decodeClaim(message.data)
        const verdict = this.swim.claim(from, claim, this.components.now())
        this.pump()
        if (verdict === 'implausible') throw reject('IMPLAUSIBLE', `${claim.kind} claim about ${claim.subject} at incarnation ${claim.incarnation}`)
        if (verdict !== 'applied') throw ignore(verdict.toUpperCase(), `${claim.kind} claim not applied: ${verdict}`)
        return claim
      },
      onAccept: () => {},
      metrics,
      logger: this.log
    }))
    pubsub.subscribe(MEMBERS_TOPIC)
    libp2p.addEventListener('peer:disconnect', this.onDisconnect)
    this.components.loop.addEventListener('stall', this.onStall as never)
    this.components.loop.start()
    this.running = true
    this.pump()
  }

  stop (): void {
    this.running = false
    clearTimeout(this.timer)
    this.timer = undefined
    const { libp2p } = this.components
    libp2p.removeEventListener('peer:disconnect', this.onDisconnect)
    this.components.loop.removeEventListener('stall', this.onStall as never)
    libp2p.services.pubsub.unsubscribe(MEMBERS_TOPIC)
    libp2p.services.pubsub.topicValidators.delete(MEMBERS_TOPIC)
  }

  /** Fresh evidence that `peerId` runs (a valid signed load report). */
  heard (peerId: string): void {
    this.swim.heard(peerId, this.components.now())
    this.pump()
  }

  get (peerId: string): Member | undefined {
    return this.swim.get(peerId)
  }

  list (): Member[] {
    return this.swim.list()
  }

  /** Members in the given states, for choosing whom to probe or ask. */
  peers (...states: MemberState[]): string[] {
    return this.swim.peers(...states)
  }

  /** Lifeguard's local health score (0 healthy, up to the configured ceiling). */
  get localHealth (): number {
    return this.swim.localHealth
  }

  get incarnation (): number {
    return this.swim.incarnation
  }

  /** Runs the state machine's timers now, performs what it asks, and sets the timer for its next wakeup. */
  private pump (): void {
    if (!this.running) return
    const now = this.components.now()
    this.swim.tick(now)
    for (const action of this.swim.drain()) this.perform(action)
    clearTimeout(this.timer)
    const wait = Math.max(5, this.swim.nextWakeup(now) - now)
    this.timer = setTimeout(() => { this.pump() }, wait)
  }

  private perform (action: SwimAction): void {
    const { prober, metrics } = this.components
    switch (action.t) {
      case 'probe':
        void prober.probe(action.peer, action.timeoutMs).then((ok) => {
          this.components.loop.check()
          this.swim.probeDone(action.id, { ok }, this.components.now())
          this.pump()
        })
        break
      case 'probe-indirect':
        void prober.indirect(action.peer, action.helpers, action.timeoutMs).then((result) => {
          this.components.loop.check()
          this.swim.indirectDone(action.id, result, this.components.now())
          this.pump()
        })
        break
      case 'broadcast':
        metrics?.memberClaims.inc({ kind: action.claim.kind })
        void this.components.libp2p.services.pubsub.publish(MEMBERS_TOPIC, encodeClaim(action.claim)).catch((err) => {
          // No peer subscribed yet (a lone node): nobody to tell.
          this.log.debug({ code: 'CLAIM_PUBLISH', err, claim: action.claim.kind }, 'membership claim not published')
        })
        break
      case 'changed': {
        metrics?.memberTransitions.inc({ to: action.state })
        const level = action.state === 'dead' ? 'warn' : action.state === 'suspect' ? 'info' : action.previous == null ? 'debug' : 'info'
        this.log[level]({ peer: action.peer, previous: action.previous, state: action.state, reason: action.reason }, `member ${action.state}`)
        this.safeDispatchEvent(`member:${action.state}`, { detail: { peerId: action.peer, previous: action.previous, reason: action.reason } })
        this.updateGauges()
        break
      }
      case 'forgotten':
        this.buckets.delete(action.peer)
        this.safeDispatchEvent('member:forgotten', { detail: { peerId: action.peer, previous: 'dead', reason: 'dead too long' } })
        this.updateGauges()
        break
    }
  }

  /** Token bucket per claim origin (bounded: cleared when it would outgrow the member limit). */
  private allow (origin: string): boolean {
    const now = this.components.now()
    let bucket = this.buckets.get(origin)
    if (bucket == null) {
      if (this.buckets.size >= this.maxMembers) this.buckets.clear()
      bucket = { tokens: CLAIM_BURST, at: now }
      this.buckets.set(origin, bucket)
    }
    bucket.tokens = Math.min(CLAIM_BURST, bucket.tokens + (now - bucket.at) * CLAIMS_PER_S / 1000)
    bucket.at = now
    if (bucket.tokens < 1) return false
    bucket.tokens--
    return true
  }

  private updateGauges (): void {
    const metrics = this.components.metrics
    if (metrics == null) return
    for (const [state, value] of Object.entries(this.swim.counts())) metrics.members.set({ state }, value)
    metrics.localHealth.set(this.swim.localHealth)
  }
}
