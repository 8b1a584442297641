/*
 * Piece data channels: the /guoce/piece/1 byte stream carried on a direct TCP connection instead of
 * a yamux stream inside Noise. The receiver's one JS thread is the limit of a libp2p stream
 * (yamux framing + Noise's 64 KiB records cost more per byte than the bytes); a data channel cuts
 * that overhead while the libp2p connection keeps doing what it is good at: authenticating peers.
 *
 * Set-up, on a Noise-secured libp2p stream /guoce/piece-data/1 (so the parent is the PeerId dialled):
 *   child  -> parent  DataChannelRequest { mode }
 *   parent -> child   DataChannelOffer { port, token (32 random bytes), secret (32 random bytes, secure mode) }
 * The child opens TCP to the same IP as the libp2p connection, port `port`, and writes the token.
 * A token is good for one connection within DATA_CHANNEL_TOKEN_TTL_MS.
 *
 * Bounds (doc/LIMITS.md): the listener binds the host's libp2p listen IP; a socket must present its token
 * within DATA_CHANNEL_HELLO_MS; a parent holds at most DATA_CHANNEL_MAX_SOCKETS sockets
 * (DATA_CHANNEL_MAX_UNAUTHENTICATED of them before their token) and DATA_CHANNEL_MAX_PER_PEER channels
 * and tokens per remote host. What a parent receives is only piece requests: records and buffered bytes
 * of PIECE_REQUEST_BUFFER_BYTES at most. A child accepts records of DATA_CHANNEL_RECORD_BYTES. Inside a
 * record, DATA_CHANNEL_STALL_MS without a byte destroys the channel; PIECE_CHANNEL_IDLE_MS without a byte
 * either way (nothing queued to send) closes it. A broken bound destroys the socket with a
 * PeerViolationError (the child blames the parent); a peer that read nothing of what was queued for it
 * for DATA_CHANNEL_WRITE_STALL_MS loses the channel with a PeerStallError (a strike, not yet a ban).
 *
 * Modes:
 * - `secure` (default): records `u32be length | AES-256-GCM(ciphertext) | 16-byte tag`, the length as
 *   associated data; one key per direction from HKDF-SHA256(secret, token); the nonce is a per-direction
 *   record counter, so a dropped, replayed or reordered record fails authentication. Plaintext is
 *   released only after its record's tag is verified. aes-256-gcm runs at ~3.5 GB/s in node:crypto here.
 * - `integrity` (opt-in on both ends): the piece frames in the clear. Every piece is still verified
 *   by the child against the seed's sha256 before it is stored or served, so a corrupted or forged
 *   piece is still refused; what this mode gives up is confidentiality, and an on-path attacker can
 *   make pieces fail verification (denial of service, blamed on the parent). For trusted networks.
 */
import { createServer, connect, type NetConnectOpts, type Server, type Socket } from 'node:net'
import { hkdfSync, randomBytes } from 'node:crypto'
import { seal, open } from '@guoce/native-crypto'
import { piecePool, type Lease } from '@guoce/content'
import { once } from 'node:events'
import { Uint8ArrayList } from 'uint8arraylist'
import { ProtocolError, defineError } from '@guoce/interface'
import {
  DATA_CHANNEL_BUFFER_BYTES, DATA_CHANNEL_READ_BYTES, DATA_CHANNEL_RECORD_BYTES, DATA_CHANNEL_TOKEN_TTL_MS, DATA_CHANNEL_HELLO_MS,
  DATA_CHANNEL_STALL_MS, DATA_CHANNEL_WRITE_STALL_MS, PIECE_CHANNEL_IDLE_MS, DATA_CHANNEL_MAX_SOCKETS, DATA_CHANNEL_MAX_UNAUTHENTICATED, DATA_CHANNEL_MAX_PER_PEER,
  PIECE_REQUEST_BUFFER_BYTES
} from './constants.js'

/** A peer broke the piece protocol or one of its size, count or time bounds: its channel is destroyed, a parent is blamed. */
export const PeerViolationError = defineError('PeerViolationError', 'ERR_PEER_VIOLATION')
/**
 * A peer took none of what was queued for it for DATA_CHANNEL_WRITE_STALL_MS: its channel is destroyed (what
 * it held is freed). Not proof of a hostile peer: a sender's own congested uplink (tc queue drops, TCP
 * retransmission back-off) starves one of its flows as long, so a parent bans a child only after
 * WRITE_STALL_STRIKES of these (piece-protocol.ts).
 */
