/**
 * /guoce/piece/1
 *
 * child -> parent: varint-length-prefixed PieceRequest (task id, piece numbers, priority), any number, pipelined.
 * parent -> child: for every requested number one frame; the parent answers its most urgent request first
 * (priority 0 on-demand, 1 prefetch, 2 background; oldest first within one), the pieces of a request in order:
 *   u8 kind (0 = piece, 1 = refused, 2 = busy) | u32be number | u32be length | 32-byte sha256 (zero unless a piece) | length bytes
 * A refused piece carries a utf-8 reason instead of data. The child verifies every piece against the seed's
 * digest that the scheduler relayed; the digest in the frame counts only when the parent is the task's
 * designated seed (the scheduler names it, the stream is bound to its PeerId): the seed is where every piece
 * digest comes from, the scheduler only relays them.
 * A request with `fetch` (a child's ranged read of a piece no parent holds, sent to the task's seed): a piece
 * the parent lacks is answered once the parent holds it (PieceProvider.whenHeld: the seed fetches it from the
 * origin), with the rest of its request; the stream answers other requests meanwhile. A parent that does not
 * fetch for others refuses it as not held. A busy frame (number 0, length 0)
 * answers nothing: while the child's answers wait for upload room, the parent sends one every
 * PIECE_BUSY_INTERVAL_MS so that the child can tell a busy parent from a hung one.
 *
 * Bounds: a parent reads requests of MAX_PIECE_REQUEST_BYTES at most and buffers PIECE_REQUEST_BUFFER_BYTES
 * of them per stream; a stream with no request for PIECE_CHANNEL_IDLE_MS (nothing left to send) is closed.
 * A child accepts a piece frame of at most the length it asked for (the task's piece length) and a
 * refusal of MAX_REFUSED_REASON_BYTES; anything else is a PeerViolationError.
 *
 * The same byte stream can run on a data channel (data-channel.ts) instead of a yamux stream: opt-in
 * with `servePieces({ dataChannel })` on the parent and `PieceConnection.open(..., { channel })` on the child.
 */
import { reclaimSoon } from './reclaim.js'
import { createHash, type Hash } from 'node:crypto'
import type { Libp2p } from 'libp2p'
import { piecePool, type Lease } from '@guoce/content'
import type { Stream, Connection } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { ProtocolError, type AbortOptions, type Logger } from '@guoce/interface'
import { ByteReader, lpEncode } from './bytes.js'
import {
  PIECE_PROTOCOL, PIECE_DATA_PROTOCOL, MAX_PIECE_BYTES, MAX_PIECES_PER_REQUEST, MAX_PENDING_REQUESTS_PER_STREAM, MAX_PIECE_REQUEST_BYTES,
  MAX_REFUSED_REASON_BYTES, PIECE_REQUEST_BUFFER_BYTES, PIECE_CHANNEL_IDLE_MS, DATA_CHANNEL_HELLO_MS, PEER_VIOLATION_BAN_MS, MAX_BANNED_PEERS, WRITE_STALL_STRIKES, HOST_UPLOAD_BUFFER_BYTES,
  UPLOAD_BUFFER_BYTES, UPLOAD_BUFFER_WAIT_MS, PIECE_BUSY_INTERVAL_MS
} from './constants.js'
import { pieceRequest, dataChannelRequest, dataChannelOffer, type PieceRequest, type DataChannelOffer } from './messages.js'
import { DataChannelServer, PARENT_LIMITS, DATA_CHANNEL_MODES, PeerViolationError, openDataStream, type DataChannelMode, type PieceDuplex } from './data-channel.js'

export { PeerViolationError, PeerStallError } from './data-channel.js'

const HEADER = 1 + 4 + 4 + 32
const KIND_PIECE = 0
const KIND_REFUSED = 1
/** no body: the parent is alive, the child's answers wait for upload room (PIECE_BUSY_INTERVAL_MS) */
const KIND_BUSY = 2

export interface StoredPiece {
  data: Uint8Array
  digest: Uint8Array
  /** the provider's buffer may be reused once this is called (after the bytes left the process) */
  release?: () => void
}

