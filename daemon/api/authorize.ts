/**
 * Who may write through the API. The API on loopback belongs to the node's
 * operator: writes from loopback need nothing more. A write from anywhere
 * else, and every write when the API is bound beyond loopback, must carry a
 * capability token (`Authorization: Bearer <base64url token>`) whose chain
 * roots in this node's own key (or a trusted operator key) and grants the
 * ability on the resource. Tokens are bearer credentials: keep them short-lived.
 */
import { isIP } from 'node:net'
import { ApiError } from './errors.ts'
import { covers, TokenError, verifyToken, type RevocationList } from '../../attest/token.ts'
import type { FastifyRequest } from 'fastify'

export type Authorize = (request: FastifyRequest, resource: string, ability: string) => Promise<void>

export function isLoopbackHost (host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').replace(/^::ffff:/, '')
  return bare === 'localhost' || bare === '::1' || (isIP(bare) === 4 && bare.startsWith('127.'))
}

export interface AuthorizeOptions {
  /** The host the API is bound to. */
  apiHost: string
  /** Peer ids whose keys may root a token chain: this node, and trusted operators. */
  roots: () => ReadonlySet<string>
  revocations?: RevocationList
}

export function tokenAuthorizer (options: AuthorizeOptions): Authorize {
  const apiOnLoopback = isLoopbackHost(options.apiHost)
  return async (request, resource, ability) => {
    if (apiOnLoopback && isLoopbackHost(request.socket.remoteAddress ?? '')) return
    // The API's error handler logs and counts these (metagrid_api_errors_total{code}).
    const refuse = (status: number, code: string, message: string): ApiError => new ApiError(status, code, message)
    const header = request.headers.authorization
    if (header == null || !header.startsWith('Bearer ')) {
      throw refuse(401, 'TOKEN_REQUIRED', 'writes to this API need a capability token: Authorization: Bearer <token>')
    }
    const bytes = Buffer.from(header.slice('Bearer '.length).trim(), 'base64url')
    let token
    try {
      token = await verifyToken(bytes, {
        now: Date.now(),
        isRoot: (issuer) => options.roots().has(issuer),
        ...(options.revocations != null ? { revocations: options.revocations } : {})
      })
    } catch (err) {
      if (err instanceof TokenError) throw refuse(403, 'TOKEN_INVALID', err.message)
      throw err
    }
    if (!token.capabilities.some((granted) => covers(granted, { with: resource, can: ability }))) {
      throw refuse(403, 'TOKEN_SCOPE', `the token does not grant ${ability} on ${resource}`)
    }
  }
}
