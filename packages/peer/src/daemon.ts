/*
 * The peer daemon: a libp2p host that downloads tasks piece by piece from parents the scheduler
 * names, serves every piece it holds to others, and answers the local API.
 * Ownership: `tasks` holds the live PeerTask per task id (one download per task, shared by every
 * API caller); the TaskStore owns bytes on disk.
 */
import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { taskIdOf, parseSourceUrl, parseDigest, pieceLayout, pieceRange, importUrl, isImportUrl, checkPieceLength } from '@guoce/content'
import type { Startable, TaskReader, TaskRequest } from '@guoce/interface'
import { InvalidParametersError } from '@guoce/interface'
import type { TaskStore } from '@guoce/store'
import { SchedulerClient, hostInfo, type PieceServer, type SchedulerMessage } from '@guoce/transfer'
import { serveStore, registerRef, announceHeld, type HostInit } from '@guoce/host'
import { PeerTask } from './peer-task.js'
import { UPLOAD_SLOTS } from './constants.js'
import { taskReader, daemonResolver } from './reader.js'
import { daemonMetrics, type DaemonMetrics } from './metrics.js'
import { probeSource } from '@guoce/host'

export type PeerDaemonInit = HostInit & {
  /** longest a read waits for one piece (or the layout) @default READ_TIMEOUT_MS */
  readTimeoutMs?: number | undefined
}

export interface DaemonStats {
  peerBytes: number
  sourceBytes: number
  uploadBytes: number
  tasksStarted: number
  blamedParents: number
  /** samples of the stall check in which a parent with requests in flight said it was busy (not blamed) */
  busyParents: number
  /** parent connections that went silent while the host still sent on others (pieces asked elsewhere, not blamed) */
  silentParents: number
  /** piece connections opened to parents, by channel (stream, secure, integrity) */
  parentConnections: Record<string, number>
  /** parent lists received, by mode */
  parentLists: { chain: number, striped: number }
}

export class PeerDaemon implements Startable {
  readonly tasks = new Map<string, PeerTask>()
  readonly client: SchedulerClient
  readonly stats: DaemonStats = { peerBytes: 0, sourceBytes: 0, uploadBytes: 0, tasksStarted: 0, blamedParents: 0, busyParents: 0, silentParents: 0, parentConnections: {}, parentLists: { chain: 0, striped: 0 } }
  private pieceServer: PieceServer | undefined
  /** when a byte last came from each parent host, over all downloads (PeerTaskInit.heard) */
  private readonly heard = new Map<string, number>()
  /**
   * The one way to read a task's bytes on this host, complete or still downloading (the local API's
   * content route, and every consumer in this process).
   */
  readonly reader: TaskReader
  /** Prometheus metrics of this daemon (`GET /metrics`); consumers may register their own in `metrics.registry` */
  readonly metrics: DaemonMetrics

  constructor (private readonly init: PeerDaemonInit) {
    const metrics = daemonMetrics()
    this.metrics = metrics
    this.reader = taskReader({ resolve: daemonResolver(this), onRead: metrics.observeRead, ...(init.readTimeoutMs != null ? { timeoutMs: init.readTimeoutMs } : {}) })
    this.client = new SchedulerClient({
      node: init.node,
      scheduler: init.scheduler,
      log: init.log,
      host: () => hostInfo(init.node, { type: 'normal', uploadSlots: init.uploadSlots ?? UPLOAD_SLOTS, idc: init.idc, location: init.location }),
      onMessage: (m) => { this.onMessage(m) },
      onConnect: async () => { await this.reregister() }
    })
    metrics.bind(this)
  }

  get peerId (): string { return this.init.node.peerId.toString() }
  get store (): TaskStore { return this.init.store }

  /** reads waiting for pieces or layouts, over every task */
  get readsWaiting (): number {
    let n = 0
    for (const t of this.tasks.values()) n += t.readsWaiting
    return n
  }

  async start (): Promise<void> {
    this.pieceServer = await serveStore(this.init, bytes => { this.stats.uploadBytes += bytes })
    await this.client.start()
  }

  async stop (): Promise<void> {
    for (const t of this.tasks.values()) t.stop()
    await this.client.stop()
    await this.pieceServer?.close()
    await this.init.store.close()
  }