export const PeerStallError = defineError('PeerStallError', 'ERR_PEER_STALL')

export type DataChannelMode = 'secure' | 'integrity'
export const DATA_CHANNEL_MODES: Record<DataChannelMode, number> = { secure: 1, integrity: 2 }
export const TOKEN_BYTES = 32
const TAG_BYTES = 16

/** What the piece protocol needs from a byte stream; a libp2p Stream is one, so is a DataStream. */
export interface PieceDuplex extends AsyncIterable<Uint8Array | Uint8ArrayList> {
  send(data: Uint8Array | Uint8ArrayList): boolean
  onDrain(options?: { signal?: AbortSignal }): Promise<void>
  readonly writeStatus: string
  /** bytes handed to `send` and not yet taken by the transport (the upload budget sums them) */
  readonly writeBufferLength?: number
  close(): Promise<void>
  abort(err: Error): void
  /**
   * Push mode (a child's data channel): `onData` gets every received byte range as it arrives, valid
   * only during the call (it lies in a reused read buffer); `onEnd` once, when the stream ends or fails.
   * Streams that have it are not read through the async iterator.
   */
  attach?: (onData: (chunk: Uint8Array) => void, onEnd: (err?: Error) => void) => void
  /** Send `data` and call `done` once the stream no longer reads it (so its buffer can be reused). */
  sendOwned?: (head: Uint8Array, data: Uint8Array, done: () => void) => boolean
}

/** What one side of a data channel accepts from the other. */
export interface DataStreamLimits {
  /** largest record plaintext accepted (secure mode) @default DATA_CHANNEL_RECORD_BYTES */
  recordBytes?: number
  /** an iterated stream (a parent's): bytes received and not yet read, at most @default unbounded */
  queueBytes?: number
  /** inside a record: time without a byte before the socket is destroyed @default DATA_CHANNEL_STALL_MS */
  stallMs?: number
  /** bytes queued to send and none taken for this long: the socket is destroyed @default DATA_CHANNEL_WRITE_STALL_MS */
  writeStallMs?: number
  /** no byte either way and nothing queued to send for this long: the socket is closed @default PIECE_CHANNEL_IDLE_MS */
  idleMs?: number
}

/** What a parent accepts from a child on a data channel: piece requests only. */
export const PARENT_LIMITS: DataStreamLimits = { recordBytes: PIECE_REQUEST_BUFFER_BYTES, queueBytes: PIECE_REQUEST_BUFFER_BYTES }

/** raw AES-256 keys, one per direction */
interface Keys { send: Buffer, recv: Buffer }

export function deriveKeys (secret: Uint8Array, token: Uint8Array, side: 'parent' | 'child'): Keys {
  const k = (info: string): Buffer => Buffer.from(hkdfSync('sha256', secret, token, info, 32))
  const p2c = k('guoce data parent->child'); const c2p = k('guoce data child->parent')
  return side === 'parent' ? { send: p2c, recv: c2p } : { send: c2p, recv: p2c }
}

function nonce (counter: bigint): Buffer {
  const n = Buffer.alloc(12)
  n.writeBigUInt64BE(counter, 4)
  return n
}

function chunksOf (data: Uint8Array | Uint8ArrayList): Uint8Array[] {
  return data instanceof Uint8Array ? [data] : [...data]
}

/** The piece byte stream on a TCP socket, in the clear or in AES-256-GCM records. */
export class DataStream implements PieceDuplex {
  private sendCounter = 0n
  private recvCounter = 0n

  readonly attach?: (onData: (chunk: Uint8Array) => void, onEnd: (err?: Error) => void) => void
  // push mode: where received bytes go, what came before anyone attached, how it ended
  private sink: ((chunk: Uint8Array) => void) | undefined
  private endSink: ((err?: Error) => void) | undefined
  private early: Buffer[] = []
  private ended: { err?: Error } | undefined
  private lastError: Error | undefined
  // push mode, secure: the record being received
  private readonly rHead = Buffer.alloc(4)
  private rHeadFill = 0
  private rLeft = -1
  private readonly rTag = Buffer.alloc(TAG_BYTES)
  private rTagFill = 0
  private rLen = 0
  private rRecord: Lease | undefined
  // bounds: bytes moved either way (sampled by one watchdog timer), bytes queued for an iterated reader
  private bytesIn = 0
  private bytesOut = 0
  private queued = 0
  private readonly recordBytes: number
  private readonly queueBytes: number
  private watchdog: NodeJS.Timeout | undefined

