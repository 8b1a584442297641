import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { preSharedKey } from '@libp2p/pnet'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { SOCKET_INACTIVITY_TIMEOUT_MS } from './constants.js'

export type { Libp2p } from 'libp2p'

export interface NodeInit {
  /** multiaddrs to listen on, e.g. `/ip4/127.0.0.1/tcp/0` */
  listen: string[]
  privateKey?: PrivateKey
  /** pre-shared cluster key in the libp2p pnet "swarm.key" format; keeps outsiders off the swarm */
  clusterKey?: Uint8Array
}

/** A libp2p node with TCP + Noise + yamux, and nothing else (no discovery, no DHT). */
export async function createNode (init: NodeInit): Promise<Libp2p> {
  return await createLibp2p({
    ...(init.privateKey != null ? { privateKey: init.privateKey } : {}),
    addresses: { listen: init.listen },
    transports: [tcp({
      inboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS,
      outboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS,
      dialOpts: { noDelay: true },
      listenOpts: { noDelay: true }
    })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ maxMessageSize: 256 * 1024 })],
    ...(init.clusterKey != null ? { connectionProtector: preSharedKey({ psk: init.clusterKey }) } : {}),
    connectionManager: { maxConnections: 1024, inboundConnectionThreshold: 1000, maxIncomingPendingConnections: 256 },
    connectionMonitor: { enabled: false }
  })
}

/** The node's identity key, created on first use and kept at `path` (0600) so the PeerId survives restarts. */
export async function loadOrCreateKey (path: string): Promise<PrivateKey> {
  try {
    return privateKeyFromProtobuf(await readFile(path))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const key = await generateKeyPair('Ed25519')
  await mkdir(dirname(path), { recursive: true })
  const tmp = `${path}.tmp-${process.pid}`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 })
  await rename(tmp, path)
  return key
}
