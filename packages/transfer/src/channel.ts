import type { Stream } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { ProtocolError } from '@guoce/interface'
import { ByteReader, encodeVarint, pausingSource, type ReadBudget } from './bytes.js'
import { MAX_SCHEDULER_READ_AHEAD_BYTES, MAX_SCHEDULER_MESSAGE_BYTES, MESSAGE_STALL_TIMEOUT_MS, SCHEDULER_IDLE_TIMEOUT_MS } from './constants.js'

/**
 * Length-prefixed protobuf messages both ways over one long-lived stream.
 * `send` never reorders. Messages sent in the same tick leave as one write (one yamux frame, one
 * Noise frame, one syscall): the scheduler's announcement bursts cost one write, not hundreds.
 * Reading is bounded: a message is at most MAX_SCHEDULER_MESSAGE_BYTES; a stream silent for
 * SCHEDULER_IDLE_TIMEOUT_MS, or a message not whole MESSAGE_STALL_TIMEOUT_MS after its first byte,
 * ends `messages()` with a ProtocolError (the owner then drops the stream).
 */
export class MessageChannel<In, Out> {
  private readonly reader: ByteReader
  private sending: Promise<void> = Promise.resolve()

  constructor (
    readonly stream: Stream,
    private readonly encode: (m: Out) => Uint8Array,
    private readonly decode: (b: Uint8Array) => In,
    /** shared by every channel of a service: bytes of messages being received (a scheduler's SCHEDULER_READ_BUDGET_BYTES) */
    private readonly budget?: ReadBudget
  ) {
    this.reader = new ByteReader(pausingSource(stream, MAX_SCHEDULER_READ_AHEAD_BYTES))
  }

  private batch: Uint8ArrayList | undefined

  send (msg: Out): Promise<void> {
    const body = this.encode(msg)
    if (body.byteLength > MAX_SCHEDULER_MESSAGE_BYTES) throw new ProtocolError(`message of ${body.byteLength} bytes exceeds limit ${MAX_SCHEDULER_MESSAGE_BYTES}`)
    if (this.batch == null) {
      this.batch = new Uint8ArrayList()
      queueMicrotask(() => { this.flush() })
    }
    this.batch.append(encodeVarint(body.byteLength), body)
    return this.sending
  }

  private flush (): void {
    const batch = this.batch
    this.batch = undefined
    if (batch == null || this.stream.status !== 'open' || this.stream.writeStatus !== 'writable') return
    try {
      const full = !this.stream.send(batch)
      if (full) this.sending = this.sending.then(async () => { await this.stream.onDrain() }).catch(() => {})
    } catch {
      // the stream closed under us; the reader side reports it
    }
  }

  async * messages (): AsyncGenerator<In> {
    while (true) {
      const b = await this.reader.lp(MAX_SCHEDULER_MESSAGE_BYTES, { idleMs: SCHEDULER_IDLE_TIMEOUT_MS, stallMs: MESSAGE_STALL_TIMEOUT_MS }, this.budget)
      if (b == null) return
      yield this.decode(b)
    }
  }

  close (err?: Error): void {
    if (err != null) this.stream.abort(err)
    else void this.stream.close().catch(() => {})
  }
}
