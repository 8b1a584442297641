/**
 * The local API (fastify): loopback or unix socket only. Routes:
 *   POST /api/v1/tasks                 start or join a download -> progress
 *   GET  /api/v1/tasks/:id             progress
 *   GET  /api/v1/tasks/:id/progress    NDJSON progress lines until the task ends
 *   GET  /api/v1/tasks/:id/content     the bytes (Range supported) once complete
 *   POST /api/v1/tasks/:id/export {path, link?}  a complete task to a local file: hard link, else copy (temp + fsync + rename)
 *   DELETE /api/v1/tasks/:id           drop a task from the store
 *   GET  /healthz, GET /metrics (Prometheus text)
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { createReadStream, constants as fsConstants } from 'node:fs'
import { copyFile, link, open, rename, rm } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { isTaskId } from '@guoce/content'
import { errorStatus, type PeerDaemon } from './index.js'
import { InvalidParametersError, NotFoundError, type TaskProgress } from '@guoce/interface'

export interface ApiOptions { extraMetrics?: () => string }

const taskBody = {
  type: 'object',
  required: ['url'],
  additionalProperties: false,
  properties: {
    url: { type: 'string', minLength: 1, maxLength: 8192 },
    headers: { type: 'object', additionalProperties: { type: 'string' } },
    digest: { type: 'string' },
    tag: { type: 'string', maxLength: 256 }
  }
} as const

export function buildServer (daemon: PeerDaemon, opts: ApiOptions = {}): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: 1024 * 1024 })

  app.setErrorHandler((err, _req, reply) => {
    const e = err as Error & { code?: string, statusCode?: number, validation?: unknown }
    const status = e.validation != null ? 400 : (e.statusCode ?? errorStatus(e.name))
    void reply.status(status).send({ error: { name: e.name, code: e.code ?? 'ERR_UNKNOWN', message: e.message } })
  })

  app.get('/healthz', async () => ({ ok: true, peerId: daemon.peerId, scheduler: daemon.client.connected }))

  app.post<{ Body: { url: string, headers?: Record<string, string>, digest?: string, tag?: string } }>('/api/v1/tasks', { schema: { body: taskBody } }, async (req) => {
    const t = await daemon.download(req.body)
    return t.progress()
  })

  function runningTask (id: string): ReturnType<PeerDaemon['tasks']['get']> {
    return isTaskId(id) ? daemon.tasks.get(id) : undefined
  }

  app.get<{ Params: { id: string } }>('/api/v1/tasks/:id', async (req) => {
    const t = runningTask(req.params.id)
    if (t == null) throw new NotFoundError(`no task ${req.params.id}`)
    return t.progress()
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

  app.get<{ Params: { id: string } }>('/api/v1/tasks/:id/content', async (req, reply) => {
    if (!isTaskId(req.params.id)) throw new InvalidParametersError('bad task id')
    const st = await daemon.store.get(req.params.id)
    if (st == null) throw new NotFoundError(`no task ${req.params.id}`)
    if (!st.complete) return await reply.status(409).send({ error: { name: 'NotFoundError', code: 'ERR_INCOMPLETE', message: 'task is not complete' } })
    const size = st.info.contentLength
    let start = 0; let end = size - 1
    const range = req.headers.range
    if (typeof range === 'string') {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range)
      if (m == null) return await reply.status(416).header('content-range', `bytes */${size}`).send()
      if (m[1] !== '') { start = Number(m[1]); if (m[2] !== '') end = Math.min(size - 1, Number(m[2])) } else if (m[2] !== '') { start = Math.max(0, size - Number(m[2])) }
      if (start > end || start >= size) return await reply.status(416).header('content-range', `bytes */${size}`).send()
      reply.status(206).header('content-range', `bytes ${start}-${end}/${size}`)
    }
    reply.header('content-type', 'application/octet-stream').header('accept-ranges', 'bytes').header('content-length', String(size === 0 ? 0 : end - start + 1))
    if (size === 0) return await reply.send(Buffer.alloc(0))
    return await reply.send(createReadStream(st.dataPath, { start, end }))
  })

  // Same-host output, no bytes through HTTP and no second hash (every piece, and the whole content when a
  // digest was given, is verified). As dfget does: a hard link to the task's data file when the output is
  // on the store's filesystem (no copy, nothing left to write back: the data file is already durable),
  // else a kernel copy (reflink or copy_file_range) that is fsynced. `link: false` asks for the copy.
  // A hard link shares the bytes with the cache: writing into the output changes what this host serves
  // (its children verify every piece and would blame it), so treat linked outputs as read-only.
  app.post<{ Params: { id: string }, Body: { path: string, link?: boolean } }>('/api/v1/tasks/:id/export', {
    schema: { body: { type: 'object', required: ['path'], additionalProperties: false, properties: { path: { type: 'string', minLength: 1, maxLength: 4096 }, link: { type: 'boolean' } } } }
  }, async (req, reply) => {
    if (!isTaskId(req.params.id)) throw new InvalidParametersError('bad task id')
    const path = req.body.path
    if (!isAbsolute(path)) throw new InvalidParametersError('export path must be absolute')
    const st = await daemon.store.get(req.params.id)
    if (st == null) throw new NotFoundError(`no task ${req.params.id}`)
    if (!st.complete) return await reply.status(409).send({ error: { name: 'NotFoundError', code: 'ERR_INCOMPLETE', message: 'task is not complete' } })
    const tmp = join(dirname(path), `.${basename(path)}.guoce-${randomBytes(4).toString('hex')}`)
    let linked = false
    try {
      if (req.body.link !== false) {
        await st.flush() // the bytes are durable before a second name points at them
        linked = await link(st.dataPath, tmp).then(() => true, () => false) // EXDEV, EPERM, EMLINK...: copy
      }
      if (!linked) {
        await copyFile(st.dataPath, tmp, fsConstants.COPYFILE_FICLONE)
        const fh = await open(tmp, 'r+')
        try { await fh.sync() } finally { await fh.close() }
      }
      await rename(tmp, path)
      const dir = await open(dirname(path), 'r')
      try { await dir.sync() } finally { await dir.close() }
    } catch (err) {
      await rm(tmp, { force: true })
      const e = err as NodeJS.ErrnoException
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return await reply.status(507).send({ error: { name: 'NoSpaceError', code: 'ERR_NO_SPACE', message: `no space left on device writing ${path}` } })
      if (e.code === 'ENOENT' || e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS') return await reply.status(400).send({ error: { name: 'InvalidParametersError', code: 'ERR_INVALID_PARAMETERS', message: `cannot write ${path}: ${e.code}` } })
      throw err
    }
    return { path, bytes: st.info.contentLength, linked }
  })

  app.delete<{ Params: { id: string } }>('/api/v1/tasks/:id', async (req, reply) => {
    if (!isTaskId(req.params.id)) throw new InvalidParametersError('bad task id')
    daemon.tasks.get(req.params.id)?.stop()
    daemon.tasks.delete(req.params.id)
    await daemon.store.remove(req.params.id)
    return await reply.status(204).send()
  })

  app.get('/metrics', async (_req, reply) => {
    const s = daemon.stats
    const lines = [
      '# TYPE guoce_peer_download_bytes_total counter',
      `guoce_peer_download_bytes_total{source="peer"} ${s.peerBytes}`,
      `guoce_peer_download_bytes_total{source="origin"} ${s.sourceBytes}`,
      '# TYPE guoce_peer_upload_bytes_total counter',
      `guoce_peer_upload_bytes_total ${s.uploadBytes}`,
      '# TYPE guoce_peer_tasks_started_total counter',
      `guoce_peer_tasks_started_total ${s.tasksStarted}`,
      '# TYPE guoce_peer_blamed_parents_total counter',
      `guoce_peer_blamed_parents_total ${s.blamedParents}`,
      '# TYPE guoce_peer_parent_connections_total counter',
      ...Object.entries(s.parentConnections).map(([channel, n]) => `guoce_peer_parent_connections_total{channel="${channel}"} ${n}`),
      '# TYPE guoce_peer_parent_lists_total counter',
      `guoce_peer_parent_lists_total{mode="chain"} ${s.parentLists.chain}`,
      `guoce_peer_parent_lists_total{mode="striped"} ${s.parentLists.striped}`,
      '# TYPE guoce_peer_scheduler_connected gauge',
      `guoce_peer_scheduler_connected ${daemon.client.connected ? 1 : 0}`
    ]
    return await reply.header('content-type', 'text/plain; version=0.0.4').send(lines.join('\n') + '\n' + (opts.extraMetrics?.() ?? ''))
  })

  return app
}
