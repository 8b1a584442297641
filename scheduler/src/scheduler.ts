/*
 * The scheduler service. One long-lived /guoce/scheduler/1 stream per host; all state is soft.
 * Ownership: `hosts` (by PeerId) own their channels; `tasks` own peers. Announcements (have,
 * digests) are queued and flushed every ANNOUNCE_INTERVAL_MS so a busy swarm sends batches.
 *
 * Trust (doc/PROTOCOL.md "Hello", "Register", doc/LIMITS.md): a register is refused unless its task id
 * derives from its fields (taskIdFrom); only designated seeds (Hello.seed_proof, checked by the network
 * layer) get seed orders, and only their layouts, piece digests and failures count for other hosts. A
 * host that breaks a bound is dropped and refused for HOST_BAN_MS; one that sends refused messages is
 * dropped after HOST_OFFENCE_LIMIT of them. All per-host state goes with the host.
 */
import type { Libp2p } from 'libp2p'
import type { Stream, Connection } from '@libp2p/interface'
import { Bitmap, MIN_PIECE_LENGTH, MIN_REQUEST_PIECE_LENGTH, checkPieceLength, pieceLayout, credentialHash, isImportUrl, isTaskId, taskIdFrom } from '@guoce/content'
import { type Logger, type ErrorInfo, type Startable } from '@guoce/interface'
import { MessageChannel, SCHEDULER_PROTOCOL, peerMessage, schedulerMessage, verifySeedProof, KEEPALIVE_INTERVAL_MS, ANNOUNCE_BATCH, SCHEDULER_READ_BUDGET_BYTES, readBudget, isBlameless, reclaimSoon, MAX_CONTENT_BYTES, MAX_PIECE_BYTES, MAX_TASK_PIECES, type PeerMessage, type SchedulerMessage, type WireParent, type WireHostInfo, type WireTaskInfo } from '@guoce/transfer'
import { Host, Peer, Task } from './resource/index.js'
import { selectParents } from './scheduling/index.js'
import { Forest } from './scheduling/forest.js'
import { ANNOUNCE_INTERVAL_MS, BAD_PARENT_REPORTS, CHAIN_MAX_PEERS, DEFAULT_UPLOAD_SLOTS, HOST_BAN_MS, HOST_OFFENCE_LIMIT, MAX_BANNED_HOSTS, MAX_HOST_ADDRS, MAX_HOST_ADDR_BYTES, MAX_HOST_LABEL_BYTES, MAX_HOST_PENDING_BITMAP_BYTES, MAX_HOST_STREAMS, MAX_HOST_TASKS, MAX_REGISTERS_PER_MINUTE, MAX_SCHEDULE_RETRIES, MAX_SOURCE_FAILURES, MAX_TASK_REF_BYTES, MAX_TASKS, MAX_WANT_PIECES, MAX_HOST_STREAMS_PER_MINUTE, MAX_NEW_TASKS_PER_MINUTE, REGISTER_BURST, REGISTER_RATE_PER_SECOND, STRIPE_BACKUPS } from './constants.js'
import { createHash } from 'node:crypto'

/**
 * After a (re)start, time to wait for seed peers to reconnect before a peer is sent to the origin
 * itself for lack of a seed: a restarted scheduler must not turn every resuming peer into a source.
 * @default 5 s
 */
export const NO_SEED_GRACE_MS = 5_000

/** Errors of the origin itself: retrying elsewhere cannot help, so the task fails for everyone. */
const TERMINAL_ERRORS = new Set(['OriginStatusError', 'ContentLengthMismatchError', 'OriginTimeoutError', 'InvalidUrlError', 'DigestMismatchError'])

/** A seed asked for imported content (guoce import), which has no origin: no retry can help. */
function importMissing (task: Task, name: string): boolean { return name === 'NotFoundError' && isImportUrl(task.ref.url) }

export interface SchedulerInit extends SchedulerOptions {
  node: Libp2p
  log: Logger
  /** the seed key (`<data>/seed.key`): a hello of type seed is a designated seed only with a proof under it */
  seedKey?: Uint8Array
}

/** Options of SchedulerCore.connectHost. */
export interface ConnectOptions {
  /** ends the host's stream (called when the host is replaced or dropped) */
  close?: () => void
  /** the host proved it holds the seed key; decided by the network layer (a simulator says so itself) */
  designated?: boolean
}

/** Why a layout is refused, or undefined when it is sound (doc/LIMITS.md "Layouts"). */
export function layoutProblem (info: WireTaskInfo, named?: number): string | undefined {
  const { contentLength: cl, pieceLength: pl, pieceCount: pc } = info
  if (!Number.isSafeInteger(cl) || cl < 0 || cl > MAX_CONTENT_BYTES) return `content length ${cl} outside [0, ${MAX_CONTENT_BYTES}]`
  if (!Number.isSafeInteger(pl) || pl < MIN_REQUEST_PIECE_LENGTH || pl > MAX_PIECE_BYTES) return `piece length ${pl} outside [${MIN_REQUEST_PIECE_LENGTH}, ${MAX_PIECE_BYTES}]`
  // a task whose request names its piece length has exactly that layout; any other has one of at least MIN_PIECE_LENGTH
  if (named != null && named !== 0 && pl !== pieceLayout(cl, named).pieceLength) return `piece length ${pl} is not the ${named} the task's request names`
  if ((named == null || named === 0) && pl < MIN_PIECE_LENGTH) return `piece length ${pl} below ${MIN_PIECE_LENGTH} for a task that names none`
  if (pc !== (cl === 0 ? 0 : Math.ceil(cl / pl))) return `piece count ${pc} is not ceil(${cl} / ${pl})`
  if (pc > MAX_TASK_PIECES) return `piece count ${pc} above ${MAX_TASK_PIECES}`
  return undefined
}

