/**
 * A local HTTP origin for tests and benchmarks: serves in-memory files with Range support,
 * an optional shared upload rate (token bucket over all responses), counts every body byte it
 * sends, and has fault routes: /status/N, /hang, /short/<name> (Content-Length larger than the body).
 */
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface OriginInit {
  files: Record<string, Buffer>
  /** shared upload limit in bytes/s (0 = unlimited) */
  rate?: number
  host?: string
}

export interface Origin {
  url: string
  /** body bytes sent so far, per file name and in total */
  sent: Record<string, number>
  totalSent(): number
  requests: number
  setRate(rate: number): void
  close(): Promise<void>
}

class Bucket {
  private tokens = 0
  private last = Date.now()
  constructor (public rate: number) {}
  /** resolves when `n` bytes may go */
  async take (n: number): Promise<void> {
    if (this.rate <= 0) return
    for (;;) {
      const now = Date.now()
      this.tokens = Math.min(this.rate / 4, this.tokens + (now - this.last) * this.rate / 1000)
      this.last = now
      if (this.tokens >= n || (n > this.rate / 4 && this.tokens >= this.rate / 4)) { this.tokens -= n; return }
      await new Promise(resolve => setTimeout(resolve, Math.max(5, Math.ceil((n - this.tokens) * 1000 / this.rate))))
    }
  }
}

async function send (res: ServerResponse, body: Buffer, bucket: Bucket, count: (n: number) => void): Promise<void> {
  const CHUNK = 64 * 1024
  for (let off = 0; off < body.length && !res.destroyed; off += CHUNK) {
    const part = body.subarray(off, Math.min(body.length, off + CHUNK))
    await bucket.take(part.length)
    if (res.destroyed) break
    count(part.length)
    if (!res.write(part)) {
      await new Promise<void>(resolve => {
        const done = (): void => { res.off('drain', done); res.off('close', done); resolve() }
        res.on('drain', done); res.on('close', done)
      })
    }
  }
}

export async function startOrigin (init: OriginInit): Promise<Origin> {
  const bucket = new Bucket(init.rate ?? 0)
  const sent: Record<string, number> = {}
  const hanging = new Set<ServerResponse>()
  let requests = 0
  const server: Server = createServer((req, res) => {
    requests++
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]!)
    const status = /^\/status\/(\d{3})$/.exec(path)
    if (status?.[1] != null) { res.writeHead(Number(status[1]), { 'content-type': 'text/plain' }); res.end('error\n'); return }
    if (path === '/hang') { hanging.add(res); res.on('close', () => hanging.delete(res)); return }
    const short = /^\/short\/(.+)$/.exec(path)
    const name = short?.[1] ?? path.slice(1)
    const file = init.files[name]
    if (file == null) { res.writeHead(404); res.end('not found\n'); return }
    const count = (n: number): void => { sent[name] = (sent[name] ?? 0) + n }
    if (short != null) {
      res.writeHead(200, { 'content-length': String(file.length), 'content-type': 'application/octet-stream' })
      void send(res, file.subarray(0, file.length >> 1), bucket, count).then(() => { res.destroy() })
      return
    }
    let body = file
    const range = req.headers.range
    const m = typeof range === 'string' ? /^bytes=(\d+)-(\d*)$/.exec(range) : null
    if (m?.[1] != null) {
      const start = Number(m[1])
      const end = m[2] != null && m[2] !== '' ? Math.min(file.length - 1, Number(m[2])) : file.length - 1
      if (start >= file.length || start > end) { res.writeHead(416, { 'content-range': `bytes */${file.length}` }); res.end(); return }
      body = file.subarray(start, end + 1)
      res.writeHead(206, { 'content-length': String(body.length), 'content-range': `bytes ${start}-${end}/${file.length}`, 'accept-ranges': 'bytes' })
    } else {
      res.writeHead(200, { 'content-length': String(file.length), 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes' })
    }
    void send(res, body, bucket, count).then(() => { res.end() })
  })
  await new Promise<void>(resolve => server.listen(0, init.host ?? '127.0.0.1', resolve))
  const { address, port } = server.address() as AddressInfo
  return {
    url: `http://${address}:${port}`,
    sent,
    totalSent: () => Object.values(sent).reduce((a, b) => a + b, 0),
    get requests () { return requests },
    setRate: (r) => { bucket.rate = r },
    close: async () => {
      for (const r of hanging) r.destroy()
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => { resolve() }))
    }
  }
}
