/**
 * The local API (fastify): loopback HOST:PORT or a unix socket (0600), for callers on this host. Routes:
 *   POST /api/v1/tasks                 start or join a download -> progress + `access` (the task's access token)
 *   GET  /api/v1/tasks/:id             progress; once complete, `dataFile` {path, size, ino} of the task's data
 *                                      file, so `guoce get` can copy it itself (as the calling user)
 *   GET  /api/v1/tasks/:id/progress    NDJSON progress lines until the task ends
 *   GET  /api/v1/tasks/:id/content     the bytes through the reader: Range -> 206 once those pieces are
 *                                      verified; else the whole content in order as it arrives
 *   POST /api/v1/tasks/:id/export      removed: 410 (the daemon writes no file at a caller-given path)
 *   POST /api/v1/import                a local file into the swarm (import token: the daemon's own user only)
 *   DELETE /api/v1/tasks/:id           drop a task from the store (access token)
 *   GET  /healthz, GET /metrics (Prometheus text)
 * The bytes of a task (`/content`, `dataFile`) need its access token (header x-guoce-access), which only
 * POST /api/v1/tasks returns: to a caller whose request maps to that task id, after the origin accepted
 * that caller's own headers (the validator probe). Knowing a task id is not enough to read a private file.
 * Every request must name a loopback host in its Host header (127.0.0.0/8, localhost, [::1]): a page
 * in a browser on this host cannot reach the API through a DNS name that resolves to 127.0.0.1
 * (DNS rebinding). Others get 403 ForbiddenError.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { Readable } from 'node:stream'
import { chmod, lstat, rm, stat } from 'node:fs/promises'
import { connect, isIP } from 'node:net'
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { isTaskId } from '@guoce/content'
import { errorStatus, type PeerDaemon } from './index.js'
import { ForbiddenError, InvalidParametersError, NotFoundError, type TaskProgress } from '@guoce/interface'

export interface ApiOptions {
  extraMetrics?: () => string
  /**
   * `guoce import`: the secret a caller must send (header x-guoce-import) to have the daemon read a local
   * file into the swarm, and the file (0600, the daemon's user's) it is kept in. Whoever can read that
   * file can read what the daemon can: only the daemon's own user (and root) may import. Without it the
   * import route answers 403.
   */
  importToken?: { token: string, file: string }
}

/** Header that carries the import token. */
export const IMPORT_HEADER = 'x-guoce-import'

