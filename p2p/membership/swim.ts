/**
 * SWIM failure detection with Lifeguard's local health awareness, as a state
 * machine: time, probe outcomes and peers' claims go in; probes to run,
 * claims to broadcast and state changes come out. The daemon drives it over
 * libp2p (membership.ts); a simulator can drive it with a virtual clock.
 *
 * - **Probing.** Every probe interval one member is probed, in a shuffled
 *   round-robin (every member once per cycle). A direct probe that fails is
 *   followed by indirect probes through `indirect` other members. Only when
 *   every helper says it could not reach the member (or no helper answers)
 *   is it **suspect**. A peer's connection closing triggers a probe at once.
 * - **Suspicion** is gossiped with the suspect's incarnation. Other members
 *   confirm it; the suspicion timeout falls from its maximum to its minimum
 *   as independent confirmations arrive (Lifeguard's dynamic suspicion). A
 *   suspect that does not refute before the timeout is **dead** here. A
 *   peer's claim that someone is dead only counts as a confirmation: no
 *   single node, hostile or confused, can kill a member on others' views.
 * - **Refutation.** A member that hears itself suspected raises its
 *   incarnation and announces itself alive; only a member itself can make
 *   such an announcement (claims are signed by their origin), and a higher
 *   incarnation overrides any suspicion of a lower one.
 * - **Local health** (Lifeguard's LHM): a node that misses its own deadlines
 *   (a timer that fires late, an event-loop stall, helpers that do not even
 *   answer, having to refute) doubts itself first: its probe interval and
 *   timeouts stretch by its health score + 1, a probe during which it
 *   stalled proves nothing, and it does not declare a suspect dead right
 *   after a stall of its own (the refutation may be unread in its sockets).
 */
import { shuffle } from '../shuffle.ts'

export type MemberState = 'alive' | 'suspect' | 'dead'

export type ClaimKind = 'alive' | 'suspect' | 'dead'

/** What one member says about another (or itself, for alive), signed by its origin on the wire. */
export interface Claim {
  kind: ClaimKind
  subject: string
  incarnation: number
}

export interface SwimOptions {
  /** One member is probed per interval (times local health + 1). */
  probeIntervalMs: number
  /** A direct probe unanswered this long failed (times local health + 1); indirect probes get twice it. */
  probeTimeoutMs: number
  /** Helpers asked to probe a member that failed a direct probe (SWIM's k). */
  indirect: number
  /** Lifeguard's α: the shortest suspicion is α · max(1, log10 N) probe intervals. */
  suspicionMult: number
  /** Lifeguard's β: the longest suspicion (no confirmation) is β times the shortest. */
  suspicionMaxMult: number
  /** Lifeguard's S: the local health score's ceiling. */
  maxHealth: number
  /** Dead members are kept (and refused revival at their old incarnation) this long. */
  forgetAfterMs: number
  /** This node repeats its alive claim this often, so members that joined later learn its incarnation. */
  announceEveryMs: number
  /** Members tracked at most; claims about more are ignored. */
  maxMembers: number
  /**
   * Up to this many members (this node included), a join makes this node announce itself again within a second, so
   * the newcomer learns its incarnation at once. In a larger mesh every member doing so on every join costs each one
   * N announcements per join (the simulator measured 50 KB/s per node in a 250-member region at 1% churn a minute);
   * there the newcomer learns incarnations from the periodic announcements, and until then the others confirm.
   */
  announceOnJoinUpTo: number
}

export const defaultSwimOptions: SwimOptions = {
  probeIntervalMs: 500,
  probeTimeoutMs: 300,
  indirect: 3,
  suspicionMult: 4,
  suspicionMaxMult: 6,
  maxHealth: 8,
  forgetAfterMs: 600_000,
  announceEveryMs: 30_000,
  maxMembers: 10_000,
  announceOnJoinUpTo: 32
}

