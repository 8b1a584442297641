/**
 * @packageDocumentation
 *
 * The wire: a libp2p node (TCP + Noise + yamux, optional pre-shared cluster key), the
 * /guoce/scheduler/1 message schema and channel, and the /guoce/piece/1 client and server.
 *
 * ```ts
 * const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
 * await servePieces(node, { provider: store, log })
 * const conn = await PieceConnection.open(other, node.getMultiaddrs())
 * await conn.request({ taskId, numbers: [0, 1], priority: Priority.BACKGROUND }, r => { ... })
 * ```
 */
export * from './constants.js'
export * from './node.js'
export * from './bytes.js'
export * from './messages.js'
export * from './channel.js'
export * from './piece-protocol.js'
export { DataStream, type DataChannelMode, type PieceDuplex } from './data-channel.js'
export * from './logger.js'
export * from './scheduler-client.js'
export * from './reclaim.js'