/** What a parent serves from: its local store. Returns null when the piece is not held (yet). */
export interface PieceProvider {
  getPiece(taskId: string, n: number): Promise<StoredPiece | null>
  /**
   * A piece not held, asked for with `fetch` (PieceRequest.fetch): a promise that settles true once it is
   * held, false when it will not be (within the provider's own bound); undefined when this host does not fetch
   * pieces for others (only a task's seed does). Until it settles the stream answers other requests.
   */
  whenHeld?(taskId: string, n: number): Promise<boolean> | undefined
  /** called with the bytes actually sent, for upload accounting */
  onUpload?(taskId: string, bytes: number, remotePeer: string): void
}

export interface PieceServerInit {
  provider: PieceProvider
  log: Logger
  /** @default 64 */
  maxInboundStreams?: number
  /**
   * Bytes queued to children across every piece stream and data channel of this host (plus the pieces
   * being read for them) above which answering waits.
   * @default UPLOAD_BUFFER_BYTES
   */
  uploadBufferBytes?: number
  /** Bytes queued to one remote host above which its answers wait. @default HOST_UPLOAD_BUFFER_BYTES */
  hostUploadBufferBytes?: number
  /**
   * Offer data channels (direct TCP, see data-channel.ts) to children that ask for one.
   * `true`: secure mode only, on a random port of the node's listen IP. Integrity-only mode must be
   * enabled here explicitly, on the parent, as well as asked for by the child.
   * @default false
   */
  dataChannel?: boolean | DataChannelInit
}

export interface DataChannelInit {
  /** TCP port of the data listener; 0 = any free port. @default 0 */
  port?: number
  /** address to listen on. @default the IP of the node's first listen multiaddr (0.0.0.0 only when that is it) */
  host?: string
  /** also offer integrity-only channels (pieces in the clear, still sha256-verified by the child). @default false */
  integrity?: boolean
  /** time a child may read nothing of its queued answers before its channel goes @default DATA_CHANNEL_WRITE_STALL_MS */
  writeStallMs?: number
}

/** How piece bytes travel: the Noise-secured libp2p stream (default) or an opt-in data channel. */
export type PieceChannel = 'stream' | 'secure' | 'integrity'

/** The `dataChannel` option a parent needs to serve children that use `channel`. */
export function dataChannelFor (channel: PieceChannel): boolean | DataChannelInit {
  return channel === 'stream' ? false : { integrity: channel === 'integrity' }
}

/** What `servePieces` started. */
export interface PieceServer {
  /** TCP port of the data-channel listener, when one runs */
  readonly dataPort: number | undefined
  /** address the data-channel listener is bound to, when one runs */
  readonly dataHost: string | undefined
  close(): Promise<void>
}

function frame (kind: number, n: number, body: Uint8Array, digest?: Uint8Array): Uint8Array {
  const h = Buffer.alloc(HEADER)
  h[0] = kind
  h.writeUInt32BE(n, 1)
  h.writeUInt32BE(body.byteLength, 5)
  if (digest != null) h.set(digest, 9)
  return h
}

