/**
 * `metagrid start`: run a node until SIGTERM or SIGINT.
 */
import { ConfigError, loadConfig } from '../config/load.ts'
import { parseCommandLine, stringValue, UsageError } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import { SystemdNotifier } from '../systemd.ts'
import { reportUnhandledRejections, untilSignalled } from '../lifecycle.ts'
import { createLogger } from '../log/logger.ts'
import { MetagridNode } from '../node.ts'
import type { CommandIO } from '../cli/io.ts'
import type { ParseArgsOptionsConfig } from 'node:util'

/** Each flag and the config key it sets; every one of them also has a config-file key and a METAGRID_* variable. */
export const START_FLAGS = {
  'data-dir': { type: 'string', path: ['dataDir'] },
  listen: { type: 'string', multiple: true, path: ['listen'] },
  announce: { type: 'string', multiple: true, path: ['announce'] },
  api: { type: 'string', path: ['api'] },
  bootstrap: { type: 'string', multiple: true, path: ['bootstrap'] },
  region: { type: 'string', path: ['region'] },
  'log-level': { type: 'string', path: ['logLevel'] },
  'log-format': { type: 'string', path: ['logFormat'] }
} as const

const OPTIONS: ParseArgsOptionsConfig = {
  config: { type: 'string' },
  ...Object.fromEntries(Object.entries(START_FLAGS).map(([name, flag]) => [name, { type: flag.type, multiple: 'multiple' in flag }]))
}

/** The exit code for an error that stopped the node from starting. */
function exitCodeFor (err: unknown): ExitCodeValue {
  switch ((err as Error).name) {
    case 'KeyFileError':
    case 'DataDirLockedError':
    case 'StorageOpenError':
    case 'ShardStoreError':
      return ExitCode.DATA_DIR
    case 'AddressInUseError':
      return ExitCode.ADDRESS
    case 'PolicyError':
    case 'FederationFileError':
      return ExitCode.USAGE
    default:
      return (err as NodeJS.ErrnoException).code === 'EACCES' ? ExitCode.DATA_DIR : ExitCode.FAILURE
  }
}

export async function startCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  let loaded
  try {
    const { values } = parseCommandLine('start', args, OPTIONS)
    const flags = Object.entries(START_FLAGS)
      .filter(([name]) => values[name] != null)
      .map(([name, flag]) => ({ path: [...flag.path], value: values[name], flag: name }))
    loaded = await loadConfig({ file: stringValue(values.config), env: io.env, flags })
  } catch (err) {
    if (err instanceof ConfigError || err instanceof UsageError) {
      io.stderr.write(`${err.message}\n`)
      return ExitCode.USAGE
    }
    throw err
  }

  const { config } = loaded
  const logger = createLogger({ level: config.logLevel, format: config.logFormat })
  reportUnhandledRejections(logger)
  // Signal handlers go in before anything starts: a SIGTERM that arrives during start-up (or a
  // moment after the ready line) must stop the node cleanly, not meet Node's default action.
  let node: MetagridNode | undefined
  let starting: Promise<unknown> = Promise.resolve()
  const systemd = SystemdNotifier.fromEnv(io.env, logger)
  const shutdown = untilSignalled(async () => {
    systemd?.stopping()
    await starting.catch(() => {})
    await node?.stop()
  }, logger)
  try {
    starting = (async () => {
      node = await MetagridNode.create({ config, logger })
      return node.start()
    })()
    const ready = await starting as Awaited<ReturnType<MetagridNode['start']>>
    if (!config.api.startsWith('127.') && !config.api.startsWith('[::1]') && !config.api.startsWith('localhost:')) {
      logger.warn({ code: 'API_NOT_LOOPBACK', api: config.api }, 'the HTTP API listens beyond loopback; anyone who can reach it can read node state')
    }
    // Scripts wait for this line, so it is written at any level but silent.
    const announce = logger.isLevelEnabled('info') || config.logLevel === 'silent' ? logger : logger.child({}, { level: 'info' })
    announce.info(ready, 'ready')
    systemd?.ready(`serving ${ready.peerId}; API ${ready.api}`)
  } catch (err) {
    const code = exitCodeFor(err)
    logger.fatal({ code: (err as Error).name ?? 'START_FAILED', err: code === ExitCode.FAILURE ? err : undefined }, (err as Error).message)
    return code
  }
  return shutdown
}
