/**
 * Token revocations over HTTP: `POST /v1/tokens/revocations` `{ revocation:
 * base64url }` records a signed `metagrid.revocation/v1` (made with
 * `metagrid token revoke`) and spreads it to every node through
 * `sys.revocations`; `GET /v1/tokens/revocations/:cid` says who revoked a
 * token. A revocation is self-authenticating (it only counts against chains
 * its signer is in), but it takes room, so beyond a loopback API posting one
 * needs a token granting `revoke` on `token:<cid>`.
 */
import { z } from 'zod'
import { badRequest, parseInput } from '../errors.ts'
import { StatementError } from '../../../attest/statement.ts'
import { verifyRevocation } from '../../../attest/token.ts'
import type { RevocationLedger } from '../../../p2p/revocations.ts'
import type { Authorize } from '../authorize.ts'
import type { FastifyInstance } from 'fastify'

const body = z.strictObject({ revocation: z.string().min(1).max(8192).regex(/^[A-Za-z0-9+/_-]+={0,2}$/, { error: 'expected base64url' }) })
const params = z.strictObject({ cid: z.string().min(8).max(128) })

export function registerTokenRoutes (app: FastifyInstance, deps: { revocations: RevocationLedger, authorize: Authorize }): void {
  app.post('/v1/tokens/revocations', async (request) => {
    const { revocation } = parseInput(body, request.body, 'body')
    const bytes = new Uint8Array(Buffer.from(revocation, 'base64url'))
    try {
      const verified = await verifyRevocation(bytes, Date.now())
      await deps.authorize(request, `token:${verified.cid}`, 'revoke')
      await deps.revocations.add(bytes)
      return { cid: verified.cid, revokedBy: verified.revoker, expiresAt: verified.expiresAt }
    } catch (err) {
      if (err instanceof StatementError) throw badRequest('BAD_REVOCATION', err.message)
      throw err
    }
  })

  app.get('/v1/tokens/revocations/:cid', async (request) => {
    const { cid } = parseInput(params, request.params, 'params')
    return { cid, revokedBy: [...deps.revocations.revocations().revokedBy(cid)] }
  })
}