/** Why a register is refused, or undefined when its task id derives from its fields. */
export function registerProblem (reg: NonNullable<PeerMessage['register']>): string | undefined {
  if (!isTaskId(reg.taskId)) return 'malformed task id'
  const headers = reg.headers ?? {}
  let refBytes = reg.url.length + (reg.digest?.length ?? 0) + (reg.tag?.length ?? 0) + (reg.version?.length ?? 0) + (reg.credentials?.length ?? 0)
  for (const [k, v] of Object.entries(headers)) refBytes += k.length + v.length
  if (refBytes > MAX_TASK_REF_BYTES) return `task reference of ${refBytes} bytes above ${MAX_TASK_REF_BYTES}`
  try {
    const credentials = reg.credentials != null && reg.credentials !== '' ? reg.credentials : undefined
    if (Object.keys(headers).length > 0 && credentialHash({ url: reg.url, headers }) !== credentials) return 'headers do not hash to the credentials'
    const pieceLength = reg.pieceLength != null && reg.pieceLength !== 0 ? checkPieceLength(reg.pieceLength) : undefined
    if (taskIdFrom({ url: reg.url, digest: reg.digest, tag: reg.tag, version: reg.version, credentials, pieceLength }) !== reg.taskId) return 'task id does not derive from url, digest, tag, version, credentials and piece length'
  } catch (err) {
    return `malformed task reference: ${(err as Error).message}`
  }
  return undefined
}

/** Why a hello's host info is refused (it is relayed to other hosts), or undefined. */
export function helloProblem (info: WireHostInfo): string | undefined {
  if ((info.addrs ?? []).length > MAX_HOST_ADDRS) return `more than ${MAX_HOST_ADDRS} addresses`
  if ((info.addrs ?? []).some(a => a.byteLength > MAX_HOST_ADDR_BYTES)) return `an address above ${MAX_HOST_ADDR_BYTES} bytes`
  for (const label of [info.hostname, info.idc, info.location, info.type]) if ((label?.length ?? 0) > MAX_HOST_LABEL_BYTES) return `a label above ${MAX_HOST_LABEL_BYTES} bytes`
  return undefined
}

/** Split numbers (and their digests) into announcement batches of ANNOUNCE_BATCH. */
function * batches (numbers: number[], digests?: Uint8Array[]): Generator<{ numbers: number[], digests: Uint8Array[] }> {
  for (let i = 0; i < numbers.length; i += ANNOUNCE_BATCH) {
    yield { numbers: numbers.slice(i, i + ANNOUNCE_BATCH), digests: digests?.slice(i, i + ANNOUNCE_BATCH) ?? [] }
  }
}

export interface SchedulerOptions {
  /** peers (besides the source) up to which a task stays one chain; more switch it to striped trees @default CHAIN_MAX_PEERS */
  chainMaxPeers?: number
}

export interface SchedulerStats { hosts: number, tasks: number, peers: number }

/**
 * The scheduling logic without any network: hosts connect with a sink for outgoing messages,
 * messages are fed in, `flushAnnouncements()` runs on a timer (or a simulator's clock).
 */
export class SchedulerCore {
  readonly hosts = new Map<string, Host>()
  readonly tasks = new Map<string, Task>()
  protected readonly log: Logger
  private readonly pendingHave = new Map<Peer, number[]>()
  private readonly pendingDigests = new Map<Task, number[]>()

  private readonly graceUntil: number
  /** tasks waiting for the restart grace to end (one timer for all; a task that goes leaves the set) */
  private readonly graceWaiting = new Set<Task>()
  private graceTimer: NodeJS.Timeout | undefined

  private readonly chainMaxPeers: number
  /** hosts dropped for offences or a broken bound -> refused until (ms); oldest first (MAX_BANNED_HOSTS) */
  private readonly banned = new Map<string, number>()

  constructor (log: Logger, noSeedGraceMs = NO_SEED_GRACE_MS, opts: SchedulerOptions = {}) {
    this.log = log.child({ component: 'scheduler' })
    this.graceUntil = Date.now() + noSeedGraceMs
    this.chainMaxPeers = opts.chainMaxPeers ?? CHAIN_MAX_PEERS
  }

  /**
   * A host said hello. A second hello from the same id replaces the first connection. Only a host the
   * caller marks `designated` is a seed; a hello of type seed without it joins as a normal host.
   */
  connectHost (hostId: string, info: WireHostInfo, sink: (msg: SchedulerMessage) => void, opts: ConnectOptions = {}): Host {
    const old = this.hosts.get(hostId)
    if (old != null) { this.removeHost(old); old.close() }
    const designated = opts.designated === true
    if (info.type === 'seed' && !designated) this.log.warn('hello of type seed without a valid seed proof; joined as a normal host', { host: hostId })
    const host = new Host(hostId, { ...info, type: designated ? 'seed' : 'normal', uploadSlots: info.uploadSlots > 0 ? info.uploadSlots : DEFAULT_UPLOAD_SLOTS, idc: info.idc ?? '', location: info.location ?? '', load: info.load ?? 0, addrs: (info.addrs ?? []).map(a => new Uint8Array(a)) }, sink, opts.close, designated)
    this.hosts.set(hostId, host)
    this.log.info('host joined', { host: hostId, type: host.info.type })
    return host
  }

