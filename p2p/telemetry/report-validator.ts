/**
 * Validation of load reports received on `/metagrid/telemetry/1`. Each check
 * throws a Refusal with a bounded code:
 *
 * reject (the propagating peer loses gossip score): OVERSIZED, MALFORMED,
 * BAD_SIGNATURE, FORGED (the envelope's signer is not the message's sender),
 * REPLAYED (a sequence number already accepted), OUT_OF_ORDER (older than one
 * already accepted).
 *
 * ignore (not necessarily anyone's fault): STALE (too old to be useful),
 * FROM_FUTURE (the sender's clock is off), TOO_MANY_PEERS (tracking table full).
 */
import { EnvelopeError } from '../../attest/envelope.ts'
import { ignore, reject } from '../admission/refusal.ts'
import { LoadReportError, openLoadReport, type LoadReport } from './load-report.ts'
import type { SignedMessage } from '@libp2p/gossipsub'

export interface ReceivedReport {
  peerId: string
  report: LoadReport
  /** Local wall-clock time of acceptance, ms. */
  receivedAt: number
}

export interface ReportValidatorOptions {
  staleAfterMs: number
  maxClockSkewMs: number
  /** Bounds the per-sender sequence table: each entry needs a valid signature, but keys are free to make. */
  maxTrackedPeers: number
  now: () => number
}

const ENVELOPE_CODES: Record<EnvelopeError['check'], string> = {
  size: 'OVERSIZED',
  encoding: 'MALFORMED',
  type: 'MALFORMED',
  key: 'MALFORMED',
  signature: 'BAD_SIGNATURE',
  signer: 'FORGED'
}

export class ReportValidator {
  private readonly lastSeq = new Map<string, number>()
  private readonly options: ReportValidatorOptions

  constructor (options: ReportValidatorOptions) {
    this.options = options
  }

  async validate (message: SignedMessage): Promise<ReceivedReport> {
    let opened
    try {
      opened = await openLoadReport(message.data)
    } catch (err) {
      if (err instanceof EnvelopeError) throw reject(ENVELOPE_CODES[err.check], err.message)
      if (err instanceof LoadReportError) throw reject('MALFORMED', err.message)
      throw err
    }
    const { envelope, report } = opened
    if (!envelope.signer.equals(message.from)) {
      throw reject('FORGED', `report signed by ${envelope.signer.toString()} but sent as ${message.from.toString()}`)
    }
    const now = this.options.now()
    if (now - report.timestamp > this.options.staleAfterMs) throw ignore('STALE', `report is ${now - report.timestamp} ms old`)
    if (report.timestamp - now > this.options.maxClockSkewMs) throw ignore('FROM_FUTURE', `report is ${report.timestamp - now} ms in the future`)

    const peerId = message.from.toString()
    const last = this.lastSeq.get(peerId)
    if (last != null && report.seq === last) throw reject('REPLAYED', `sequence ${report.seq} already accepted`)
    if (last != null && report.seq < last) throw reject('OUT_OF_ORDER', `sequence ${report.seq} is older than ${last}`)
    if (last == null && this.lastSeq.size >= this.options.maxTrackedPeers) throw ignore('TOO_MANY_PEERS', 'report table full')
    this.lastSeq.set(peerId, report.seq)
    return { peerId, report, receivedAt: now }
  }

  /** Drops a peer's sequence state, for a member that was forgotten. */
  forget (peerId: string): void {
    this.lastSeq.delete(peerId)
  }
}
