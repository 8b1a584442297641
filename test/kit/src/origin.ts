/**
 * A local HTTP origin for tests and benchmarks: serves in-memory files with Range support,
 * an optional shared upload rate (token bucket over all responses), counts every body byte it
 * sends, and has fault routes: /status/N, /hang, /short/<name> (Content-Length larger than the body).
 * Optionally (`validators`) it sends ETag and/or Last-Modified and honours If-Match,
 * If-Unmodified-Since and If-Range; `setFile` replaces a file's content at run time (new validators);
 * `secrets` makes files private: 401 unless `Authorization: Bearer <secret>` or `?token=<secret>`.
 */
import { createHash } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface OriginInit {
  files: Record<string, Buffer>
  /** shared upload limit in bytes/s (0 = unlimited) */
  rate?: number
  host?: string
  /** validators on responses (HEAD, GET) and conditional requests honoured @default 'none' */
  validators?: 'etag' | 'last-modified' | 'both' | 'none'
  /** answer HEAD with 405 (as some origins and presigned URLs do) @default false */
  refuseHead?: boolean
  /** file name -> the secret it needs (bearer token or `token` query parameter); 401 otherwise */
  secrets?: Record<string, string>
}

export interface Origin {
  url: string
  /** body bytes sent so far, per file name and in total */
  sent: Record<string, number>
  totalSent(): number
  requests: number
  /** requests per method (GET, HEAD) */
  methods: Record<string, number>
  /** replace (or add) a file: a new ETag, and a Last-Modified at least one second later */
  setFile(name: string, body: Buffer): void
  /** the task version a daemon reads for this file now ('' without validators) */
  version(name: string): string
  setRate(rate: number): void
  close(): Promise<void>
}

export class Bucket {
  private tokens = 0
  private last = Date.now()
  /** takers in arrival order: a link shares its rate between flows, the first waiting goes first */
  private readonly queue: Array<() => void> = []
  private busy = false
  constructor (public rate: number) {}
  /** resolves when `n` bytes may go */
  async take (n: number): Promise<void> {
    if (this.rate <= 0) return
    if (this.busy) await new Promise<void>(resolve => { this.queue.push(resolve) })
    this.busy = true
    try {
      for (;;) {
        const now = Date.now()
        this.tokens = Math.min(this.rate / 4, this.tokens + (now - this.last) * this.rate / 1000)
        this.last = now
        if (this.tokens >= n || (n > this.rate / 4 && this.tokens >= this.rate / 4)) { this.tokens -= n; return }
        await new Promise(resolve => setTimeout(resolve, Math.max(5, Math.ceil((n - this.tokens) * 1000 / this.rate))))
      }
    } finally {
      const next = this.queue.shift()
      if (next != null) next()
      else this.busy = false
    }
  }
}

