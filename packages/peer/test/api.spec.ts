import { describe, it, expect } from 'vitest'
import { InvalidUrlError, NotFoundError, ReadTimeoutError, type StreamRead } from '@guoce/interface'
import { buildServer, type PeerDaemon } from '../src/index.js'

const ID = 'a'.repeat(64)

/** `stored` null: no such task; `failRead`: the reader fails before the first byte */
function fakeDaemon (stored: { complete: boolean } | null, failRead?: Error): PeerDaemon {
  const content = Buffer.from('hello, world')
  return {
    reader: {
      stat: async () => {
        if (stored == null) throw new NotFoundError(`no task ${ID}`)
        return { taskId: ID, contentLength: content.length, pieceLength: 4, pieceCount: 3 }
      },
      stream: async function * (r: StreamRead) {
        if (failRead != null) throw failRead
        yield content.subarray(r.offset ?? 0, r.end)
      }
    },
    readsWaiting: 0,
    tasks: new Map(),
    store: { get: async () => stored },
    peerId: 'peer',
    client: { connected: false },
    stats: { peerBytes: 0, sourceBytes: 0, uploadBytes: 0, tasksStarted: 0, blamedParents: 0, parentConnections: {} },
    download: async (req: { url: string }) => {
      if (req.url === 'x') throw new InvalidUrlError('malformed URL "x"')
      return { taskId: ID, progress: () => ({ taskId: ID, state: 'running' }) }
    }
  } as unknown as PeerDaemon
}

describe('local API errors', () => {
  it('maps errors to statuses with a {name, code, message} body', async () => {
    const app = buildServer(fakeDaemon(null))
    let r = await app.inject({ url: `/api/v1/tasks/${ID}` })
    expect(r.statusCode).toBe(404)
    expect(r.json().error).toMatchObject({ name: 'NotFoundError', code: 'ERR_NOT_FOUND' })
    r = await app.inject({ url: '/api/v1/tasks/nope/content' })
    expect(r.statusCode).toBe(400)
    expect(r.json().error.name).toBe('InvalidParametersError')
    r = await app.inject({ method: 'POST', url: '/api/v1/tasks', payload: { url: 'x' } })
    expect(r.statusCode).toBe(400)
    expect(r.json().error.name).toBe('InvalidUrlError')
    r = await app.inject({ method: 'POST', url: '/api/v1/tasks', payload: { nope: 1 } })
    expect(r.statusCode).toBe(400)
    await app.close()
  })

  it('gives the content only with the access token of POST /api/v1/tasks, through the reader (Range: 206)', async () => {
    const app = buildServer(fakeDaemon({ complete: false }))
    for (const headers of [{}, { 'x-guoce-access': 'f'.repeat(64) }, { 'x-guoce-access': 'nope' }]) {
      const r = await app.inject({ url: `/api/v1/tasks/${ID}/content`, headers })
      expect(r.statusCode).toBe(403)
      expect(r.json().error.name).toBe('ForbiddenError')
    }
    const posted = await app.inject({ method: 'POST', url: '/api/v1/tasks', payload: { url: 'http://127.0.0.1/f' } })
    const access = posted.json().access as string
    expect(access).toMatch(/^[0-9a-f]{64}$/)
    let r = await app.inject({ url: `/api/v1/tasks/${ID}/content`, headers: { 'x-guoce-access': access } })
    expect(r.statusCode).toBe(200)
    expect(r.body).toBe('hello, world')
    r = await app.inject({ url: `/api/v1/tasks/${ID}/content`, headers: { 'x-guoce-access': access, range: 'bytes=7-' } })
    expect(r.statusCode).toBe(206)
    expect(r.headers['content-range']).toBe('bytes 7-11/12')
    expect(r.body).toBe('world')
    r = await app.inject({ url: `/api/v1/tasks/${ID}/content`, headers: { 'x-guoce-access': access, range: 'bytes=12-' } })
    expect(r.statusCode).toBe(416)
    expect((await app.inject({ method: 'DELETE', url: `/api/v1/tasks/${ID}` })).statusCode).toBe(403)
    await app.close()
  })

  it('a read that fails before its first byte gets its own error and status', async () => {
    const app = buildServer(fakeDaemon({ complete: false }, new ReadTimeoutError('a read waited 100 ms for piece 0')))
    const access = (await app.inject({ method: 'POST', url: '/api/v1/tasks', payload: { url: 'http://127.0.0.1/f' } })).json().access as string
    const r = await app.inject({ url: `/api/v1/tasks/${ID}/content`, headers: { 'x-guoce-access': access } })
    expect(r.statusCode).toBe(504)
    expect(r.json().error).toMatchObject({ name: 'ReadTimeoutError', code: 'ERR_READ_TIMEOUT' })
    await app.close()
  })

  it('writes no file at a caller-given path: the export route answers 410 whatever the path', async () => {
    for (const stored of [{ complete: true }, { complete: false }, null]) {
      const app = buildServer(fakeDaemon(stored))
      for (const path of ['/tmp/x', '/etc/passwd', 'relative']) {
        const r = await app.inject({ method: 'POST', url: `/api/v1/tasks/${ID}/export`, payload: { path } })
        expect(r.statusCode).toBe(410)
        expect(r.json().error.name).toBe('ForbiddenError')
      }
      await app.close()
    }
  })

  it('answers only requests whose Host is a loopback name (DNS rebinding)', async () => {
    const app = buildServer(fakeDaemon(null))
    for (const host of ['127.0.0.1:65001', 'localhost', 'localhost:1', '[::1]:65001', '127.0.0.2:80', 'LOCALHOST:9']) {
      expect((await app.inject({ url: '/healthz', headers: { host } })).statusCode, host).toBe(200)
    }
    for (const host of ['evil.example:65001', 'evil.example', '127.0.0.1.nip.io', '10.0.0.1:65001', '0.0.0.0:65001', 'localhost.evil.example', '[::2]:1', 'localhost:99999999']) {
      const r = await app.inject({ url: '/healthz', headers: { host } })
      expect(r.statusCode, host).toBe(403)
      expect(r.json().error).toMatchObject({ name: 'ForbiddenError', code: 'ERR_FORBIDDEN' })
    }
    const r = await app.inject({ method: 'POST', url: '/api/v1/tasks', headers: { host: 'evil.example' }, payload: { url: 'http://127.0.0.1/x' } })
    expect(r.statusCode).toBe(403)
    await app.close()
  })
})
