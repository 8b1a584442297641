/**
 * @packageDocumentation
 *
 * The peer daemon: task manager with per-piece parent choice (rarest first, endgame), piece
 * verification against seed digests, parent blame, back-to-source fallback, uploads, resume
 * from the store, and the fastify local API.
 *
 * ```ts
 * const daemon = new PeerDaemon({ node, store, scheduler, log }); await daemon.start()
 * const app = buildServer(daemon); await app.listen({ host: '127.0.0.1', port: 65001 })
 * ```
 */
export { PeerDaemon, type PeerDaemonInit, type DaemonStats } from './daemon.js'
export { PeerTask, PiecePolicy, planWanted } from './peer-task.js'
export { taskReader, daemonResolver, storedSource, type ReadSource, type ReaderInit } from './reader.js'
export { PieceWaiters, type WaitOptions } from './piece-waiters.js'
export { errorStatus } from './errors.js'
export { daemonMetrics, READ_SECONDS_BUCKETS, type DaemonMetrics } from './metrics.js'
export { buildServer, listenApi, type ApiOptions } from './api.js'
export * from './constants.js'
