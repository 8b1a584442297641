/**
 * /guoce/piece/1
 *
 * child -> parent: varint-length-prefixed PieceRequest (task id, piece numbers, priority), any number, pipelined.
 * parent -> child: for every requested number, in request order, one frame:
 *   u8 kind (0 = piece, 1 = refused) | u32be number | u32be length | 32-byte sha256 (zero when refused) | length bytes
 * A refused piece carries a utf-8 reason instead of data. The child never trusts the digest in the frame;
 * it verifies against the seed's digest that the scheduler relayed.
 */
import type { Libp2p } from 'libp2p'
import type { Stream, Connection } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { ProtocolError, type AbortOptions, type Logger } from '@guoce/interface'
import { ByteReader, lpEncode } from './bytes.js'
import { PIECE_PROTOCOL, MAX_MESSAGE_BYTES, MAX_PIECE_BYTES, MAX_PIECES_PER_REQUEST, MAX_PENDING_REQUESTS_PER_STREAM } from './constants.js'
import { pieceRequest, type PieceRequest } from './messages.js'

const HEADER = 1 + 4 + 4 + 32
const KIND_PIECE = 0
const KIND_REFUSED = 1

export interface StoredPiece { data: Uint8Array, digest: Uint8Array }

/** What a parent serves from: its local store. Returns null when the piece is not held (yet). */
export interface PieceProvider {
  getPiece(taskId: string, n: number): Promise<StoredPiece | null>
  /** called with the bytes actually sent, for upload accounting */
  onUpload?(taskId: string, bytes: number, remotePeer: string): void
}

export interface PieceServerInit {
  provider: PieceProvider
  log: Logger
  /** @default 64 */
  maxInboundStreams?: number
}

function frame (kind: number, n: number, body: Uint8Array, digest?: Uint8Array): Uint8Array {
  const h = Buffer.alloc(HEADER)
  h[0] = kind
  h.writeUInt32BE(n, 1)
  h.writeUInt32BE(body.byteLength, 5)
  if (digest != null) h.set(digest, 9)
  return h
}

/** Register the piece protocol handler on `node`. */
export async function servePieces (node: Libp2p, init: PieceServerInit): Promise<void> {
  const log = init.log.child({ component: 'transfer:piece-server' })
  await node.handle(PIECE_PROTOCOL, (stream: Stream, connection: Connection) => {
    void handle(stream, connection.remotePeer.toString()).catch((err: Error) => {
      log.debug('piece stream ended with error', { err: err.message })
      stream.abort(err)
    })
  }, { maxInboundStreams: init.maxInboundStreams ?? 64, runOnLimitedConnection: false })

  async function handle (stream: Stream, remote: string): Promise<void> {
    const reader = new ByteReader(stream)
    while (true) {
      const b = await reader.lp(MAX_MESSAGE_BYTES)
      if (b == null) break
      const req = pieceRequest.decode(b)
      if (req.numbers.length > MAX_PIECES_PER_REQUEST) throw new ProtocolError(`request names ${req.numbers.length} pieces, limit ${MAX_PIECES_PER_REQUEST}`)
      for (const n of req.numbers) {
        let piece: StoredPiece | null = null
        let reason = 'not held'
        try {
          piece = await init.provider.getPiece(req.taskId, n)
        } catch (err) {
          reason = (err as Error).message
        }
        if (stream.writeStatus !== 'writable') return
        let full: boolean
        if (piece == null) {
          const body = Buffer.from(reason)
          stream.send(frame(KIND_REFUSED, n, body))
          full = !stream.send(body)
        } else {
          stream.send(frame(KIND_PIECE, n, piece.data, piece.digest))
          full = !stream.send(piece.data)
          init.provider.onUpload?.(req.taskId, piece.data.byteLength, remote)
        }
        if (full) await stream.onDrain()
      }
    }
    await stream.close().catch(() => {})
  }
}

export type PieceResult = { n: number, data: Uint8Array, claimedDigest: Uint8Array } | { n: number, refused: string }

interface Pending { numbers: number[], next: number, onPiece: (r: PieceResult) => void, resolve: () => void, reject: (err: Error) => void }

/**
 * One pipelined piece stream to one parent. Requests are answered in order; a failure of the
 * stream fails every pending request (the caller re-queues their pieces elsewhere).
 */
export class PieceConnection {
  private readonly pending: Pending[] = []
  private closed = false
  private closeError: Error | undefined

  private constructor (private readonly stream: Stream) {
    void this.readLoop()
  }

  static async open (node: Libp2p, addrs: Multiaddr[] | string[], options: AbortOptions = {}): Promise<PieceConnection> {
    const mas = addrs.map(a => typeof a === 'string' ? multiaddr(a) : a)
    const stream = await node.dialProtocol(mas, PIECE_PROTOCOL, { signal: options.signal })
    return new PieceConnection(stream)
  }

  get inflight (): number { return this.pending.reduce((s, p) => s + p.numbers.length - p.next, 0) }
  get isOpen (): boolean { return !this.closed }

  /** Ask for `numbers` of `taskId`; `onPiece` runs for each as it arrives; resolves when all arrived. */
  request (req: PieceRequest, onPiece: (r: PieceResult) => void): Promise<void> {
    if (this.closed) return Promise.reject(this.closeError ?? new ProtocolError('piece stream closed'))
    if (this.pending.length >= MAX_PENDING_REQUESTS_PER_STREAM) return Promise.reject(new ProtocolError('too many pending piece requests'))
    const { promise, resolve, reject } = Promise.withResolvers<void>()
    this.pending.push({ numbers: req.numbers, next: 0, onPiece, resolve, reject })
    this.stream.send(lpEncode(pieceRequest.encode(req)))
    return promise
  }

  close (err?: Error): void {
    if (this.closed) return
    this.closed = true
    this.closeError = err ?? new ProtocolError('piece stream closed')
    for (const p of this.pending.splice(0)) p.reject(this.closeError)
    if (err != null) this.stream.abort(err)
    else void this.stream.close().catch(() => {})
  }

  private async readLoop (): Promise<void> {
    const reader = new ByteReader(this.stream)
    try {
      while (!this.closed) {
        const head = await reader.exact(HEADER).catch((err: Error) => {
          if (this.pending.length === 0 && !this.closed) return null
          throw err
        })
        if (head == null) break
        const kind = head[0]
        const n = Buffer.from(head.buffer, head.byteOffset, head.byteLength).readUInt32BE(1)
        const len = Buffer.from(head.buffer, head.byteOffset, head.byteLength).readUInt32BE(5)
        const p = this.pending[0]
        if (p == null) throw new ProtocolError(`unrequested piece ${n}`)
        if (p.numbers[p.next] !== n) throw new ProtocolError(`piece ${n} arrived, ${p.numbers[p.next]} expected`)
        if (len > MAX_PIECE_BYTES) throw new ProtocolError(`piece ${n} of ${len} bytes exceeds limit`)
        const body = await reader.exact(len)
        p.next++
        if (kind === KIND_PIECE) p.onPiece({ n, data: body, claimedDigest: head.subarray(9) })
        else if (kind === KIND_REFUSED) p.onPiece({ n, refused: Buffer.from(body).toString() })
        else throw new ProtocolError(`unknown frame kind ${kind}`)
        if (p.next === p.numbers.length) { this.pending.shift(); p.resolve() }
      }
      this.close()
    } catch (err) {
      this.close(err as Error)
    }
  }
}
