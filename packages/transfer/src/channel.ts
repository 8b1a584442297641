import type { Stream } from '@libp2p/interface'
import { ByteReader, lpEncode } from './bytes.js'
import { MAX_MESSAGE_BYTES } from './constants.js'

/**
 * Length-prefixed protobuf messages both ways over one long-lived stream.
 * `send` never reorders; it waits for drain when the stream's write buffer is full.
 */
export class MessageChannel<In, Out> {
  private readonly reader: ByteReader
  private sending: Promise<void> = Promise.resolve()

  constructor (
    readonly stream: Stream,
    private readonly encode: (m: Out) => Uint8Array,
    private readonly decode: (b: Uint8Array) => In
  ) {
    this.reader = new ByteReader(stream)
  }

  send (msg: Out): Promise<void> {
    const bytes = lpEncode(this.encode(msg))
    if (this.stream.status !== 'open' || this.stream.writeStatus !== 'writable') return Promise.resolve()
    const full = !this.stream.send(bytes)
    if (full) this.sending = this.sending.then(async () => { await this.stream.onDrain() }).catch(() => {})
    return this.sending
  }

  async * messages (): AsyncGenerator<In> {
    while (true) {
      const b = await this.reader.lp(MAX_MESSAGE_BYTES)
      if (b == null) return
      yield this.decode(b)
    }
  }

  close (err?: Error): void {
    if (err != null) this.stream.abort(err)
    else void this.stream.close().catch(() => {})
  }
}
