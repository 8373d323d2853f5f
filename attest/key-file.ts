/**
 * Private keys kept on disk: the node's Ed25519 identity (its peer id) and,
 * later, an operator key. A key is created once, written with mode 0600 via a
 * temporary file, fsync and rename, so a crash never leaves half a key; a
 * key that exists but cannot be read or decoded is an error, never a reason
 * to make a new identity silently.
 */
import { constants } from 'node:fs'
import { open, readFile, rename, rm, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { Ed25519PrivateKey } from '@libp2p/interface'
import { withCachedSigning } from './signing-key.ts'

export class KeyFileError extends Error {
  static override name = 'KeyFileError'
  override name = 'KeyFileError'
  readonly path: string
  constructor (path: string, message: string, options?: ErrorOptions) {
    super(`${message}: ${path}`, options)
    this.path = path
  }
}

export interface LoadedKey {
  key: Ed25519PrivateKey
  created: boolean
  /** Set when the file is readable by group or others, which the caller should report. */
  looseMode?: number
}

async function writeKeyFile (path: string, bytes: Uint8Array): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}`
  const handle = await open(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600)
  try {
    await handle.writeFile(bytes)
    await handle.sync()
  } finally {
    await handle.close()
  }
  try {
    await rename(temporary, path)
  } catch (err) {
    await rm(temporary, { force: true })
    throw err
  }
  // The rename is durable only once the directory entry is on disk.
  const directory = await open(dirname(path), 'r')
  try {
    await directory.sync()
  } finally {
    await directory.close()
  }
}

/** Loads the Ed25519 key at `path`, creating it when (and only when) the file does not exist. */
export async function loadOrCreateEd25519Key (path: string): Promise<LoadedKey> {
  let bytes: Uint8Array
  try {
    bytes = await readFile(path)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'ENOENT') {
      throw new KeyFileError(path, `cannot read key file (${code ?? 'unknown error'})`, { cause: err })
    }
    const key = await generateKeyPair('Ed25519')
    try {
      await writeKeyFile(path, privateKeyToProtobuf(key))
    } catch (writeErr) {
      throw new KeyFileError(path, `cannot write new key file (${(writeErr as NodeJS.ErrnoException).code ?? 'unknown error'})`, { cause: writeErr })
    }
    return { key: withCachedSigning(key), created: true }
  }

  let key
  try {
    key = privateKeyFromProtobuf(bytes)
  } catch (err) {
    throw new KeyFileError(path, 'key file is corrupt (not a libp2p protobuf private key); restore it from backup or move it away to create a new identity', { cause: err })
  }
  if (key.type !== 'Ed25519') {
    throw new KeyFileError(path, `key file holds a ${key.type} key, expected Ed25519`)
  }
  const mode = (await stat(path)).mode & 0o777
  return { key: withCachedSigning(key), created: false, ...((mode & 0o077) !== 0 ? { looseMode: mode } : {}) }
}