  /** true while `hostId` is refused after being dropped (HOST_BAN_MS) */
  isBanned (hostId: string): boolean {
    const until = this.banned.get(hostId)
    if (until == null) return false
    if (until > Date.now()) return true
    this.banned.delete(hostId)
    return false
  }

  /** A refused message: warned, counted; HOST_OFFENCE_LIMIT of them drop the host. */
  private offence (host: Host, reason: string, fields: Record<string, unknown> = {}): void {
    host.offences++
    this.log.warn('refused message from host', { host: host.id, reason, offences: host.offences, ...fields })
    if (host.offences >= HOST_OFFENCE_LIMIT) this.dropHost(host, `${host.offences} refused messages`)
  }

  /** Drop a host that broke a bound or offended too often; it is refused for HOST_BAN_MS. */
  dropHost (host: Host, reason: string): void {
    this.log.warn('host dropped', { host: host.id, reason })
    this.ban(host.id)
    this.disconnectHost(host)
    host.close()
  }

  /** Refuse `hostId` for HOST_BAN_MS (the network layer also ends its connections). */
  protected ban (hostId: string): void {
    this.banned.delete(hostId)
    this.banned.set(hostId, Date.now() + HOST_BAN_MS)
    if (this.banned.size > MAX_BANNED_HOSTS) this.banned.delete(this.banned.keys().next().value!)
  }

  /** The host's stream ended. */
  disconnectHost (host: Host): void {
    if (this.hosts.get(host.id) === host) this.removeHost(host)
  }

  stats (): SchedulerStats {
    let peers = 0
    for (const t of this.tasks.values()) peers += t.peers.size
    return { hosts: this.hosts.size, tasks: this.tasks.size, peers }
  }

  /** One message from a connected host. */
  handleMessage (host: Host, msg: PeerMessage): void {
    if (this.hosts.get(host.id) !== host) return // dropped or replaced: what it still sends is moot
    host.heardAt = Date.now()
    if (msg.register != null) this.onRegister(host, msg.register)
    else if (msg.sourceInfo != null) this.onSourceInfo(host, msg.sourceInfo.taskId, msg.sourceInfo.info)
    else if (msg.pieceDone != null) this.onPieceDone(host, msg.pieceDone.taskId, msg.pieceDone.numbers ?? [], msg.pieceDone.digests ?? [])
    else if (msg.result != null) this.onResult(host, msg.result.taskId, msg.result.success, msg.result.error)
    else if (msg.badParent != null) this.onBadParent(host, msg.badParent.taskId, msg.badParent.parent, msg.badParent.reason)
    else if (msg.needParents != null) this.onNeedParents(host, msg.needParents.taskId)
    else if (msg.leave != null) this.onLeave(host, msg.leave.taskId)
    else if (msg.want != null) this.onWant(host, msg.want.taskId, msg.want.numbers ?? [])
  }

  /**
   * A read waits for pieces no parent of the child holds: the seed fetching the task (lazily) fetches
   * them first. Pieces some peer holds are left to the child's parents; a child asks again if none serves.
   */
  private onWant (host: Host, taskId: string, numbers: number[]): void {
    const task = this.tasks.get(taskId)
    const peer = task?.peers.get(host.id)
    if (task?.info == null || peer == null) return
    if (numbers.length > MAX_WANT_PIECES) { this.offence(host, `want of ${numbers.length} pieces, limit ${MAX_WANT_PIECES}`, { task: taskId.slice(0, 12) }); return }
    const missing = numbers.filter(n => Number.isInteger(n) && n >= 0 && n < task.info!.pieceCount && task.digests[n] == null)
    if (missing.length === 0) return
    this.ensureSource(task, peer)
    const seeding = task.seeding != null ? this.hosts.get(task.seeding) : undefined
    if (seeding?.isSeed === true) seeding.send({ seed: { taskId: task.id, ...task.ref, lazy: task.lazy, numbers: missing } })
  }