/** Register the piece protocol handler on `node` (and the data-channel listener when asked). */
export async function servePieces (node: Libp2p, init: PieceServerInit): Promise<PieceServer> {
  const log = init.log.child({ component: 'transfer:piece-server' })
  // the upload budget: every stream answering requests, and the bytes reserved for pieces being read
  const active = new Map<PieceDuplex, string>()
  const uploadBudget = init.uploadBufferBytes ?? UPLOAD_BUFFER_BYTES
  const hostBudget = init.hostUploadBufferBytes ?? HOST_UPLOAD_BUFFER_BYTES
  let reserved = 0
  /** answers waiting for room in the upload budget, by priority: one goes only when no more urgent one waits */
  const waiting = [0, 0, 0]
  let pieceEstimate = 1024 * 1024
  // hosts that broke a bound: no piece stream and no data channel from this parent for a while
  const banned = new Map<string, number>()
  const isBanned = (remote: string): boolean => {
    const until = banned.get(remote)
    if (until == null) return false
    if (until > Date.now()) return true
    banned.delete(remote)
    return false
  }
  /** write stalls (PeerStallError) per host within the ban window: [count, window end] */
  const strikes = new Map<string, [number, number]>()
  const struck = (remote: string): boolean => {
    const now = Date.now()
    let s = strikes.get(remote)
    if (s == null || s[1] <= now) {
      if (strikes.size >= MAX_BANNED_PEERS) for (const [k, v] of strikes) if (v[1] <= now) strikes.delete(k)
      if (strikes.size >= MAX_BANNED_PEERS) return true // too many hosts stalling at once: treat as a violation
      strikes.set(remote, s = [0, now + PEER_VIOLATION_BAN_MS])
    }
    if (++s[0] < WRITE_STALL_STRIKES) return false
    strikes.delete(remote)
    return true
  }
  const serve = (stream: PieceDuplex, remote: string): void => {
    void handle(stream, remote).catch((err: Error) => {
      if (err.name === 'PeerStallError' && !struck(remote)) {
        log.debug('child read nothing of its answers; channel closed', { peer: remote, err: err.message })
      } else if (err.name === 'PeerViolationError' || err.name === 'StreamBufferError' || err.name === 'PeerStallError') {
        if (!isBanned(remote)) log.warn('child broke a piece protocol bound; refused for a while', { peer: remote, err: err.message, ms: PEER_VIOLATION_BAN_MS })
        if (banned.size >= MAX_BANNED_PEERS) for (const [k, t] of banned) if (t <= Date.now()) banned.delete(k)
        if (banned.size < MAX_BANNED_PEERS) banned.set(remote, Date.now() + PEER_VIOLATION_BAN_MS)
        // what it made this host allocate is garbage now: do not keep it resident (reclaim.ts)
        reclaimSoon()
      } else {
        log.debug('piece stream ended with error', { err: err.message })
      }
      stream.abort(err)
    })
  }
  await node.handle(PIECE_PROTOCOL, (stream: Stream, connection: Connection) => {
    const remote = connection.remotePeer.toString()
    if (isBanned(remote)) { stream.abort(new PeerViolationError('refused: this host broke a piece protocol bound')); return }
    // a child sends only requests: more than this waiting unread resets the stream
    stream.maxReadBufferLength = PIECE_REQUEST_BUFFER_BYTES
    serve(stream, remote)
  }, { maxInboundStreams: init.maxInboundStreams ?? 64, runOnLimitedConnection: false })

  let data: DataChannelServer | undefined
  if (init.dataChannel != null && init.dataChannel !== false) {
    const dc: DataChannelInit = init.dataChannel === true ? {} : init.dataChannel
    const modes = new Set<DataChannelMode>(dc.integrity === true ? ['secure', 'integrity'] : ['secure'])
    data = new DataChannelServer(serve, modes, dc.writeStallMs != null ? { ...PARENT_LIMITS, writeStallMs: dc.writeStallMs } : PARENT_LIMITS)
    await data.listen(dc.port ?? 0, dc.host ?? listenHost(node))
    const server = data
    await node.handle(PIECE_DATA_PROTOCOL, (stream: Stream, connection: Connection) => {
      stream.maxReadBufferLength = 1024
      void offerChannel(server, stream, connection.remotePeer.toString()).catch((err: Error) => {
        log.debug('data channel offer failed', { err: err.message })
        stream.abort(err)
      })
    }, { maxInboundStreams: init.maxInboundStreams ?? 64, runOnLimitedConnection: false })
    node.addEventListener('stop', () => { void server.close() }, { once: true })
  }

  return {
    dataPort: data?.port,
    dataHost: data?.address,
    async close () {
      await node.unhandle(PIECE_PROTOCOL)
      if (data != null) { await node.unhandle(PIECE_DATA_PROTOCOL); await data.close() }
    }
  }

  async function offerChannel (server: DataChannelServer, stream: Stream, remote: string): Promise<void> {
    const reader = new ByteReader(stream)
    // the request comes within DATA_CHANNEL_HELLO_MS or the stream goes
    const timer = setTimeout(() => { stream.abort(new PeerViolationError('no data channel request in time')) }, DATA_CHANNEL_HELLO_MS)
    let b: Uint8Array | null
    try {
      b = await reader.lp(1024)
    } finally {
      clearTimeout(timer)
    }
    if (b == null) return
    const req = dataChannelRequest.decode(b)
    const mode = (Object.keys(DATA_CHANNEL_MODES) as DataChannelMode[]).find(m => DATA_CHANNEL_MODES[m] === req.mode)
    let offer: DataChannelOffer
    if (mode == null || !server.modes.has(mode)) {
      offer = { refused: `data channel mode ${req.mode} not offered` }
    } else if (isBanned(remote)) {
      offer = { refused: 'this host broke a piece protocol bound' }
    } else {
      try {
        const { token, secret } = server.offer(mode, remote)
        offer = { port: server.port, token, secret }
      } catch (err) {
        // over a bound: the child stays on the libp2p stream
        offer = { refused: (err as Error).message }
      }
    }
    stream.send(lpEncode(dataChannelOffer.encode(offer)))
    await stream.close().catch(() => {})
  }

  async function handle (stream: PieceDuplex, remote: string): Promise<void> {
    active.set(stream, remote)
    try {
      await answer(stream, remote)
    } finally {
      active.delete(stream)
    }
  }

  /**
   * Wait until the bytes queued to children on every stream of this server, plus the pieces being read
   * for them, are under the upload budget, the bytes queued to this child's host on all its streams are
   * under HOST_UPLOAD_BUFFER_BYTES (a child that reads slowly or not at all holds no more than that), and
   * no more urgent answer waits for the budget; then reserve one piece's worth (the largest served so far).
   */
  async function room (stream: PieceDuplex, priority: number, remote: string): Promise<number> {
    const over = (): boolean => {
      // one pass: what is queued to this child's host, and to everyone
      let host = 0
      let n = reserved
      for (const [s, r] of active) {
        const queued = s.writeBufferLength ?? 0
        n += queued
        if (r === remote) host += queued
      }
      if (host >= hostBudget) return true
      for (let q = 0; q < priority; q++) if (waiting[q]! > 0) return true
      return n >= uploadBudget
    }
    if (over()) {
      waiting[priority]!++
      try {
        // busy, not hung: the child hears from this parent while its answers wait
        let said = Date.now()
        while (over() && stream.writeStatus === 'writable') {
          await new Promise(resolve => setTimeout(resolve, UPLOAD_BUFFER_WAIT_MS))
          if (Date.now() - said >= PIECE_BUSY_INTERVAL_MS && stream.writeStatus === 'writable') { said = Date.now(); stream.send(frame(KIND_BUSY, 0, EMPTY)) }
        }
      } finally {
        waiting[priority]!--
      }
    }
    reserved += pieceEstimate
    return pieceEstimate
  }

  /**
   * One stream's requests. A reader takes requests off the stream into a queue (at most
   * MAX_PENDING_REQUESTS_PER_STREAM; beyond, it stops reading, and the stream's read buffer bounds the
   * rest); the writer answers one piece at a time, always of the most urgent request queued (lowest
   * priority value, then the oldest): an on-demand request overtakes background ones sent before it,
   * after the piece being sent. The pieces of one request go in their order.
   */
  async function answer (stream: PieceDuplex, remote: string): Promise<void> {
    const reader = new ByteReader(stream)
    const queue: Array<{ req: PieceRequest, priority: number, next: number, waited?: number }> = []
    /** pieces asked with `fetch` that the provider is fetching: answered (queued again) once they settle */
    let deferred = 0
    let readDone = false
    let readError: Error | undefined
    let sending = false
    let wakeWriter: (() => void) | undefined
    let wakeReader: (() => void) | undefined
    const kick = (): void => { const w = wakeWriter; wakeWriter = undefined; w?.() }
    // PIECE_CHANNEL_IDLE_MS with nothing queued, nothing being sent and no request closes the stream
    // (a data channel also watches itself: data-channel.ts)
    let lastActivity = Date.now()
    let idle: NodeJS.Timeout | undefined
    const arm = (ms: number): void => {
      idle = setTimeout(() => {
        const quiet = Date.now() - lastActivity
        if (queue.length > 0 || deferred > 0 || sending || (stream.writeBufferLength ?? 0) > 0 || quiet < PIECE_CHANNEL_IDLE_MS) {
          if (queue.length > 0 || deferred > 0 || sending || (stream.writeBufferLength ?? 0) > 0) lastActivity = Date.now()
          arm(Math.max(1, PIECE_CHANNEL_IDLE_MS - (Date.now() - lastActivity)))
        } else {
          stream.abort(new ProtocolError(`no piece request for ${PIECE_CHANNEL_IDLE_MS} ms`))
        }
      }, ms)
      idle.unref()
    }
    arm(PIECE_CHANNEL_IDLE_MS)

    const reading = (async () => {
      try {
        while (true) {
          while (queue.length + deferred >= MAX_PENDING_REQUESTS_PER_STREAM) await new Promise<void>(resolve => { wakeReader = resolve })
          const len = await reader.varint()
          if (len == null) break
          if (len > MAX_PIECE_REQUEST_BYTES) throw new PeerViolationError(`piece request of ${len} bytes, limit ${MAX_PIECE_REQUEST_BYTES}`)
          const req = pieceRequest.decode(await reader.exact(len))
          if (req.numbers.length > MAX_PIECES_PER_REQUEST) throw new PeerViolationError(`request names ${req.numbers.length} pieces, limit ${MAX_PIECES_PER_REQUEST}`)
          lastActivity = Date.now()
          if (req.numbers.length === 0) continue
          const p = req.priority
          queue.push({ req, priority: Number.isInteger(p) && p >= 0 && p < waiting.length ? p : waiting.length - 1, next: 0 })
          kick()
        }
      } catch (err) {
        readError = err as Error
      } finally {
        readDone = true
        kick()
      }
    })()

    try {
      while (true) {
        if (readError != null) throw readError
        if (queue.length === 0) {
          if (readDone && deferred === 0) break
          await new Promise<void>(resolve => { wakeWriter = resolve })
          continue
        }
        sending = true
        let urgent = waiting.length - 1
        for (const q of queue) if (q.priority < urgent) urgent = q.priority
        const held = await room(stream, urgent, remote)
        let full: boolean
        try {
          // chosen after the wait: a more urgent request may have come in meanwhile
          let i = 0
          for (let j = 1; j < queue.length; j++) if (queue[j]!.priority < queue[i]!.priority) i = j
          const q = queue[i]!
          const n = q.req.numbers[q.next++]!
          if (q.next === q.req.numbers.length) {
            queue.splice(i, 1)
            const w = wakeReader; wakeReader = undefined; w?.()
          }
          let piece: StoredPiece | null = null
          let reason = 'not held'
          try {
            piece = await init.provider.getPiece(q.req.taskId, n)
          } catch (err) {
            reason = (err as Error).message
          }
          // asked to fetch it (a task's seed): this piece and the rest of its request (whose pieces go in order)
          // are answered once it settles, as a request of their own; the stream answers others meanwhile
          const fetching = piece == null && q.req.fetch === true && q.waited !== n ? init.provider.whenHeld?.(q.req.taskId, n) : undefined
          if (fetching != null) {
            const j = queue.indexOf(q)
            if (j >= 0) { queue.splice(j, 1); const w = wakeReader; wakeReader = undefined; w?.() }
            deferred++
            const again = { req: { ...q.req, numbers: q.req.numbers.slice(q.next - 1) }, priority: q.priority, next: 0, waited: n }
            void fetching.catch(() => false).then(() => { deferred--; queue.push(again); kick() })
            full = false
          } else {
            if (stream.writeStatus !== 'writable') { piece?.release?.(); reading.catch(() => {}); return }
            full = sendAnswer(stream, q.req.taskId, n, piece, reason, remote)
          }
        } finally {
          reserved -= held
        }
        // a child that takes nothing of an answer for PIECE_CHANNEL_IDLE_MS loses the stream
        if (full) await stream.onDrain({ signal: AbortSignal.timeout(PIECE_CHANNEL_IDLE_MS) })
        lastActivity = Date.now()
        sending = false
      }
    } finally {
      clearTimeout(idle)
    }
    await reading
    await stream.close().catch(() => {})
  }

  /** One answer frame; true when the stream's buffer is full. */
  function sendAnswer (stream: PieceDuplex, taskId: string, n: number, piece: StoredPiece | null, reason: string, remote: string): boolean {
    let full: boolean
    if (piece == null) {
      const body = Buffer.from(reason).subarray(0, MAX_REFUSED_REASON_BYTES)
      stream.send(frame(KIND_REFUSED, n, body))
      full = !stream.send(body)
    } else {
      const head = frame(KIND_PIECE, n, piece.data, piece.digest)
      if (stream.sendOwned != null) {
        full = !stream.sendOwned(head, piece.data, piece.release ?? noop)
      } else {
        // a libp2p stream gives no word of when it is done with the bytes: the buffer is not reused
        stream.send(head)
        full = !stream.send(piece.data)
      }
      if (piece.data.byteLength > pieceEstimate) pieceEstimate = piece.data.byteLength
      init.provider.onUpload?.(taskId, piece.data.byteLength, remote)
    }
    return full
  }
}