export async function send (res: ServerResponse, body: Buffer, bucket: Bucket, count: (n: number) => void): Promise<void> {
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
  const methods: Record<string, number> = {}
  const mode = init.validators ?? 'none'
  const etags = new Map<string, string>()
  const modified = new Map<string, number>()
  const stamp = (name: string): void => {
    const file = init.files[name]
    if (file == null) return
    etags.set(name, `"${createHash('sha256').update(file).digest('hex').slice(0, 32)}"`)
    // HTTP dates have whole seconds: every change moves Last-Modified by one at least
    const prev = modified.get(name)
    const now = Math.floor(Date.now() / 1000) * 1000
    modified.set(name, prev != null && now <= prev ? prev + 1000 : now)
  }
  for (const name of Object.keys(init.files)) stamp(name)
  const validatorHeaders = (name: string): Record<string, string> => {
    const h: Record<string, string> = {}
    if (mode === 'etag' || mode === 'both') h.etag = etags.get(name)!
    if (mode === 'last-modified' || mode === 'both') h['last-modified'] = new Date(modified.get(name)!).toUTCString()
    return h
  }
  /** false: a precondition failed (412) */
  const preconditions = (req: IncomingMessage, name: string): boolean => {
    if (mode === 'none') return true
    const ifMatch = req.headers['if-match']
    if (typeof ifMatch === 'string' && (mode === 'etag' || mode === 'both') && ifMatch !== '*' && !ifMatch.split(',').map(t => t.trim()).includes(etags.get(name)!)) return false
    const ius = req.headers['if-unmodified-since']
    if (typeof ius === 'string' && ifMatch == null && (mode === 'last-modified' || mode === 'both') && modified.get(name)! > Date.parse(ius)) return false
    return true
  }
  /** If-Range: honour Range only while the validator it names is current */
  const rangeStillValid = (req: IncomingMessage, name: string): boolean => {
    const ir = req.headers['if-range']
    if (typeof ir !== 'string') return true
    if (mode === 'none') return false
    if (ir.startsWith('"') || ir.startsWith('W/')) return (mode === 'etag' || mode === 'both') && ir === etags.get(name)
    return (mode === 'last-modified' || mode === 'both') && Date.parse(ir) === modified.get(name)
  }
  const server: Server = createServer((req, res) => {
    requests++
    methods[req.method ?? 'GET'] = (methods[req.method ?? 'GET'] ?? 0) + 1
    if (req.method === 'HEAD' && init.refuseHead === true) { res.writeHead(405, { allow: 'GET' }); res.end(); return }
    const [rawPath, query] = (req.url ?? '/').split('?') as [string, string | undefined]
    const path = decodeURIComponent(rawPath)
    const status = /^\/status\/(\d{3})$/.exec(path)
    if (status?.[1] != null) { res.writeHead(Number(status[1]), { 'content-type': 'text/plain' }); res.end('error\n'); return }
    if (path === '/hang') { hanging.add(res); res.on('close', () => hanging.delete(res)); return }
    const short = /^\/short\/(.+)$/.exec(path)
    const name = short?.[1] ?? path.slice(1)
    const file = init.files[name]
    if (file == null) { res.writeHead(404); res.end('not found\n'); return }
    const secret = init.secrets?.[name]
    if (secret != null && req.headers.authorization !== `Bearer ${secret}` && new URLSearchParams(query ?? '').get('token') !== secret) {
      res.writeHead(401, { 'www-authenticate': 'Bearer', 'content-type': 'text/plain' }); res.end('unauthorized\n'); return
    }
    if (!preconditions(req, name)) { res.writeHead(412, validatorHeaders(name)); res.end(); return }
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': String(file.length), 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes', ...validatorHeaders(name) })
      res.end()
      return
    }
    const count = (n: number): void => { sent[name] = (sent[name] ?? 0) + n }
    if (short != null) {
      res.writeHead(200, { 'content-length': String(file.length), 'content-type': 'application/octet-stream' })
      void send(res, file.subarray(0, file.length >> 1), bucket, count).then(() => { res.destroy() })
      return
    }
    let body = file
    const range = req.headers.range
    const m = typeof range === 'string' && rangeStillValid(req, name) ? /^bytes=(\d+)-(\d*)$/.exec(range) : null
    if (m?.[1] != null) {
      const start = Number(m[1])
      const end = m[2] != null && m[2] !== '' ? Math.min(file.length - 1, Number(m[2])) : file.length - 1
      if (start >= file.length || start > end) { res.writeHead(416, { 'content-range': `bytes */${file.length}` }); res.end(); return }
      body = file.subarray(start, end + 1)
      res.writeHead(206, { 'content-length': String(body.length), 'content-range': `bytes ${start}-${end}/${file.length}`, 'accept-ranges': 'bytes', ...validatorHeaders(name) })
    } else {
      res.writeHead(200, { 'content-length': String(file.length), 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes', ...validatorHeaders(name) })
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
    methods,
    setFile: (name, body) => { init.files[name] = body; stamp(name) },
    version: (name) => {
      const h = validatorHeaders(name)
      return h.etag != null ? `etag:${h.etag}` : h['last-modified'] != null ? `lm:${h['last-modified']}` : ''
    },
    setRate: (r) => { bucket.rate = r },
    close: async () => {
      for (const r of hanging) r.destroy()
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => { resolve() }))
    }
  }
}