  /**
   * @param push the socket was opened with `onread` calling `onRead` (see openDataStream): bytes are
   * pushed to the one `attach`ed consumer instead of being read through the async iterator. A stream
   * read through the iterator (a parent's) takes the same path, fed by the socket's 'data' events
   * (secure: records opened in place by `openRecords`), and queues at most `limits.queueBytes` for it.
   * @param limits what this side accepts (a parent: PARENT_LIMITS; a child: the defaults)
   */
  constructor (private readonly socket: Socket, private readonly keys?: Keys, push = false, limits: DataStreamLimits = {}) {
    this.recordBytes = limits.recordBytes ?? DATA_CHANNEL_RECORD_BYTES
    this.queueBytes = limits.queueBytes ?? Infinity
    socket.setNoDelay(true)
    // errors reach the user through reads (the iterator rethrows) and onDrain; never as an uncaught event
    socket.on('error', (err) => { this.lastError = err })
    if (push) this.attach = (onData, onEnd) => { this.attachSink(onData, onEnd) }
    // an iterated stream (a parent reading requests) takes the same path: 'data' events in place of onread
    if (!push) socket.on('data', (b: Buffer) => { this.onRead(b.byteLength, b) }).resume() // a server paused it to read the token
    socket.on('end', () => {
      this.finish(this.rLeft >= 0 || this.rHeadFill > 0 ? new ProtocolError('data channel ended inside a record') : undefined)
    })
    socket.on('close', () => { this.finish(this.lastError ?? new ProtocolError('data channel closed')) })
    this.watch(limits.stallMs ?? DATA_CHANNEL_STALL_MS, limits.idleMs ?? PIECE_CHANNEL_IDLE_MS, limits.writeStallMs ?? DATA_CHANNEL_WRITE_STALL_MS)
  }

  /** bytes received so far (a child's parent-stall check samples it) */
  get received (): number { return this.bytesIn }

  /**
   * One timer per channel: it samples the byte counters, so the read path only adds to a counter.
   * Inside a record, `stallMs` without a byte destroys the socket; so does `writeStallMs` with bytes
   * queued to send and none taken by the kernel (the other side reads nothing); `idleMs` without a byte either way,
   * with nothing queued to send, closes it.
   */
  private watch (stallMs: number, idleMs: number, writeStallMs: number): void {
    let seen = -1
    let movedAt = Date.now()
    let written = -1
    let writtenAt = movedAt
    const tick = (): void => {
      if (this.ended != null) { clearInterval(this.watchdog); return }
      const now = Date.now()
      // bytesWritten counts what is still queued too: what the kernel took is the difference
      const out = this.socket.bytesWritten - this.socket.writableLength
      if (out !== written || this.socket.writableLength === 0) { written = out; writtenAt = now }
      if (now - writtenAt >= writeStallMs) {
        this.abort(new PeerStallError(`data channel peer read nothing for ${now - writtenAt} ms`))
        return
      }
      const moved = this.bytesIn + this.bytesOut
      if (moved !== seen) { seen = moved; movedAt = now; return }
      const inRecord = this.rLeft >= 0 || this.rHeadFill > 0
      if (inRecord && now - movedAt >= stallMs) {
        this.abort(new PeerViolationError(`data channel stalled inside a record for ${now - movedAt} ms`))
      } else if (!inRecord && now - movedAt >= idleMs && this.socket.writableLength === 0) {
        this.abort(new ProtocolError(`data channel idle for ${now - movedAt} ms`))
      }
    }
    this.watchdog = setInterval(tick, Math.max(20, Math.min(1000, Math.min(stallMs, idleMs, writeStallMs) / 4)))
    this.watchdog.unref()
  }

  private attachSink (onData: (chunk: Uint8Array) => void, onEnd: (err?: Error) => void): void {
    this.sink = onData; this.endSink = onEnd
    this.queued = 0
    for (const b of this.early.splice(0)) onData(b)
    if (this.ended != null) onEnd(this.ended.err)
  }

  /** push mode: `nread` bytes arrived in `buf` (a read buffer the socket reuses) */
  onRead (nread: number, buf: Buffer): void {
    if (this.ended != null) return
    this.bytesIn += nread
    const chunk = buf.subarray(0, nread)
    try {
      if (this.keys == null) this.deliver(chunk)
      else this.openRecords(chunk)
    } catch (err) {
      this.finish(err as Error)
      this.socket.destroy(err as Error)
    }
  }