/**
 * One answer. `digest`, when present, is the sha256 of `data` computed as its bytes arrived (the
 * child compares it with the seed's digest instead of hashing again). `release`, when present, hands
 * `data`'s buffer back to its pool: call it once nothing reads `data` any more.
 */
export type PieceResult = { n: number, data: Uint8Array, claimedDigest: Uint8Array, digest?: Uint8Array, release?: () => void } | { n: number, refused: string }

const noop = (): void => {}
const EMPTY = new Uint8Array(0)

export interface PieceConnectionOptions extends AbortOptions {
  /**
   * `stream` (default): a /guoce/piece/1 stream on the libp2p connection (Noise + yamux).
   * `secure` / `integrity`: a data channel (data-channel.ts) when the parent offers that mode,
   * else the libp2p stream.
   */
  channel?: 'stream' | DataChannelMode
  /**
   * Hash each piece while copying it out of the received bytes (`PieceResult.digest`, on the receiving
   * thread) or leave hashing to the caller (`false`: e.g. on the thread pool, so the receiving thread
   * only copies).
   * @default true
   */
  hashOnArrival?: boolean
}

interface Pending { numbers: number[], next: number, maxBytes: number, onPiece: (r: PieceResult) => void, resolve: () => void, reject: (err: Error) => void }

