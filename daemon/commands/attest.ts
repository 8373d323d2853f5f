/**
 * Trust on the command line, all offline except where an API is named:
 *
 *   metagrid key new FILE                 create an Ed25519 key file (0600); prints its peer id
 *   metagrid key id FILE                  the peer id of a key file
 *   metagrid key psk FILE                 create a private-network key (swarm.key format, 0600)
 *   metagrid operator certify --key OPERATOR_KEY --node PEER [--ttl 90d] [--out FILE]
 *                                         a membership certificate for one of the operator's nodes
 *   metagrid attest [--api URL] [--json]  what a node attests: code and config digests, runtime, quote, operator
 *   metagrid token issue --key FILE --audience PEER --cap RESOURCE=ABILITY... [--ttl 1h] [--proof TOKEN]...
 *   metagrid token inspect TOKEN          decode without verifying
 *   metagrid token verify TOKEN --root PEER... [--audience PEER]
 *   metagrid provenance CID [--api URL] [--json]
 *   metagrid provenance export CID --out FILE [--api URL]
 *   metagrid verify FILE [--witness PEER]... [--json]   verify an exported provenance bundle offline
 *
 * Tokens travel as base64url text (the form the API's Authorization header takes).
 */
import { readFile, stat, writeFile } from 'node:fs/promises'
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateEd25519Key } from '../../attest/key-file.ts'
import { ProvenanceError, verifyBundle, type Chain, type WitnessCheck } from '../../attest/provenance.ts'
import { LEDGER_SHARD } from '../../p2p/constants.ts'
import { verifyLeaseRecord } from '../../p2p/placement/lease.ts'
import { issueToken, signRevocation, statementCid, TokenError, verifyToken } from '../../attest/token.ts'
import { signMembership } from '../../attest/attestation.ts'
import { generateKey } from '@libp2p/pnet'
import { requestJson, resolveApiUrl, ApiResponseError } from '../cli/api-client.ts'
import { renderFields, renderTable } from '../cli/table.ts'
import { parseCommandLine, stringValue, UsageError } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import type { CommandIO } from '../cli/io.ts'
import type { PrivateKey } from '@libp2p/interface'

const DURATION = /^(\d+)(s|m|h|d)$/
const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

function durationMs (text: string, flag: string): number {
  const m = DURATION.exec(text)
  if (m == null) throw new UsageError(`usage error: ${flag} ${JSON.stringify(text)}: expected a duration such as 30m, 1h or 7d`)
  return Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS]
}

async function existingKey (path: string | undefined, command: string): Promise<PrivateKey> {
  if (path == null) throw new UsageError(`usage error: ${command} needs --key FILE`)
  try {
    await stat(path)
  } catch {
    throw new UsageError(`usage error: ${command}: no key file at ${path} (create one with: metagrid key new ${path})`)
  }
  return (await loadOrCreateEd25519Key(path)).key
}

/** A token given inline (base64url) or as a file holding it. */
async function tokenBytes (value: string): Promise<Uint8Array> {
  let text = value
  if (!/^[A-Za-z0-9_-]{40,}$/.test(value)) {
    try {
      text = (await readFile(value, 'utf8')).trim()
    } catch {
      throw new UsageError(`usage error: ${JSON.stringify(value.slice(0, 40))} is neither a base64url token nor a readable file`)
    }
  }
  return new Uint8Array(Buffer.from(text, 'base64url'))
}

export async function keyCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { positionals } = parseCommandLine('key', args, {}, 2)
  const [sub, path] = positionals
  if ((sub !== 'new' && sub !== 'id' && sub !== 'psk') || path == null) throw new UsageError('usage error: metagrid key new FILE | key id FILE | key psk FILE')
  if (sub === 'psk') {
    const psk = new Uint8Array(95)
    generateKey(psk)
    await writeFile(path, psk, { flag: 'wx', mode: 0o600 }).catch((err: NodeJS.ErrnoException) => {
      throw new UsageError(`usage error: metagrid key psk: cannot create ${path} (${err.code ?? err.message}); an existing file is not overwritten`)
    })
    io.stdout.write(`wrote a private-network key to ${path}; give it to every node of the mesh (federation.privateNetworkKeyFile)\n`)
    return ExitCode.OK
  }
  if (sub === 'new') {
    const exists = await stat(path).then(() => true, () => false)
    if (exists) throw new UsageError(`usage error: metagrid key new: ${path} exists; it is not overwritten`)
    const { key } = await loadOrCreateEd25519Key(path)
    io.stdout.write(`${peerIdFromPrivateKey(key).toString()}\n`)
    return ExitCode.OK
  }
  io.stdout.write(`${peerIdFromPrivateKey(await existingKey(path, 'metagrid key id')).toString()}\n`)
  return ExitCode.OK
}

