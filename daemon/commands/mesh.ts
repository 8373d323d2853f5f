/**
 * `metagrid mesh [--api URL] [--json]`: the mesh as this node sees it.
 */
import { requestJson, resolveApiUrl } from '../cli/api-client.ts'
import { renderTable } from '../cli/table.ts'
import { parseCommandLine, stringValue } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import type { CommandIO } from '../cli/io.ts'
import type { MeshView } from '../../p2p/mesh.ts'

const percent = (fraction: number | undefined): string => fraction == null ? '-' : `${Math.round(fraction * 100)}%`
const ms = (value: number | null | undefined): string => value == null ? '-' : `${value < 10 ? value.toFixed(1) : Math.round(value)}ms`
const ago = (milliseconds: number): string => milliseconds < 1000 ? `${milliseconds}ms` : milliseconds < 120_000 ? `${Math.round(milliseconds / 1000)}s` : `${Math.round(milliseconds / 60_000)}m`

export async function meshCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values } = parseCommandLine('mesh', args, { api: { type: 'string' }, json: { type: 'boolean' } })
  const api = resolveApiUrl(stringValue(values.api), io.env)
  const view = await requestJson<MeshView>(api, '/v1/mesh')
  if (values.json === true) {
    io.stdout.write(`${JSON.stringify(view, null, 2)}\n`)
    return ExitCode.OK
  }
  io.stdout.write(`this node ${view.self.peerId}  coordinate error ${view.self.coordinate.error.toFixed(2)}  cpu ${percent(view.self.load?.cpu)}  mem ${percent(view.self.load?.memory)}\n\n`)
  io.stdout.write(renderTable(
    ['peer', 'state', 'for', 'heard', 'cpu', 'mem', 'queue', 'shards', 'rtt est', 'rtt meas', 'score', 'trust'],
    view.peers.map((peer: MeshView['peers'][number] & { trust?: string }) => [
      peer.peerId,
      peer.state,
      ago(peer.sinceMs),
      `${ago(peer.lastHeardMsAgo)} ago`,
      percent(peer.load?.cpu),
      percent(peer.load?.memory),
      String(peer.load?.queue ?? '-'),
      String(peer.load?.shards ?? '-'),
      ms(peer.rttEstimateMs),
      ms(peer.rttMeasuredMs),
      peer.gossipScore.toFixed(1),
      // A node placement will never choose as a host is marked.
      peer.trust == null || peer.trust === 'trusted' || peer.trust === 'open-mesh' ? (peer.trust ?? '-') : `${peer.trust} (never hosts)`
    ])
  ))
  return ExitCode.OK
}