  private onRegister (host: Host, reg: NonNullable<PeerMessage['register']>): void {
    const now = Date.now()
    if (now - host.registerWindow >= 60_000) { host.registerWindow = now; host.registers = 0; host.newTasks = 0 }
    if (++host.registers > MAX_REGISTERS_PER_MINUTE) { this.dropHost(host, `more than ${MAX_REGISTERS_PER_MINUTE} registers in a minute`); return }
    const problem = registerProblem(reg)
    if (problem != null) { this.offence(host, problem, { task: reg.taskId.slice(0, 12), url: reg.url.slice(0, 200) }); return }
    let peer = host.peers.get(reg.taskId)
    if (peer == null && host.peers.size >= MAX_HOST_TASKS) { this.dropHost(host, `more than ${MAX_HOST_TASKS} tasks registered`); return }
    let task = this.tasks.get(reg.taskId)
    const headers = reg.headers ?? {}
    if (task == null) {
      if (this.tasks.size >= MAX_TASKS) { this.log.warn('task table full; register refused', { host: host.id, tasks: this.tasks.size }); return }
      // a new task that needs its origin costs a seed's work: a host may start MAX_NEW_TASKS_PER_MINUTE
      if (reg.completed !== true && ++host.newTasks > MAX_NEW_TASKS_PER_MINUTE) {
        this.log.warn('new tasks above the per-host rate; register refused', { host: host.id, task: reg.taskId.slice(0, 12) })
        return
      }
      task = new Task(reg.taskId, { url: reg.url, headers, ...(reg.digest != null && reg.digest !== '' ? { digest: reg.digest } : {}), ...(reg.tag != null && reg.tag !== '' ? { tag: reg.tag } : {}), ...(reg.version != null && reg.version !== '' ? { version: reg.version } : {}), ...(reg.pieceLength != null && reg.pieceLength !== 0 ? { pieceLength: reg.pieceLength } : {}) })
      this.tasks.set(task.id, task)
    } else if (task.ref.digest != null && isImportUrl(task.ref.url) && !isImportUrl(reg.url)) {
      // content imported somewhere (no origin) and now named by a URL that has one: a seed can fetch it
      task.ref = { ...task.ref, url: reg.url, headers }
    } else if (Object.keys(task.ref.headers ?? {}).length === 0 && Object.keys(headers).length > 0) {
      // the task was first named without its headers (a re-registration from a store): take them now
      // (they hash to the task's credentials, registerProblem checked)
      task.ref = { ...task.ref, headers }
    }
    if (reg.lazy !== true && reg.completed !== true && !host.isSeed && task.lazy) {
      // a whole download of a task seeded lazily so far: the seed now fetches all of it
      task.lazy = false
      const seeding = task.seeding != null ? this.hosts.get(task.seeding) : undefined
      if (seeding?.isSeed === true) seeding.send({ seed: { taskId: task.id, ...task.ref, lazy: false } })
    }
    if (peer == null) {
      peer = new Peer(host, task)
      task.peers.set(host.id, peer)
      host.peers.set(task.id, peer)
    }
    peer.state = reg.completed === true ? 'succeeded' : 'running'
    peer.lazy = reg.lazy === true && !host.isSeed
    if (host.isSeed) peer.isSource = true
    const bitmap = reg.bitmap != null && reg.bitmap.length > 0 ? reg.bitmap : undefined
    if (task.info != null) {
      if (peer.bitmap != null) task.peerGone(peer) // a re-registration may hold less than before
      const fits = bitmap == null || bitmap.length === Math.ceil(task.info.pieceCount / 8)
      if (!fits) this.log.warn('register bitmap of the wrong length; ignored', { host: host.id, task: task.id.slice(0, 12), bytes: bitmap.length })
      peer.bitmap = new Bitmap(task.info.pieceCount, fits ? bitmap : undefined)
      this.sendTaskState(peer)
      if (peer.state === 'running' && !peer.isSource) this.schedule(peer)
      return
    }
    if (peer.rawBitmap != null) { host.pendingBitmapBytes -= peer.rawBitmap.byteLength; peer.rawBitmap = undefined }
    if (bitmap != null && bitmap.length <= Math.ceil(MAX_TASK_PIECES / 8) && host.pendingBitmapBytes + bitmap.length <= MAX_HOST_PENDING_BITMAP_BYTES) {
      peer.rawBitmap = new Uint8Array(bitmap) // a copy: a view would keep the whole received message alive
      host.pendingBitmapBytes += bitmap.length
    }
    if (peer.isSource) return // a seed re-registering: its source info follows
    if (peer.state === 'succeeded') return // holds it all: nobody needs the origin until someone asks
    this.ensureSource(task, peer)
  }

  /**
   * Make sure a designated seed is fetching the task from its origin. With none (after the restart
   * grace), `asking`, or else every running peer, fetches the origin on its own: what a normal host
   * reports of the origin (layout, digests) is never relayed to others.
   */
  private ensureSource (task: Task, asking?: Peer): void {
    for (const p of task.peers.values()) if (p.isSource && p.host.isSeed && p.state !== 'failed' && p.state !== 'left') return
    if (task.seeding != null && this.hosts.get(task.seeding)?.isSeed === true) return
    const seeds = [...this.hosts.values()].filter(h => h.isSeed)
    if (seeds.length > 0) {
      // rendezvous hashing: the same task goes to the same seed while the seed set is stable
      const seed = seeds.map(h => ({ h, w: createHash('sha256').update(task.id).update(h.id).digest().readUInt32BE(0) })).sort((a, b) => b.w - a.w)[0]!.h
      task.seeding = seed.id
      this.log.info('seed ordered', { task: task.id.slice(0, 12), seed: seed.id })
      seed.send({ seed: { taskId: task.id, ...task.ref, lazy: task.lazy } })
      return
    }
    const wait = this.graceUntil - Date.now()
    if (wait > 0) {
      // seeds may still be reconnecting after a scheduler restart: look again when the grace ends
      this.graceWaiting.add(task)
      this.graceTimer ??= setTimeout(() => {
        const waiting = [...this.graceWaiting]
        this.graceWaiting.clear()
        for (const t of waiting) if (this.tasks.get(t.id) === t) this.ensureSource(t)
      }, wait).unref()
      return
    }
    // no designated seed: each peer that needs the content goes to the origin itself
    const targets = asking != null ? [asking] : [...task.peers.values()]
    for (const p of targets) {
      if (p.isSource || p.state !== 'running') continue
      p.isSource = true
      p.state = 'back-to-source'
      this.log.info('back-to-source ordered', { task: task.id.slice(0, 12), peer: p.id, reason: 'no seed peer' })
      p.host.send({ backToSource: { taskId: task.id, reason: 'no seed peer available' } })
    }
  }