  private deliver (chunk: Uint8Array): void {
    if (this.sink != null) { this.sink(chunk); return }
    this.queue(chunk.byteLength)
    this.early.push(Buffer.from(chunk))
  }

  /** `n` more bytes wait for the reader; over the bound the channel is destroyed */
  private queue (n: number): void {
    this.queued += n
    if (this.queued > this.queueBytes) throw new PeerViolationError(`data channel peer sent ${this.queued} bytes ahead of the reader, limit ${this.queueBytes}`)
  }

  private finish (err?: Error): void {
    if (this.ended != null) return
    clearInterval(this.watchdog)
    this.ended = err != null ? { err } : {}
    this.rRecord?.release()
    this.rRecord = undefined
    this.endSink?.(err)
  }

  /**
   * push mode, secure: gather a record's ciphertext into a pooled buffer, open it in place once its tag
   * is in, and deliver its plaintext only then
   */
  private openRecords (chunk: Buffer): void {
    let off = 0
    while (off < chunk.byteLength) {
      if (this.rLeft < 0) {
        const take = Math.min(4 - this.rHeadFill, chunk.byteLength - off)
        chunk.copy(this.rHead, this.rHeadFill, off, off + take)
        this.rHeadFill += take; off += take
        if (this.rHeadFill < 4) return
        const len = this.rHead.readUInt32BE(0)
        if (len < TAG_BYTES || len > this.recordBytes + TAG_BYTES) throw new PeerViolationError(`data channel record of ${len} bytes, limit ${this.recordBytes + TAG_BYTES}`)
        this.rLen = len - TAG_BYTES
        this.rLeft = this.rLen
        this.rRecord = piecePool.acquire(this.rLen)
        this.rTagFill = 0
        continue
      }
      if (this.rLeft > 0) {
        const take = Math.min(this.rLeft, chunk.byteLength - off)
        chunk.copy(this.rRecord!.buf, this.rLen - this.rLeft, off, off + take)
        off += take; this.rLeft -= take
        continue
      }
      const take = Math.min(TAG_BYTES - this.rTagFill, chunk.byteLength - off)
      chunk.copy(this.rTag, this.rTagFill, off, off + take)
      this.rTagFill += take; off += take
      if (this.rTagFill < TAG_BYTES) return
      const record = this.rRecord!
      this.rRecord = undefined; this.rHeadFill = 0; this.rLeft = -1
      if (!open(this.keys!.recv, nonce(this.recvCounter++), this.rHead, record.buf, this.rTag)) {
        record.release()
        throw new ProtocolError('data channel record failed authentication')
      }
      try {
        if (this.rLen > 0) this.deliver(record.buf)
      } finally {
        record.release()
      }
    }
  }

  /** bytes handed to the socket and not yet written to the kernel */
  get writeBufferLength (): number { return this.socket.writableLength }

  get writeStatus (): string { return this.socket.destroyed || !this.socket.writable ? 'closed' : 'writable' }

  send (data: Uint8Array | Uint8ArrayList): boolean {
    this.bytesOut += data.byteLength
    if (this.keys == null) {
      let ok = true
      for (const c of chunksOf(data)) ok = this.socket.write(c)
      return ok
    }
    // records span the chunks of one call: a piece's frame header and body travel in one record,
    // sealed into a pooled buffer that goes back to the pool once the socket has written it
    const chunks = chunksOf(data)
    let total = 0
    for (const c of chunks) total += c.byteLength
    let ok = true
    let i = 0
    let off = 0
    this.socket.cork()
    do {
      const size = Math.min(total, DATA_CHANNEL_RECORD_BYTES)
      total -= size
      const inputs: Uint8Array[] = []
      for (let left = size; left > 0;) {
        const c = chunks[i]!
        const take = Math.min(left, c.byteLength - off)
        inputs.push(c.subarray(off, off + take))
        left -= take
        off += take
        if (off === c.byteLength) { i++; off = 0 }
      }
      const head = Buffer.allocUnsafe(4 + TAG_BYTES)
      head.writeUInt32BE(size + TAG_BYTES)
      const aad = head.subarray(0, 4)
      const tag = head.subarray(4)
      const record = piecePool.acquire(size)
      seal(this.keys.send, nonce(this.sendCounter++), aad, inputs, record.buf, tag)
      this.socket.write(aad)
      this.socket.write(record.buf, () => { record.release() })
      ok = this.socket.write(tag)
    } while (total > 0)
    this.socket.uncork()
    return ok && !this.socket.writableNeedDrain
  }