/**
 * One pipelined piece stream to one parent. Requests are answered in order; a failure of the
 * stream fails every pending request (the caller re-queues their pieces elsewhere).
 */
export class PieceConnection {
  private readonly pending: Pending[] = []
  private closed = false
  private closeError: Error | undefined
  private bytesIn = 0
  private busyIn = 0

  /** which transport this connection ended up on */
  readonly channel: 'stream' | DataChannelMode

  // push parsing (data channels): the frame being received
  private readonly head = Buffer.alloc(HEADER)
  private headFill = 0
  private frameKind = 0
  /** the request the frame being received answers */
  private framePending: Pending | undefined
  private frameN = 0
  private frameLen = 0
  private bodyFill = 0
  private body: Buffer | undefined
  private lease: Lease | undefined
  private hash: Hash | undefined

  private constructor (private readonly stream: PieceDuplex, channel: 'stream' | DataChannelMode = 'stream', private readonly hashOnArrival = true) {
    this.channel = channel
    const onData = (chunk: Uint8Array): void => {
      try {
        this.onData(chunk)
      } catch (err) {
        this.close(err as Error)
      }
    }
    const onEnd = (err?: Error): void => {
      if (err == null && this.pending.length === 0 && this.headFill === 0) this.close()
      else this.close(err ?? new ProtocolError('piece stream ended inside a frame'))
    }
    // one frame parser for both: a data channel pushes its bytes, a libp2p stream is iterated into it
    if (stream.attach != null) stream.attach(onData, onEnd)
    else void this.drain(onData, onEnd)
  }

