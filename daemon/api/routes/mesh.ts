/**
 * `GET /v1/mesh`: every member this node knows, its state, last load report,
 * coordinate, the RTT to it, estimated and measured, and its standing under
 * the federation policy (`trust`, `operator`): a node of an unknown operator
 * may be in the mesh but is never chosen to host.
 *
 * `GET /v1/attestation`: this node's current signed attestation (base64url)
 * and what it says.
 */
import { verifyAttestation } from '../../../attest/attestation.ts'
import type { Mesh } from '../../../p2p/mesh.ts'
import type { Trust } from '../../../attest/attestation.ts'
import type { FastifyInstance } from 'fastify'

export interface MeshRouteComponents {
  mesh: Mesh
  trustOf?: (peerId: string) => { trust: Trust, operator: string | null, codeDigest: string | null } | undefined
  attestation?: () => Uint8Array | undefined
}

export function registerMeshRoutes (app: FastifyInstance, deps: MeshRouteComponents): void {
  app.get('/v1/mesh', async () => {
    const view = deps.mesh.view()
    const standing = (peerId: string): { trust: Trust | 'unknown', operator: string | null } => {
      const t = deps.trustOf?.(peerId)
      return { trust: t?.trust ?? 'unknown', operator: t?.operator ?? null }
    }
    return { self: { ...view.self, ...standing(view.self.peerId) }, peers: view.peers.map((peer) => ({ ...peer, ...standing(peer.peerId) })) }
  })

  app.get('/v1/attestation', async (_request, reply) => {
    const signed = deps.attestation?.()
    if (signed == null) return reply.status(503).send({ error: { code: 'NOT_YET', message: 'the node has not attested yet' } })
    return { attestation: Buffer.from(signed).toString('base64url'), ...(await verifyAttestation(signed, Date.now())), membership: undefined }
  })
}