  /**
   * Put a local file into the swarm (`guoce import`): hashed, stored as the complete task named by its
   * sha256 under the import URL (no origin), then held like any finished download, and its layout and
   * piece digests announced: imported content has no seed, so its holder vouches for them (children
   * still check each piece, and the whole content against the digest). Read twice: once for the digest
   * that names it, once into the store; a file that changed in between fails the whole-digest check.
   * The caller (the local API) lets only the daemon's own user ask for this.
   */
  async importFile (path: string): Promise<PeerTask> {
    const fh = await open(path, 'r')
    let digest: string
    try {
      const size = (await fh.stat()).size
      const h = createHash('sha256')
      const buf = Buffer.allocUnsafe(4 * 1024 * 1024)
      for (let off = 0; off < size;) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - off), off)
        if (bytesRead === 0) break
        h.update(buf.subarray(0, bytesRead)); off += bytesRead
      }
      digest = `sha256:${h.digest('hex')}`
      const req: TaskRequest = { url: importUrl(digest), digest }
      const taskId = taskIdOf(req)
      const held = await this.init.store.get(taskId)
      if (held?.complete !== true) {
        const { pieceLength, pieceCount } = pieceLayout(size)
        const st = await this.init.store.create(taskId, { taskId, contentLength: size, pieceLength, pieceCount }, { url: req.url, digest })
        for (let n = 0; n < pieceCount; n++) {
          const { start, end } = pieceRange(n, pieceLength, size)
          const piece = Buffer.allocUnsafe(end - start)
          for (let got = 0; got < piece.length;) {
            const { bytesRead } = await fh.read(piece, got, piece.length - got, start + got)
            if (bytesRead === 0) break
            got += bytesRead
          }
          await st.writePiece(n, piece, createHash('sha256').update(piece).digest())
        }
        await st.flush()
      }
    } finally {
      await fh.close()
    }
    const task = await this.download({ url: importUrl(digest), digest })
    await task.finished
    const st = await this.init.store.get(task.taskId)
    if (st?.complete === true) announceHeld((m) => this.client.send(m), st)
    return task
  }

  /**
   * Start a download, or join the one already running for the same task.
   * A URL task without a digest is first checked with the origin (probeSource, with the request's own
   * headers): its validator becomes `req.version`, part of the task id, so a changed origin is a new
   * task and a cached task is reused only while the origin still names the same content. An origin
   * error here (401, 403, 404...) fails the request: it is also what refuses a caller without the
   * credentials a URL needs, whatever this host holds.
   */
  async download (req: TaskRequest): Promise<PeerTask> {
    parseSourceUrl(req.url)
    if (req.pieceLength != null) {
      try { checkPieceLength(req.pieceLength) } catch (err) { throw new InvalidParametersError((err as Error).message) }
    }
    if (req.digest != null) parseDigest(req.digest)
    else {
      const { version } = await probeSource({ url: req.url, headers: req.headers ?? {} }, this.init.originTimeoutMs != null ? { timeoutMs: this.init.originTimeoutMs } : {})
      req = { ...req, version }
    }
    const taskId = taskIdOf(req)
    const running = this.tasks.get(taskId)
    if (running != null && running.state !== 'failed') {
      if (req.ranged !== true) running.upgrade()
      return running
    }
    const task = new PeerTask({
      taskId,
      request: req,
      node: this.init.node,
      store: this.init.store,
      send: (m) => this.client.send(m),
      log: this.init.log,
      ...(this.init.originTimeoutMs != null ? { originTimeoutMs: this.init.originTimeoutMs } : {}),
      ...(this.init.pieceChannel != null ? { pieceChannel: this.init.pieceChannel } : {}),
      onBlame: () => { this.stats.blamedParents++ },
      onBusy: () => { this.stats.busyParents++ },
      onSilent: () => { this.stats.silentParents++ },
      heard: this.heard,
      onConnection: (channel) => { this.stats.parentConnections[channel] = (this.stats.parentConnections[channel] ?? 0) + 1 },
      onParentList: (mode) => { this.stats.parentLists[mode]++ },
      onStats: (kind, bytes) => { if (kind === 'peer') this.stats.peerBytes += bytes; else this.stats.sourceBytes += bytes }
    })
    this.tasks.set(taskId, task)
    this.stats.tasksStarted++
    // a running download is never evicted by the store's quota
    this.init.store.pin(taskId)
    void task.finished.catch(() => {}).finally(() => { this.init.store.unpin(taskId) })
    await task.start()
    return task
  }

  private onMessage (msg: SchedulerMessage): void {
    const taskId = msg.taskInfo?.taskId ?? msg.parents?.taskId ?? msg.have?.taskId ?? msg.digests?.taskId ??
      msg.backToSource?.taskId ?? msg.failed?.taskId
    if (taskId == null) return
    this.tasks.get(taskId)?.onSchedulerMessage(msg)
  }

  /** After (re)connecting to a scheduler: announce every running download and every complete task held. */
  private async reregister (): Promise<void> {
    const seen = new Set<string>()
    for (const t of this.tasks.values()) {
      if (t.state === 'failed') continue
      seen.add(t.taskId)
      t.register()
      if (t.state === 'succeeded' && t.digest != null && isImportUrl(t.request.url)) {
        const st = await this.init.store.get(t.taskId).catch(() => null)
        if (st?.complete === true) announceHeld((m) => this.client.send(m), st)
      }
    }
    for (const id of await this.init.store.list()) {
      if (seen.has(id)) continue
      const st = await this.init.store.get(id).catch(() => null)
      if (st?.complete !== true || st.meta.url == null) continue
      const ref = registerRef(st)
      if (ref == null) continue // stored under an id its reference does not give: the scheduler would refuse it
      this.client.send({ register: { taskId: id, ...ref, bitmap: st.bitmap.bytes, completed: true } })
      // imported content: nobody else can give its layout (importFile)
      if (ref.digest != null && isImportUrl(ref.url)) announceHeld((m) => this.client.send(m), st)
    }
  }
}