/** Claims from further ahead than this (ms of incarnation past the local clock) are implausible: incarnations start at the wall clock. */
export const MAX_INCARNATION_AHEAD_MS = 86_400_000
/** A member that joins is told this node's incarnation this soon after (joins within it share one announcement). */
const ANNOUNCE_AFTER_JOIN_MS = 1_000
/** A stall of the local event loop at least this long (or a timer this late) makes this node doubt what it saw meanwhile. */
const STALL_MS = 100
/** Members that announce a death they timed out, on average, whatever the size of the mesh. */
const DEATH_ANNOUNCERS = 3

export interface MemberView {
  peerId: string
  state: MemberState
  /** The member's incarnation as last announced, or null until it announced one. */
  incarnation: number | null
  /** Last time (ms, local clock) anything proved the member alive. */
  lastHeard: number
  /** When the member entered its current state. */
  since: number
  reason: string
}

export type SwimAction =
  /** Ping `peer` directly; report with `probeDone`. */
  | { t: 'probe', id: number, peer: string, timeoutMs: number }
  /** Ask `helpers` to ping `peer`; report with `indirectDone`. */
  | { t: 'probe-indirect', id: number, peer: string, helpers: string[], timeoutMs: number }
  /** Broadcast this claim to the mesh. */
  | { t: 'broadcast', claim: Claim }
  | { t: 'changed', peer: string, previous: MemberState | null, state: MemberState, reason: string }
  | { t: 'forgotten', peer: string }

export type ClaimVerdict = 'applied' | 'stale' | 'unknown' | 'full' | 'implausible' | 'self'

interface Suspicion {
  incarnation: number
  startedAt: number
  /** Distinct members that suspected it, this node included when it did; at most K + 1 are counted. */
  confirmers: Set<string>
  deadline: number
}

interface Tracked extends MemberView {
  suspicion: Suspicion | null
  /** When this node last repeated its suspicion or death claim to the member. */
  nudgedAt: number
}

interface Probe {
  id: number
  peer: string
  startedAt: number
  timeoutMs: number
  phase: 'direct' | 'indirect'
}

export class Swim {
  readonly self: string
  private readonly options: SwimOptions
  private readonly random: () => number
  private readonly members = new Map<string, Tracked>()
  /** Members suspect or dead: the only ones timers look at, so a tick costs what is in doubt, not the membership. */
  private readonly doubted = new Set<Tracked>()
  /** Members not dead, kept as they change: Lifeguard's N is asked for on every suspicion. */
  private notDead = 0
  private readonly probes = new Map<number, Probe>()
  private actions: SwimAction[] = []
  private order: string[] = []
  private nextId = 1
  private nextProbeAt = 0
  private nextAnnounceAt = 0
  /** Announcements made so far: the first few come quickly, while the gossip mesh forms. */
  private announcements = 0
  private health = 0
  private lastStallEnd = -Infinity
  private lastStallMs = 0
  private currentIncarnation: number
  private readonly rttOf: (peer: string) => number | undefined

  /**
   * `rttOf`: what the driver knows of the round trip to a member (measured,
   * or estimated from coordinates), ms; a direct probe of a member farther
   * than the configured timeout allows gets room for its round trip.
   */
  constructor (self: string, incarnation: number, options: Partial<SwimOptions> = {}, random: () => number = Math.random, rttOf: (peer: string) => number | undefined = () => undefined) {
    this.self = self
    this.currentIncarnation = incarnation
    this.options = { ...defaultSwimOptions, ...options }
    this.random = random
    this.rttOf = rttOf
  }

  /** This node's incarnation: raised by each refutation (persist it: a restart must not go back). */
  get incarnation (): number {
    return this.currentIncarnation
  }

  /** Lifeguard's local health score: 0 is healthy; timeouts are multiplied by it + 1. */
  get localHealth (): number {
    return this.health
  }

  /** Actions produced since the last call, oldest first. */
  drain (): SwimAction[] {
    const out = this.actions
    this.actions = []
    return out
  }