/** A loopback name: localhost, an IPv4 address in 127.0.0.0/8, or ::1 (brackets allowed). */
export function isLoopbackName (host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1').replace(/^::ffff:(?=\d+\.)/, '')
  if (h === 'localhost') return true
  if (isIP(h) === 4) return h.startsWith('127.')
  if (isIP(h) === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1'
  return false
}

/** A Host header's host, without its port; undefined when it is not HOST[:PORT]. */
export function hostOfHeader (value: string | undefined): string | undefined {
  if (value == null) return undefined
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(?::\d{1,5})?$/.exec(value)
  return m?.[1]
}

const taskBody = {
  type: 'object',
  required: ['url'],
  additionalProperties: false,
  properties: {
    url: { type: 'string', minLength: 1, maxLength: 8192 },
    headers: { type: 'object', additionalProperties: { type: 'string' } },
    digest: { type: 'string' },
    tag: { type: 'string', maxLength: 256 },
    // fetch only what reads of the content route ask for (TaskRequest.ranged)
    ranged: { type: 'boolean' },
    // the layout's piece length (TaskRequest.pieceLength): a power of two in [64 KiB, 16 MiB]
    pieceLength: { type: 'integer' }
  }
} as const

/** Header that carries a task's access token. */
export const ACCESS_HEADER = 'x-guoce-access'

export function buildServer (daemon: PeerDaemon, opts: ApiOptions = {}): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: 1024 * 1024 })
  // per process: tokens are for the get that asked, not to be kept
  const accessKey = randomBytes(32)
  const accessFor = (taskId: string): Buffer => createHmac('sha256', accessKey).update(taskId).digest()
  const mayRead = (taskId: string, given: string | string[] | undefined): boolean => {
    if (typeof given !== 'string' || !/^[0-9a-f]{64}$/.test(given)) return false
    return timingSafeEqual(Buffer.from(given, 'hex'), accessFor(taskId))
  }

  app.setErrorHandler((err, _req, reply) => {
    const e = err as Error & { code?: string, statusCode?: number, validation?: unknown }
    const status = e.validation != null ? 400 : (e.statusCode ?? errorStatus(e.name))
    void reply.status(status).send({ error: { name: e.name, code: e.code ?? 'ERR_UNKNOWN', message: e.message } })
  })

  // before routing and body parsing: a foreign Host (DNS rebinding, a proxied request) gets nothing
  app.addHook('onRequest', async (req, reply) => {
    const host = hostOfHeader(req.headers.host)
    if (host == null || !isLoopbackName(host)) {
      return await reply.status(403).send({ error: { name: ForbiddenError.name, code: 'ERR_FORBIDDEN', message: `the local API answers only requests to a loopback host (127.0.0.1, localhost, [::1]), not "${String(req.headers.host ?? '')}"` } })
    }
  })

  app.get('/healthz', async () => ({ ok: true, peerId: daemon.peerId, scheduler: daemon.client.connected, ...(opts.importToken != null ? { importTokenFile: opts.importToken.file } : {}) }))

  // a local file into the swarm, named by its sha256 (guoce import): the daemon's own user only
  app.post<{ Body: { path: string } }>('/api/v1/import', { schema: { body: { type: 'object', required: ['path'], additionalProperties: false, properties: { path: { type: 'string', minLength: 2, maxLength: 4096 } } } } }, async (req) => {
    const given = req.headers[IMPORT_HEADER]
    const want = opts.importToken?.token
    if (want == null || typeof given !== 'string' || given.length !== want.length || !timingSafeEqual(Buffer.from(given), Buffer.from(want))) {
      throw new ForbiddenError(`importing needs the token in the daemon's import token file (header ${IMPORT_HEADER}): only the daemon's own user may import`)
    }
    const path = req.body.path
    if (!path.startsWith('/') || path.includes('\0')) throw new InvalidParametersError('import path must be absolute')
    const st = await stat(path).catch((err: NodeJS.ErrnoException) => { throw err.code === 'ENOENT' ? new NotFoundError(`no file ${path}`) : new InvalidParametersError(`cannot read ${path}: ${err.code ?? err.message}`) })
    if (!st.isFile()) throw new InvalidParametersError(`${path} is not a regular file`)
    const t = await daemon.importFile(path)
    return { ...t.progress(), digest: t.digest, access: accessFor(t.taskId).toString('hex') }
  })

  app.post<{ Body: { url: string, headers?: Record<string, string>, digest?: string, tag?: string, ranged?: boolean, pieceLength?: number } }>('/api/v1/tasks', { schema: { body: taskBody } }, async (req) => {
    const t = await daemon.download(req.body)
    return { ...t.progress(), access: accessFor(t.taskId).toString('hex') }
  })

  function runningTask (id: string): ReturnType<PeerDaemon['tasks']['get']> {
    return isTaskId(id) ? daemon.tasks.get(id) : undefined
  }

  app.get<{ Params: { id: string } }>('/api/v1/tasks/:id', async (req) => {
    const t = runningTask(req.params.id)
    if (t == null) throw new NotFoundError(`no task ${req.params.id}`)
    // the digest that names the task, if one does (guoce export TASKID)
    const p = { ...t.progress(), ...(t.digest != null ? { digest: t.digest } : {}) }
    if (p.state !== 'succeeded' || !isLoopbackName(req.socket.remoteAddress ?? 'localhost') || !mayRead(t.taskId, req.headers[ACCESS_HEADER])) return p
    // where the verified bytes are: `guoce get` on this host copies them itself, as its own user
    // (a kernel copy), if that user may read the file; `ino` lets it check it opened this very file
    const st = await daemon.store.get(t.taskId).catch(() => null)
    if (st?.complete !== true) return p
    const s = await stat(st.dataPath).catch(() => null)
    if (s == null) return p
    return { ...p, dataFile: { path: st.dataPath, size: st.info.contentLength, ino: s.ino } }
  })

  app.get<{ Params: { id: string } }>('/api/v1/tasks/:id/progress', async (req, reply) => {
    const t = runningTask(req.params.id)
    if (t == null) throw new NotFoundError(`no task ${req.params.id}`)
    reply.hijack()
    const res = reply.raw
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' })
    let last = ''
    let timer: NodeJS.Timeout | undefined
    const write = (p: TaskProgress): void => {
      const line = JSON.stringify(p)
      if (line !== last) { res.write(line + '\n'); last = line }
    }
    const finish = (): void => {
      clearTimeout(timer); off()
      write(t.progress())
      res.end()
    }
    // throttle to ~10 lines/s
    const off = t.onProgress(() => {
      if (t.state === 'succeeded' || t.state === 'failed') { finish(); return }
      timer ??= setTimeout(() => { timer = undefined; write(t.progress()) }, 100)
    })
    res.on('close', () => { clearTimeout(timer); off() })
    write(t.progress())
    if (t.state === 'succeeded' || t.state === 'failed') finish()
  })

  // The bytes of a task, complete or still downloading, through the reader: a Range is answered (206)
  // as soon as its pieces are verified; without one the whole content streams in order as it arrives.
  // The status waits for the first bytes: a read that fails before them (its pieces cannot be had, the
  // task failed) gets its own error and status; one that fails later ends the response early.
  app.get<{ Params: { id: string } }>('/api/v1/tasks/:id/content', async (req, reply) => {
    if (!isTaskId(req.params.id)) throw new InvalidParametersError('bad task id')
    const taskId = req.params.id
    if (!mayRead(taskId, req.headers[ACCESS_HEADER])) throw new ForbiddenError(`the content of a task needs the access token POST /api/v1/tasks returns (header ${ACCESS_HEADER})`)
    // the client going away stops the read (its waits, its read-ahead)
    const ac = new AbortController()
    reply.raw.once('close', () => { ac.abort() })
    const { contentLength: size } = await daemon.reader.stat({ taskId, signal: ac.signal })
    let start = 0; let end = size - 1
    const range = req.headers.range
    const ranged = typeof range === 'string'
    if (ranged) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range)
      if (m == null) return await reply.status(416).header('content-range', `bytes */${size}`).send()
      if (m[1] !== '') { start = Number(m[1]); if (m[2] !== '') end = Math.min(size - 1, Number(m[2])) } else if (m[2] !== '') { start = Math.max(0, size - Number(m[2])) }
      if (start > end || start >= size) return await reply.status(416).header('content-range', `bytes */${size}`).send()
    }
    const head = (): void => {
      if (ranged) reply.status(206).header('content-range', `bytes ${start}-${end}/${size}`)
      reply.header('content-type', 'application/octet-stream').header('accept-ranges', 'bytes').header('content-length', String(size === 0 ? 0 : end - start + 1))
    }
    if (size === 0) { head(); return await reply.send(Buffer.alloc(0)) }
    const it = daemon.reader.stream({ taskId, offset: start, end: end + 1, signal: ac.signal })[Symbol.asyncIterator]()
    let first: IteratorResult<Uint8Array>
    try {
      first = await it.next()
    } catch (err) {
      ac.abort()
      throw err
    }
    head()
    async function * rest (): AsyncGenerator<Uint8Array> {
      try {
        if (first.done === true) return
        yield first.value
        for (let r = await it.next(); r.done !== true; r = await it.next()) yield r.value
      } finally {
        await it.return?.()
      }
    }
    return await reply.send(Readable.from(rest(), { objectMode: false }))
  })

  // The daemon used to write a complete task to a caller-given path (hard link or copy), as its own
  // user: any local process could replace any file. `guoce get` writes its output itself now.
  app.post('/api/v1/tasks/:id/export', async (_req, reply) => {
    return await reply.status(410).send({ error: { name: ForbiddenError.name, code: 'ERR_GONE', message: 'the daemon writes no files: export was removed; guoce get writes its output itself' } })
  })

  app.delete<{ Params: { id: string } }>('/api/v1/tasks/:id', async (req, reply) => {
    if (!isTaskId(req.params.id)) throw new InvalidParametersError('bad task id')
    // another user's task is not theirs to drop either
    if (!mayRead(req.params.id, req.headers[ACCESS_HEADER])) throw new ForbiddenError(`dropping a task needs the access token POST /api/v1/tasks returns (header ${ACCESS_HEADER})`)
    daemon.tasks.get(req.params.id)?.stop()
    daemon.tasks.delete(req.params.id)
    await daemon.store.remove(req.params.id)
    return await reply.status(204).send()
  })

  app.get('/metrics', async (_req, reply) => {
    const text = await daemon.metrics.registry.metrics()
    return await reply.header('content-type', daemon.metrics.registry.contentType).send(text + (opts.extraMetrics?.() ?? ''))
  })

  return app
}

/**
 * Listen on `api`: a loopback HOST:PORT, or a unix socket (`path`) of mode 0600, so that only the
 * daemon's own user may talk to it. Returns the API's base: `http://HOST:PORT` or `unix:PATH`.
 */
export async function listenApi (app: FastifyInstance, api: { host: string, port: number, path?: string | undefined }): Promise<string> {
  if (api.path == null) return await app.listen({ host: api.host, port: api.port })
  const path = api.path
  // a socket left behind by a daemon that died is replaced; one that answers is another daemon's
  if ((await lstat(path).catch(() => null))?.isSocket() === true) {
    const live = await new Promise<boolean>(resolve => {
      const s = connect(path)
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => { resolve(false) })
    })
    if (live) throw new InvalidParametersError(`--api unix:${path}: another process listens there`)
    await rm(path, { force: true })
  }
  // created 0600 (no window where others could connect), and said so again
  const umask = process.umask(0o177)
  try { await app.listen({ path }) } finally { process.umask(umask) }
  await chmod(path, 0o600)
  return `unix:${path}`
}
