/**
 * What every swarm host runs, seed peer and peer daemon alike: its init, serving the store's pieces,
 * the register fields of a stored task and the announcement of what it holds.
 */
import type { Libp2p } from 'libp2p'
import type { Logger } from '@guoce/interface'
import type { TaskStore, StoredTask } from '@guoce/store'
import { credentialHash, taskIdFrom } from '@guoce/content'
import { servePieces, dataChannelFor, ANNOUNCE_BATCH, type PeerMessage, type PieceChannel, type PieceServer, type PieceProvider } from '@guoce/transfer'

/** What every swarm host (seed peer or peer daemon) is built from. */
export interface HostInit {
  node: Libp2p
  store: TaskStore
  /** scheduler multiaddr with /p2p/PEERID */
  scheduler: string
  log: Logger
  /** concurrent children this host feeds (seed @default 16, daemon @default UPLOAD_SLOTS) */
  uploadSlots?: number
  idc?: string
  location?: string
  originTimeoutMs?: number
  /**
   * How piece bytes travel to and from this host.
   * @default 'stream'
   */
  pieceChannel?: PieceChannel
}

/**
 * The register fields of a stored task: its reference as kept in the store's meta (doc/PROTOCOL.md
 * "Register"); undefined when the task id does not derive from them (a task stored under an older id
 * scheme), which the scheduler would refuse.
 */
export function registerRef (t: StoredTask): { url: string, headers: Record<string, string>, digest?: string, tag?: string, version?: string, credentials?: string, pieceLength?: number } | undefined {
  const m = t.meta
  const url = m.url ?? ''
  let credentials = m.credentials
  try {
    credentials ??= credentialHash({ url, headers: m.headers })
    if (taskIdFrom({ url, digest: m.digest, tag: m.tag, version: m.version, credentials, pieceLength: m.pieceLength }) !== t.taskId) return undefined
  } catch {
    return undefined
  }
  return {
    url,
    headers: m.headers ?? {},
    ...(m.digest != null ? { digest: m.digest } : {}),
    ...(m.tag != null ? { tag: m.tag } : {}),
    ...(m.version != null && m.version !== '' ? { version: m.version } : {}),
    ...(credentials != null ? { credentials } : {}),
    ...(m.pieceLength != null ? { pieceLength: m.pieceLength } : {})
  }
}

/** Serve every piece the host's store holds, over the host's piece channel. */
export async function serveStore (init: HostInit, onUpload: (bytes: number) => void, whenHeld?: PieceProvider['whenHeld']): Promise<PieceServer> {
  return await servePieces(init.node, {
    dataChannel: dataChannelFor(init.pieceChannel ?? 'stream'),
    log: init.log,
    provider: {
      getPiece: async (taskId, n) => await init.store.getPiece(taskId, n),
      ...(whenHeld != null ? { whenHeld } : {}),
      onUpload: (_t, bytes) => { onUpload(bytes) }
    }
  })
}

/**
 * As a source: announce a task's layout and the digest of every piece held (after a (re)registration),
 * in messages of ANNOUNCE_BATCH pieces (the scheduler refuses messages above MAX_SCHEDULER_MESSAGE_BYTES).
 */
export function announceHeld (send: (msg: PeerMessage) => unknown, t: StoredTask): void {
  send({ sourceInfo: { taskId: t.taskId, info: { contentLength: t.info.contentLength, pieceLength: t.info.pieceLength, pieceCount: t.info.pieceCount } } })
  const all = [...t.bitmap.present()]
  for (let i = 0; i < all.length; i += ANNOUNCE_BATCH) {
    const numbers = all.slice(i, i + ANNOUNCE_BATCH)
    send({ pieceDone: { taskId: t.taskId, numbers, digests: numbers.map(n => t.digests[n]!) } })
  }
}