  /** The next time `tick` has something to do (a probe to start, a suspicion to expire, an announcement). */
  nextWakeup (now: number): number {
    let next = Math.min(this.nextProbeAt, this.nextAnnounceAt)
    for (const member of this.doubted) {
      if (member.suspicion != null) next = Math.min(next, member.suspicion.deadline)
      else if (member.state === 'dead') next = Math.min(next, member.since + this.options.forgetAfterMs)
    }
    return Math.max(now, next)
  }

  /** Evaluates timers: announcements, the next probe, suspicion timeouts, forgetting the long dead. */
  tick (now: number): void {
    if (now >= this.nextAnnounceAt) {
      this.emit({ t: 'broadcast', claim: { kind: 'alive', subject: this.self, incarnation: this.currentIncarnation } })
      // The first announcements go out while the gossip mesh forms and may reach no one: 1 s, 3 s, 9 s apart, then the period.
      this.nextAnnounceAt = now + Math.min(this.options.announceEveryMs, ANNOUNCE_AFTER_JOIN_MS * 3 ** this.announcements++)
    }
    if (now >= this.nextProbeAt) {
      this.nextProbeAt = now + this.options.probeIntervalMs * (this.health + 1)
      const target = this.nextTarget()
      if (target != null) this.startProbe(target, now)
    }
    for (const member of this.doubted) {
      if (member.suspicion != null && now >= member.suspicion.deadline) this.expire(member, now)
      else if (member.state === 'dead' && now - member.since >= this.options.forgetAfterMs) {
        this.members.delete(member.peerId)
        this.doubted.delete(member)
        this.emit({ t: 'forgotten', peer: member.peerId })
      }
    }
  }

  /**
   * Fresh evidence, signed by the member itself, that it is running (a load
   * report): a member not known yet is tracked as alive until probes say
   * otherwise. One this node holds suspect or dead is told so again (at most
   * once per probe cycle), so a member that missed the claim, behind a
   * partition, gets to refute it.
   */
  heard (peer: string, now: number): void {
    if (peer === this.self) return
    const member = this.members.get(peer)
    if (member == null) {
      if (this.members.size < this.options.maxMembers) this.track(peer, null, now, 'first heard of')
      return
    }
    if (member.state === 'alive') {
      member.lastHeard = now
      return
    }
    if (member.incarnation == null || now - member.nudgedAt < this.options.probeIntervalMs * 2) return
    member.nudgedAt = now
    this.emit({ t: 'broadcast', claim: { kind: member.state, subject: peer, incarnation: member.suspicion?.incarnation ?? member.incarnation } })
  }

  /** A connection to the member closed: probe it now rather than at its turn. */
  disconnected (peer: string, now: number): void {
    const member = this.members.get(peer)
    if (member == null || member.state === 'dead' || [...this.probes.values()].some((p) => p.peer === peer)) return
    this.startProbe(peer, now)
  }

  /**
   * The local event loop was stalled for `ms`, ending now: what this node saw
   * meanwhile is doubtful, and its timeouts widen until they would have
   * covered the stall (local health at least ⌈ms / probe timeout⌉). Stalls
   * raise health to that level, they do not add up: a node starting beside
   * nine others on two cores stalls 100–300 ms a dozen times in its first
   * seconds, and counting each one put every node of a fresh mesh at the
   * ceiling, probing once every 4.5 s for the next half minute.
   */
  stalled (now: number, ms: number): void {
    if (ms < STALL_MS) return
    this.lastStallEnd = now
    this.lastStallMs = ms
    this.health = Math.max(this.health, Math.min(this.options.maxHealth, Math.ceil(ms / this.options.probeTimeoutMs)))
  }

