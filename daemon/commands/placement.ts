/**
 * `metagrid placement [--api URL] [--json]`: who hosts each shard, as this
 * node sees it: the computed assignment, the lease holder and epoch, and the
 * digest every node should share.
 *
 * `metagrid placement explain SHARD [--api URL] [--json]`: why: every
 * candidate's terms, score, bucket, rank, and the rule that ruled it out.
 */
import { requestJson, resolveApiUrl } from '../cli/api-client.ts'
import { renderFields, renderTable } from '../cli/table.ts'
import { parseCommandLine, stringValue, UsageError } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import type { CommandIO } from '../cli/io.ts'
import type { Placement, PlacementView } from '../../p2p/placement/placement.ts'

const short = (peerId: string | null | undefined): string => peerId == null ? '-' : `…${peerId.slice(-8)}`
const inMs = (at: number): string => `${Math.round((at - Date.now()) / 100) / 10}s`

export async function placementCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values, positionals } = parseCommandLine('placement', args, { api: { type: 'string' }, json: { type: 'boolean' } }, 2)
  const api = resolveApiUrl(stringValue(values.api), io.env)
  const json = values.json === true
  if (positionals[0] === 'explain') {
    const shard = positionals[1]
    if (shard == null) throw new UsageError('usage error: metagrid placement explain SHARD')
    const explained = await requestJson<NonNullable<ReturnType<Placement['explain']>>>(api, `/v1/placement/explain/${encodeURIComponent(shard)}`)
    if (json) {
      io.stdout.write(`${JSON.stringify(explained, null, 2)}\n`)
      return ExitCode.OK
    }
    io.stdout.write(renderFields([
      ['shard', explained.shard.id],
      ['layer', `${explained.shard.layer.name} (${explained.shard.layer.consistency})`],
      ['home region', explained.shard.homeRegion ?? '-'],
      ['rules', explained.rules.join(', ') || '-'],
      ['assigned host', explained.assignment?.host ?? '-'],
      ['replicas', explained.assignment?.replicas.join(', ') ?? '-'],
      ['lease', explained.lease == null ? 'none' : `${explained.lease.holder} epoch ${explained.lease.epoch}, expires in ${inMs(explained.lease.expiresAt)}`]
    ]))
    io.stdout.write('\n')
    io.stdout.write(renderTable(
      ['rank', 'peer', 'rtt', 'headroom', 'reliab.', 'cost', 'score', 'bucket', 'rendezvous', 'refused'],
      explained.candidates.map((c) => [
        c.rank == null ? '-' : String(c.rank), c.peerId,
        c.terms.rtt.toFixed(2), c.terms.headroom.toFixed(2), c.terms.reliability.toFixed(2), c.terms.cost.toFixed(2),
        c.score.toFixed(3), String(c.bucket), c.weight.toString(16).padStart(8, '0'), c.refusal ?? ''
      ])
    ))
    return ExitCode.OK
  }
  if (positionals.length > 0) throw new UsageError(`usage error: metagrid placement: unknown subcommand ${JSON.stringify(positionals[0])}; expected explain`)
  const view = await requestJson<PlacementView>(api, '/v1/placement')
  if (json) {
    io.stdout.write(`${JSON.stringify(view, null, 2)}\n`)
    return ExitCode.OK
  }
  io.stdout.write(`node ${view.self}  candidates ${view.candidates.length}  digest ${view.digest.slice(0, 16)}\n\n`)
  io.stdout.write(renderTable(
    ['shard', 'layer', 'home', 'host', 'replicas', 'lease holder', 'epoch', 'expires'],
    view.shards.map((s) => [
      s.shard, `${s.layer}/${s.consistency}`, homeColumn(s), short(s.host) + (s.overflow ? '*' : ''), s.replicas.map(short).join(' '),
      short(s.lease?.holder), String(s.lease?.epoch ?? '-'), s.lease == null ? '-' : s.lease.valid ? inMs(s.lease.expiresAt) : 'lapsed'
    ])
  ))
  return ExitCode.OK
}

/** The home region, and the regions it overflows into when its scope is wider ("US→US+EU"). */
function homeColumn (s: PlacementView['shards'][number]): string {
  if (s.homeRegion == null) return '-'
  const scope = s.scope?.join('+') ?? '*'
  return scope === s.homeRegion ? s.homeRegion : `${s.homeRegion}→${scope}`
}
