import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../../daemon/config/load.ts'
import { configLeaves } from '../../daemon/config/env.ts'
import { configSchema, defaultDataDir } from '../../daemon/config/schema.ts'
import { TestBed } from '../helpers/daemons.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())

const PEER = '12D3KooWNFBn5sWgNob1oDEUEkPbomk8gWA39jVo8QBQSF42p4PR'

async function configFile (content: unknown): Promise<string> {
  const dir = await bed.tempDir()
  const path = join(dir, 'config.json')
  await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content))
  return path
}

async function failure (promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(() => { throw new Error('expected a ConfigError') }, (e: unknown) => e)
  expect(err).toBeInstanceOf(ConfigError)
  const message = (err as Error).message
  expect(message.includes('\n')).toBe(false)
  return message
}

describe('config', () => {
  it('runs on embedded defaults alone', async () => {
    const { config } = await loadConfig({ env: { HOME: '/home/op' } })
    expect(config).toMatchObject({
      dataDir: '/home/op/.local/share/metagrid',
      listen: ['/ip4/0.0.0.0/tcp/0'],
      api: '127.0.0.1:7311',
      bootstrap: [],
      logLevel: 'info',
      connections: { maxConnections: 200, dialTimeoutMs: 10_000 }
    })
    expect(config.region).toBeUndefined()
  })

  it('keeps state in systemd StateDirectory when set, else the XDG data home', () => {
    expect(defaultDataDir({ STATE_DIRECTORY: '/var/lib/metagrid' })).toBe('/var/lib/metagrid')
    expect(defaultDataDir({ XDG_DATA_HOME: '/x' })).toBe('/x/metagrid')
  })

  it('lets flags win over env and env over file, and replaces lists instead of appending', async () => {
    const file = await configFile({ api: '127.0.0.1:1000', region: 'DE', listen: ['/ip4/0.0.0.0/tcp/1', '/ip4/0.0.0.0/tcp/2'], logLevel: 'warn' })
    const { config, sources } = await loadConfig({
      file,
      env: { METAGRID_API: '127.0.0.1:2000', METAGRID_REGION: 'FR', METAGRID_LISTEN: '/ip4/127.0.0.1/tcp/3' },
      flags: [{ path: ['api'], value: '127.0.0.1:3000', flag: 'api' }]
    })
    expect(config.api).toBe('127.0.0.1:3000')
    expect(config.region).toBe('FR')
    expect(config.listen).toEqual(['/ip4/127.0.0.1/tcp/3'])
    expect(config.logLevel).toBe('warn')
    expect(sources.get('api')).toBe('flag --api')
    expect(sources.get('region')).toBe('env METAGRID_REGION')
    expect(sources.get('logLevel')).toBe(`file ${file}`)
  })

  it('maps every nested key to an environment variable and coerces numbers', async () => {
    const names = configLeaves(configSchema).map((leaf) => leaf.env)
    expect(names).toContain('METAGRID_CONNECTIONS_MAX_CONNECTIONS')
    expect(names).toContain('METAGRID_DATA_DIR')
    expect(names).toContain('METAGRID_CATALOG_MEMORY_MIB')
    expect(names).toContain('METAGRID_CATALOG_COST_PER_GIB_EGRESS')
    const { config } = await loadConfig({ env: { METAGRID_CONNECTIONS_MAX_CONNECTIONS: '42', METAGRID_BOOTSTRAP: `/ip4/10.0.0.1/tcp/4001/p2p/${PEER}, /ip4/10.0.0.2/tcp/4001/p2p/${PEER}` } })
    expect(config.connections.maxConnections).toBe(42)
    expect(config.bootstrap).toHaveLength(2)
  })

  it('resolves a relative data directory in a file against the file, and on the command line against the cwd', async () => {
    const file = await configFile({ dataDir: 'state' })
    const { config } = await loadConfig({ file, env: {} })
    expect(config.dataDir).toBe(join(file, '..', 'state'))
    const fromFlag = await loadConfig({ env: {}, cwd: '/srv', flags: [{ path: ['dataDir'], value: 'node', flag: 'data-dir' }] })
    expect(fromFlag.config.dataDir).toBe('/srv/node')
  })

  it('names an unknown key in the file and what it expected', async () => {
    const file = await configFile({ lisen: ['/ip4/0.0.0.0/tcp/1'] })
    const message = await failure(loadConfig({ file, env: {} }))
    expect(message).toMatch(/unknown key "lisen"/)
    expect(message).toContain(file)
    expect(message).toMatch(/expected one of: dataDir, listen/)
  })

  it('names an unknown nested key', async () => {
    const file = await configFile({ connections: { maxConnection: 5 } })
    const message = await failure(loadConfig({ file, env: {} }))
    expect(message).toMatch(/unknown key "connections.maxConnection".*expected one of: maxConnections/)
  })

  it('names an unknown METAGRID_ variable', async () => {
    const message = await failure(loadConfig({ env: { METAGRID_LISTN: '/ip4/0.0.0.0/tcp/1' } }))
    expect(message).toMatch(/unknown environment variable METAGRID_LISTN; expected one of: .*METAGRID_LISTEN/)
  })

  it.each([
    ['flag', { flags: [{ path: ['api'], value: 'localhost', flag: 'api' }] }, /api = "localhost" \(from flag --api\): expected HOST:PORT/],
    ['env', { env: { METAGRID_API: '127.0.0.1:99999' } }, /api = "127.0.0.1:99999" \(from env METAGRID_API\): expected HOST:PORT/],
    ['env number', { env: { METAGRID_CONNECTIONS_MAX_CONNECTIONS: 'lots' } }, /connections.maxConnections = "lots" \(from env METAGRID_CONNECTIONS_MAX_CONNECTIONS\): .*expected number/],
    ['region', { env: { METAGRID_REGION: 'Germany' } }, /region = "Germany" .*ISO 3166/],
    ['log level', { flags: [{ path: ['logLevel'], value: 'loud', flag: 'log-level' }] }, /logLevel = "loud" \(from flag --log-level\): .*"info"/],
    ['listen', { flags: [{ path: ['listen'], value: ['tcp://0.0.0.0:1'], flag: 'listen' }] }, /listen.0 = "tcp:\/\/0.0.0.0:1" .*expected a multiaddr/],
    ['bootstrap without peer id', { env: { METAGRID_BOOTSTRAP: '/ip4/10.0.0.1/tcp/4001' } }, /bootstrap.0 = .*expected a multiaddr ending in \/p2p\/<peer id>/]
  ])('rejects a bad value (%s) naming key, value, source and expectation', async (_name, input, pattern) => {
    const message = await failure(loadConfig({ env: {}, ...input }))
    expect(message).toMatch(/^config error: /)
    expect(message).toMatch(pattern)
  })

  it('reports an unreadable or malformed file', async () => {
    expect(await failure(loadConfig({ file: '/nonexistent/metagrid.json', env: {} }))).toMatch(/cannot read config file .*ENOENT/)
    expect(await failure(loadConfig({ file: await configFile('{"api": '), env: {} }))).toMatch(/is not valid JSON/)
    expect(await failure(loadConfig({ file: await configFile('[1]'), env: {} }))).toMatch(/must hold a JSON object, found an array/)
  })

  it('takes the file from METAGRID_CONFIG', async () => {
    const dir = await bed.tempDir()
    await mkdir(join(dir, 'etc'))
    await writeFile(join(dir, 'etc', 'metagrid.json'), JSON.stringify({ region: 'JP' }))
    const { config } = await loadConfig({ env: { METAGRID_CONFIG: join(dir, 'etc', 'metagrid.json') } })
    expect(config.region).toBe('JP')
  })
})