  /** The outcome of a direct probe this machine asked for. */
  probeDone (id: number, outcome: { ok: true } | { ok: false }, now: number): void {
    const probe = this.probes.get(id)
    if (probe == null || probe.phase !== 'direct') return
    const member = this.members.get(probe.peer)
    if (member == null) {
      this.probes.delete(id)
      return
    }
    if (outcome.ok) {
      this.probes.delete(id)
      this.adjustHealth(-1)
      this.alive(member, now, 'probe')
      return
    }
    if (this.doubtful(probe, now, probe.timeoutMs)) {
      this.probes.delete(id)
      this.adjustHealth(1)
      return
    }
    const helpers = shuffle(this.peers('alive').filter((p) => p !== probe.peer), this.random).slice(0, this.options.indirect)
    if (helpers.length === 0) {
      this.probes.delete(id)
      this.suspectOwn(member, now, 'direct probe failed and no other member can be asked')
      return
    }
    probe.phase = 'indirect'
    probe.startedAt = now
    probe.timeoutMs = 2 * this.directTimeout(probe.peer)
    this.emit({ t: 'probe-indirect', id, peer: probe.peer, helpers, timeoutMs: probe.timeoutMs })
  }

  /**
   * The outcome of indirect probes: `acks` helpers reached the member,
   * `nacks` answered that they could not, the rest of `asked` did not answer
   * at all (Lifeguard's missed nacks: a sign this node's own links are bad).
   */
  indirectDone (id: number, result: { asked: number, acks: number, nacks: number }, now: number): void {
    const probe = this.probes.get(id)
    if (probe == null || probe.phase !== 'indirect') return
    this.probes.delete(id)
    const member = this.members.get(probe.peer)
    if (member == null) return
    if (result.acks > 0) {
      this.alive(member, now, 'indirect probe')
      return
    }
    const missed = Math.max(0, result.asked - result.nacks)
    if (missed > 0) this.adjustHealth(missed)
    // Helpers that all stayed silent say more about our links than about the member.
    if (this.doubtful(probe, now, probe.timeoutMs) || (result.nacks === 0 && result.asked > 0)) return
    this.suspectOwn(member, now, `unreachable directly and through ${result.nacks} of ${result.asked} members`)
  }

  /**
   * A claim from `from` (authenticated by the transport's signature).
   * Alive claims count only from their subject; suspicion and death claims
   * only for incarnations the subject has announced.
   */
  claim (from: string, claim: Claim, now: number): ClaimVerdict {
    if (claim.incarnation > now + MAX_INCARNATION_AHEAD_MS) return 'implausible'
    if (claim.subject === this.self) {
      if (claim.kind === 'alive') return 'self'
      if (claim.incarnation < this.currentIncarnation) return 'stale'
      // Refute: a higher incarnation overrides the suspicion everywhere. Having been suspected is itself a sign of trouble here.
      this.currentIncarnation = claim.incarnation + 1
      this.adjustHealth(1)
      this.emit({ t: 'broadcast', claim: { kind: 'alive', subject: this.self, incarnation: this.currentIncarnation } })
      return 'applied'
    }
    let member = this.members.get(claim.subject)
    if (claim.kind === 'alive') {
      if (from !== claim.subject) return 'implausible'
      if (member == null) {
        if (this.members.size >= this.options.maxMembers) return 'full'
        this.track(claim.subject, claim.incarnation, now, 'announced itself')
        return 'applied'
      }
      if (member.incarnation != null && claim.incarnation <= member.incarnation) {
        // A repeat of the current incarnation still proves nothing new; it does not clear a suspicion of that incarnation.
        if (claim.incarnation === member.incarnation && member.state === 'alive') member.lastHeard = now
        return 'stale'
      }
      member.incarnation = claim.incarnation
      this.alive(member, now, member.state === 'alive' ? 'announced' : 'refuted')
      return 'applied'
    }
    if (member == null) return 'unknown'
    // An incarnation the subject never announced would force it to refute past it: only known ones count.
    if (member.incarnation == null) {
      // Do not believe it, but look for ourselves.
      this.disconnected(member.peerId, now)
      return 'unknown'
    }
    if (claim.incarnation < member.incarnation) return 'stale'
    if (claim.incarnation > member.incarnation) return 'implausible'
    if (member.state === 'dead') return 'stale'
    this.suspect(member, from, now, `${claim.kind === 'dead' ? 'declared dead' : 'suspected'} by ${from}`)
    return 'applied'
  }

