import { describe, it, expect } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { PieceConnection, Priority, type PieceDuplex, type PieceResult } from '../src/index.js'

/** A PieceDuplex in push mode whose received bytes the test feeds by hand. */
function fakeChannel (): { duplex: PieceDuplex, feed: (b: Uint8Array) => void, end: (err?: Error) => void, sent: Uint8Array[] } {
  let onData: ((c: Uint8Array) => void) | undefined
  let onEnd: ((err?: Error) => void) | undefined
  const sent: Uint8Array[] = []
  const duplex: PieceDuplex = {
    send (d) { sent.push(d instanceof Uint8Array ? d : d.subarray()); return true },
    async onDrain () {},
    writeStatus: 'writable',
    async close () {},
    abort () {},
    attach (d, e) { onData = d; onEnd = e },
    [Symbol.asyncIterator] () { throw new Error('push mode: not iterated') }
  }
  return { duplex, feed: b => { onData!(b) }, end: err => { onEnd!(err) }, sent }
}

function frame (kind: number, n: number, body: Uint8Array, digest: Uint8Array = new Uint8Array(32)): Buffer {
  const h = Buffer.alloc(41)
  h[0] = kind; h.writeUInt32BE(n, 1); h.writeUInt32BE(body.byteLength, 5); h.set(digest, 9)
  return Buffer.concat([h, body])
}

const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest()

describe('piece frames in push mode', () => {
  it('parses frames split at every byte, hashing each piece as it arrives', async () => {
    const a = randomBytes(70_000); const b = randomBytes(1)
    const wire = Buffer.concat([frame(0, 7, a, sha(a)), frame(1, 8, Buffer.from('not held')), frame(0, 9, b, sha(b))])
    for (const step of [1, 2, 40, 41, 42, 4096, wire.byteLength]) {
      const ch = fakeChannel()
      const conn = PieceConnection.over(ch.duplex, 'integrity')
      const got: PieceResult[] = []
      const done = conn.request({ taskId: 't', numbers: [7, 8, 9], priority: Priority.BACKGROUND }, r => {
        // the piece's buffer is the caller's until release: copy what the assertions need first
        got.push('refused' in r ? r : { ...r, data: Buffer.from(r.data) })
        if (!('refused' in r)) r.release?.()
      })
      // the bytes arrive in a reused read buffer: scribble over it after every call
      const scratch = Buffer.alloc(step)
      for (let off = 0; off < wire.byteLength; off += step) {
        const n = Math.min(step, wire.byteLength - off)
        wire.copy(scratch, 0, off, off + n)
        ch.feed(scratch.subarray(0, n))
        scratch.fill(0xaa)
      }
      await done
      expect(got.map(r => r.n)).toEqual([7, 8, 9])
      const [p7, r8, p9] = got
      if (p7 == null || 'refused' in p7 || r8 == null || !('refused' in r8) || p9 == null || 'refused' in p9) throw new Error(`unexpected results at step ${step}`)
      expect(Buffer.from(p7.data).equals(a)).toBe(true)
      expect(Buffer.from(p7.digest!).equals(sha(a))).toBe(true)
      expect(r8.refused).toBe('not held')
      expect(Buffer.from(p9.data).equals(b)).toBe(true)
      expect(Buffer.from(p9.digest!).equals(sha(b))).toBe(true)
      conn.close()
    }
  })

  it('the digest is computed over the bytes received, not taken from the frame', async () => {
    const real = randomBytes(1000)
    const forged = Buffer.from(real); forged[10] = forged[10]! ^ 1
    const ch = fakeChannel()
    const conn = PieceConnection.over(ch.duplex, 'integrity')
    let result: PieceResult | undefined
    const done = conn.request({ taskId: 't', numbers: [0], priority: Priority.BACKGROUND }, r => { result = r })
    ch.feed(frame(0, 0, forged, sha(real)))
    await done
    if (result == null || 'refused' in result) throw new Error('no piece')
    expect(Buffer.from(result.claimedDigest).equals(sha(real))).toBe(true)
    expect(Buffer.from(result.digest!).equals(sha(forged))).toBe(true)
  })

  it('an unrequested piece, an oversized frame or an end inside a frame fail every pending request', async () => {
    const cases: Array<[string, (ch: ReturnType<typeof fakeChannel>) => void, RegExp]> = [
      ['unrequested', ch => { ch.feed(frame(0, 5, randomBytes(10))) }, /piece 5 arrived, 1 (or \d+ )?expected/],
      ['oversized', ch => { const h = frame(0, 1, new Uint8Array()); h.writeUInt32BE(0xffffffff, 5); ch.feed(h) }, /exceeds limit/],
      ['unknown kind', ch => { ch.feed(frame(7, 1, randomBytes(3))) }, /unknown frame kind 7/],
      ['truncated', ch => { ch.feed(frame(0, 1, randomBytes(100)).subarray(0, 60)); ch.end() }, /ended inside a frame/]
    ]
    for (const [what, act, msg] of cases) {
      const ch = fakeChannel()
      const conn = PieceConnection.over(ch.duplex, 'integrity')
      const first = conn.request({ taskId: 't', numbers: [1], priority: Priority.BACKGROUND }, () => {})
      const second = conn.request({ taskId: 't', numbers: [2], priority: Priority.BACKGROUND }, () => {})
      act(ch)
      await expect(first, what).rejects.toThrow(msg)
      await expect(second, what).rejects.toThrow(msg)
      expect(conn.isOpen).toBe(false)
    }
  })

  it('busy frames answer nothing and are counted; one with a body or with nothing asked breaks the protocol', async () => {
    const a = randomBytes(5000)
    const ch = fakeChannel()
    const conn = PieceConnection.over(ch.duplex, 'integrity')
    const got: number[] = []
    const done = conn.request({ taskId: 't', numbers: [3], priority: Priority.BACKGROUND }, r => { got.push(r.n) })
    ch.feed(frame(2, 0, new Uint8Array()))
    ch.feed(Buffer.concat([frame(2, 0, new Uint8Array()), frame(0, 3, a, sha(a))]))
    await done
    expect(got).toEqual([3])
    expect(conn.busy).toBe(2)
    // nothing asked any more: a busy frame now is a violation
    ch.feed(frame(2, 0, new Uint8Array()))
    expect(conn.isOpen).toBe(false)
    // a busy frame with a body
    const ch2 = fakeChannel()
    const conn2 = PieceConnection.over(ch2.duplex, 'integrity')
    const pending = conn2.request({ taskId: 't', numbers: [1], priority: Priority.BACKGROUND }, () => {})
    ch2.feed(frame(2, 0, randomBytes(8)))
    await expect(pending).rejects.toThrow(/busy frame with a body of 8 bytes/)
    expect(conn2.busy).toBe(0)
  })

  it('a clean end with nothing pending closes quietly', async () => {
    const ch = fakeChannel()
    const conn = PieceConnection.over(ch.duplex, 'integrity')
    ch.end()
    expect(conn.isOpen).toBe(false)
    await expect(conn.request({ taskId: 't', numbers: [1], priority: Priority.BACKGROUND }, () => {})).rejects.toMatchObject({ name: 'ProtocolError' })
  })
})