export async function tokenCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values, positionals } = parseCommandLine('token', args, {
    key: { type: 'string' }, audience: { type: 'string' }, cap: { type: 'string', multiple: true }, ttl: { type: 'string' },
    proof: { type: 'string', multiple: true }, root: { type: 'string', multiple: true }, json: { type: 'boolean' },
    once: { type: 'boolean' }, api: { type: 'string' }
  }, 2)
  const [sub, token] = positionals
  if (sub === 'issue') {
    const key = await existingKey(stringValue(values.key), 'metagrid token issue')
    const audience = stringValue(values.audience)
    if (audience == null) throw new UsageError('usage error: metagrid token issue needs --audience PEER (the key that will hold or present the token)')
    const caps = (values.cap as string[] | undefined) ?? []
    if (caps.length === 0) throw new UsageError('usage error: metagrid token issue needs --cap RESOURCE=ABILITY, such as --cap shard:default=write')
    const capabilities = caps.map((c) => {
      const at = c.lastIndexOf('=')
      if (at <= 0 || at === c.length - 1) throw new UsageError(`usage error: --cap ${JSON.stringify(c)}: expected RESOURCE=ABILITY`)
      return { with: c.slice(0, at), can: c.slice(at + 1) }
    })
    const now = Date.now()
    const proofs = await Promise.all(((values.proof as string[] | undefined) ?? []).map(tokenBytes))
    const bytes = await issueToken(key, { audience, capabilities, notBefore: now, expiresAt: now + durationMs(stringValue(values.ttl) ?? '1h', '--ttl'), proofs, once: values.once === true })
    io.stdout.write(`${Buffer.from(bytes).toString('base64url')}\n`)
    return ExitCode.OK
  }
  if (sub === 'revoke' && token != null) {
    // Signed with the key of an issuer in the token's chain (its own issuer's, or one above): only those revocations count.
    const key = await existingKey(stringValue(values.key), 'metagrid token revoke')
    const revocation = await signRevocation(key, await statementCid(await tokenBytes(token)))
    const answer = await requestJson<{ cid: string, revokedBy: string }>(resolveApiUrl(stringValue(values.api), io.env), '/v1/tokens/revocations', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ revocation: Buffer.from(revocation).toString('base64url') })
    })
    io.stdout.write(`revoked ${answer.cid} (by ${answer.revokedBy}); every node refuses it once the revocation has spread\n`)
    return ExitCode.OK
  }
  if ((sub === 'inspect' || sub === 'verify') && token != null) {
    const bytes = await tokenBytes(token)
    if (sub === 'inspect') {
      const view = inspect(bytes)
      io.stdout.write(`${JSON.stringify(view, null, 2)}\n`)
      return ExitCode.OK
    }
    const roots = new Set((values.root as string[] | undefined) ?? [])
    if (roots.size === 0) throw new UsageError('usage error: metagrid token verify needs --root PEER (the keys a chain may start from)')
    const audience = stringValue(values.audience)
    try {
      const verified = await verifyToken(bytes, { now: Date.now(), isRoot: (issuer) => roots.has(issuer), ...(audience != null ? { audience } : {}) })
      io.stdout.write(values.json === true
        ? `${JSON.stringify(verified, null, 2)}\n`
        : renderFields([['valid', 'yes'], ['issuer', verified.issuer], ['audience', verified.audience], ['grants', verified.capabilities.map((c) => `${c.can} on ${c.with}`).join(', ')], ['expires', new Date(verified.expiresAt).toISOString()], ['chain', verified.chain.join(' ← ')]]))
      return ExitCode.OK
    } catch (err) {
      if (!(err instanceof TokenError)) throw err
      io.stderr.write(`invalid token: ${err.message}\n`)
      return ExitCode.FAILURE
    }
  }
  throw new UsageError('usage error: metagrid token issue|inspect|verify|revoke (see metagrid help)')
}