  get (peer: string): MemberView | undefined {
    const member = this.members.get(peer)
    return member == null ? undefined : view(member)
  }

  list (): MemberView[] {
    return [...this.members.values()].map(view)
  }

  peers (...states: MemberState[]): string[] {
    const out: string[] = []
    for (const member of this.members.values()) if (states.includes(member.state)) out.push(member.peerId)
    return out
  }

  counts (): Record<MemberState, number> {
    const counts: Record<MemberState, number> = { alive: 0, suspect: 0, dead: 0 }
    for (const member of this.members.values()) counts[member.state]++
    return counts
  }

  /** Members not dead, this node included: Lifeguard's N. */
  private size (): number {
    return this.notDead + 1
  }

  private track (peer: string, incarnation: number | null, now: number, reason: string): void {
    this.members.set(peer, { peerId: peer, state: 'alive', incarnation, lastHeard: now, since: now, reason, suspicion: null, nudgedAt: -Infinity })
    this.notDead++
    this.emit({ t: 'changed', peer, previous: null, state: 'alive', reason })
    // A new member has not heard our incarnation (our last announcement went out before it joined, or to no one
    // at all while the gossip mesh formed), and without it its suspicions of us, or ours confirmed by it, do not
    // count: announce again soon, once for every member that joins meanwhile.
    if (this.size() <= this.options.announceOnJoinUpTo) this.nextAnnounceAt = Math.min(this.nextAnnounceAt, now + ANNOUNCE_AFTER_JOIN_MS)
  }

  private nextTarget (): string | undefined {
    while (this.order.length > 0) {
      const peer = this.order.shift()!
      const member = this.members.get(peer)
      if (member != null && member.state !== 'dead') return peer
    }
    this.order = shuffle(this.peers('alive', 'suspect'), this.random)
    return this.order.shift()
  }

  private startProbe (peer: string, now: number): void {
    const id = this.nextId++
    const timeoutMs = this.directTimeout(peer)
    this.probes.set(id, { id, peer, startedAt: now, timeoutMs, phase: 'direct' })
    this.emit({ t: 'probe', id, peer, timeoutMs })
  }

  /**
   * How long a direct probe of `peer` may take: the configured timeout, or,
   * for a member whose round trip is known to be longer than that allows
   * (a grid spans continents: 170 ms Frankfurt to Sydney, 300 ms over some
   * mobile links), three of its round trips (a probe opens a stream, one
   * round trip for multistream-select, and pings, another; the third is room
   * for jitter), at most three times the configured timeout; times local
   * health + 1. Indirect probes get twice it. A peer can inflate its own RTT
   * (a coordinate far away, slow answers) and so its own timeout, up to
   * that cap, and nobody else's.
   */
  private directTimeout (peer: string): number {
    const base = this.options.probeTimeoutMs
    const rtt = this.rttOf(peer)
    const room = rtt == null || !Number.isFinite(rtt) ? base : Math.min(3 * base, Math.max(base, 3 * rtt))
    // Whole milliseconds: the driver's timers (AbortSignal.timeout) refuse fractions.
    return Math.ceil(room * (this.health + 1))
  }

  /** Whether this node itself was too slow during a probe for its failure to mean anything. */
  private doubtful (probe: Probe, now: number, timeoutMs: number): boolean {
    const late = now - probe.startedAt - timeoutMs
    return late >= Math.max(STALL_MS, timeoutMs / 2) || this.lastStallEnd >= probe.startedAt
  }

  private adjustHealth (delta: number): void {
    this.health = Math.min(this.options.maxHealth, Math.max(0, this.health + delta))
  }