describe('piece frame bounds', () => {
  it('a piece frame longer than the task\'s piece length closes the connection before allocating it', async () => {
    const ch = fakeChannel()
    const conn = PieceConnection.over(ch.duplex, 'integrity')
    const done = conn.request({ taskId: 't', numbers: [3], priority: Priority.BACKGROUND }, () => {}, 1024 * 1024)
    const h = Buffer.alloc(41)
    h[0] = 0; h.writeUInt32BE(3, 1); h.writeUInt32BE(1024 * 1024 + 1, 5)
    ch.feed(h)
    await expect(done).rejects.toMatchObject({ name: 'PeerViolationError' })
    expect(conn.isOpen).toBe(false)
  })

  it('a refusal with a long reason, an unknown kind and an unrequested piece are violations', async () => {
    for (const [kind, n, len] of [[1, 0, 4096], [7, 0, 1], [0, 5, 1]] as const) {
      const ch = fakeChannel()
      const conn = PieceConnection.over(ch.duplex, 'integrity')
      const done = conn.request({ taskId: 't', numbers: [0], priority: Priority.BACKGROUND }, () => {}, 1024)
      const h = Buffer.alloc(41)
      h[0] = kind; h.writeUInt32BE(n, 1); h.writeUInt32BE(len, 5)
      ch.feed(h)
      await expect(done).rejects.toMatchObject({ name: 'PeerViolationError' })
    }
  })

  it('counts the bytes received, for the parent-stall check', () => {
    const ch = fakeChannel()
    const conn = PieceConnection.over(ch.duplex, 'integrity')
    void conn.request({ taskId: 't', numbers: [0], priority: Priority.BACKGROUND }, r => { if (!('refused' in r)) r.release?.() }, 1024).catch(() => {})
    expect(conn.received).toBe(0)
    ch.feed(frame(0, 0, Buffer.alloc(100)).subarray(0, 60))
    expect(conn.received).toBe(60)
  })
})
