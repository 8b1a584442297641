/**
 * @guoce/snapshotter — a containerd proxy snapshotter: containerd.services.snapshots.v1 over a unix socket,
 * overlayfs snapshots exactly as containerd's own overlayfs snapshotter makes them, metadata persisted in
 * one atomically replaced file, and a seam (RemoteLayerMounter) for layers mounted without a download.
 *
 * ```ts
 * import { startSnapshotter } from '@guoce/snapshotter'
 * const s = await startSnapshotter({ root: '/var/lib/guoce/snapshotter', socket: '/run/guoce/snapshotter.sock' })
 * // containerd config: [proxy_plugins.guoce] type = "snapshot" address = "/run/guoce/snapshotter.sock"
 * await s.stop()
 * ```
 */
import type { Logger } from '@guoce/interface'
import { Snapshotter, type SnapshotterInit } from './snapshotter.js'
import { serveSnapshots } from './server.js'

export { Snapshotter, diskUsage, type SnapshotterInit, type SnapshotInfo, type Mount, type Usage } from './snapshotter.js'
export { serveSnapshots, snapshotsClient, snapshotsHandlers, type SnapshotServer } from './server.js'
export { remoteLayerOf, type RemoteLayer, type RemoteLayerMounter } from './remote.js'
export { ociLayoutMounter, chainIds, type OciLayoutMounterInit } from './oci-mounter.js'
export { registryMounter, type RegistryMounter, type RegistryMounterInit, type RegistryMounterStats } from './registry-mounter.js'
export { parseFilter } from './filters.js'
export * from './errors.js'
export * from './constants.js'
export { PROTO_DIR, SNAPSHOTS_PROTO, LOADER_OPTIONS, snapshotsProto } from './proto.js'
export type { SnapshotsClient } from './gen/containerd/services/snapshots/v1/Snapshots.js'

export interface StartSnapshotterInit extends SnapshotterInit { socket: string }
export interface RunningSnapshotter { snapshotter: Snapshotter, socket: string, stop: () => Promise<void> }

/** Opens the snapshotter at `root` and serves it on `socket`. stop() closes the socket; mounts stay (containers keep them). */
export async function startSnapshotter (init: StartSnapshotterInit): Promise<RunningSnapshotter> {
  const log: Logger | undefined = init.log?.child({ component: 'snapshotter' })
  const snapshotter = await Snapshotter.open({ ...init, ...(log != null ? { log } : {}) })
  const nullLog: Logger = { debug () {}, info () {}, warn () {}, error () {}, child () { return nullLog } }
  const server = await serveSnapshots(snapshotter, init.socket, log ?? nullLog)
  return { snapshotter, socket: init.socket, stop: async () => { await server.close() } }
}