  private sendTaskState (peer: Peer): void {
    const task = peer.task
    if (task.info == null) return
    peer.host.send({ taskInfo: { taskId: task.id, info: task.info } })
    const numbers: number[] = []; const digests: Uint8Array[] = []
    task.digests.forEach((d, i) => { if (d != null) { numbers.push(i); digests.push(d) } })
    for (const b of batches(numbers, digests)) peer.host.send({ digests: { taskId: task.id, ...b } })
  }

  private onSourceInfo (host: Host, taskId: string, info: WireTaskInfo): void {
    const task = this.tasks.get(taskId)
    const peer = task?.peers.get(host.id)
    if (!host.isSeed && task != null && peer != null && task.info == null && peer.state === 'succeeded' && task.ref.digest != null && isImportUrl(task.ref.url)) {
      // imported content (guoce import) has no origin and no seed: the holder that registered it
      // complete vouches for its layout and piece digests; every child still checks each piece, and
      // the whole content against the digest that names it, before it succeeds
      const problem = layoutProblem(info, task.ref.pieceLength)
      if (problem != null) { this.offence(host, `malformed layout: ${problem}`, { task: taskId.slice(0, 12) }); return }
      task.vouchedBy = host.id
      task.setInfo({ taskId, contentLength: info.contentLength, pieceLength: info.pieceLength, pieceCount: info.pieceCount })
      for (const p of task.peers.values()) {
        if (p === peer) continue
        this.sendTaskState(p)
        if (p.state === 'running') this.schedule(p)
      }
      return
    }
    if (!host.isSeed) {
      // a normal host sent back to source announces its layout for itself; anyone else is lying
      if (peer?.isSource !== true) this.offence(host, 'source info from a host that is not a designated seed', { task: taskId.slice(0, 12) })
      return
    }
    if (task == null || peer == null || !peer.isSource) {
      this.log.warn('source info from a seed that is not the task\'s source; ignored', { host: host.id, task: taskId.slice(0, 12) })
      return
    }
    const problem = layoutProblem(info, task.ref.pieceLength)
    if (problem != null) { this.offence(host, `malformed layout: ${problem}`, { task: taskId.slice(0, 12) }); return }
    if (task.info != null) {
      if (task.info.contentLength !== info.contentLength || task.info.pieceLength !== info.pieceLength) {
        this.log.warn('conflicting source info; ignored', { host: host.id, task: taskId.slice(0, 12) })
      }
      return
    }
    task.setInfo({ taskId, contentLength: info.contentLength, pieceLength: info.pieceLength, pieceCount: info.pieceCount })
    for (const p of task.peers.values()) {
      if (p === peer) continue
      this.sendTaskState(p)
      if (p.state === 'running') this.schedule(p)
    }
  }

  private onPieceDone (host: Host, taskId: string, numbers: number[], digests: Uint8Array[]): void {
    const task = this.tasks.get(taskId)
    const peer = task?.peers.get(host.id)
    if (task?.info == null || peer == null) return
    peer.bitmap ??= new Bitmap(task.info.pieceCount)
    const fresh: number[] = []
    // only a designated seed's digests are relayed; a normal host's are its own business
    const trusted = (peer.isSource && host.isSeed) || task.vouchedBy === host.id
    numbers.forEach((n, i) => {
      if (n >= task.info!.pieceCount) return
      if (peer.bitmap!.set(n)) fresh.push(n)
      const d = digests[i]
      if (trusted && d != null && d.length === 32 && task.digests[n] == null) {
        task.digests[n] = new Uint8Array(d) // a copy: a view would keep the whole received message alive
        let q = this.pendingDigests.get(task)
        if (q == null) this.pendingDigests.set(task, q = [])
        q.push(n)
      }
    })
    if (fresh.length > 0) { peer.progressAt = Date.now(); peer.starving = false }
    // progress: the retry budget counts fruitless asks in a row, not asks over the whole download
    if (fresh.length > 0) peer.scheduleRetries = 0
    if (fresh.length > 0 && (peer.children.size > 0 || task.forest != null)) {
      let q = this.pendingHave.get(peer)
      if (q == null) this.pendingHave.set(peer, q = [])
      q.push(...fresh)
    }
    if (this.pendingHave.size > 0 || this.pendingDigests.size > 0) this.flushSoon()
  }

  /**
   * Announcements were queued. The core fed by a simulator flushes on its caller's clock only; the
   * network service (Scheduler) flushes right after this turn of its event loop.
   */
  protected flushSoon (): void {}

  /** Send batched have/digest announcements. */
  flushAnnouncements (): void {
    for (const [task, numbers] of this.pendingDigests) {
      if (this.tasks.get(task.id) !== task) continue
      for (const b of batches(numbers, numbers.map(n => task.digests[n]!))) {
        for (const p of task.peers.values()) {
          if (p.isSource && p.state !== 'running') continue
          p.host.send({ digests: { taskId: task.id, ...b } })
        }
      }
    }
    this.pendingDigests.clear()
    for (const [peer, all] of this.pendingHave) {
      for (const { numbers } of batches(all)) {
        const have = { have: { taskId: peer.task.id, peerId: peer.id, numbers } }
        for (const child of peer.children) child.host.send(have)
        if (peer.task.forest != null) for (const child of peer.task.forest.children(peer)) child.host.send(have)
      }
    }
    this.pendingHave.clear()
  }

