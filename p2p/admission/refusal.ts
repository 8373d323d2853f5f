/**
 * A remote change refused, with a bounded `code` (a metric label) and an
 * action: `reject` when the sender is provably at fault whatever this node's
 * view (bad signature, malformed bytes, an entry written by someone who does
 * not own it), `ignore` when the refusal may be this node's view lagging
 * (a lease it has not heard of yet) or nobody's fault (a duplicate). Gossip
 * maps reject to a score penalty; a direct stream is cut for it. Our own
 * bugs become ignore: a peer is never punished for our fault.
 */
export type RefusalAction = 'reject' | 'ignore'

export class Refusal extends Error {
  static override name = 'Refusal'
  override name = 'Refusal'
  readonly code: string
  readonly action: RefusalAction
  constructor (code: string, action: RefusalAction, message: string) {
    super(message)
    this.code = code
    this.action = action
  }
}

export const reject = (code: string, message: string): Refusal => new Refusal(code, 'reject', message)
export const ignore = (code: string, message: string): Refusal => new Refusal(code, 'ignore', message)
