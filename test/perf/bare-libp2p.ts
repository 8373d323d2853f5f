/**
 * The alternative beside an idle metagrid node in the daemon bench: a bare
 * libp2p 3 node with the same services (tcp, noise, yamux, identify, ping,
 * kad-dht in server mode, gossipsub subscribed to one topic) and nothing of
 * metagrid's own. It prints its listen address on stdout, dials the
 * addresses given as arguments and idles until killed.
 */
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({ clientMode: false, peerInfoMapper: passthroughMapper }),
    pubsub: gossipsub({ allowPublishToZeroTopicPeers: true })
  }
})
node.services.pubsub.subscribe('bench')
for (const addr of process.argv.slice(2)) await node.dial(multiaddr(addr)).catch(() => {})
process.stdout.write(`${node.getMultiaddrs()[0]!.toString()}\n`)
process.on('SIGTERM', () => { void Promise.resolve(node.stop()).then(() => process.exit(0)) })
