/**
 * `metagrid <command>`: the one entry point for operators and scripts.
 */
import { ApiResponseError, ApiUnreachableError } from './cli/api-client.ts'
import { UsageError } from './cli/usage.ts'
import { devnetCommand } from './commands/devnet.ts'
import { discoverCommand } from './commands/discover.ts'
import { meshCommand } from './commands/mesh.ts'
import { attestCommand, keyCommand, operatorCommand, provenanceCommand, tokenCommand, verifyCommand } from './commands/attest.ts'
import { placementCommand } from './commands/placement.ts'
import { playersCommand } from './commands/players.ts'
import { sloCommand } from './commands/slo.ts'
import { startCommand } from './commands/start.ts'
import { statusCommand } from './commands/status.ts'
import { ExitCode, type ExitCodeValue } from './exit-codes.ts'
import { releaseSignals } from './signals.ts'
import { VERSION } from './version.ts'
import type { CommandIO } from './cli/io.ts'

export const HELP = `metagrid ${VERSION}: peer-to-peer edge node daemon for real-time virtual worlds

usage: metagrid <command> [options]

commands:
  start     run a node until SIGTERM or SIGINT
            [--config FILE] [--data-dir DIR] [--listen MULTIADDR]... [--announce MULTIADDR]...
            [--api HOST:PORT] [--bootstrap MULTIADDR]... [--region CODE] [--log-level LEVEL]
            [--log-format auto|json|pretty]
  devnet    run N nodes on loopback as separate processes, wired by bootstrap
            --nodes N [--data-dir DIR] [--json]
  status    show a running node's status   [--api URL] [--json]
  mesh      show the mesh as a node sees it: states, load, RTT estimated and measured
            [--api URL] [--json]
  discover  find capable nodes, nearest first
            [--need TAG]... [--model NAME] [--region CODE] [--max-cost X] [--currency C]
            [--limit K] [--json] [--api URL | --bootstrap MULTIADDR...]
  placement show who hosts each shard: assignment, lease holder and epoch, digest
            [--api URL] [--json]
  placement explain SHARD
            every candidate's score terms, rank, and the rule that refused it
  players   simulated players on random walks over world sessions, with a report
            --count N --rate HZ [--url WS_URL]... [--api URL] [--duration S] [--radius R]
            [--speed U] [--layer NAME] [--seed N] [--json]
  slo       service level objectives: current value, error budget left, burn rate, shedding
            [--api URL] [--json]
  key       new FILE | id FILE | psk FILE: create an Ed25519 key file, print its peer id, or create a private-network key
  operator  certify --key OPERATOR_KEY --node PEER [--ttl 90d] [--out FILE]: a membership certificate
  attest    [--api URL] [--json]: what the node attests (code and config digests, runtime, quote, operator)
  token     issue --key FILE --audience PEER --cap RESOURCE=ABILITY... [--ttl 1h] [--proof TOKEN]...
            inspect TOKEN | verify TOKEN --root PEER... [--audience PEER]
  provenance CID [--api URL] [--json]      the verified chain of an asset: owner, records, conflicts
            export CID --out FILE         a self-contained bundle anyone can verify offline
  verify    FILE [--json]: verify a provenance bundle offline
  version   print the version
  help      print this text

Every start option is also a config-file key and a METAGRID_* environment variable
(flags win over environment, environment over file). See README.md.
`

type Command = (args: string[], io: CommandIO) => Promise<ExitCodeValue>

const COMMANDS: Record<string, Command> = {
  start: startCommand,
  devnet: devnetCommand,
  status: statusCommand,
  mesh: meshCommand,
  discover: discoverCommand,
  placement: placementCommand,
  players: playersCommand,
  slo: sloCommand,
  key: keyCommand,
  operator: operatorCommand,
  attest: attestCommand,
  token: tokenCommand,
  provenance: provenanceCommand,
  verify: verifyCommand,
  version: async (_args, io) => { io.stdout.write(`${VERSION}\n`); return ExitCode.OK },
  help: async (_args, io) => { io.stdout.write(HELP); return ExitCode.OK }
}

export async function main (argv: string[], io: CommandIO): Promise<ExitCodeValue> {
  const [name, ...args] = argv
  if (name == null || name === '--help' || name === '-h') {
    io.stdout.write(HELP)
    return name == null ? ExitCode.USAGE : ExitCode.OK
  }
  if (name === '--version') return COMMANDS.version!(args, io)
  const command = COMMANDS[name]
  if (command == null) {
    io.stderr.write(`usage error: unknown command ${JSON.stringify(name)}; expected one of: ${Object.keys(COMMANDS).join(', ')}\n`)
    return ExitCode.USAGE
  }
  // start and devnet take buffered signals over with their own handlers; every other command gets default behaviour back.
  if (name !== 'start' && name !== 'devnet') {
    const early = releaseSignals()
    if (early.length > 0) return ExitCode.FAILURE
  }
  try {
    return await command(args, io)
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`${err.message}\n`)
      return ExitCode.USAGE
    }
    if (err instanceof ApiUnreachableError) {
      io.stderr.write(`${err.message}\n`)
      return ExitCode.UNREACHABLE
    }
    if (err instanceof ApiResponseError) {
      io.stderr.write(`error: ${err.message}\n`)
      return ExitCode.FAILURE
    }
    throw err
  }
}