  sendOwned (head: Uint8Array, data: Uint8Array, done: () => void): boolean {
    if (this.keys != null) {
      // encrypting copies: the plaintext is free as soon as send() returns
      const ok = this.send(new Uint8ArrayList(head, data))
      done()
      return ok
    }
    this.bytesOut += head.byteLength + data.byteLength
    this.socket.write(head)
    return this.socket.write(data, () => { done() })
  }

  async onDrain (_options?: { signal?: AbortSignal }): Promise<void> {
    // bounded by the watchdog: a peer that reads nothing for the stall time loses the channel
    if (!this.socket.writableNeedDrain) return
    const socket = this.socket
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error): void => {
        socket.off('drain', onDrain); socket.off('close', onClose)
        if (err != null) reject(err); else resolve()
      }
      const onDrain = (): void => { done() }
      const onClose = (): void => { done(this.lastError ?? new ProtocolError('data channel closed')) }
      socket.on('drain', onDrain); socket.on('close', onClose)
    })
  }

  async close (): Promise<void> {
    if (this.socket.destroyed) return
    this.socket.end()
  }

  abort (err: Error): void { this.socket.destroy(err) }

  [Symbol.asyncIterator] (): AsyncIterator<Uint8Array> {
    return this.pushed()
  }

  /**
   * The received bytes (opened records, in secure mode) as an iterator; no backpressure: small messages
   * only, and at most `queueBytes` of them waiting (a parent's: PIECE_REQUEST_BUFFER_BYTES).
   */
  private async * pushed (): AsyncGenerator<Uint8Array> {
    const queue: Buffer[] = []
    let end: { err?: Error } | undefined
    let wake: (() => void) | undefined
    this.attachSink(c => { this.queue(c.byteLength); queue.push(Buffer.from(c)); wake?.() }, err => { end = err != null ? { err } : {}; wake?.() })
    while (true) {
      const next = queue.shift()
      if (next != null) { this.queued -= next.byteLength; yield next; continue }
      if (end != null) {
        if (end.err != null) throw end.err
        return
      }
      await new Promise<void>(resolve => { wake = resolve })
      wake = undefined
    }
  }
}

interface PendingToken { mode: DataChannelMode, secret: Uint8Array, expires: number, remote: string }

/** The parent's side: a TCP listener that turns tokens handed out on libp2p streams into DataStreams. */
export class DataChannelServer {
  private readonly tokens = new Map<string, PendingToken>()
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  /** sockets still waiting for their token */
  private unauthenticated = 0
  /** per remote host: tokens outstanding + channels open */
  private readonly perPeer = new Map<string, number>()

  constructor (private readonly onStream: (stream: DataStream, remote: string) => void, readonly modes: Set<DataChannelMode>, private readonly limits: DataStreamLimits = PARENT_LIMITS) {}

  async listen (port = 0, host?: string): Promise<number> {
    const server = createServer({ noDelay: true, highWaterMark: DATA_CHANNEL_BUFFER_BYTES }, socket => { this.accept(socket) })
    this.server = server
    server.listen({ port, ...(host != null ? { host } : {}) })
    await once(server, 'listening')
    server.unref()
    const addr = server.address()
    if (addr == null || typeof addr === 'string') throw new Error('data channel server has no port')
    return addr.port
  }

  get port (): number {
    const addr = this.server?.address()
    return addr != null && typeof addr !== 'string' ? addr.port : 0
  }

  /** the address the listener is bound to */
  get address (): string | undefined {
    const addr = this.server?.address()
    return addr != null && typeof addr !== 'string' ? addr.address : undefined
  }

  /** sockets held now (with or without their token) */
  get socketCount (): number { return this.sockets.size }

  private count (remote: string, delta: number): void {
    const n = (this.perPeer.get(remote) ?? 0) + delta
    if (n <= 0) this.perPeer.delete(remote); else this.perPeer.set(remote, n)
  }

  private purge (now: number): void {
    for (const [k, t] of this.tokens) {
      if (t.expires < now) { this.tokens.delete(k); this.count(t.remote, -1) }
    }
  }

