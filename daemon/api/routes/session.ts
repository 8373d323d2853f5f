/**
 * The world session endpoint: `GET /v1/session`, upgraded to a WebSocket
 * (daemon/world/sessions.ts speaks the protocol). The API's Host check runs
 * on the upgrade like on any request; the Origin check a write gets is the
 * session's to make, since the upgrade is a GET.
 */
import websocket from '@fastify/websocket'
import { MAX_SESSION_FRAME_BYTES, SESSION_PATH } from '../../../client/protocol.ts'
import { crossOrigin } from '../browser-guard.ts'
import type { WorldSessions } from '../../world/sessions.ts'
import type { FastifyInstance } from 'fastify'

export function registerSessionRoute (app: FastifyInstance, sessions: WorldSessions): void {
  void app.register(websocket, { options: { maxPayload: MAX_SESSION_FRAME_BYTES } })
  void app.register(async (scoped) => {
    scoped.get(SESSION_PATH, { websocket: true }, (socket, request) => {
      sessions.attach(socket, request.socket.remoteAddress ?? '', crossOrigin(request), request.socket)
    })
  })
}