  private onResult (host: Host, taskId: string, success: boolean, error?: ErrorInfo): void {
    const task = this.tasks.get(taskId)
    const peer = task?.peers.get(host.id)
    if (task == null || peer == null) return
    if (success) {
      peer.state = 'succeeded'
      if (task.seeding === host.id) task.seeding = undefined
      return
    }
    this.log.info('peer failed', { task: taskId.slice(0, 12), peer: host.id, err: error?.message })
    // only a designated seed's failure speaks for the origin; a normal host's failure removes that host alone
    if (peer.isSource && host.isSeed && error != null && (TERMINAL_ERRORS.has(error.name) || importMissing(task, error.name) || ++task.sourceFailures >= MAX_SOURCE_FAILURES)) {
      this.failTask(task, error)
      return
    }
    if (task.seeding === host.id) task.seeding = undefined
    this.removePeer(peer, 'failed')
    if (peer.isSource && host.isSeed && !task.covered && this.tasks.get(task.id) === task) this.ensureSource(task)
  }

  private failTask (task: Task, error: ErrorInfo): void {
    this.log.info('task failed', { task: task.id.slice(0, 12), err: error.message })
    for (const p of task.peers.values()) {
      p.host.send({ failed: { taskId: task.id, error } })
      p.host.peers.delete(task.id)
      if (p.rawBitmap != null) { p.host.pendingBitmapBytes -= p.rawBitmap.byteLength; p.rawBitmap = undefined }
    }
    this.dropTask(task)
  }

  /** Forget a task and everything queued for it. */
  private dropTask (task: Task): void {
    if (this.tasks.get(task.id) === task) this.tasks.delete(task.id)
    this.pendingDigests.delete(task)
    this.graceWaiting.delete(task)
  }

  private onBadParent (host: Host, taskId: string, parentId: string, reason: string): void {
    const task = this.tasks.get(taskId)
    const child = task?.peers.get(host.id)
    const parent = task?.peers.get(parentId)
    if (child == null) return
    this.log.warn('parent blamed', { task: taskId.slice(0, 12), child: host.id, parent: parentId.slice(0, 64), reason: reason.slice(0, 200) })
    if (parent != null) {
      child.blamed.add(parentId)
      parent.reportedBy.add(host.id)
      child.parents.delete(parent)
      parent.children.delete(child)
      if (parent.reportedBy.size >= BAD_PARENT_REPORTS) {
        for (const c of [...parent.children]) { c.parents.delete(parent); parent.children.delete(c); this.schedule(c) }
        if (task!.forest != null) for (const c of [...task!.forest.children(parent)]) if (c !== child) this.schedule(c)
      }
    }
    this.schedule(child)
  }

  private onNeedParents (host: Host, taskId: string): void {
    const task = this.tasks.get(taskId)
    const peer = task?.peers.get(host.id)
    if (task == null || peer == null) return
    if (task.info == null) { this.ensureSource(task, peer); return }
    peer.scheduleRetries++
    peer.starving = true
    if (!task.covered) {
      this.ensureSource(task, peer)
    } else if (peer.scheduleRetries > MAX_SCHEDULE_RETRIES) {
      // the origin is the last resort: while the task's seed can serve the child (however busy it and
      // the other parents are), the child waits in the swarm and gets the seed over its upload slots
      const why = swarmCannotServe(peer)
      if (why != null) {
        peer.isSource = true
        peer.state = 'back-to-source'
        this.log.info('back-to-source ordered', { task: taskId.slice(0, 12), peer: peer.id, reason: why })
        peer.host.send({ backToSource: { taskId, reason: `no usable parent after ${MAX_SCHEDULE_RETRIES} tries: ${why}` } })
        return
      }
      this.log.debug('starving child kept in the swarm: the seed serves it', { task: taskId.slice(0, 12), peer: peer.id, tries: peer.scheduleRetries })
    }
    this.schedule(peer)
  }

  private onLeave (host: Host, taskId: string): void {
    const peer = this.tasks.get(taskId)?.peers.get(host.id)
    if (peer != null) this.removePeer(peer, 'left')
  }

  /** Compute and send a new parent set for `child`. */
  schedule (child: Peer): void {
    const task = child.task
    if (task.info == null || child.state === 'succeeded') return
    if (task.forest == null && task.peers.size - 1 > this.chainMaxPeers) this.growForest(task)
    let chosen: Peer[]
    let stripeParents = 0
    let stripeCount = 0
    /** stripe parent -> bitmask of the stripes it is the primary for */
    const stripes = new Map<Peer, number>()
    if (task.forest != null && !child.isSource) {
      const moved = task.forest.place(child, this.sourceOf(task), usableStripeParent)
      stripeCount = task.forest.stripes
      child.stripes!.up.forEach((p, s) => { if (p != null) stripes.set(p, (stripes.get(p) ?? 0) | (1 << s)) })
      const primaries = [...stripes.keys()]
      stripeParents = primaries.length
      chosen = [...primaries, ...selectParents(child, this.log, STRIPE_BACKUPS, new Set(primaries))]
      for (const m of moved) if (m !== child) this.schedule(m)
    } else {
      chosen = selectParents(child, this.log)
    }
    // the DAG of resource/ keeps the chain's edges and the backups; stripe edges live in the forest
    const edges = chosen.slice(stripeParents)
    for (const old of [...child.parents]) {
      if (!edges.includes(old)) { child.parents.delete(old); old.children.delete(child) }
    }
    for (const p of edges) { child.parents.add(p); p.children.add(child) }
    const parents: WireParent[] = chosen.map(p => ({ peerId: p.id, addrs: p.host.info.addrs, bitmap: p.bitmap?.bytes ?? new Uint8Array(), stripes: stripes.get(p) ?? 0, seed: p.host.isSeed && p.isSource }))
    this.log.debug('parents', { task: child.task.id.slice(0, 12), child: child.id, parents: chosen.map(p => p.id), stripeCount })
    child.host.send({ parents: { taskId: child.task.id, parents, stripeCount } })
  }

