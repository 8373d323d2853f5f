/**
 * A discrete-event simulator for the membership state machine (swim.ts):
 * many nodes, a virtual clock, a network with a one-way delay, nodes that
 * crash, links that break, and nodes whose event loop stalls. A stalled node
 * handles nothing until it resumes; then, like Node's event loop, its due
 * timers run first (late) and the messages that queued up after them.
 */
import { Swim, type Claim, type SwimAction, type SwimOptions } from '../../p2p/membership/swim.ts'
import { seededRandom } from './random.ts'

interface Event {
  at: number
  order: number
  /** Timers run before I/O delivered at the same instant. */
  kind: 'timer' | 'io'
  node: string
  run: () => void
}

interface SimNode {
  id: string
  swim: Swim
  up: boolean
  stalledUntil: number
  /** Every stall, [from, to): an answer arriving inside one waits, behind the timers that came due meanwhile. */
  stalls: Array<[number, number]>
  wakeAt: number
}

export interface Transition { at: number, node: string, peer: string, state: string }

export class SwimSim {
  /** Broadcasts sent before this time reach nobody (a gossip mesh still forming at start). */
  broadcastsLostUntil = -1
  now = 0
  readonly nodes = new Map<string, SimNode>()
  readonly transitions: Transition[] = []
  readonly claims: Array<{ at: number, from: string, claim: Claim }> = []
  /** Indirect probes asked for, by the member they were about. */
  readonly indirectProbes = new Map<string, number>()
  private queue: Event[] = []
  private readonly stallOnProbe = new Map<string, number>()
  private readonly stallOnIndirect = new Map<string, number>()
  private order = 0
  private readonly cut = new Set<string>()
  private readonly delayMs: number
  /** One-way delays of links that differ from `delayMs`. */
  private readonly delays = new Map<string, number>()
  private readonly random: () => number
  /** Whether nodes know the round trip to each member (as the daemon does from measured pings and coordinates). */
  knowRtts = true

  constructor (ids: string[], options: Partial<SwimOptions> = {}, delayMs = 5, seed = 1) {
    this.delayMs = delayMs
    this.random = seededRandom(seed)
    for (const id of ids) {
      // As measured or estimated in the daemon: not a whole number of ms.
      const rttOf = (peer: string): number | undefined => this.knowRtts ? 2 * this.delay(id, peer) + 0.37 : undefined
      this.nodes.set(id, { id, swim: new Swim(id, 1_000 + ids.indexOf(id), options, this.random, rttOf), up: true, stalledUntil: 0, stalls: [], wakeAt: -1 })
    }
    // Everyone knows everyone from the start (as if their reports had arrived), and each announces itself.
    for (const node of this.nodes.values()) {
      for (const other of ids) if (other !== node.id) node.swim.heard(other, 0)
      this.wake(node, 0)
    }
  }

  swim (id: string): Swim {
    return this.nodes.get(id)!.swim
  }

  /** The state `observer` holds `peer` in. */
  stateOf (observer: string, peer: string): string | undefined {
    return this.swim(observer).get(peer)?.state
  }

  crash (id: string): void {
    this.nodes.get(id)!.up = false
  }

  /** The node's event loop is stuck for `ms` from now. */
  stall (id: string, ms: number): void {
    const node = this.nodes.get(id)!
    node.stalledUntil = Math.max(node.stalledUntil, this.now + ms)
    node.stalls.push([this.now, node.stalledUntil])
    const stalledAt = this.now
    // The loop monitor notices when the loop runs again (after the late timers, as the worst case).
    this.push({ at: node.stalledUntil, kind: 'io', node: id, run: () => { node.swim.stalled(this.now, this.now - stalledAt); this.drain(node) } })
  }

  /**
   * The node's loop stalls for `ms` right after it next sends a probe, and
   * again right after it asks helpers for the indirect one that follows: the
   * worst moments, with the answers in flight.
   */
  stallWhenProbing (id: string, ms: number): void {
    this.stallOnProbe.set(id, ms)
    this.stallOnIndirect.set(id, ms)
  }

  /** Breaks (or heals) the link between two nodes, both ways. */
  setLink (a: string, b: string, up: boolean): void {
    const key = [a, b].sort().join('|')
    if (up) this.cut.delete(key)
    else this.cut.add(key)
  }

  /** Sets the one-way delay of the link between two nodes, both ways. */
  setDelay (a: string, b: string, ms: number): void {
    this.delays.set([a, b].sort().join('|'), ms)
  }

  private delay (a: string, b: string): number {
    return this.delays.get([a, b].sort().join('|')) ?? this.delayMs
  }

  private linked (a: string, b: string): boolean {
    return !this.cut.has([a, b].sort().join('|'))
  }

  run (untilMs: number): void {
    while (this.queue.length > 0) {
      this.queue.sort((x, y) => x.at - y.at || (x.kind === y.kind ? x.order - y.order : x.kind === 'timer' ? -1 : 1))
      const next = this.queue[0]!
      if (next.at > untilMs) break
      this.queue.shift()
      this.now = next.at
      const node = this.nodes.get(next.node)!
      if (!node.up) continue
      if (this.now < node.stalledUntil) {
        // Deferred to when the loop runs again, keeping timers ahead of I/O.
        this.push({ ...next, at: node.stalledUntil })
        continue
      }
      next.run()
    }
    this.now = untilMs
  }