/** The token's fields and its proofs', decoded without any check. */
function inspect (bytes: Uint8Array): unknown {
  try {
    const envelope = dagCbor.decode(bytes) as { t: string, p: Uint8Array, k: Uint8Array }
    const payload = dagCbor.decode(envelope.p) as { p: { aud: string, att: unknown, nnc: string, prf: Uint8Array[] }, iat: number, nbf: number, exp: number }
    return {
      type: envelope.t,
      audience: payload.p.aud,
      capabilities: payload.p.att,
      nonce: payload.p.nnc,
      issuedAt: new Date(payload.iat).toISOString(),
      notBefore: new Date(payload.nbf).toISOString(),
      expiresAt: new Date(payload.exp).toISOString(),
      proofs: payload.p.prf.map(inspect)
    }
  } catch (err) {
    throw new UsageError(`usage error: not a metagrid token: ${(err as Error).message}`)
  }
}

function printChain (chain: Chain, io: CommandIO): void {
  const registration = chain.registration == null ? 'none' : `record ${chain.registration.record}, epoch ${chain.registration.epoch}, sequence ${chain.registration.seq}, by ${chain.registration.witness}`
  io.stdout.write(renderFields([['asset', chain.asset], ['registered', registration], ['owner', chain.owner ?? '-'], ['records', String(chain.chain.length)], ['conflicts', chain.conflicts.length === 0 ? 'none' : chain.conflicts.map((c) => `on ${c.prev ?? 'genesis'}: kept ${c.kept}, also ${c.rejected.join(', ')}`).join('; ')]]))
  io.stdout.write('\n')
  io.stdout.write(renderTable(['#', 'kind', 'by', 'to', 'when', 'record'], chain.chain.map((s, i) => [String(i + 1), s.kind + (s.licence != null ? ` (${s.licence})` : ''), s.by, s.to ?? '', new Date(s.issuedAt).toISOString(), s.cid])))
  for (const x of chain.invalid) io.stdout.write(`not in the chain: ${x.cid}: ${x.reason}\n`)
}

export async function provenanceCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values, positionals } = parseCommandLine('provenance', args, { api: { type: 'string' }, json: { type: 'boolean' }, out: { type: 'string' } }, 2)
  const api = resolveApiUrl(stringValue(values.api), io.env)
  if (positionals[0] === 'export') {
    const cid = positionals[1]
    const out = stringValue(values.out)
    if (cid == null || out == null) throw new UsageError('usage error: metagrid provenance export CID --out FILE')
    const response = await fetch(new URL(`/v1/assets/${encodeURIComponent(cid)}/bundle`, api)).catch((err: unknown) => { throw new UsageError(`cannot reach ${api}: ${(err as Error).message}`) })
    if (!response.ok) {
      const body = await response.json().catch(() => ({})) as { error?: { code?: string, message?: string } }
      const code = body.error?.code ?? 'HTTP_ERROR'
      throw new ApiResponseError(response.status, code, `${response.status} ${code}: ${body.error?.message ?? `from ${api}`}`)
    }
    const bundle = new Uint8Array(await response.arrayBuffer())
    await writeFile(out, bundle)
    io.stdout.write(`wrote ${bundle.byteLength} bytes to ${out}; check it anywhere with: metagrid verify ${out}\n`)
    return ExitCode.OK
  }
  const cid = positionals[0]
  if (cid == null || positionals.length > 1) throw new UsageError('usage error: metagrid provenance CID | metagrid provenance export CID --out FILE')
  const chain = await requestJson<Chain>(api, `/v1/assets/${encodeURIComponent(cid)}/provenance`)
  if (values.json === true) io.stdout.write(`${JSON.stringify(chain, null, 2)}\n`)
  else printChain(chain, io)
  return ExitCode.OK
}

/**
 * Who counts as the ledger's registrar offline: the keys given with
 * `--witness`, or else the holder, at the receipt's epoch, of a `sys.ledger`
 * lease record the bundle carries that verifies (its holder's signature and
 * a majority of its voters' grants).
 */
