/**
 * `metagrid status [--api URL] [--json]`: what a running node says about itself.
 */
import { requestJson, resolveApiUrl } from '../cli/api-client.ts'
import { renderFields } from '../cli/table.ts'
import { parseCommandLine, stringValue } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import type { CommandIO } from '../cli/io.ts'

interface Status {
  peerId: string
  version: string
  node: string
  region: string | null
  addrs: string[]
  peers: number
  uptimeS: number
  dht: { mode: string, routingTable: number }
}

function duration (seconds: number): string {
  const d = Math.floor(seconds / 86400)
  const h = Math.floor((seconds % 86400) / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  const s = seconds % 60
  return [d > 0 ? `${d}d` : '', h > 0 ? `${h}h` : '', m > 0 ? `${m}m` : '', `${s}s`].join('')
}

export async function statusCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values } = parseCommandLine('status', args, { api: { type: 'string' }, json: { type: 'boolean' } })
  const api = resolveApiUrl(stringValue(values.api), io.env)
  const status = await requestJson<Status>(api, '/v1/status')
  if (values.json === true) {
    io.stdout.write(`${JSON.stringify(status, null, 2)}\n`)
    return ExitCode.OK
  }
  io.stdout.write(renderFields([
    ['peer id', status.peerId],
    ['version', `${status.version} (node ${status.node})`],
    ['region', status.region ?? '-'],
    ['uptime', duration(status.uptimeS)],
    ['peers', String(status.peers)],
    ['dht', `${status.dht.mode}, ${status.dht.routingTable} in routing table`],
    ['api', api],
    ...status.addrs.map((addr, i): [string, string] => [i === 0 ? 'addrs' : '', addr])
  ]))
  return ExitCode.OK
}