  private async drain (onData: (chunk: Uint8Array) => void, onEnd: (err?: Error) => void): Promise<void> {
    try {
      for await (const c of this.stream) {
        for (const part of c instanceof Uint8Array ? [c] : c) onData(part)
        if (this.closed) return
      }
    } catch (err) {
      onEnd(err as Error)
      return
    }
    onEnd()
  }

  /** The piece protocol over an already open byte stream (a data channel, a libp2p stream, a test double). */
  static over (stream: PieceDuplex, channel: 'stream' | DataChannelMode = 'stream'): PieceConnection {
    return new PieceConnection(stream, channel)
  }

  static async open (node: Libp2p, addrs: Multiaddr[] | string[], options: PieceConnectionOptions = {}): Promise<PieceConnection> {
    const mas = addrs.map(a => typeof a === 'string' ? multiaddr(a) : a)
    const mode = options.channel ?? 'stream'
    if (mode !== 'stream') {
      const conn = await node.dial(mas, { signal: options.signal })
      const data = await openChannel(conn, mode, options.signal)
      if (data != null) return new PieceConnection(data, mode, options.hashOnArrival ?? true)
      return new PieceConnection(await conn.newStream(PIECE_PROTOCOL, { signal: options.signal }), 'stream', options.hashOnArrival ?? true)
    }
    const stream = await node.dialProtocol(mas, PIECE_PROTOCOL, { signal: options.signal })
    return new PieceConnection(stream, 'stream', options.hashOnArrival ?? true)
  }

