/*
 * The seed peer service: a host of type "seed". When the scheduler orders it to seed a task it
 * fetches the origin once, splits it into pieces, hashes each, stores it and announces number +
 * digest as it goes, so children download while the origin transfer still runs.
 * Ownership: `running` maps task id -> the one origin fetch in flight (single-flight).
 */
import type { Libp2p } from 'libp2p'
import { toErrorInfo, type Logger, type Startable } from '@guoce/interface'
import type { TaskStore, StoredTask } from '@guoce/store'
import { SchedulerClient, servePieces, dataChannelFor, hostInfo, type PeerMessage, type PieceChannel, type PieceServer, type SchedulerMessage } from '@guoce/transfer'
import { fillFromSource } from './fetch.js'

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

export type SeedPeerInit = HostInit

/** Serve every piece the host's store holds, over the host's piece channel. */
export async function serveStore (init: HostInit, onUpload: (bytes: number) => void): Promise<PieceServer> {
  return await servePieces(init.node, {
    dataChannel: dataChannelFor(init.pieceChannel ?? 'stream'),
    log: init.log,
    provider: {
      getPiece: async (taskId, n) => await init.store.getPiece(taskId, n),
      onUpload: (_t, bytes) => { onUpload(bytes) }
    }
  })
}

export interface SeedStats { originBytes: number, uploadBytes: number, tasks: number }

export class SeedPeer implements Startable {
  private readonly client: SchedulerClient
  private readonly running = new Map<string, Promise<void>>()
  private readonly log: Logger
  private pieceServer: PieceServer | undefined
  readonly stats: SeedStats = { originBytes: 0, uploadBytes: 0, tasks: 0 }

  constructor (private readonly init: SeedPeerInit) {
    this.log = init.log.child({ component: 'seed-peer' })
    this.client = new SchedulerClient({
      node: init.node,
      scheduler: init.scheduler,
      log: init.log,
      host: () => hostInfo(init.node, { type: 'seed', uploadSlots: init.uploadSlots ?? 16, idc: init.idc, location: init.location }),
      onMessage: (m) => { this.onMessage(m) },
      onConnect: async () => { await this.announceAll() }
    })
  }

  async start (): Promise<void> {
    this.pieceServer = await serveStore(this.init, bytes => { this.stats.uploadBytes += bytes })
    await this.client.start()
  }

  async stop (): Promise<void> {
    await this.client.stop()
    await this.pieceServer?.close()
  }

  get ready (): Promise<void> { return this.client.ready }

  /** After (re)connecting: re-register every held task with its layout and digests. */
  private async announceAll (): Promise<void> {
    for (const id of await this.init.store.list()) {
      const t = await this.init.store.get(id).catch(() => null)
      if (t == null) continue
      this.announce(t, t.meta.url ?? '')
    }
  }

  private announce (t: StoredTask, url: string): void {
    this.client.send({ register: { taskId: t.taskId, url, headers: t.meta.headers ?? {}, bitmap: t.bitmap.bytes, completed: t.complete, ...(t.meta.digest != null ? { digest: t.meta.digest } : {}) } })
    announceHeld(m => this.client.send(m), t)
  }

  private onMessage (msg: SchedulerMessage): void {
    if (msg.seed == null) return
    const order = msg.seed
    if (this.running.has(order.taskId)) return
    const p = this.seed(order).finally(() => { this.running.delete(order.taskId) })
    this.running.set(order.taskId, p)
  }

  private async seed (order: NonNullable<SchedulerMessage['seed']>): Promise<void> {
    const { taskId } = order
    const ref = { url: order.url, headers: order.headers ?? {}, ...(order.digest != null && order.digest !== '' ? { digest: order.digest } : {}) }
    const existing = await this.init.store.get(taskId).catch(() => null)
    if (existing?.complete === true) { this.announce(existing, order.url); return }
    this.log.info('seeding', { task: taskId.slice(0, 12), url: order.url })
    this.stats.tasks++
    this.client.send({ register: { taskId, url: order.url, headers: ref.headers, ...(ref.digest != null ? { digest: ref.digest } : {}) } })
    try {
      const task = await fillFromSource({
        store: this.init.store,
        taskId,
        ref,
        meta: { url: order.url, headers: ref.headers, ...(ref.digest != null ? { digest: ref.digest } : {}) },
        ...(existing != null ? { task: existing } : {}),
        timeoutMs: this.init.originTimeoutMs,
        onInfo: (info) => { this.client.send({ sourceInfo: { taskId, info } }) },
        onPiece: (n, digest) => { this.client.send({ pieceDone: { taskId, numbers: [n], digests: [digest] } }) },
        onBytes: (n) => { this.stats.originBytes += n }
      })
      if (existing != null) this.announce(task, order.url)
      this.client.send({ result: { taskId, success: true } })
      this.log.info('seeded', { task: taskId.slice(0, 12), bytes: task.info.contentLength })
    } catch (err) {
      this.log.warn('seeding failed', { task: taskId.slice(0, 12), err: (err as Error).message })
      this.client.send({ result: { taskId, success: false, error: toErrorInfo(err) } })
      // what the origin sent under a failed transfer is not trusted: drop it, leave no partial entry
      await this.init.store.remove(taskId).catch(() => {})
    }
  }
}

/** As a source: announce a task's layout and the digest of every piece held (after a (re)registration). */
export function announceHeld (send: (msg: PeerMessage) => unknown, t: StoredTask): void {
  send({ sourceInfo: { taskId: t.taskId, info: t.info } })
  const numbers = [...t.bitmap.present()]
  if (numbers.length > 0) send({ pieceDone: { taskId: t.taskId, numbers, digests: numbers.map(n => t.digests[n]!) } })
}
