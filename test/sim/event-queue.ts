/**
 * The virtual clock's queue: a binary min-heap on (time, sequence), so
 * events at the same instant run in the order they were scheduled and a run
 * is the same every time.
 */
interface Entry {
  t: number
  seq: number
  run: () => void
}

export class EventQueue {
  private readonly heap: Entry[] = []
  private seq = 0
  now = 0

  get size (): number {
    return this.heap.length
  }

  at (t: number, run: () => void): void {
    const entry = { t: Math.max(t, this.now), seq: this.seq++, run }
    const heap = this.heap
    let i = heap.push(entry) - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!before(entry, heap[parent]!)) break
      heap[i] = heap[parent]!
      i = parent
    }
    heap[i] = entry
  }

  after (ms: number, run: () => void): void {
    this.at(this.now + ms, run)
  }

  /** Runs events up to and including `until`; the clock ends at `until`. Returns the events run. */
  runUntil (until: number): number {
    let count = 0
    const heap = this.heap
    while (heap.length > 0 && heap[0]!.t <= until) {
      const top = heap[0]!
      const last = heap.pop()!
      if (heap.length > 0) {
        let i = 0
        const n = heap.length
        for (;;) {
          const l = 2 * i + 1
          if (l >= n) break
          const r = l + 1
          const c = r < n && before(heap[r]!, heap[l]!) ? r : l
          if (!before(heap[c]!, last)) break
          heap[i] = heap[c]!
          i = c
        }
        heap[i] = last
      }
      this.now = top.t
      top.run()
      count++
    }
    this.now = until
    return count
  }
}

function before (a: Entry, b: Entry): boolean {
  return a.t < b.t || (a.t === b.t && a.seq < b.seq)
}