  private alive (member: Tracked, now: number, reason: string): void {
    member.lastHeard = now
    member.suspicion = null
    if (member.state !== 'alive') this.set(member, 'alive', now, reason)
  }

  private suspectOwn (member: Tracked, now: number, reason: string): void {
    if (member.state === 'dead') return
    if (member.incarnation == null) {
      // Nobody else could check a suspicion of an unannounced incarnation: suspect here only.
      this.suspect(member, this.self, now, reason)
      return
    }
    const fresh = member.suspicion == null || !member.suspicion.confirmers.has(this.self)
    this.suspect(member, this.self, now, reason)
    if (fresh) this.emit({ t: 'broadcast', claim: { kind: 'suspect', subject: member.peerId, incarnation: member.incarnation } })
  }

  private suspect (member: Tracked, from: string, now: number, reason: string): void {
    const incarnation = member.incarnation ?? 0
    if (member.suspicion == null) {
      member.suspicion = { incarnation, startedAt: now, confirmers: new Set([from]), deadline: 0 }
      this.set(member, 'suspect', now, reason)
    } else if (member.suspicion.confirmers.size <= this.expectedConfirmations()) {
      member.suspicion.confirmers.add(from)
    }
    member.suspicion.deadline = member.suspicion.startedAt + this.suspicionTimeout(member.suspicion.confirmers.size - 1)
  }

  /** Lifeguard's K: confirmations that bring a suspicion down to its minimum (none in a mesh too small to give them). */
  private expectedConfirmations (): number {
    const k = this.options.suspicionMult - 2
    return this.size() - 2 < k ? 0 : k
  }

  /** Lifeguard's suspicion timeout: from β·min down to min as confirmations C approach K, logarithmically. */
  suspicionTimeout (confirmations: number): number {
    const n = this.size()
    const min = this.options.suspicionMult * Math.max(1, Math.log10(n)) * this.options.probeIntervalMs
    const max = this.options.suspicionMaxMult * min
    const k = this.expectedConfirmations()
    if (k === 0) return min
    const fraction = Math.log(Math.min(confirmations, k) + 1) / Math.log(k + 1)
    return Math.max(min, max - (max - min) * fraction)
  }

  private expire (member: Tracked, now: number): void {
    const suspicion = member.suspicion!
    // After a stall of our own the refutation may be sitting unread: give it the stall's length again.
    if (now - this.lastStallEnd < Math.max(this.lastStallMs, this.options.probeTimeoutMs)) {
      suspicion.deadline = now + Math.max(this.lastStallMs, this.options.probeTimeoutMs)
      return
    }
    member.suspicion = null
    const waited = now - suspicion.startedAt
    this.set(member, 'dead', now, `suspected for ${waited} ms by ${suspicion.confirmers.size} member(s), no refutation`)
    // Every member's suspicion of a crashed node runs out within milliseconds of the others': were each to say so,
    // a death would cost every member N messages. DEATH_ANNOUNCERS of them on average do; the suspicion claims have
    // reached the rest already, and a member that missed them finds the death by its own probes.
    if (this.random() * (this.size() + 1) < DEATH_ANNOUNCERS) this.emit({ t: 'broadcast', claim: { kind: 'dead', subject: member.peerId, incarnation: suspicion.incarnation } })
  }

  private set (member: Tracked, state: MemberState, now: number, reason: string): void {
    const previous = member.state
    member.state = state
    if (state === 'alive') this.doubted.delete(member)
    else this.doubted.add(member)
    if (previous === 'dead' && state !== 'dead') this.notDead++
    else if (previous !== 'dead' && state === 'dead') this.notDead--
    member.since = now
    member.reason = reason
    this.emit({ t: 'changed', peer: member.peerId, previous, state, reason })
  }

  private emit (action: SwimAction): void {
    this.actions.push(action)
  }
}

function view (member: Tracked): MemberView {
  return { peerId: member.peerId, state: member.state, incarnation: member.incarnation, lastHeard: member.lastHeard, since: member.since, reason: member.reason }
}
