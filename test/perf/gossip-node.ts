/**
 * One real gossipsub node for the simulator's calibration (sim.bench.ts):
 * tcp, noise, yamux, identify and gossipsub with the daemon's signature
 * policy and score parameters, subscribed to one topic, publishing a payload of SIZE bytes every
 * INTERVAL ms (as a region's load reports do). It prints its listen address,
 * dials the addresses given after the two numbers, and runs until killed.
 *
 *   node test/perf/gossip-node.ts SIZE INTERVAL [ADDR...]
 */
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { metagridScoreParams } from '../../p2p/gossip/scoring.ts'

const [size, interval, ...peers] = process.argv.slice(2)
const bytes = Number(size)
const everyMs = Number(interval)
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionManager: { maxConnections: 1_000 },
  services: {
    identify: identify(),
    // The daemon's settings: its signature policy and score parameters (which let many peers share a loopback address).
    pubsub: gossipsub({ globalSignaturePolicy: 'StrictSign', allowPublishToZeroTopicPeers: true, emitSelf: false, scoreParams: metagridScoreParams() })
  }
})
const topic = 'metagrid/region/telemetry/1'
node.services.pubsub.subscribe(topic)
for (const addr of peers) await node.dial(multiaddr(addr)).catch(() => {})
process.stdout.write(`${node.getMultiaddrs()[0]!.toString()}\n`)
let seq = 0
setTimeout(() => {
  setInterval(() => {
    const payload = new Uint8Array(bytes)
    new DataView(payload.buffer).setUint32(0, seq++)
    void node.services.pubsub.publish(topic, payload).catch(() => {})
  }, everyMs)
}, Math.random() * everyMs)
// SIGUSR2: how connected this node is (connections, peers in the topic, mesh peers), on stderr.
process.on('SIGUSR2', () => {
  const pubsub = node.services.pubsub as unknown as { getSubscribers: (t: string) => unknown[], getMeshPeers?: (t: string) => unknown[] }
  process.stderr.write(`connections=${node.getConnections().length} subscribers=${pubsub.getSubscribers(topic).length} mesh=${pubsub.getMeshPeers?.(topic).length ?? -1}\n`)
})
process.on('SIGTERM', () => { void Promise.resolve(node.stop()).then(() => process.exit(0)) })