function witnessCheck (pinned: readonly string[], now: number): (leases: readonly Uint8Array[]) => Promise<WitnessCheck> {
  return async (leases) => {
    if (pinned.length > 0) return (receipt) => pinned.includes(receipt.witness)
    const holders = new Map<number, string>()
    for (const record of leases) {
      const lease = await verifyLeaseRecord(record, now).catch(() => null)
      if (lease?.shard === LEDGER_SHARD) holders.set(lease.epoch, lease.holder)
    }
    return (receipt) => holders.get(receipt.epoch) === receipt.witness
  }
}

export async function verifyCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values, positionals } = parseCommandLine('verify', args, { json: { type: 'boolean' }, witness: { type: 'string', multiple: true } }, 1)
  const file = positionals[0]
  if (file == null) throw new UsageError('usage error: metagrid verify FILE (a bundle from metagrid provenance export)')
  let bytes: Uint8Array
  try {
    bytes = await readFile(file)
  } catch (err) {
    throw new UsageError(`usage error: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  try {
    const chain = await verifyBundle(bytes, Date.now(), witnessCheck((values.witness as string[] | undefined) ?? [], Date.now()))
    if (values.json === true) io.stdout.write(`${JSON.stringify({ valid: true, ...chain }, null, 2)}\n`)
    else { io.stdout.write('valid: every signature and link checks out\n'); printChain(chain, io) }
    return ExitCode.OK
  } catch (err) {
    if (!(err instanceof ProvenanceError)) throw err
    io.stderr.write(`invalid bundle: ${err.check}: ${err.detail}\n`)
    return ExitCode.FAILURE
  }
}

export async function operatorCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values, positionals } = parseCommandLine('operator', args, { key: { type: 'string' }, node: { type: 'string' }, ttl: { type: 'string' }, out: { type: 'string' } }, 1)
  if (positionals[0] !== 'certify') throw new UsageError('usage error: metagrid operator certify --key OPERATOR_KEY --node PEER [--ttl 90d] [--out FILE]')
  const key = await existingKey(stringValue(values.key), 'metagrid operator certify')
  const node = stringValue(values.node)
  if (node == null || !/^[1-9A-HJ-NP-Za-km-z]{40,60}$/.test(node)) throw new UsageError('usage error: metagrid operator certify needs --node PEER (the node\'s peer id, from metagrid status)')
  const operator = peerIdFromPrivateKey(key).toString()
  const certificate = await signMembership(key, operator, node, Date.now(), durationMs(stringValue(values.ttl) ?? '90d', '--ttl'))
  const text = `${Buffer.from(certificate).toString('base64url')}\n`
  const out = stringValue(values.out)
  if (out == null) io.stdout.write(text)
  else {
    await writeFile(out, text, { mode: 0o644 })
    io.stdout.write(`wrote the certificate of ${node} (operator ${operator}) to ${out}; point the node's federation.certificateFile at it\n`)
  }
  return ExitCode.OK
}

export async function attestCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values } = parseCommandLine('attest', args, { api: { type: 'string' }, json: { type: 'boolean' } })
  const view = await requestJson<{ node: string, operator: string | null, software: { version: string, codeDigest: string }, configDigest: string, runtime: { node: string, os: string, arch: string }, quote: { kind: string, reason?: string }, expiresAt: number }>(resolveApiUrl(stringValue(values.api), io.env), '/v1/attestation')
  if (values.json === true) {
    io.stdout.write(`${JSON.stringify(view, null, 2)}\n`)
    return ExitCode.OK
  }
  io.stdout.write(renderFields([
    ['node', view.node], ['operator', view.operator ?? 'none (no membership certificate)'], ['software', `metagrid ${view.software.version}`],
    ['code digest', view.software.codeDigest], ['config digest', view.configDigest], ['runtime', `Node ${view.runtime.node}, ${view.runtime.os} ${view.runtime.arch}`],
    ['hardware quote', view.quote.kind === 'none' ? view.quote.reason ?? 'none' : view.quote.kind], ['valid until', new Date(view.expiresAt).toISOString()]
  ]))
  return ExitCode.OK
}