  /**
   * The task outgrew the chain (CHAIN_MAX_PEERS): from now on its peers take their primaries from
   * striped trees (scheduling/forest.ts). Every running peer gets its place, in join order.
   */
  private growForest (task: Task): void {
    task.forest = new Forest()
    this.log.info('striped trees', { task: task.id.slice(0, 12), peers: task.peers.size, stripes: task.forest.stripes })
    for (const p of [...task.peers.values()]) if (p.state === 'running' && !p.isSource && p.stripes == null) this.schedule(p)
  }

  /** The peer that feeds the top of the stripes: the task's seed (or a peer sent back to source). */
  private sourceOf (task: Task): Peer | undefined {
    const known = task.forest?.source
    if (known != null && known.isSource && known.host.isSeed && task.peers.get(known.id) === known && known.state !== 'failed') return known
    let best: Peer | undefined
    for (const p of task.peers.values()) {
      if (!p.isSource || p.state === 'failed' || p.state === 'left') continue
      if (p.host.isSeed) return p
      best ??= p
    }
    return best
  }

  private removePeer (peer: Peer, state: 'failed' | 'left'): void {
    const task = peer.task
    peer.state = state
    task.peers.delete(peer.id)
    task.peerGone(peer)
    peer.host.peers.delete(task.id)
    if (peer.rawBitmap != null) { peer.host.pendingBitmapBytes -= peer.rawBitmap.byteLength; peer.rawBitmap = undefined }
    this.pendingHave.delete(peer)
    for (const p of peer.parents) p.children.delete(peer)
    const orphans = new Set([...peer.children, ...(task.forest?.remove(peer) ?? [])])
    for (const c of orphans) c.parents.delete(peer)
    peer.children.clear(); peer.parents.clear()
    if (task.peers.size === 0) { this.dropTask(task); return }
    if (peer.isSource && peer.host.isSeed && !task.covered) this.ensureSource(task)
    for (const c of orphans) this.schedule(c)
  }

  private removeHost (host: Host): void {
    this.hosts.delete(host.id)
    this.log.info('host left', { host: host.id })
    for (const peer of [...host.peers.values()]) {
      if (peer.task.seeding === host.id) peer.task.seeding = undefined
      this.removePeer(peer, 'left')
    }
    for (const t of this.tasks.values()) if (t.seeding === host.id) { t.seeding = undefined; this.ensureSource(t) }
  }
}

/**
 * Why the swarm cannot serve `child` (the scheduler then sends it back to source), or undefined while
 * the task's designated seed is still here and usable for it: the seed holds or fetches every piece,
 * so a child whose parents are only busy waits for them (or for the seed) rather than load the origin
 * again. The seed is unusable once it left or failed (a hung seed leaves at SCHEDULER_IDLE_TIMEOUT_MS),
 * once this child blamed it, or once several children did (bad pieces, protocol violations: a child
 * never blames the seed for silence, packages/peer).
 */
export function swarmCannotServe (child: Peer): string | undefined {
  let seed: Peer | undefined
  for (const p of child.task.peers.values()) {
    if (p !== child && p.isSource && p.host.isSeed && p.state !== 'failed' && p.state !== 'left') { seed = p; break }
  }
  if (seed == null) return 'no seed holds or fetches the task'
  if (child.blamed.has(seed.id)) return 'the child blamed the seed'
  if (seed.bad) return 'several children blamed the seed'
  return undefined
}

/** A stripe parent a child may take: still in the task, not blamed. */
function usableStripeParent (child: Peer, p: Peer): boolean {
  return p !== child && p.state !== 'failed' && p.state !== 'left' && !child.blamed.has(p.id) && !p.bad && p.task.peers.get(p.id) === p
}

/** The scheduler service: SchedulerCore behind /guoce/scheduler/1 streams. */
export class Scheduler extends SchedulerCore implements Startable {
  private timer: NodeJS.Timeout | undefined
  private flushing: NodeJS.Immediate | undefined

  /**
   * A started scheduler sends queued announcements right after this turn of the event loop (what
   * arrived in the same turn still goes in one batch) instead of waiting for the next
   * ANNOUNCE_INTERVAL_MS tick: availability is relayed through here, so the wait was paid once per hop.
   */
  protected override flushSoon (): void {
    if (this.timer == null || this.flushing != null) return
    this.flushing = setImmediate(() => { this.flushing = undefined; this.flushAnnouncements() })
  }
  /** bytes of messages being received over all streams (SCHEDULER_READ_BUDGET_BYTES) */
  readonly readBudget = readBudget(SCHEDULER_READ_BUDGET_BYTES)

  constructor (private readonly init: SchedulerInit) {
    super(init.log, NO_SEED_GRACE_MS, init)
  }

