/**
 * Who may write through the API. The API on loopback belongs to the node's
 * operator: writes from loopback need nothing more. A write from anywhere
 * else, and every write when the API is bound beyond loopback, must carry a
 * capability token (`Authorization: Bearer <base64url token>`) that:
 *
 * - names this node as its audience (a token for another node, or one a
 *   client holds for itself, is not an invocation of this one: the client
 *   signs one addressed to this node with its own token as proof);
 * - chains to this node's own key (or a trusted operator key) and grants the
 *   ability on the resource;
 * - has no link revoked (revocations replicated through `sys.revocations`);
 * - if it is single-use, was not presented before.
 */
import { isIP } from 'node:net'
import { ApiError } from './errors.ts'
import { covers, TokenError, verifyToken, type Capability, type ReplayGuard, type RevocationList } from '../../attest/token.ts'
import type { FastifyRequest } from 'fastify'

export type Authorize = (request: FastifyRequest, resource: string, ability: string) => Promise<void>

export function isLoopbackHost (host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').replace(/^::ffff:/, '')
  return bare === 'localhost' || bare === '::1' || (isIP(bare) === 4 && bare.startsWith('127.'))
}

export interface AuthorizeOptions {
  /** The host the API is bound to. */
  apiHost: string
  /** This node's peer id: the audience every token presented here must name. */
  audience: string
  /** Peer ids whose keys may root a token chain: this node, and trusted operators. */
  roots: () => ReadonlySet<string>
  /** The revocations known now. */
  revocations?: () => RevocationList
  /** Takes each single-use token once. */
  replay?: ReplayGuard
}

const TOKEN_CODES: Partial<Record<TokenError['check'], string>> = { 'proof-audience': 'TOKEN_AUDIENCE', revoked: 'TOKEN_REVOKED', replayed: 'TOKEN_REPLAYED' }

/** Who a caller is, as far as writes go: the operator on loopback, or the holder of a verified token. */
export type Caller =
  | { kind: 'loopback' }
  | { kind: 'token', capabilities: Capability[], expiresAt: number }

/**
 * One check of a caller, whichever door it came in by: the HTTP API (a bearer
 * header, per request) and a world session (a token in its hello, once per
 * session, its grants checked on every input).
 */
export interface Authenticator {
  /** The caller at `remoteAddress` presenting `token` (null: none). Throws an ApiError when it may not write at all. */
  authenticate (remoteAddress: string, token: Uint8Array | null): Promise<Caller>
  /** Throws an ApiError unless `caller` may do `ability` on `resource` now. */
  permits (caller: Caller, resource: string, ability: string, now?: number): void
}

export function tokenAuthenticator (options: AuthorizeOptions): Authenticator {
  const apiOnLoopback = isLoopbackHost(options.apiHost)
  // The API's error handler logs and counts these (metagrid_api_errors_total{code}).
  const refuse = (status: number, code: string, message: string): ApiError => new ApiError(status, code, message)
  return {
    async authenticate (remoteAddress, bytes) {
      if (apiOnLoopback && isLoopbackHost(remoteAddress)) return { kind: 'loopback' }
      if (bytes == null) throw refuse(401, 'TOKEN_REQUIRED', 'writes to this API need a capability token: Authorization: Bearer <token>')
      try {
        const token = await verifyToken(bytes, {
          now: Date.now(),
          audience: options.audience,
          isRoot: (issuer) => options.roots().has(issuer),
          ...(options.revocations != null ? { revocations: options.revocations() } : {}),
          ...(options.replay != null ? { replay: options.replay } : {})
        })
        return { kind: 'token', capabilities: token.capabilities, expiresAt: token.expiresAt }
      } catch (err) {
        // A proof addressed to the wrong issuer is a broken chain, not a token for another node.
        if (err instanceof TokenError) throw refuse(403, (err.check !== 'proof-audience' || err.depth === 0 ? TOKEN_CODES[err.check] : undefined) ?? 'TOKEN_INVALID', err.message)
        throw err
      }
    },
    permits (caller, resource, ability, now = Date.now()) {
      if (caller.kind === 'loopback') return
      if (now >= caller.expiresAt) throw refuse(401, 'TOKEN_EXPIRED', 'the session\'s token has expired; reconnect with a fresh one')
      if (!caller.capabilities.some((granted) => covers(granted, { with: resource, can: ability }))) {
        throw refuse(403, 'TOKEN_SCOPE', `the token does not grant ${ability} on ${resource}`)
      }
    }
  }
}

/** The HTTP API's check: the bearer header, per request. */
export function tokenAuthorizer (authenticator: Authenticator): Authorize {
  return async (request, resource, ability) => {
    const header = request.headers.authorization
    const bytes = header?.startsWith('Bearer ') === true ? Buffer.from(header.slice('Bearer '.length).trim(), 'base64url') : null
    const caller = await authenticator.authenticate(request.socket.remoteAddress ?? '', bytes)
    authenticator.permits(caller, resource, ability)
  }
}