  get inflight (): number { return this.pending.reduce((s, p) => s + p.numbers.length - p.next, 0) }
  /** bytes received from the parent so far (busy frames too): a caller samples it to see a parent that stopped sending */
  get received (): number { return this.bytesIn }
  /** busy frames received so far: the parent is alive but our answers wait behind its other children */
  get busy (): number { return this.busyIn }
  get isOpen (): boolean { return !this.closed }

  /**
   * Ask for `numbers` of `taskId`; `onPiece` runs for each as it arrives; resolves when all arrived.
   * `maxBytes`: the largest piece frame accepted for them (the task's piece length); a larger one
   * closes the connection with a PeerViolationError before anything is allocated.
   */
  request (req: PieceRequest, onPiece: (r: PieceResult) => void, maxBytes = MAX_PIECE_BYTES): Promise<void> {
    if (this.closed) return Promise.reject(this.closeError ?? new ProtocolError('piece stream closed'))
    if (this.pending.length >= MAX_PENDING_REQUESTS_PER_STREAM) return Promise.reject(new ProtocolError('too many pending piece requests'))
    const { promise, resolve, reject } = Promise.withResolvers<void>()
    this.pending.push({ numbers: req.numbers, next: 0, maxBytes: Math.min(maxBytes, MAX_PIECE_BYTES), onPiece, resolve, reject })
    this.stream.send(lpEncode(pieceRequest.encode(req)))
    return promise
  }

  close (err?: Error): void {
    if (this.closed) return
    this.closed = true
    this.lease?.release()
    this.lease = undefined
    this.closeError = err ?? new ProtocolError('piece stream closed')
    for (const p of this.pending.splice(0)) p.reject(this.closeError)
    if (err != null) this.stream.abort(err)
    else void this.stream.close().catch(() => {})
  }

  /**
   * Parse frames as bytes arrive (on a data channel straight out of its read buffer). A piece's bytes are
   * copied once, into a pooled buffer of its size, and hashed on the way when `hashOnArrival`.
   */
  private onData (chunk: Uint8Array): void {
    this.bytesIn += chunk.byteLength
    let off = 0
    while (off < chunk.byteLength && !this.closed) {
      if (this.headFill < HEADER) {
        const take = Math.min(HEADER - this.headFill, chunk.byteLength - off)
        this.head.set(chunk.subarray(off, off + take), this.headFill)
        this.headFill += take
        off += take
        if (this.headFill < HEADER) return
        if (this.head[0] === KIND_BUSY) { this.onBusy(); continue }
        this.startFrame()
        if (this.frameLen === 0) this.endFrame()
        continue
      }
      const take = Math.min(this.frameLen - this.bodyFill, chunk.byteLength - off)
      const part = chunk.subarray(off, off + take)
      this.body!.set(part, this.bodyFill)
      this.hash?.update(part)
      this.bodyFill += take
      off += take
      if (this.bodyFill === this.frameLen) this.endFrame()
    }
  }

  /** A busy frame: it answers nothing, so it may only come while something is asked, and has no body. */
  private onBusy (): void {
    this.headFill = 0
    if (this.head.readUInt32BE(5) !== 0) throw new PeerViolationError(`busy frame with a body of ${this.head.readUInt32BE(5)} bytes`)
    if (this.pending.length === 0) throw new PeerViolationError('busy frame with nothing asked')
    this.busyIn++
  }

