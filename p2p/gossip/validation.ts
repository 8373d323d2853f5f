/**
 * One wrapper for every gossipsub topic validator, in the style of Lodestar:
 * a validator throws a Refusal (admission/refusal.ts) with a bounded `code`
 * and an `action`; the wrapper maps it to Reject (the propagating peer loses score)
 * or Ignore, and owns the logging and the counters. An unexpected exception
 * is our own bug and becomes Ignore: a peer is never punished for our fault.
 */
import { TopicValidatorResult, type Message, type SignedMessage, type TopicValidatorFn } from '@libp2p/gossipsub'
import { Refusal, reject } from '../admission/refusal.ts'
import type { P2pMetrics } from '../metrics.ts'
import type { Logger } from '../logger.ts'
import type { PeerId } from '@libp2p/interface'

export interface TopicValidatorOptions<T> {
  /** Bounded label for metrics: the topic's kind, never a topic string with an id in it. */
  topicLabel: string
  validate: (message: SignedMessage, propagationSource: PeerId) => Promise<T> | T
  /** Called with the validated value of an accepted message, before it is forwarded. */
  onAccept: (value: T, message: SignedMessage) => void
  metrics: P2pMetrics | null
  logger: Logger
}

export function topicValidator<T> (options: TopicValidatorOptions<T>): TopicValidatorFn {
  const { topicLabel, metrics, logger } = options
  return async (propagationSource: PeerId, message: Message) => {
    try {
      if (message.type !== 'signed') throw reject('UNSIGNED', 'unsigned message on a signed topic')
      const value = await options.validate(message, propagationSource)
      options.onAccept(value, message)
      metrics?.gossipMessages.inc({ topic: topicLabel, result: 'accept' })
      return TopicValidatorResult.Accept
    } catch (err) {
      if (err instanceof Refusal) {
        metrics?.gossipMessages.inc({ topic: topicLabel, result: err.action })
        metrics?.gossipInvalid.inc({ topic: topicLabel, reason: err.code, action: err.action })
        logger.debug({ code: err.code, action: err.action, topic: topicLabel, from: propagationSource.toString(), reason: err.message }, 'gossip message refused')
        return err.action === 'reject' ? TopicValidatorResult.Reject : TopicValidatorResult.Ignore
      }
      metrics?.gossipMessages.inc({ topic: topicLabel, result: 'ignore' })
      metrics?.gossipInvalid.inc({ topic: topicLabel, reason: 'VALIDATOR_BUG', action: 'ignore' })
      logger.error({ code: 'VALIDATOR_BUG', topic: topicLabel, err }, 'gossip validator failed; message ignored')
      return TopicValidatorResult.Ignore
    }
  }
}