  private push (event: Omit<Event, 'order'>): void {
    this.queue.push({ ...event, order: this.order++ })
  }

  private wake (node: SimNode, at: number): void {
    if (node.wakeAt >= 0 && node.wakeAt <= at && node.wakeAt >= this.now) return
    node.wakeAt = at
    this.push({
      at,
      kind: 'timer',
      node: node.id,
      run: () => {
        node.wakeAt = -1
        node.swim.tick(this.now)
        this.drain(node)
      }
    })
  }

  private drain (node: SimNode): void {
    for (const action of node.swim.drain()) this.perform(node, action)
    this.wake(node, node.swim.nextWakeup(this.now))
  }

  /** When `target` could answer a message sent by `from` now, or null if it never will. */
  private answerAt (from: string, target: string, sentAt: number): number | null {
    const node = this.nodes.get(target)!
    if (!node.up || !this.linked(from, target)) return null
    const delay = this.delay(from, target)
    return Math.max(sentAt + delay, node.stalledUntil) + delay
  }

  /**
   * Whether an answer arriving at `node` at `arrival` is read before its
   * timeout timer (due at `deadline`) fires: it must arrive in time, and not
   * in a stall that lasts past the deadline (then the late timer runs first).
   */
  private readInTime (node: SimNode, arrival: number | null, deadline: number): boolean {
    if (arrival == null || arrival > deadline) return false
    return !node.stalls.some(([from, to]) => arrival >= from && arrival < to && to > deadline)
  }

  private perform (node: SimNode, action: SwimAction): void {
    const sentAt = this.now
    // The daemon's timers (AbortSignal.timeout) take whole milliseconds only: a fraction there is a failed probe.
    if ((action.t === 'probe' || action.t === 'probe-indirect') && !Number.isSafeInteger(action.timeoutMs)) throw new Error(`${action.t} timeout ${action.timeoutMs} is not a whole number of ms`)
    const deadline = action.t === 'probe' || action.t === 'probe-indirect' ? sentAt + action.timeoutMs : 0
    switch (action.t) {
      case 'probe': {
        const answered = this.answerAt(node.id, action.peer, sentAt)
        const stallMs = this.stallOnProbe.get(node.id)
        if (stallMs != null) {
          this.stallOnProbe.delete(node.id)
          this.stall(node.id, stallMs)
        }
        // Judged when the timer (or the answer) is handled, which a stall of the prober delays.
        this.push({
          at: answered != null && answered <= deadline ? answered : deadline,
          kind: 'io',
          node: node.id,
          run: () => { node.swim.probeDone(action.id, { ok: this.readInTime(node, answered, deadline) }, this.now); this.drain(node) }
        })
        break
      }
      case 'probe-indirect': {
        this.indirectProbes.set(action.peer, (this.indirectProbes.get(action.peer) ?? 0) + 1)
        const stallMs = this.stallOnIndirect.get(node.id)
        if (stallMs != null) {
          this.stallOnIndirect.delete(node.id)
          this.stall(node.id, stallMs)
        }
        const answers: Array<{ arrival: number, ack: boolean }> = []
        for (const helper of action.helpers) {
          const reached = this.answerAt(node.id, helper, sentAt)
          if (reached == null) continue
          const back = this.delay(node.id, helper)
          const viaHelper = this.answerAt(helper, action.peer, reached - back)
          // A helper answers within the asker's timeout either way: an ack if it reached the member, else a nack.
          const ack = viaHelper != null && viaHelper + back <= deadline
          answers.push({ arrival: ack ? viaHelper + back : Math.min(deadline, reached + (deadline - sentAt) / 2), ack })
        }
        this.push({
          at: deadline,
          kind: 'timer',
          node: node.id,
          run: () => {
            const read = answers.filter((a) => this.readInTime(node, a.arrival, deadline))
            node.swim.indirectDone(action.id, { asked: action.helpers.length, acks: read.filter((a) => a.ack).length, nacks: read.filter((a) => !a.ack).length }, this.now)
            this.drain(node)
          }
        })
        break
      }
      case 'broadcast':
        this.claims.push({ at: sentAt, from: node.id, claim: action.claim })
        // As gossip before its mesh has formed: sent to no one.
        if (sentAt < this.broadcastsLostUntil) break
        for (const other of this.nodes.values()) {
          if (other.id === node.id || !this.linked(node.id, other.id)) continue
          this.push({ at: sentAt + this.delay(node.id, other.id), kind: 'io', node: other.id, run: () => { other.swim.claim(node.id, action.claim, this.now); this.drain(other) } })
        }
        break
      case 'changed':
        this.transitions.push({ at: sentAt, node: node.id, peer: action.peer, state: action.state })
        break
      case 'forgotten':
        break
    }
  }
}