  private startFrame (): void {
    const kind = this.head[0]!
    const n = this.head.readUInt32BE(1)
    const len = this.head.readUInt32BE(5)
    // a parent answers its most urgent request first: a frame is the next piece of some pending request
    // (the first such), and the pieces of each request come in their order
    const p = this.pending.find(q => q.numbers[q.next] === n)
    if (p == null) {
      if (this.pending.length === 0) throw new PeerViolationError(`unrequested piece ${n}`)
      throw new PeerViolationError(`piece ${n} arrived, ${this.pending.map(q => q.numbers[q.next]).join(' or ')} expected`)
    }
    if (kind !== KIND_PIECE && kind !== KIND_REFUSED) throw new PeerViolationError(`unknown frame kind ${kind}`)
    const max = kind === KIND_PIECE ? p.maxBytes : MAX_REFUSED_REASON_BYTES
    if (len > max) throw new PeerViolationError(`piece ${n} frame of ${len} bytes exceeds limit ${max}`)
    if (kind === KIND_PIECE) {
      this.lease = piecePool.acquire(len)
      this.body = this.lease.buf
      this.hash = this.hashOnArrival ? createHash('sha256') : undefined
    } else {
      this.body = Buffer.allocUnsafe(len)
    }
    this.framePending = p
    this.frameKind = kind
    this.frameN = n
    this.frameLen = len
    this.bodyFill = 0
  }

  private endFrame (): void {
    const p = this.framePending!
    this.framePending = undefined
    const body = this.body!
    const lease = this.lease
    const hash = this.hash
    this.headFill = 0; this.body = undefined; this.lease = undefined; this.hash = undefined
    p.next++
    if (this.frameKind === KIND_PIECE) {
      p.onPiece({ n: this.frameN, data: body, claimedDigest: Buffer.from(this.head.subarray(9)), ...(hash != null ? { digest: hash.digest() } : {}), release: lease!.release })
    } else {
      p.onPiece({ n: this.frameN, refused: body.toString() })
    }
    if (p.next === p.numbers.length) { this.pending.splice(this.pending.indexOf(p), 1); p.resolve() }
  }
}

/** Ask the parent for a data channel in `mode`; null when it does not offer one (then use the stream). */
async function openChannel (conn: Connection, mode: DataChannelMode, signal?: AbortSignal): Promise<PieceDuplex | null> {
  let ctl: Stream
  try {
    ctl = await conn.newStream(PIECE_DATA_PROTOCOL, { signal })
  } catch (err) {
    if ((err as Error).name === 'UnsupportedProtocolError') return null
    throw err
  }
  let offer: DataChannelOffer
  // `signal` bounds the wait for the offer too (a hung parent never answers)
  const onAbort = (): void => { ctl.abort(signal?.reason instanceof Error ? signal.reason : new ProtocolError('data channel offer aborted')) }
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    signal?.throwIfAborted()
    ctl.send(lpEncode(dataChannelRequest.encode({ mode: DATA_CHANNEL_MODES[mode] })))
    const reader = new ByteReader(ctl)
    const b = await reader.lp(1024)
    if (b == null) throw new ProtocolError('parent closed the data channel offer stream')
    offer = dataChannelOffer.decode(b)
  } finally {
    signal?.removeEventListener('abort', onAbort)
    await ctl.close().catch(() => {})
  }
  if (offer.refused != null && offer.refused !== '') return null
  if (offer.port == null || offer.port === 0 || offer.token == null || offer.token.byteLength !== 32) throw new ProtocolError('malformed data channel offer')
  if (mode === 'secure' && offer.secret?.byteLength !== 32) throw new ProtocolError('secure data channel offer without a secret')
  const host = hostOf(conn.remoteAddr)
  if (host == null) return null
  return await openDataStream(host, offer.port, mode, offer.token, offer.secret ?? new Uint8Array(), signal)
}

/**
 * The IP the node's libp2p listener is bound to (its first listen multiaddr, as `--listen` gave it):
 * where the data-channel listener binds too. 0.0.0.0 / :: only when that is what the node listens on.
 */
export function listenHost (node: Libp2p): string {
  const listen = (node as unknown as { components?: { addressManager?: { getListenAddrs?: () => Multiaddr[] } } }).components?.addressManager?.getListenAddrs?.()
  for (const ma of listen ?? node.getMultiaddrs()) {
    const host = hostOf(ma)
    if (host != null) return host
  }
  return '127.0.0.1'
}

function hostOf (ma: Multiaddr): string | null {
  for (const c of ma.getComponents()) {
    if ((c.name === 'ip4' || c.name === 'ip6') && c.value != null) return c.value
  }
  return null
}