  /**
   * A single-use token for `remote`, valid for DATA_CHANNEL_TOKEN_TTL_MS. Throws a ProtocolError when
   * `remote` already holds DATA_CHANNEL_MAX_PER_PEER tokens and channels, or the parent
   * DATA_CHANNEL_MAX_SOCKETS tokens.
   */
  offer (mode: DataChannelMode, remote: string): { token: Uint8Array, secret: Uint8Array } {
    const now = Date.now()
    this.purge(now)
    if ((this.perPeer.get(remote) ?? 0) >= DATA_CHANNEL_MAX_PER_PEER) throw new ProtocolError(`too many data channels for one host (limit ${DATA_CHANNEL_MAX_PER_PEER})`)
    if (this.tokens.size >= DATA_CHANNEL_MAX_SOCKETS) throw new ProtocolError(`too many data channel tokens outstanding (limit ${DATA_CHANNEL_MAX_SOCKETS})`)
    const token = randomBytes(TOKEN_BYTES)
    const secret = mode === 'secure' ? randomBytes(32) : new Uint8Array()
    this.tokens.set(token.toString('hex'), { mode, secret, expires: now + DATA_CHANNEL_TOKEN_TTL_MS, remote })
    this.count(remote, 1)
    return { token, secret }
  }

  async close (): Promise<void> {
    for (const s of this.sockets) s.destroy()
    this.tokens.clear()
    this.perPeer.clear()
    if (this.server != null) await new Promise<void>(resolve => { this.server!.close(() => { resolve() }) })
  }

  private accept (socket: Socket): void {
    socket.on('error', () => {})
    if (this.sockets.size >= DATA_CHANNEL_MAX_SOCKETS || this.unauthenticated >= DATA_CHANNEL_MAX_UNAUTHENTICATED) { socket.destroy(); return }
    this.sockets.add(socket)
    this.unauthenticated++
    let remote: string | undefined
    let waiting = true
    const authenticated = (): void => { if (waiting) { waiting = false; this.unauthenticated-- } }
    // the token comes first, within DATA_CHANNEL_HELLO_MS, or the socket goes (nothing is ever written to it)
    const timer = setTimeout(() => { socket.destroy() }, DATA_CHANNEL_HELLO_MS)
    socket.once('close', () => {
      this.sockets.delete(socket)
      authenticated()
      clearTimeout(timer)
      if (remote != null) this.count(remote, -1)
    })
    let got: Buffer = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      got = got.byteLength === 0 ? chunk : Buffer.concat([got, chunk])
      if (got.byteLength < TOKEN_BYTES) return
      socket.off('data', onData)
      socket.pause()
      clearTimeout(timer)
      authenticated()
      const token = got.subarray(0, TOKEN_BYTES)
      const rest = got.subarray(TOKEN_BYTES)
      const key = token.toString('hex')
      const pending = this.tokens.get(key)
      if (pending == null) { socket.destroy(); return }
      this.tokens.delete(key)
      // the token's count now stands for the channel, until the socket closes
      remote = pending.remote
      if (pending.expires < Date.now()) { socket.destroy(); return }
      if (rest.byteLength > 0) socket.unshift(rest)
      const keys = pending.mode === 'secure' ? deriveKeys(pending.secret, token, 'parent') : undefined
      this.onStream(new DataStream(socket, keys, false, this.limits), pending.remote)
    }
    socket.on('data', onData)
  }
}

/** The child's side: connect, present the token, wrap (in push mode: reads land in one reused buffer). */
export async function openDataStream (host: string, port: number, mode: DataChannelMode, token: Uint8Array, secret: Uint8Array, signal?: AbortSignal): Promise<DataStream> {
  let stream: DataStream | undefined
  const onread = {
    buffer: Buffer.allocUnsafeSlow(DATA_CHANNEL_READ_BYTES),
    // `stream` exists before the socket connects, so before any read
    callback: (nread: number, buf: Buffer): boolean => { stream!.onRead(nread, buf); return true }
  }
  // highWaterMark is accepted by net.connect (Node >= 18.17) but missing from @types/node's NetConnectOpts.
  // `signal` bounds the connect only: given to net.connect it would destroy the open channel when it fires
  const opts: NetConnectOpts & { highWaterMark: number } = { host, port, noDelay: true, onread, highWaterMark: DATA_CHANNEL_BUFFER_BYTES }
  const socket = connect(opts)
  stream = new DataStream(socket, mode === 'secure' ? deriveKeys(secret, token, 'child') : undefined, true)
  const onAbort = (): void => { socket.destroy(signal?.reason instanceof Error ? signal.reason : new ProtocolError('data channel connect aborted')) }
  signal?.throwIfAborted()
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    await once(socket, 'connect')
  } catch (err) {
    socket.destroy()
    throw err
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
  socket.write(token)
  return stream
}