  /** scheduler streams each remote opened in the current minute (MAX_HOST_STREAMS_PER_MINUTE) */
  private readonly opened = new Map<string, { count: number, since: number }>()

  protected override ban (hostId: string): void {
    super.ban(hostId)
    reclaimSoon()
    // end its connections: the node's gater (isBanned) refuses new ones until the ban ends
    for (const conn of this.init.node.getConnections()) if (conn.remotePeer.toString() === hostId) void conn.close().catch(() => {})
  }

  async start (): Promise<void> {
    await this.init.node.handle(SCHEDULER_PROTOCOL, (stream: Stream, conn: Connection) => {
      const id = conn.remotePeer.toString()
      const now = Date.now()
      let o = this.opened.get(id)
      if (o == null || now - o.since >= 60_000) {
        if (this.opened.size >= MAX_BANNED_HOSTS) for (const [k, v] of this.opened) if (now - v.since >= 60_000) this.opened.delete(k)
        this.opened.set(id, o = { count: 0, since: now })
      }
      if (++o.count > MAX_HOST_STREAMS_PER_MINUTE) {
        this.log.warn('host dropped', { host: id, reason: `more than ${MAX_HOST_STREAMS_PER_MINUTE} scheduler streams in a minute` })
        const host = this.hosts.get(id)
        if (host != null) this.dropHost(host, 'stream churn'); else this.ban(id)
        stream.abort(new Error('refused'))
        return
      }
      void this.serveHost(stream, id).catch((err: Error) => {
        this.log.debug('host stream error', { host: conn.remotePeer.toString(), err: err.message })
      })
    }, { maxInboundStreams: MAX_HOST_STREAMS, runOnLimitedConnection: false })
    this.timer = setInterval(() => { this.flushAnnouncements() }, ANNOUNCE_INTERVAL_MS)
    this.timer.unref()
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    this.timer = undefined
    clearImmediate(this.flushing)
    this.flushing = undefined
    await this.init.node.unhandle(SCHEDULER_PROTOCOL)
    for (const h of this.hosts.values()) h.close()
  }

  private async serveHost (stream: Stream, hostId: string): Promise<void> {
    const channel = new MessageChannel<PeerMessage, SchedulerMessage>(stream, m => schedulerMessage.encode(m), b => peerMessage.decode(b), this.readBudget)
    let host: Host | undefined
    if (this.isBanned(hostId)) { this.log.debug('dropped host refused', { host: hostId }); channel.close(new Error('refused')); return }
    const keepalive = setInterval(() => { void channel.send({ keepalive: true }) }, KEEPALIVE_INTERVAL_MS)
    let tokens = REGISTER_BURST
    let refilled = Date.now()
    try {
      for await (const msg of channel.messages()) {
        if (msg.hello != null) {
          if (host != null) { this.dropHost(host, 'second hello on one stream'); return }
          const problem = helloProblem(msg.hello.host)
          if (problem != null) { this.log.warn('hello refused', { host: hostId, reason: problem }); channel.close(new Error('hello refused')); return }
          // the seed proof is checked against the PeerId Noise authenticated, never against what the hello says
          const designated = msg.hello.host.type === 'seed' && this.init.seedKey != null &&
            verifySeedProof(this.init.seedKey, this.init.node.peerId.toString(), hostId, msg.hello.seedProof)
          const h = host = this.connectHost(hostId, msg.hello.host, m => {
            try { void channel.send(m) } catch (err) { this.log.error('message to host not sent', { host: hostId, err: (err as Error).message }) }
          }, { close: () => { channel.close(new Error('dropped')); if (this.hosts.get(h.id) === h) this.disconnectHost(h) }, designated })
          continue
        }
        if (host == null) { channel.close(new Error('first message must be hello')); return }
        if (this.hosts.get(hostId) !== host) return // dropped or replaced
        if (msg.register != null) {
          // registers cost a task id check and maybe a task: a host gets REGISTER_RATE_PER_SECOND of
          // them; beyond, its stream is not read (the sender waits on the muxer's window)
          const now = Date.now()
          tokens = Math.min(REGISTER_BURST, tokens + (now - refilled) * REGISTER_RATE_PER_SECOND / 1000)
          refilled = now
          if (tokens < 1) {
            await new Promise(resolve => setTimeout(resolve, Math.ceil((1 - tokens) * 1000 / REGISTER_RATE_PER_SECOND)))
            tokens = 1; refilled = Date.now()
            if (this.hosts.get(hostId) !== host) return
          }
          tokens--
        }
        if (msg.keepalive === true) continue
        try {
          this.handleMessage(host, msg)
        } catch (err) {
          this.log.error('message handler failed', { host: hostId, err: (err as Error).message })
        }
      }
    } catch (err) {
      // a broken bound of the stream itself (message size, stall deadline, undecodable message) drops
      // and blames the host; a silent stream (idle deadline) or a broken connection only ends it
      const e = err as Error
      const broken = e.name === 'ProtocolError' && !isBlameless(e)
      // whatever the stream made us allocate is garbage now: do not keep it resident (transfer/reclaim.ts)
      reclaimSoon()
      if (broken && host != null && this.hosts.get(hostId) === host) this.dropHost(host, e.message)
      else channel.close(e)
      throw err
    } finally {
      clearInterval(keepalive)
      if (host != null) this.disconnectHost(host)
    }
  }
}

